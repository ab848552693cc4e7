"""Bad input through the CLI: each case exits non-zero with its message, before any training compute."""
import json
import re
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
SMALL = ["--config.batch_size=16", "--config.task.image_size=16", "--config.model.width=8",
         "--config.task.train_examples=256", "--config.evals.val.every=0"]


def cli(*args):
    return subprocess.run([sys.executable, "-m", "hrnet_jax.train", *args], env=ENV, cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def test_unknown_experiment_lists_available(tmp_path):
    r = cli("--experiment=cls_synthtic", f"--workdir={tmp_path}")
    assert r.returncode != 0
    assert "unknown experiment 'cls_synthtic'" in r.stderr
    assert "Did you mean cls_synthetic" in r.stderr and "Available: " in r.stderr
    assert not os.listdir(tmp_path)


def test_unknown_key_names_it_and_suggests(tmp_path):
    r = cli("--experiment=cls_synthetic", f"--workdir={tmp_path}", "--config.optimizer.learning_rate=0.1")
    assert r.returncode != 0
    assert "unknown config key 'optimizer.learning_rate'" in r.stderr
    r = cli("--experiment=cls_synthetic", f"--workdir={tmp_path}", "--config.total_step=5")
    assert r.returncode != 0
    assert "'total_step'" in r.stderr and "did you mean 'total_steps'" in r.stderr
    r = cli("--experiment=cls_synthetic", f"--workdir={tmp_path}", "--confg.total_steps=5")
    assert r.returncode != 0 and "unknown flag --confg.total_steps" in r.stderr


def test_wrong_type(tmp_path):
    r = cli("--experiment=cls_synthetic", f"--workdir={tmp_path}", "--config.total_steps=ten")
    assert r.returncode != 0
    assert "bad value for total_steps: 'ten' is not a int" in r.stderr
    r = cli("--experiment=cls_synthetic", f"--workdir={tmp_path}", "--config.optimizer.nesterov=maybe")
    assert r.returncode != 0 and "optimizer.nesterov" in r.stderr


def test_unwritable_workdir_fails_before_compute(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    r = cli("--experiment=cls_synthetic", f"--workdir={blocker}/run", *SMALL)
    assert r.returncode != 0
    assert "is not writable" in r.stderr and "Traceback" not in r.stderr


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    r = cli("--experiment=cls_synthetic", f"--workdir={tmp_path}", *SMALL, "--config.total_steps=40",
            "--config.checkpoint_every=2", "--config.log_every=1", "--config.optimizer.lr=1e8",
            "--config.optimizer.warmup_steps=4", "--config.optimizer.schedule=constant",
            "--config.guards.divergence_factor=0")   # only the non-finite check
    assert r.returncode != 0
    m = re.search(r"(is (nan|inf)|non-finite.*?) at step (\d+).*: training stopped", r.stderr)
    assert m and "Last good checkpoint" in r.stderr, r.stderr[-2000:]
    bad_step = int(m.group(3))
    from hrnet_jax.training.checkpoint import load_variables
    import numpy as np
    ckpts = sorted(int(s) for s in os.listdir(tmp_path / "checkpoints") if s.isdigit())
    assert ckpts and max(ckpts) < bad_step
    state = load_variables(str(tmp_path / "checkpoints" / str(max(ckpts)) / "state"))
    import jax
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state["params"]))
    assert f"step {max(ckpts)}" in r.stderr


def test_held_workdir_is_refused_naming_the_holder_and_a_killed_run_does_not_block(tmp_path):
    import time
    from hrnet_jax.training.workdir import read_lock_holder
    slow = subprocess.Popen([sys.executable, "-m", "hrnet_jax.train", "--experiment=cls_synthetic",
                             f"--workdir={tmp_path}", *SMALL, "--config.total_steps=400",
                             "--config.throttle_s=0.2"], env=ENV, cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):
            if read_lock_holder(str(tmp_path)):
                break
            time.sleep(0.1)
        r = cli("--experiment=cls_synthetic", f"--workdir={tmp_path}", *SMALL, "--config.total_steps=2")
        assert r.returncode == 2 and str(slow.pid) in r.stderr and "Traceback" not in r.stderr, r.stderr[-1500:]
    finally:
        slow.kill()   # SIGKILL: the kernel drops its lock
        slow.wait()
    r = cli("--experiment=cls_synthetic", f"--workdir={tmp_path}", *SMALL, "--config.total_steps=2",
            "--config.checkpoint_every=1")
    assert r.returncode == 0, r.stderr[-2000:]


def test_rejected_commands_keep_the_stored_config_and_name_keys(tmp_path):
    args = ["--experiment=cls_synthetic", f"--workdir={tmp_path}", *SMALL, "--config.total_steps=2",
            "--config.checkpoint_every=2"]
    assert cli(*args).returncode == 0
    stored = (tmp_path / "config.json").read_bytes()
    r = cli(*args, "--config.batch_size=0", "--config.optimizer.lr=-1", "--config.keep_checkpoints=0")
    assert r.returncode != 0 and "Traceback" not in r.stderr
    for key in ("batch_size = 0", "optimizer.lr = -1", "keep_checkpoints = 0"):
        assert key in r.stderr, r.stderr
    r = cli(*args, "--config.model.width=16")   # a different network: the checkpoint cannot be resumed
    assert r.returncode != 0 and "model.width: 8 -> 16" in r.stderr, r.stderr[-2000:]
    assert (tmp_path / "config.json").read_bytes() == stored
    r = cli(*args[:-2], "--config.total_steps=3", "--config.checkpoint_every=3")   # more steps: stated
    assert r.returncode == 0 and "total_steps: 2 -> 3" in r.stderr and "lr at step 2" in r.stderr, r.stderr[-2000:]
    assert len(os.listdir(tmp_path / "configs")) == 2


def test_finite_divergence_stops_and_names_a_sane_checkpoint(tmp_path):
    r = cli("--experiment=cls_synthetic", f"--workdir={tmp_path}", *SMALL, "--config.total_steps=60",
            "--config.checkpoint_every=2", "--config.log_every=1", "--config.optimizer.name=adam",
            "--config.optimizer.lr=1e-2", "--config.optimizer.warmup_steps=0", "--config.optimizer.schedule=step",
            "--config.optimizer.boundaries=(6,)", "--config.optimizer.decay_factor=1e8",   # lr 1e6 after step 6
            "--config.optimizer.weight_decay=0")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    m = re.search(r"Last good checkpoint: step (\d+)", r.stderr)
    assert m, r.stderr[-2000:]
    rows = {x["step"]: x for x in map(json.loads, open(tmp_path / "metrics.jsonl")) if "loss" in x}
    assert int(m.group(1)) >= 2 and rows[int(m.group(1))]["loss"] < 100.0   # taken before the blow-up
