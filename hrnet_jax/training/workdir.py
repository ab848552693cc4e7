"""Run integrity of a workdir: one run at a time (:class:`WorkdirLock`), the config a resume is checked against
(:class:`ConfigStore`), and what a config change does to a resumed run (:func:`compare_configs`).

The loop calls them in this order, before building the model or compiling anything::

    validate_loop_config(cfg, n_devices, jax.process_count())   # guards.py: bad values; nothing written yet
    check_workdir(workdir)
    lock = WorkdirLock(workdir, enabled=is_main).acquire()      # a second run on the workdir stops here
    try:
        store = ConfigStore(workdir)
        latest = checkpointer.latest_step()
        stored = store.load() if latest is not None else None  # no checkpoint: nothing to resume, no check
        if stored is not None:                                   # every process (same answer on all of them)
            diff = compare_configs(stored, cfg, step=latest, lr_at=lr_at, workdir=workdir)
            for line in diff.check(cfg.get("resume_changes", "refuse")):   # raises ResumeConfigError
                say(line)                                                   # accepted changes, said out loud
        ... build, restore or init ...
        if is_main:
            store.record(cfg, latest or 0)                       # only now: config.json + configs/NNN-step<S>.json
        ... loop ...
    finally:
        lock.release()

with ``lr_at = lambda c, s: float(optim.make_schedule(Config(c).optimizer, Config(c).total_steps)(
s // max(Config(c).optimizer.accum_steps, 1)))`` (the stored config arrives as a plain dict).

Nothing in this module imports JAX.
"""
from __future__ import annotations

import dataclasses
import datetime
import fcntl
import json
import math
import os
import re
import shlex
import socket
import sys
import tempfile
import threading
from typing import Any, Callable, Iterable, Mapping

from hrnet_jax.training.config import ConfigError

LOCK_NAME = "run.lock"
CONFIG_NAME = "config.json"
HISTORY_DIR = "configs"

# ================================================================================================== lock


class WorkdirLockError(RuntimeError):
    """The workdir cannot be locked (e.g. a filesystem without flock)."""


class WorkdirLockedError(WorkdirLockError):
    """Another live run holds the workdir; ``.holder`` is its recorded info (dict, maybe empty)."""

    def __init__(self, message: str, holder: dict):
        super().__init__(message)
        self.holder = holder


_LIVE_LOCKS: "set[WorkdirLock]" = set()  # strong refs: an unreferenced lock object stays held until release()
_FORK_HOOK = threading.Lock()
_fork_hook_installed = False


def _close_locks_in_child():
    # A forked child (e.g. a data worker) shares the lock's open file description: if it kept the descriptor,
    # the lock would outlive a SIGKILLed parent. Closing it here drops the child's reference only (the parent
    # still holds the lock: flock is released when *every* descriptor of the description is closed).
    for lk in list(_LIVE_LOCKS):
        if lk._fd is not None:
            try:
                os.close(lk._fd)
            except OSError:
                pass
            lk._fd = None


