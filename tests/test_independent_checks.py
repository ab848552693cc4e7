"""Checks against values computed independently of the code under test.

* The V2 segmentation head's bilinear upsampling of streams 1-3 (``align_corners`` True and False), directly
  and through the whole ``HRNet(head="segmentation")``, against ``torch.nn.functional.interpolate`` and a
  PyTorch re-computation of ``last_layer``; the registry's per-model flag against hrnet-reference.md 2.6.
* The PyTorch key mapping against a fixed table of official state-dict keys (names and shapes as in timm's /
  the official ``hrnet_w18_small`` state dict, written out below), each with the Flax variable it must come
  from: every Flax leaf (and every slice of a scanned, stacked leaf) is filled with its own constant, so a
  swap of two same-shaped tensors in the mapping shows up as the wrong constant under an official key. The
  official forward order of the modules inside a block / fuse path is checked too, which catches two
  same-shaped modules swapping names in the model itself.
* ``training.sharding.put_batch`` on 8 host devices: each device holds exactly its 1/8 of the rows.
"""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import jax
import jax.numpy as jnp
import flax.linen as nn

from hrnet_jax import models
from hrnet_jax.convert import flax_to_torch
from hrnet_jax.models.backbone import CONFIGS, HRNetConfig
from hrnet_jax.models.heads import concat_streams, segmentation_head
from hrnet_jax.models.model import HRNet
from hrnet_jax.models.params import flatten, unflatten
from hrnet_jax.models.registry import MODEL_SPECS
from hrnet_jax.models.stage import ModuleOptions, StageConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --------------------------------------------------------------------------------------------------------------
# 1. Segmentation head upsampling vs torch.nn.functional.interpolate
# --------------------------------------------------------------------------------------------------------------

def _nchw(a):
    return np.array(np.asarray(a, np.float32).transpose(0, 3, 1, 2))


def _torch_concat(torch, xs_nhwc, align_corners):
    """The official HRNetV2 head input: streams 1.. resized to stream 0's size, concatenated (NCHW)."""
    F = torch.nn.functional
    xs = [torch.from_numpy(_nchw(x)) for x in xs_nhwc]
    h, w = xs[0].shape[-2:]
    ups = [F.interpolate(x, size=(h, w), mode="bilinear", align_corners=align_corners) for x in xs[1:]]
    return torch.cat([xs[0]] + ups, dim=1)


def _torch_last_layer(torch, feats, p, s):
    """``last_layer`` = Conv1x1(bias) -> BN (eval) -> ReLU -> Conv1x1(bias), from Flax (kh, kw, I, O) kernels."""
    F = torch.nn.functional
    t = lambda a: torch.from_numpy(np.array(a, np.float32))
    w0 = t(np.asarray(p["last_layer.0"]["kernel"]).transpose(3, 2, 0, 1))
    w3 = t(np.asarray(p["last_layer.3"]["kernel"]).transpose(3, 2, 0, 1))
    y = F.conv2d(feats, w0, t(p["last_layer.0"]["bias"]))
    y = F.batch_norm(y, t(s["last_layer.1"]["mean"]), t(s["last_layer.1"]["var"]), t(p["last_layer.1"]["scale"]),
                     t(p["last_layer.1"]["bias"]), training=False, eps=1e-5)
    return F.conv2d(F.relu(y), w3, t(p["last_layer.3"]["bias"])).numpy()


def _random_variables(abstract, seed):
    """Variables for a tree of shapes without running the (slow to compile) initialisers: conv / dense kernels
    ~ U(-1, 1) * sqrt(3 / fan_in), biases small, BN scale in [0.5, 1.5], running mean / var non-trivial."""
    rng = np.random.RandomState(seed)

    def one(path, a):
        name, shape = path[-1].key, tuple(a.shape)
        if name == "kernel":
            v = rng.uniform(-1, 1, shape) * np.sqrt(3.0 / np.prod(shape[:-1]))
        elif name in ("scale", "var"):
            v = rng.uniform(0.5, 1.5, shape)
        else:  # bias, mean
            v = rng.uniform(-0.2, 0.2, shape)
        return jnp.asarray(v, jnp.float32)

    return {c: jax.tree_util.tree_map_with_path(one, abstract[c]) for c in ("params", "batch_stats")}


