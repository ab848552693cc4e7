"""HRNetV2p + Faster R-CNN with static shapes (one compile under ``jax.jit``).

Defaults are the official config ``HRNet-Object-Detection/configs/hrnet/faster_rcnn_hrnetv2p_w32_1x.py``:

* HRFPN neck (256 channels, 5 levels, strides 4-64); backbone BN frozen (``norm_eval=True``: running statistics even
  when training; the BN affine parameters still train).
* RPN: anchors scale 8, ratios (0.5, 1, 2), strides 4-64; proposals per level top 2000 → NMS 0.7 → 2000, then the
  best 2000 over the levels (that repo builds training proposals with its *test* RPN config, 2000 / 2000 / 2000);
  targets: MaxIoU 0.7 / 0.3 (min_pos_iou 0.3), anchors must lie inside the image (``allowed_border=0``), 256
  sampled, 50 % positives.
* R-CNN: RoIAlign 7x7, sampling ratio 2 on strides 4-32 (level by ``floor(log2(sqrt(wh) / 56))``); MaxIoU 0.5,
  512 RoIs, 25 % positives, ground truth added to the proposals; 2-fc (1024) head, box stds (0.1, 0.1, 0.2, 0.2).
* Test: softmax, class-specific decode, clip, score > 0.05, per-class NMS 0.5, top 100.

``legacy_coords=True`` selects mmdet v1's +1 box conventions (anchors, IoU, box coder, clipping, the RoIAlign
kernel): the official HRNet checkpoints were trained with them. ``False`` (default) is mmdet v2 / torchvision
(RoIAlign ``aligned=True``; mmdet v2's adaptive sampling ratio is replaced by the fixed 2 for static shapes).

``init`` creates the parameters without compiling the proposal / NMS / RoIAlign graph (they have no parameters);
its output is zeros shaped like the detections. Train mode returns the sampled logits / predictions / targets that
:func:`hrnet_jax.tasks.detection.loss.detection_loss` reduces; eval mode returns the detections.
"""
from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn

from hrnet_jax.models.backbone import HRNetConfig, backbone
from hrnet_jax.models.detection import anchors as anchor_lib
from hrnet_jax.models.detection.boxes import BoxCoder, clip_boxes
from hrnet_jax.models.detection.nms import batched_nms_padded
from hrnet_jax.models.detection.roi_align import multilevel_roi_align
from hrnet_jax.models.detection.roi_head import BBoxHead
from hrnet_jax.models.detection.rpn import RPNHead, proposals_one_image
from hrnet_jax.models.detection.sampling import max_iou_assign, random_sample
from hrnet_jax.models.heads import hrfpn_neck
from hrnet_jax.models.layers import KAIMING_FAN_OUT
from hrnet_jax.models.stage import ModuleOptions


class _Backbone(nn.Module):
    config: HRNetConfig
    opts: ModuleOptions

    @nn.compact
    def __call__(self, x, train: bool = False):
        return backbone(x, self.config, self.opts, train=train)


class _Neck(nn.Module):
    opts: ModuleOptions
    out_channels: int = 256

    @nn.compact
    def __call__(self, xs):
        return hrfpn_neck(xs, self.opts, False, self.out_channels)


def _slots(pos_idx, pos_ok, neg_idx, neg_ok, num: int):
    """Packs sampled positives (a valid prefix of ``pos_idx``) then negatives into ``num`` slots →
    (index (num,), valid (num,), positive (num,))."""
    s = jnp.arange(num)
    npos = jnp.sum(pos_ok.astype(jnp.int32))
    is_pos = s < npos
    j = jnp.clip(s - npos, 0, neg_idx.shape[0] - 1)
    idx = jnp.where(is_pos, pos_idx[jnp.clip(s, 0, pos_idx.shape[0] - 1)], neg_idx[j])
    valid = is_pos | (neg_ok[j] & (s - npos < neg_idx.shape[0]))
    return idx, valid, is_pos


