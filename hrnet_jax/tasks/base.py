"""The contract between a task and the generic training loop (:mod:`hrnet_jax.train`).

A task is one folder under ``hrnet_jax/tasks/`` (targets, loss, decoding, metrics) whose task class derives
from :class:`Task`. The loop calls exactly the members of :class:`TaskProtocol` and never reads a task's batch
keys; everything below has a default in :class:`Task` except ``build_model``, ``train_dataset`` and ``loss``.

Host side
  ``build_model()``                       a Flax Linen module (or anything with Linen's ``init`` / ``apply``).
  ``train_dataset(pi, pc)``               a grain dataset of this process's batches (dicts of numpy arrays,
                                          per-process batch ``batch_size // pc``); must not run out.
  ``evals()``                             ``{name: Eval}``: each named evaluation's dataset, cadence, forward
                                          and host evaluator (default: one :class:`Eval` per ``config.evals``).
  ``example_batch()``                     one host batch (numpy or ``jax.ShapeDtypeStruct``) to initialise the
                                          model from (default: the first train batch).
  ``param_groups(params)``                a pytree of group labels like ``params`` (or None: one group); the
                                          optimizer applies ``config.optimizer.groups[label]`` to each group.
  ``data_stats()``                        index-time counters (annotations dropped, ...), logged ``data/<k>``.
  ``next_command(workdir)``               what to run on the finished run (printed in the closing line).

Device side (pure, traced inside the loop's ``jax.jit``)
  ``preprocess(batch, rng, *, train)``    uint8 → float, normalisation, batch-level augmentation.
  ``forward(apply_fn, variables, batch, *, train, rngs)``
                                          the model call(s); ``apply_fn(variables, *args, train=..., rngs=...)``
                                          returns the model output (BatchNorm updates are collected by the loop).
  ``loss(preds, batch) -> (loss, aux)``   scalar loss and a dict of scalar diagnostics.
  ``metrics(preds, batch)``               ``{name: metric state}`` (:mod:`hrnet_jax.training.metrics`): sums and
                                          counts that the loop merges over batches; reduction over devices and
                                          processes comes from the global arrays under ``jit``.
  ``predict(preds, batch)``               per-example arrays (leading dim = batch) for a host evaluator, or None.

Batches may carry a bool ``"valid"`` (False on eval padding rows) and data-layer counters
(:data:`hrnet_jax.data.pipeline.STATS_PREFIX`); both are the data layer's conventions, not task keys.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np

from hrnet_jax.data.ops.image import IMAGENET_MEAN, IMAGENET_STD
from hrnet_jax.training.config import ConfigError
from hrnet_jax.training.defaults import merge

Batch = Mapping[str, Any]


@runtime_checkable
class Evaluator(Protocol):
    """A host-side evaluator (COCO AP and the like): fed every eval batch, then asked for its result."""

    def add(self, outputs: Mapping[str, np.ndarray], batch: Batch) -> None:
        """Accumulates one batch of host numpy outputs of ``predict`` and the batch's host fields (valid rows)."""

    def result(self) -> dict[str, float]:
        """The metrics of everything added so far, e.g. ``{"AP": 0.71, ...}``."""


def with_defaults(defaults: Mapping[str, Any], given: Mapping[str, Any], task: str) -> dict:
    """A task's ``config.task`` fields: ``defaults`` (the one place a task writes them) updated by ``given``;
    a field the task does not have is an error naming the valid ones."""
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ConfigError(f"unknown {task} task field(s) {unknown}; valid: {sorted(defaults)}")
    return merge(defaults, given)


def local_batch(global_batch: int, process_count: int) -> int:
    """This process's share of a global batch."""
    if global_batch % process_count:
        raise ConfigError(f"batch size {global_batch} is not divisible by {process_count} processes")
    return global_batch // process_count


@dataclasses.dataclass
class Eval:
    """One named evaluation: its data, cadence and (optionally) its own forward pass and host evaluator."""
    name: str
    dataset: Callable[[int, int], Any]            # (process_index, process_count) -> finite grain dataset
    every: int = 0                                # evaluate every N train steps; 0 = only when asked
    steps: int = 0                                # batches per pass; 0 = the whole dataset
    forward: Callable | None = None               # replaces task.forward for this eval (e.g. multi-scale)
    evaluator: Callable[[], Evaluator] | None = None   # a fresh host evaluator per pass


