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
    """``nn.Conv``, the type of every HRNet convolution (an execution policy, :mod:`hrnet_jax.execution`, finds the
    convs it may compute differently by this type and by their names)."""


def conv(features: int, kernel: int = 3, stride: int = 1, *, bias: bool = False, name: str,
         dtype: Dtype = None, param_dtype: Dtype = jnp.float32,
         kernel_init: Callable = KAIMING_FAN_OUT) -> nn.Conv:
    """A PyTorch-style Conv2d: symmetric padding k//2 (never XLA 'SAME', which pads (0,1) at stride 2)."""
    pad = kernel // 2
    return Conv(features, (kernel, kernel), strides=(stride, stride), padding=((pad, pad), (pad, pad)),
                use_bias=bias, dtype=dtype, param_dtype=param_dtype, kernel_init=kernel_init,
                bias_init=nn.initializers.zeros, name=name)


class ConvTranspose(nn.Module):
    """``torch.nn.ConvTranspose2d(in, features, kernel, stride, padding, output_padding=0, bias=False)`` on NHWC.

    The kernel is stored as ``(kh, kw, in, out)`` = the PyTorch weight ``(in, out, kh, kw)`` permuted with
    ``(2, 3, 0, 1)`` (no flip; :mod:`hrnet_jax.models.params` maps it). The last kernel axis is the output channel,
    so BatchNorm folding scales it as a conv's. Output size ``(H - 1) * stride - 2 * padding + kernel``.

    Computed in the sub-pixel form: output row ``stride * m + r`` only meets the kernel taps ``a`` with
    ``(a - r - padding) % stride == 0``, at input row ``m - (a - r - padding) // stride``; all ``stride²`` phases are
    one stride-1 conv of the input with ``stride² * features`` outputs, interleaved afterwards. Same values as the
    definition (the input dilated by ``stride`` and convolved with the flipped kernel), 5x faster on CPU for
    HigherHRNet's 4x4 stride-2 deconv (no multiplications by the dilation zeros)."""

    features: int
    kernel: int = 4
    stride: int = 2
    padding: int = 1
    dtype: Dtype = None
    param_dtype: Dtype = jnp.float32
    kernel_init: Callable = NORMAL_0001

    @nn.compact
    def __call__(self, x):
        k, s, p = self.kernel, self.stride, self.padding
        cin = x.shape[-1]
        kernel = self.param("kernel", self.kernel_init, (k, k, cin, self.features), self.param_dtype)
        dtype = self.dtype or x.dtype
        # taps of each phase r: (window offset e = input row - m, kernel tap a)
        taps = [[(-((a - r - p) // s), a) for a in range(k) if (a - r - p) % s == 0] for r in range(s)]
        offs = [e for phase in taps for e, _ in phase]
        e_lo, e_hi = min(offs), max(offs)
        span = e_hi - e_lo + 1
        zero = jnp.zeros((cin, self.features), self.param_dtype)
        rows = []
        for ey in range(e_lo, e_hi + 1):
            cols = []
            for ex in range(e_lo, e_hi + 1):
                phases = []
                for ry in range(s):
                    for rx in range(s):
                        ay = dict(taps[ry]).get(ey)
                        ax = dict(taps[rx]).get(ex)
                        phases.append(kernel[ay, ax] if ay is not None and ax is not None else zero)
                cols.append(jnp.concatenate(phases, axis=-1))
            rows.append(jnp.stack(cols))
        wk = jnp.stack(rows).astype(dtype)                                    # (span, span, in, s*s*out)
        h, w = x.shape[1], x.shape[2]
        oh, ow = (h - 1) * s - 2 * p + k, (w - 1) * s - 2 * p + k
        mh, mw = -(-oh // s), -(-ow // s)
        pad = [(-e_lo, mh + span - 1 - h + e_lo), (-e_lo, mw + span - 1 - w + e_lo)]
        y = jax.lax.conv_general_dilated(x.astype(dtype), wk, (1, 1), pad,
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        b = y.shape[0]
        y = y.reshape(b, mh, mw, s, s, self.features).transpose(0, 1, 3, 2, 4, 5)
        return y.reshape(b, mh * s, mw * s, self.features)[:, :oh, :ow]


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
    """``_conv`` / ``_bn`` factories for modules with ``train``, ``bn_momentum``, ``dtype``, ``param_dtype`` and
    ``kernel_init`` fields (residual blocks, the exchange unit)."""

    def _conv(self, features, kernel, stride, name):
        return conv(features, kernel, stride, name=name, dtype=self.dtype, param_dtype=self.param_dtype,
                    kernel_init=self.kernel_init)

    def _bn(self, name):
        return BatchNorm(use_running_average=not self.train, momentum=self.bn_momentum, dtype=self.dtype,
                         param_dtype=self.param_dtype, name=name)


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
