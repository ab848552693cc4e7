"""The contract between a task and the generic training loop (`hrnet_jax.train`).

The loop knows nothing task-specific. A task supplies:

* ``build_model()``: a Flax Linen module, called as ``model.apply(variables, batch["image"], train=bool,
  mutable=...)`` with images NHWC float32 (already normalised).
* ``train_dataset(process_index, process_count)`` / ``eval_dataset(...)``: grain datasets (``grain.MapDataset``
  or ``grain.IterDataset``) yielding dicts of numpy arrays, already batched to the *per-process* batch size.
  Every batch has ``"image"``; eval batches may carry a boolean ``"valid"`` mask for padding.
* ``loss(preds, batch) -> (scalar_loss, aux)``: pure, jit-able; ``aux`` is a dict of scalar arrays that are
  averaged over steps for logging.
* ``predict(preds, batch) -> dict`` (optional): pure, jit-able post-processing that runs on device inside the
  eval step (e.g. heatmap decoding, flip averaging). Its outputs are gathered to the host.
* ``evaluator()``: a fresh :class:`Evaluator`; the loop feeds it host numpy outputs of ``predict`` (plus the
  batch's non-image fields) and asks it for ``result()`` at the end of an evaluation pass. COCO AP and mIoU
  need global state, so this half runs on the host.
"""
from __future__ import annotations

from typing import Any, Mapping, Protocol, runtime_checkable

import jax

Batch = Mapping[str, Any]


@runtime_checkable
class Evaluator(Protocol):
    def add(self, outputs: Mapping[str, Any], batch: Batch) -> None:
        """Accumulates one batch of host-side (numpy) outputs."""

    def result(self) -> dict[str, float]:
        """Returns the metrics of everything added so far, e.g. {"AP": 0.71, ...}."""


@runtime_checkable
class Task(Protocol):
    name: str

    def build_model(self) -> Any: ...

    def train_dataset(self, process_index: int, process_count: int) -> Any: ...

    def eval_dataset(self, process_index: int, process_count: int) -> Any: ...

    def loss(self, preds: Any, batch: Batch) -> tuple[jax.Array, dict[str, jax.Array]]: ...

    def predict(self, preds: Any, batch: Batch) -> dict[str, jax.Array]: ...

    def evaluator(self) -> Evaluator: ...
