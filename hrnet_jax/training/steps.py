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
    # {"params", "batch_stats"}: exponential moving average of the weights (optimizer.ema_decay > 0), else None
    # (a leafless subtree: checkpoints of runs without EMA are unchanged)
    ema: Any = None

    @property
    def variables(self) -> dict:
        return {"params": self.params, "batch_stats": self.batch_stats}

    @property
    def ema_variables(self) -> dict | None:
        return None if self.ema is None else dict(self.ema)


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


def init_state(task, model, tx: optax.GradientTransformation, example_batch: dict, seed: int,
               ema: bool = False) -> TrainState:
    """Builds the initial state (call under ``jax.jit`` with ``out_shardings`` to initialise sharded);
    ``ema``: start an EMA of the weights (a copy of the initial ones)."""
    init_rng, state_rng = jax.random.split(jax.random.PRNGKey(seed))
    variables = init_variables(task, model, example_batch, init_rng)
    params = variables["params"]
    batch_stats = variables.get("batch_stats", {})
    ema_vars = jax.tree.map(jnp.copy, {"params": params, "batch_stats": batch_stats}) if ema else None
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                      opt_state=tx.init(params), rng=state_rng, ema=ema_vars)


def ema_update(ema: dict, variables: dict, decay: float, step: jax.Array) -> dict:
    """``ema * d + variables * (1 - d)`` with ``d = min(decay, (1 + step) / (10 + step))`` (a warm-up: the
    average does not drag the random initialisation along for the first thousands of steps). Float leaves
    only; averaged in each leaf's own (fp32) dtype."""
    n = step.astype(jnp.float32)
    d = jnp.minimum(jnp.float32(decay), (1.0 + n) / (10.0 + n))
    return jax.tree.map(lambda e, v: (e * d + v.astype(e.dtype) * (1.0 - d)).astype(e.dtype)
                        if jnp.issubdtype(e.dtype, jnp.floating) else v, ema, variables)


def train_step(state: TrainState, batch: dict, *, task, model, tx: optax.GradientTransformation,
               lr_fn: Callable, accum_steps: int = 1, ema_decay: float = 0.0) -> tuple[TrainState, dict]:
    """One optimizer step. Returns the new state and scalar metrics (``loss``, ``lr``, ``grad_norm``,
    ``param_norm`` of the updated params, and the task's aux). With a state EMA, it is updated by
    :func:`ema_update` with ``ema_decay``."""
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
    ema = state.ema
    if ema is not None:
        ema = ema_update(ema, {"params": params, "batch_stats": batch_stats}, ema_decay, state.step)
    new = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state, ema=ema)
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
