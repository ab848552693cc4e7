"""RoIAlign (single- and multi-level) by bilinear gathers over all RoIs at once (no loop over boxes).

Single level: :func:`roi_align` computes what ``torchvision.ops.roi_align`` computes for a fixed
``sampling_ratio > 0`` (the adaptive ``sampling_ratio=0`` has a per-RoI sample count, i.e. a dynamic shape, and is
refused): bins of ``roi size / output_size``, ``sampling_ratio``² samples per bin at the sub-bin centres, bilinear
interpolation with zero outside [-1, size] and edge clamping, averaged. ``aligned=True`` shifts by -0.5 pixel;
``aligned=False`` forces RoIs to at least 1x1. ``legacy=True`` is the mmdet v1 ``RoIAlign`` kernel of the official
HRNet detection code: end coordinate ``(x2 + 1) * scale``, no half-pixel shift, no 1x1 minimum.

Multi-level: :func:`multilevel_roi_align` assigns each RoI to a level with mmdet's ``SingleRoIExtractor`` rule
``floor(log2(sqrt(w h) / 56 + 1e-6))`` clamped to the available levels, then samples all levels' maps flattened into
one table, so every RoI costs the same 4 gathers per sample point whatever its level.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

FINEST_SCALE = 56.0


def map_roi_levels(boxes, num_levels: int, offset: float = 0.0, finest_scale: float = FINEST_SCALE):
    """Level index (int32) of each box of (..., 4) (mmdet ``SingleRoIExtractor.map_roi_levels``)."""
    scale = jnp.sqrt(jnp.maximum((boxes[..., 2] - boxes[..., 0] + offset) * (boxes[..., 3] - boxes[..., 1] + offset),
                                 0.0))
    lvl = jnp.floor(jnp.log2(scale / finest_scale + 1e-6))
    return jnp.clip(lvl, 0, num_levels - 1).astype(jnp.int32)


def _sample_coords(start, size, out: int, ratio: int):
    """(..., out * ratio) sample positions along one axis."""
    bin_size = size / out
    grid = (np.arange(out)[:, None] + (np.arange(ratio)[None, :] + 0.5) / ratio).reshape(-1)
    return start[..., None] + bin_size[..., None] * jnp.asarray(grid, start.dtype)


def _roi_geometry(boxes, scale, aligned: bool, legacy: bool):
    x1, y1, x2, y2 = (boxes[..., i] for i in range(4))
    if legacy:
        sx, sy, ex, ey = x1 * scale, y1 * scale, (x2 + 1.0) * scale, (y2 + 1.0) * scale
        w, h = jnp.maximum(ex - sx, 0.0), jnp.maximum(ey - sy, 0.0)
    else:
        off = 0.5 if aligned else 0.0
        sx, sy, ex, ey = x1 * scale - off, y1 * scale - off, x2 * scale - off, y2 * scale - off
        w, h = ex - sx, ey - sy
        if not aligned:
            w, h = jnp.maximum(w, 1.0), jnp.maximum(h, 1.0)
    return sx, sy, w, h


def _axis_weights(coord, size):
    """Bilinear corner indices and weights along one axis (torchvision / mmdet ``bilinear_interpolate``)."""
    size_f = size.astype(coord.dtype)
    inside = (coord >= -1.0) & (coord <= size_f)
    c = jnp.maximum(coord, 0.0)
    low = jnp.floor(c).astype(jnp.int32)
    at_end = low >= size - 1
    low = jnp.where(at_end, size - 1, low)
    high = jnp.where(at_end, size - 1, low + 1)
    c = jnp.where(at_end, low.astype(coord.dtype), c)
    frac = c - low.astype(coord.dtype)
    return low, high, 1.0 - frac, frac, inside


def _roi_align_table(table, base, height, width, boxes, scale, output_size: int, sampling_ratio: int,
                     aligned: bool, legacy: bool):
    """Samples RoIs ``boxes`` (R, 4) from a flattened map ``table`` (T, C) whose level for RoI r starts at row
    ``base[r]`` and is ``height[r] x width[r]`` (row-major); ``scale`` (R,) is the spatial scale. → (R, S, S, C)."""
    sx, sy, w, h = _roi_geometry(boxes, scale, aligned, legacy)
    s, n = output_size, sampling_ratio
    ys = _sample_coords(sy, h, s, n)  # (R, s*n)
    xs = _sample_coords(sx, w, s, n)
    y0, y1, hy, ly, iny = _axis_weights(ys, height[:, None])
    x0, x1, hx, lx, inx = _axis_weights(xs, width[:, None])
    valid = (iny[:, :, None] & inx[:, None, :]).astype(table.dtype)  # (R, Y, X)
    out = 0.0
    for yi, wy in ((y0, hy), (y1, ly)):
        for xi, wx in ((x0, hx), (x1, lx)):
            idx = base[:, None, None] + yi[:, :, None] * width[:, None, None] + xi[:, None, :]  # (R, Y, X)
            wgt = (wy[:, :, None] * wx[:, None, :]).astype(table.dtype) * valid
            out = out + jnp.take(table, idx, axis=0, mode="clip") * wgt[..., None]
    r, c = boxes.shape[0], table.shape[-1]
    out = out.reshape(r, s, n, s, n, c)
    return jnp.mean(out, axis=(2, 4))


def _check_ratio(sampling_ratio: int):
    if sampling_ratio <= 0:
        raise ValueError(f"sampling_ratio must be a positive integer (the adaptive 0 has a data-dependent sample "
                         f"count, not a static shape); got {sampling_ratio}")


def roi_align(feature, boxes, output_size: int = 7, spatial_scale: float = 1.0, sampling_ratio: int = 2,
              aligned: bool = False, legacy: bool = False):
    """One map ``feature`` (H, W, C), ``boxes`` (R, 4) in input pixels → (R, S, S, C)."""
    _check_ratio(sampling_ratio)
    h, w, c = feature.shape
    r = boxes.shape[0]
    full = lambda v: jnp.full((r,), v, jnp.int32)
    return _roi_align_table(feature.reshape(h * w, c), full(0), full(h), full(w), boxes.astype(jnp.float32),
                            jnp.full((r,), spatial_scale, jnp.float32), output_size, sampling_ratio, aligned, legacy)


def multilevel_roi_align(features: Sequence, boxes, strides: Sequence[int], output_size: int = 7,
                         sampling_ratio: int = 2, aligned: bool = False, legacy: bool = False,
                         finest_scale: float = FINEST_SCALE):
    """One image's pyramid ``features`` (list of (H_l, W_l, C)) and RoIs (R, 4) → (R, S, S, C). Add a batch axis
    with ``jax.vmap``."""
    _check_ratio(sampling_ratio)
    n = len(features)
    if len(strides) != n:
        raise ValueError(f"{n} feature maps but {len(strides)} strides")
    hs = np.array([f.shape[0] for f in features], np.int32)
    ws = np.array([f.shape[1] for f in features], np.int32)
    bases = np.concatenate([[0], np.cumsum(hs * ws)[:-1]]).astype(np.int32)
    table = jnp.concatenate([f.reshape(-1, f.shape[-1]) for f in features], axis=0)
    boxes = boxes.astype(jnp.float32)
    lvl = map_roi_levels(boxes, n, 1.0 if legacy else 0.0, finest_scale)
    scales = jnp.asarray([1.0 / s for s in strides], jnp.float32)[lvl]
    return _roi_align_table(table, jnp.asarray(bases)[lvl], jnp.asarray(hs)[lvl], jnp.asarray(ws)[lvl], boxes,
                            scales, output_size, sampling_ratio, aligned, legacy)