# (stream-0 size, sizes of the lower-resolution streams): non-square, 3x5 -> 12x20 and 5x7 -> 10x14
RESIZE_CASES = [((12, 20), [(6, 10), (3, 5)]), ((10, 14), [(5, 7), (3, 4), (2, 2)])]


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("hw0,lower", RESIZE_CASES)
def test_concat_streams_upsampling_matches_torch_interpolate(align_corners, hw0, lower):
    torch = pytest.importorskip("torch")
    rng = np.random.RandomState(0)
    xs = [rng.randn(2, *hw, c).astype(np.float32) for hw, c in zip([hw0] + lower, (2, 3, 4, 5))]
    ref = _torch_concat(torch, xs, align_corners).numpy()
    other = _torch_concat(torch, xs, not align_corners).numpy()
    assert np.max(np.abs(ref - other)) > 0.05  # the two settings really differ on these sizes
    got = _nchw(concat_streams([jnp.asarray(x) for x in xs], align_corners))
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


class _SegHead(nn.Module):
    align_corners: bool
    num_classes: int = 3

    @nn.compact
    def __call__(self, xs):
        opts = ModuleOptions(upsample="bilinear", align_corners=self.align_corners)
        return segmentation_head(list(xs), opts, False, self.num_classes)


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("hw0,lower", RESIZE_CASES)
def test_segmentation_head_matches_torch(align_corners, hw0, lower):
    torch = pytest.importorskip("torch")
    rng = np.random.RandomState(1)
    xs = tuple(jnp.asarray(rng.randn(1, *hw, c), jnp.float32) for hw, c in zip([hw0] + lower, (2, 3, 4, 5)))
    head = _SegHead(align_corners)
    v = _random_variables(jax.eval_shape(lambda: head.init(jax.random.PRNGKey(0), xs)), seed=2)
    p, s = v["params"], v["batch_stats"]
    got = _nchw(head.apply({"params": p, "batch_stats": s}, xs))
    ref = _torch_last_layer(torch, _torch_concat(torch, [np.asarray(x) for x in xs], align_corners), p, s)
    wrong = _torch_last_layer(torch, _torch_concat(torch, [np.asarray(x) for x in xs], not align_corners), p, s)
    assert np.max(np.abs(ref - wrong)) > 1e-2 * np.max(np.abs(ref))
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * np.max(np.abs(ref)))


