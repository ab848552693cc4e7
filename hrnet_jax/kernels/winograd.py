"""3x3 stride-1 convolutions by Winograd's minimal filtering F(2x2, 3x3), in plain ``jax.numpy``.

Why: on CPUs XLA's own convolution kernels reach 160-200 GFLOP/s on 2 cores for HRNet's 3x3 convs, PyTorch's
oneDNN direct convolutions more (its ``torch.compile`` runs the W32 models 10-20% faster at batch 4 and 8), and
oneDNN 3.2 offers no Winograd kernel on these AMD CPUs. Winograd's F(2x2, 3x3) computes each 2x2 output tile
with 16 multiplications per input/output channel pair instead of 36: the convolution becomes 16 independent
matmuls ``[tiles, Cin] @ [Cin, Cout]`` between an input transform and an output transform that are only
additions and subtractions (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016).

What: :func:`conv3x3` equals ``lax.conv_general_dilated(x, kernel, (1, 1), ((1, 1), (1, 1)))`` on NHWC / HWIO
to float32 rounding (relative error ~1e-6: the transforms only add, subtract and halve). It is pure StableHLO
(slices, adds, one batched ``dot_general``), so an exported program keeps it and any platform runs it.
:func:`winograd_kernel` is the kernel transform ``G g Gᵀ``; a caller with fixed weights may compute it once.

Where it pays (2-core AVX-512 EPYC, float32, batch 8, eight chained convs + bias + ReLU with pre-transformed
kernels, against XLA's conv): 28x28x64 1.5x, 14x14x128 1.0-1.2x, 7x7x256 1.5x faster; at 56x56x32 it is slower
(0.9x: with 32 channels the matmuls are too thin for the extra memory traffic of the transforms), so
:class:`hrnet_jax.execution.ExecutionPolicy` sends only convs with at least ``winograd`` channels here. The
kernel transform must not run per call: at 7x7x256 it moves ten times the activations' bytes (the inference entry
point computes it once). Eigen runs the 16 batched matmuls at 150-160 GFLOP/s, YNNPACK at 85-130, hence the
inference compiler options without YNNPACK (:mod:`hrnet_jax.xla_options`). Whole networks (jax 0.10.2, same
process, interleaved): pose W32 256x192 batch 8 11.0 -> 14.0 img/s, hrnet_w32 224 batch 8 8.9 -> 10.8, pose W32
batch 1 11.0 -> 12.0. The transforms are written on pairs of rows / columns (a reshape, four slices, four adds
per axis) rather than sixteen strided slices: same speed, compile time of pose W32 10.5 -> 6.9 s.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["conv3x3", "winograd_kernel", "kernel_of"]

# F(2x2, 3x3): Y = Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A for a 4x4 input tile d and a 3x3 kernel g
_BT = ((1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1))
_G = np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]], np.float32)
_AT = ((1, 1, 1, 0), (0, 1, -1, -1))


def winograd_kernel(kernel: jax.Array) -> jax.Array:
    """HWIO ``(3, 3, Cin, Cout)`` → the transformed kernel ``(4, 4, Cin, Cout)`` = ``G g Gᵀ`` per channel pair."""
    g = jnp.asarray(_G, kernel.dtype)
    k = jnp.tensordot(g, kernel, axes=[[1], [0]])                  # (4, 3, I, O)
    return jnp.moveaxis(jnp.tensordot(g, k, axes=[[1], [1]]), 0, 1)  # (4, 4, I, O): [p, q] = Σ G[p,a] g[a,b] G[q,b]


def kernel_of(transformed: jax.Array) -> jax.Array:
    """The 3x3 HWIO kernel back from ``winograd_kernel(kernel)``: ``G⁺ U G⁺ᵀ`` (``G`` has full column rank, and
    its pseudo-inverse has dyadic entries, so this is exact up to float32 rounding of the sums)."""
    g_pinv = jnp.asarray(np.linalg.pinv(_G.astype(np.float64)).astype(np.float32), transformed.dtype)   # (3, 4)
    k = jnp.tensordot(g_pinv, transformed, axes=[[1], [0]])                 # (3, 4, I, O)
    return jnp.moveaxis(jnp.tensordot(g_pinv, k, axes=[[1], [1]]), 0, 1)   # (3, 3, I, O)


def _pairs(a: jax.Array, axis: int) -> tuple[jax.Array, ...]:
    """Along ``axis`` of length ``2k + 2`` (``a`` split into pairs), the four length-``k`` runs ``a[2i + j]``,
    ``j = 0..3``: the four rows (or columns) of every tile of a 2-overlapping tiling with stride 2."""
    shape = a.shape[:axis] + (a.shape[axis] // 2, 2) + a.shape[axis + 1:]
    a = a.reshape(shape)
    first, last = (slice(None),) * axis + (slice(None, -1),), (slice(None),) * axis + (slice(1, None),)
    lo, hi = a[first], a[last]
    even, odd = (slice(None),) * (axis + 1) + (0,), (slice(None),) * (axis + 1) + (1,)
    return lo[even], lo[odd], hi[even], hi[odd]


def _input_transform(xp: jax.Array) -> jax.Array:
    """Bᵀ d B of every 4x4 tile of ``xp`` (N, 2th + 2, 2tw + 2, C) → (4, 4, N, th, tw, C)."""
    d0, d1, d2, d3 = _pairs(xp, 1)                                     # rows a = 0..3 of the tiles
    rows = jnp.stack([d0 - d2, d1 + d2, d2 - d1, d1 - d3])            # Bᵀ d: (4, N, th, 2tw + 2, C)
    c0, c1, c2, c3 = _pairs(rows, 3)                                   # columns b = 0..3
    return jnp.stack([c0 - c2, c1 + c2, c2 - c1, c1 - c3], axis=1)    # (Bᵀ d) B: (4, 4, N, th, tw, C)


def _output_transform(m: jax.Array) -> jax.Array:
    """Aᵀ M A of every tile of ``m`` (4, 4, N, th, tw, O) → the 2x2 output tiles laid out as (N, 2th, 2tw, O)."""
    ar = jnp.stack([m[0] + m[1] + m[2], m[1] - m[2] - m[3]])          # Aᵀ M: (2, 4, N, th, tw, O)
    y = jnp.stack([ar[:, 0] + ar[:, 1] + ar[:, 2], ar[:, 1] - ar[:, 2] - ar[:, 3]], axis=1)   # (2, 2, N, th, tw, O)
    _, _, n, th, tw, o = y.shape
    return y.transpose(2, 3, 0, 4, 1, 5).reshape(n, 2 * th, 2 * tw, o)


def conv3x3(x: jax.Array, kernel: jax.Array | None = None, *, transformed: jax.Array | None = None,
            precision=None) -> jax.Array:
    """``x`` (N, H, W, Cin) convolved with the 3x3 ``kernel`` (HWIO), stride 1, padding 1 → (N, H, W, Cout).

    Pass ``transformed=winograd_kernel(kernel)`` instead of ``kernel`` to reuse a transformed kernel. Odd
    ``H`` / ``W`` are padded to whole 2x2 tiles and cropped back."""
    if transformed is None:
        if kernel is None or kernel.shape[:2] != (3, 3):
            raise ValueError(f"conv3x3 takes a (3, 3, Cin, Cout) kernel, got {None if kernel is None else kernel.shape}")
        transformed = winograd_kernel(kernel)
    n, h, w, c = x.shape
    if transformed.shape[:3] != (4, 4, c):
        raise ValueError(f"transformed kernel {transformed.shape} does not take {c} input channels")
    th, tw = -(-h // 2), -(-w // 2)                                   # 2x2 output tiles per column / row
    xp = jnp.pad(x, ((0, 0), (1, 2 * th - h + 1), (1, 2 * tw - w + 1), (0, 0)))
    v = _input_transform(xp)
    m = jnp.einsum("pqnhwc,pqco->pqnhwo", v, transformed.astype(v.dtype), precision=precision)   # 16 matmuls
    y = _output_transform(m)
    return y[:, :h, :w] if (2 * th != h or 2 * tw != w) else y