class WorkdirLock:
    """An exclusive ``fcntl.flock`` on ``<workdir>/run.lock``, held for the run's lifetime.

    The kernel releases it when the process dies (SIGKILL, OOM kill, power of the node aside), so a stale
    lock never blocks the next run; nothing is unlinked. The holder's host, pid, command line and start
    time are written into the file for the refusal message. ``enabled=False`` (processes other than 0 of a
    multi-host run) makes every method a no-op. The lock stays held until :meth:`release` (or the end of the
    context manager, or process exit), whether or not the object is still referenced; forked children close
    their copy of the descriptor, so a surviving data worker does not keep a killed run's lock. Works on local filesystems; on NFS, Linux maps flock to
    POSIX byte-range locks, which NFSv4 honours across clients.
    """

    def __init__(self, workdir: str, *, enabled: bool = True, command: Iterable[str] | None = None):
        self.workdir = os.fspath(workdir)
        self.path = os.path.join(self.workdir, LOCK_NAME)
        self.enabled = enabled
        self.command = list(command) if command is not None else [sys.executable, *sys.argv]
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> "WorkdirLock":
        """Takes the lock or raises :class:`WorkdirLockedError` naming the holder. Returns ``self``."""
        global _fork_hook_installed
        if not self.enabled or self._fd is not None:
            return self
        os.makedirs(self.workdir, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise WorkdirLockedError(self._refusal(holder), holder) from None
        except OSError as e:
            os.close(fd)
            raise WorkdirLockError(f"cannot lock workdir {self.workdir} ({self.path}: {e.strerror or e}); the "
                                   f"filesystem may not support flock. Use a local or NFSv4 workdir.") from None
        info = {"host": socket.gethostname(), "pid": os.getpid(), "command": shlex.join(self.command),
                "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
        data = (json.dumps(info) + "\n").encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        self._fd = fd
        with _FORK_HOOK:
            if not _fork_hook_installed:
                os.register_at_fork(after_in_child=_close_locks_in_child)
                _fork_hook_installed = True
        _LIVE_LOCKS.add(self)
        return self

    def release(self) -> None:
        """Releases the lock (idempotent). The file stays, emptied."""
        fd, self._fd = self._fd, None
        _LIVE_LOCKS.discard(self)
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    def __enter__(self) -> "WorkdirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def _refusal(self, h: dict) -> str:
        if not h:
            who = "another process (it has not written its details yet, or is an older version)"
        else:
            here = socket.gethostname()
            host = h.get("host", "?")
            where = f"on host {host}" + ("" if host == here else f" (not this machine, {here})")
            who = (f"pid {h.get('pid', '?')} {where}, started {h.get('started', '?')}, "
                   f"command: {h.get('command', '?')}")
        stop = f"kill {h['pid']}" if h.get("pid") and h.get("host") == socket.gethostname() else "stop it"
        return (f"workdir {self.workdir} is in use by another run: {who}. Two runs on one workdir overwrite each "
                f"other's checkpoints and metrics. Wait for it to finish, {stop}, or use another --workdir. "
                f"(Lock file: {self.path}; it is released automatically when that process exits.)")


def _read_holder(fd: int) -> dict:
    try:
        text = os.pread(fd, 65536, 0).decode("utf-8", "replace").strip()
        return json.loads(text) if text else {}
    except (OSError, ValueError):
        return {}


def read_lock_holder(workdir: str) -> dict | None:
    """The holder info of a *held* lock on ``workdir`` (for tools), or None if the workdir is free."""
    path = os.path.join(os.fspath(workdir), LOCK_NAME)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_holder(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


# ================================================================================================== config store


def _plain(config: Mapping) -> dict:
    to_dict = getattr(config, "to_dict", None)
    d = to_dict() if callable(to_dict) else dict(config)
    return json.loads(json.dumps(d))  # tuples -> lists, a deep copy, and proof it serialises


def atomic_write_json(path: str, obj: Any, *, indent: int | None = 2, sort_keys: bool = True) -> None:
    """Writes ``obj`` as JSON so that a reader (or a kill) sees the old file or the whole new one, never half."""
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=indent, sort_keys=sort_keys)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise
    try:  # the rename itself durable
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


_HISTORY_RE = re.compile(r"^(\d+)-step(\d+)\.json$")


class ConfigStore:
    """``<workdir>/config.json`` (the config of the latest accepted start) and ``<workdir>/configs/`` (every
    accepted start, in order: ``000-step0.json``, ``001-step60.json``, ...). Writes only in :meth:`record`."""

    def __init__(self, workdir: str):
        self.workdir = os.fspath(workdir)
        self.path = os.path.join(self.workdir, CONFIG_NAME)
        self.history_dir = os.path.join(self.workdir, HISTORY_DIR)

    def load(self) -> dict | None:
        """The recorded config, or None when the workdir has none. A file that is not JSON raises ConfigError."""
        try:
            with open(self.path) as f:
                text = f.read()
        except FileNotFoundError:
            return None
        try:
            out = json.loads(text)
        except ValueError as e:
            raise ConfigError(f"{self.path} is not valid JSON ({e}); the accepted configs of this run are in "
                              f"{self.history_dir}/: copy the last one over it, or delete it to skip the "
                              f"resume check") from None
        if not isinstance(out, dict):
            raise ConfigError(f"{self.path} does not hold a config (a JSON object), but a {type(out).__name__}")
        return out

    def history(self) -> list[tuple[int, int, str]]:
        """``[(index, step, path), ...]`` of the recorded starts, oldest first."""
        try:
            names = os.listdir(self.history_dir)
        except FileNotFoundError:
            return []
        rows = []
        for n in names:
            m = _HISTORY_RE.match(n)
            if m:
                rows.append((int(m.group(1)), int(m.group(2)), os.path.join(self.history_dir, n)))
        return sorted(rows)

    def record(self, config: Mapping, step: int) -> str:
        """Stores ``config`` as the workdir's config (atomic: temp file + rename) and appends it to the history
        as ``configs/<NNN>-step<step>.json``; returns that history path. Call it once the run is accepted
        (validated, not refused by the resume check, restored)."""
        data = _plain(config)
        os.makedirs(self.history_dir, exist_ok=True)
        hist = self.history()
        index = hist[-1][0] + 1 if hist else 0
        entry = os.path.join(self.history_dir, f"{index:03d}-step{int(step)}.json")
        atomic_write_json(entry, data)
        atomic_write_json(self.path, data)
        return entry


# ================================================================================================== config comparison

BREAKING, SCHEDULE, HARMLESS = "breaking", "schedule", "harmless"

#: never compared (settings about the comparison itself)
IGNORED_KEYS = ("resume_changes",)
#: keys (exact, or a prefix ending in ".") whose change does not affect the resumed run's result
HARMLESS_KEYS = ("log_every", "eval_every", "eval_steps", "evals.", "checkpoint_every", "keep_checkpoints",
                 "best_metric", "best_mode", "throttle_s", "init_from", "init_from_mode", "init_from_prefix",
                 "sharding.", "guards.",
                 "data.device_prefetch", "workdir")
#: keys that change the optimisation from the resume step on (accepted with resume_changes=schedule)
SCHEDULE_KEYS = ("total_steps", "batch_size", "optimizer.", "seed")
#: keys whose change makes the stored state meaningless for the new config (or unrestorable)
BREAKING_KEYS = ("model.", "task.", "experiment", "family")
#: the last component of a data-location key (under task./data./model.): a moved dataset is harmless
_LOCATION_LEAF = re.compile(r"(^|_)(root|roots|dir|dirs|path|paths|file|files|ann|anns|images|url|cache)$")
_MISSING = object()


def _match(key: str, patterns: Iterable[str]) -> bool:
    return any(key == p or (p.endswith(".") and key.startswith(p)) for p in patterns)


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    out = {}
    if isinstance(d, Mapping):  # an empty group has no leaves: its later fields show up as added keys
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
    else:
        out[prefix[:-1]] = list(d) if isinstance(d, tuple) else d
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b or a == b and type(a) is type(b)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))
    return a == b


