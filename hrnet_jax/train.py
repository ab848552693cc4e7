"""Train any task: ``python -m hrnet_jax.train --experiment=NAME --workdir=DIR [--config.a.b=value ...]``.

Flags:
  --experiment=NAME          an experiment from ``experiments`` (``--list`` prints them)
  --workdir=DIR              checkpoints, metrics.jsonl, tensorboard/, config.json; a rerun resumes from it
  --config.<dotted.key>=V    override any config field (type-checked; repeatable)
  --init_from=PATH           Orbax checkpoint of {params, batch_stats} for a fresh run (= --config.init_from)
  --init_from_mode=full|matching   all variables must match / take the matching ones (backbone only)
                             (--config.init_from_prefix=backbone: under that subtree, e.g. a detector's HRNet)
  --coordinator_address=HOST:PORT --num_processes=N --process_id=I   multi-process without a cluster env

From Python / a notebook::

    from experiments import get_experiment
    from hrnet_jax.train import train
    cfg = get_experiment("cls_synthetic", {"total_steps": 50})
    result = train(cfg, "/tmp/run")          # result.state, result.eval_metrics, result.history

The program reads top to bottom: workdir → mesh → task, model, data → optimizer → state and shardings →
compiled steps → restore / init → loop (log, eval, checkpoint, guards). It knows the task only through the
contract of :mod:`hrnet_jax.tasks.base` (``config.task.name`` picks the class, or pass ``task=``).
"""
from __future__ import annotations

if __name__ == "__main__":  # before JAX loads: XLA's per-step temp buffer on huge pages (see host_memory)
    from hrnet_jax.host_memory import reexec_with_hugepage_malloc
    reexec_with_hugepage_malloc("hrnet_jax.train")

import dataclasses
import functools
import json
import os
import signal
import sys
import time
from typing import Any, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils

from hrnet_jax.data.pipeline import pop_stats
from hrnet_jax.models.params import restack
from hrnet_jax.training import checkpoint as ckpt_lib
from hrnet_jax.training import optim
from hrnet_jax.training import sharding as shd
from hrnet_jax.training import steps
from hrnet_jax.training.config import Config, ConfigError
from hrnet_jax.training.evaluate import make_eval_step, run_eval
from hrnet_jax.training.guards import EXIT_PREEMPTED, divergence_guard, validate_loop_config
from hrnet_jax.training.logging import MetricWriter, Progress, Throughput, check_workdir
from hrnet_jax.training.prefetch import DevicePrefetch, as_iter_dataset
from hrnet_jax.training.workdir import (ConfigStore, WorkdirLock, WorkdirLockError, compare_configs)


class NonFiniteLossError(FloatingPointError):
    pass


@dataclasses.dataclass
class TrainResult:
    state: steps.TrainState
    history: list  # the rows written to metrics.jsonl (process 0; every process computes them)
    eval_metrics: dict  # the last evaluation of each named eval, "<eval>/<metric>": value
    preempted: bool = False
    workdir: str = ""
    next_command: str = ""  # the task's suggestion of what to run next (e.g. predict on images)


def _example(task) -> dict:
    """One row of the task's example batch, numeric fields only (what initialisation traces)."""
    batch = dict(task.example_batch())
    pop_stats(batch)
    return {k: np.asarray(v)[:1] for k, v in batch.items() if shd._is_array(v)}


def _sum_over_processes(counts: dict) -> dict:
    if jax.process_count() == 1:
        return dict(counts)
    keys = sorted(counts)
    vals = multihost_utils.process_allgather(np.asarray([counts[k] for k in keys], np.int64))
    return dict(zip(keys, np.sum(vals, axis=0).tolist()))


def train(config: Config, workdir: str, *, devices: Sequence[jax.Device] | None = None,
          task: Any = None, quiet: bool = False) -> TrainResult:
    """Runs (or resumes) ``config`` in ``workdir``. ``devices`` restricts the mesh (default: all devices);
    ``task`` replaces the one ``config.task.name`` names."""
    cfg = config
    is_main = jax.process_index() == 0
    say = (lambda *a: None) if (quiet or not is_main) else (lambda *a: print(*a, file=sys.stderr, flush=True))

    # ---------------------------------------------------------------------------------------------- checks, workdir
    mesh = shd.make_mesh(devices)
    data_sh, repl = shd.batch_sharding(mesh), shd.replicated(mesh)
    validate_loop_config(cfg, mesh.devices.size, jax.process_count())  # every bad value, before any write
    check_workdir(workdir)
    lock, refused = WorkdirLock(workdir, enabled=is_main), None  # one run per workdir; released at exit / kill
    try:
        lock.acquire()
    except WorkdirLockError as e:
        refused = e
    if jax.process_count() > 1:  # every process stops when process 0 could not take the lock
        if np.any(multihost_utils.process_allgather(np.int32(refused is not None))) and refused is None:
            refused = WorkdirLockError(f"process 0 could not lock {workdir}; see its output")
    if refused is not None:
        raise refused
    try:
        return _train(cfg, workdir, mesh, data_sh, repl, task, say, is_main, quiet)
    finally:
        lock.release()


