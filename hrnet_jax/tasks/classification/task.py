"""Image classification (HRNet-Wx-C / ImageNet) on the contract of :mod:`hrnet_jax.tasks.base`.

Sources (``task.source``):

* ``"tfds"``: a prepared TFDS dataset read with ``tfds.data_source`` (ArrayRecord, no TensorFlow):
  ``imagenet2012`` or the project's synthetic ``cls_demo`` (generated into ``task.data_dir`` on first use when
  ``task.synthetic`` is set, :mod:`hrnet_jax.data.synthetic.classification`);
* ``"folder"``: ``data_dir/train/<class>/*.JPEG`` + ``data_dir/val/...`` (:mod:`hrnet_jax.data.sources.imagenet`);
* ``"shapes"``: in-memory synthetic coloured shapes (loop tests; no files).

Host (grain, optionally in ``read_workers`` worker processes): decode + ``RandomResizedCrop(image_size,
rrc_scale, rrc_ratio)`` + horizontal flip for training, ``Resize(eval_resize) + CenterCrop(eval_crop)`` for
evaluation (torchvision semantics, PIL bilinear: :mod:`hrnet_jax.data.ops.crops`); corrupt or missing images are
skipped and counted. uint8 pixels and int32 labels go to the device.

Device: normalisation, optional mixup / cutmix over the global batch (``preprocess`` gets the step's rng),
softmax cross-entropy on (label-smoothed, mixed) soft targets, top-1 / top-5 accuracy as mergeable sums (reduced
over devices and processes by the global arrays).
"""
from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from hrnet_jax.data import pipeline
from hrnet_jax.data.ops import crops
from hrnet_jax.data.sources.shapes import SHAPES, SyntheticShapes
from hrnet_jax.tasks.base import Task, local_batch, with_defaults
from hrnet_jax.tasks.model_config import build_hrnet
from hrnet_jax.training.config import Config, ConfigError
from hrnet_jax.training.metrics import Accuracy
from hrnet_jax.training.precision import compute_dtype

DEFAULTS = dict(
    name="classification",
    source="shapes",           # "tfds" | "folder" | "shapes"
    num_classes=8,
    image_size=32,             # training crop (RandomResizedCrop output); the shapes source's image size
    # -- tfds / folder sources
    data_dir="",               # TFDS data_dir (may be gs://), or the folder source's root
    tfds_name="imagenet2012",
    train_split="train",
    eval_split="validation",   # TFDS split / folder name ("val" for the folder layout)
    labels_file="",            # folder source: "<file> <class>" lines for a flat eval folder
    synthetic={},              # cls_demo generator parameters: prepare the TFDS dataset into data_dir if absent
    # -- transforms (torchvision semantics)
    rrc_scale=(0.08, 1.0),
    rrc_ratio=(3.0 / 4.0, 4.0 / 3.0),
    flip=True,
    eval_resize=256,           # short side before the centre crop
    eval_crop=224,
    decode_draft=True,         # training: JPEG scaled decoding when the crop allows it (2-4x cheaper)
    # -- shapes source
    train_examples=4096,
    eval_examples=256,
    # -- loss and batch augmentation (on device)
    label_smoothing=0.0,
    mixup_alpha=0.0,           # > 0: mixup with Beta(alpha, alpha)
    cutmix_alpha=0.0,          # > 0: cutmix with Beta(alpha, alpha)
    mix_prob=1.0,              # probability that a batch is mixed at all
    mix_switch_prob=0.5,       # with both on: probability of cutmix rather than mixup
    # -- reading
    read_threads=1,
    read_prefetch_batches=2,
    read_workers=0,            # grain worker processes (mp_prefetch) decoding and augmenting
    eval_batch_size=0,         # global; 0 = batch_size
)


def task_defaults(**changes) -> dict:
    """:data:`DEFAULTS` with ``changes`` (unknown names are an error naming the valid ones)."""
    return with_defaults(DEFAULTS, changes, "classification")


