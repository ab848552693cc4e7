"""Object detection (HRNetV2p + Faster R-CNN) on the contract of :mod:`hrnet_jax.tasks.base`.

Its settings are the experiment config's ``task`` group; :data:`DEFAULTS` lists every field. The model is
``hrnet_jax.models.detection.create_detector(model.name, num_classes=C, ...)`` with the ``model`` group's
``dtype`` / ``arch`` / other overrides (:mod:`hrnet_jax.tasks.model_config`); C is the number of categories of
the annotation file (or of ``task.categories``).

Data (host): COCO instances JSON + image folder (:mod:`hrnet_jax.data.sources.coco_instances`; any category
list), the recipe's aspect-keeping resize (``img_scale`` (1333, 800)), flip (``flip_prob`` 0.5), padding into the
static ``buckets`` (one compiled step per bucket; a batch holds one bucket: :mod:`.pipeline`), boxes padded to
``max_boxes`` with a valid mask, crowd boxes dropped; bad annotations and missing images are skipped and counted
(``data/train/skipped_*``, ``data/val/skipped_*``).

Device side:

* ``preprocess``: uint8 → float, ImageNet normalisation (mmdet's RGB mean / std), padding pixels set to 0 (mmdet
  pads after normalising);
* ``forward(train=True)``: the detector with the ground truth and the sampling RNG → its loss terms;
  ``forward(train=False)``: the detector's per-image detections;
* ``loss``: :func:`hrnet_jax.tasks.detection.loss.detection_loss` (RPN + R-CNN);
* ``predict``: detections plus ``image_id`` / ``scale`` / ``orig_hw`` for the host evaluator
  (:mod:`.evaluate`: original pixels, category ids, COCO results JSON, COCOeval bbox AP).
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from hrnet_jax.data import pipeline as dp
from hrnet_jax.data.sources.coco_instances import CocoInstancesSource
from hrnet_jax.tasks.base import Task, local_batch, with_defaults
from hrnet_jax.tasks.detection import pipeline as P
from hrnet_jax.tasks.detection.evaluate import DetectionEvaluator, load_coco
from hrnet_jax.training.config import Config, ConfigError

#: the 80 COCO detection categories (id, name), ids 1-90 with gaps (instances_val2017.json)
COCO_CATEGORIES = tuple(enumerate((
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", None, "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", None, "backpack", "umbrella", None, None, "handbag", "tie", "suitcase",
    "frisbee", "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard",
    "surfboard", "tennis racket", "bottle", None, "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana",
    "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", None, "dining table", None, None, "toilet", None, "tv", "laptop", "mouse", "remote",
    "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", None, "book", "clock", "vase",
    "scissors", "teddy bear", "hair drier", "toothbrush"), start=1))
COCO_CATEGORIES = tuple((i, n) for i, n in COCO_CATEGORIES if n is not None)
assert len(COCO_CATEGORIES) == 80

#: the recipe's buckets for ``img_scale`` (1333, 800): 4:3 landscape / portrait (640x480 → 1067x800) and the
#: widest / tallest images (long side up to 1333)
COCO_BUCKETS = ((800, 1088), (1088, 800), (800, 1344), (1344, 800))

DEFAULTS = dict(
    name="detection",
    # ---- data location (relative paths are joined to data_root) ----
    data_root="",
    train_ann="annotations/instances_train2017.json",
    train_images="train2017",
    val_ann="annotations/instances_val2017.json",
    val_images="val2017",
    categories=(),                   # () = every category of the file (sorted by id); else the ids to train on
    # the class list without reading the data (prediction, converted checkpoints): "" = from the annotation
    # file; "coco" = the 80 COCO categories; a JSON file of [{"id", "name"}, ...] (relative: data_root)
    classes="",
    # generate the synthetic COCO-format dataset into data_root (hrnet_jax.data.synthetic.detection):
    # {} = off, else generator kwargs {"num_train": 600, ...}
    synthetic={},
    # ---- geometry ----
    img_scale=(1333, 800),           # (long side max, short side max), aspect kept
    buckets=COCO_BUCKETS,            # static padded (H, W) sizes, multiples of 32
    max_boxes=100,                   # ground-truth boxes per image (padded with a valid mask)
    flip_prob=0.5,
    drop_empty_train=True,           # training skips images without boxes (mmdet filter_empty_gt)
    # ---- evaluation ----
    results_path="",                 # write the COCO results JSON here at every evaluation
    eval_seen_images_only=False,     # COCOeval only on the images evaluated (partial evals)
    eval_batch_size=0,               # global; 0 -> batch_size
    # ---- input pipeline (hrnet_jax.data.pipeline.ReadConfig) ----
    read_threads=2,
    read_prefetch_batches=2,
    read_workers=0,
)


def task_defaults(**changes) -> dict:
    """:data:`DEFAULTS` with ``changes`` (unknown names are an error naming the valid ones)."""
    return with_defaults(DEFAULTS, changes, "detection")


def build_detector(model_cfg, num_classes: int):
    """The detector named by ``model_cfg.name`` with the config's overrides (``dtype``, ``arch`` → ``config``,
    every other field a ``create_detector`` keyword)."""
    from hrnet_jax.models.detection import DETECTOR_NAMES, create_detector
    from hrnet_jax.tasks.model_config import create_overrides
    name = model_cfg.get("name", "")
    if name not in DETECTOR_NAMES:
        raise ConfigError(f"model.name {name!r} is not a detector; valid: {', '.join(DETECTOR_NAMES)}")
    return create_detector(name, num_classes=int(num_classes), **create_overrides(model_cfg))


class DetectionTask(Task):
    name = "detection"

    def __init__(self, config: Any):
        super().__init__(config)
        self.t = t = Config(with_defaults(DEFAULTS, config.get("task") or {}, "detection"))
        try:
            self.geo = P.Geometry(tuple(t.img_scale), tuple(tuple(b) for b in t.buckets), int(t.max_boxes))
        except (ValueError, TypeError, IndexError) as e:
            raise ConfigError(f"task.img_scale / task.buckets / task.max_boxes: {e}") from None
        if not 0.0 <= float(t.flip_prob) <= 1.0:
            raise ConfigError(f"task.flip_prob must be in [0, 1], got {t.flip_prob}")
        self.read = dp.ReadConfig(num_threads=t.read_threads, prefetch_batches=t.read_prefetch_batches,
                                 worker_count=t.read_workers)
        self._paths: dict[str, str] | None = None
        self._sources: dict[str, CocoInstancesSource] = {}
        self._coco_gt = None
        self._model = None

    # ---- paths / sources ---------------------------------------------------------------------------------
    def _join(self, p: str) -> str:
        return p if (not p or os.path.isabs(p) or not self.t.data_root) else os.path.join(self.t.data_root, p)

    @property
    def paths(self) -> dict[str, str]:
        """Resolved data paths (generates the synthetic dataset on first use when ``task.synthetic`` is set)."""
        if self._paths is None:
            t = self.t
            if t.synthetic:
                from hrnet_jax.data.synthetic.detection import ensure_synthetic_det_dataset
                if not t.data_root:
                    raise ConfigError("task.synthetic needs task.data_root (the folder to generate it in)")
                syn = t.synthetic.to_dict() if isinstance(t.synthetic, Config) else dict(t.synthetic)
                out = ensure_synthetic_det_dataset(t.data_root, **syn)
                self._paths = {k: out[k] for k in ("train_ann", "train_images", "val_ann", "val_images")}
            else:
                self._paths = {k: self._join(t[k]) for k in ("train_ann", "train_images", "val_ann", "val_images")}
        return dict(self._paths)

    def source(self, split: str) -> CocoInstancesSource:
        """The :class:`CocoInstancesSource` of ``"train"`` or ``"val"``."""
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        if split not in self._sources:
            p, t = self.paths, self.t
            ann = p[f"{split}_ann"]
            if not os.path.exists(ann):
                raise ConfigError(
                    f"missing {ann}. Expected under task.data_root={t.data_root!r} (COCO layout): {t.train_ann}, "
                    f"{t.val_ann}, {t.train_images}/, {t.val_images}/. Set --config.task.data_root=/path/to/coco "
                    f"(or task.train_ann / task.val_ann / task.*_images for a custom COCO-format dataset).")
            declared = self._declared_classes()
            cats = [i for i, _ in declared] if declared else ([int(c) for c in t.categories] or None)
            self._sources[split] = CocoInstancesSource(ann, p[f"{split}_images"], categories=cats,
                                                       drop_empty=bool(t.drop_empty_train) and split == "train")
        return self._sources[split]

    def _declared_classes(self) -> list[tuple[int, str]] | None:
        """``task.classes`` as [(category id, name)], or None (the annotation file decides)."""
        c = self.t.classes
        if not c:
            return None
        if isinstance(c, str) and c.lower() == "coco":
            cats = list(COCO_CATEGORIES)
        else:
            path = c if os.path.isabs(c) or os.path.exists(c) or not self.t.data_root else \
                os.path.join(self.t.data_root, c)
            try:
                with open(path) as f:
                    data = json.load(f)
                data = data.get("categories", data) if isinstance(data, dict) else data
                cats = [(int(d["id"]), str(d["name"])) for d in data]
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise ConfigError(f"task.classes: {c!r} is not 'coco' nor a JSON list of {{id, name}} ({e})") from None
        wanted = [int(i) for i in self.t.categories]
        if wanted:
            names = dict(cats)
            cats = [(i, names.get(i, str(i))) for i in wanted]
        return cats

    def _any_source(self) -> CocoInstancesSource:
        src = self._sources.get("val") or self._sources.get("train")
        if src is None:
            src = self.source("val" if os.path.exists(self.paths["val_ann"]) else "train")
        return src

    @property
    def cat_ids(self) -> list[int]:
        declared = self._declared_classes()
        return [i for i, _ in declared] if declared else list(self._any_source().cat_ids)

    @property
    def class_names(self) -> list[str]:
        declared = self._declared_classes()
        return [n for _, n in declared] if declared else list(self._any_source().class_names)

    @property
    def num_classes(self) -> int:
        return len(self.cat_ids)

    def data_stats(self) -> dict[str, float]:
        return {f"{split}/{k}": float(v) for split, src in sorted(self._sources.items()) for k, v in
                src.skipped().items()}

    def next_command(self, workdir: str) -> str:
        return f"python -m hrnet_jax.predict --checkpoint {workdir} --images IMAGES --out OUT"

    # ---- model and data ----------------------------------------------------------------------------------
    def build_model(self):
        if self._model is None:
            self._model = build_detector(self.config["model"], self.num_classes)
        return self._model

    @property
    def box_offset(self) -> float:
        return float(getattr(self.build_model(), "box_offset", 0.0))

    def train_dataset(self, process_index: int = 0, process_count: int = 1):
        return P.train_dataset(self.source("train"), self.geo,
                               batch_size=local_batch(self.config["batch_size"], process_count),
                               seed=self.config.get("seed", 0), flip_prob=float(self.t.flip_prob),
                               process_index=process_index, process_count=process_count, read=self.read)

    def eval_dataset(self, name: str = "val", process_index: int = 0, process_count: int = 1):
        gb = self.t.eval_batch_size or self.config["batch_size"]
        return P.eval_dataset(self.source("val"), self.geo, batch_size=local_batch(gb, process_count),
                              process_index=process_index, process_count=process_count, read=self.read)

    def example_batch(self):
        b = local_batch(self.config["batch_size"], 1)
        ph = self.geo.placeholder(0)
        ex = {k: np.stack([v] * b) for k, v in ph.items()}
        ex["image_hw"][:] = self.geo.buckets[0]
        return ex

    def param_groups(self, params):
        """``"backbone"`` for the HRNet backbone's parameters, ``"head"`` for the neck, RPN and R-CNN head."""
        def label(path, _):
            top = str(getattr(path[0], "key", path[0])) if path else ""
            return "backbone" if top in self._backbone_keys(params) else "head"
        return jax.tree_util.tree_map_with_path(label, params)

    @staticmethod
    def _backbone_keys(params) -> set[str]:
        keys = set(params)
        named = {k for k in keys if "backbone" in k.lower()}
        if named:
            return named
        return {k for k in keys if k.startswith(("stem", "conv1", "conv2", "bn1", "bn2", "layer1", "transition",
                                                 "stage"))}

    # ---- device side -------------------------------------------------------------------------------------
    def preprocess(self, batch, rng, *, train: bool):
        if "image" not in batch:
            return dict(batch)
        img = self.normalize(batch["image"])
        if "image_hw" in batch:
            h, w = img.shape[1:3]
            hw = batch["image_hw"].astype(jnp.int32)
            inside = ((jnp.arange(h)[None, :, None] < hw[:, 0, None, None])
                      & (jnp.arange(w)[None, None, :] < hw[:, 1, None, None]))
            img = jnp.where(inside[..., None], img, 0.0)
        return {**batch, "image": img}

    def forward(self, apply_fn: Callable, variables, batch, *, train: bool, rngs=None):
        hw = batch["image_hw"].astype(jnp.int32)
        if train:
            return apply_fn(variables, batch["image"], hw, batch["gt_boxes"], batch["gt_labels"],
                            batch["gt_valid"], train=True, rngs=rngs)
        return apply_fn(variables, batch["image"], hw, train=False, rngs=rngs)

    def loss(self, preds, batch):
        from hrnet_jax.tasks.detection.loss import detection_loss
        return detection_loss(preds)

    def predict(self, preds, batch):
        out = {k: preds[k] for k in ("boxes", "scores", "labels", "valid")}
        for key in ("image_id", "scale", "orig_hw"):
            if key in batch:
                out[key] = batch[key]
        return out

    # ---- host side ---------------------------------------------------------------------------------------
    def coco_gt(self):
        if self._coco_gt is None:
            self._coco_gt = load_coco(self.paths["val_ann"])
        return self._coco_gt

    def evaluator(self, name: str = "val") -> DetectionEvaluator:
        src = self.source("val")
        img_ids = None if self.t.eval_seen_images_only else [int(src[i]["image_id"]) for i in range(len(src))]
        return DetectionEvaluator(self.coco_gt(), self.cat_ids, self.t.results_path or None,
                                  box_offset=self.box_offset, img_ids=img_ids,
                                  seen_images_only=bool(self.t.eval_seen_images_only))
