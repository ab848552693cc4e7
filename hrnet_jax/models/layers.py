"""Primitive layers with PyTorch-faithful semantics: conv, BatchNorm, resizes.

Naming: every module in this package is named so that its parameter path, joined with ".", is the PyTorch
state-dict key of the reference implementations (e.g. ``stage2.0.fuse_layers.1.0.0.0.weight``). Scanned
runs of identical modules are named ``"start:stop"`` (a Python slice over the PyTorch indices) and carry
stacked parameters; see :mod:`hrnet_jax.models.params`.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn

Dtype = Any

# Initialisers of the reference repos (hrnet-reference.md section 5).
KAIMING_FAN_OUT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")  # CLS / timm convs
NORMAL_0001 = nn.initializers.normal(0.001)  # POSE / SEG convs
TORCH_LINEAR = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")  # nn.Linear default


class Conv(nn.Conv):
    """``nn.Conv`` (same parameters, names and shapes); a 1x1 stride-1 conv runs as one matmul over the channels,
    and with ``onednn=True`` every other float32 conv computes its gradients with oneDNN
    (:mod:`hrnet_jax.kernels.onednn`; the forward pass stays XLA's). With ``onednn=True, serial=True`` (a conv in a
    single-stream section of a training network, where nothing else runs beside it) every float32 conv, 1x1
    included, runs forward and backward in oneDNN on all cores (``onednn.conv2d(serial=True)``).

    ``[N*H*W, Cin] @ [Cin, Cout]`` is the same arithmetic, but XLA CPU computes its gradients as plain matmuls
    instead of a "convolution" whose window is the whole feature map: the pointwise convs of HRNet's
    bottlenecks and fusion units train 2-4x faster that way (measured on 2 cores, jax 0.10 and 0.12).
    """

    onednn: bool = False
    serial: bool = False

    @nn.compact
    def __call__(self, inputs):
        if self.onednn and self.serial and self._onednn_ok(inputs):
            return self._onednn_call(inputs)
        pointwise = (tuple(self.kernel_size) == (1, 1) and self.strides in (1, None, (1, 1))
                     and self.padding in ("VALID", "SAME", ((0, 0), (0, 0))) and self.feature_group_count == 1
                     and self.kernel_dilation in (1, None, (1, 1)) and inputs.ndim == 4)
        if not pointwise:
            if self.onednn and self._onednn_ok(inputs):
                return self._onednn_call(inputs)
            return super().__call__(inputs)
        cin = inputs.shape[-1]
        kernel, bias = self._kernel_and_bias(cin)
        x, kernel, bias = nn.dtypes.promote_dtype(inputs, kernel, bias, dtype=self.dtype)
        y = jnp.dot(x.reshape(-1, cin), kernel.reshape(cin, self.features), precision=self.precision)
        y = y.reshape(*x.shape[:-1], self.features)
        return y if bias is None else y + bias

    def _kernel_and_bias(self, cin: int):
        """The parameters ``nn.Conv`` would create, for the paths that compute the conv themselves."""
        kernel = self.param("kernel", self.kernel_init, (*self.kernel_size, cin, self.features), self.param_dtype)
        bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
        return kernel, bias

    def _onednn_ok(self, inputs) -> bool:
        s, p, d = self.strides, self.padding, self.kernel_dilation
        dtype = self.dtype or inputs.dtype
        return (inputs.ndim == 4 and self.feature_group_count == 1 and d in (1, None, (1, 1))
                and isinstance(s, tuple) and s[0] == s[1] and isinstance(p, tuple) and len(p) == 2
                and p[0][0] == p[0][1] == p[1][0] == p[1][1] and jnp.dtype(dtype) == jnp.float32
                and self.param_dtype == jnp.float32)

    def _onednn_call(self, inputs):
        from hrnet_jax.kernels import onednn
        kernel, bias = self._kernel_and_bias(inputs.shape[-1])
        y = onednn.conv2d(inputs.astype(jnp.float32), kernel, self.strides[0], self.padding[0][0],
                          serial=self.serial)
        return y if bias is None else y + bias


def conv(features: int, kernel: int = 3, stride: int = 1, *, bias: bool = False, name: str,
         dtype: Dtype = None, param_dtype: Dtype = jnp.float32,
         kernel_init: Callable = KAIMING_FAN_OUT, onednn: bool = False, serial: bool = False) -> nn.Conv:
    """A PyTorch-style Conv2d: symmetric padding k//2 (never XLA 'SAME', which pads (0,1) at stride 2)."""
    pad = kernel // 2
    return Conv(features, (kernel, kernel), strides=(stride, stride), padding=((pad, pad), (pad, pad)),
                use_bias=bias, dtype=dtype, param_dtype=param_dtype, kernel_init=kernel_init,
                bias_init=nn.initializers.zeros, name=name, onednn=onednn, serial=serial)


