"""Semantic segmentation (HRNetV2 and HRNetV2 + OCR) on the contract of :mod:`hrnet_jax.tasks.base`.

Its settings are the experiment config's ``task`` group; :data:`DEFAULTS` lists every field. The classes are a
declared :class:`~hrnet_jax.data.classes.ClassSpec` (``task.classes``: ``"cityscapes"``, a JSON file or a dict of
names, colours, ignore index and an optional raw-id mapping), so a new dataset needs no code.

Data (host, :mod:`hrnet_jax.data`): ``task.dataset`` = ``"cityscapes"`` (the Cityscapes folder layout under
``data_root``), ``"folder"`` (image folder + label PNG folder), or ``"tfds"`` (``tfds.data_source``, e.g. the TFDS
``cityscapes`` builder's data, raw label ids mapped by the spec). Training examples are the official recipe's
random scale of the long side (``base_size`` x 0.5..2.1 in 0.1 steps), pad, random ``crop_size`` crop and flip,
uint8 on the wire; evaluation examples are whole images padded to one static ``eval_size``.

Device side:

* ``preprocess``: uint8 → float, ImageNet normalisation (the base class).
* ``forward(train=True)``: the model's logits (1/4 resolution), or OCR's ``(aux, main)``.
* ``loss``: class-weighted cross-entropy with ignore index after bilinear upsampling to the label size
  (optionally OHEM on the last output); OCR: ``0.4 aux + 1.0 main`` (:mod:`.loss`).
* ``forward(train=False)``: a score map at the input resolution from ``eval_mode`` = ``"whole"``,
  ``"sliding"`` or ``"multiscale"`` (+ ``eval_flip``; :mod:`.inference`).
* ``metrics``: the confusion matrix over the split → ``mIoU``, ``pixel_acc``, ``mean_acc``, ``IoU/<class>``.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from hrnet_jax.data import pipeline as dp
from hrnet_jax.data.classes import BUILTIN_CLASS_SPECS, ClassSpec, get_class_spec
from hrnet_jax.data.ops import segmentation as SO
from hrnet_jax.data.sources import segmentation as SS
from hrnet_jax.tasks.base import Task, local_batch, with_defaults
from hrnet_jax.tasks.model_config import build_hrnet
from hrnet_jax.tasks.segmentation import inference as I
from hrnet_jax.tasks.segmentation.loss import segmentation_loss
from hrnet_jax.tasks.segmentation.metrics import ClassConfusion
from hrnet_jax.training.config import Config, ConfigError

DATASETS = ("cityscapes", "folder", "tfds")
EVAL_MODES = ("whole", "sliding", "multiscale")
#: top-level parameter names of the HRNetV2 / OCR heads (``param_groups`` label "head"; the rest "backbone")
HEAD_PARAMS = ("last_layer", "aux_head", "conv3x3_ocr", "ocr_distri_head", "cls_head")

DEFAULTS = dict(
    name="segmentation",
    # ---- data ----
    dataset="cityscapes",            # "cityscapes" | "folder" | "tfds"
    data_root="",
    classes="cityscapes",            # "cityscapes" | "cityscapes_categories" | a class-spec JSON (relative: data_root)
    train_split="train",             # cityscapes/tfds split names
    val_split="val",                 # ("validation" for TFDS cityscapes)
    train_images="", train_labels="",   # dataset="folder": folders (relative: data_root)
    val_images="", val_labels="",
    label_suffix="",                 # dataset="folder": label file = <image stem><label_suffix>.png
    tfds_name="cityscapes/semantic_segmentation",
    tfds_data_dir="",
    tfds_image_key="image_left",
    tfds_label_key="segmentation_label",
    # generate the synthetic Cityscapes-format dataset into data_root (hrnet_jax.data.synthetic.segmentation):
    # {} = off, else generator kwargs {"num_train": 300, ...}
    synthetic={},
    # ---- training augmentation (official recipe) ----
    crop_size=(512, 1024),           # (H, W)
    base_size=2048,                  # long side at scale 1
    scale_range=(0.5, 2.1),          # random scale of the long side, in scale_step steps
    scale_step=0.1,
    flip=True,
    # ---- loss ----
    class_weights=(),                # () = unweighted; else one weight per class (CITYSCAPES_CLASS_WEIGHTS)
    output_weights=(),               # () = (1.0,) for one output, (0.4, 1.0) for OCR's (aux, main)
    ohem=False,
    ohem_thresh=0.9,
    ohem_min_kept=131072,
    ohem_group=0,                    # images per OHEM group (the official per-GPU batch, 3); 0 = whole batch
    # ---- evaluation ----
    eval_mode="whole",               # "whole" | "sliding" | "multiscale"
    eval_size=(),                    # (H, W) every eval image is padded to; () = the first val image's size
    eval_flip=False,
    eval_scales=(0.5, 0.75, 1.0, 1.25, 1.5, 1.75),
    eval_crop=(),                    # sliding-window crop (H, W); () = eval_size
    eval_stride=1.0,                 # window stride as a fraction of the crop (official Cityscapes 1.0)
    eval_combine="exp_sum",          # multiscale: "exp_sum" (official) | "softmax_mean"
    eval_base_size=0,                # multiscale: long side at scale 1; 0 = base_size
    eval_batch_size=0,               # global; 0 = batch_size
    # ---- input pipeline (hrnet_jax.data.pipeline.ReadConfig) ----
    read_threads=2,
    read_prefetch_batches=2,
    read_workers=0,
)


def task_defaults(**changes) -> dict:
    """:data:`DEFAULTS` with ``changes`` (unknown names are an error naming the valid ones)."""
    return with_defaults(DEFAULTS, changes, "segmentation")


def _pair(v, what: str) -> tuple[int, int]:
    try:
        h, w = (int(x) for x in v)
    except (TypeError, ValueError):
        raise ConfigError(f"task.{what} must be (H, W), got {v!r}") from None
    if h <= 0 or w <= 0:
        raise ConfigError(f"task.{what} must be positive, got {(h, w)}")
    return h, w


class TrainExample:
    """One training example (picklable for grain worker processes: the source and plain values only): the
    official random long-side scale, pad, crop and flip of image and label, uint8."""

    def __init__(self, source, crop_hw, base_size, scale_range, scale_step, flip, ignore_index):
        self.source, self.crop_hw, self.base_size = source, tuple(crop_hw), int(base_size)
        self.scale_range, self.scale_step = tuple(scale_range), float(scale_step)
        self.flip, self.ignore_index = bool(flip), int(ignore_index)

    def __call__(self, i: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        image, label = self.source.load(i)
        image, label = SO.train_transform(image, label, rng, crop_hw=self.crop_hw, base_size=self.base_size,
                                          scale_range=self.scale_range, scale_step=self.scale_step,
                                          flip=self.flip, ignore_index=self.ignore_index)
        return {"image": np.ascontiguousarray(image, np.uint8), "label": np.ascontiguousarray(label, np.uint8)}


class EvalExample:
    """One evaluation example: the whole image and label padded (bottom/right; image 0, label ignore) to the
    static eval size; an image larger than it is scaled down to fit first (label nearest)."""

    def __init__(self, source, eval_hw, ignore_index):
        self.source, self.eval_hw, self.ignore_index = source, tuple(eval_hw), int(ignore_index)

    def __call__(self, i: int) -> dict[str, np.ndarray]:
        image, label = self.source.load(i)
        eh, ew = self.eval_hw
        h, w = image.shape[:2]
        if h > eh or w > ew:
            s = min(eh / h, ew / w)
            image, label = SO.resize_long_side(image, label, int(max(h, w) * s))
            image, label = image[:eh, :ew], label[:eh, :ew]
        image, label = SO.pad_to(image, label, (eh, ew), image_fill=0, label_fill=self.ignore_index)
        return {"image": np.ascontiguousarray(image[:eh, :ew], np.uint8),
                "label": np.ascontiguousarray(label[:eh, :ew], np.uint8), "index": np.int32(i)}


class SegmentationTask(Task):
    name = "segmentation"

    def __init__(self, config: Any):
        super().__init__(config)
        self.t = t = Config(with_defaults(DEFAULTS, config.get("task") or {}, "segmentation"))
        for key, valid in (("dataset", DATASETS), ("eval_mode", EVAL_MODES), ("eval_combine", I.COMBINE)):
            if t[key] not in valid:
                raise ConfigError(f"task.{key} must be one of {tuple(valid)}, got {t[key]!r}")
        classes = t.classes.to_dict() if isinstance(t.classes, Config) else t.classes
        if isinstance(classes, str) and classes.lower() not in BUILTIN_CLASS_SPECS and not os.path.isabs(classes) \
                and not os.path.exists(classes) and t.data_root:
            classes = os.path.join(t.data_root, classes)
        self.classes: ClassSpec = get_class_spec(classes)
        self.num_classes = self.classes.num_classes
        self.ignore_index = int(self.classes.ignore_index)
        if t.class_weights and len(t.class_weights) != self.num_classes:
            raise ConfigError(f"task.class_weights has {len(t.class_weights)} entries for {self.num_classes} "
                              f"classes ({self.classes.name})")
        self.crop_size = _pair(t.crop_size, "crop_size")
        self.read = dp.ReadConfig(num_threads=t.read_threads, prefetch_batches=t.read_prefetch_batches,
                                 worker_count=t.read_workers)
        self._sources: dict[str, Any] = {}
        self._eval_size: tuple[int, int] | None = _pair(t.eval_size, "eval_size") if t.eval_size else None
        self._model = None

    # ---- data -------------------------------------------------------------------------------------------
    def _join(self, p: str) -> str:
        return p if (not p or os.path.isabs(p) or not self.t.data_root) else os.path.join(self.t.data_root, p)

    def _ensure_synthetic(self) -> None:
        if self.t.synthetic and "_synthetic" not in self._sources:
            from hrnet_jax.data.synthetic.segmentation import ensure_synthetic_seg_dataset
            if not self.t.data_root:
                raise ConfigError("task.synthetic needs task.data_root (the folder to generate it in)")
            syn = self.t.synthetic
            ensure_synthetic_seg_dataset(self.t.data_root, **(syn.to_dict() if isinstance(syn, Config) else syn))
            self._sources["_synthetic"] = True

    def source(self, split: str):
        """The :mod:`hrnet_jax.data.sources.segmentation` source of ``"train"`` or ``"val"``."""
        if split not in self._sources:
            t = self.t
            self._ensure_synthetic()
            split_name = t.train_split if split == "train" else t.val_split
            if t.dataset == "cityscapes":
                if not t.data_root:
                    raise ConfigError("task.data_root is empty: point it at the Cityscapes root (the folder with "
                                      "leftImg8bit/ and gtFine/), e.g. --config.task.data_root=data/cityscapes")
                src = SS.cityscapes_source(t.data_root, split_name, self.classes)
            elif t.dataset == "folder":
                images = self._join(t.train_images if split == "train" else t.val_images)
                labels = self._join(t.train_labels if split == "train" else t.val_labels)
                if not images or not labels:
                    raise ConfigError(f"task.dataset='folder' needs task.{split}_images and task.{split}_labels")
                src = SS.folder_source(images, labels, self.classes, label_suffix=t.label_suffix)
            else:
                src = SS.TfdsSegmentationSource(t.tfds_name, split_name, t.tfds_data_dir or None, self.classes,
                                                image_key=t.tfds_image_key, label_key=t.tfds_label_key)
            if len(src) == 0:
                raise ConfigError(f"the {split} split of {t.dataset} data at {t.data_root!r} is empty")
            self._sources[split] = src
        return self._sources[split]

    def eval_size(self) -> tuple[int, int]:
        """The static (H, W) of evaluation images: ``task.eval_size`` or the first readable val image's size."""
        if self._eval_size is None:
            src = self.source("val")
            for i in range(min(len(src), 64)):
                try:
                    img, _ = src.load(i)
                except dp.SkipExample:
                    continue
                self._eval_size = (int(img.shape[0]), int(img.shape[1]))
                break
            else:
                raise ConfigError("no readable image among the first validation records; set task.eval_size")
        return self._eval_size

    def _train_fn(self) -> "TrainExample":
        t = self.t
        return TrainExample(self.source("train"), self.crop_size, int(t.base_size), tuple(t.scale_range),
                            float(t.scale_step), bool(t.flip), self.ignore_index)

    def _eval_fn(self) -> "EvalExample":
        return EvalExample(self.source("val"), self.eval_size(), self.ignore_index)

    def train_dataset(self, process_index: int = 0, process_count: int = 1):
        src = self.source("train")
        return dp.train_dataset(len(src), self._train_fn(), batch_size=local_batch(self.config["batch_size"],
                                                                                      process_count),
                                seed=self.config.get("seed", 0), process_index=process_index,
                                process_count=process_count, read=self.read, reasons=SS.SEG_REASONS)

    def eval_dataset(self, name: str = "val", process_index: int = 0, process_count: int = 1):
        src = self.source("val")
        self.eval_size()
        gb = self.t.eval_batch_size or self.config["batch_size"]
        return dp.eval_dataset(len(src), self._eval_fn(), batch_size=local_batch(gb, process_count),
                               process_index=process_index, process_count=process_count, read=self.read,
                               reasons=SS.SEG_REASONS)

    def example_batch(self):
        h, w = self.crop_size
        b = local_batch(self.config["batch_size"], 1)
        return {"image": np.zeros((b, h, w, 3), np.uint8), "label": np.zeros((b, h, w), np.uint8)}

    def next_command(self, workdir: str) -> str:
        return f"python -m hrnet_jax.predict --checkpoint {workdir} --images IMAGES --out OUT"

    # ---- model ------------------------------------------------------------------------------------------
    def build_model(self):
        if self._model is None:
            self._model = build_hrnet(self.config["model"], num_classes=self.num_classes)
            head = getattr(self._model, "head", "")
            if head not in ("segmentation", "ocr"):
                raise ConfigError(f"model {self.config['model']['name']!r} has a {head!r} head; segmentation "
                                  f"needs a seg_hrnet_* or seg_hrnet_ocr_* model")
        return self._model

    @property
    def align_corners(self) -> bool:
        return bool(getattr(self.build_model(), "align_corners", False))

    @property
    def is_ocr(self) -> bool:
        return getattr(self.build_model(), "head", "") == "ocr"

    def output_weights(self) -> tuple[float, ...]:
        if self.t.output_weights:
            return tuple(float(v) for v in self.t.output_weights)
        return (0.4, 1.0) if self.is_ocr else (1.0,)

    def param_groups(self, params):
        return {k: jax.tree.map(lambda _, lab=("head" if k in HEAD_PARAMS else "backbone"): lab, v)
                for k, v in params.items()}

    # ---- device side ------------------------------------------------------------------------------------
    def _main(self, out):
        return out[-1] if isinstance(out, (tuple, list)) else out

    def scores(self, apply_fn: Callable, variables, images: jax.Array) -> jax.Array:
        """Per-class scores at the image resolution by ``task.eval_mode`` (argmax = prediction)."""
        t = self.t

        def model_fn(x):
            return self._main(apply_fn(variables, x, train=False, rngs=None))

        size = images.shape[1:3]
        crop = _pair(t.eval_crop, "eval_crop") if t.eval_crop else tuple(size)
        stride = (max(1, int(crop[0] * t.eval_stride)), max(1, int(crop[1] * t.eval_stride)))
        if t.eval_mode == "whole":
            return I.whole_image(model_fn, images, align_corners=self.align_corners, flip=bool(t.eval_flip))
        if t.eval_mode == "sliding":
            return I.sliding_window(model_fn, images, crop, stride, align_corners=self.align_corners,
                                    flip=bool(t.eval_flip))
        return I.multi_scale(model_fn, images, tuple(t.eval_scales), base_size=int(t.eval_base_size or t.base_size),
                             crop_hw=crop, stride_hw=stride, align_corners=self.align_corners,
                             flip=bool(t.eval_flip), combine=t.eval_combine)

    def forward(self, apply_fn: Callable, variables, batch, *, train: bool, rngs=None):
        if train:
            return apply_fn(variables, batch["image"], train=True, rngs=rngs)
        return {"scores": self.scores(apply_fn, variables, batch["image"])}

    def loss(self, preds, batch):
        t = self.t
        loss, parts = segmentation_loss(
            preds, batch["label"], align_corners=self.align_corners,
            class_weights=tuple(t.class_weights) or None, ignore_index=self.ignore_index,
            output_weights=self.output_weights(), ohem=bool(t.ohem), ohem_thresh=float(t.ohem_thresh),
            ohem_min_kept=int(t.ohem_min_kept), ohem_group=int(t.ohem_group))
        return loss, (parts if len(parts) > 1 else {})

    def metrics(self, preds, batch) -> dict:
        scores = preds["scores"] if isinstance(preds, Mapping) else preds
        pred = jnp.argmax(scores, axis=-1)
        return {"confusion": ClassConfusion.of(pred, batch["label"], self.num_classes, batch.get("valid"),
                                               names=self.classes.names)}
