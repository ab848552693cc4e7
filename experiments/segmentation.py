"""Semantic segmentation experiments (HRNetV2 / HRNetV2 + OCR on Cityscapes) and the offline ``seg_demo``.

Cityscapes recipe (HRNet/HRNet-Semantic-Segmentation, HRNet-OCR branch, ``experiments/cityscapes/
seg_hrnet_w48_train_512x1024_sgd_lr1e-2_wd5e-4_bs_12_epoch484.yaml`` and the OCR / OHEM variants): global batch
12 (4 GPUs x 3, SyncBN: here BatchNorm over the global batch by construction), SGD lr 0.01, momentum 0.9, weight
decay 5e-4 on every parameter, poly schedule per step (power 0.9, no warm-up), 484 epochs of ``int(2975 / 12)``
= 247 steps = 119,548 steps; random long side 2048 x 0.5..2.1, pad, 512x1024 crop, flip; class-weighted
cross-entropy (ignore 255) after bilinear upsampling of the logits to the labels; OCR: 0.4 aux + 1.0 main.
Evaluation: the whole 1024x2048 image (single scale, no flip; the published 80.9 / 81.6 mIoU on val);
``*_ms`` evals add the multi-scale + flip protocol (scales 0.5-1.75, scales > 1 by 1024x2048 sliding windows).
The backbone starts from ImageNet weights: ``--init_from=ckpt/hrnet_w48 --init_from_mode=matching``
(``python -m hrnet_jax.convert`` of ``hrnetv2_w48_imagenet_pretrained.pth``).

Data location: ``task.data_root`` (default ``data/cityscapes``) in Cityscapes' own layout::

    data/cityscapes/leftImg8bit/{train,val}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    data/cityscapes/gtFine/{train,val}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png

(raw label ids, mapped to the 19 train ids by the ``cityscapes`` class spec), or a prepared TFDS ``cityscapes``
dataset: ``--config.task.dataset=tfds --config.task.tfds_data_dir=... --config.task.val_split=validation``.

``seg_demo``: generates a synthetic Cityscapes-format street-scene dataset (:mod:`hrnet_jax.data.synthetic.
segmentation`) into ``task.data_root`` (default ``data/seg_demo``) when absent and trains a narrow HRNetV2 + OCR
through the same loader, loss, loop and evaluator.
"""
from __future__ import annotations

from hrnet_jax.data.classes import CITYSCAPES_CLASS_WEIGHTS
from hrnet_jax.tasks.segmentation.task import task_defaults
from hrnet_jax.training.defaults import default_config

CITYSCAPES_TRAIN_IMAGES = 2975
MS_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)

# A narrow HRNetV2 for CPU demos (4 streams, one module per stage, BasicBlocks), as model.arch.
DEMO_ARCH = dict(stem_width=32, stages=(
    dict(num_modules=1, num_branches=1, block="BOTTLENECK", num_blocks=(1,), num_channels=(16,)),
    dict(num_modules=1, num_branches=2, block="BASIC", num_blocks=(1, 1), num_channels=(16, 32)),
    dict(num_modules=1, num_branches=3, block="BASIC", num_blocks=(1, 1, 1), num_channels=(16, 32, 64)),
    dict(num_modules=1, num_branches=4, block="BASIC", num_blocks=(1, 1, 1, 1), num_channels=(16, 32, 64, 128)),
))


def _cityscapes(model: str, *, ohem: bool = False, epochs: int = 484, batch: int = 12, extra_model=None):
    steps_per_epoch = CITYSCAPES_TRAIN_IMAGES // batch
    total = epochs * steps_per_epoch
    return default_config(
        total_steps=total, batch_size=batch, seed=0, log_every=50,
        evals=dict(val=dict(every=20 * steps_per_epoch, steps=0)),
        checkpoint_every=steps_per_epoch, keep_checkpoints=3, best_metric="val/mIoU",
        model=dict(name=model, dtype="float32", arch={}, **(extra_model or {})),
        optimizer=dict(name="sgd", lr=0.01, momentum=0.9, nesterov=False, weight_decay=5e-4,
                       weight_decay_style="l2", decay_bn_bias=True, schedule="poly", poly_power=0.9, end_lr=0.0),
        task=task_defaults(
            dataset="cityscapes", data_root="data/cityscapes", classes="cityscapes",
            crop_size=(512, 1024), base_size=2048, scale_range=(0.5, 2.1), scale_step=0.1, flip=True,
            class_weights=CITYSCAPES_CLASS_WEIGHTS, ohem=ohem, ohem_thresh=0.9, ohem_min_kept=131072,
            ohem_group=3, eval_mode="whole", eval_size=(1024, 2048), eval_flip=False, eval_scales=MS_SCALES,
            eval_crop=(1024, 2048), eval_stride=1.0, eval_combine="exp_sum", eval_batch_size=4,
            read_threads=4, read_prefetch_batches=2,
        ),
    )


