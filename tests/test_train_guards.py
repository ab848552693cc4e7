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
            "--config.optimizer.warmup_steps=4", "--config.optimizer.schedule=constant")
    assert r.returncode != 0
    m = re.search(r"(loss is (nan|inf)|parameters became non-finite.*?) at step (\d+): training stopped", r.stderr)
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
