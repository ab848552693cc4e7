"""Top-down pose experiments (HRNetV1 heatmaps, COCO keypoints) and the offline ``pose_demo``.

COCO recipes (leoxiaobin/deep-high-resolution-net.pytorch ``experiments/coco/hrnet/*.yaml``): Adam, lr 1e-3 (no
weight decay: the official ``get_optimizer`` passes none to Adam), 210 epochs, lr ×0.1 at epochs 170 and 200,
global batch 128 (32 × 4 GPUs; 96 for W48 384x288), sigma 2 at 256x192 and 3 at 384x288, scale ±0.35,
rotation ±45° (p 0.6), half body p 0.3, flip; evaluation on the detector boxes (``eval_boxes="det"``,
``det_file``) with flip test, the one-pixel shift, OKS-NMS rescoring. Steps are computed from the 149,813 train
instances (person annotations with at least one labelled keypoint) per epoch.

Data location: ``task.data_root`` (default ``data/coco``) with COCO's standard layout::

    data/coco/annotations/person_keypoints_{train,val}2017.json
    data/coco/train2017/*.jpg
    data/coco/val2017/*.jpg
    data/coco/person_detection_results/COCO_val2017_detections_AP_H_56_person.json   (task.det_file)

``pose_demo``: generates the synthetic COCO-format dataset (:mod:`hrnet_jax.data.synthetic_pose`) into
``task.data_root`` (default ``data/pose_demo``) when absent and trains a narrow HRNet through the same loader,
loop and COCOeval path; minutes on a laptop CPU.

Custom narrow backbones: ``model.arch`` holds the architecture itself (stem width and the four stages, see
:mod:`hrnet_jax.tasks.model_config`); :data:`DEMO_W16` is the demo's.
"""
from __future__ import annotations

import math

from hrnet_jax.tasks.pose.task import task_defaults
from hrnet_jax.training.defaults import default_config

COCO_TRAIN_INSTANCES = 149813
COCO_DET_FILE = "person_detection_results/COCO_val2017_detections_AP_H_56_person.json"

# A narrow HRNet for CPU demos (4 streams, one module per stage, BasicBlocks), as model.arch.
DEMO_W16 = dict(stem_width=32, stages=(
    dict(num_modules=1, num_branches=1, block="BOTTLENECK", num_blocks=(1,), num_channels=(16,)),
    dict(num_modules=1, num_branches=2, block="BASIC", num_blocks=(1, 1), num_channels=(16, 32)),
    dict(num_modules=1, num_branches=3, block="BASIC", num_blocks=(1, 1, 1), num_channels=(16, 32, 64)),
    dict(num_modules=1, num_branches=4, block="BASIC", num_blocks=(1, 1, 1, 1), num_channels=(16, 32, 64, 128)),
))


def _coco(model: str, input_hw: tuple[int, int], batch: int, epochs: int = 210, drops=(170, 200)):
    steps_per_epoch = math.ceil(COCO_TRAIN_INSTANCES / batch)
    total = epochs * steps_per_epoch
    return default_config(
        total_steps=total, batch_size=batch, seed=0, log_every=100,
        evals=dict(val=dict(every=10 * steps_per_epoch, steps=0)),
        checkpoint_every=steps_per_epoch, keep_checkpoints=3, best_metric="val/AP",
        model=dict(name=model, dtype="float32", arch={}),
        optimizer=dict(name="adam", lr=1e-3, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, schedule="step",
                       boundaries=tuple(d * steps_per_epoch for d in drops), decay_factor=0.1),
        task=task_defaults(
            data_root="data/coco",
            train_ann="annotations/person_keypoints_train2017.json", train_images="train2017",
            val_ann="annotations/person_keypoints_val2017.json", val_images="val2017",
            spec="coco", input_size=tuple(input_hw), sigma=2.0 if input_hw[0] <= 256 else 3.0,
            scale_factor=0.35, rotation_factor=45.0, rot_prob=0.6, flip=True, prob_half_body=0.3,
            num_joints_half_body=8, loss="mse", use_target_weight=True,
            eval_boxes="det", det_file=COCO_DET_FILE, det_score_thre=0.0, flip_test=True, shift_heatmap=True,
            decode="legacy", in_vis_thre=0.2, oks_thre=0.9, use_oks_nms=True, eval_batch_size=batch,
        ),
    )


def pose_w32():
    return _coco("pose_hrnet_w32", (256, 192), 128)


def pose_w32_384x288():
    return _coco("pose_hrnet_w32", (384, 288), 128)


def pose_w48():
    return _coco("pose_hrnet_w48", (256, 192), 128)


def pose_w48_384x288():
    return _coco("pose_hrnet_w48", (384, 288), 96)


DEMO_STEPS = 450


def pose_demo():
    """Synthetic figures (1200 train / 150 val images of 1-2 people, 192x192), the narrow ``DEMO_W16`` HRNet at
    128x96, 450 steps of batch 32 (Adam 2e-3, cosine); evaluated like COCO: the generated detector-style boxes
    (jittered GT + false positives), flip test, OKS-NMS, COCOeval. Measured on a shared 2-core CPU, including data
    generation, compilation and the final evaluation: val/AP 0.819, 3 min 52 s wall (load average 4-6); 5 min 7 s
    at load ~8.7. The same checkpoint on GT boxes: AP 0.870."""
    total = DEMO_STEPS
    return default_config(
        total_steps=total, batch_size=32, seed=0, log_every=25, checkpoint_every=total, keep_checkpoints=1,
        evals=dict(val=dict(every=total, steps=0)),
        model=dict(name="pose_hrnet_w18_small_v1", dtype="float32", arch=DEMO_W16),
        optimizer=dict(name="adam", lr=2e-3, weight_decay=0.0, schedule="cosine", warmup_steps=30, end_lr=2e-5),
        task=task_defaults(
            data_root="data/pose_demo",
            synthetic=dict(num_train=1200, num_val=150, image_size_hw=(192, 192), max_people=2,
                           height_range=(0.45, 0.9), seed=0),
            spec="coco", input_size=(128, 96), sigma=2.0,
            scale_factor=0.25, rotation_factor=30.0, rot_prob=0.5, flip=True, prob_half_body=0.2,
            eval_boxes="det", det_score_thre=0.0, flip_test=True, shift_heatmap=True, decode="legacy",
            use_oks_nms=True, eval_batch_size=50,
        ),
    )


EXPERIMENTS = {
    "pose_w32": pose_w32,
    "pose_w32_384x288": pose_w32_384x288,
    "pose_w48": pose_w48,
    "pose_w48_384x288": pose_w48_384x288,
    "pose_demo": pose_demo,
}
