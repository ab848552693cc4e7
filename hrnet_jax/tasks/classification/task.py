"""Image classification on the contract of :mod:`hrnet_jax.tasks.base`: softmax cross-entropy (optionally
label-smoothed), device-side top-1 / top-5 accuracy. Data: the synthetic coloured shapes
(:class:`hrnet_jax.data.sources.shapes.SyntheticShapes`) through the one pipeline builder; uint8 on the wire,
normalised on the device.
"""
from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from hrnet_jax.data import pipeline
from hrnet_jax.data.sources.shapes import SyntheticShapes
from hrnet_jax.tasks.base import Task, local_batch, with_defaults
from hrnet_jax.tasks.model_config import build_hrnet
from hrnet_jax.training.config import Config
from hrnet_jax.training.metrics import Accuracy
from hrnet_jax.training.precision import compute_dtype

DEFAULTS = dict(
    name="classification",
    num_classes=8,
    image_size=32,
    train_examples=4096,
    eval_examples=256,
    label_smoothing=0.0,
    read_threads=1,
    read_prefetch_batches=2,
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


class ClassificationTask(Task):
    """``config.task``: :data:`DEFAULTS`; ``config.model``: ``{name: "tiny_cnn" | an hrnet_jax.models
    classification name, dtype, width (tiny_cnn), arch, ...}``."""
    name = "classification"

    def __init__(self, config: Config):
        super().__init__(config)
        self.t = Config(with_defaults(DEFAULTS, config.get("task") or {}, "classification"))
        self.read = pipeline.ReadConfig(num_threads=self.t.read_threads,
                                        prefetch_batches=self.t.read_prefetch_batches)

    # -- model -------------------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        m = self.config["model"]
        if m["name"] == "tiny_cnn":
            return TinyCNN(num_classes=self.t.num_classes, width=m.get("width", 16),
                           dtype=compute_dtype(m.get("dtype", "float32")))
        return build_hrnet({k: v for k, v in m.items() if k != "width"}, num_classes=self.t.num_classes)

    # -- data --------------------------------------------------------------------------------------------
    def _source(self, train: bool) -> SyntheticShapes:
        seed = self.config.get("seed", 0)
        if train:
            return SyntheticShapes(self.t.train_examples, self.t.num_classes, self.t.image_size, seed=seed)
        return SyntheticShapes(self.t.eval_examples, self.t.num_classes, self.t.image_size, seed=seed + 1_000_003)

    def train_dataset(self, process_index: int, process_count: int):
        src = self._source(True)
        return pipeline.train_dataset(len(src), lambda i, rng: src[i],
                                      batch_size=local_batch(self.config["batch_size"], process_count),
                                      seed=self.config.get("seed", 0), process_index=process_index,
                                      process_count=process_count, read=self.read)

    def eval_dataset(self, name: str, process_index: int, process_count: int):
        src = self._source(False)
        return pipeline.eval_dataset(len(src), lambda i: src[i],
                                     batch_size=local_batch(self.config["batch_size"], process_count),
                                     process_index=process_index, process_count=process_count, read=self.read)

    # -- device side -------------------------------------------------------------------------------------
    def loss(self, preds: jax.Array, batch: Mapping[str, jax.Array]):
        labels = batch["label"]
        onehot = jax.nn.one_hot(labels, preds.shape[-1])
        if self.t.label_smoothing:
            onehot = optax.smooth_labels(onehot, self.t.label_smoothing)
        loss = jnp.mean(optax.softmax_cross_entropy(preds, onehot))
        acc = jnp.mean((jnp.argmax(preds, -1) == labels).astype(jnp.float32))
        return loss, {"accuracy": acc}

    def metrics(self, preds: jax.Array, batch: Mapping[str, jax.Array]) -> dict:
        valid = batch.get("valid")
        return {"top1": Accuracy.from_logits(preds, batch["label"], 1, valid),
                "top5": Accuracy.from_logits(preds, batch["label"], 5, valid)}


def top_k_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Top-k accuracy (%) worked out on the host with numpy (a reference for tests)."""
    order = np.argsort(-np.asarray(logits), axis=-1)[:, :k]
    return 100.0 * float(np.mean(np.any(order == np.asarray(labels)[:, None], axis=1)))
