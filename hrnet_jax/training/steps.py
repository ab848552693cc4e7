"""The train state and the pure train / eval step functions shared by every task.

Both steps are plain functions of (state, batch); :mod:`hrnet_jax.train` compiles them once with ``jax.jit``
and explicit shardings. BatchNorm statistics are computed over the global batch because the batch is one
sharded array under ``jit`` (no pmap, no axis_name).
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
    rng: jax.Array  # uint32[2]: raw PRNG key, folded with the step for per-step randomness (dropout...)


def init_state(model, tx: optax.GradientTransformation, sample_image: jax.Array, seed: int) -> TrainState:
    """Builds the initial state (call under ``jax.jit`` with ``out_shardings`` to initialise sharded)."""
    root = jax.random.PRNGKey(seed)
    init_rng, state_rng = jax.random.split(root)
    variables = model.init({"params": init_rng, "dropout": init_rng}, sample_image, train=False)
    params = variables["params"]
    batch_stats = variables.get("batch_stats", {})
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                      opt_state=tx.init(params), rng=state_rng)


def train_step(state: TrainState, batch: dict, *, model, loss_fn: Callable, tx: optax.GradientTransformation,
               lr_fn: Callable, accum_steps: int = 1) -> tuple[TrainState, dict]:
    """One optimizer step. Returns the new state and scalar metrics (``loss``, ``lr``, ``grad_norm``, ``param_norm`` of the
    updated params, task aux)."""
    step_rng = jax.random.fold_in(state.rng, state.step)

    def objective(params):
        preds, updates = model.apply({"params": params, "batch_stats": state.batch_stats}, batch["image"],
                                     train=True, mutable=["batch_stats"], rngs={"dropout": step_rng})
        loss, aux = loss_fn(preds, batch)
        return loss, (aux, updates.get("batch_stats", state.batch_stats))

    (loss, (aux, batch_stats)), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss, "lr": lr_fn(state.step // accum_steps), "grad_norm": optax.tree.norm(grads),
               "param_norm": optax.tree.norm(params),
               **{k: jnp.asarray(v, jnp.float32) for k, v in aux.items()}}
    new = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state)
    return new, metrics


def default_forward(apply_fn: Callable, variables: dict, batch: dict):
    return apply_fn(variables, batch["image"], train=False)


def eval_step(state: TrainState, batch: dict, *, model, task) -> dict:
    """Forward (``task.eval_forward`` if the task has one, e.g. flip test) then ``task.predict`` on device."""
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    forward = getattr(task, "eval_forward", None) or default_forward
    preds = forward(model.apply, variables, batch)
    predict = getattr(task, "predict", None)
    return predict(preds, batch) if predict is not None else {"preds": preds}