# A very narrow network with the W18-small-v1 structure (bilinear fusion needs no size divisible by 32).
NARROW = HRNetConfig(stages=(StageConfig(1, 1, "BOTTLENECK", (1,), (8,)), StageConfig(1, 2, "BASIC", (1, 1), (4, 8)),
                             StageConfig(1, 3, "BASIC", (1, 1, 1), (4, 8, 16)),
                             StageConfig(1, 4, "BASIC", (1, 1, 1, 1), (4, 8, 16, 32))), stem_width=16)


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("image_hw", [(48, 80), (40, 56)])  # streams 12x20/6x10/3x5/2x3, 10x14/5x7/3x4/2x2
def test_hrnet_segmentation_model_head_matches_torch(align_corners, image_hw):
    """End to end through ``HRNet(head="segmentation", align_corners=...)``: the stage-4 streams the model
    computed, upsampled and classified by PyTorch, equal the model's logits."""
    torch = pytest.importorskip("torch")
    model = HRNet(config=NARROW, head="segmentation", num_outputs=3, upsample="bilinear",
                  align_corners=align_corners, scan=False)
    x = jnp.asarray(np.random.RandomState(4).randn(1, *image_hw, 3), jnp.float32)
    v = _random_variables(jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x)), seed=5)
    p, s = v["params"], v["batch_stats"]
    out, st = jax.jit(lambda v, x: model.apply(v, x, capture_intermediates=lambda m, n: m.name == "stage4",
                                               mutable=["intermediates"]))({"params": p, "batch_stats": s}, x)
    streams = [np.asarray(a) for a in st["intermediates"]["stage4"]["__call__"][0]]
    assert [a.shape[1:3] for a in streams][0] == (image_hw[0] // 4, image_hw[1] // 4)
    ref = _torch_last_layer(torch, _torch_concat(torch, streams, align_corners), p, s)
    wrong = _torch_last_layer(torch, _torch_concat(torch, streams, not align_corners), p, s)
    scale = np.max(np.abs(ref))
    assert np.max(np.abs(ref - wrong)) > 1e-3 * scale
    np.testing.assert_allclose(_nchw(out), ref, rtol=1e-4, atol=1e-5 * scale)


def test_registry_align_corners_follows_the_official_configs():
    # hrnet-reference.md 2.6: the HRNetV2 (non-OCR) Cityscapes yamls set ALIGN_CORNERS False; the OCR yamls
    # leave the config default, True.
    seg = [n for n in MODEL_SPECS if n.startswith("seg_hrnet_") and "ocr" not in n]
    assert seg
    for n in seg:
        assert MODEL_SPECS[n]["upsample"] == "bilinear" and MODEL_SPECS[n]["align_corners"] is False, n
    assert MODEL_SPECS["seg_hrnet_ocr_w48"]["align_corners"] is True


# --------------------------------------------------------------------------------------------------------------
# 2. Official PyTorch keys of hrnet_w18_small (W18-small-v1, classification) vs the Flax variables
# --------------------------------------------------------------------------------------------------------------

# official key -> (shape in the official / timm state dict, Flax collection, Flax path in the default
# scanned layout, index into the stacked leading axis or None). Shapes: timm.create_model("hrnet_w18_small")
# .state_dict() == the official hrnet_w18_small_model_v1.pth layout (hrnet-reference.md 3.2, 7.1).
_SB = "stage2/0/branches.0/0:2"
OFFICIAL = {
    "conv1.weight": ((64, 3, 3, 3), "params", "conv1/kernel", None),
    "bn1.weight": ((64,), "params", "bn1/scale", None),
    "bn1.bias": ((64,), "params", "bn1/bias", None),
    "bn1.running_mean": ((64,), "batch_stats", "bn1/mean", None),
    "bn1.running_var": ((64,), "batch_stats", "bn1/var", None),
    "conv2.weight": ((64, 64, 3, 3), "params", "conv2/kernel", None),
    "bn2.weight": ((64,), "params", "bn2/scale", None),
    "bn2.running_var": ((64,), "batch_stats", "bn2/var", None),
    "layer1.0.conv1.weight": ((32, 64, 1, 1), "params", "layer1/0/conv1/kernel", None),
    "layer1.0.bn1.weight": ((32,), "params", "layer1/0/bn1/scale", None),
    "layer1.0.bn1.bias": ((32,), "params", "layer1/0/bn1/bias", None),
    "layer1.0.bn1.running_mean": ((32,), "batch_stats", "layer1/0/bn1/mean", None),
    "layer1.0.bn1.running_var": ((32,), "batch_stats", "layer1/0/bn1/var", None),
    "layer1.0.conv2.weight": ((32, 32, 3, 3), "params", "layer1/0/conv2/kernel", None),
    "layer1.0.bn2.weight": ((32,), "params", "layer1/0/bn2/scale", None),
    "layer1.0.bn2.running_mean": ((32,), "batch_stats", "layer1/0/bn2/mean", None),
    "layer1.0.conv3.weight": ((128, 32, 1, 1), "params", "layer1/0/conv3/kernel", None),
    "layer1.0.bn3.weight": ((128,), "params", "layer1/0/bn3/scale", None),
    "layer1.0.bn3.bias": ((128,), "params", "layer1/0/bn3/bias", None),
    "layer1.0.downsample.0.weight": ((128, 64, 1, 1), "params", "layer1/0/downsample.0/kernel", None),
    "layer1.0.downsample.1.weight": ((128,), "params", "layer1/0/downsample.1/scale", None),
    "layer1.0.downsample.1.bias": ((128,), "params", "layer1/0/downsample.1/bias", None),
    "layer1.0.downsample.1.running_mean": ((128,), "batch_stats", "layer1/0/downsample.1/mean", None),
    "layer1.0.downsample.1.running_var": ((128,), "batch_stats", "layer1/0/downsample.1/var", None),
    "transition1.0.0.weight": ((16, 128, 3, 3), "params", "transition1/0.0/kernel", None),
    "transition1.0.1.weight": ((16,), "params", "transition1/0.1/scale", None),
    "transition1.0.1.running_mean": ((16,), "batch_stats", "transition1/0.1/mean", None),
    "transition1.1.0.0.weight": ((32, 128, 3, 3), "params", "transition1/1.0.0/kernel", None),
    "transition1.1.0.1.bias": ((32,), "params", "transition1/1.0.1/bias", None),
    "transition1.1.0.1.running_var": ((32,), "batch_stats", "transition1/1.0.1/var", None),
    "transition2.2.0.0.weight": ((64, 32, 3, 3), "params", "transition2/2.0.0/kernel", None),
    "transition3.3.0.0.weight": ((128, 64, 3, 3), "params", "transition3/3.0.0/kernel", None),
    # stage-2 branch 0: blocks 0 and 1 are one scanned run, stacked on the leading axis
    "stage2.0.branches.0.0.conv1.weight": ((16, 16, 3, 3), "params", f"{_SB}/conv1/kernel", 0),
    "stage2.0.branches.0.0.conv2.weight": ((16, 16, 3, 3), "params", f"{_SB}/conv2/kernel", 0),
    "stage2.0.branches.0.1.conv1.weight": ((16, 16, 3, 3), "params", f"{_SB}/conv1/kernel", 1),
    "stage2.0.branches.0.1.conv2.weight": ((16, 16, 3, 3), "params", f"{_SB}/conv2/kernel", 1),
    "stage2.0.branches.0.0.bn1.weight": ((16,), "params", f"{_SB}/bn1/scale", 0),
    "stage2.0.branches.0.0.bn1.bias": ((16,), "params", f"{_SB}/bn1/bias", 0),
    "stage2.0.branches.0.0.bn1.running_mean": ((16,), "batch_stats", f"{_SB}/bn1/mean", 0),
    "stage2.0.branches.0.0.bn1.running_var": ((16,), "batch_stats", f"{_SB}/bn1/var", 0),
    "stage2.0.branches.0.0.bn2.weight": ((16,), "params", f"{_SB}/bn2/scale", 0),
    "stage2.0.branches.0.1.bn1.weight": ((16,), "params", f"{_SB}/bn1/scale", 1),
    "stage2.0.branches.0.1.bn2.running_var": ((16,), "batch_stats", f"{_SB}/bn2/var", 1),
    "stage3.0.branches.2.1.conv1.weight": ((64, 64, 3, 3), "params", "stage3/0/branches.2/0:2/conv1/kernel", 1),
    "stage3.0.branches.2.0.conv2.weight": ((64, 64, 3, 3), "params", "stage3/0/branches.2/0:2/conv2/kernel", 0),
    # fuse layers: up path (0 <- 1) conv1x1 + BN, down path (1 <- 0) step 0 conv3x3 s2 + BN
    "stage2.0.fuse_layers.0.1.0.weight": ((16, 32, 1, 1), "params", "stage2/0/fuse_layers/0.1.0/kernel", None),
    "stage2.0.fuse_layers.0.1.1.weight": ((16,), "params", "stage2/0/fuse_layers/0.1.1/scale", None),
    "stage2.0.fuse_layers.0.1.1.bias": ((16,), "params", "stage2/0/fuse_layers/0.1.1/bias", None),
    "stage2.0.fuse_layers.0.1.1.running_mean": ((16,), "batch_stats", "stage2/0/fuse_layers/0.1.1/mean", None),
    "stage2.0.fuse_layers.0.1.1.running_var": ((16,), "batch_stats", "stage2/0/fuse_layers/0.1.1/var", None),
    "stage2.0.fuse_layers.1.0.0.0.weight": ((32, 16, 3, 3), "params", "stage2/0/fuse_layers/1.0.0.0/kernel", None),
    "stage2.0.fuse_layers.1.0.0.1.weight": ((32,), "params", "stage2/0/fuse_layers/1.0.0.1/scale", None),
    "stage2.0.fuse_layers.1.0.0.1.running_var": ((32,), "batch_stats", "stage2/0/fuse_layers/1.0.0.1/var", None),
    # three-step down path 3 <- 0 of stage 4: steps 0 and 1 have the same shape
    "stage4.0.fuse_layers.3.0.0.0.weight": ((16, 16, 3, 3), "params", "stage4/0/fuse_layers/3.0.0.0/kernel", None),
    "stage4.0.fuse_layers.3.0.1.0.weight": ((16, 16, 3, 3), "params", "stage4/0/fuse_layers/3.0.1.0/kernel", None),
    "stage4.0.fuse_layers.3.0.2.0.weight": ((128, 16, 3, 3), "params", "stage4/0/fuse_layers/3.0.2.0/kernel", None),
    "stage4.0.fuse_layers.3.0.0.1.running_mean": ((16,), "batch_stats", "stage4/0/fuse_layers/3.0.0.1/mean", None),
    "stage4.0.fuse_layers.3.0.1.1.running_mean": ((16,), "batch_stats", "stage4/0/fuse_layers/3.0.1.1/mean", None),
    # classification head
    "incre_modules.0.0.conv1.weight": ((32, 16, 1, 1), "params", "incre_modules.0.0/conv1/kernel", None),
    "incre_modules.0.0.bn2.weight": ((32,), "params", "incre_modules.0.0/bn2/scale", None),
    "incre_modules.0.0.bn1.weight": ((32,), "params", "incre_modules.0.0/bn1/scale", None),
    "incre_modules.0.0.downsample.0.weight": ((128, 16, 1, 1), "params", "incre_modules.0.0/downsample.0/kernel",
                                              None),
    "incre_modules.0.0.downsample.1.running_var": ((128,), "batch_stats", "incre_modules.0.0/downsample.1/var",
                                                   None),
    "incre_modules.3.0.conv3.weight": ((1024, 256, 1, 1), "params", "incre_modules.3.0/conv3/kernel", None),
    "downsamp_modules.0.0.weight": ((256, 128, 3, 3), "params", "downsamp_modules.0.0/kernel", None),
    "downsamp_modules.0.0.bias": ((256,), "params", "downsamp_modules.0.0/bias", None),
    "downsamp_modules.0.1.weight": ((256,), "params", "downsamp_modules.0.1/scale", None),
    "downsamp_modules.0.1.bias": ((256,), "params", "downsamp_modules.0.1/bias", None),
    "downsamp_modules.0.1.running_mean": ((256,), "batch_stats", "downsamp_modules.0.1/mean", None),
    "downsamp_modules.0.1.running_var": ((256,), "batch_stats", "downsamp_modules.0.1/var", None),
    "downsamp_modules.2.0.weight": ((1024, 512, 3, 3), "params", "downsamp_modules.2.0/kernel", None),
    "final_layer.0.weight": ((2048, 1024, 1, 1), "params", "final_layer.0/kernel", None),
    "final_layer.0.bias": ((2048,), "params", "final_layer.0/bias", None),
    "final_layer.1.weight": ((2048,), "params", "final_layer.1/scale", None),
    "final_layer.1.bias": ((2048,), "params", "final_layer.1/bias", None),
    "final_layer.1.running_mean": ((2048,), "batch_stats", "final_layer.1/mean", None),
    "final_layer.1.running_var": ((2048,), "batch_stats", "final_layer.1/var", None),
    "classifier.weight": ((1000, 2048), "params", "classifier/kernel", None),
    "classifier.bias": ((1000,), "params", "classifier/bias", None),
}
OFFICIAL_NUM_KEYS = 461  # hrnet_w18_small without num_batches_tracked (hrnet-reference.md 7.1 table)


def _tagged_variables(name):
    """The model's variables (default scanned layout), each leaf / stacked slice filled with its own id."""
    model = models.create(name)
    abstract = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3), jnp.float32)))
    ids, out, n = {}, {}, 0
    for col in ("params", "batch_stats"):
        flat = {}
        for path, leaf in flatten(abstract[col]).items():
            stacked = sum(1 for k in path if ":" in k)  # nested scanned runs add leading axes
            lead = leaf.shape[:stacked]
            arr = np.empty(leaf.shape, np.float32)
            for idx in np.ndindex(*lead):
                n += 1
                arr[idx] = n
                ids[(col, "/".join(path), idx[0] if len(idx) == 1 else (idx or None))] = n
            flat[path] = arr
        out[col] = unflatten(flat)
    return out, ids


