"""The generic fields every experiment has, with their defaults; a family config starts from these."""
from __future__ import annotations

from typing import Any, Mapping

from hrnet_jax.training.config import Config

REQUIRED = ("total_steps", "batch_size", "seed", "log_every", "evals", "checkpoint_every")


def default_config(**updates: Any) -> Config:
    """The loop's settings; ``updates`` (nested dicts) are merged in and may add new keys (task, data, ...)."""
    base = dict(
        experiment="",  # filled in by the registry
        family="",  # the experiments module that defines it, e.g. "experiments.pose"
        seed=0,
        total_steps=1000,  # optimizer steps (loop iterations)
        batch_size=32,  # global, over all processes and devices
        log_every=50,
        # named evaluations {name: {every, steps, ...task fields}}; the task's evals() builds them. every: train
        # steps between passes (0 = never; the end of training is not special: set every to total_steps);
        # steps: batches per pass (0 = the whole eval dataset). Metrics are logged as "<name>/<metric>".
        evals=dict(),
        checkpoint_every=1000,
        keep_checkpoints=3,  # most recent N
        best_metric="",  # "<eval>/<metric>", e.g. "val/AP": also keep the best checkpoint by it
        best_mode="max",  # or "min"
        init_from="",  # Orbax checkpoint of {params, batch_stats} used when the workdir has no checkpoint
        init_from_mode="full",  # "full": every variable must match; "matching": take matching keys only
        # where the checkpoint's variables sit in the model's tree: "" = at its root; "backbone" = under
        # params/backbone (a detector whose HRNet is a submodule, initialised from a classification checkpoint)
        init_from_prefix="",
        throttle_s=0.0,
        # a resume whose config differs from the stored one: "refuse" any change but cadence / paths,
        # "schedule" also accepts total_steps / batch_size / optimizer / seed changes (each stated with the lr
        # it gives at the resume step), "all" accepts even state-breaking ones (model, task)
        resume_changes="schedule",
        guards=dict(
            divergence_factor=1e4,  # stop when loss / param norm exceeds this x its running median; 0 = off
            divergence_window=20,  # observations in that median
        ),  # sleep after every step (tests; sharing a machine)
        model=dict(
            name="",  # hrnet_jax.models.create name (or a task-local model)
            dtype="float32",  # compute dtype ("bfloat16" for mixed precision; params stay float32)
            arch=dict(),  # {} = the named model's architecture; else {stem_width, stages} (tasks.model_config)
        ),
        optimizer=dict(
            name="sgd",  # "sgd" | "adam" | "adamw"
            lr=0.1,  # peak learning rate
            momentum=0.9,
            nesterov=False,
            b1=0.9,
            b2=0.999,
            eps=1e-8,
            weight_decay=0.0,
            weight_decay_style="l2",  # "l2": wd*param added to the gradient (PyTorch); "decoupled": AdamW
            decay_bn_bias=True,  # False: no weight decay on 1-D params (BN scale/bias, conv/dense biases)
            schedule="constant",  # "constant" | "step" | "cosine" | "poly"
            boundaries=(),  # "step": decay points; values <= 1 are fractions of total_steps, else steps
            decay_factor=0.1,  # "step": lr multiplied by this at each boundary
            poly_power=0.9,  # "poly": lr * (1 - t/T) ** power
            end_lr=0.0,  # "cosine"/"poly": final lr
            warmup_steps=0,  # linear warmup from warmup_init_lr to lr
            warmup_init_lr=0.0,
            grad_clip_norm=0.0,  # > 0: clip by global norm
            accum_steps=1,  # > 1: optax.MultiSteps gradient accumulation (schedule counts updates)
            # > 0: keep an exponential moving average of params and BN statistics (in the train state,
            # checkpointed); every eval also runs on it, logged as "<eval>_ema/<metric>"
            ema_decay=0.0,
            # per parameter group of the task's param_groups(): {label: {lr_mult, weight_decay, frozen}}
            groups=dict(),
        ),
        sharding=dict(
            fsdp=False,  # shard big params (and their optimizer state) over the data axis
            fsdp_min_bytes=4 * 2 ** 20,  # only tensors at least this big
        ),
        data=dict(
            device_prefetch=2,  # batches transferred to the device ahead of the step that uses them
        ),
        task=dict(
            name="",  # hrnet_jax.tasks.TASKS key, or "package.module:Class"
        ),
    )
    return Config(merge(base, updates))


def merge(base: Mapping, updates: Mapping) -> dict:
    """Recursive dict merge; ``updates`` may add keys."""
    out = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in base.items()}
    for k, v in updates.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out
