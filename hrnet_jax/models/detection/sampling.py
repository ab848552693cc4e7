"""Target assignment and random sampling under static shapes (one image; ``jax.vmap`` adds the batch).

:func:`max_iou_assign` is mmdet's ``MaxIoUAssigner`` (with ``gt_max_assign_all``): negatives have max IoU in
[0, neg_thr), positives max IoU >= pos_thr (to their best gt), then every box whose IoU with a gt equals that gt's
best IoU (if >= min_pos_iou) goes to that gt (the last such gt wins, as mmdet's loop). Invalid (padding) boxes are
ignored; with no valid gt every valid box is negative.

:func:`random_sample` is mmdet's ``RandomSampler`` (``neg_pos_ub=-1``): up to ``int(num * pos_fraction)`` positives
drawn uniformly, negatives fill the rest up to ``num``. Uniform random keys + ``top_k`` over the eligible boxes give
a uniformly random subset with a fixed-size output.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from hrnet_jax.models.detection.boxes import pairwise_iou


def max_iou_assign(boxes, box_valid, gt_boxes, gt_valid, pos_thr: float, neg_thr: float, min_pos_iou: float,
                   offset: float = 0.0):
    """→ (assigned (N,) int32: -1 ignore, 0 negative, k + 1 positive matched to gt k; max IoU (N,))."""
    iou = pairwise_iou(gt_boxes.astype(jnp.float32), boxes.astype(jnp.float32), offset)  # (M, N)
    iou = jnp.where(gt_valid[:, None], iou, 0.0)
    iou = jnp.where(box_valid[None, :], iou, -1.0)
    max_ov = jnp.max(iou, axis=0)
    argmax = jnp.argmax(iou, axis=0).astype(jnp.int32)
    assigned = jnp.full(max_ov.shape, -1, jnp.int32)
    assigned = jnp.where((max_ov >= 0) & (max_ov < neg_thr), 0, assigned)
    assigned = jnp.where(max_ov >= pos_thr, argmax + 1, assigned)
    gt_max = jnp.max(iou, axis=1)  # (M,)
    eq = (iou == gt_max[:, None]) & (gt_max[:, None] >= min_pos_iou) & gt_valid[:, None] & box_valid[None, :]
    m = gt_boxes.shape[0]
    last = jnp.max(jnp.where(eq, jnp.arange(m, dtype=jnp.int32)[:, None], -1), axis=0)
    assigned = jnp.where(last >= 0, last + 1, assigned)
    return assigned, max_ov


def random_sample(key, assigned, num: int, pos_fraction: float):
    """→ (pos_idx (P,), pos_ok (P,), neg_idx (num,), neg_ok (num,)) with P = int(num * pos_fraction); the number of
    sampled negatives is ``num - sum(pos_ok)`` (or fewer if there are not enough)."""
    max_pos = int(num * pos_fraction)
    n = assigned.shape[0]
    k_pos, k_neg = jax.random.split(key)
    pos_key = jnp.where(assigned > 0, jax.random.uniform(k_pos, (n,)), -1.0)
    pos_val, pos_idx = jax.lax.top_k(pos_key, min(max_pos, n))
    pos_ok = pos_val >= 0
    neg_key = jnp.where(assigned == 0, jax.random.uniform(k_neg, (n,)), -1.0)
    neg_val, neg_idx = jax.lax.top_k(neg_key, min(num, n))
    num_pos = jnp.sum(pos_ok.astype(jnp.int32))
    neg_ok = (neg_val >= 0) & (jnp.arange(neg_val.shape[0]) < num - num_pos)
    return pos_idx.astype(jnp.int32), pos_ok, neg_idx.astype(jnp.int32), neg_ok
