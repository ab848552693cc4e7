"""Anchor grids of the RPN (host-side numpy: every shape is static).

mmdet ``AnchorGenerator`` with ``base_size = stride``, ``scales = (8,)``, ``ratios = (0.5, 1, 2)``, scale-major order
(for each ratio, each scale), anchors at location (y, x) ordered ``((y * W + x) * A + a)`` like mmdet's flattening
of the NCHW RPN outputs. Two centre conventions:

* ``legacy=False`` (mmdet v2, ``center_offset=0``; the mmdetection HRNet checkpoints): anchors centred on
  ``(x * stride, y * stride)``, corners ``c -+ 0.5 * size`` (no rounding).
* ``legacy=True`` (mmdet v1, which HRNet-Object-Detection forks; the official HRNet checkpoints were trained with
  it): centre ``(stride - 1) / 2`` in the first cell, corners ``c -+ 0.5 * (size - 1)`` rounded to integers.

The convention must match the checkpoint (it shifts every proposal by up to half a stride otherwise).
"""
from __future__ import annotations

import functools

import numpy as np

STRIDES = (4, 8, 16, 32, 64)
RATIOS = (0.5, 1.0, 2.0)
SCALES = (8.0,)


def base_anchors(stride: int, scales=SCALES, ratios=RATIOS, legacy: bool = False) -> np.ndarray:
    """(A, 4) anchors of the cell at the origin, A = len(ratios) * len(scales)."""
    r = np.asarray(ratios, np.float64)
    s = np.asarray(scales, np.float64)
    h_ratios = np.sqrt(r)
    w_ratios = 1.0 / h_ratios
    ws = (stride * w_ratios[:, None] * s[None, :]).reshape(-1)
    hs = (stride * h_ratios[:, None] * s[None, :]).reshape(-1)
    if legacy:
        c = 0.5 * (stride - 1)
        a = np.stack([c - 0.5 * (ws - 1), c - 0.5 * (hs - 1), c + 0.5 * (ws - 1), c + 0.5 * (hs - 1)], -1)
        return np.round(a)
    return np.stack([-0.5 * ws, -0.5 * hs, 0.5 * ws, 0.5 * hs], -1)


@functools.lru_cache(maxsize=64)
def grid_anchors(feat_hw: tuple, stride: int, legacy: bool = False, scales=SCALES, ratios=RATIOS) -> np.ndarray:
    """(H * W * A, 4) float32 anchors of one level."""
    h, w = feat_hw
    base = base_anchors(stride, scales, ratios, legacy)
    sx = np.arange(w, dtype=np.float64) * stride
    sy = np.arange(h, dtype=np.float64) * stride
    yy, xx = np.meshgrid(sy, sx, indexing="ij")
    shifts = np.stack([xx, yy, xx, yy], -1).reshape(-1, 1, 4)
    return (shifts + base[None]).reshape(-1, 4).astype(np.float32)


@functools.lru_cache(maxsize=64)
def grid_cells(feat_hw: tuple, num_anchors: int) -> tuple[np.ndarray, np.ndarray]:
    """(H * W * A,) int32 row and column of each anchor's feature cell (for mmdet's ``valid_flags``)."""
    h, w = feat_hw
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    rep = lambda a: np.repeat(a.reshape(-1), num_anchors).astype(np.int32)
    return rep(yy), rep(xx)
