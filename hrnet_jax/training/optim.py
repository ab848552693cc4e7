"""Optax recipes from the config's ``optimizer`` group: schedules, SGD/Adam, weight decay, clipping, accumulation.

* pose (Simple Baselines / HRNet): ``name="adam", schedule="step", boundaries=(170/210, 200/210)``;
* segmentation: ``name="sgd", weight_decay=5e-4, weight_decay_style="l2", schedule="poly", poly_power=0.9``;
* classification: ``name="sgd", nesterov=True, schedule="cosine"`` (or ``"step"``), ``decay_bn_bias=False``.
"""
from __future__ import annotations

from typing import Any

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


def _transform(o: Config, lr: optax.Schedule, wd: float, mask) -> optax.GradientTransformation:
    """Weight decay (l2 or decoupled), SGD momentum / Adam moments, the learning rate."""
    parts = []
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
    return optax.chain(*parts)


GROUP_FIELDS = {"lr_mult": 1.0, "weight_decay": -1.0, "frozen": False}  # weight_decay < 0: the optimizer's


def make_optimizer(o: Config, total_steps: int, labels: Any = None
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optimizer of the ``optimizer`` config group, and its learning-rate schedule.

    ``labels`` (a task's ``param_groups(params)``: a pytree of strings shaped like the params) splits the
    parameters into groups; ``o.groups[label]`` may set ``lr_mult``,
    ``weight_decay`` (< 0: the optimizer's) and ``frozen`` (no update at all). Gradient clipping stays global.
    """
    lr = make_schedule(o, total_steps)
    mask = None if o.decay_bn_bias else _decay_mask
    settings = {k: dict(v) for k, v in (o.get("groups") or {}).items()}
    for name, g in settings.items():
        bad = set(g) - set(GROUP_FIELDS)
        if bad:
            raise ConfigError(f"optimizer.groups.{name}: unknown field(s) {sorted(bad)}; valid: {sorted(GROUP_FIELDS)}")
    if labels is None:
        if settings:
            raise ConfigError(f"optimizer.groups {sorted(settings)} set, but the task defines no parameter groups")
        main = _transform(o, lr, o.weight_decay, mask)
    else:
        names = sorted(set(jax.tree.leaves(labels)))
        unknown = sorted(set(settings) - set(names))
        if unknown:
            raise ConfigError(f"optimizer.groups {unknown} are not parameter groups of this task; its groups: {names}")
        transforms = {}
        for name in names:
            g = {**GROUP_FIELDS, **settings.get(name, {})}
            if g["frozen"]:
                transforms[name] = optax.set_to_zero()
                continue
            mult = float(g["lr_mult"])
            group_lr = lr if mult == 1.0 else (lambda step, m=mult: lr(step) * m)
            wd = o.weight_decay if g["weight_decay"] < 0 else g["weight_decay"]
            transforms[name] = _transform(o, group_lr, wd, mask)
        main = optax.multi_transform(transforms, labels)
    tx = optax.chain(optax.clip_by_global_norm(o.grad_clip_norm), main) if o.grad_clip_norm > 0 else main
    if o.accum_steps > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=o.accum_steps)
    return tx, lr