class FasterRCNN(nn.Module):
    config: HRNetConfig
    num_classes: int = 80
    neck_channels: int = 256
    # anchors / RPN
    anchor_strides: tuple = (4, 8, 16, 32, 64)
    anchor_scales: tuple = (8.0,)
    anchor_ratios: tuple = (0.5, 1.0, 2.0)
    rpn_pre_nms_top_n: int = 2000  # per level
    rpn_post_nms_top_n: int = 2000  # per level
    rpn_max_proposals: int = 2000  # over all levels
    rpn_pre_nms_top_n_test: int = 2000
    rpn_post_nms_top_n_test: int = 2000
    rpn_max_proposals_test: int = 2000
    rpn_nms_thresh: float = 0.7
    rpn_min_size: float = 0.0
    rpn_pos_iou: float = 0.7
    rpn_neg_iou: float = 0.3
    rpn_min_pos_iou: float = 0.3
    rpn_batch_size: int = 256
    rpn_pos_fraction: float = 0.5
    rpn_allowed_border: float = 0.0  # < 0: no restriction (mmdet v2 configs use -1)
    # R-CNN
    roi_strides: tuple = (4, 8, 16, 32)
    roi_size: int = 7
    roi_sampling_ratio: int = 2
    roi_pos_iou: float = 0.5
    roi_neg_iou: float = 0.5
    roi_min_pos_iou: float = 0.5
    num_rois: int = 512
    roi_pos_fraction: float = 0.25
    add_gt_as_proposals: bool = True
    fc_channels: int = 1024
    box_stds: tuple = (0.1, 0.1, 0.2, 0.2)
    box_score_thresh: float = 0.05
    box_nms_thresh: float = 0.5
    detections_per_img: int = 100
    legacy_coords: bool = False
    # True (the recipe, ImageNet-initialised): backbone BN on running statistics even in training; False (training
    # from scratch, e.g. det_demo): batch statistics in training, running ones (updated by the loop) at inference
    norm_eval: bool = True
    # backbone execution
    scan: bool = True
    scan_unroll: Any = True
    remat: Optional[str] = None
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @property
    def box_offset(self) -> float:
        return 1.0 if self.legacy_coords else 0.0

    @property
    def num_anchors(self) -> int:
        return len(self.anchor_scales) * len(self.anchor_ratios)

    def _opts(self) -> ModuleOptions:
        return ModuleOptions(bn_momentum=0.9, upsample="nearest", align_corners=False, scan=self.scan,
                             scan_unroll=self.scan_unroll, remat=self.remat, dtype=self.dtype,
                             param_dtype=self.param_dtype, kernel_init=KAIMING_FAN_OUT)

    def _anchors(self, feats):
        return [anchor_lib.grid_anchors(tuple(f.shape[1:3]), s, self.legacy_coords, tuple(self.anchor_scales),
                                        tuple(self.anchor_ratios)) for f, s in zip(feats, self.anchor_strides)]

    def _roi_feats(self, feats, boxes):
        lv = feats[:len(self.roi_strides)]
        return jax.vmap(lambda fs, b: multilevel_roi_align(fs, b, self.roi_strides, self.roi_size,
                                                           self.roi_sampling_ratio, aligned=not self.legacy_coords,
                                                           legacy=self.legacy_coords))(lv, boxes)

    @nn.compact
    def __call__(self, images, image_hw, gt_boxes=None, gt_labels=None, gt_valid=None, train: bool = False):
        b, h, w, _ = images.shape
        if h % 32 or w % 32:
            raise ValueError(f"image height and width must be multiples of 32 (pad bottom/right); got {h}x{w}")
        opts = self._opts()
        xs = _Backbone(self.config, opts, name="backbone")(images, train=train and not self.norm_eval)
        feats = _Neck(opts, self.neck_channels, name="neck")(xs)
        if len(feats) != len(self.anchor_strides):
            raise ValueError(f"{len(feats)} pyramid levels but {len(self.anchor_strides)} anchor strides")
        rpn_out = RPNHead(self.num_anchors, self.neck_channels, self.dtype, name="rpn_head")(feats)
        bbox_head = BBoxHead(self.num_classes, self.fc_channels, dtype=self.dtype, name="bbox_head")
        if self.is_initializing():
            # Parameters only: proposals, NMS and RoIAlign have none, and compiling them would only slow init.
            # The output is zeros shaped like the detections.
            bbox_head(jnp.zeros((1, self.roi_size, self.roi_size, self.neck_channels), jnp.float32))
            d = self.detections_per_img
            return {"boxes": jnp.zeros((b, d, 4)), "scores": jnp.zeros((b, d)),
                    "labels": jnp.zeros((b, d), jnp.int32), "valid": jnp.zeros((b, d), bool)}
        logits = [o[0] for o in rpn_out]
        deltas = [o[1] for o in rpn_out]
        anchors = self._anchors(feats)
        image_hw = jnp.asarray(image_hw, jnp.int32)
        off = self.box_offset
        pre, post, mx = ((self.rpn_pre_nms_top_n, self.rpn_post_nms_top_n, self.rpn_max_proposals) if train else
                         (self.rpn_pre_nms_top_n_test, self.rpn_post_nms_top_n_test, self.rpn_max_proposals_test))
        props, _, prop_valid = jax.vmap(lambda lg, dl, hw: proposals_one_image(
            lg, dl, anchors, hw, pre_nms_top_n=pre, post_nms_top_n=post, max_proposals=mx,
            nms_thresh=self.rpn_nms_thresh, min_size=self.rpn_min_size, offset=off))(logits, deltas, image_hw)
        if not train:
            return self._detect(feats, props, prop_valid, image_hw, bbox_head)
        if gt_boxes is None or gt_labels is None:
            raise ValueError("train=True needs gt_boxes, gt_labels (and gt_valid)")
        gt_boxes = jnp.asarray(gt_boxes, jnp.float32)
        gt_labels = jnp.asarray(gt_labels, jnp.int32)
        gt_valid = jnp.ones(gt_labels.shape, bool) if gt_valid is None else jnp.asarray(gt_valid, bool)
        rng = self.make_rng("sample") if self.has_rng("sample") else self.make_rng("dropout")
        k_rpn, k_roi = jax.random.split(rng)
        out = self._rpn_targets(logits, deltas, anchors, feats, image_hw, gt_boxes, gt_valid,
                                jax.random.split(k_rpn, b))
        out.update(self._rcnn_train(feats, props, prop_valid, gt_boxes, gt_labels, gt_valid, bbox_head,
                                    jax.random.split(k_roi, b)))
        return out

    # ---------------------------------------------------------------- training targets
    def _rpn_targets(self, logits, deltas, anchors, feats, image_hw, gt_boxes, gt_valid, keys):
        off = self.box_offset
        all_anchors = jnp.asarray(np.concatenate(anchors))
        cells = [anchor_lib.grid_cells(tuple(f.shape[1:3]), self.num_anchors) for f in feats]
        rows = jnp.asarray(np.concatenate([c[0] for c in cells]))
        cols = jnp.asarray(np.concatenate([c[1] for c in cells]))
        strides = jnp.asarray(np.concatenate([np.full(c[0].shape, s, np.int32)
                                              for c, s in zip(cells, self.anchor_strides)]))
        logits = jnp.concatenate(logits, axis=1)
        deltas = jnp.concatenate(deltas, axis=1)
        coder = BoxCoder((1.0, 1.0, 1.0, 1.0), offset=off)
        n = self.rpn_batch_size

        def one(lg, dl, hw, gb, gv, key):
            vh, vw = hw[0], hw[1]
            # mmdet valid_flags: anchor cells inside ceil(valid size / stride)
            ok = (rows < (vh + strides - 1) // strides) & (cols < (vw + strides - 1) // strides)
            if self.rpn_allowed_border >= 0:
                a = self.rpn_allowed_border
                ok = ok & (all_anchors[:, 0] >= -a) & (all_anchors[:, 1] >= -a) & \
                    (all_anchors[:, 2] < vw + a) & (all_anchors[:, 3] < vh + a)
            assigned, _ = max_iou_assign(all_anchors, ok, gb, gv, self.rpn_pos_iou, self.rpn_neg_iou,
                                         self.rpn_min_pos_iou, off)
            pi, po, ni, no = random_sample(key, assigned, n, self.rpn_pos_fraction)
            idx, valid, pos = _slots(pi, po, ni, no, n)
            gt_idx = jnp.maximum(assigned[idx] - 1, 0)
            targets = coder.encode(all_anchors[idx], gb[gt_idx])
            return dict(rpn_logits=lg[idx], rpn_deltas=dl[idx], rpn_targets=jnp.where(pos[:, None], targets, 0.0),
                        rpn_valid=valid, rpn_pos=pos,
                        rpn_num_pos=jnp.sum(po.astype(jnp.int32)), rpn_num_neg=jnp.sum(no.astype(jnp.int32)))

        return jax.vmap(one)(logits, deltas, image_hw, gt_boxes, gt_valid, keys)

    def _rcnn_train(self, feats, props, prop_valid, gt_boxes, gt_labels, gt_valid, bbox_head, keys):
        off = self.box_offset
        coder = BoxCoder(self.box_stds, offset=off)
        n = self.num_rois
        c = self.num_classes

        def sample(pr, pv, gb, gl, gv, key):
            if self.add_gt_as_proposals:
                cand = jnp.concatenate([gb, pr])
                cv = jnp.concatenate([gv, pv])
            else:
                cand, cv = pr, pv
            assigned, _ = max_iou_assign(cand, cv, gb, gv, self.roi_pos_iou, self.roi_neg_iou,
                                         self.roi_min_pos_iou, off)
            pi, po, ni, no = random_sample(key, assigned, n, self.roi_pos_fraction)
            idx, valid, pos = _slots(pi, po, ni, no, n)
            gt_idx = jnp.maximum(assigned[idx] - 1, 0)
            rois = cand[idx]
            labels = jnp.where(pos, gl[gt_idx], c).astype(jnp.int32)
            targets = jnp.where(pos[:, None], coder.encode(rois, gb[gt_idx]), 0.0)
            return rois, labels, targets, valid, pos

        rois, labels, targets, valid, pos = jax.vmap(sample)(props, prop_valid, gt_boxes, gt_labels, gt_valid, keys)
        rois = jax.lax.stop_gradient(rois)
        cls, reg = bbox_head(self._roi_feats(feats, rois))
        sel = jnp.take_along_axis(reg, jnp.minimum(labels, c - 1)[..., None, None], axis=2)[..., 0, :]
        return dict(rcnn_logits=cls, rcnn_labels=labels, rcnn_deltas=sel, rcnn_targets=targets, rcnn_valid=valid,
                    rcnn_pos=pos)

    # ---------------------------------------------------------------- inference
    def _detect(self, feats, props, prop_valid, image_hw, bbox_head):
        off = self.box_offset
        coder = BoxCoder(self.box_stds, offset=off)
        c = self.num_classes
        cls, reg = bbox_head(self._roi_feats(feats, props))
        scores = jax.nn.softmax(cls, axis=-1)[..., :c]  # (B, P, C); background is the last class
        boxes = coder.decode(props[:, :, None, :], reg)  # (B, P, C, 4)
        boxes = clip_boxes(boxes, image_hw[:, None, None, :], off)
        ok = prop_valid[..., None] & (scores > self.box_score_thresh)
        d = self.detections_per_img
        classes = jnp.broadcast_to(jnp.arange(c, dtype=jnp.int32), scores.shape)

        def one(bx, sc, cl, v):
            bx, sc, cl, v = bx.reshape(-1, 4), sc.reshape(-1), cl.reshape(-1), v.reshape(-1)
            idx, keep = batched_nms_padded(bx, sc, cl, v, self.box_nms_thresh, d, off)
            return (jnp.where(keep[:, None], bx[idx], 0.0), jnp.where(keep, sc[idx], 0.0),
                    jnp.where(keep, cl[idx], 0), keep)

        boxes, scores, labels, valid = jax.vmap(one)(boxes, scores, classes, ok)
        return {"boxes": boxes, "scores": scores, "labels": labels, "valid": valid}
