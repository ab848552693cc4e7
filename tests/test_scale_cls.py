"""Scale without a pod, on a narrow HRNet-C reading a TFDS (ArrayRecord) dataset through grain:

a checkpoint written on 1 process x 8 CPU devices restores on 2 processes x 4 devices (jax.distributed on
127.0.0.1) and on 1 process x 2 devices, and both continue with the same losses, eval top-1/top-5 (computed on
device, reduced across processes), EMA metrics and parameters as the 1 x 8 run. (A fresh 2-process run against a
1-process one: tests/test_train_multihost.py.)
"""
import json
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest

from hrnet_jax.data.synthetic.classification import ensure_cls_demo

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = dict(num_train=64, num_val=24, min_side=48, max_side=80, seed=1)


def _args(data_dir):
    return ["--experiment=cls_demo", f"--config.task.data_dir={data_dir}", "--config.task.synthetic={}",
            "--config.batch_size=16", "--config.task.eval_batch_size=16", "--config.task.image_size=32",
            "--config.task.eval_resize=37", "--config.task.eval_crop=32", "--config.task.read_threads=1",
            "--config.total_steps=4", "--config.log_every=1", "--config.evals.val.every=4",
            "--config.checkpoint_every=2", "--config.keep_checkpoints=3", "--config.optimizer.warmup_steps=0",
            "--config.optimizer.lr=0.01",
            "--config.optimizer.ema_decay=0.5"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(devices: int, cache: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               HRNET_JAX_COMPILE_CACHE=cache, HRNET_JAX_NO_REEXEC="1")
    return env


def _start(args, workdir, processes: int, devices: int, cache: str):
    cmd = [sys.executable, "-m", "hrnet_jax.train", *args, f"--workdir={workdir}"]
    if processes == 1:
        return [subprocess.Popen(cmd, env=_env(devices, cache), cwd=REPO, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)]
    port = _free_port()
    return [subprocess.Popen(cmd + [f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={processes}",
                                    f"--process_id={i}"], env=_env(devices, cache), cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(processes)]


def _wait(procs):
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-4000:]


def _rows(workdir):
    return [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]


def _losses(rows, after=0):
    return {r["step"]: r["loss"] for r in rows if "loss" in r and r["step"] > after}


def _evals(rows):
    return {k: v for r in rows for k, v in r.items() if k.startswith(("val/", "val_ema/"))}


def _params(workdir, step):
    from hrnet_jax.training.checkpoint import load_variables
    return load_variables(os.path.join(workdir, "checkpoints", str(step), "state"))


def _resume_copy(src, dst):
    """The workdir of ``src`` as it was at step 2 (checkpoint 2 only, metric rows up to step 2)."""
    shutil.copytree(src, dst)
    shutil.rmtree(os.path.join(dst, "checkpoints", "4"))
    rows = [r for r in _rows(src) if r["step"] <= 2]
    with open(os.path.join(dst, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


def _assert_params_close(a, b, tol):
    import jax
    xa, xb = jax.tree.leaves(a["params"]), jax.tree.leaves(b["params"])
    num = np.sqrt(sum(float(np.sum((x - y) ** 2)) for x, y in zip(xa, xb)))
    den = np.sqrt(sum(float(np.sum(y ** 2)) for y in xb))
    assert num / den <= tol, num / den
    ea, eb = jax.tree.leaves(a["ema"]), jax.tree.leaves(b["ema"])  # the EMA travels with the checkpoint
    assert len(ea) == len(eb) > 0


def test_one_by_eight_restores_on_two_by_four_and_one_by_two_and_continues_identically(tmp_path):
    data = str(tmp_path / "data")
    ensure_cls_demo(data, quiet=True, **SMALL)
    args, cache = _args(data), "off"
    a, c, d = (str(tmp_path / n) for n in ("a_1x8", "c_resume_2x4", "d_resume_1x2"))

    _wait(_start(args, a, 1, 8, cache))  # steps 1-4 on 1 process x 8 devices, checkpoints at 2 and 4
    ra = _rows(a)
    la, ea = _losses(ra), _evals(ra)
    assert sorted(la) == [1, 2, 3, 4]
    assert {"val/top1", "val/top5", "val_ema/top1", "val_ema/top5"} <= set(ea)

    # the step-2 checkpoint continued on 2 processes x 4 devices and on 1 process x 2 devices (restores skip
    # initialisation, so these runs compile only their train and eval steps)
    _resume_copy(a, c)
    _resume_copy(a, d)
    _wait(_start(args, c, 2, 4, cache) + _start(args, d, 1, 2, cache))
    for wd, tol in ((c, 1e-4), (d, 1e-4)):
        rows = _rows(wd)
        lr = _losses(rows, after=2)
        assert sorted(lr) == [3, 4], rows
        np.testing.assert_allclose([lr[3], lr[4]], [la[3], la[4]], rtol=1e-5)     # the same losses
        assert _evals(rows) == pytest.approx(ea, abs=1e-6)   # top-1/top-5 (raw and EMA) reduced across processes
        _assert_params_close(_params(wd, 4), _params(a, 4), tol)
    assert [r["step"] for r in _rows(c)] == [r["step"] for r in ra]   # only process 0 of 2 wrote rows
