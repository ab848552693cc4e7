"""Run guards: config values that cannot be right (:func:`validate_loop_config`), divergence that stays finite
(:class:`DivergenceGuard`), and the exit code of a preempted run (:data:`EXIT_PREEMPTED`).

Pure Python (no JAX), so the loop can run all of it before touching a device.
"""
from __future__ import annotations

import math
import statistics
from collections import deque
from typing import Any, Iterable, Mapping

from hrnet_jax.training.config import ConfigError
from hrnet_jax.training.workdir import RESUME_POLICIES

#: Exit status of ``python -m hrnet_jax.train`` when it stopped early on SIGTERM (preemption) after saving a
#: checkpoint: the run is *not* finished; rerun the same command to resume. 75 is EX_TEMPFAIL of sysexits.h
#: ("temporary failure; the user is invited to retry"), which schedulers and shell loops can test for
#: (``until python -m hrnet_jax.train ...; [ $? -ne 75 ] && break; done``). 0 means the run reached total_steps.
EXIT_PREEMPTED = 75

# ================================================================================================== config values

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "step", "cosine", "poly")
WEIGHT_DECAY_STYLES = ("l2", "decoupled")
BEST_MODES = ("max", "min")
INIT_FROM_MODES = ("full", "matching")

_NOT_SET = object()


