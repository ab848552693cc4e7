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


def test_compile_flops_count_a_convolution_by_hand():
    """The flops come from the lowered HLO (on GPU the compiled module hides cuDNN convs in custom calls)."""
    import jax
    import jax.numpy as jnp
    x = jnp.zeros((2, 16, 12, 8))
    w = jnp.zeros((3, 3, 8, 5))
    f = jax.jit(lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                                          dimension_numbers=("NHWC", "HWIO", "NHWC")))
    _, seconds, flops = bench._compile(f, x, w)
    # XLA counts the taps that fall inside the image: 3 per row/column less the 2 border ones that hit padding
    taps = (3 * 16 - 2) * (3 * 12 - 2)
    assert flops == 2 * 2 * 8 * 5 * taps and seconds > 0  # 2 flops per multiply-add, batch 2, 8 -> 5 channels


def test_report_of_a_partial_json_computes_the_ratios(tmp_path, capsys):
    """A run stopped during torch.compile leaves a partial entry; --report still prints jax/torch ratios."""
    res = {"machine": {"cpu": "c", "cores": 1, "device": "gpu:X", "python": "3", "jax": "j", "flax": "f",
                       "xla_flags": "", "load_at_start": 0.0},
           "config": {"batches": [1, 8], "train_batch": 8, "dtype": "bfloat16"},
           "models": [{"name": "pose_hrnet_w32", "input_hw": [256, 192], "load": 0.1,
                       "jax": {"infer_b1": 30.0, "infer_b8": 400.0, "train": 90.0, "compile_s": {}, "gflops": {}},
                       "torch": {"infer_b1": 10.0, "infer_b8": 100.0, "train": 45.0},
                       "torch_compile": {"infer_b1": 20.0}}]}
    path = tmp_path / "partial.json"
    path.write_text(json.dumps(res))
    bench.main(["--report", str(path)])
    out = capsys.readouterr().out
    row, = [ln for ln in out.splitlines() if ln.startswith("| pose_hrnet_w32") and "400" in ln]
    assert "| 3.00 |" in row and "| 4.00 |" in row and "| 2.00 |" in row
    crow, = [ln for ln in out.splitlines() if ln.startswith("| pose_hrnet_w32") and "400" not in ln]
    assert crow.split("|")[3:5] == [" 20.0 ", " 1.50 "]


def test_device_script_prints_one_command():
    out = subprocess.run([sys.executable, "-m", "hrnet_jax.bench", "--device-script"], capture_output=True,
                         text=True, check=True).stdout.strip()
    assert out == "bash scripts/bench_gpu.sh" and "\n" not in out
    script = (Path(__file__).parent.parent / "scripts" / "bench_gpu.sh").read_text()
    assert "-m hrnet_jax.bench" in script and "bfloat16" in script and "--torch-compile" in script


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
    assert res["machine"]["jax_in_torch_process"] is False  # torch measured apart from JAX's threads
    (m,) = res["models"]
    assert m["name"] == "pose_hrnet_w32" and m["input_hw"] == [64, 32]
    j, t = m["jax"], m["torch"]
    for k in ("infer_b1", "infer_b2", "train"):
        assert j[k] > 0 and t[k] > 0
        assert m["ratios"][k] == pytest.approx(j[k] / t[k], rel=1e-2)
    assert set(j["compile_s"]) >= {"infer_b1", "infer_b2", "infer_b2_unfolded", "train"}
    assert j["peak_mb"] > 0
    assert "| pose_hrnet_w32 | 64x32 |" in proc.stdout and "Machine:" in proc.stdout


def test_inference_compiler_options_keep_convs_off_ynnpack(monkeypatch):
    """The CPU inference options compile (a renamed or removed XLA option fails here, not in a user's run), move
    convolutions off YNNPACK, and leave the numbers unchanged; a user's own XLA_FLAGS setting wins."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from hrnet_jax import xla_options

    def f(x, w):
        return jax.lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((4, 56, 56, 32), np.float32))
    w = jnp.asarray(rng.standard_normal((3, 3, 32, 32), np.float32))
    opts = xla_options.inference("cpu")
    assert opts and xla_options.inference("gpu") == {}
    tuned = jax.jit(lambda x, w: f(x, w), compiler_options=opts).lower(x, w).compile()
    default = jax.jit(lambda x, w: f(x, w)).lower(x, w).compile()
    assert "__ynn_fusion" in default.as_text() and "__ynn_fusion" not in tuned.as_text()
    ref = np.asarray(jax.jit(f)(x, w))
    np.testing.assert_allclose(np.asarray(tuned(x, w)), ref, rtol=1e-5, atol=1e-4)
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=")
    assert xla_options.inference("cpu") == {}


def test_torch_counterparts_of_the_segmentation_heads_have_the_official_parameter_counts():
    """The bench's PyTorch HRNetV2 and HRNetV2 + OCR (timm backbone + heads written in bench.py) have exactly
    the parameter counts derived from the official seg_hrnet.py / seg_hrnet_ocr.py W48 models (reference 6.4)."""
    from hrnet_jax.bench import build_torch_model
    seg, _ = build_torch_model("segmentation", "hrnet_w48", 19)
    ocr, _ = build_torch_model("ocr", "hrnet_w48", 19)
    assert sum(p.numel() for p in seg.parameters()) == 65_859_379
    assert sum(p.numel() for p in ocr.parameters()) == 70_372_678
