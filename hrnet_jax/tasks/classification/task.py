"""The classification task: model, grain pipelines, softmax cross-entropy, top-k evaluator."""
from __future__ import annotations

import math
from typing import Any, Mapping

import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax

from hrnet_jax.tasks.classification.data import Padded, SyntheticShapes
from hrnet_jax.training.config import Config
from hrnet_jax.training.precision import compute_dtype


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


class TopKEvaluator:
    """Top-1 / top-5 accuracy (in %) from the ``topk`` class indices that :meth:`ClassificationTask.predict`
    returns."""

    def __init__(self):
        self.n = 0
        self.hits = {1: 0, 5: 0}

    def add(self, outputs: Mapping[str, np.ndarray], batch: Mapping[str, np.ndarray]) -> None:
        topk, labels = np.asarray(outputs["topk"]), np.asarray(batch["label"])
        for k in self.hits:
            self.hits[k] += int(np.sum(np.any(topk[:, :k] == labels[:, None], axis=1)))
        self.n += len(labels)

    def result(self) -> dict[str, float]:
        return {f"top{k}": 100.0 * h / max(self.n, 1) for k, h in self.hits.items()}


class ClassificationTask:
    """Settings: ``config.task`` = {num_classes, image_size, train_examples, eval_examples, label_smoothing};
    ``config.model`` = {name: "tiny_cnn" | an ``hrnet_jax.models`` classification name, dtype, width}."""
    name = "classification"

    def __init__(self, config: Config):
        self.config = config
        self.t = config.task

    # -- model -------------------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        m = self.config.model
        dtype = compute_dtype(m.dtype)
        if m.name == "tiny_cnn":
            return TinyCNN(num_classes=self.t.num_classes, width=m.get("width", 16), dtype=dtype)
        from hrnet_jax import models  # the HRNet family
        extra = {k: v for k, v in m.items() if k not in ("name", "dtype", "width")}
        return models.create(m.name, num_classes=self.t.num_classes, dtype=dtype, **extra)

    # -- data --------------------------------------------------------------------------------------------
    def _local_batch(self, process_count: int) -> int:
        if self.config.batch_size % process_count:
            raise ValueError(f"batch_size {self.config.batch_size} is not divisible by {process_count} processes")
        return self.config.batch_size // process_count

    def train_dataset(self, process_index: int, process_count: int):
        src = SyntheticShapes(self.t.train_examples, self.t.num_classes, self.t.image_size, seed=self.config.seed)
        ds = grain.MapDataset.source(src).shuffle(seed=self.config.seed).repeat()
        return ds[process_index::process_count].batch(self._local_batch(process_count), drop_remainder=True)

    def eval_dataset(self, process_index: int, process_count: int):
        src = SyntheticShapes(self.t.eval_examples, self.t.num_classes, self.t.image_size,
                              seed=self.config.seed + 1_000_003)
        gb = self.config.batch_size
        ds = grain.MapDataset.source(Padded(src, math.ceil(len(src) / gb) * gb))
        return ds[process_index::process_count].batch(self._local_batch(process_count))

    # -- device-side pieces ------------------------------------------------------------------------------
    def loss(self, preds: jax.Array, batch: Mapping[str, jax.Array]):
        labels = batch["label"]
        onehot = jax.nn.one_hot(labels, preds.shape[-1])
        ls = self.t.label_smoothing
        if ls:
            onehot = optax.smooth_labels(onehot, ls)
        loss = jnp.mean(optax.softmax_cross_entropy(preds, onehot))
        acc = jnp.mean((jnp.argmax(preds, -1) == labels).astype(jnp.float32))
        return loss, {"accuracy": acc}

    def predict(self, preds: jax.Array, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        _, topk = jax.lax.top_k(preds, min(5, preds.shape[-1]))
        return {"topk": topk}

    def evaluator(self) -> TopKEvaluator:
        return TopKEvaluator()
