"""COCO object detection experiments (HRNetV2p + Faster R-CNN) and the offline ``det_demo``.

Recipe (HRNet/HRNet-Object-Detection ``configs/hrnet/faster_rcnn_hrnetv2p_w{18,32,40}_{1x,2x}.py``; reference
8.4): global batch 16, SGD lr 0.02, momentum 0.9, weight decay 1e-4 on every parameter, gradient clipping at
global norm 35, linear warm-up over 500 steps from lr / 3, lr x 0.1 after epochs 8 and 11 (1x: 12 epochs) or 16
and 22 (2x: 24 epochs); ``img_scale`` (1333, 800) keeping the aspect ratio, flip 0.5, crowd boxes ignored.
An epoch is ``117,266 // 16`` = 7,329 steps (the train2017 images with at least one usable box). Published
val2017 box AP (no SyncBN, single-scale training): W18 36.1 / 38.1, W32 39.5 / 40.8, W40 40.4 / 41.4 (1x / 2x).

Images are padded into the static buckets ``COCO_BUCKETS`` (800x1088, 1088x800, 800x1344, 1344x800): one
compiled train and eval step per bucket; every batch holds images of one bucket.

The backbone starts from ImageNet weights: ``--init_from=ckpt/hrnetv2_w32 --init_from_mode=matching`` with a
checkpoint converted by ``python -m hrnet_jax.convert`` (``hrnetv2_w32_imagenet_pretrained.pth``); the configs
set ``init_from_prefix="backbone"`` (the checkpoint's variables go under the detector's ``backbone`` subtree) and
matching loads them, leaving the neck and heads fresh (the run prints how many of each).

Data location: ``task.data_root`` (default ``data/coco``) in COCO's layout::

    data/coco/annotations/instances_train2017.json, data/coco/annotations/instances_val2017.json
    data/coco/train2017/*.jpg, data/coco/val2017/*.jpg

A custom COCO-format dataset: ``--config.task.data_root=... --config.task.train_ann=... --config.task.val_ann=...
--config.task.train_images=... --config.task.val_images=...`` (its categories become the classes).

``det_demo``: generates a synthetic COCO-format shapes dataset (:mod:`hrnet_jax.data.synthetic.detection`) into
``task.data_root`` (default ``data/det_demo``) when absent and trains a narrow HRNetV2p + Faster R-CNN on it.
"""
from __future__ import annotations

from hrnet_jax.tasks.detection.task import COCO_BUCKETS, task_defaults
from hrnet_jax.training.defaults import default_config

COCO_TRAIN_IMAGES = 117266
BATCH = 16
STEPS_PER_EPOCH = COCO_TRAIN_IMAGES // BATCH

# A narrow HRNet for CPU demos (4 streams, one module per stage, BasicBlocks), as model.arch.
DEMO_ARCH = dict(stem_width=32, stages=(
    dict(num_modules=1, num_branches=1, block="BOTTLENECK", num_blocks=(1,), num_channels=(16,)),
    dict(num_modules=1, num_branches=2, block="BASIC", num_blocks=(1, 1), num_channels=(16, 32)),
    dict(num_modules=1, num_branches=3, block="BASIC", num_blocks=(1, 1, 1), num_channels=(16, 32, 64)),
    dict(num_modules=1, num_branches=4, block="BASIC", num_blocks=(1, 1, 1, 1), num_channels=(16, 32, 64, 128)),
))


def _coco(model: str, epochs: int = 12, drops=(8, 11)):
    total = epochs * STEPS_PER_EPOCH
    return default_config(
        total_steps=total, batch_size=BATCH, seed=0, log_every=50,
        evals=dict(val=dict(every=total, steps=0)),
        checkpoint_every=STEPS_PER_EPOCH, keep_checkpoints=3, best_metric="val/AP",
        init_from_mode="matching", init_from_prefix="backbone",
        # legacy_coords=True for the official HRNet-Object-Detection checkpoints (mmdet v1 +1 box conventions)
        model=dict(name=model, dtype="float32", arch={}, legacy_coords=False),
        optimizer=dict(name="sgd", lr=0.02, momentum=0.9, nesterov=False, weight_decay=1e-4,
                       weight_decay_style="l2", decay_bn_bias=True, schedule="step",
                       boundaries=tuple(e * STEPS_PER_EPOCH for e in drops), decay_factor=0.1,
                       warmup_steps=500, warmup_init_lr=0.02 / 3, grad_clip_norm=35.0),
        task=task_defaults(
            data_root="data/coco", img_scale=(1333, 800), buckets=COCO_BUCKETS, max_boxes=100, flip_prob=0.5,
            eval_batch_size=8, read_threads=4, read_prefetch_batches=2,
        ),
    )


