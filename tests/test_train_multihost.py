"""Two local processes (jax.distributed on 127.0.0.1, gloo CPU collectives) match one process."""
import json
import os
import socket
import subprocess
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = ["--experiment=cls_synthetic", "--config.batch_size=16", "--config.task.image_size=16",
        "--config.model.width=8", "--config.task.train_examples=256", "--config.task.eval_examples=40",
        "--config.total_steps=4", "--config.log_every=1", "--config.evals.val.every=4", "--config.checkpoint_every=4"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def final_params(workdir):
    from hrnet_jax.training.checkpoint import load_variables
    return load_variables(os.path.join(workdir, "checkpoints", "4", "state"))


def test_two_processes_match_one(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
    port = free_port()
    procs = [subprocess.Popen([sys.executable, "-m", "hrnet_jax.train", *ARGS, f"--workdir={tmp_path}/multi",
                               f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                               f"--process_id={i}"], env=env, cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    single = subprocess.run([sys.executable, "-m", "hrnet_jax.train", *ARGS, f"--workdir={tmp_path}/single",
                             "--config.model.width=8"], env=dict(env, XLA_FLAGS=
                            "--xla_force_host_platform_device_count=2"), cwd=REPO, capture_output=True, text=True)
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-4000:]
    assert single.returncode == 0, single.stderr[-4000:]

    rows = lambda wd: [json.loads(l) for l in open(wd / "metrics.jsonl")]
    multi, one = rows(tmp_path / "multi"), rows(tmp_path / "single")
    assert [r["step"] for r in multi] == [r["step"] for r in one]  # only process 0 wrote (no duplicates)
    np.testing.assert_allclose([r["loss"] for r in multi if "loss" in r], [r["loss"] for r in one if "loss" in r],
                               rtol=1e-5)
    assert [r for r in multi if "val/top1" in r] == [r for r in one if "val/top1" in r]

    import jax
    a, b = final_params(tmp_path / "multi"), final_params(tmp_path / "single")
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a["params"]), jax.tree.leaves(b["params"])):
        rel = np.linalg.norm(x - y) / max(np.linalg.norm(y), 1e-12)
        assert rel <= 1e-5, (jax.tree_util.keystr(path), rel)
