"""HigherHRNet (bottom-up) model, checkpoint conversion and loss, each against something independent:

* parameter counts: the reference's pose counts (hrnet-reference.md 6.3) with the HIGHER head grammar
  (section 4.6 / 7.1) added by hand, and the published 28.6M / 63.8M (section 6.6);
* conversion: the official key layout generated from the grammar converts strictly and round-trips;
* numerics: PyTorch (timm's HRNet backbone stream 0 + the HigherHRNet head written here with torch.nn,
  ``nn.ConvTranspose2d`` included) on converted random weights;
* loss: a two-person associative-embedding example worked by hand, and a per-person loop of the reference's
  definition on random inputs.
"""
import math

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from hrnet_jax import models
from hrnet_jax.convert import CheckpointMismatchError, flax_to_torch, torch_to_flax
from hrnet_jax.models.backbone import CONFIGS
from hrnet_jax.models.layers import ConvTranspose
from hrnet_jax.tasks.bottomup.loss import ae_loss, bottomup_loss, heatmap_loss
from test_convert import STD, _random_sd, grammar_keys

POSE_PARAMS = {32: 28_536_113, 48: 63_595_745}   # reference 6.3 (17 joints)
PUBLISHED_M = {32: 28.6, 48: 63.8}               # reference 6.6 (HigherHRNet README)


def head_keys(c, k=17):
    """HIGHER head keys {name: shape} from the reference grammar (4.6, 7.1)."""
    keys = {"final_layers.0.weight": (2 * k, c, 1, 1), "final_layers.0.bias": (2 * k,),
            "deconv_layers.0.0.0.weight": (c + 2 * k, c, 4, 4),
            "final_layers.1.weight": (k, c, 1, 1), "final_layers.1.bias": (k,)}
    bn = lambda p: keys.update({f"{p}.{s}": (c,) for s in ("weight", "bias", "running_mean", "running_var")})
    bn("deconv_layers.0.0.1")
    for i in range(1, 5):
        for j in (1, 2):
            keys[f"deconv_layers.0.{i}.0.conv{j}.weight"] = (c, c, 3, 3)
            bn(f"deconv_layers.0.{i}.0.bn{j}")
    return keys


def higher_keys(c, k=17):
    keys = {n: s for n, s in grammar_keys(STD(c), "pose", k, False).items() if not n.startswith("final_layer.")}
    keys.update(head_keys(c, k))
    return keys


def _n_params(keys):
    return sum(int(np.prod(s)) for n, s in keys.items() if not n.endswith(("running_mean", "running_var")))


@pytest.mark.parametrize("c", [32, 48])
def test_param_count_matches_reference(c):
    head_params = c * 34 + 34 + (c + 34) * c * 16 + 2 * c + 4 * (2 * 9 * c * c + 4 * c) + c * 17 + 17
    expected = POSE_PARAMS[c] - (c * 17 + 17) + head_params
    assert _n_params(higher_keys(c)) == expected
    assert round(expected / 1e6, 1) == PUBLISHED_M[c]
    model = models.create(f"higher_hrnet_w{c}")
    v = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3))))
    assert sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(v["params"])) == expected


def test_output_shapes_any_num_joints():
    model = models.create("higher_hrnet_w32", num_joints=14)
    out = jax.eval_shape(lambda: model.init_with_output(jax.random.PRNGKey(0), jnp.zeros((2, 128, 96, 3))))[0]
    assert [o.shape for o in out] == [(2, 32, 24, 28), (2, 64, 48, 14)]


def test_official_key_layout_converts_strictly_and_round_trips():
    keys = higher_keys(32)
    sd = _random_sd(keys, seed=3)
    variables, report = torch_to_flax({"module." + k: v for k, v in sd.items()}, "higher_hrnet_w32",
                                      return_report=True)
    assert report.ok and report.loaded == len(keys), report.describe()
    # ConvTranspose2d (in, out, kh, kw) -> (kh, kw, in, out); a Conv2d (out, in, kh, kw) -> (kh, kw, in, out)
    w = sd["deconv_layers.0.0.0.weight"]
    np.testing.assert_array_equal(variables["params"]["deconv_layers.0.0.0"]["kernel"][1, 3, 40, 7], w[40, 7, 1, 3])
    np.testing.assert_array_equal(variables["params"]["deconv_layers.0.2.0"]["conv1"]["kernel"][0, 2, 5, 9],
                                  sd["deconv_layers.0.2.0.conv1.weight"][9, 5, 0, 2])
    back = flax_to_torch(variables, "higher_hrnet_w32")
    assert set(back) == set(sd)
    for k in sd:
        np.testing.assert_array_equal(back[k], sd[k])