class TinyCNN(nn.Module):
    """A small conv-BN-ReLU network (fast tests of the loop)."""
    num_classes: int
    width: int = 16
    dtype: Any = None

    @nn.compact
    def __call__(self, images, train: bool = False):
        x = images.astype(self.dtype or jnp.float32)
        for i, mult in enumerate((1, 2, 4)):
            x = nn.Conv(self.width * mult, (3, 3), strides=(2, 2) if i else (1, 1), use_bias=False,
                        dtype=self.dtype, name=f"conv{i}")(x)
            x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=self.dtype,
                             name=f"bn{i}")(x)
            x = nn.relu(x)
        x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        return nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x).astype(jnp.float32)


# ---------------------------------------------------------------------------------------------- host examples
class TrainExample:
    """``(index, rng) -> {"image": uint8 (S, S, 3), "label": int32}``: decode + RandomResizedCrop + flip.
    A picklable object (grain worker processes receive it)."""

    def __init__(self, src, size: int, scale, ratio, flip: bool, draft: bool):
        self.src, self.size, self.scale, self.ratio = src, int(size), tuple(scale), tuple(ratio)
        self.flip, self.draft = bool(flip), bool(draft)

    def __call__(self, index: int, rng: np.random.Generator) -> dict:
        data, label, name = self.src.record(index)
        img = crops.decode_random_resized_crop(data, rng, self.size, self.scale, self.ratio, draft=self.draft,
                                               path=name)
        if self.flip and rng.uniform() < 0.5:
            img = img[:, ::-1]
        return {"image": np.ascontiguousarray(img), "label": np.int32(label)}


class EvalExample:
    """``index -> {"image": uint8 (C, C, 3), "label": int32}``: decode + Resize(short) + CenterCrop."""

    def __init__(self, src, resize: int, crop: int):
        self.src, self.resize, self.crop = src, int(resize), int(crop)

    def __call__(self, index: int) -> dict:
        data, label, name = self.src.record(index)
        img = crops.decode_resize_center_crop(data, self.resize, self.crop, path=name)
        return {"image": img, "label": np.int32(label)}


class _ShapesTrain:
    def __init__(self, src):
        self.src = src

    def __call__(self, index, rng):
        return self.src[index]


class _ShapesEval:
    def __init__(self, src):
        self.src = src

    def __call__(self, index):
        return self.src[index]


