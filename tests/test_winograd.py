"""Winograd F(2x2, 3x3) convolutions (hrnet_jax.kernels.winograd) against a direct 3x3 convolution written in numpy
and XLA's own convolution; the inference entry point with Winograd against the unfolded model computed with XLA's
convs; the transformed kernels it keeps, counted by hand from the tiny architecture."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hrnet_jax import inference, models
from hrnet_jax.kernels import winograd
from hrnet_jax.tasks.model_config import arch_from_dict
from test_export import TINY_ARCH, random_variables


def direct_conv3x3(x: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Stride 1, zero padding 1, NHWC / HWIO, in float64: the definition, nine shifted products."""
    n, h, w, _ = x.shape
    xp = np.pad(x.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = np.zeros((n, h, w, k.shape[-1]))
    for a in range(3):
        for b in range(3):
            out += xp[:, a:a + h, b:b + w, :] @ k[a, b].astype(np.float64)
    return out


@pytest.mark.parametrize("shape", [(2, 7, 5, 6), (1, 8, 8, 16), (3, 1, 1, 4), (2, 6, 9, 8)])
def test_conv3x3_equals_the_direct_convolution(shape):
    """Even and odd heights / widths (odd ones are padded to whole tiles and cropped), a 1x1 map."""
    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal(shape).astype(np.float32)
    k = (rng.standard_normal((3, 3, shape[-1], 5)) / np.sqrt(9 * shape[-1])).astype(np.float32)
    want = direct_conv3x3(x, k)
    got = np.asarray(jax.jit(winograd.conv3x3)(jnp.asarray(x), jnp.asarray(k)))
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=2e-6 * np.abs(want).max(), rtol=0)
    xla = jax.lax.conv_general_dilated(jnp.asarray(x), jnp.asarray(k), (1, 1), ((1, 1), (1, 1)),
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"), precision="highest")
    np.testing.assert_allclose(got, np.asarray(xla), atol=2e-6 * np.abs(want).max(), rtol=0)


def test_kernel_transform_is_g_g_gt_and_inverts():
    rng = np.random.default_rng(0)
    g = rng.standard_normal((3, 3, 4, 6)).astype(np.float32)
    G = np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]])   # Lavin & Gray's F(2x2, 3x3)
    want = np.einsum("pa,abio,qb->pqio", G, g.astype(np.float64), G)
    u = winograd.winograd_kernel(jnp.asarray(g))
    np.testing.assert_allclose(np.asarray(u), want, atol=1e-6, rtol=0)
    np.testing.assert_allclose(np.asarray(winograd.kernel_of(u)), g, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="input channels"):
        winograd.conv3x3(jnp.zeros((1, 4, 4, 3)), transformed=u)


@pytest.fixture(scope="module")
def tiny():
    model = models.create("pose_hrnet_w18_small_v1", num_joints=5, config=arch_from_dict(TINY_ARCH))
    return model, random_variables(model, (32, 32))


def _leaves(tree, name):
    return [v for p, v in jax.tree_util.tree_leaves_with_path(tree) if getattr(p[-1], "key", None) == name]


def test_entry_point_with_winograd_equals_the_model(tiny):
    """``winograd=4`` (every 3x3 stride-1 conv of the tiny net with >= 4 channels) against ``model.apply`` with
    XLA's convs and BN unfolded, at two batch sizes and an input whose lowest stream has odd sizes (3x5)."""
    model, variables = tiny
    ref = jax.jit(lambda v, x: model.apply(v, x, train=False))
    run = inference.compile(model, variables, winograd=4)
    for b in (1, 3):
        x = jax.random.normal(jax.random.PRNGKey(b), (b, 96, 160, 3))
        want = np.asarray(ref(variables, x))
        np.testing.assert_allclose(np.asarray(run(x)), want, atol=1e-5 * np.abs(want).max(), rtol=0)
    # By hand from TINY_ARCH: stage 1's bottleneck conv2 (4 -> 4), transition1's stride-1 branch (16 -> 4),
    # the two convs of each BasicBlock in stages 2-4 (2 + 3 + 4 blocks); the stem's and the transitions' and
    # fusions' stride-2 convs are not Winograd's.
    transformed = _leaves(run.variables["winograd"], "kernel")
    assert len(transformed) == 1 + 1 + 2 * (2 + 3 + 4)
    assert all(u.shape[:2] == (4, 4) for u in transformed)
    plain = inference.compile(model, variables, winograd=0)
    n3x3 = lambda v: sum(k.shape[:2] == (3, 3) for k in _leaves(v["params"], "kernel"))  # noqa: E731
    assert n3x3(plain.variables) - n3x3(run.variables) == len(transformed)   # the 3x3 kernels they replace
    assert "winograd" not in plain.variables
    # only channels >= 8: stage 1 and the 4-channel streams keep XLA's conv
    assert len(_leaves(inference.compile(model, variables, winograd=8).variables["winograd"], "kernel")) == 2 * (1 + 2 + 3)


def test_a_program_for_several_platforms_uses_winograd_on_cpu_only(tiny):
    """Lowered for cpu and cuda, the program holds both branches (a platform switch); run here it equals the
    model."""
    from jax import export as jex
    model, variables = tiny
    apply_fn, v = inference.prepare(model, variables, winograd=4, platforms=("cpu", "cuda"))
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 32, 32, 3))
    exp = jex.export(jax.jit(lambda x: apply_fn(v, x)), platforms=("cpu", "cuda"))(
        jax.ShapeDtypeStruct(x.shape, jnp.float32))
    text = exp.mlir_module()
    assert "stablehlo.case" in text and "stablehlo.convolution" in text
    want = np.asarray(model.apply(variables, x, train=False))
    np.testing.assert_allclose(np.asarray(exp.call(x)), want, atol=1e-5 * np.abs(want).max(), rtol=0)
