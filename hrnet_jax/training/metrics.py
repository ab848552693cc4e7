"""Device-side evaluation metrics as mergeable states: sums and counts, never per-example arrays.

A task's ``metrics(preds, batch)`` returns ``{name: state}``. Each state is a pytree of arrays built inside the
jitted eval step from the *global* batch (the batch is one array sharded over devices and processes, so a sum
over it is already the sum over every device and process). The loop adds the states of successive batches with
``merge`` on device and calls ``compute()`` once on the host at the end of the pass. Padding rows are left out
through the ``mask`` argument (the batch's ``"valid"``).

Written here rather than taken from a library: clu's metrics pull in TensorFlow-era dependencies and
``flax.nnx.metrics`` are stateful objects; these are ~80 lines of pure pytrees.
"""
from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np


def _mask(mask, shape) -> jax.Array:
    if mask is None:
        return jnp.ones(shape[:1], jnp.float32)
    return jnp.asarray(mask).astype(jnp.float32)


@flax.struct.dataclass
class Average:
    """Mean of per-example values: ``total / count``."""
    total: jax.Array
    count: jax.Array

    @classmethod
    def of(cls, values: jax.Array, mask: jax.Array | None = None) -> "Average":
        values = jnp.asarray(values, jnp.float32)
        m = _mask(mask, values.shape).reshape((-1,) + (1,) * (values.ndim - 1))
        m = jnp.broadcast_to(m, values.shape)
        return cls(total=jnp.sum(values * m), count=jnp.sum(m))

    def merge(self, other: "Average") -> "Average":
        return Average(self.total + other.total, self.count + other.count)

    def compute(self) -> float:
        return float(np.asarray(self.total) / max(float(np.asarray(self.count)), 1e-12))


@flax.struct.dataclass
class Accuracy(Average):
    """Top-k accuracy in percent from logits (B, C) and integer labels (B,)."""

    @classmethod
    def from_logits(cls, logits: jax.Array, labels: jax.Array, k: int = 1,
                    mask: jax.Array | None = None) -> "Accuracy":
        k = min(int(k), logits.shape[-1])
        _, top = jax.lax.top_k(logits, k)
        hit = jnp.any(top == labels[:, None].astype(top.dtype), axis=-1).astype(jnp.float32)
        m = _mask(mask, hit.shape)
        return cls(total=jnp.sum(hit * m), count=jnp.sum(m))

    def merge(self, other: "Accuracy") -> "Accuracy":
        return Accuracy(self.total + other.total, self.count + other.count)

    def compute(self) -> float:
        return 100.0 * super().compute()


@flax.struct.dataclass
class ConfusionMatrix:
    """``matrix[t, p]``: pixels (or examples) of true class t predicted as p; labels outside [0, C) ignored.

    ``compute()`` gives mean IoU (%), pixel accuracy (%) and per-class IoU; classes absent from both the labels
    and the predictions are left out of the mean (the usual mIoU definition).
    """
    matrix: jax.Array

    @classmethod
    def of(cls, pred: jax.Array, label: jax.Array, num_classes: int,
           mask: jax.Array | None = None) -> "ConfusionMatrix":
        pred = pred.reshape(pred.shape[0], -1).astype(jnp.int32)
        label = label.reshape(label.shape[0], -1).astype(jnp.int32)
        ok = (label >= 0) & (label < num_classes)
        if mask is not None:
            ok &= jnp.asarray(mask, bool)[:, None]
        idx = jnp.where(ok, label * num_classes + jnp.clip(pred, 0, num_classes - 1), num_classes * num_classes)
        counts = jnp.bincount(idx.reshape(-1), length=num_classes * num_classes + 1)[:-1]
        return cls(matrix=counts.reshape(num_classes, num_classes).astype(jnp.int32))

    def merge(self, other: "ConfusionMatrix") -> "ConfusionMatrix":
        return ConfusionMatrix(self.matrix + other.matrix)

    def compute(self) -> dict[str, Any]:
        m = np.asarray(self.matrix, np.float64)
        tp = np.diag(m)
        union = m.sum(0) + m.sum(1) - tp
        iou = np.where(union > 0, tp / np.maximum(union, 1), np.nan)
        return {"mIoU": 100.0 * float(np.nanmean(iou)) if np.any(union > 0) else 0.0,
                "pixel_acc": 100.0 * float(tp.sum() / max(m.sum(), 1)),
                "IoU_per_class": [None if np.isnan(v) else 100.0 * float(v) for v in iou]}


def merge(a: dict | None, b: dict) -> dict:
    """Merges two ``{name: state}`` dicts (``a`` may be None: the first batch)."""
    if a is None:
        return b
    return {k: a[k].merge(b[k]) for k in b}


def compute(states: dict) -> dict[str, float]:
    """Host values of merged states; a state computing a dict contributes its scalar entries by name."""
    out: dict[str, float] = {}
    for name, state in jax.device_get(states).items():
        v = state.compute()
        if isinstance(v, dict):
            out.update({k: float(x) for k, x in v.items() if isinstance(x, (int, float))})
        else:
            out[name] = float(v)
    return out
