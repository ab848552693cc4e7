"""XLA compiler options for each kind of compiled computation, chosen from measurements.

They are passed per compilation (``jax.jit(..., compiler_options=...)``), never through the process-wide
``XLA_FLAGS``, so that a training step and an inference pass in the same process each get what is fastest
for them. A user's own ``XLA_FLAGS`` setting of an option always wins: the option is then left out here.

Measured on a 2-core AMD EPYC (``python -m hrnet_jax.bench``, BN-folded forward passes, batch 4):

* CPU inference: convolutions through XLA's own (Eigen) kernels, YNNPACK only for matmuls, run 10-30% faster
  than with YNNPACK convolutions (jax 0.10.2: W32 8.0 -> 10.0 img/s, W48 5.0 -> 5.8, pose W32 9.4 -> 11.5;
  jax 0.12: W48 5.1 -> 5.8, pose W32 10.4 -> 11.9). For training steps it is the other way round (W32
  2.3 -> 1.8 img/s), so training keeps XLA's default.
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
    return {} if _user_set(_YNN) else {_YNN: "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}
