"""Gaussian heatmap targets (host side, numpy), as the official top-down pipeline.

For each joint with input-pixel coordinates (x, y): ``mu = int(coord / stride + 0.5)`` (an integer heatmap cell,
``int`` truncating toward zero), and an unnormalised Gaussian ``exp(-d² / (2σ²))`` with peak 1 is written on the
``(6σ+1)²`` window around ``mu`` (clipped to the heatmap). ``target_weight`` is 1 for labelled joints (v > 0) and is
set to 0 when the window lies entirely outside the heatmap. sigma 2 at 256x192 input (64x48 heatmaps), 3 at 384x288.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def default_sigma(input_size_hw: Sequence[int]) -> float:
    """The official sigma for an input size: 2 up to 256x192-ish inputs, 3 from 384x288 up."""
    return 3.0 if max(input_size_hw) >= 384 else 2.0


def _axis_gaussian(mu: np.ndarray, n: int, sigma: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(K, n) 1-D Gaussian factors on the official window, plus the window start/end (exclusive) per joint."""
    tmp = sigma * 3
    ul = np.trunc(mu - tmp).astype(np.int64)
    br = np.trunc(mu + tmp + 1).astype(np.int64)
    size = 2 * tmp + 1
    glen = len(np.arange(0, size, 1))          # length of the official g array
    g0 = size // 2                              # its centre index
    gi = np.arange(n)[None, :] - ul[:, None]    # index into g for every heatmap cell
    inside = (gi >= 0) & (gi < glen)
    vals = np.exp(-((gi - g0) ** 2) / (2.0 * sigma ** 2)) * inside
    return vals.astype(np.float32), ul, br


def generate_heatmaps(joints: np.ndarray, vis: np.ndarray, input_size_hw: Sequence[int],
                      heatmap_size_hw: Sequence[int], sigma: float,
                      joint_weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Targets for one example.

    Args:
      joints: (K, 2) joint coordinates in input-crop pixels.
      vis: (K,) visibility; > 0 means labelled.
      input_size_hw / heatmap_size_hw: (H, W) of the network input / output.
      joint_weights: optional (K,) per-joint weights multiplied into target_weight (USE_DIFFERENT_JOINTS_WEIGHT).
    Returns:
      heatmaps (H/4, W/4, K) float32 (NHWC layout, matching the model output) and target_weight (K,) float32.
    """
    joints = np.asarray(joints, dtype=np.float64)
    hm_h, hm_w = int(heatmap_size_hw[0]), int(heatmap_size_hw[1])
    stride_x = float(input_size_hw[1]) / hm_w
    stride_y = float(input_size_hw[0]) / hm_h
    mu_x = np.trunc(joints[:, 0] / stride_x + 0.5)
    mu_y = np.trunc(joints[:, 1] / stride_y + 0.5)
    gx, ulx, brx = _axis_gaussian(mu_x, hm_w, sigma)
    gy, uly, bry = _axis_gaussian(mu_y, hm_h, sigma)
    weight = (np.asarray(vis, dtype=np.float32) > 0).astype(np.float32)
    outside = (ulx >= hm_w) | (uly >= hm_h) | (brx < 0) | (bry < 0)
    weight = np.where(outside, 0.0, weight).astype(np.float32)
    # exp(-(dx²+dy²)/2σ²) = exp(-dx²/2σ²)·exp(-dy²/2σ²): separable outer product per joint.
    hm = np.einsum("ky,kx->yxk", gy, gx * (weight > 0.5)[:, None])
    if joint_weights is not None:
        weight = weight * np.asarray(joint_weights, dtype=np.float32)
    return hm.astype(np.float32), weight