def test_mismatched_and_missing_head_keys_are_named():
    keys = higher_keys(32)
    sd = _random_sd(keys)
    sd["deconv_layers.0.0.0.weight"] = np.zeros((32 + 34, 32, 3, 3), np.float32)
    del sd["deconv_layers.0.3.0.bn2.running_var"]
    with pytest.raises(CheckpointMismatchError) as e:
        torch_to_flax(sd, "higher_hrnet_w32")
    assert "deconv_layers.0.0.0.weight" in str(e.value) and "(66, 32, 4, 4)" in str(e.value)
    assert "deconv_layers.0.3.0.bn2.running_var" in str(e.value)


@pytest.mark.parametrize("k,s,p,hw", [(4, 2, 1, (5, 7)), (2, 2, 0, (4, 3)), (3, 2, 1, (5, 4)), (5, 3, 1, (4, 6))])
def test_conv_transpose_equals_torch(k, s, p, hw):
    torch = pytest.importorskip("torch")
    rng = np.random.RandomState(0)
    x = rng.randn(2, 6, *hw).astype(np.float32)
    w = rng.randn(6, 5, k, k).astype(np.float32)
    ref = torch.nn.functional.conv_transpose2d(torch.from_numpy(x), torch.from_numpy(w), stride=s,
                                               padding=p).numpy()
    layer = ConvTranspose(5, k, s, p)
    y = layer.apply({"params": {"kernel": jnp.asarray(w.transpose(2, 3, 0, 1))}}, jnp.asarray(x.transpose(0, 2, 3, 1)))
    np.testing.assert_allclose(np.asarray(y).transpose(0, 3, 1, 2), ref, rtol=1e-5, atol=1e-5)


def _torch_head(torch, c, k):
    """The HigherHRNet head (reference 4.6) in torch.nn, with the official module names."""
    nn = torch.nn

    class Basic(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c)
            self.conv2, self.bn2 = nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c)

        def forward(self, x):
            y = torch.relu(self.bn1(self.conv1(x)))
            return torch.relu(self.bn2(self.conv2(y)) + x)

    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.final_layers = nn.ModuleList([nn.Conv2d(c, 2 * k, 1), nn.Conv2d(c, k, 1)])
            layers = [nn.Sequential(nn.ConvTranspose2d(c + 2 * k, c, 4, 2, 1, 0, bias=False), nn.BatchNorm2d(c),
                                    nn.ReLU())]
            layers += [nn.Sequential(Basic()) for _ in range(4)]
            self.deconv_layers = nn.ModuleList([nn.Sequential(*layers)])

        def forward(self, x):
            y = self.final_layers[0](x)
            x = self.deconv_layers[0](torch.cat((x, y), 1))
            return y, self.final_layers[1](x)

    return Head()


def test_whole_model_equals_timm_backbone_plus_torch_head():
    torch = pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    bb = timm.create_model("hrnet_w18_small", pretrained=False)   # stage-4 widths (16, 32, 64, 128)
    head = _torch_head(torch, 16, 3)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for mod in list(bb.modules()) + list(head.modules()):
            if isinstance(mod, torch.nn.BatchNorm2d):
                n = mod.num_features
                mod.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
                mod.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                mod.weight.copy_(torch.rand(n, generator=g) + 0.5)
                mod.bias.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)
            elif isinstance(mod, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)) and mod in set(head.modules()):
                mod.weight.normal_(0, 0.1, generator=g)
    bb.eval(), head.eval()
    x = np.random.RandomState(0).randn(2, 3, 64, 96).astype(np.float32)
    with torch.no_grad():
        t = torch.from_numpy(x)
        t = bb.act2(bb.bn2(bb.conv2(bb.act1(bb.bn1(bb.conv1(t))))))
        ref_q, ref_h = head(bb.stages(t)[0])
    # the checkpoint of this network: the backbone (pose layout: only stage 4's fuse output 0) + the head
    skip = ("incre_modules", "downsamp_modules", "final_layer.", "classifier", "stage4.0.fuse_layers.1",
            "stage4.0.fuse_layers.2", "stage4.0.fuse_layers.3")
    sd = {k: v for k, v in bb.state_dict().items() if not k.startswith(skip)}
    sd.update(head.state_dict())
    variables, report = torch_to_flax(sd, "higher_hrnet_w32", config=CONFIGS["w18_small_v1"], num_joints=3,
                                      return_report=True)
    assert report.ok
    model = models.create("higher_hrnet_w32", config=CONFIGS["w18_small_v1"], num_joints=3)
    xj = jnp.asarray(x.transpose(0, 2, 3, 1))
    q, h = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, xj)
    # the inference path: BN folded into the convs, the transposed conv included
    from hrnet_jax import inference
    apply_fn, folded = inference.prepare(model, variables)
    fq, fh = jax.jit(lambda v, x: apply_fn(v, x, train=False))(folded, xj)
    for got, ref in ((q, ref_q), (h, ref_h), (fq, ref_q), (fh, ref_h)):
        ref = ref.numpy().transpose(0, 2, 3, 1)
        assert got.shape == ref.shape
        assert np.max(np.abs(np.asarray(got) - ref)) / np.max(np.abs(ref)) < 1e-4


