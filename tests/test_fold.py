"""BN folding: the folded inference model computes the same outputs as the unfolded one (narrow configs)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import flax.linen as nn
from flax.traverse_util import flatten_dict

from hrnet_jax import models
from hrnet_jax.models import HRNetConfig, StageConfig
from hrnet_jax.models.fold import _bn_interceptor, fold_batchnorm

TINY = HRNetConfig(stem_width=16, stages=(
    StageConfig(1, 1, "BOTTLENECK", (2,), (8,)),
    StageConfig(1, 2, "BASIC", (1, 1), (4, 8)),
    StageConfig(2, 3, "BASIC", (2, 2, 2), (4, 8, 16)),
    StageConfig(2, 4, "BASIC", (1, 1, 1, 1), (4, 8, 16, 32)),
))


def _randomise_bn(variables, seed=0):
    """Non-trivial BN statistics and affine parameters (fresh init would make BN near-identity)."""
    rng = np.random.RandomState(seed)

    def walk(p, s):
        if isinstance(s, dict) and set(s) == {"mean", "var"}:
            sh = s["mean"].shape
            s = {"mean": jnp.asarray(rng.rand(*sh) - 0.5, jnp.float32),
                 "var": jnp.asarray(rng.rand(*sh) * 1.5 + 0.5, jnp.float32)}
            p = {"scale": jnp.asarray(rng.rand(*sh) + 0.5, jnp.float32),
                 "bias": jnp.asarray(rng.rand(*sh) * 0.4 - 0.2, jnp.float32)}
            return p, s
        newp, news = dict(p), {}
        for k in s:
            newp[k], news[k] = walk(p[k], s[k])
        return newp, news

    params, stats = walk(dict(variables["params"]), dict(variables["batch_stats"]))
    return {"params": params, "batch_stats": stats}


@pytest.mark.parametrize("name,scan,hw", [
    ("pose_hrnet_w32", True, (64, 32)),  # scanned runs: stacked kernels fold along the stack axis
    ("hrnet_w18_small_v1", False, (64, 64)),
    ("seg_hrnet_w18", False, (64, 64)),  # conv with bias before BN (last_layer.0 / .1)
])
def test_folded_matches_unfolded(name, scan, hw):
    model = models.create(name, config=TINY, scan=scan)
    x = jnp.asarray(np.random.RandomState(1).randn(2, *hw, 3).astype(np.float32))
    variables = _randomise_bn(model.init(jax.random.PRNGKey(0), x[:1], train=False))
    ref = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
    folded, fparams = fold_batchnorm(model, variables)
    assert dict(folded.counts)["affine"] == 0  # every BN of the family follows a conv
    assert dict(folded.counts)["folded"] > 10
    # no running statistics left, and folded BNs keep at most a shift
    assert "batch_stats" not in fparams
    if scan:  # unstacked for inference: the same tree as a scan=False model's (BN entries aside)
        plain = jax.eval_shape(lambda: models.create(name, config=TINY, scan=False).init(
            jax.random.PRNGKey(0), x[:1], train=False))["params"]
        kernels = lambda t: {k: v.shape for k, v in flatten_dict(t, sep=".").items() if k.endswith("kernel")}  # noqa: E731
        assert kernels(fparams) == kernels(plain)
        assert not folded.model.scan
    out = jax.jit(folded.apply)(fparams, x)
    ref, out = np.asarray(ref), np.asarray(out)
    assert out.shape == ref.shape
    rel = np.max(np.abs(out - ref)) / (np.max(np.abs(ref)) + 1e-12)
    assert rel <= 1e-4, rel


def test_folded_rejects_train():
    model = models.create("pose_hrnet_w32", config=TINY)
    x = jnp.zeros((1, 64, 32, 3))
    folded, fparams = fold_batchnorm(model, model.init(jax.random.PRNGKey(0), x, train=False))
    with pytest.raises(ValueError, match="inference-only"):
        jax.eval_shape(lambda p, x: folded.apply(p, x, train=True), fparams, x)
    # a training-mode BatchNorm met by the folding interceptor (the folded parameters, no running statistics)
    with pytest.raises(ValueError, match="inference-only"), nn.intercept_methods(_bn_interceptor):
        jax.eval_shape(lambda p, x: folded.model.apply({"params": p}, x, train=True), fparams, x)
