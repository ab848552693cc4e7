"""Run integrity (issue 17): one run per workdir, resume under a changed config, config.json only once accepted,
values that cannot be right, divergence that stays finite, the preemption exit code.

Each test reproduces a failure mode the issue reported and checks it against an expectation computed here
(closed-form learning rates, hand-written config keys, real processes holding the lock).
"""
import json
import math
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from hrnet_jax.training.config import ConfigError
from hrnet_jax.training.defaults import default_config
from hrnet_jax.training.guards import EXIT_PREEMPTED, DivergenceGuard, divergence_guard, validate_loop_config
from hrnet_jax.training.workdir import (BREAKING, SCHEDULE, ConfigStore, ResumeConfigError,
                                        WorkdirLock, WorkdirLockedError, compare_configs, read_lock_holder)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=REPO)

# ================================================================================================== D2: the lock

HOLDER = textwrap.dedent("""
    import os, sys, time
    from hrnet_jax.training.workdir import WorkdirLock
    lock = WorkdirLock(sys.argv[1]).acquire()
    if len(sys.argv) > 3 and sys.argv[3] == "fork":   # a data-worker-like child that outlives the parent
        child = os.fork()
        if child == 0:
            time.sleep(60)
            os._exit(0)
        print("CHILD", child, flush=True)
    print("READY", flush=True)
    time.sleep(60)
""")

CONTENDER = textwrap.dedent("""
    import sys
    from hrnet_jax.training.workdir import WorkdirLock, WorkdirLockedError
    try:
        lock = WorkdirLock(sys.argv[1]).acquire()
    except WorkdirLockedError as e:
        print(e, file=sys.stderr)
        sys.exit(3)
    print("ACQUIRED", flush=True)
    lock.release()
""")


def _holder(workdir, *extra):
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(workdir), "--marker-xyz", *extra], env=ENV, cwd=REPO,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    while True:
        line = p.stdout.readline()
        assert line, p.stderr.read()
        lines.append(line.split())
        if line.startswith("READY"):
            return p, lines


def _contend(workdir):
    return subprocess.run([sys.executable, "-c", CONTENDER, str(workdir)], env=ENV, cwd=REPO, capture_output=True,
                          text=True, timeout=60)


def _kill(p):
    if p.poll() is None:
        p.send_signal(signal.SIGKILL)
    p.wait()


def test_second_process_is_refused_naming_the_holder_and_a_killed_holder_does_not_block(tmp_path):
    wd = tmp_path / "run"
    holder, _ = _holder(wd)
    try:
        r = _contend(wd)
        assert r.returncode == 3, (r.stdout, r.stderr)
        msg = r.stderr.strip()
        assert f"pid {holder.pid}" in msg and "is in use by another run" in msg
        assert "--marker-xyz" in msg  # the holder's command line
        assert "started 20" in msg and "on host" in msg  # start time (ISO), host
        assert "--workdir" in msg and len(msg.splitlines()) == 1
        assert read_lock_holder(wd)["pid"] == holder.pid
    finally:
        _kill(holder)  # SIGKILL: no chance to clean up; the kernel drops the flock
    assert read_lock_holder(wd) is None
    r = _contend(wd)
    assert r.returncode == 0 and "ACQUIRED" in r.stdout, r.stderr