# ---------------------------------------------------------------------------------------------------- loss

def _joints(people, h, w, slots=3):
    """JointsGenerator layout: people = [[(k, x, y), ...], ...] -> (M, slots, 2)."""
    out = np.zeros((len(people), slots, 2), np.int32)
    for m, person in enumerate(people):
        for s, (k, x, y) in enumerate(person):
            out[m, s] = (k * h * w + y * w + x, 1)
    return out


def test_ae_loss_two_people_by_hand():
    tags = np.zeros((3, 2, 2, 2), np.float32)  # (B, H, W, K)
    # image 0: person A joint 0 at (0, 0) tag 1, joint 1 at (1, 0) tag 2 (mean 1.5, pull 0.25);
    #          person B joint 0 at (1, 1) tag -1 (mean -1, pull 0); a third entry with no visible joint.
    tags[0, 0, 0, 0], tags[0, 0, 1, 1], tags[0, 1, 1, 0] = 1.0, 2.0, -1.0
    # image 1: one person (push 0); image 2: nobody (0, 0)
    tags[1, 0, 0, 1], tags[1, 1, 0, 1] = 3.0, 4.0
    joints = np.zeros((3, 3, 3, 2), np.int32)
    joints[0, :2] = _joints([[(0, 0, 0), (1, 1, 0)], [(0, 1, 1)]], 2, 2)
    joints[1, :1] = _joints([[(1, 0, 0), (1, 0, 1)]], 2, 2)
    push, pull = ae_loss(jnp.asarray(tags), jnp.asarray(joints), "exp")
    # push: (sum_ab exp(-(m_a - m_b)^2) - n) / (n (n - 1)) / 2 = 2 exp(-6.25) / 2 / 2
    np.testing.assert_allclose(np.asarray(push), [0.5 * math.exp(-6.25), 0.0, 0.0], rtol=1e-4)
    np.testing.assert_allclose(np.asarray(pull), [(0.25 + 0.0) / 2, 0.25, 0.0], rtol=1e-6)
    tags[0, 1, 1, 0] = 1.0  # person B's mean 1.0: 'max' push = (2 + 2 max(1 - 0.5, 0) - 2) / 2 / 2
    push, _ = ae_loss(jnp.asarray(tags), jnp.asarray(joints), "max")
    np.testing.assert_allclose(np.asarray(push)[0], 0.25, rtol=1e-6)
    with pytest.raises(ValueError, match="exp"):
        ae_loss(jnp.asarray(tags), jnp.asarray(joints), "l2")


def _ae_reference(tags_bkhw, joints, ae_type):
    """The reference's AELoss written as a per-person loop (tags flattened as (K*H*W,))."""
    pushes, pulls = [], []
    for b in range(joints.shape[0]):
        flat = tags_bkhw[b].reshape(-1).astype(np.float64)
        means, pull = [], 0.0
        for person in joints[b]:
            t = [flat[i] for i, v in person if v > 0]
            if not t:
                continue
            means.append(np.mean(t))
            pull += np.mean((np.array(t) - means[-1]) ** 2)
        n = len(means)
        if n == 0:
            pushes.append(0.0), pulls.append(0.0)
            continue
        if n == 1:
            pushes.append(0.0), pulls.append(pull)
            continue
        d = np.array(means)[:, None] - np.array(means)[None, :]
        f = np.exp(-d ** 2) if ae_type == "exp" else np.clip(1 - np.abs(d), 0, None)
        pushes.append((f.sum() - n) / ((n - 1) * n) * 0.5), pulls.append(pull / n)
    return np.array(pushes), np.array(pulls)


