"""XLA compiler options for each kind of compiled computation, chosen from measurements.

They are passed per compilation (``jax.jit(..., compiler_options=...)``), never through the process-wide
``XLA_FLAGS``, so that a training step and an inference pass in the same process each get what is fastest
for them. A user's own ``XLA_FLAGS`` setting of an option always wins: the option is then left out here.

Measured on a 2-core AMD EPYC (``python -m hrnet_jax.bench``, BN-folded forward passes):

* CPU inference: no YNNPACK fusions at all (XLA's own Eigen convolutions and matmuls). With the Winograd 3x3
  convs of the inference entry point (:mod:`hrnet_jax.kernels.winograd`), whose 16 batched matmuls Eigen runs at
  150-160 GFLOP/s and YNNPACK at 85-130 (``[16, T, C] @ [16, C, C]``, C = 64-256, 2 cores), pose W32 batch 8
  runs 12.4 -> 14.0 img/s and hrnet_w32 9.6 -> 10.8 (jax 0.10.2, same process, interleaved). Without Winograd
  the two are within noise of each other (pose W32 b8 11.0 / 11.2, hrnet_w32 8.9 / 9.0), and YNNPACK
  convolutions are 10-30% slower than Eigen's (an earlier measurement: W32 b4 8.0 -> 10.0 img/s).
  For training steps it is the other way round (W32 2.3 -> 1.8 img/s), so training keeps XLA's default.
"""
from __future__ import annotations

import os

import jax

_YNN = "xla_cpu_experimental_ynn_fusion_type"


def _user_set(option: str) -> bool:
    return option in os.environ.get("XLA_FLAGS", "")


def inference(backend: str | None = None) -> dict:
    """``compiler_options`` for a forward pass without gradients (predict, eval, benchmark)."""
    if (backend or jax.default_backend()) != "cpu":
        return {}
    return {} if _user_set(_YNN) else {_YNN: ""}
