"""Train any task: ``python -m hrnet_jax.train --experiment=NAME --workdir=DIR [--config.a.b=value ...]``.

Flags:
  --experiment=NAME          an experiment from ``experiments`` (``--list`` prints them)
  --workdir=DIR              checkpoints, metrics.jsonl, tensorboard/, config.json; a rerun resumes from it
  --config.<dotted.key>=V    override any config field (type-checked; repeatable)
  --init_from=PATH           Orbax checkpoint of {params, batch_stats} for a fresh run (= --config.init_from)
  --init_from_mode=full|matching   all variables must match / take the matching ones (backbone only)
  --coordinator_address=HOST:PORT --num_processes=N --process_id=I   multi-process without a cluster env

From Python / a notebook::

    from experiments import get_experiment
    from hrnet_jax.train import train
    cfg = get_experiment("cls_synthetic", {"total_steps": 50})
    result = train(cfg, "/tmp/run")          # result.state, result.eval_metrics, result.history

The program reads top to bottom: workdir → mesh → task, model, data → optimizer → state and shardings →
compiled steps → restore / init → loop (log, eval, checkpoint, guards).
"""
from __future__ import annotations

if __name__ == "__main__":  # before JAX loads: XLA's per-step temp buffer on huge pages (see host_memory)
    from hrnet_jax.host_memory import reexec_with_hugepage_malloc
    reexec_with_hugepage_malloc("hrnet_jax.train")

import dataclasses
import functools
import json
import math
import os
import signal
import sys
import time
from typing import Any, Sequence

import grain
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from hrnet_jax import xla_options
from hrnet_jax.models.params import restack
from hrnet_jax.training import checkpoint as ckpt_lib
from hrnet_jax.training import optim
from hrnet_jax.training import sharding as shd
from hrnet_jax.training import steps
from hrnet_jax.training.config import Config, ConfigError
from hrnet_jax.training.logging import MetricWriter, Progress, Throughput, check_workdir


class NonFiniteLossError(FloatingPointError):
    pass


@dataclasses.dataclass
class TrainResult:
    state: steps.TrainState
    history: list  # the rows written to metrics.jsonl (process 0; every process computes them)
    eval_metrics: dict
    preempted: bool = False


def _as_iter_dataset(ds):
    return ds.to_iter_dataset() if isinstance(ds, grain.MapDataset) else ds


def _first_element(ds):
    return ds[0] if isinstance(ds, grain.MapDataset) else next(iter(ds))


def _host_outputs(outputs: dict, local_batch: dict) -> tuple[dict, dict]:
    """Device outputs and the host batch → numpy, global over processes, padding rows dropped."""
    if jax.process_count() == 1:
        out = jax.device_get(outputs)
        batch = dict(local_batch)
    else:
        out = multihost_utils.process_allgather(outputs, tiled=True)
        batch = {k: multihost_utils.process_allgather(np.asarray(v), tiled=True) for k, v in local_batch.items()
                 if shd._is_array(v)}
    valid = batch.pop("valid", None)
    batch.pop("image", None)
    if valid is not None:
        valid = np.asarray(valid, bool)
        keep = lambda a: a[valid] if np.ndim(a) >= 1 and np.shape(a)[0] == len(valid) else a
        out = jax.tree.map(keep, out)
        batch = {k: keep(v) if isinstance(v, np.ndarray) else v for k, v in batch.items()}
    return out, batch


