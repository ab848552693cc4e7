"""Segmentation metrics from a confusion matrix accumulated on device (reference 9.3).

:class:`ClassConfusion` is :class:`hrnet_jax.training.metrics.ConfusionMatrix` with the class names attached: the
loop merges it over the whole split (the batch is global, so over devices and processes too) and its
``compute()`` gives ``mIoU``, ``pixel_acc``, ``mean_acc`` and ``IoU/<class name>`` (all in %).
IoU per class is ``TP / (GT + Pred - TP)``; the mean is over the classes that occur in the labels or the
predictions, which is the reference's mean over all 19 classes whenever every class occurs in the ground truth
(as on Cityscapes val).
"""
from __future__ import annotations

from typing import Any, Sequence

import flax
import jax
import numpy as np

from hrnet_jax.training.metrics import ConfusionMatrix


def scores_from_matrix(matrix: np.ndarray, names: Sequence[str] = ()) -> dict[str, Any]:
    m = np.asarray(matrix, np.float64)
    tp = np.diag(m)
    gt, pred = m.sum(1), m.sum(0)
    union = gt + pred - tp
    present = union > 0
    iou = np.where(present, tp / np.maximum(union, 1), np.nan)
    acc = np.where(gt > 0, tp / np.maximum(gt, 1), np.nan)
    out: dict[str, Any] = {
        "mIoU": 100.0 * float(np.nanmean(iou)) if present.any() else 0.0,
        "pixel_acc": 100.0 * float(tp.sum() / max(m.sum(), 1.0)),
        "mean_acc": 100.0 * float(np.nanmean(acc)) if (gt > 0).any() else 0.0,
    }
    names = list(names) or [str(i) for i in range(len(tp))]
    for name, v in zip(names, iou):
        if not np.isnan(v):
            out[f"IoU/{name}"] = 100.0 * float(v)
    return out


@flax.struct.dataclass
class ClassConfusion(ConfusionMatrix):
    names: tuple = flax.struct.field(pytree_node=False, default=())

    @classmethod
    def of(cls, pred: jax.Array, label: jax.Array, num_classes: int, mask: jax.Array | None = None,
           names: Sequence[str] = ()) -> "ClassConfusion":
        base = ConfusionMatrix.of(pred, label, num_classes, mask)
        return cls(matrix=base.matrix, names=tuple(names))

    def merge(self, other: "ClassConfusion") -> "ClassConfusion":
        return ClassConfusion(matrix=self.matrix + other.matrix, names=self.names)

    def compute(self) -> dict[str, Any]:
        return scores_from_matrix(np.asarray(self.matrix), self.names)
