"""RPN head and proposal generation (mmdet ``RPNHead`` / ``get_bboxes_single`` with static shapes)."""
from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import flax.linen as nn

from hrnet_jax.models.detection.boxes import BoxCoder, clip_boxes
from hrnet_jax.models.detection.nms import nms_padded
from hrnet_jax.models.layers import conv

RPN_INIT = nn.initializers.normal(0.01)  # mmdet RPNHead.init_weights: normal(0, 0.01), zero bias


class RPNHead(nn.Module):
    """Shared over levels: 3x3 conv (``rpn_conv``) + ReLU, 1x1 ``rpn_cls`` (A sigmoid logits per location) and 1x1
    ``rpn_reg`` (4A deltas). Returns per level ``(logits (B, H*W*A), deltas (B, H*W*A, 4))`` flattened in mmdet's
    (y, x, anchor) order."""
    num_anchors: int = 3
    feat_channels: int = 256
    dtype: Any = None

    @nn.compact
    def __call__(self, feats: Sequence):
        kw = dict(dtype=self.dtype, kernel_init=RPN_INIT, bias=True)
        c3 = conv(self.feat_channels, 3, 1, name="rpn_conv", **kw)
        cls = conv(self.num_anchors, 1, 1, name="rpn_cls", **kw)
        reg = conv(4 * self.num_anchors, 1, 1, name="rpn_reg", **kw)
        outs = []
        for f in feats:
            x = nn.relu(c3(f))
            b = f.shape[0]
            outs.append((cls(x).astype(jnp.float32).reshape(b, -1),
                         reg(x).astype(jnp.float32).reshape(b, -1, 4)))
        return outs


def proposals_one_image(logits, deltas, anchors, image_hw, *, pre_nms_top_n: int, post_nms_top_n: int,
                        max_proposals: int, nms_thresh: float, min_size: float = 0.0, offset: float = 0.0):
    """One image: per level top ``pre_nms_top_n`` by score, decode (stds 1), clip, drop boxes smaller than
    ``min_size`` (by masking), NMS per level keeping ``post_nms_top_n``, then the best ``max_proposals`` over all
    levels (mmdet v1 ``nms_across_levels=False``). ``logits``/``deltas``/``anchors`` are per-level lists.
    Returns ``(boxes (max_proposals, 4), scores (max_proposals,), valid (max_proposals,))`` sorted by score;
    no gradient flows into them (mmdet detaches the proposals)."""
    coder = BoxCoder((1.0, 1.0, 1.0, 1.0), offset=offset)
    k = max(min(pre_nms_top_n, lg.shape[0]) for lg in logits)
    lv_boxes, lv_scores, lv_valid = [], [], []
    for lg, dl, an in zip(logits, deltas, anchors):
        lg, dl = jax.lax.stop_gradient(lg), jax.lax.stop_gradient(dl)
        kl = min(pre_nms_top_n, lg.shape[0])
        s, idx = jax.lax.top_k(lg, kl)  # sigmoid is monotonic
        s = jax.nn.sigmoid(s)
        bx = clip_boxes(coder.decode(jnp.asarray(an)[idx], dl[idx]), image_hw, offset)
        ok = jnp.ones((kl,), bool)
        if min_size > 0:
            ok = ((bx[:, 2] - bx[:, 0] + offset) >= min_size) & ((bx[:, 3] - bx[:, 1] + offset) >= min_size)
        pad = k - kl
        lv_boxes.append(jnp.pad(bx, ((0, pad), (0, 0))))
        lv_scores.append(jnp.pad(s, (0, pad), constant_values=-jnp.inf))
        lv_valid.append(jnp.pad(ok, (0, pad)))
    boxes, scores, valid = jnp.stack(lv_boxes), jnp.stack(lv_scores), jnp.stack(lv_valid)  # (L, k, ...)
    post = min(post_nms_top_n, k)
    idx, keep = jax.vmap(lambda b, s, v: nms_padded(b, s, v, nms_thresh, post, offset))(boxes, scores, valid)
    boxes = jnp.take_along_axis(boxes, idx[..., None], axis=1).reshape(-1, 4)
    scores = jnp.where(keep, jnp.take_along_axis(scores, idx, axis=1), -jnp.inf).reshape(-1)
    n = min(max_proposals, scores.shape[0])
    top, order = jax.lax.top_k(scores, n)
    return boxes[order], jnp.where(jnp.isfinite(top), top, 0.0), jnp.isfinite(top)
