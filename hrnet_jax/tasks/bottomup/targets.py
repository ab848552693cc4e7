"""Bottom-up training targets (host side, numpy), as the reference's ``HeatmapGenerator`` / ``JointsGenerator``
(HigherHRNet ``lib/dataset/target_generators/target_generators.py``).

Heatmaps, at each output resolution separately (1/4 and 1/2 of the input), from the joints already mapped to that
resolution: a labelled joint (v > 0) at ``(x, y) = (int(px), int(py))`` (truncation) inside the map gets the
unnormalised Gaussian ``exp(-(dx² + dy²) / (2σ²))`` (peak 1 at ``(x, y)``) on the ``(6σ + 3)²`` window about it,
combined over people by maximum. σ is in pixels *of that resolution* (the yaml's ``SIGMA: 2`` at 1/4 and at
1/2), so the Gaussian covers the same fraction of a person at both resolutions. The reference's optional
scale-aware variant (``ScaleAwareHeatmapGenerator``, ``SCALE_AWARE_SIGMA``; off in every released yaml) takes a
per-person σ = ``base_sigma · max(box w, h) / base_size`` (divided by the augmentation zoom): pass ``sigmas``.

Joints for the associative-embedding loss, at 1/4: ``(M, K, 2)`` int32 rows ``[index, 1]`` per person, where
``index = k·H·W + y·W + x`` (with ``tag_per_joint``; ``y·W + x`` without) points into the flattened
``(K, H, W)`` tag maps and the visible joints of a person are packed into its first slots (unused slots
``[0, 0]``), exactly as the reference; people past ``M`` are dropped (counted by the caller).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def gaussian_kernel(sigma: float) -> np.ndarray:
    """The reference's ``(6σ + 3)²`` kernel with its peak (1) at index ``3σ + 1``."""
    size = 6 * sigma + 3
    x = np.arange(0, size, 1, float)
    y = x[:, None]
    c = 3 * sigma + 1
    return np.exp(-((x - c) ** 2 + (y - c) ** 2) / (2 * sigma ** 2))


def heatmaps(joints: np.ndarray, res_hw: Sequence[int], sigma: float,
             sigmas: Sequence[float] | None = None) -> np.ndarray:
    """(H, W, K) float32 heatmaps of ``joints`` (N, K, ≥3) [x, y, v] at this resolution.

    ``sigmas`` (N,): per-person σ (the scale-aware variant) instead of ``sigma``."""
    joints = np.asarray(joints, np.float64)
    hh, ww = int(res_hw[0]), int(res_hw[1])
    k = joints.shape[1] if joints.ndim == 3 else 0
    out = np.zeros((k, hh, ww), np.float32)
    kernels = {}
    for n in range(joints.shape[0]):
        s = float(sigma if sigmas is None else sigmas[n])
        if s not in kernels:
            kernels[s] = gaussian_kernel(s)
        g = kernels[s]
        for j in range(k):
            px, py, v = joints[n, j, :3]
            if v <= 0:
                continue
            x, y = int(px), int(py)
            if x < 0 or y < 0 or x >= ww or y >= hh:
                continue
            ul = int(np.round(x - 3 * s - 1)), int(np.round(y - 3 * s - 1))
            br = int(np.round(x + 3 * s + 2)), int(np.round(y + 3 * s + 2))
            c, d = max(0, -ul[0]), min(br[0], ww) - ul[0]
            a, b = max(0, -ul[1]), min(br[1], hh) - ul[1]
            cc, dd = max(0, ul[0]), min(br[0], ww)
            aa, bb = max(0, ul[1]), min(br[1], hh)
            np.maximum(out[j, aa:bb, cc:dd], g[a:b, c:d], out=out[j, aa:bb, cc:dd])
    return np.ascontiguousarray(out.transpose(1, 2, 0))


def joint_indices(joints: np.ndarray, max_people: int, res_hw: Sequence[int],
                  tag_per_joint: bool = True) -> np.ndarray:
    """(M, K, 2) int32 ``[flat index into the (K, H, W) tag maps, 1]`` of the visible joints inside the map,
    packed per person; rows past the people / joints are zeros."""
    joints = np.asarray(joints, np.float64)
    hh, ww = int(res_hw[0]), int(res_hw[1])
    k = joints.shape[1]
    out = np.zeros((int(max_people), k, 2), np.int32)
    for n in range(min(joints.shape[0], int(max_people))):
        tot = 0
        for j in range(k):
            px, py, v = joints[n, j, :3]
            x, y = int(px), int(py)
            if v > 0 and 0 <= x < ww and 0 <= y < hh:
                out[n, tot] = ((j * hh * ww if tag_per_joint else 0) + y * ww + x, 1)
                tot += 1
    return out


def scale_aware_sigmas(bbox: np.ndarray, base_sigma: float = 2.0, base_size: float = 256.0,
                       int_sigma: bool = False) -> np.ndarray:
    """Per-person σ of the reference's scale-aware option: ``base_sigma · max(w, h) / base_size`` (rounded up
    to an integer with ``int_sigma``)."""
    bbox = np.asarray(bbox, np.float64).reshape(-1, 4)
    s = np.maximum(bbox[:, 2], bbox[:, 3]) / base_size * base_sigma
    if int_sigma:
        s = np.round(s + 0.5).astype(np.int64).astype(np.float64)
    return np.maximum(s, 1e-3)