def _lr_at(config: dict, step: int) -> float:
    c = Config(config)
    return float(optim.make_schedule(c.optimizer, c.total_steps)(step // max(c.optimizer.accum_steps, 1)))


def _train(cfg, workdir, mesh, data_sh, repl, task, say, is_main, quiet) -> TrainResult:
    n_dev = mesh.devices.size
    pi, pc = jax.process_index(), jax.process_count()
    ckpt_dir = os.path.join(workdir, "checkpoints")
    store = ConfigStore(workdir)
    latest_on_disk = ckpt_lib.latest_step_on_disk(ckpt_dir)
    stored = store.load() if latest_on_disk is not None else None
    if stored is not None:  # a resume: refuse state-breaking changes, state schedule changes
        for line in compare_configs(stored, cfg, step=latest_on_disk, lr_at=_lr_at, workdir=workdir).check(
                cfg.resume_changes):
            say(line)

    # ---------------------------------------------------------------------------------------------- task, model, data
    if task is None:
        from hrnet_jax.tasks import build_task
        task = build_task(cfg)
    model = task.build_model()
    evals = task.evals()
    ema_decay = float(cfg.optimizer.get("ema_decay", 0.0) or 0.0)
    eval_names = sorted(evals) + ([f"{n}_ema" for n in evals] if ema_decay > 0 else [])
    if cfg.best_metric and cfg.best_metric.split("/", 1)[0] not in eval_names:
        raise ConfigError(f"best_metric {cfg.best_metric!r} must be '<eval>/<metric>' with <eval> one of "
                          f"{eval_names}")
    example = _example(task)
    train_iter = DevicePrefetch(iter(as_iter_dataset(task.train_dataset(pi, pc))), data_sh,
                                size=cfg.data.device_prefetch)

    # ---------------------------------------------------------------------------------------------- optimizer
    abstract_vars = jax.eval_shape(lambda: steps.init_variables(task, model, example, jax.random.PRNGKey(0)))
    labels = task.param_groups(abstract_vars["params"])
    tx, lr_fn = optim.make_optimizer(cfg.optimizer, cfg.total_steps, labels)

    # ---------------------------------------------------------------------------------------------- state, shardings
    init_fn = functools.partial(steps.init_state, task, model, tx, example, cfg.seed, ema=ema_decay > 0)
    abstract = jax.eval_shape(init_fn)
    state_sh = shd.state_shardings(abstract, mesh, cfg.sharding.fsdp, cfg.sharding.fsdp_min_bytes)
    say(shd.memory_line(abstract, state_sh, fsdp=cfg.sharding.fsdp))
    vars_sh = {"params": state_sh.params, "batch_stats": state_sh.batch_stats}

    # ---------------------------------------------------------------------------------------------- compiled steps
    train_step = jax.jit(
        functools.partial(steps.train_step, task=task, model=model, tx=tx, lr_fn=lr_fn,
                          accum_steps=max(cfg.optimizer.accum_steps, 1), ema_decay=ema_decay),
        in_shardings=(state_sh, data_sh), out_shardings=(state_sh, repl), donate_argnums=0)
    eval_steps = {name: make_eval_step(task, model, ev, vars_sh, data_sh) for name, ev in evals.items()}

    # ---------------------------------------------------------------------------------------------- restore or init
    ckpt = ckpt_lib.Checkpointer(ckpt_dir, keep=cfg.keep_checkpoints,
                                 best_metric=cfg.best_metric, best_mode=cfg.best_mode)
    latest = ckpt.latest_step()
    if latest is not None:
        state = ckpt.restore(latest, ckpt_lib.abstract_like(abstract, state_sh), train_iter)
        say(f"resumed from {workdir}/checkpoints/{latest} on {n_dev} device(s)")
    else:
        state = jax.jit(init_fn, out_shardings=state_sh)()
        if cfg.init_from:
            state = _init_from(state, state_sh, cfg.init_from, cfg.init_from_mode, say,
                               prefix=cfg.get("init_from_prefix", ""))
    if is_main:  # the run is accepted: its config joins the workdir's history
        store.record(cfg.to_dict(), latest or 0)
    guard = divergence_guard(cfg)
    if latest is not None:
        guard.note_checkpoint(latest)
        guard.prime(_metric_rows(workdir))

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
        """Fetches the pending step metrics; stops on a non-finite or diverging loss (nothing after is saved)."""
        nonlocal pending
        for s, m in pending:
            m = {k: float(v) for k, v in jax.device_get(m).items()}
            problem = guard.observe(s, m["loss"], m["param_norm"])
            if problem:
                good = guard.last_sane_checkpoint()
                good = f"step {good} in {ckpt_dir}" if good is not None else "none (no sane checkpoint was written)"
                raise NonFiniteLossError(
                    f"{problem}: training stopped. Last good checkpoint: {good}. "
                    f"Lower optimizer.lr, add optimizer.grad_clip_norm or warmup, or check the data.")
            window.append(m)
        pending = []

    def save(s: int, metrics: dict | None = None):
        flush_pending()
        ckpt.save(s, state, train_iter, metrics=metrics)
        guard.note_checkpoint(s)

    def evaluate(name: str) -> dict:
        ev = evals[name]
        res, counts = run_eval(ev, eval_steps[name], state.variables, data_sh)
        row = {f"{name}/{k}": float(v) for k, v in res.items()}
        row.update({f"data/{name}/{k}": float(v) for k, v in _sum_over_processes(counts).items()})
        if state.ema is not None:  # the EMA weights through the same eval, beside the raw ones
            res, _ = run_eval(ev, eval_steps[name], state.ema_variables, data_sh)
            row.update({f"{name}_ema/{k}": float(v) for k, v in res.items()})
        return row

    try:
        with jax.set_mesh(mesh):
            while step < cfg.total_steps:
                try:
                    batch = next(train_iter)
                except StopIteration:
                    raise ConfigError(f"the train dataset ran out at step {step}: make task.train_dataset "
                                      f"repeat (grain: .shuffle(seed).repeat()); the loop counts steps") from None
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
                    row.update({f"data/{k}": float(v) for k, v in task.data_stats().items()})
                    row.update({f"data/train/{k}": float(v)
                                for k, v in _sum_over_processes(train_iter.counts).items()})
                    window.clear()
                    writer.write(step, row)
                    history.append({"step": step, **row})
                    progress.update(0, loss=row["loss"], img_s=round(row["img_per_s"], 1))

                evaluated = {}
                ran = [name for name, ev in evals.items() if ev.every and step % ev.every == 0]
                for name in ran:
                    row = evaluate(name)
                    evaluated.update(row)
                    eval_metrics.update({k: v for k, v in row.items() if not k.startswith("data/")})
                    writer.write(step, row)
                    history.append({"step": step, **row})
                    progress.write(f"step {step}: " + ", ".join(
                        f"{k}={v:.4g}" for k, v in row.items() if not k.startswith("data/")))
                best_now = bool(cfg.best_metric) and cfg.best_metric.split("/", 1)[0].removesuffix("_ema") in ran
                if best_now and cfg.best_metric not in evaluated:
                    raise ConfigError(f"best_metric {cfg.best_metric!r} is not among the metrics of that eval: "
                                      f"{sorted(k for k in evaluated if not k.startswith('data/'))}")

                if step % cfg.checkpoint_every == 0 or step == cfg.total_steps or best_now:
                    save(step, evaluated if best_now else None)

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
    return TrainResult(state=state, history=history, eval_metrics=eval_metrics, preempted=preempted,
                       workdir=workdir, next_command=task.next_command(workdir))


def _metric_rows(workdir: str) -> list[dict]:
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    rows = []
    with open(path) as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except ValueError:
                pass  # a line cut by a kill
    return rows


def _main_thread() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()


def _init_from(state, state_sh, path: str, mode: str, say, prefix: str = ""):
    loaded = ckpt_lib.load_variables(path)
    for part in reversed([p for p in prefix.split("/") if p]):  # "backbone" → {"params": {"backbone": ...}}
        loaded = {k: {part: v} for k, v in loaded.items()}
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
    except (PermissionError, WorkdirLockError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (ConfigError, NonFiniteLossError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if result.preempted:
        print(f"preempted at step {int(result.state.step)}; rerun the same command to resume "
              f"(exit {EXIT_PREEMPTED})", file=sys.stderr)
        return EXIT_PREEMPTED
    if jax.process_index() == 0:
        print(summary_line(result), file=sys.stderr)
    return 0


def summary_line(result: TrainResult) -> str:
    """One closing line: final metrics, where the checkpoints are, what to try next."""
    metrics = ", ".join(f"{k}={v:.4g}" for k, v in sorted(result.eval_metrics.items())) or "no evaluation run"
    last = next((r for r in reversed(result.history) if "loss" in r), None)
    loss = f"loss {last['loss']:.4g}, " if last else ""
    ckpts = os.path.join(result.workdir, "checkpoints")
    nxt = result.next_command or "the same command with --config.total_steps=N continues this run"
    return f"done: step {int(result.state.step)}, {loss}{metrics}; checkpoints in {ckpts}; next: {nxt}"


if __name__ == "__main__":
    sys.exit(main())