def det_faster_w18_1x():
    """HRNetV2p-W18 Faster R-CNN, 12 epochs: 36.1 box AP on val2017 (official table)."""
    return _coco("faster_rcnn_hrnetv2p_w18")


def det_faster_w32_1x():
    """HRNetV2p-W32 Faster R-CNN, 12 epochs: 39.5 box AP."""
    return _coco("faster_rcnn_hrnetv2p_w32")


def det_faster_w32_2x():
    """HRNetV2p-W32 Faster R-CNN, 24 epochs (lr steps at 16 and 22): 40.8 box AP."""
    return _coco("faster_rcnn_hrnetv2p_w32", epochs=24, drops=(16, 22))


def det_faster_w40_1x():
    """HRNetV2p-W40 Faster R-CNN, 12 epochs: 40.4 box AP."""
    return _coco("faster_rcnn_hrnetv2p_w40")


DEMO_STEPS = 900
DEMO_SIZE = 192
#: the demo detector: trained from scratch, so backbone BN uses batch statistics in training (``norm_eval=False``;
#: the recipe's frozen BN only suits an ImageNet-initialised backbone: frozen, val AP was 0.001 after 150 steps,
#: 0.06 with BN training), a 64-channel HRFPN, anchors of 4 x stride (16-256 px for objects of 18-96 px), 300
#: proposals per level / 300 in all (train and test), 128 sampled RoIs, a 256-wide box head
DEMO_MODEL = dict(norm_eval=False, neck_channels=64, anchor_scales=(4.0,), rpn_pre_nms_top_n=300,
                  rpn_post_nms_top_n=300, rpn_max_proposals=300, rpn_pre_nms_top_n_test=300,
                  rpn_post_nms_top_n_test=300, rpn_max_proposals_test=300, num_rois=128, fc_channels=256)


def det_demo():
    """Synthetic shapes (six categories, 192x192, clutter, overlap, truncation) with a narrow HRNetV2p (``DEMO_ARCH``)
    + Faster R-CNN (``DEMO_MODEL``); Adam + cosine; COCOeval bbox on the 100 val images at the end. Measured on the
    shared 2-core CPU (load average 5-9, XLA compile cache warm, data generated in the run, evaluations every 150
    steps): val/AP 0.052 / 0.239 / 0.425 / 0.544 / 0.599 / 0.613 at steps 150 / 300 / 450 / 600 / 750 / 900
    (AP50 0.841, AP75 0.735), 27 min 30 s wall. On a fresh clone, cold start (data generation, empty compile
    cache, one final evaluation), quiet 2-core CPU: val/AP 0.613 in 9 min 35 s wall, peak RSS 2.8 GB."""
    total = DEMO_STEPS
    return default_config(
        total_steps=total, batch_size=8, seed=0, log_every=25, checkpoint_every=total, keep_checkpoints=1,
        evals=dict(val=dict(every=total, steps=0)), best_metric="val/AP",
        model=dict(name="faster_rcnn_hrnetv2p_w18", dtype="float32", arch=DEMO_ARCH, **DEMO_MODEL),
        optimizer=dict(name="adam", lr=2e-3, weight_decay=0.0, schedule="cosine", warmup_steps=50, end_lr=1e-5,
                       grad_clip_norm=35.0),
        task=task_defaults(
            data_root="data/det_demo",
            synthetic=dict(num_train=800, num_val=100, image_size_hw=(DEMO_SIZE, DEMO_SIZE), seed=0,
                           min_size=18.0, max_size=96.0),
            img_scale=(DEMO_SIZE, DEMO_SIZE), buckets=((DEMO_SIZE, DEMO_SIZE),), max_boxes=16, flip_prob=0.5,
            eval_batch_size=20, read_threads=2, read_prefetch_batches=2,
        ),
    )


EXPERIMENTS = {
    "det_faster_w18_1x": det_faster_w18_1x,
    "det_faster_w32_1x": det_faster_w32_1x,
    "det_faster_w32_2x": det_faster_w32_2x,
    "det_faster_w40_1x": det_faster_w40_1x,
    "det_demo": det_demo,
}