def _show(v: Any) -> str:
    if v is _MISSING:
        return "<absent>"
    if isinstance(v, float):
        return f"{v:.4g}"
    return json.dumps(v) if isinstance(v, str) else repr(v)


def _opt_signature(o: Mapping) -> tuple:
    """What decides the *structure* of the optimizer state in ``optim.make_optimizer`` (mirrors its chain): a
    change here means the checkpoint's opt_state cannot be restored into the new optimizer."""
    g = lambda k, d=None: o.get(k, d)
    name = g("name", "sgd")
    kind = "adam" if name in ("adam", "adamw") else name
    wd_on = bool(g("weight_decay", 0.0))
    groups = g("groups") or {}
    gsig = tuple(sorted((str(k), bool(v.get("frozen", False)),
                         bool(g("weight_decay", 0.0) if v.get("weight_decay", -1.0) < 0 else v.get("weight_decay")))
                        for k, v in groups.items() if isinstance(v, Mapping)))
    return (kind, bool(g("momentum", 0.0)) if kind == "sgd" else None, bool(g("grad_clip_norm", 0.0) > 0),
            (g("weight_decay_style", "l2") if wd_on else None), int(g("accum_steps", 1) or 1) > 1, gsig) + (
            (True,) if float(g("ema_decay", 0.0) or 0.0) > 0 else ())  # EMA weights in the train state


def _set_flat(d: dict, key: str, value: Any) -> dict:
    out = json.loads(json.dumps(d))
    node = out
    parts = key.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    if value is _MISSING:
        node.pop(parts[-1], None)
    else:
        node[parts[-1]] = value
    return out


