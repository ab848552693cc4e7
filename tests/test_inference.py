"""hrnet_jax.inference: the entry point computes model.apply(train=False) (BN folded, XLA convs, inference compiler
options), also traced inside jit with changing variables; models that are not HRNets pass through; the on-device
top-down crop is the official crop transform (cv2.warpAffine) in floating point."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hrnet_jax import inference, models
from hrnet_jax.data.ops import affine as T
from hrnet_jax.tasks.model_config import arch_from_dict
from test_export import TINY_ARCH, random_variables


@pytest.fixture(scope="module")
def tiny():
    model = models.create("pose_hrnet_w18_small_v1", num_joints=5, config=arch_from_dict(TINY_ARCH))
    return model, random_variables(model, (32, 32))


def test_compile_equals_model_apply_at_two_batch_sizes(tiny):
    model, variables = tiny
    ref = jax.jit(lambda v, x: model.apply(v, x, train=False))
    run = inference.compile(model, variables, example=jnp.zeros((2, 32, 32, 3)))
    assert len(run._compiled) == 1
    for b in (2, 3):
        x = jax.random.normal(jax.random.PRNGKey(b), (b, 32, 32, 3))
        want = np.asarray(ref(variables, x))
        np.testing.assert_allclose(np.asarray(run(x)), want, atol=1e-5 * np.abs(want).max(), rtol=0)
    assert len(run._compiled) == 2
    assert "batch_stats" not in run.variables          # BN folded into the convs
    text = run.lower(jnp.zeros((2, 32, 32, 3))).as_text()
    assert "custom_call" not in text                    # XLA convs only (no oneDNN)


def test_prepare_traces_inside_jit_with_changing_variables(tiny):
    model, variables = tiny

    @jax.jit
    def step(v, x):   # an eval step: folding inside the compiled function
        apply_fn, iv = inference.prepare(model, v)
        return apply_fn(iv, x, train=False)

    ref = jax.jit(lambda v, x: model.apply(v, x, train=False))
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 32, 32, 3))
    for v in (variables, random_variables(model, (32, 32), seed=1)):
        want = np.asarray(ref(v, x))
        np.testing.assert_allclose(np.asarray(step(v, x)), want, atol=1e-5 * np.abs(want).max(), rtol=0)
    with pytest.raises(ValueError, match="train=False"):
        inference.prepare(model, variables)[0](variables, x, train=True)


def test_a_model_that_is_not_an_hrnet_passes_through():
    import flax.linen as nn

    class TinyCNN(nn.Module):   # conv + Flax's own BatchNorm (not HRNet's): nothing to fold
        @nn.compact
        def __call__(self, x, train: bool = False):
            x = nn.BatchNorm(use_running_average=not train)(nn.Conv(4, (3, 3), use_bias=False)(x))
            return nn.Dense(3)(jnp.mean(nn.relu(x), axis=(1, 2)))

    model = TinyCNN()
    v = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)))
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 8, 3))
    run = inference.compile(model, v)
    assert run.apply_fn is not None and "batch_stats" in run.variables   # its own apply, nothing folded
    np.testing.assert_allclose(np.asarray(run(x)), np.asarray(jax.jit(model.apply)(v, x)), atol=1e-6)


def _cv2_crop(img, box, out_hw, padding=1.25):
    c, s = T.box_to_center_scale(box, out_hw[1] / out_hw[0], padding)
    return T.warp_image(img, T.get_affine_transform(c, s, 0, (out_hw[1], out_hw[0])), (out_hw[1], out_hw[0]))


def _crop(img, box, out_hw, padding=1.25):
    c, s = inference.boxes_to_center_scale(jnp.asarray([box], jnp.float32), out_hw[1] / out_hw[0], padding)
    return np.asarray(inference.crop_boxes(jnp.asarray(img), c, s, out_hw))[0]


def test_crop_is_the_official_transform():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    # a box whose crop is a pixel-aligned window at scale 1 (40x40 box x 1.25 = 50 px for a 50x50 crop): the
    # image window itself (up to the float rounding of scale = 40 / 200 * 1.25)
    got, want = _crop(img, (15, 5, 40, 40), (50, 50)), _cv2_crop(img, (15, 5, 40, 40), (50, 50))
    np.testing.assert_array_equal(want, img[0:50, 10:60])
    np.testing.assert_allclose(got, img[0:50, 10:60], atol=0.01)
    # partly outside the image: zeros there, as cv2's constant border
    got = _crop(img, (-20, -10, 40, 40), (50, 50))
    assert np.all(got[:12] == 0) and np.all(got[:, :22] == 0)
    np.testing.assert_allclose(got, _cv2_crop(img, (-20, -10, 40, 40), (50, 50)), atol=0.01)
    # general scale: OpenCV's 1/32-pixel fixed point vs float bilinear, within a grey level or two
    for box in ((7.3, 3.1, 33.0, 47.5), (30, 20, 45, 30)):
        got, want = _crop(img, box, (64, 48)), _cv2_crop(img, box, (64, 48)).astype(np.float32)
        assert np.abs(got - want).max() <= 3.0 and np.abs(got - want).mean() < 0.6