def test_official_keys_map_to_the_expected_flax_variables():
    variables, ids = _tagged_variables("hrnet_w18_small_v1")
    assert len(set(ids.values())) == len(ids)
    sd = flax_to_torch(variables, "hrnet_w18_small_v1")
    assert len(sd) == OFFICIAL_NUM_KEYS
    for key, (shape, col, path, idx) in OFFICIAL.items():
        assert key in sd, key
        assert tuple(sd[key].shape) == shape, (key, sd[key].shape, shape)
        want = ids[(col, path, idx)]
        got = np.unique(sd[key])
        assert got.tolist() == [want], (key, "holds the values of",
                                        [k for k, v in ids.items() if v in got.tolist()], "expected", (col, path, idx))


def test_official_keys_match_timm_state_dict_shapes():
    """The table above against timm's hrnet_w18_small (an independent PyTorch implementation)."""
    timm = pytest.importorskip("timm")
    pytest.importorskip("torch")
    sd = timm.create_model("hrnet_w18_small", pretrained=False).state_dict()
    assert sum(1 for k in sd if not k.endswith("num_batches_tracked")) == OFFICIAL_NUM_KEYS
    for key, (shape, *_rest) in OFFICIAL.items():
        assert tuple(sd[key].shape) == shape, key


# The official forward order (cls_hrnet.py / timm hrnet.py) of modules that have identical shapes: a block's
# conv1 runs before its conv2, a down path's step 0 before step 1, a BN right after its conv.
FORWARD_ORDER = [
    ["conv1", "bn1", "conv2", "bn2", "layer1.0.conv1", "layer1.0.bn1", "layer1.0.conv2", "layer1.0.bn2",
     "layer1.0.conv3", "layer1.0.bn3"],
    ["stage2.0.branches.0.0.conv1", "stage2.0.branches.0.0.bn1", "stage2.0.branches.0.0.conv2",
     "stage2.0.branches.0.0.bn2", "stage2.0.branches.0.1.conv1", "stage2.0.branches.0.1.bn1",
     "stage2.0.branches.0.1.conv2", "stage2.0.branches.0.1.bn2"],
    ["stage4.0.fuse_layers.3.0.0.0", "stage4.0.fuse_layers.3.0.0.1", "stage4.0.fuse_layers.3.0.1.0",
     "stage4.0.fuse_layers.3.0.1.1", "stage4.0.fuse_layers.3.0.2.0", "stage4.0.fuse_layers.3.0.2.1"],
    ["stage2.0.fuse_layers.0.1.0", "stage2.0.fuse_layers.0.1.1"],
    ["incre_modules.0.0.conv1", "incre_modules.0.0.bn1", "incre_modules.0.0.conv2", "incre_modules.0.0.bn2",
     "incre_modules.0.0.conv3", "incre_modules.0.0.bn3"],
]


