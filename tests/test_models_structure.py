"""Structure: scanned == unrolled, remat, bf16, every registered name, resize semantics vs PyTorch."""
import numpy as np
import pytest

import jax
import jax.numpy as jnp

from hrnet_jax import models
from hrnet_jax.models import HRNetConfig, StageConfig
from hrnet_jax.models.layers import resize_bilinear
from hrnet_jax.models.params import restack


# A narrow network with every structural feature of the real ones (scanned streams and modules, a
# multi_scale_output=False last module for pose), so that the equivalence tests stay fast on 2 cores.
TINY = HRNetConfig(stages=(StageConfig(1, 1, "BOTTLENECK", (2,), (16,)), StageConfig(1, 2, "BASIC", (2, 2), (8, 16)),
                           StageConfig(3, 3, "BASIC", (2, 2, 2), (8, 16, 32)),
                           StageConfig(2, 4, "BASIC", (2, 2, 2, 2), (8, 16, 32, 64))))


def _apply(model, v, x, **kw):
    return jax.jit(lambda v, x: model.apply(v, x, **kw))(v, x)


def _init(model, hw=(64, 96), seed=0):
    return model.init(jax.random.PRNGKey(seed), jnp.zeros((1, *hw, 3)))


def _close(a, b, tol=1e-5):
    """Max abs difference relative to the output's scale (random-init outputs can be ~1e3)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert np.max(np.abs(a - b)) <= tol * np.max(np.abs(b)) + 1e-7, np.max(np.abs(a - b)) / np.max(np.abs(b))


def _randomize_stats(variables, seed=1):
    """Non-trivial BN statistics, so eval mode exercises them."""
    leaves, tdef = jax.tree_util.tree_flatten_with_path(variables["batch_stats"])
    rng = np.random.RandomState(seed)
    new = [rng.uniform(-0.3, 0.3, l.shape) if p[-1].key == "mean" else rng.uniform(0.5, 1.5, l.shape)
           for p, l in leaves]
    return {"params": variables["params"],
            "batch_stats": jax.tree_util.tree_unflatten(tdef, [jnp.asarray(a, jnp.float32) for a in new])}


@pytest.mark.parametrize("name", ["hrnet_w18_small_v2", "pose_hrnet_w18_small_v2", "seg_hrnet_w18_small_v2"])
def test_scanned_equals_unrolled(name):
    scanned, unrolled = models.create(name, config=TINY), models.create(name, config=TINY, scan=False)
    vs = _randomize_stats(_init(scanned))
    # The scanned tree really is stacked: stage 3 has 3 identical modules in W18-small-v2.
    assert "0:3" in vs["params"]["stage3"]
    vu = {c: restack(vs[c], _init(unrolled)[c]) for c in ("params", "batch_stats")}
    assert "2" in vu["params"]["stage3"]
    x = jax.random.normal(jax.random.PRNGKey(2), (2, 64, 96, 3))
    _close(_apply(scanned, vs, x, train=False), _apply(unrolled, vu, x, train=False))
    ys, ss = _apply(scanned, vs, x, train=True, mutable=["batch_stats"])
    yu, su = _apply(unrolled, vu, x, train=True, mutable=["batch_stats"])
    _close(ys, yu)
    back = restack(ss["batch_stats"], su["batch_stats"])  # scanned stats → unrolled layout
    for a, b in zip(jax.tree_util.tree_leaves(back), jax.tree_util.tree_leaves(su["batch_stats"])):
        _close(a, b)


def test_remat_same_values_and_gradients():
    plain = models.create("pose_hrnet_w18_small_v2", config=TINY)
    remat = models.create("pose_hrnet_w18_small_v2", config=TINY, remat="dots")
    v = _init(plain)
    x = jax.random.normal(jax.random.PRNGKey(3), (2, 64, 96, 3))

    def loss(model):
        def f(params):
            y, _ = model.apply({"params": params, "batch_stats": v["batch_stats"]}, x, train=True,
                               mutable=["batch_stats"])
            return jnp.mean(y ** 2)
        return jax.jit(jax.value_and_grad(f))(v["params"])

    (l1, g1), (l2, g2) = loss(plain), loss(remat)
    _close(l1, l2)
    for a, b in zip(jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g2)):
        _close(a, b, 1e-4)


@pytest.mark.parametrize("name", ["hrnet_w18_small_v1", "pose_hrnet_w18_small_v2"])
def test_bf16_forward_close_to_float32(name):
    f32, bf16 = models.create(name, config=TINY), models.create(name, config=TINY, dtype=jnp.bfloat16)
    v = _randomize_stats(_init(f32))
    x = jax.random.normal(jax.random.PRNGKey(4), (2, 64, 96, 3))
    a = np.asarray(_apply(f32, v, x, train=False), np.float64)
    b = np.asarray(_apply(bf16, v, x, train=False), np.float64)
    assert b.dtype == np.float64 and np.isfinite(b).all()
    rel = np.linalg.norm(a - b) / np.linalg.norm(a)
    assert rel < 1e-2, rel
    # Parameters and BN statistics stay float32 under bf16 compute.
    v16 = _init(bf16)
    assert all(l.dtype == jnp.float32 for l in jax.tree_util.tree_leaves(v16))


EXPECTED_OUT = {"classification": lambda n, b: [(b, 1000)],
                "pose": lambda n, b: [(b, 16, 24, 17)],
                "higher": lambda n, b: [(b, 16, 24, 34), (b, 32, 48, 17)],
                "segmentation": lambda n, b: [(b, 16, 24, 19)],
                "ocr": lambda n, b: [(b, 16, 24, 19), (b, 16, 24, 19)],
                "v2p": lambda n, b: [(b, 16, 24, 256), (b, 8, 12, 256), (b, 4, 6, 256), (b, 2, 3, 256),
                                     (b, 1, 1, 256)]}


@pytest.mark.parametrize("name", models.list_models())
def test_every_registered_name_builds_with_expected_output_shape(name):
    model = models.create(name)
    x = jnp.zeros((2, 64, 96, 3))
    out = jax.eval_shape(lambda: model.init_with_output(jax.random.PRNGKey(0), x)[0])
    shapes = [tuple(o.shape) for o in jax.tree_util.tree_leaves(out)]
    # v2p: 64x96 input, level 4 at stride 64 -> 1x1 (floor of 1.5)
    assert shapes == EXPECTED_OUT[model.head](name, 2), shapes


@pytest.mark.parametrize("name", ["hrnet_w18_small_v1", "pose_hrnet_w18_small_v1", "seg_hrnet_w18_small_v1",
                                  "hrnetv2p_w18"])
def test_small_models_run(name):
    model = models.create(name, config=TINY)
    v = _init(model)
    out = _apply(model, v, jax.random.normal(jax.random.PRNGKey(0), (1, 64, 96, 3)), train=False)
    assert all(np.isfinite(np.asarray(o)).all() for o in jax.tree_util.tree_leaves(out))


def test_ocr_runs_in_train_mode_with_dropout_rng():
    model = models.create("seg_hrnet_ocr_w48", config=TINY, num_classes=5)
    v = _init(model)
    (aux, out), _ = _apply(model, v, jnp.ones((2, 64, 96, 3)), train=True, mutable=["batch_stats"],
                           rngs={"dropout": jax.random.PRNGKey(1)})
    assert aux.shape == out.shape == (2, 16, 24, 5)


def test_features_backbone_returns_four_streams():
    model = models.create("hrnet_w32", head="features")
    out = jax.eval_shape(lambda: model.init_with_output(jax.random.PRNGKey(0), jnp.zeros((1, 256, 192, 3)))[0])
    assert [o.shape for o in out] == [(1, 64, 48, 32), (1, 32, 24, 64), (1, 16, 12, 128), (1, 8, 6, 256)]


def test_unknown_name_and_override_are_named():
    with pytest.raises(KeyError, match="hrnet_w32"):
        models.create("hrnet_w33")
    with pytest.raises(TypeError, match="num_outputs"):
        models.create("hrnet_w32", num_outptus=10)


def test_nearest_fusion_rejects_sizes_not_divisible_by_32():
    model = models.create("hrnet_w18_small_v1")
    with pytest.raises(ValueError, match="divisible by 32"):
        jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 72, 72, 3))))


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("src,dst", [((5, 7), (20, 28)), ((8, 8), (3, 5)), ((13, 6), (26, 12))])
def test_bilinear_resize_matches_torch_interpolate(align_corners, src, dst):
    torch = pytest.importorskip("torch")
    x = np.random.RandomState(0).randn(2, 3, *src).astype(np.float32)
    ref = torch.nn.functional.interpolate(torch.from_numpy(x), size=dst, mode="bilinear",
                                          align_corners=align_corners).numpy()
    got = resize_bilinear(jnp.asarray(x.transpose(0, 2, 3, 1)), dst, align_corners)
    np.testing.assert_allclose(np.asarray(got).transpose(0, 3, 1, 2), ref, rtol=1e-5, atol=1e-5)
