"""Faster R-CNN losses with mmdet v1's normalisation (the HRNet-Object-Detection recipe).

* RPN: sigmoid binary cross-entropy over the sampled anchors + smooth-L1 (beta 1/9) on the positives' deltas, both
  divided by the number of sampled anchors ``sum_i (max(pos_i, 1) + max(neg_i, 1))`` (``anchor_target``).
* R-CNN: softmax cross-entropy over the sampled RoIs, divided by their number; smooth-L1 (beta 1) on the positives'
  class-specific deltas, divided by the number of sampled RoIs (``avg_factor = bbox_targets.size(0)``).

``rpn_beta`` / ``rcnn_beta`` = 0 gives the L1 loss of mmdet v2 configs.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def smooth_l1(diff, beta: float):
    a = jnp.abs(diff)
    if beta <= 0:
        return a
    return jnp.where(a < beta, 0.5 * a * a / beta, a - 0.5 * beta)


def detection_loss(out: dict, rpn_beta: float = 1.0 / 9.0, rcnn_beta: float = 1.0, rpn_weight: float = 1.0,
                   rcnn_weight: float = 1.0):
    """``out``: the train-mode dict of :class:`~hrnet_jax.models.detection.faster_rcnn.FasterRCNN`.
    Returns ``(loss, aux)``; aux holds the four terms, the R-CNN accuracy and positive counts per image."""
    f32 = jnp.float32
    # RPN
    rv = out["rpn_valid"].astype(f32)
    rp = out["rpn_pos"].astype(f32)
    n_rpn = jnp.sum(jnp.maximum(out["rpn_num_pos"], 1) + jnp.maximum(out["rpn_num_neg"], 1)).astype(f32)
    lg = out["rpn_logits"].astype(f32)
    bce = jnp.maximum(lg, 0) - lg * rp + jnp.log1p(jnp.exp(-jnp.abs(lg)))
    rpn_cls = jnp.sum(bce * rv) / n_rpn
    rpn_box = jnp.sum(smooth_l1(out["rpn_deltas"] - out["rpn_targets"], rpn_beta) * rp[..., None]) / n_rpn
    # R-CNN
    cv = out["rcnn_valid"].astype(f32)
    cp = out["rcnn_pos"].astype(f32)
    n_roi = jnp.maximum(jnp.sum(cv), 1.0)
    logits = out["rcnn_logits"].astype(f32)
    logp = jax.nn.log_softmax(logits, axis=-1)
    labels = out["rcnn_labels"]
    ce = -jnp.take_along_axis(logp, labels[..., None], axis=-1)[..., 0]
    rcnn_cls = jnp.sum(ce * cv) / n_roi
    rcnn_box = jnp.sum(smooth_l1(out["rcnn_deltas"] - out["rcnn_targets"], rcnn_beta) * cp[..., None]) / n_roi
    acc = jnp.sum((jnp.argmax(logits, -1) == labels) * cv) / n_roi
    loss = rpn_weight * (rpn_cls + rpn_box) + rcnn_weight * (rcnn_cls + rcnn_box)
    b = lg.shape[0]
    aux = {"rpn_cls": rpn_cls, "rpn_box": rpn_box, "rcnn_cls": rcnn_cls, "rcnn_box": rcnn_box, "rcnn_acc": acc,
           "num_pos_anchors": jnp.sum(rp) / b, "num_pos_rois": jnp.sum(cp) / b}
    return loss, aux
