"""Smoke test of ``python -m hrnet_jax.bench`` (structure of the JSON, ratios = JAX / torch); never timings."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from hrnet_jax import bench


def test_ratios_are_jax_over_torch():
    r = bench.ratios({"infer_b1": 30.0, "infer_b4": 10.0, "infer_b4_unfolded": 9.0, "train": 2.0, "compile_s": {}},
                     {"infer_b1": 10.0, "infer_b4": 20.0, "train": 4.0})
    assert r == {"infer_b1": 3.0, "infer_b4": 0.5, "train": 0.5}


def test_device_script_prints_one_command():
    out = subprocess.run([sys.executable, "-m", "hrnet_jax.bench", "--device-script"], capture_output=True,
                         text=True, check=True).stdout.strip()
    assert out == "bash scripts/bench_gpu.sh" and "\n" not in out
    script = (Path(__file__).parent.parent / "scripts" / "bench_gpu.sh").read_text()
    assert "python -m hrnet_jax.bench" in script and "bfloat16" in script and "--torch-compile" in script


def test_cli_json(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("timm")
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "hrnet_jax.bench", "--tiny", "--no-scan", "--models", "pose_hrnet_w32@64x32",
         "--batch", "1,2", "--train-batch", "2", "--warmup", "0", "--iters", "1", "--json", str(out)],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert {"cpu", "cores", "jax", "torch", "device"} <= set(res["machine"])
    (m,) = res["models"]
    assert m["name"] == "pose_hrnet_w32" and m["input_hw"] == [64, 32]
    j, t = m["jax"], m["torch"]
    for k in ("infer_b1", "infer_b2", "train"):
        assert j[k] > 0 and t[k] > 0
        assert m["ratios"][k] == pytest.approx(j[k] / t[k], rel=1e-2)
    assert set(j["compile_s"]) >= {"infer_b1", "infer_b2", "infer_b2_unfolded", "train"}
    assert j["peak_mb"] > 0
    assert "| pose_hrnet_w32 | 64x32 |" in proc.stdout and "Machine:" in proc.stdout