def train(config: Config, workdir: str, *, devices: Sequence[jax.Device] | None = None,
          task: Any = None, quiet: bool = False) -> TrainResult:
    """Runs (or resumes) ``config`` in ``workdir``. ``devices`` restricts the mesh (default: all devices)."""
    cfg = config
    is_main = jax.process_index() == 0
    say = (lambda *a: None) if (quiet or not is_main) else (lambda *a: print(*a, file=sys.stderr, flush=True))

    # ---------------------------------------------------------------------------------------------- workdir
    check_workdir(workdir)  # before any compute
    if is_main:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            json.dump(cfg.to_dict(), f, indent=2, sort_keys=True)
    for k in ("total_steps", "batch_size", "log_every", "checkpoint_every"):
        if cfg[k] <= 0:
            raise ConfigError(f"{k} must be positive, got {cfg[k]}")

    # ---------------------------------------------------------------------------------------------- mesh
    mesh = shd.make_mesh(devices)
    data_sh, repl = shd.batch_sharding(mesh), shd.replicated(mesh)
    n_dev = mesh.devices.size
    if cfg.batch_size % n_dev:
        raise ConfigError(f"batch_size {cfg.batch_size} is not divisible by the {n_dev} devices of the mesh")
    pi, pc = jax.process_index(), jax.process_count()

    # ---------------------------------------------------------------------------------------------- task, model, data
    if task is None:
        from experiments import build_task
        task = build_task(cfg)
    model = task.build_model()
    train_ds = task.train_dataset(pi, pc)
    first = _first_element(train_ds)
    sample = jnp.zeros((1,) + tuple(np.shape(first["image"]))[1:], jnp.float32)
    train_iter = iter(_as_iter_dataset(train_ds))

    # ---------------------------------------------------------------------------------------------- optimizer
    tx, lr_fn = optim.make_optimizer(cfg.optimizer, cfg.total_steps)

    # ---------------------------------------------------------------------------------------------- state, shardings
    init_fn = functools.partial(steps.init_state, model, tx, sample, cfg.seed)
    abstract = jax.eval_shape(init_fn)
    state_sh = shd.state_shardings(abstract, mesh, cfg.sharding.fsdp, cfg.sharding.fsdp_min_bytes)

    # ---------------------------------------------------------------------------------------------- compiled steps
    train_step = jax.jit(
        functools.partial(steps.train_step, model=model, loss_fn=task.loss, tx=tx, lr_fn=lr_fn,
                          accum_steps=max(cfg.optimizer.accum_steps, 1)),
        in_shardings=(state_sh, data_sh), out_shardings=(state_sh, repl), donate_argnums=0)
    # Eval outputs are whatever task.predict returns (per-example arrays, maybe scalars): the compiler
    # picks their layout; they are gathered to the host anyway.
    eval_step = jax.jit(functools.partial(steps.eval_step, model=model, task=task),
                        in_shardings=(state_sh, data_sh), compiler_options=xla_options.inference())

    # ---------------------------------------------------------------------------------------------- restore or init
    ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), keep=cfg.keep_checkpoints,
                                 best_metric=cfg.best_metric, best_mode=cfg.best_mode)
    latest = ckpt.latest_step()
    if latest is not None:
        state = ckpt.restore(latest, ckpt_lib.abstract_like(abstract, state_sh), train_iter)
        say(f"resumed from {workdir}/checkpoints/{latest} on {n_dev} device(s)")
    else:
        state = jax.jit(init_fn, out_shardings=state_sh)()
        if cfg.init_from:
            state = _init_from(state, state_sh, cfg.init_from, cfg.init_from_mode, say)
    last_good = latest

    # ---------------------------------------------------------------------------------------------- signals
    stop = {"requested": False}

    def on_sigterm(signum, frame):
        stop["requested"] = True

    previous_handler = signal.signal(signal.SIGTERM, on_sigterm) if _main_thread() else None

    # ---------------------------------------------------------------------------------------------- loop
    writer = MetricWriter(workdir, enabled=is_main)
    history, eval_metrics, preempted = [], {}, False
    step = int(state.step)
    progress = Progress(step, cfg.total_steps, enabled=is_main and not quiet)
    pending: list[tuple[int, dict]] = []  # per-step device metrics not yet looked at
    window: list[dict] = []  # host metrics since the last log row
    speed = Throughput()

    def flush_pending():
        """Fetches the pending step metrics; stops on a non-finite loss (nothing after it is saved)."""
        nonlocal pending
        for s, m in pending:
            m = {k: float(v) for k, v in jax.device_get(m).items()}
            if not (math.isfinite(m["loss"]) and math.isfinite(m["param_norm"])):
                good = f"step {last_good} in {os.path.join(workdir, 'checkpoints')}" if last_good is not None \
                    else "none (no checkpoint was written)"
                what = f"loss is {m['loss']}" if not math.isfinite(m["loss"]) else \
                    f"parameters became non-finite (norm {m['param_norm']})"
                raise NonFiniteLossError(
                    f"{what} at step {s}: training stopped. Last good checkpoint: {good}. "
                    f"Lower optimizer.lr, add optimizer.grad_clip_norm or warmup, or check the data.")
            window.append(m)
        pending = []

    def save(s: int, metrics: dict | None = None):
        nonlocal last_good
        flush_pending()
        ckpt.save(s, state, train_iter, metrics=metrics)
        last_good = s

    try:
        with jax.set_mesh(mesh):
            while step < cfg.total_steps:
                try:
                    local = next(train_iter)
                except StopIteration:
                    raise ConfigError(f"the train dataset ran out at step {step}: make task.train_dataset "
                                      f"repeat (grain: .shuffle(seed).repeat()); the loop counts steps") from None
                batch = shd.put_batch(local, data_sh)
                state, metrics = train_step(state, batch)
                step += 1
                pending.append((step, metrics))
                speed.add(cfg.batch_size)
                if cfg.throttle_s:
                    time.sleep(cfg.throttle_s)
                progress.update(1)

                if step % cfg.log_every == 0 or step == cfg.total_steps:
                    flush_pending()
                    row = {k: float(np.mean([m[k] for m in window])) for k in window[0]}
                    row["lr"] = window[-1]["lr"]
                    row["img_per_s"] = speed.tick()
                    if hasattr(task, "data_stats"):
                        row.update({f"data/{k}": v for k, v in task.data_stats().items()})
                    window.clear()
                    writer.write(step, row)
                    history.append({"step": step, **row})
                    progress.update(0, loss=row["loss"], img_s=round(row["img_per_s"], 1))

                evaluated = False
                if cfg.eval_every and step % cfg.eval_every == 0:
                    eval_metrics = {f"eval/{k}": float(v) for k, v in _evaluate(task, eval_step, state, data_sh,
                                                                                cfg.eval_steps).items()}
                    if cfg.best_metric and f"eval/{cfg.best_metric}" not in eval_metrics:
                        raise ConfigError(f"best_metric {cfg.best_metric!r} is not among the evaluator's metrics "
                                          f"{sorted(k[5:] for k in eval_metrics)}")
                    writer.write(step, eval_metrics)
                    history.append({"step": step, **eval_metrics})
                    progress.write(f"step {step}: " + ", ".join(f"{k}={v:.4g}" for k, v in eval_metrics.items()))
                    evaluated = True

                if step % cfg.checkpoint_every == 0 or step == cfg.total_steps or (evaluated and cfg.best_metric):
                    save(step, eval_metrics if evaluated else None)

                if pc > 1 and step % cfg.log_every == 0:  # agree on preemption across processes
                    stop["requested"] = bool(np.any(multihost_utils.process_allgather(
                        np.int32(stop["requested"]))))
                if stop["requested"] and (pc == 1 or step % cfg.log_every == 0) and step < cfg.total_steps:
                    if ckpt.latest_step() != step:
                        save(step)
                    say(f"SIGTERM: saved checkpoint at step {step}; exiting")
                    preempted = True
                    break
            flush_pending()
    finally:
        ckpt.close()
        writer.close()
        progress.close()
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)
    return TrainResult(state=state, history=history, eval_metrics=eval_metrics, preempted=preempted)


