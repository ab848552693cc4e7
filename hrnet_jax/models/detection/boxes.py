"""Box arithmetic for the two-stage detector: IoU, clipping, and the delta box coder.

Boxes are ``(..., 4)`` x1, y1, x2, y2 in input pixels. ``offset`` selects the box convention: ``0.0`` is mmdet v2 /
torchvision (width = x2 - x1, clip to [0, W]); ``1.0`` is the legacy mmdet v1 convention of the official
HRNet-Object-Detection code (width = x2 - x1 + 1, decoded corners shifted by 0.5, clip to [0, W - 1]).
"""
from __future__ import annotations

import math
from typing import Sequence

import jax.numpy as jnp

# mmdet ``wh_ratio_clip = 16 / 1000``: decoded log width / height ratios are clamped to +-log(1000 / 16).
WH_RATIO_CLIP = abs(math.log(16.0 / 1000.0))


def box_area(b, offset: float = 0.0):
    return (b[..., 2] - b[..., 0] + offset) * (b[..., 3] - b[..., 1] + offset)


def pairwise_iou(a, b, offset: float = 0.0):
    """IoU of every box in ``a`` (..., N, 4) with every box in ``b`` (..., M, 4): (..., N, M)."""
    lt = jnp.maximum(a[..., :, None, :2], b[..., None, :, :2])
    rb = jnp.minimum(a[..., :, None, 2:], b[..., None, :, 2:])
    wh = jnp.maximum(rb - lt + offset, 0.0)
    inter = wh[..., 0] * wh[..., 1]
    union = box_area(a, offset)[..., :, None] + box_area(b, offset)[..., None, :] - inter
    return inter / jnp.maximum(union, 1e-9)


def clip_boxes(boxes, hw, offset: float = 0.0):
    """Clips (..., 4) boxes to an image of valid size ``hw`` (..., 2) (h, w) broadcastable to the boxes' batch."""
    h = jnp.asarray(hw[..., 0], boxes.dtype) - offset
    w = jnp.asarray(hw[..., 1], boxes.dtype) - offset
    x1 = jnp.clip(boxes[..., 0], 0.0, w)
    y1 = jnp.clip(boxes[..., 1], 0.0, h)
    x2 = jnp.clip(boxes[..., 2], 0.0, w)
    y2 = jnp.clip(boxes[..., 3], 0.0, h)
    return jnp.stack([x1, y1, x2, y2], axis=-1)


class BoxCoder:
    """mmdet ``DeltaXYWHBBoxCoder`` (v2) / ``bbox2delta`` + ``delta2bbox`` (v1): deltas are
    ``((dx, dy, dw, dh) - means) / stds`` with dx = (gx - px) / pw, dw = log(gw / pw); decoding clamps dw, dh to
    +-log(1000/16). RPN uses stds (1, 1, 1, 1), the R-CNN box head (0.1, 0.1, 0.2, 0.2)."""

    def __init__(self, stds: Sequence[float] = (1.0, 1.0, 1.0, 1.0), means: Sequence[float] = (0.0, 0.0, 0.0, 0.0),
                 offset: float = 0.0, clip: float = WH_RATIO_CLIP):
        self.stds = tuple(float(s) for s in stds)
        self.means = tuple(float(m) for m in means)
        self.offset = float(offset)
        self.clip = float(clip)

    def _split(self, b):
        w = b[..., 2] - b[..., 0] + self.offset
        h = b[..., 3] - b[..., 1] + self.offset
        return (b[..., 0] + b[..., 2]) * 0.5, (b[..., 1] + b[..., 3]) * 0.5, w, h

    def encode(self, proposals, gt):
        px, py, pw, ph = self._split(proposals)
        gx, gy, gw, gh = self._split(gt)
        pw, ph = jnp.maximum(pw, 1e-6), jnp.maximum(ph, 1e-6)
        d = jnp.stack([(gx - px) / pw, (gy - py) / ph,
                       jnp.log(jnp.maximum(gw, 1e-6) / pw), jnp.log(jnp.maximum(gh, 1e-6) / ph)], axis=-1)
        return (d - jnp.asarray(self.means, d.dtype)) / jnp.asarray(self.stds, d.dtype)

    def decode(self, rois, deltas):
        """``rois`` (..., 4), ``deltas`` (..., 4) broadcastable to each other → boxes (..., 4)."""
        d = deltas * jnp.asarray(self.stds, deltas.dtype) + jnp.asarray(self.means, deltas.dtype)
        dw = jnp.clip(d[..., 2], -self.clip, self.clip)
        dh = jnp.clip(d[..., 3], -self.clip, self.clip)
        px, py, pw, ph = self._split(rois)
        gx, gy = px + pw * d[..., 0], py + ph * d[..., 1]
        gw, gh = pw * jnp.exp(dw), ph * jnp.exp(dh)
        half = 0.5 * self.offset  # v1: x1 = gx - 0.5 gw + 0.5, x2 = gx + 0.5 gw - 0.5
        return jnp.stack([gx - 0.5 * gw + half, gy - 0.5 * gh + half,
                          gx + 0.5 * gw - half, gy + 0.5 * gh - half], axis=-1)