def test_same_shaped_modules_run_in_the_official_order():
    cfg = CONFIGS["w18_small_v1"]
    model = HRNet(config=cfg, head="classification", num_outputs=1000, scan=False)
    calls = []

    def record(next_fun, args, kwargs, context):
        if context.method_name == "__call__" and type(context.module).__name__ in ("Conv", "BatchNorm"):
            calls.append(".".join(context.module.path))
        return next_fun(*args, **kwargs)

    x = jnp.zeros((1, 64, 64, 3), jnp.float32)
    with nn.intercept_methods(record):
        jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x))
    for seq in FORWARD_ORDER:
        pos = [calls.index(k) if k in calls else None for k in seq]
        assert None not in pos, [k for k, p in zip(seq, pos) if p is None]
        assert pos == sorted(pos), [seq[i] for i in np.argsort(pos)]


# --------------------------------------------------------------------------------------------------------------
# 3. put_batch shards the batch over 8 devices
# --------------------------------------------------------------------------------------------------------------

def test_put_batch_gives_each_of_8_devices_its_eighth_of_the_rows():
    code = textwrap.dedent("""
        import jax, numpy as np
        from hrnet_jax.training import sharding as shd
        assert jax.device_count() == 8, jax.devices()
        mesh = shd.make_mesh()
        rng = np.random.RandomState(0)
        batch = {"image": rng.randn(16, 5, 3, 2).astype(np.float32), "label": np.arange(16, dtype=np.int32) * 7,
                 "names": ["n%d" % i for i in range(16)]}
        out = shd.put_batch(batch, shd.batch_sharding(mesh))
        assert set(out) == {"image", "label"}, set(out)
        order = {d: i for i, d in enumerate(mesh.devices.flat)}
        for k in ("image", "label"):
            arr, ref = out[k], batch[k]
            assert arr.shape == ref.shape, (k, arr.shape)
            assert not arr.sharding.is_fully_replicated, k
            shards = arr.addressable_shards
            assert len(shards) == 8 and len({s.device for s in shards}) == 8
            seen = []
            for s in shards:
                i = order[s.device]
                rows = s.index[0]
                assert (rows.start, rows.stop) == (2 * i, 2 * i + 2), (k, s.device, s.index)
                assert all(sl == slice(None) for sl in s.index[1:]), (k, s.index)
                data = np.asarray(s.data)
                assert data.shape == (2,) + ref.shape[1:], (k, data.shape)
                np.testing.assert_array_equal(data, ref[2 * i:2 * i + 2])
                seen.append(rows.start)
            assert sorted(seen) == list(range(0, 16, 2))
            np.testing.assert_array_equal(np.asarray(arr), ref)
        print("OK")
    """)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    p = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.strip().endswith("OK"), p.stderr[-4000:]