def test_forked_child_of_a_killed_holder_does_not_keep_the_lock(tmp_path):
    wd = tmp_path / "run"
    holder, lines = _holder(wd, "fork")
    child = int(next(l for l in lines if l[0] == "CHILD")[1])
    try:
        assert _contend(wd).returncode == 3
        _kill(holder)
        r = _contend(wd)
        assert r.returncode == 0, r.stderr
    finally:
        _kill(holder)
        try:
            os.kill(child, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_lock_in_one_process_release_and_disabled(tmp_path):
    a = WorkdirLock(tmp_path, command=["train", "--x"]).acquire()
    with pytest.raises(WorkdirLockedError, match=f"pid {os.getpid()}") as e:
        WorkdirLock(tmp_path).acquire()
    assert e.value.holder["command"] == "train --x"
    assert WorkdirLock(tmp_path, enabled=False).acquire().held is False  # processes > 0 of a multi-host run
    a.release()
    a.release()  # idempotent
    with WorkdirLock(tmp_path) as b:
        assert b.held
    assert not b.held and read_lock_holder(tmp_path) is None
    WorkdirLock(tmp_path).acquire()  # not kept in a variable: still held (for the run's lifetime)
    import gc
    gc.collect()
    assert read_lock_holder(tmp_path)["pid"] == os.getpid()


# ================================================================================================== D3: compare


def cosine_lr(cfg, step):
    """Closed form (independent of optim.py): linear warmup, then cosine from lr to end_lr."""
    o, total = cfg["optimizer"], cfg["total_steps"]
    warm = o["warmup_steps"]
    if step < warm:
        return o["warmup_init_lr"] + (o["lr"] - o["warmup_init_lr"]) * step / warm
    t = min(step - warm, total - warm) / max(total - warm, 1)
    return o["end_lr"] + (o["lr"] - o["end_lr"]) * 0.5 * (1 + math.cos(math.pi * t))


def base_cfg(**task):
    return default_config(total_steps=60, batch_size=32, log_every=10, checkpoint_every=20,
                          model=dict(name="tiny_cnn", width=16),
                          optimizer=dict(name="adam", lr=2e-3, schedule="cosine", end_lr=2.5e-5),
                          task=dict(num_classes=8, image_size=32, data_root="data/x", **task))


def test_finished_run_extended_is_refused_with_the_lr_it_would_get():
    stored = json.loads(json.dumps(base_cfg().to_dict()))  # as config.json holds it (tuples -> lists)
    new = base_cfg().override(["total_steps=70"])
    d = compare_configs(stored, new, step=60, lr_at=cosine_lr)
    assert [(c.key, c.old, c.new, c.kind) for c in d.changes] == [("total_steps", 60, 70, SCHEDULE)]
    was, becomes = cosine_lr(stored, 60), cosine_lr(new, 60)
    assert math.isclose(was, 2.5e-5) and becomes > 4 * was  # the silent jump of the issue
    with pytest.raises(ResumeConfigError) as e:
        d.check()  # default policy: refuse
    msg = str(e.value)
    assert "total_steps: 60 -> 70 (the cosine schedule is recomputed over 70 steps" in msg
    assert f"lr at step 60 becomes {becomes:.3g} (was {was:.3g}" in msg
    assert "--config.resume_changes=schedule" in msg and "new --workdir" in msg
    lines = d.check("schedule")  # stated explicitly: accepted, and said
    assert any("becomes" in l for l in lines) and "resume_changes=schedule" in lines[0]


def test_lr_at_through_optim_matches_closed_form():
    """The lr_at the loop is advised to pass (optim.make_schedule) gives the closed-form numbers."""
    from hrnet_jax.training import optim
    from hrnet_jax.training.config import Config

    def lr_at(cfg, step):
        c = Config(cfg)
        return float(optim.make_schedule(c.optimizer, c.total_steps)(step // max(c.optimizer.accum_steps, 1)))

    stored = json.loads(json.dumps(base_cfg().to_dict()))
    new = base_cfg().override(["total_steps=70"])
    for cfg in (stored, new):
        assert math.isclose(lr_at(cfg, 60), cosine_lr(cfg, 60), rel_tol=1e-5, abs_tol=1e-12)
    d = compare_configs(stored, new, step=60, lr_at=lr_at)
    assert f"becomes {cosine_lr(new, 60):.3g}" in d.lr_note


def test_batch_size_and_optimizer_changes_are_schedule_changes_named_with_values():
    stored = base_cfg().to_dict()
    new = base_cfg().override(["batch_size=64", "optimizer.lr=1e-3", "seed=3"])
    d = compare_configs(stored, new, step=40, lr_at=cosine_lr)
    assert {c.key: c.kind for c in d.changes} == {"batch_size": SCHEDULE, "optimizer.lr": SCHEDULE,
                                                  "seed": SCHEDULE}
    with pytest.raises(ResumeConfigError) as e:
        d.check("refuse")
    msg = str(e.value)
    for text in ("batch_size: 32 -> 64", "optimizer.lr: 0.002 -> 0.001", "seed: 0 -> 3",
                 f"becomes {cosine_lr(new.to_dict(), 40):.3g}"):
        assert text in msg
    assert d.check("schedule")


def test_model_task_and_optimizer_structure_changes_are_breaking():
    stored = base_cfg().to_dict()
    new = base_cfg().override(["model.width=32", "task.num_classes=10", "optimizer.name=sgd"])
    d = compare_configs(stored, new, step=60)
    assert {c.key: c.kind for c in d.changes} == {"model.width": BREAKING, "task.num_classes": BREAKING,
                                                  "optimizer.name": BREAKING}
    for policy in ("refuse", "schedule"):
        with pytest.raises(ResumeConfigError) as e:
            d.check(policy)
        assert "model.width: 16 -> 32" in str(e.value) and "task.num_classes: 8 -> 10" in str(e.value)
        assert "--config.resume_changes=all" in str(e.value)
    assert d.check("all")
    # momentum on/off and clipping on/off change the opt_state pytree; nesterov / lr do not
    sgd = base_cfg().override(["optimizer.name=sgd"]).to_dict()
    kinds = {c.key: c.kind for c in compare_configs(sgd, base_cfg().override(
        ["optimizer.name=sgd", "optimizer.momentum=0", "optimizer.grad_clip_norm=1", "optimizer.nesterov=true",
         "optimizer.b1=0.5"])).changes}
    assert kinds == {"optimizer.momentum": BREAKING, "optimizer.grad_clip_norm": BREAKING,
                     "optimizer.nesterov": SCHEDULE, "optimizer.b1": SCHEDULE}


def test_cadence_paths_and_new_keys_are_harmless():
    stored = base_cfg().to_dict()
    new = base_cfg().override(["log_every=5", "checkpoint_every=7", "keep_checkpoints=9", "throttle_s=0.5",
                               "task.data_root=/elsewhere", "init_from=/w"])
    new_d = new.to_dict()
    new_d["guards"] = {**new_d.get("guards", {}), "a_new_guard": 1}  # a key added since that run
    new_d["resume_changes"] = "schedule"  # never compared
    d = compare_configs(stored, new_d, step=60)
    assert {c.key for c in d.harmless} == {"log_every", "checkpoint_every", "keep_checkpoints", "throttle_s",
                                           "task.data_root", "init_from", "guards.a_new_guard"}
    assert not d.breaking and not d.schedule
    lines = d.check("refuse")  # does not raise; says what changed
    assert any("task.data_root" in l for l in lines)
    assert not compare_configs(stored, json.loads(json.dumps(stored)))  # lists vs tuples: no change


# ================================================================================================== D4: the store


def test_config_json_only_on_record_with_history(tmp_path):
    store = ConfigStore(tmp_path)
    assert store.load() is None
    first = base_cfg()
    store.record(first, 0)
    assert store.load() == json.loads(json.dumps(first.to_dict()))
    before = (tmp_path / "config.json").read_bytes()
    # a rejected command: validation and the resume check fail; nothing has written anything
    bad = base_cfg().override(["model.width=99", "optimizer.lr=-1"])
    with pytest.raises(ConfigError):
        validate_loop_config(bad, 1, 1)
    with pytest.raises(ResumeConfigError):
        compare_configs(store.load(), bad, step=60).check()
    assert (tmp_path / "config.json").read_bytes() == before
    # accepted restarts append to the history, in order
    store.record(base_cfg().override(["total_steps=70"]), 60)
    store.record(base_cfg().override(["total_steps=80"]), 70)
    hist = store.history()
    assert [(i, s, os.path.basename(p)) for i, s, p in hist] == [
        (0, 0, "000-step0.json"), (1, 60, "001-step60.json"), (2, 70, "002-step70.json")]
    assert json.load(open(hist[1][2]))["total_steps"] == 70
    assert store.load()["total_steps"] == 80


def test_record_is_atomic(tmp_path, monkeypatch):
    store = ConfigStore(tmp_path)
    store.record(base_cfg(), 0)
    before = (tmp_path / "config.json").read_bytes()

    def crash(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        store.record(base_cfg().override(["total_steps=70"]), 60)
    monkeypatch.undo()
    assert (tmp_path / "config.json").read_bytes() == before
    leftovers = [f for d in (tmp_path, tmp_path / "configs") for f in os.listdir(d) if f.endswith(".tmp")]
    assert not leftovers
    (tmp_path / "config.json").write_text("{ not json")
    with pytest.raises(ConfigError, match="config.json is not valid JSON"):
        store.load()


# ================================================================================================== D7: bad values

BAD = [
    ("optimizer.lr", -1.0), ("optimizer.lr", 0.0), ("optimizer.lr", float("nan")), ("keep_checkpoints", 0),
    ("batch_size", 0), ("total_steps", 0), ("log_every", 0), ("checkpoint_every", -5),
    ("optimizer.warmup_steps", -1), ("optimizer.weight_decay", -1e-4),
    ("optimizer.momentum", 1.0), ("optimizer.grad_clip_norm", -1.0), ("optimizer.accum_steps", 0),
    ("optimizer.schedule", "cosin"), ("optimizer.name", "adamx"), ("optimizer.weight_decay_style", "L2"),
    ("best_mode", "maximum"), ("batch_size", 30), ("task.eval_batch_size", 50),
]


@pytest.mark.parametrize("key,value", BAD, ids=[f"{k}={v}" for k, v in BAD])
def test_bad_value_is_refused_naming_the_key(key, value):
    cfg = base_cfg(eval_batch_size=0)
    validate_loop_config(cfg, 4, 1)  # the base is fine
    cfg = cfg.override({key: value})
    with pytest.raises(ConfigError) as e:
        validate_loop_config(cfg, 4, 1)
    lines = str(e.value).splitlines()
    assert len(lines) == 2, lines  # header + exactly this problem
    assert lines[1].strip().startswith(f"{key} = {value!r}:")


def test_every_problem_listed_and_process_divisibility():
    cfg = base_cfg().override({"optimizer.lr": 0.0, "keep_checkpoints": 0, "batch_size": 0})
    with pytest.raises(ConfigError) as e:
        validate_loop_config(cfg, 1, 1)
    assert str(e.value).startswith("3 invalid config values")
    for k in ("optimizer.lr = 0.0", "keep_checkpoints = 0", "batch_size = 0"):
        assert k in str(e.value)
    with pytest.raises(ConfigError, match="divisible by the 3 processes"):
        validate_loop_config(base_cfg().override({"batch_size": 32}), 2, 3)
    with pytest.raises(ConfigError, match="multiple of optimizer.accum_steps"):
        validate_loop_config(base_cfg().override({"optimizer.accum_steps": 7}), 1, 1)


# ================================================================================================== D8: divergence


def test_guard_trips_on_finite_explosion_and_names_last_sane_checkpoint():
    # Adam at lr 1e6 (issue): the loss falls a little, then explodes by orders of magnitude, staying finite
    losses = [1.0 - 0.05 * i for i in range(10)] + [10.0 ** e for e in range(6, 22)]
    g = DivergenceGuard(window=5, factor=1e4)
    tripped = None
    for step, loss in enumerate(losses, start=1):
        msg = g.observe(step, loss, param_norm=50.0)
        if msg:
            tripped = step
            break
        if step % 4 == 0:
            g.note_checkpoint(step)
    assert tripped == 11 and "loss 1e+06 at step 11" in msg  # the first value > 1e4 x the reference (~1)
    assert g.last_sane_checkpoint() == 8 and g.last_sane_checkpoint(confirmed=True) == 8
    assert not g.is_sane(1e6) and g.is_sane(0.7)


def test_guard_sgd_case_never_names_a_diverged_checkpoint():
    """SGD (issue): the loss creeps up ~10x per logged row to 7.6e16; checkpoints keep being written. The NaN
    guard's "last good" was the latest checkpoint; the divergence guard names one from before the blow-up."""
    g = DivergenceGuard(window=10, factor=1e4)
    loss, step, tripped = 2.3, 0, None
    while tripped is None and step < 200:
        step += 1
        loss = loss * 0.98 if step < 20 else loss * 10
        tripped = g.observe(step, loss, param_norm=40 + (0 if step < 20 else 5 * (step - 19)))
        if tripped is None:
            g.note_checkpoint(step)  # checkpoint_every=1: the worst case
    assert tripped and step < 30
    last = g.last_sane_checkpoint()
    assert last == step - 1
    # the named checkpoint's loss is within the factor of the start; none after it was noted
    assert 2.3 * 0.98 ** 19 * 10 ** (last - 19) <= 1e4 * 2.3


def test_guard_quiet_on_noisy_decreasing_and_converged_losses():
    import random
    rng = random.Random(0)
    g = DivergenceGuard(window=20, factor=1e4)
    for step in range(1, 3001):
        loss = 2.3 * math.exp(-step / 300) + 1e-6
        loss *= 1 + 0.5 * rng.uniform(-1, 1)
        if step % 97 == 0:
            loss = min(loss * 300, 3.0)  # rare spikes, a near-zero loss jumping to ~1
        assert g.observe(step, loss, param_norm=30 + step * 0.01) is None, (step, loss)
        if step % 100 == 0:
            g.note_checkpoint(step)
    assert g.last_sane_checkpoint() == 3000 and g.last_sane_checkpoint(confirmed=True) == 2900
    # a resumed run near convergence keeps the original scale through prime()
    r = DivergenceGuard(window=20, factor=1e4)
    r.prime([{"step": 10, "loss": 2.3, "param_norm": 30.0}])
    assert r.observe(3001, 1e-5, 60.0) is None and r.observe(3002, 0.9, 60.0) is None


def test_guard_non_finite_and_parameter_norm_and_off():
    g = DivergenceGuard(window=3, factor=1e4)
    assert g.observe(1, 2.0, 50.0) is None
    assert "parameter norm 1e+06 at step 2" in g.observe(2, 2.0, 1e6)  # Adam at lr 1e6: params jump first
    g = DivergenceGuard()
    assert "loss is nan at step 1" in g.observe(1, float("nan"), 1.0)
    assert "parameter norm is inf" in DivergenceGuard().observe(1, 1.0, float("inf"))
    off = DivergenceGuard(factor=0)
    assert off.observe(1, 1.0, 1.0) is None and off.observe(2, 1e30, 1e30) is None
    assert off.observe(3, float("inf")) is not None


def test_guard_config_keys():
    cfg = base_cfg().to_dict()
    assert divergence_guard(cfg).factor == 1e4 and divergence_guard(cfg).window == 20  # keys absent: defaults
    cfg["guards"] = {"divergence_factor": 0.5, "divergence_window": 0}
    with pytest.raises(ConfigError) as e:
        validate_loop_config(cfg, 1, 1)
    assert "guards.divergence_factor = 0.5" in str(e.value) and "guards.divergence_window = 0" in str(e.value)
    cfg["guards"] = {"divergence_factor": 100.0, "divergence_window": 5}
    validate_loop_config(cfg, 1, 1)
    g = divergence_guard(cfg)
    assert (g.factor, g.window) == (100.0, 5)


def test_exit_preempted_is_ex_tempfail():
    assert EXIT_PREEMPTED == 75 and EXIT_PREEMPTED not in (0, 1, 2)