@dataclasses.dataclass
class Change:
    key: str  # dotted
    old: Any  # _MISSING when the key is new
    new: Any  # _MISSING when the key was removed
    kind: str  # BREAKING | SCHEDULE | HARMLESS
    note: str = ""  # what the change does

    def line(self) -> str:
        s = f"{self.key}: {_show(self.old)} -> {_show(self.new)}"
        return f"{s} ({self.note})" if self.note else s


class ResumeConfigError(ConfigError):
    """The workdir's run cannot be resumed under the new config without an explicit ``resume_changes``."""

    def __init__(self, message: str, diff: "ConfigDiff"):
        super().__init__(message)
        self.diff = diff


RESUME_POLICIES = ("refuse", "schedule", "all")


@dataclasses.dataclass
class ConfigDiff:
    """The keys that differ between a workdir's stored config and a new one, classified."""
    changes: list
    step: int | None = None  # the resume step
    lr_note: str = ""  # the learning-rate consequence at ``step`` of the schedule changes ("" if none/unknown)
    workdir: str = ""

    def of(self, kind: str) -> list:
        return [c for c in self.changes if c.kind == kind]

    @property
    def breaking(self) -> list:
        return self.of(BREAKING)

    @property
    def schedule(self) -> list:
        return self.of(SCHEDULE)

    @property
    def harmless(self) -> list:
        return self.of(HARMLESS)

    @property
    def keys(self) -> list:
        return [c.key for c in self.changes]

    def __bool__(self) -> bool:
        return bool(self.changes)

    def describe(self) -> list[str]:
        """One line per change, grouped breaking / schedule / harmless, with the lr consequence."""
        lines = []
        for kind, title in ((BREAKING, "incompatible with the checkpoint"),
                            (SCHEDULE, "change training from the resume step on"), (HARMLESS, "harmless")):
            cs = self.of(kind)
            if cs:
                lines.append(f"{title}:")
                lines += [f"  {c.line()}" for c in cs]
                if kind == SCHEDULE and self.lr_note:
                    lines.append(f"  => {self.lr_note}")
        return lines

    def check(self, policy: str = "refuse") -> list[str]:
        """Raises :class:`ResumeConfigError` unless ``policy`` accepts every change; else returns the lines to
        print (empty when nothing changed). ``policy``: "refuse" (harmless changes only), "schedule" (also
        schedule-affecting ones), "all" (also breaking ones; a restore may still fail if shapes changed)."""
        if policy not in RESUME_POLICIES:
            raise ConfigError(f"resume_changes must be one of {', '.join(RESUME_POLICIES)}, got {policy!r}")
        refused = self.breaking if policy == "schedule" else [] if policy == "all" else self.breaking + self.schedule
        at = f"at step {self.step}" if self.step is not None else ""
        where = f"the run in {self.workdir}" if self.workdir else "the run in this workdir"
        if refused:
            need = "all" if self.breaking and policy != "all" else "schedule"
            how = ["To proceed: use a new --workdir (a fresh run), or restore the old values"]
            if need == "schedule":
                how.append("or, to continue this run with the new values, add --config.resume_changes=schedule")
            else:
                how.append("or, only if the checkpoint still fits the new model/task, add "
                           "--config.resume_changes=all")
            raise ResumeConfigError(
                "\n".join([f"refusing to resume {where} {at}: its config differs from the recorded one "
                           f"({', '.join(c.key for c in refused)}):", *self.describe(), "; ".join(how) + "."]),
                self)
        if not self.changes:
            return []
        accepted = [c for c in self.changes if c.kind != HARMLESS]
        head = (f"resuming {where} {at} with a changed config (resume_changes={policy}):" if accepted
                else f"resuming {where} {at}; config changes that do not affect training:")
        return [head, *self.describe()]


