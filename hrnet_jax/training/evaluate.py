"""Evaluation of a named :class:`~hrnet_jax.tasks.base.Eval`: used by the training loop and by
``hrnet_jax.predict --evaluate`` alike.

Per batch, inside one jitted step: the task's ``preprocess`` and ``forward`` (or the eval's own forward), then
its device ``metrics`` (merged on device over the pass) and ``predict`` outputs (per-example; gathered from every
process, padding rows dropped by the batch's ``valid``, fed to the eval's host evaluator). Result: the computed
metrics merged with the evaluator's, plus the data-layer counters of the batches read.
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from hrnet_jax.training import metrics as metrics_lib
from hrnet_jax.training import sharding as shd
from hrnet_jax.training import steps
from hrnet_jax.training.prefetch import DevicePrefetch, as_iter_dataset

def make_eval_step(task, model, ev, variables_sharding: Any, data_sharding: Any):
    """The compiled eval step of ``ev`` through the inference entry point (:func:`hrnet_jax.inference.prepare`:
    BatchNorm folded inside the step, so each pass uses the variables it is given; XLA convs; the inference
    compiler options); metric states replicated."""
    from hrnet_jax import inference

    def step(variables, batch):
        apply_fn, infer_variables = inference.prepare(model, variables)
        return steps.eval_step(infer_variables, batch, task=task, model=SimpleNamespace(apply=apply_fn),
                               forward=ev.forward)
    return inference.jit(step, in_shardings=(variables_sharding, data_sharding))


def _to_host(tree):
    if jax.process_count() == 1:
        return jax.device_get(tree)
    return multihost_utils.process_allgather(tree, tiled=True)


def run_eval(ev, eval_step, variables, data_sharding, *, max_steps: int | None = None) -> tuple[dict, dict]:
    """One pass over ``ev.dataset``. Returns ``(metrics, data_counts)``: floats keyed by metric name (device
    metrics and the host evaluator's), and the summed data-layer counters of the pass."""
    evaluator = ev.evaluator() if ev.evaluator is not None else None
    ds = as_iter_dataset(ev.dataset(jax.process_index(), jax.process_count()))
    limit = ev.steps if max_steps is None else max_steps
    it = DevicePrefetch(iter(ds), data_sharding, size=2)
    states = None
    for i, batch in enumerate(it):
        if limit and i >= limit:
            break
        out = eval_step(variables, batch)
        states = metrics_lib.merge(states, out["metrics"])
        if evaluator is not None and out["outputs"]:
            host = _to_host({"outputs": out["outputs"], "valid": out.get("valid")})
            outputs = host["outputs"]
            if host["valid"] is not None:
                keep = np.asarray(host["valid"], bool)
                outputs = jax.tree.map(lambda a: np.asarray(a)[keep], outputs)
            evaluator.add(outputs)
    result = metrics_lib.compute(states) if states else {}
    if evaluator is not None:
        result.update({k: float(v) for k, v in evaluator.result().items()})
    return result, it.counts


def evaluate(task, variables: dict, *, names=None, mesh=None, max_steps: int | None = None) -> dict:
    """Runs the task's evals (``names``, default all) on ``variables``; ``{"<eval>/<metric>": value}``.

    The library entry point behind ``python -m hrnet_jax.predict --evaluate``.
    """
    model = task.build_model()
    mesh = mesh or shd.make_mesh(None)
    data_sh, repl = shd.batch_sharding(mesh), shd.replicated(mesh)
    variables = jax.device_put(variables, repl)
    out = {}
    with jax.set_mesh(mesh):
        for name, ev in task.evals().items():
            if names and name not in names:
                continue
            step = make_eval_step(task, model, ev, repl, data_sh)
            res, counts = run_eval(ev, step, variables, data_sh, max_steps=max_steps)
            out.update({f"{name}/{k}": v for k, v in res.items()})
            out.update({f"data/{name}/{k}": float(v) for k, v in counts.items()})
    return out