# ---------------------------------------------------------------------------------------------- device helpers
def mix_batch(images: jax.Array, targets: jax.Array, rng: jax.Array, *, mixup_alpha: float, cutmix_alpha: float,
              mix_prob: float = 1.0, switch_prob: float = 0.5) -> tuple[jax.Array, jax.Array]:
    """Batch mixup / cutmix (timm's ``Mixup`` in batch mode): every example is mixed with the example at the
    mirrored position of the *global* batch (``x[::-1]``), one ``lam`` per batch; cutmix pastes a box of area
    ``1 - lam`` (clipped to the image, ``lam`` corrected to the pasted area). ``images`` float (B, H, W, C),
    ``targets`` (B, K) soft labels."""
    k_apply, k_switch, k_lam, k_cy, k_cx = jax.random.split(rng, 5)
    b, h, w = images.shape[:3]
    other, other_t = images[::-1], targets[::-1]
    use_cut = (cutmix_alpha > 0) & ((mixup_alpha <= 0) | (jax.random.uniform(k_switch) < switch_prob))
    alpha_mix = mixup_alpha if mixup_alpha > 0 else 1.0
    alpha_cut = cutmix_alpha if cutmix_alpha > 0 else 1.0
    lam = jnp.where(use_cut, jax.random.beta(k_lam, alpha_cut, alpha_cut),
                    jax.random.beta(jax.random.fold_in(k_lam, 1), alpha_mix, alpha_mix)).astype(jnp.float32)
    # cutmix box
    cut = jnp.sqrt(1.0 - lam)
    ch, cw = (h * cut).astype(jnp.int32), (w * cut).astype(jnp.int32)
    cy = jax.random.randint(k_cy, (), 0, h)
    cx = jax.random.randint(k_cx, (), 0, w)
    y0, y1 = jnp.clip(cy - ch // 2, 0, h), jnp.clip(cy + ch // 2, 0, h)
    x0, x1 = jnp.clip(cx - cw // 2, 0, w), jnp.clip(cx + cw // 2, 0, w)
    ys, xs = jnp.arange(h)[:, None], jnp.arange(w)[None, :]
    box = ((ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1))[None, :, :, None]
    lam_cut = 1.0 - ((y1 - y0) * (x1 - x0)).astype(jnp.float32) / float(h * w)
    cut_images = jnp.where(box, other, images)
    mix_images = lam * images + (1.0 - lam) * other
    lam = jnp.where(use_cut, lam_cut, lam)
    apply = jax.random.uniform(k_apply) < mix_prob
    lam = jnp.where(apply, lam, 1.0)
    out = jnp.where(apply, jnp.where(use_cut, cut_images, mix_images), images)
    return out, lam * targets + (1.0 - lam) * other_t


class ClassificationTask(Task):
    """``config.task``: :data:`DEFAULTS`; ``config.model``: ``{name: "tiny_cnn" | an hrnet_jax.models
    classification name, dtype, width (tiny_cnn), arch, ...}``."""
    name = "classification"

    def __init__(self, config: Config):
        super().__init__(config)
        self.t = Config(with_defaults(DEFAULTS, config.get("task") or {}, "classification"))
        if self.t.source not in ("tfds", "folder", "shapes"):
            raise ConfigError(f"task.source {self.t.source!r}; valid: tfds, folder, shapes")
        self.read = pipeline.ReadConfig(num_threads=self.t.read_threads,
                                        prefetch_batches=self.t.read_prefetch_batches,
                                        worker_count=self.t.read_workers)
        self._sources: dict[bool, Any] = {}

    # -- model -------------------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        m = self.config["model"]
        if m["name"] == "tiny_cnn":
            return TinyCNN(num_classes=self.t.num_classes, width=m.get("width", 16),
                           dtype=compute_dtype(m.get("dtype", "float32")))
        return build_hrnet({k: v for k, v in m.items() if k != "width"}, num_classes=self.t.num_classes)

    # -- data --------------------------------------------------------------------------------------------
    def _prepare(self) -> None:
        t = self.t
        if t.source == "tfds" and t.synthetic:
            if not t.data_dir:
                raise ConfigError("task.synthetic needs task.data_dir (the folder to generate cls_demo in)")
            if t.tfds_name != "cls_demo":
                raise ConfigError(f"task.synthetic generates the 'cls_demo' TFDS dataset, not {t.tfds_name!r}")
            from hrnet_jax.data.synthetic.classification import ensure_cls_demo
            if jax.process_index() == 0:
                ensure_cls_demo(t.data_dir, **dict(t.synthetic))
            if jax.process_count() > 1:
                from jax.experimental import multihost_utils
                multihost_utils.sync_global_devices("cls_demo prepared")

    def source(self, train: bool):
        """The split's source (``record(i) -> (bytes, label, name)``, ``classes``, ``names``), built once."""
        if train not in self._sources:
            t = self.t
            if t.source == "shapes":
                seed = self.config.get("seed", 0)
                n, s = (t.train_examples, seed) if train else (t.eval_examples, seed + 1_000_003)
                self._sources[train] = SyntheticShapes(n, t.num_classes, t.image_size, seed=s)
            else:
                if not self._sources:
                    self._prepare()
                split = t.train_split if train else t.eval_split
                if t.source == "tfds":
                    from hrnet_jax.data.sources.imagenet import TfdsSource
                    src = TfdsSource(t.tfds_name, split, t.data_dir or None)
                else:
                    from hrnet_jax.data.sources.imagenet import FolderSource
                    if not t.data_dir:
                        raise ConfigError("task.source='folder' needs task.data_dir (root/train/<class>/...)")
                    src = FolderSource(t.data_dir, split, labels_file=t.labels_file)
                if len(src.classes) != t.num_classes:
                    raise ConfigError(f"task.num_classes={t.num_classes} but {t.source} data "
                                      f"{t.tfds_name if t.source == 'tfds' else t.data_dir} has "
                                      f"{len(src.classes)} classes")
                self._sources[train] = src
        return self._sources[train]

    def class_names(self) -> list[str]:
        """Human-readable class names, index = label."""
        if self.t.source == "shapes":
            return [f"{SHAPES[i % len(SHAPES)]}#{i}" for i in range(self.t.num_classes)]
        return list(self.source(False).names)

    def eval_transform(self) -> EvalExample:
        """The evaluation example function on any source (``predict`` uses it on image files)."""
        return EvalExample(None, self.t.eval_resize, self.t.eval_crop)

    def train_dataset(self, process_index: int, process_count: int):
        src = self.source(True)
        t = self.t
        fn = (_ShapesTrain(src) if t.source == "shapes" else
              TrainExample(src, t.image_size, t.rrc_scale, t.rrc_ratio, t.flip, t.decode_draft))
        return pipeline.train_dataset(len(src), fn, batch_size=local_batch(self.config["batch_size"], process_count),
                                      seed=self.config.get("seed", 0), process_index=process_index,
                                      process_count=process_count, read=self.read)

    def eval_dataset(self, name: str, process_index: int, process_count: int):
        src = self.source(False)
        t = self.t
        if t.source == "shapes":
            fn, placeholder = _ShapesEval(src), None
        else:
            fn = EvalExample(src, t.eval_resize, t.eval_crop)
            placeholder = {"image": np.zeros((t.eval_crop, t.eval_crop, 3), np.uint8), "label": np.int32(0)}
        batch = t.eval_batch_size or self.config["batch_size"]
        return pipeline.eval_dataset(len(src), fn, batch_size=local_batch(batch, process_count),
                                     process_index=process_index, process_count=process_count, read=self.read,
                                     placeholder=placeholder)

    def example_batch(self):
        t = self.t
        if t.source == "shapes":
            return super().example_batch()
        s = int(t.image_size)
        return {"image": np.zeros((1, s, s, 3), np.uint8), "label": np.zeros((1,), np.int32)}

    # -- device side -------------------------------------------------------------------------------------
    def preprocess(self, batch, rng, *, train: bool):
        out = dict(batch)
        images = self.normalize(batch["image"])
        t = self.t
        mixing = train and rng is not None and (t.mixup_alpha > 0 or t.cutmix_alpha > 0)
        if train and (mixing or t.label_smoothing):
            targets = jax.nn.one_hot(batch["label"], t.num_classes, dtype=jnp.float32)
            if t.label_smoothing:
                targets = optax.smooth_labels(targets, t.label_smoothing)
            if mixing:
                images, targets = mix_batch(images, targets, rng, mixup_alpha=t.mixup_alpha,
                                            cutmix_alpha=t.cutmix_alpha, mix_prob=t.mix_prob,
                                            switch_prob=t.mix_switch_prob)
            out["target"] = targets
        out["image"] = images
        return out

    def loss(self, preds: jax.Array, batch: Mapping[str, jax.Array]):
        preds = preds.astype(jnp.float32)
        labels = batch["label"]
        if "target" in batch:
            loss = jnp.mean(optax.softmax_cross_entropy(preds, batch["target"]))
        else:
            loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(preds, labels))
        acc = jnp.mean((jnp.argmax(preds, -1) == labels).astype(jnp.float32))
        return loss, {"accuracy": acc}

    def metrics(self, preds: jax.Array, batch: Mapping[str, jax.Array]) -> dict:
        valid = batch.get("valid")
        preds = preds.astype(jnp.float32)
        return {"top1": Accuracy.from_logits(preds, batch["label"], 1, valid),
                "top5": Accuracy.from_logits(preds, batch["label"], 5, valid)}

    def next_command(self, workdir: str) -> str:
        if self.t.source == "shapes":
            return ""
        return (f"python -m hrnet_jax.predict --checkpoint {workdir} --images 'path/to/*.jpg'  "
                f"(top-5 classes with names)")


def top_k_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Top-k accuracy (%) worked out on the host with numpy (a reference for tests)."""
    order = np.argsort(-np.asarray(logits), axis=-1)[:, :k]
    return 100.0 * float(np.mean(np.any(order == np.asarray(labels)[:, None], axis=1)))