def _main_thread() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()


def _evaluate(task, eval_step, state, data_sh, max_steps: int) -> dict:
    """Runs the task's eval dataset through the jitted eval step; the task's evaluator finishes on the host."""
    evaluator = task.evaluator()
    ds = _as_iter_dataset(task.eval_dataset(jax.process_index(), jax.process_count()))
    for i, local in enumerate(ds):
        if max_steps and i >= max_steps:
            break
        outputs = eval_step(state, shd.put_batch(local, data_sh))
        out, batch = _host_outputs(outputs, local)
        evaluator.add(out, batch)
    return evaluator.result()


def _init_from(state, state_sh, path: str, mode: str, say):
    loaded = ckpt_lib.load_variables(path)
    fresh = {"params": jax.device_get(state.params), "batch_stats": jax.device_get(state.batch_stats)}
    for k in fresh:  # scanned <-> unrolled layouts (e.g. weights converted for scan=False)
        try:
            loaded[k] = restack(loaded.get(k, {}), fresh[k])
        except (KeyError, ValueError):
            pass  # a different structure: merge_variables reports what does not match
    merged, report = ckpt_lib.merge_variables(fresh, {k: loaded.get(k, {}) for k in fresh}, mode)
    say(f"init_from {path}: {len(report['loaded'])} variables loaded, {len(report['fresh'])} fresh, "
        f"{len(report['shape_mismatch'])} shape mismatches, {len(report['unused'])} unused")
    for p in report["fresh"] + report["shape_mismatch"]:
        say(f"  fresh: {p}")
    params = jax.device_put(merged["params"], state_sh.params)
    batch_stats = jax.device_put(merged["batch_stats"], state_sh.batch_stats)
    return state.replace(params=params, batch_stats=batch_stats)