def seg_w48_cityscapes():
    """HRNetV2-W48, 512x1024, 484 epochs: 80.9 mIoU on val (single scale) in the official table."""
    return _cityscapes("seg_hrnet_w48")


def seg_w48_ohem_cityscapes():
    """As :func:`seg_w48_cityscapes` with OHEM (threshold 0.9, 131072 kept per 3 images): 81.2."""
    return _cityscapes("seg_hrnet_w48", ohem=True)


def seg_ocr_w48_cityscapes():
    """HRNetV2-W48 + OCR (aux 0.4 + main 1.0): 81.6 mIoU on val (single scale)."""
    return _cityscapes("seg_hrnet_ocr_w48")


def seg_w18_small_v2_cityscapes():
    """HRNetV2-W18-Small-v2: 76.2 on val (single scale)."""
    return _cityscapes("seg_hrnet_w18_small_v2")


def seg_w18_small_v1_cityscapes():
    """HRNetV2-W18-Small-v1: 70.3 on val (single scale)."""
    return _cityscapes("seg_hrnet_w18_small_v1")


def _with_ms(fn):
    """The recipe evaluated with the multi-scale + flip protocol (the README's test-set rows)."""
    def make():
        cfg = fn()
        cfg.task.eval_mode = "multiscale"
        cfg.task.eval_flip = True
        cfg.task.eval_batch_size = 1
        return cfg
    make.__doc__ = f"{fn.__name__} evaluated with multi-scale (0.5-1.75) + flip."
    return make


DEMO_STEPS = 700
#: pixel share ** -0.25 of the categories in the generated data (road 31.6 %, sidewalk 4.3, construction 21.7,
#: object 2.6, nature 14.3, sky 8.2, human 1.25, vehicle 12.9), scaled to mean 1: the thin and small categories
#: (poles and signs, people) weigh more, as the official recipe's class weights do on Cityscapes.
DEMO_CLASS_WEIGHTS = (0.68, 1.12, 0.75, 1.28, 0.83, 0.96, 1.53, 0.85)



def seg_demo():
    """Synthetic street scenes (Cityscapes layout and raw label ids, 256x512) read with the 8-category spec
    ``cityscapes_categories`` (:data:`hrnet_jax.data.classes.CITYSCAPES_CATEGORIES`; ``--config.task.classes=
    cityscapes --config.task.class_weights='()'`` trains the same data on the 19 classes), a narrow HRNetV2 + OCR (``DEMO_ARCH``, OCR widths 32/16) on 128x256 crops
    of the recipe's scale/crop/flip augmentation, Adam + poly, evaluated on the whole 256x512 val images."""
    total = DEMO_STEPS
    return default_config(
        total_steps=total, batch_size=16, seed=0, log_every=50, checkpoint_every=total, keep_checkpoints=1,
        evals=dict(val=dict(every=total, steps=0)), best_metric="val/mIoU",
        model=dict(name="seg_hrnet_ocr_w48", dtype="float32", arch=DEMO_ARCH, ocr_mid_channels=32,
                   ocr_key_channels=16),
        optimizer=dict(name="adam", lr=2e-3, weight_decay=0.0, schedule="poly", poly_power=0.9, end_lr=1e-5,
                       warmup_steps=20),
        task=task_defaults(
            dataset="cityscapes", data_root="data/seg_demo", classes="cityscapes_categories",
            synthetic=dict(num_train=300, num_val=60, image_size_hw=(256, 512), seed=0),
            crop_size=(128, 256), base_size=512, scale_range=(0.6, 1.6), scale_step=0.1, flip=True,
            class_weights=DEMO_CLASS_WEIGHTS,
            eval_mode="whole", eval_size=(256, 512), eval_batch_size=20,
            read_threads=2, read_prefetch_batches=2,
        ),
    )


EXPERIMENTS = {
    "seg_w48_cityscapes": seg_w48_cityscapes,
    "seg_w48_ohem_cityscapes": seg_w48_ohem_cityscapes,
    "seg_ocr_w48_cityscapes": seg_ocr_w48_cityscapes,
    "seg_w18_small_v2_cityscapes": seg_w18_small_v2_cityscapes,
    "seg_w18_small_v1_cityscapes": seg_w18_small_v1_cityscapes,
    "seg_w48_cityscapes_ms": _with_ms(seg_w48_cityscapes),
    "seg_ocr_w48_cityscapes_ms": _with_ms(seg_ocr_w48_cityscapes),
    "seg_demo": seg_demo,
}
