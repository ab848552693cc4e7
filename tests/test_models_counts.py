"""Parameter and MAC counts against the published numbers (hrnet-reference.md sections 6.1-6.4)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hrnet_jax import models
from hrnet_jax.summary import main as summary_main, summarize

# Exact integers from the reference (re-derived there and matching the READMEs' 13.2M, 21.3M, ... rounding).
PARAMS = {
    "hrnet_w18_small_v1": 13_187_464, "hrnet_w18_small_v2": 15_597_464, "hrnet_w18": 21_299_004,
    "hrnet_w30": 37_712_220, "hrnet_w32": 41_232_680, "hrnet_w40": 57_557_160, "hrnet_w44": 67_064_984,
    "hrnet_w48": 77_469_864, "hrnet_w64": 128_059_944,
    "pose_hrnet_w32": 28_536_113, "pose_hrnet_w48": 63_595_745,
    "seg_hrnet_w48": 65_859_379, "seg_hrnet_w18_small_v1": 1_540_819, "seg_hrnet_w18_small_v2": 3_939_579,
    "seg_hrnet_ocr_w48": 70_372_678,
}

# Published "GFLOPs" (conv+linear MACs / 2^30) from the official READMEs.
GFLOPS = [
    ("hrnet_w18_small_v1", (224, 224), 1.49), ("hrnet_w18_small_v2", (224, 224), 2.42),
    ("hrnet_w18", (224, 224), 3.99), ("hrnet_w32", (224, 224), 8.31), ("hrnet_w48", (224, 224), 16.1),
    ("hrnet_w64", (224, 224), 26.9),
    ("pose_hrnet_w32", (256, 192), 7.1), ("pose_hrnet_w32", (384, 288), 16.0),
    ("pose_hrnet_w48", (256, 192), 14.6), ("pose_hrnet_w48", (384, 288), 32.9),
    ("seg_hrnet_w48", (1024, 2048), 696.2),
]


def _n_params(model, hw=(64, 64)):
    v = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, *hw, 3))))
    return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(v["params"]))


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_param_count_matches_reference(name):
    assert _n_params(models.create(name)) == PARAMS[name]


def test_param_count_same_scanned_and_unrolled():
    assert _n_params(models.create("hrnet_w18", scan=False)) == PARAMS["hrnet_w18"]


@pytest.mark.parametrize("name,hw,gflops", GFLOPS)
def test_macs_within_3_percent_of_published(name, hw, gflops):
    s = summarize(name, hw)
    assert abs(s["gmacs_binary"] - gflops) / gflops < 0.03, s["gmacs_binary"]


def test_summary_cli_json_last_line(capsys):
    import json
    assert summary_main(["pose_hrnet_w32", "--input", "256x192", "--json"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    d = json.loads(last)
    assert d["params"] == 28_536_113 and isinstance(d["macs"], (int, float))
    assert round(d["macs"] / 2 ** 30, 1) == 7.1


def test_summary_cli_unknown_model_exits_nonzero(capsys):
    assert summary_main(["hrnet_w33"]) == 2
    assert "hrnet_w32" in capsys.readouterr().err