@runtime_checkable
class TaskProtocol(Protocol):
    """What :func:`hrnet_jax.train.train` and :mod:`hrnet_jax.training.evaluate` call: nothing else."""
    name: str
    config: Any

    def build_model(self) -> Any: ...

    def train_dataset(self, process_index: int, process_count: int) -> Any: ...

    def evals(self) -> dict[str, Eval]: ...

    def example_batch(self) -> Batch: ...

    def param_groups(self, params: Any) -> Any: ...

    def data_stats(self) -> dict[str, float]: ...

    def next_command(self, workdir: str) -> str: ...

    def preprocess(self, batch: Batch, rng: jax.Array | None, *, train: bool) -> Batch: ...

    def forward(self, apply_fn: Callable, variables: Any, batch: Batch, *, train: bool,
                rngs: dict | None) -> Any: ...

    def loss(self, preds: Any, batch: Batch) -> tuple[jax.Array, dict[str, jax.Array]]: ...

    def metrics(self, preds: Any, batch: Batch) -> dict[str, Any]: ...

    def predict(self, preds: Any, batch: Batch) -> dict[str, jax.Array] | None: ...


class Task:
    """Defaults for every member of :class:`TaskProtocol`; subclasses override what their system needs.

    ``config`` is the whole experiment config (``config.task`` holds the task's own fields). The defaults
    assume an ``"image"`` batch field of uint8 (or float) NHWC pixels; a task whose input is different
    overrides ``preprocess`` / ``forward``.
    """
    name = "task"
    #: per-channel pixel mean / std (0-255 units) applied by the default ``preprocess``
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD

    def __init__(self, config: Any):
        self.config = config

    # ---- host side ---------------------------------------------------------------------------------------
    def build_model(self) -> Any:
        raise NotImplementedError(f"{type(self).__name__}.build_model")

    def train_dataset(self, process_index: int, process_count: int) -> Any:
        raise NotImplementedError(f"{type(self).__name__}.train_dataset")

    def eval_dataset(self, name: str, process_index: int, process_count: int) -> Any:
        raise NotImplementedError(f"{type(self).__name__} declares eval {name!r} but has no eval_dataset")

    def evaluator(self, name: str) -> Evaluator | None:
        """A fresh host evaluator for eval ``name`` (None: device-side ``metrics`` only)."""
        return None

    def evals(self) -> dict[str, Eval]:
        out = {}
        for name, ec in (self.config.get("evals") or {}).items():
            evaluator = (functools.partial(self.evaluator, name)
                         if type(self).evaluator is not Task.evaluator else None)
            out[name] = Eval(name, functools.partial(self.eval_dataset, name), every=int(ec.get("every", 0)),
                             steps=int(ec.get("steps", 0)), evaluator=evaluator)
        return out

    def example_batch(self) -> Batch:
        ds = self.train_dataset(0, 1)
        return ds[0] if hasattr(ds, "__getitem__") else next(iter(ds))

    def param_groups(self, params: Any) -> Any:
        return None

    def data_stats(self) -> dict[str, float]:
        return {}

    def next_command(self, workdir: str) -> str:
        return ""

    # ---- device side -------------------------------------------------------------------------------------
    def normalize(self, images: jax.Array) -> jax.Array:
        """uint8 (or already float) pixels → float32 ``(x - mean) / std``; float input is taken as normalised."""
        if images.dtype != jnp.uint8:
            return images.astype(jnp.float32)
        mean = jnp.asarray(self.mean, jnp.float32)
        inv_std = 1.0 / jnp.asarray(self.std, jnp.float32)
        return (images.astype(jnp.float32) - mean) * inv_std

    def preprocess(self, batch: Batch, rng: jax.Array | None, *, train: bool) -> Batch:
        return {**batch, "image": self.normalize(batch["image"])} if "image" in batch else dict(batch)

    def forward(self, apply_fn: Callable, variables: Any, batch: Batch, *, train: bool, rngs: dict | None) -> Any:
        return apply_fn(variables, batch["image"], train=train, rngs=rngs)

    def loss(self, preds: Any, batch: Batch) -> tuple[jax.Array, dict[str, jax.Array]]:
        raise NotImplementedError(f"{type(self).__name__}.loss")

    def metrics(self, preds: Any, batch: Batch) -> dict[str, Any]:
        return {}

    def predict(self, preds: Any, batch: Batch) -> dict[str, jax.Array] | None:
        return None