class BatchNorm(nn.Module):
    """BatchNorm2d with PyTorch semantics, on the last (channel) axis.

    Variables have Flax's names (``params/{scale,bias}``, ``batch_stats/{mean,var}``). Differences from
    ``flax.linen.BatchNorm``: the running variance is updated with the *unbiased* batch variance (n/(n-1)),
    as ``torch.nn.BatchNorm2d`` does, and statistics are always reduced in float32. ``momentum`` follows the
    Flax convention: ``running = momentum * running + (1 - momentum) * batch`` (PyTorch 0.1 == Flax 0.9).
    Under ``jax.jit`` with a batch-sharded input the statistics are over the global batch.
    """

    use_running_average: bool
    momentum: float = 0.9
    epsilon: float = 1e-5
    unbiased_running_var: bool = True
    dtype: Dtype = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (c,), self.param_dtype)
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
        if self.use_running_average:
            mean, var = ra_mean.value, ra_var.value
        else:
            axes = tuple(range(x.ndim - 1))
            xf = x.astype(jnp.float32)
            mean = jnp.mean(xf, axes)
            var = jnp.mean(jnp.square(xf - mean), axes)
            if not self.is_initializing():
                n = x.size // c
                unbiased = var * (n / (n - 1)) if (self.unbiased_running_var and n > 1) else var
                m = self.momentum
                ra_mean.value = m * ra_mean.value + (1.0 - m) * mean
                ra_var.value = m * ra_var.value + (1.0 - m) * unbiased
        mul = scale.astype(jnp.float32) * jax.lax.rsqrt(var + self.epsilon)
        shift = bias.astype(jnp.float32) - mean * mul
        dtype = self.dtype or x.dtype
        return (x.astype(jnp.float32) * mul + shift).astype(dtype)


class ConvBNMixin:
    """``_conv`` / ``_bn`` factories and the ``_cut`` output cut for modules with ``train``, ``bn_momentum``,
    ``dtype``, ``param_dtype``, ``kernel_init``, ``cut_fusion``, ``onednn`` and optionally ``serial`` fields
    (residual blocks, the exchange unit)."""

    def _conv(self, features, kernel, stride, name):
        return conv(features, kernel, stride, name=name, dtype=self.dtype, param_dtype=self.param_dtype,
                    kernel_init=self.kernel_init, onednn=self.onednn, serial=getattr(self, "serial", False))

    def _bn(self, name):
        return BatchNorm(use_running_average=not self.train, momentum=self.bn_momentum, dtype=self.dtype,
                         param_dtype=self.param_dtype, name=name)

    def _cut(self, y):
        return cut_fusion(y) if self.cut_fusion else y


def cut_fusion(x: jax.Array) -> jax.Array:
    """``x`` unchanged, computed into a buffer of its own that XLA will not re-compute in its consumers.

    XLA's CPU fusion pass copies cheap elementwise producers into every consumer. HRNet's residual streams are
    such chains: ``x_k = relu(bn(conv(..)) + x_{k-1})`` through a whole stage. Left alone, every block's add
    and every transpose that a conv weight gradient needs re-computes all earlier blocks' BN / add / ReLU
    (a 60-operand loop fusion per block). Measured on 2 CPU cores (pose W32 256x192, batch 4): train step
    4.1 s -> 1.7 s, inference -13%. A float divide counts as expensive, so XLA does not duplicate it, and
    ``x / 1`` is exact; the denominator is built from ``x`` so that no simplifier folds it away.
    (``lax.optimization_barrier`` does not do this under jax 0.10: its XLA expands barriers before fusion.)
    """
    return x / jax.lax.stop_gradient(x * 0 + 1)


def upsample_nearest(x: jax.Array, factor: int) -> jax.Array:
    """``nn.Upsample(scale_factor=factor, mode='nearest')`` on NHWC: pixel repetition."""
    if factor == 1:
        return x
    b, h, w, c = x.shape
    x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, factor, w, factor, c))
    return x.reshape(b, h * factor, w * factor, c)


@functools.lru_cache(maxsize=256)
def _interp_matrix(out_size: int, in_size: int, align_corners: bool) -> np.ndarray:
    """(out, in) linear-interpolation weights with PyTorch's ``F.interpolate(mode='bilinear')`` rules."""
    m = np.zeros((out_size, in_size), np.float64)
    if align_corners:
        scale = (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
        src = np.arange(out_size) * scale
    else:
        scale = in_size / out_size
        src = np.maximum((np.arange(out_size) + 0.5) * scale - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    frac = src - i0
    rows = np.arange(out_size)
    np.add.at(m, (rows, i0), 1.0 - frac)
    np.add.at(m, (rows, i1), frac)
    return m.astype(np.float32)


def resize_bilinear(x: jax.Array, size: Sequence[int], align_corners: bool) -> jax.Array:
    """Bilinear resize of NHWC ``x`` to ``size`` (H, W), exactly as PyTorch's ``F.interpolate``.

    Implemented as two small matmuls with precomputed interpolation matrices, so both ``align_corners``
    settings are exact (``jax.image.resize`` only covers the half-pixel case) and the op stays MXU-friendly.
    """
    h, w = x.shape[1], x.shape[2]
    oh, ow = int(size[0]), int(size[1])
    if (oh, ow) == (h, w):
        return x
    mh = jnp.asarray(_interp_matrix(oh, h, align_corners), x.dtype)
    mw = jnp.asarray(_interp_matrix(ow, w, align_corners), x.dtype)
    x = jnp.einsum("oh,bhwc->bowc", mh, x, precision=jax.lax.Precision.HIGHEST)
    return jnp.einsum("pw,bowc->bopc", mw, x, precision=jax.lax.Precision.HIGHEST)