def compare_configs(stored: Mapping, new: Mapping, *, step: int | None = None,
                    lr_at: Callable[[Mapping, int], float] | None = None, workdir: str = "",
                    harmless: Iterable[str] = (), breaking: Iterable[str] = ()) -> ConfigDiff:
    """Classifies the dotted keys whose value differs between ``stored`` (the workdir's config.json) and ``new``.

    * breaking: ``model.*``, ``task.*``, ``experiment``, ``family`` (except data-location leaves such as
      ``task.data_root``, ``*_file``, ``*_dir``, ``*_path``, ``*_ann``, ``*_images``, and eval-only ``eval_*``
      leaves), and ``optimizer.*`` changes that change the optimizer state's structure (sgd<->adam, momentum
      on/off, weight decay on/off or its style, clipping on/off, accumulation on/off, a group frozen);
    * schedule: ``total_steps``, ``batch_size``, ``seed``, other ``optimizer.*``, and any key not classified;
    * harmless: logging / eval / checkpoint cadence, ``keep_checkpoints``, ``best_*``, ``throttle_s``,
      ``init_from*``, ``sharding.*``, ``guards.*``, data locations (plus the patterns in ``harmless``).

    ``lr_at(config, step) -> float`` (the loop's schedule; it receives ``stored`` as a plain dict and ``new``
    as given) lets the message state the learning rate at the resume ``step`` before and after.
    """
    stored_d, new_d = _plain(stored), _plain(new)
    a, b = _flatten(stored_d), _flatten(new_d)
    harmless_p, breaking_p = HARMLESS_KEYS + tuple(harmless), BREAKING_KEYS + tuple(breaking)
    old_sig = _opt_signature(stored_d.get("optimizer", {}) or {})
    changes = []
    for key in sorted(set(a) | set(b)):
        old, new_v = a.get(key, _MISSING), b.get(key, _MISSING)
        if _same(old, new_v) or _match(key, IGNORED_KEYS):
            continue
        leaf = key.rsplit(".", 1)[-1]
        kind, note = SCHEDULE, ""
        if _match(key, harmless_p):
            kind = HARMLESS
        elif key.startswith("optimizer."):
            probe = _set_flat(stored_d, key, new_v)
            if _opt_signature(probe.get("optimizer", {}) or {}) != old_sig:
                kind, note = BREAKING, "changes the structure of the optimizer state in the checkpoint"
            else:
                note = _schedule_note(key, old, new_v, stored_d, step)
        elif _match(key, breaking_p) or key.startswith("data."):
            if _LOCATION_LEAF.search(leaf):
                kind, note = HARMLESS, "data location"
            elif leaf.startswith("eval_") or ".eval_" in key:
                kind, note = HARMLESS, "evaluation only"
            elif key.startswith("data."):
                kind = SCHEDULE
            else:
                kind = BREAKING
        elif _match(key, SCHEDULE_KEYS):
            note = _schedule_note(key, old, new_v, stored_d, step)
        else:
            note = "not a key this check knows: it may change training"
        if kind == BREAKING and not note and key.startswith("model."):
            note = "the checkpoint's parameters were trained for the old model"
        changes.append(Change(key, old, new_v, kind, note))
    diff = ConfigDiff(changes=changes, step=step, workdir=os.fspath(workdir) if workdir else "")
    if diff.schedule and lr_at is not None and step is not None:
        diff.lr_note = _lr_note(lr_at, stored, new, step)
    return diff


def _schedule_note(key: str, old: Any, new: Any, stored: dict, step: int | None) -> str:
    sched = (stored.get("optimizer") or {}).get("schedule", "")
    if key == "total_steps" and isinstance(new, int):
        if step is not None and new <= step:
            return f"the run is already at step {step}: nothing is left to train"
        what = f"the {sched} schedule" if sched and sched != "constant" else "the schedule"
        return f"{what} is recomputed over {new} steps" + (f"; {new - step} steps left" if step is not None else "")
    if key == "batch_size":
        return "each step from here on sees the new number of examples; the learning rate is not rescaled"
    if key == "seed":
        return ("the random streams (data order, augmentation, dropout) from here on differ from the original "
                "run's; the parameters are restored, not re-initialised")
    if key == "optimizer.lr":
        return "the peak learning rate"
    if key == "optimizer.schedule":
        return "a different learning-rate schedule"
    return ""


def _lr_note(lr_at, stored, new, step: int) -> str:
    try:
        before, after = float(lr_at(_plain(stored), step)), float(lr_at(new, step))
    except Exception as e:  # a stored config from an older version may lack fields the schedule needs
        return f"the learning rate at step {step} could not be computed ({type(e).__name__}: {e})"
    if before == after or (math.isclose(before, after, rel_tol=1e-6, abs_tol=0.0)):
        return f"lr at step {step} stays {before:.3g}"
    ratio = f", x{after / before:.3g}" if before and math.isfinite(after / before) else ""
    return f"lr at step {step} becomes {after:.3g} (was {before:.3g}{ratio})"
