"""Optax recipes from the config's ``optimizer`` group: schedules, SGD/Adam, weight decay, clipping, accumulation.

* pose (Simple Baselines / HRNet): ``name="adam", schedule="step", boundaries=(170/210, 200/210)``;
* segmentation: ``name="sgd", weight_decay=5e-4, weight_decay_style="l2", schedule="poly", poly_power=0.9``;
* classification: ``name="sgd", nesterov=True, schedule="cosine"`` (or ``"step"``), ``decay_bn_bias=False``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from hrnet_jax.training.config import Config, ConfigError


def make_schedule(o: Config, total_steps: int) -> optax.Schedule:
    """Learning rate as a function of the optimizer update count."""
    total = max(int(total_steps) // max(o.accum_steps, 1), 1)
    warm = int(o.warmup_steps)
    steps = max(total - warm, 1)
    if o.schedule == "constant":
        main = optax.constant_schedule(o.lr)
    elif o.schedule == "step":
        bounds = [int(round(b * total)) if b <= 1 else int(b) for b in o.boundaries]
        main = optax.piecewise_constant_schedule(o.lr, {max(b - warm, 0): o.decay_factor for b in bounds})
    elif o.schedule == "cosine":
        main = optax.cosine_decay_schedule(o.lr, steps, alpha=o.end_lr / o.lr if o.lr else 0.0)
    elif o.schedule == "poly":
        main = optax.polynomial_schedule(o.lr, o.end_lr, o.poly_power, steps)
    else:
        raise ConfigError(f"unknown optimizer.schedule {o.schedule!r}; valid: constant, step, cosine, poly")
    if warm <= 0:
        return main
    return optax.join_schedules([optax.linear_schedule(o.warmup_init_lr, o.lr, warm), main], [warm])


def _decay_mask(params):
    """True for tensors that get weight decay: everything but 1-D params (BN scale/bias, biases)."""
    return jax.tree.map(lambda p: jnp.ndim(p) > 1, params)


def make_optimizer(o: Config, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    lr = make_schedule(o, total_steps)
    mask = None if o.decay_bn_bias else _decay_mask
    parts = []
    if o.grad_clip_norm > 0:
        parts.append(optax.clip_by_global_norm(o.grad_clip_norm))
    wd = o.weight_decay
    if wd and o.weight_decay_style == "l2":  # PyTorch: grad += wd * param, before momentum / Adam moments
        parts.append(optax.add_decayed_weights(wd, mask))
    elif wd and o.weight_decay_style != "decoupled":
        raise ConfigError(f"unknown optimizer.weight_decay_style {o.weight_decay_style!r}; valid: l2, decoupled")
    if o.name == "sgd":
        parts.append(optax.trace(decay=o.momentum, nesterov=o.nesterov) if o.momentum else optax.identity())
    elif o.name in ("adam", "adamw"):
        parts.append(optax.scale_by_adam(b1=o.b1, b2=o.b2, eps=o.eps))
    else:
        raise ConfigError(f"unknown optimizer.name {o.name!r}; valid: sgd, adam, adamw")
    if wd and o.weight_decay_style == "decoupled":  # AdamW: lr * wd * param, after the moments
        parts.append(optax.add_decayed_weights(wd, mask))
    parts.append(optax.scale_by_learning_rate(lr))
    tx = optax.chain(*parts)
    if o.accum_steps > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=o.accum_steps)
    return tx, lr
