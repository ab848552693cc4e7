"""Numerical parity with timm's PyTorch HRNet, an independent implementation, through the converter.

timm models are built with random weights and non-trivial BN statistics, converted with
``hrnet_jax.convert.torch_to_flax`` and compared on the logits and the four stage-4 streams, in eval mode and
in train mode (batch statistics, and the running statistics PyTorch updates with the unbiased variance).
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from hrnet_jax import models  # noqa: E402
from hrnet_jax.convert import flax_to_torch, torch_to_flax  # noqa: E402

CASES = [("hrnet_w18_small", "hrnet_w18_small_v1"), ("hrnet_w18_small_v2", "hrnet_w18_small_v2"),
         ("hrnet_w32", "hrnet_w32")]
RTOL = 1e-4


def _timm_model(name, seed=0):
    torch.manual_seed(seed)
    m = timm.create_model(name, pretrained=False)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                c = mod.num_features
                mod.running_mean.copy_(torch.rand(c, generator=g) - 0.5)
                mod.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.5)
                mod.weight.copy_(torch.rand(c, generator=g) + 0.5)
                mod.bias.copy_(torch.rand(c, generator=g) * 0.4 - 0.2)
    return m


def _torch_streams(m, x):
    x = m.act1(m.bn1(m.conv1(x)))
    x = m.act2(m.bn2(m.conv2(x)))
    return m.stages(x)


def _rel(a, b):
    return float(np.max(np.abs(a - b)) / (np.max(np.abs(b)) + 1e-12))


@pytest.mark.parametrize("timm_name,name", CASES)
def test_eval_mode_logits_and_streams(timm_name, name):
    tm = _timm_model(timm_name).eval()
    variables = torch_to_flax(tm.state_dict(), name)
    x = np.random.RandomState(0).randn(2, 3, 96, 128).astype(np.float32)
    with torch.no_grad():
        ref_logits = tm(torch.from_numpy(x)).numpy()
        ref_streams = [s.numpy().transpose(0, 2, 3, 1) for s in _torch_streams(tm, torch.from_numpy(x))]
    xj = jnp.asarray(x.transpose(0, 2, 3, 1))
    logits = jax.jit(lambda v, x: models.create(name).apply(v, x, train=False))(variables, xj)
    assert _rel(np.asarray(logits), ref_logits) < RTOL
    feats = jax.jit(lambda v, x: models.create(name, head="features").apply(v, x, train=False))(variables, xj)
    assert len(feats) == 4
    for got, ref in zip(feats, ref_streams):
        assert got.shape == ref.shape
        assert _rel(np.asarray(got), ref) < RTOL


@pytest.mark.parametrize("timm_name,name", CASES)
def test_train_mode_batch_stats_and_running_update(timm_name, name):
    tm = _timm_model(timm_name, seed=3).train()
    variables = torch_to_flax(tm.state_dict(), name)
    x = np.random.RandomState(1).randn(4, 3, 64, 96).astype(np.float32)
    with torch.no_grad():
        ref_logits = tm(torch.from_numpy(x)).numpy()
    ref_sd = {k: v.numpy() for k, v in tm.state_dict().items()}
    model = models.create(name)
    logits, updated = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(
        variables, jnp.asarray(x.transpose(0, 2, 3, 1)))
    assert _rel(np.asarray(logits), ref_logits) < RTOL
    got_sd = flax_to_torch({"params": variables["params"], "batch_stats": updated["batch_stats"]}, name)
    stat_keys = [k for k in got_sd if k.endswith(("running_mean", "running_var"))]
    assert len(stat_keys) > 100
    worst = max(_rel(got_sd[k], ref_sd[k]) for k in stat_keys)
    assert worst < RTOL, worst


def test_state_dict_keys_match_timm_exactly():
    tm = _timm_model("hrnet_w18")
    ref = {k: tuple(v.shape) for k, v in tm.state_dict().items() if not k.endswith("num_batches_tracked")}
    model = models.create("hrnet_w18")
    v = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)))
    got = {k: a.shape for k, a in flax_to_torch(v, "hrnet_w18").items()}
    assert set(got) == set(ref)
    assert len(ref) == 1631  # reference table: CLS W18 keys without num_batches_tracked
    assert all(tuple(got[k]) == ref[k] for k in ref)
