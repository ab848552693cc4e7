"""Greedy non-maximum suppression with a fixed output count (static shapes, jit / vmap friendly).

:func:`nms_padded` picks, ``max_out`` times at most, the highest-scoring box still alive and kills every alive box
whose IoU with it is above ``iou_thresh`` (strictly, as ``torchvision.ops.nms``). The picks come out in descending
score order, so the first ``k`` picks equal the first ``k`` indices of a full greedy NMS: stopping early is exact,
and no N x N IoU matrix is built (each pick costs one O(N) IoU row). :func:`batched_nms_padded` is per-class NMS by
the coordinate-offset trick of ``torchvision.ops.batched_nms``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from hrnet_jax.models.detection.boxes import box_area


def nms_padded(boxes, scores, valid, iou_thresh: float, max_out: int, offset: float = 0.0):
    """``boxes`` (N, 4), ``scores`` (N,), ``valid`` (N,) bool → ``(indices (max_out,) int32, keep (max_out,) bool)``;
    unused slots have index 0 and keep False. Add leading axes with ``jax.vmap``."""
    boxes = jax.lax.stop_gradient(boxes).astype(jnp.float32)
    scores = jax.lax.stop_gradient(scores).astype(jnp.float32)
    area = box_area(boxes, offset)
    neg = jnp.float32(-jnp.inf)

    def cond(c):
        k, alive, _, _ = c
        return (k < max_out) & jnp.any(alive)

    def body(c):
        k, alive, idx, keep = c
        i = jnp.argmax(jnp.where(alive, scores, neg))
        b = boxes[i]
        lt = jnp.maximum(b[:2], boxes[:, :2])
        rb = jnp.minimum(b[2:], boxes[:, 2:])
        wh = jnp.maximum(rb - lt + offset, 0.0)
        inter = wh[:, 0] * wh[:, 1]
        iou = inter / jnp.maximum(area[i] + area - inter, 1e-9)
        alive = alive & (iou <= iou_thresh)
        alive = alive.at[i].set(False)
        return k + 1, alive, idx.at[k].set(i.astype(jnp.int32)), keep.at[k].set(True)

    n = boxes.shape[0]
    alive = valid & jnp.isfinite(scores)
    init = (jnp.int32(0), alive, jnp.zeros((max_out,), jnp.int32), jnp.zeros((max_out,), bool))
    if n == 0:
        return init[2], init[3]
    _, _, idx, keep = jax.lax.while_loop(cond, body, init)
    return idx, keep


def batched_nms_padded(boxes, scores, classes, valid, iou_thresh: float, max_out: int, offset: float = 0.0):
    """Per-class NMS (boxes of different classes never suppress each other): every class is moved to its own
    coordinate range, ``class * (max coordinate + 1)``, then one :func:`nms_padded`."""
    b = jax.lax.stop_gradient(boxes).astype(jnp.float32)
    span = jnp.max(jnp.where(valid[:, None], b, 0.0)) + 1.0 + offset
    shifted = b + (classes.astype(jnp.float32) * span)[:, None]
    return nms_padded(shifted, scores, valid, iou_thresh, max_out, offset)