def _get(cfg: Any, path: str) -> Any:
    node = cfg
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return _NOT_SET
        node = node[part]
    return node


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def validate_loop_config(cfg: Mapping, n_devices: int, process_count: int = 1) -> None:
    """Raises :class:`ConfigError` listing every loop-config value that cannot be right, one line each
    (``key = value: valid range``). Keys missing from ``cfg`` are skipped; task fields are the task's job,
    except eval batch sizes (``task.eval_batch_size``, ``evals.<name>.batch_size``), which must split over
    the devices like the train batch. ``n_devices``: devices of the mesh (global); ``process_count``: hosts."""
    problems: list[str] = []

    def bad(key: str, value: Any, valid: str) -> None:
        problems.append(f"{key} = {value!r}: {valid}")

    def check(key: str, ok, valid: str, kind: str = "int") -> Any:
        v = _get(cfg, key)
        if v is _NOT_SET:
            return _NOT_SET
        if kind == "int" and not _is_int(v):
            bad(key, v, f"must be an integer, {valid}")
            return _NOT_SET
        if kind == "num" and not (_is_num(v) and math.isfinite(v)):
            bad(key, v, f"must be a finite number, {valid}")
            return _NOT_SET
        if kind == "enum" and v not in ok:
            bad(key, v, f"must be one of {', '.join(map(repr, ok))}")
            return _NOT_SET
        if kind != "enum" and not ok(v):
            bad(key, v, valid)
            return _NOT_SET
        return v

    pos = lambda v: v > 0
    nonneg = lambda v: v >= 0

    total = check("total_steps", pos, "must be > 0")
    batch = check("batch_size", pos, "must be > 0 (the global batch over all devices and processes)")
    check("log_every", pos, "must be > 0")
    check("checkpoint_every", pos, "must be > 0")
    check("keep_checkpoints", lambda v: v >= 1, "must be >= 1 (the most recent checkpoints kept; the resume "
                                                "point is one of them)")
    check("eval_every", nonneg, "must be >= 0 (0 = never)")
    check("eval_steps", nonneg, "must be >= 0 (0 = the whole eval dataset)")
    check("throttle_s", nonneg, "must be >= 0 seconds", "num")
    check("best_mode", BEST_MODES, "", "enum")
    check("init_from_mode", INIT_FROM_MODES, "", "enum")
    check("resume_changes", RESUME_POLICIES, "", "enum")
    check("guards.divergence_factor", lambda v: v == 0 or v > 1, "must be 0 (off) or > 1 (a ratio, e.g. 1e4)",
          "num")
    check("guards.divergence_window", lambda v: v >= 1, "must be >= 1 (logged values)")

    n_devices, process_count = int(n_devices), max(int(process_count), 1)

    def divisible(key: str, v: Any, what: str) -> None:
        if not _is_int(v) or v <= 0:
            return
        if n_devices > 0 and v % n_devices:
            bad(key, v, f"must be divisible by the {n_devices} devices of the mesh ({what}); nearest valid: "
                        f"{_nearest_multiple(v, n_devices)}")
        elif v % process_count:
            bad(key, v, f"must be divisible by the {process_count} processes (each loads an equal share); "
                        f"nearest valid: {_nearest_multiple(v, math.lcm(n_devices or 1, process_count))}")

    if batch is not _NOT_SET:
        divisible("batch_size", batch, "the batch is split evenly over them")

    # eval batch sizes (0 = the train batch size): they fail only at the first evaluation otherwise
    ev = _get(cfg, "task.eval_batch_size")
    if ev is not _NOT_SET:
        if not _is_int(ev) or ev < 0:
            bad("task.eval_batch_size", ev, "must be an integer >= 0 (0 = batch_size)")
        else:
            divisible("task.eval_batch_size", ev, "evaluation batches are split like training batches")
    evals = _get(cfg, "evals")
    if isinstance(evals, Mapping):
        for name, ec in evals.items():
            if not isinstance(ec, Mapping):
                continue
            for field, rule, valid in (("every", nonneg, "must be >= 0 (0 = never)"),
                                       ("steps", nonneg, "must be >= 0 (0 = the whole eval dataset)")):
                check(f"evals.{name}.{field}", rule, valid)
            for field in ("batch_size", "eval_batch_size"):
                key = f"evals.{name}.{field}"
                v = _get(cfg, key)
                if v is _NOT_SET:
                    continue
                if not _is_int(v) or v < 0:
                    bad(key, v, "must be an integer >= 0 (0 = batch_size)")
                else:
                    divisible(key, v, "evaluation batches are split like training batches")

    # optimizer
    o = "optimizer."
    if _get(cfg, "optimizer") is not _NOT_SET:
        check(o + "name", OPTIMIZERS, "", "enum")
        schedule = check(o + "schedule", SCHEDULES, "", "enum")
        check(o + "weight_decay_style", WEIGHT_DECAY_STYLES, "", "enum")
        lr = check(o + "lr", pos, "must be > 0 (the peak learning rate)", "num")
        check(o + "weight_decay", nonneg, "must be >= 0", "num")
        check(o + "momentum", lambda v: 0 <= v < 1, "must be in [0, 1)", "num")
        check(o + "b1", lambda v: 0 <= v < 1, "must be in [0, 1)", "num")
        check(o + "b2", lambda v: 0 <= v < 1, "must be in [0, 1)", "num")
        check(o + "eps", nonneg, "must be >= 0", "num")
        check(o + "ema_decay", lambda v: 0 <= v < 1, "must be in [0, 1) (0 = no EMA of the weights)", "num")
        check(o + "grad_clip_norm", nonneg, "must be >= 0 (0 = no clipping)", "num")
        check(o + "warmup_init_lr", nonneg, "must be >= 0", "num")
        check(o + "decay_factor", pos, "must be > 0", "num")
        check(o + "poly_power", pos, "must be > 0", "num")
        end_lr = check(o + "end_lr", nonneg, "must be >= 0", "num")
        if (schedule in ("cosine", "poly") and end_lr is not _NOT_SET and lr is not _NOT_SET and end_lr > lr):
            bad(o + "end_lr", end_lr, f"must be <= optimizer.lr ({lr!r}) for the {schedule} schedule (it decays "
                                      f"from lr to end_lr)")
        accum = check(o + "accum_steps", lambda v: v >= 1, "must be >= 1 (1 = no accumulation)")
        updates = total
        if total is not _NOT_SET and accum is not _NOT_SET:
            if total % accum:
                bad("total_steps", total, f"must be a multiple of optimizer.accum_steps ({accum}): the last "
                                          f"{total % accum} steps would accumulate gradients that are never "
                                          f"applied")
            updates = total // accum
        check(o + "warmup_steps", nonneg, "must be >= 0")  # >= total_steps is allowed: short smoke runs
        bounds = _get(cfg, o + "boundaries")
        if schedule == "step" and bounds is not _NOT_SET:
            if not isinstance(bounds, (list, tuple)) or not all(_is_num(b) and math.isfinite(b) and b > 0
                                                                for b in bounds):
                bad(o + "boundaries", bounds, "must be positive numbers (<= 1: fractions of total_steps, "
                                              "> 1: steps)")
            elif updates is not _NOT_SET:
                resolved = [int(round(b * updates)) if b <= 1 else int(b) for b in bounds]
                if any(y <= x for x, y in zip(resolved, resolved[1:])):
                    bad(o + "boundaries", bounds, f"must be increasing (as steps: {resolved})")
        groups = _get(cfg, o + "groups")
        if isinstance(groups, Mapping):
            for name, g in groups.items():
                if isinstance(g, Mapping) and "lr_mult" in g:
                    v = g["lr_mult"]
                    if not (_is_num(v) and math.isfinite(v) and v >= 0):
                        bad(f"{o}groups.{name}.lr_mult", v, "must be a finite number >= 0")

    if problems:
        raise ConfigError(f"{len(problems)} invalid config value{'s' if len(problems) > 1 else ''}:\n  "
                          + "\n  ".join(problems))