# -------------------------------------------------------------------------------------------------- CLI

_FLAGS = ("experiment", "workdir", "init_from", "init_from_mode", "coordinator_address", "num_processes",
          "process_id")


def parse_args(argv: Sequence[str]) -> tuple[dict, list[str]]:
    """``--flag=value`` / ``--flag value`` → (flags, ["dotted.key=value", ...])."""
    flags, overrides, args = {}, [], list(argv)
    while args:
        a = args.pop(0)
        if a in ("-h", "--help", "--list"):
            flags[a.lstrip("-")] = True
            continue
        if not a.startswith("--"):
            raise ConfigError(f"unexpected argument {a!r}")
        name, eq, value = a[2:].partition("=")
        if not eq:
            if not args:
                raise ConfigError(f"flag --{name} needs a value")
            value = args.pop(0)
        if name.startswith("config."):
            overrides.append(f"{name[len('config.'):]}={value}")
        elif name in _FLAGS:
            flags[name] = value
        else:
            import difflib
            close = difflib.get_close_matches(name, list(_FLAGS), n=2)
            hint = f"; did you mean --{close[0]}?" if close else ""
            raise ConfigError(f"unknown flag --{name}{hint} (config fields are set with --config.<key>=<value>)")
    return flags, overrides


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        flags, overrides = parse_args(argv)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if flags.get("help"):
        print(__doc__)
        return 0

    # Multi-process set-up must happen before anything touches a backend (importing experiments is fine).
    from hrnet_jax.training.distributed import maybe_initialize
    maybe_initialize(flags.get("coordinator_address"),
                     int(flags["num_processes"]) if "num_processes" in flags else None,
                     int(flags["process_id"]) if "process_id" in flags else None)

    import experiments
    if flags.get("list"):
        print("\n".join(experiments.list_experiments()))
        return 0
    if "experiment" not in flags or "workdir" not in flags:
        print("error: --experiment and --workdir are required; available experiments: "
              + ", ".join(experiments.list_experiments()), file=sys.stderr)
        return 2
    for name in ("init_from", "init_from_mode"):
        if name in flags:
            overrides.append(f"{name}={flags[name]}")
    try:
        cfg = experiments.get_experiment(flags["experiment"], overrides)
    except (experiments.UnknownExperimentError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from hrnet_jax import compile_cache
    cache_dir = compile_cache.enable()  # a rerun (resume) loads its compiled steps
    if cache_dir and jax.process_index() == 0:
        print(f"XLA compilation cache: {cache_dir} ({compile_cache.ENV}=off to turn it off)", file=sys.stderr)
    try:
        result = train(cfg, flags["workdir"])
    except PermissionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (ConfigError, NonFiniteLossError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if result.preempted:
        print(f"preempted at step {int(result.state.step)}; rerun the same command to resume", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