def test_loss_equals_per_person_reference_on_random_inputs():
    rng = np.random.RandomState(0)
    b, h, w, k, m = 3, 8, 6, 4, 5
    q = rng.randn(b, h, w, 2 * k).astype(np.float32)
    hh = rng.randn(b, 2 * h, 2 * w, k).astype(np.float32)
    joints = np.zeros((b, m, k, 2), np.int32)
    for i in range(b):
        for p in range(rng.randint(0, m + 1)):
            for s, kk in enumerate(rng.choice(k, rng.randint(0, k + 1), replace=False)):
                joints[i, p, s] = (kk * h * w + rng.randint(h) * w + rng.randint(w), 1)
    batch = {"heatmaps_0": rng.rand(b, h, w, k).astype(np.float32),
             "heatmaps_1": rng.rand(b, 2 * h, 2 * w, k).astype(np.float32),
             "mask_0": (rng.rand(b, h, w) > 0.3).astype(np.float32),
             "mask_1": (rng.rand(b, 2 * h, 2 * w) > 0.3).astype(np.float32), "joints": joints}
    loss, aux = jax.jit(lambda o, bt: bottomup_loss(o, bt, k, push_factor=0.01, pull_factor=0.02,
                                                    heatmap_factors=(1.0, 0.5)))((q, hh), batch)
    push, pull = _ae_reference(q[..., k:].transpose(0, 3, 1, 2), joints, "exp")
    hm0 = np.mean([np.mean((q[i, ..., :k] - batch["heatmaps_0"][i]) ** 2 * batch["mask_0"][i][..., None])
                   for i in range(b)])
    hm1 = np.mean([np.mean((hh[i] - batch["heatmaps_1"][i]) ** 2 * batch["mask_1"][i][..., None])
                   for i in range(b)])
    np.testing.assert_allclose(float(aux["heatmap_loss_0"]), hm0, rtol=1e-5)
    np.testing.assert_allclose(float(aux["heatmap_loss_1"]), 0.5 * hm1, rtol=1e-5)
    np.testing.assert_allclose(float(aux["push_loss"]), 0.01 * push.mean(), rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(float(aux["pull_loss"]), 0.02 * pull.mean(), rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(float(loss), hm0 + 0.5 * hm1 + 0.01 * push.mean() + 0.02 * pull.mean(), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(heatmap_loss(q[..., :k], batch["heatmaps_0"], batch["mask_0"])),
                               [np.mean((q[i, ..., :k] - batch["heatmaps_0"][i]) ** 2
                                        * batch["mask_0"][i][..., None]) for i in range(b)], rtol=1e-5)


# Published "GFLOPs" (reference 6.6). They reproduce as the official get_model_summary counts them: conv MACs
# with a ConvTranspose2d counted as weight.numel() x output pixels (4x its multiply-adds at stride 2), / 1e9.
GFLOPS = [("higher_hrnet_w32", 32, 512, 47.9), ("higher_hrnet_w32", 32, 640, 74.8), ("higher_hrnet_w48", 48, 640, 154.3)]


@pytest.mark.parametrize("name,c,size,gflops", GFLOPS)
def test_published_gflops(name, c, size, gflops):
    from hrnet_jax.summary import summarize
    s = summarize(name, (size, size))
    q, hf = (size // 4) ** 2, (size // 2) ** 2                  # pixels at 1/4 and 1/2
    head_convs = c * 34 * q + 4 * 2 * 9 * c * c * hf + c * 17 * hf   # final_layers.0, 4 BasicBlocks, final_layers.1
    deconv = (c + 34) * c * 16 * q                              # multiply-adds of the 4x4 stride-2 ConvTranspose
    head = s["breakdown"]["head"]["macs"]
    assert head in (head_convs, head_convs + deconv)            # whether or not the summary counts the deconv
    official = s["macs"] - head + head_convs + (c + 34) * c * 16 * hf   # deconv as weight.numel() x output pixels
    assert round(official / 1e9, 1) == gflops
