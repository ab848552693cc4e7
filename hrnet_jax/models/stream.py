"""Streams: a run of residual blocks at one resolution, and the scan-or-unroll helper for repeated units.

Identical consecutive units (the blocks of a stream, the modules of a stage) run under ``nn.scan`` with
stacked parameters when ``scan=True``; the scanned run is named ``"start:stop"`` after the PyTorch indices it
replaces (``layer1.1:4`` holds blocks 1, 2, 3). With ``scan=False`` each unit is named by its index, which is
exactly the PyTorch layout. :func:`hrnet_jax.models.params.restack` converts between the two.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import flax.linen as nn

from hrnet_jax.models.blocks import BLOCKS
from hrnet_jax.models.layers import KAIMING_FAN_OUT

REMAT_POLICIES = {
    "full": None,  # save nothing, recompute everything
    "dots": jax.checkpoint_policies.dots_saveable,  # keep conv/matmul outputs, recompute BN/ReLU
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "nothing": jax.checkpoint_policies.nothing_saveable,
    "everything": jax.checkpoint_policies.everything_saveable,
}


def remat_wrap(cls, remat: Optional[str], scan: bool):
    if not remat:
        return cls
    if remat not in REMAT_POLICIES:
        raise ValueError(f"unknown remat policy {remat!r}; valid: {sorted(REMAT_POLICIES)} or None")
    return nn.remat(cls, policy=REMAT_POLICIES[remat], prevent_cse=not scan)


def _scan_body(module, carry, _):
    return module(carry), None


def repeat(cls, kwargs: dict, x, *, start: int, count: int, scan: bool, remat: Optional[str] = None,
           scan_unroll=True):
    """Applies ``count`` copies of ``cls(**kwargs)`` in sequence, scanned (stacked params) or unrolled.

    ``scan_unroll`` is the XLA loop unrolling of a scanned run: ``True`` unrolls it fully (stacked
    parameters, straight-line code: fastest at run time), an int ``k`` keeps a rolled loop of ``k``-unit
    bodies (smaller program, faster compile). On the 2-core CPU a rolled loop made the W18-small-v1 train
    step ~10x slower (XLA's CPU backend runs convolution gradients inside while loops poorly).

    Compile time (W48 train step, batch 4, 2 cores, jax 0.10.2): the full unroll compiles in 35-42 s against
    17-19 s for ``scan=False``, and nearly all of the difference is XLA's LLVM code generation, not its HLO passes
    (6.2 vs 4.6 s): the scanned program has 2,061 kernels to generate against 666. Unrolled iterations read
    their parameters and write their gradients at different offsets of the stacked arrays, so fusions that are
    identical in the plain-loop program (and generated once) differ by their slice offsets here. Nesting is what
    costs: scanning only the blocks of each stream compiles in 19 s, only the modules of each stage in 24 s,
    both (the default) in 35-42 s. The default still steps fastest: 2.56 s against 2.8-3.0 s for the other three
    (medians of 6 steps). ``--xla_backend_optimization_level=1`` saves ~10% of the compile and level 0 half,
    but level 0 slows the step by a third and level 1 was not neutral under jax 0.12.
    """
    if count <= 0:
        return x
    cls = remat_wrap(cls, remat, scan)
    if scan and count > 1:
        scanned = nn.scan(_scan_body, variable_axes={"params": 0, "batch_stats": 0},
                          split_rngs={"params": True, "dropout": True}, length=count,
                          unroll=count if scan_unroll is True else max(1, int(scan_unroll)))
        x, _ = scanned(cls(**kwargs, name=f"{start}:{start + count}"), x, None)
        return x
    for i in range(start, start + count):
        x = cls(**kwargs, name=str(i))(x)
    return x


class Stream(nn.Module):
    """One resolution stream of a high-resolution module (``branches.b``): ``num_blocks`` residual blocks.

    The first block gets a 1x1 projection shortcut when the input width differs from the output width
    (never the case in the published configs for BASIC streams).
    """

    block: str
    num_blocks: int
    planes: int
    in_channels: int
    train: bool = False
    scan: bool = True
    scan_unroll: Any = True
    bn_momentum: float = 0.9
    dtype: Any = None
    param_dtype: Any = jnp.float32
    kernel_init: Callable = KAIMING_FAN_OUT

    @nn.compact
    def __call__(self, x):
        cls = BLOCKS[self.block]
        common = dict(planes=self.planes, train=self.train, bn_momentum=self.bn_momentum, dtype=self.dtype,
                      param_dtype=self.param_dtype, kernel_init=self.kernel_init)
        start = 0
        if self.in_channels != self.planes * cls.expansion:
            x = cls(**common, downsample=True, name="0")(x)
            start = 1
        return repeat(cls, common, x, start=start, count=self.num_blocks - start, scan=self.scan,
                      scan_unroll=self.scan_unroll)