def _nearest_multiple(v: int, m: int) -> int:
    lo = (v // m) * m
    return lo if lo > 0 else m


# ================================================================================================== divergence


def divergence_guard(cfg: Mapping) -> "DivergenceGuard":
    """The guard of ``cfg.guards.divergence_factor`` / ``divergence_window`` (defaults where absent)."""
    factor = _get(cfg, "guards.divergence_factor")
    window = _get(cfg, "guards.divergence_window")
    return DivergenceGuard(window=20 if window is _NOT_SET else int(window),
                           factor=1e4 if factor is _NOT_SET else float(factor))


class DivergenceGuard:
    """Stops a run whose loss or parameter norm explodes while staying finite (and one that goes non-finite).

    ``observe(step, loss, param_norm)`` after every logged row (or every step): returns a message when

    * the loss or the parameter norm is NaN/inf, or
    * it is more than ``factor`` times its *reference*: the larger of the first value observed and the median
      of the last ``window`` sane values (the first-value floor keeps a converged loss near 0 from turning
      ordinary noise into a 10^4-fold "jump"), or
    * it is more than ``factor ** 2`` times the first value (a slow exponential creep that the median follows).

    Losses are taken as non-negative; a loss <= 0 is checked for finiteness only. ``factor <= 0`` turns the
    magnitude checks off (the non-finite check stays).

    ``note_checkpoint(step)`` after each save, ``last_sane_checkpoint()`` for the message: the latest checkpoint
    saved while every observation up to it was sane (so a checkpoint saved between a trip and the stop is never
    named). ``confirmed=True`` also requires a sane observation *after* it (the loss logged at step s measures
    the parameters of step s-1, so this is the stricter reading).
    """

    def __init__(self, window: int = 20, factor: float = 1e4):
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.window = int(window)
        self.factor = float(factor)
        self._hist = {"loss": deque(maxlen=self.window), "param_norm": deque(maxlen=self.window)}
        self._first: dict[str, float] = {}
        self._tripped: str | None = None
        self._last_step: int | None = None
        self._checkpoints: list[tuple[int, bool]] = []  # (step, sane so far)
        self._confirmed: int | None = None

    # -- state -------------------------------------------------------------------------------------------
    @property
    def tripped(self) -> str | None:
        """The message of the first trip, or None."""
        return self._tripped

    def reference(self, name: str = "loss") -> float | None:
        """The value a new ``name`` ("loss" / "param_norm") is compared with (None before any observation)."""
        first = self._first.get(name)
        if first is None:
            return None
        hist = self._hist[name]
        return max(first, statistics.median(hist)) if hist else first

    def prime(self, rows: Iterable[Mapping]) -> None:
        """Feeds earlier rows (``{"loss": .., "param_norm": ..}``, e.g. metrics.jsonl of the run being resumed)
        without checking them, so a resumed run keeps the original run's reference scale."""
        for r in rows:
            for name in ("loss", "param_norm"):
                v = r.get(name)
                if _is_num(v) and math.isfinite(v) and (name != "loss" or v > 0):
                    self._first.setdefault(name, float(v))
                    self._hist[name].append(float(v))

    # -- checks ------------------------------------------------------------------------------------------
    def _problem(self, name: str, v: float, step: int) -> str | None:
        label = "loss" if name == "loss" else "parameter norm"
        if not math.isfinite(v):
            return f"{label} is {v} at step {step}"
        if self.factor <= 0 or v <= 0:
            return None
        ref, first = self.reference(name), self._first.get(name)
        if ref is None:
            return None
        if v > self.factor * ref:
            return (f"{label} {v:.3g} at step {step} is {v / ref:.3g} times its reference {ref:.3g} (the larger "
                    f"of the first value and the median of the last {len(self._hist[name]) or 1} sane values; "
                    f"limit x{self.factor:.3g})")
        if v > self.factor ** 2 * first:
            return (f"{label} {v:.3g} at step {step} has grown {v / first:.3g}-fold since the first value "
                    f"{first:.3g} (limit x{self.factor ** 2:.3g})")
        return None

    def is_sane(self, loss: float, param_norm: float | None = None) -> bool:
        """Whether ``loss`` (and ``param_norm``) would pass :meth:`observe` now (nothing is recorded)."""
        if self._problem("loss", float(loss), -1) is not None:
            return False
        return param_norm is None or self._problem("param_norm", float(param_norm), -1) is None

    def observe(self, step: int, loss: float, param_norm: float | None = None) -> str | None:
        """Checks one observation; returns the problem (and remembers the trip) or None and records it."""
        step, loss = int(step), float(loss)
        self._last_step = step
        msgs = [m for m in (self._problem("loss", loss, step),
                            None if param_norm is None else self._problem("param_norm", float(param_norm), step))
                if m]
        if msgs:
            msg = "training is diverging: " + "; ".join(msgs)
            if self._tripped is None:
                self._tripped = msg
            return msg
        if self._tripped is None:
            for name, v in (("loss", loss), ("param_norm", param_norm)):
                if v is not None and (name != "loss" or v > 0):
                    self._first.setdefault(name, float(v))
                    self._hist[name].append(float(v))
            # a sane observation after a checkpoint confirms it
            for s, ok in self._checkpoints:
                if ok and s < step:
                    self._confirmed = s if self._confirmed is None else max(self._confirmed, s)
        return None

    # -- checkpoints -------------------------------------------------------------------------------------
    def note_checkpoint(self, step: int) -> None:
        """Records that a checkpoint of ``step`` was saved (after the observations up to ``step``)."""
        self._checkpoints.append((int(step), self._tripped is None))

    def last_sane_checkpoint(self, confirmed: bool = False) -> int | None:
        """The latest checkpoint saved while all observations were sane (``confirmed``: and followed by a sane
        observation), or None."""
        if confirmed:
            return self._confirmed
        ok = [s for s, good in self._checkpoints if good]
        return max(ok) if ok else None
