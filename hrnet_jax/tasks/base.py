"""The contract between a task and the generic training loop (`hrnet_jax.train`).

The loop knows nothing task-specific. A task is built from the experiment's config by the family module's
``build_task(config)`` and supplies:

* ``build_model()``: a Flax Linen module, called as ``model.apply(variables, batch["image"], train=bool,
  mutable=...)`` with images NHWC float32 (already normalised).
* ``train_dataset(process_index, process_count)`` / ``eval_dataset(...)``: grain datasets (``grain.MapDataset``
  or ``grain.IterDataset``) yielding dicts of numpy arrays, already batched to the *per-process* batch size
  (``config.batch_size // process_count``). The train dataset must not run out (``.shuffle(seed).repeat()``);
  its iterator state is checkpointed. The eval dataset is finite, gives every process the same number of
  batches, and may carry a boolean ``"valid"`` mask for padding rows. Numeric arrays go to the device
  (sharded over ``data``); strings stay on the host.
* ``loss(preds, batch) -> (scalar_loss, aux)``: pure, jit-able; ``aux`` is a dict of scalar arrays that are
  averaged over the steps of a log window (``metrics.jsonl`` keys next to ``loss``, ``lr``, ``img_per_s``).
* ``eval_forward(apply_fn, variables, batch)`` (optional): the eval forward pass inside the jitted eval step,
  e.g. a second pass on flipped images; default ``apply_fn(variables, batch["image"], train=False)``.
* ``predict(preds, batch) -> dict`` (optional): pure, jit-able post-processing that runs on device inside the
  eval step (e.g. heatmap decoding, flip averaging). Its outputs are gathered to the host (from every process).
* ``evaluator()``: a fresh :class:`Evaluator` per evaluation pass; the loop feeds it host numpy outputs of
  ``predict`` plus the batch's non-image fields (rows with ``valid == False`` removed) and logs ``result()`` as
  ``eval/<name>``. COCO AP and mIoU need global state, so this half runs on the host.
* ``data_stats() -> dict`` (optional): counters such as skipped examples, logged as ``data/<name>``.
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
