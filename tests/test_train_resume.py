"""Preemption: SIGKILL after a checkpoint + restart == uninterrupted (bitwise); SIGTERM saves the current step."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["--config.batch_size=16", "--config.task.image_size=16", "--config.model.width=8",
         "--config.task.train_examples=256", "--config.evals.val.every=0", "--config.log_every=1"]
ENV = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")


def cli(workdir, *extra):
    return [sys.executable, "-m", "hrnet_jax.train", "--experiment=cls_synthetic", f"--workdir={workdir}",
            *SMALL, *extra]


def steps_in(workdir):
    d = os.path.join(workdir, "checkpoints")
    return sorted(int(s) for s in os.listdir(d) if s.isdigit()) if os.path.isdir(d) else []


def load_state(workdir, step):
    from hrnet_jax.training.checkpoint import load_variables
    return load_variables(os.path.join(workdir, "checkpoints", str(step), "state"))


def wait_for(pred, proc, timeout=120):
    t0 = time.time()
    while not pred():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() - t0 < timeout, "timed out"
        time.sleep(0.05)


def test_sigkill_then_restart_is_bitwise_equal(tmp_path):
    """...with JAX's persistent compilation cache on (hrnet_jax.compile_cache): the reference run writes its
    compiled train step there, and the killed run and the restart load it instead of compiling it again."""
    ref, run, cache = tmp_path / "ref", tmp_path / "run", tmp_path / "xla"
    env = dict(ENV, HRNET_JAX_COMPILE_CACHE=str(cache))
    common = ["--config.total_steps=12", "--config.checkpoint_every=4"]
    r = subprocess.run(cli(ref, *common), env=env, cwd=REPO, check=True, capture_output=True, text=True)
    assert f"XLA compilation cache: {cache}" in r.stderr
    steps_cached = lambda: sorted(f for f in os.listdir(cache) if f.startswith("jit_train_step"))
    written = steps_cached()
    assert len(written) == 1, os.listdir(cache)

    p = subprocess.Popen(cli(run, *common, "--config.throttle_s=0.25"), env=env, cwd=REPO,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: 4 in steps_in(run), p)
    p.send_signal(signal.SIGKILL)
    p.wait()
    killed_at = steps_in(run)
    assert max(killed_at) < 12, f"the run finished before it was killed: {killed_at}"

    r = subprocess.run(cli(run, *common), env=env, cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"resumed from" in r.stderr
    assert steps_cached() == written  # same train step, loaded from the cache, not compiled anew
    a, b = load_state(ref, 12), load_state(run, 12)
    flat = lambda t: {"/".join(str(getattr(k, "key", k)) for k in p): v
                      for p, v in __import__("jax").tree_util.tree_leaves_with_path(t)}
    fa, fb = flat(a), flat(b)
    assert fa.keys() == fb.keys() and len(fa) > 5
    for k in fa:
        np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)
    # the logged losses after the restart are the uninterrupted run's too
    rows = lambda wd: {j["step"]: j["loss"] for j in map(json.loads, open(wd / "metrics.jsonl")) if "loss" in j}
    assert rows(run)[12] == rows(ref)[12]


def test_sigterm_saves_current_step(tmp_path):
    run = tmp_path / "run"
    p = subprocess.Popen(cli(run, "--config.total_steps=200", "--config.checkpoint_every=1000",
                             "--config.throttle_s=0.2"),
                         env=ENV, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = run / "metrics.jsonl"
    wait_for(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 3, p)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 75, err[-3000:]   # EX_TEMPFAIL: preempted, requeue
    m = re.search(r"saved checkpoint at step (\d+)", err)
    assert m, err[-3000:]
    step = int(m.group(1))
    assert 3 <= step < 200
    assert steps_in(run) == [step]  # checkpoint_every=1000: only the SIGTERM checkpoint exists
    assert int(load_state(run, step)["step"]) == step
    # a rerun resumes from there
    r = subprocess.run(cli(run, f"--config.total_steps={step + 2}", "--config.checkpoint_every=1000"),
                       env=ENV, cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0 and f"checkpoints/{step} " in r.stderr, r.stderr[-3000:]
    assert steps_in(run) == [step, step + 2]
