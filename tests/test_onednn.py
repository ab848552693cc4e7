"""The oneDNN convolutions and their gradients (kernels/onednn) against XLA's own convolutions and gradients.

XLA's CPU kernels (Eigen / YNNPACK) and oneDNN's are independent implementations; they must agree to float32
rounding for every geometry HRNet uses (3x3 stride 1 and 2, the 3-channel stem, 1x1 projections, non-square
maps, odd sizes whose stride-2 output drops a row), with oneDNN's forward pass ("serial" convs) or XLA's, on one
OpenMP thread or several, and for the whole network."""
import platform
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hrnet_jax.kernels import onednn

# pyproject installs oneDNN on x86-64 Linux: there the kernels must build (a failure is an error, not a skip).
SUPPORTED = sys.platform == "linux" and platform.machine() == "x86_64"
pytestmark = pytest.mark.skipif(not SUPPORTED, reason="the oneDNN wheels are installed on x86-64 Linux only")


def test_kernels_build_and_load():
    assert onednn.unavailable_reason() is None


def _xla_conv(x, k, stride, pad):
    return jax.lax.conv_general_dilated(x, k, (stride, stride), ((pad, pad), (pad, pad)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        precision=jax.lax.Precision.HIGHEST)


@pytest.mark.parametrize("n,h,w,cin,cout,k,stride", [
    (2, 16, 12, 32, 32, 3, 1),   # a stream's BasicBlock conv, non-square
    (3, 15, 9, 18, 36, 3, 2),    # a fusion down-conv, odd sizes
    (2, 32, 24, 3, 64, 3, 2),    # the stem's first conv (3 input channels)
    (1, 7, 7, 64, 16, 3, 1),     # the lowest-resolution stream, batch 1
    (2, 9, 11, 8, 8, 5, 1),      # another kernel size (pad 2)
    (2, 8, 6, 64, 256, 1, 1),    # a Bottleneck's 1x1 projection (serial in stage 1)
])
@pytest.mark.parametrize("serial,threads", [(False, None), (True, None), (True, 2)],
                         ids=["xla-forward", "onednn-forward-all-cores", "onednn-forward-2-threads"])
def test_conv_and_gradients_match_xla(n, h, w, cin, cout, k, stride, serial, threads):
    rng = np.random.default_rng(0)
    pad = k // 2
    x = jnp.asarray(rng.standard_normal((n, h, w, cin), np.float32))
    kern = jnp.asarray(rng.standard_normal((k, k, cin, cout), np.float32) * 0.1)
    y_ref = _xla_conv(x, kern, stride, pad)
    dy = jnp.asarray(rng.standard_normal(y_ref.shape, np.float32))

    y, vjp = jax.vjp(jax.jit(lambda a, b: onednn.conv2d(a, b, stride, pad, threads=threads, serial=serial)), x, kern)
    _, vjp_ref = jax.vjp(lambda a, b: _xla_conv(a, b, stride, pad), x, kern)
    dx, dk = jax.jit(vjp)(dy)
    dx_ref, dk_ref = vjp_ref(dy)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    for got, want in ((dx, dx_ref), (dk, dk_ref)):
        assert got.shape == want.shape and got.dtype == jnp.float32
        scale = float(jnp.max(jnp.abs(want)))
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * scale)


def test_weight_gradient_by_hand():
    """A 1-channel 3x3 conv of a single 1 in a 3x3 image: dL/dk[i, j] = dy at the output pixel that sees it."""
    x = jnp.zeros((1, 3, 3, 1)).at[0, 1, 1, 0].set(1.0)
    dy = jnp.arange(9, dtype=jnp.float32).reshape(1, 3, 3, 1)
    _, vjp = jax.vjp(lambda k: onednn.conv2d(x, k, 1, 1), jnp.zeros((3, 3, 1, 1)))
    (dk,) = vjp(dy)
    # output (r, c) sees input (1, 1) through kernel tap (1 - r + 1, 1 - c + 1) = (2 - r, 2 - c)
    want = np.arange(9, dtype=np.float32).reshape(3, 3)[::-1, ::-1]
    np.testing.assert_array_equal(np.asarray(dk)[:, :, 0, 0], want)


def test_rejects_non_float32():
    with pytest.raises(TypeError, match="float32"):
        onednn.conv2d(jnp.zeros((1, 4, 4, 2), jnp.bfloat16), jnp.zeros((3, 3, 2, 2), jnp.bfloat16))


def test_hrnet_train_gradients_match_xla():
    """The whole network (every 3x3 / strided conv's backward in oneDNN, the single-stream sections' convs forward
    too) against the same network on XLA."""
    from hrnet_jax.bench import TINY_CONFIG
    from hrnet_jax import models
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((2, 64, 64, 3), np.float32))
    nets = {flag: models.create("hrnet_w18", config=TINY_CONFIG(), num_outputs=10,
                                execution=models.ExecutionPolicy(onednn=flag)) for flag in (False, True)}
    v = nets[False].init(jax.random.PRNGKey(0), x, train=False)
    labels = jnp.array([3, 7])

    def loss(params, net):
        logits, _ = net.apply({"params": params, "batch_stats": v["batch_stats"]}, x, train=True,
                              mutable=["batch_stats"])
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1))

    lowered = jax.jit(jax.grad(lambda p: loss(p, nets[True]))).lower(v["params"])
    for kind in ("fwd", "bwd_weights", "bwd_data"):
        assert f"hrnet_onednn_conv_{kind}" in lowered.as_text(), kind
    g_dnn = lowered.compile()(v["params"])
    g_xla = jax.jit(jax.grad(lambda p: loss(p, nets[False])))(v["params"])
    flat_xla = jax.tree_util.tree_flatten_with_path(g_xla)[0]
    for (path, want), got in zip(flat_xla, jax.tree.leaves(g_dnn)):
        scale = float(jnp.max(jnp.abs(want)))
        err = float(jnp.max(jnp.abs(got - want)))
        assert err <= 1e-3 * scale + 1e-7, (jax.tree_util.keystr(path), err, scale)
