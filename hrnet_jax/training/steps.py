"""The train state and the pure train / eval step functions shared by every task.

Both steps are plain functions of (state, batch); :mod:`hrnet_jax.train` compiles them once with ``jax.jit``
and explicit shardings. BatchNorm statistics are computed over the global batch because the batch is one
sharded array under ``jit`` (no pmap, no axis_name). The task supplies every batch-specific piece
(``preprocess``, ``forward``, ``loss``, ``metrics``, ``predict``: :mod:`hrnet_jax.tasks.base`); nothing here
reads a batch key.
"""
from __future__ import annotations

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax



@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: optimizer steps done (loop iterations)
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array  # uint32[2]: raw PRNG key, folded with the step for per-step randomness (dropout, mixup...)

    @property
    def variables(self) -> dict:
        return {"params": self.params, "batch_stats": self.batch_stats}


def init_variables(task, model, example_batch: dict, rng: jax.Array) -> dict:
    """``model.init`` through the task's own ``preprocess`` + ``forward`` (so extra inputs such as boxes reach
    the model at initialisation exactly as in training)."""
    box = {}

    def init_apply(_variables, *args, **kwargs):
        kwargs.pop("rngs", None)
        out, box["variables"] = model.init_with_output({"params": rng, "dropout": rng}, *args, **kwargs)
        return out

    batch = task.preprocess(example_batch, rng, train=False)
    task.forward(init_apply, None, batch, train=False, rngs=None)
    if "variables" not in box:
        raise RuntimeError(f"{type(task).__name__}.forward never called apply_fn")
    return dict(box["variables"])


def init_state(task, model, tx: optax.GradientTransformation, example_batch: dict, seed: int) -> TrainState:
    """Builds the initial state (call under ``jax.jit`` with ``out_shardings`` to initialise sharded)."""
    init_rng, state_rng = jax.random.split(jax.random.PRNGKey(seed))
    variables = init_variables(task, model, example_batch, init_rng)
    params = variables["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=variables.get("batch_stats", {}),
                      opt_state=tx.init(params), rng=state_rng)


def train_step(state: TrainState, batch: dict, *, task, model, tx: optax.GradientTransformation,
               lr_fn: Callable, accum_steps: int = 1) -> tuple[TrainState, dict]:
    """One optimizer step. Returns the new state and scalar metrics (``loss``, ``lr``, ``grad_norm``,
    ``param_norm`` of the updated params, and the task's aux)."""
    step_rng = jax.random.fold_in(state.rng, state.step)
    pre_rng, fwd_rng = jax.random.split(step_rng)
    batch = task.preprocess(batch, pre_rng, train=True)

    def objective(params):
        box = {}

        def apply_fn(variables, *args, **kwargs):  # collects BatchNorm updates of the (last) training call
            out, updates = model.apply(variables, *args, mutable=["batch_stats"], **kwargs)
            box["batch_stats"] = updates.get("batch_stats", variables.get("batch_stats", {}))
            return out

        preds = task.forward(apply_fn, {"params": params, "batch_stats": state.batch_stats}, batch, train=True,
                             rngs={"dropout": fwd_rng})
        loss, aux = task.loss(preds, batch)
        return loss, (aux, box.get("batch_stats", state.batch_stats))

    (loss, (aux, batch_stats)), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss, "lr": lr_fn(state.step // accum_steps), "grad_norm": optax.tree.norm(grads),
               "param_norm": optax.tree.norm(params),
               **{k: jnp.asarray(v, jnp.float32) for k, v in aux.items()}}
    new = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state)
    return new, metrics


def eval_step(variables: dict, batch: dict, *, task, model, forward: Callable | None = None) -> dict:
    """Inference forward (``forward`` or ``task.forward``), then the task's device metrics and host outputs.

    Returns ``{"metrics": {name: state}, "outputs": per-example arrays or {}}`` plus the batch's ``"valid"``
    padding mask (the data layer's convention) when it has one.
    """
    batch = task.preprocess(batch, None, train=False)
    fwd = forward or task.forward
    preds = fwd(model.apply, variables, batch, train=False, rngs=None)
    outputs = task.predict(preds, batch)
    out = {"metrics": task.metrics(preds, batch), "outputs": outputs if outputs is not None else {}}
    if "valid" in batch:
        out["valid"] = batch["valid"]
    return out
