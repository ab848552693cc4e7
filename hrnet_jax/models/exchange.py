"""The exchange (fusion) unit: every output stream receives the sum of all input streams.

For output ``i`` and input ``j`` (``fuse_layers.i.j``):

* ``j > i`` (lower → higher resolution, up path): 1x1 conv + BN, then upsampling by 2^(j-i). No ReLU.
  Upsampling is nearest (classification / pose / timm / detection repos) or bilinear to the target size with
  the repo's ``align_corners`` (segmentation repo).
* ``j == i``: identity.
* ``j < i`` (down path): ``i - j`` steps of 3x3 stride-2 conv + BN; every step but the last keeps ``c_j``
  channels and has a ReLU, the last maps to ``c_i`` without ReLU.

The terms are accumulated in ascending ``j`` (the reference order, which keeps float drift minimal) and the
ReLU comes after the sum.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import jax.numpy as jnp
import flax.linen as nn

from hrnet_jax.models.layers import KAIMING_FAN_OUT, ConvBNMixin, resize_bilinear, upsample_nearest


class ExchangeUnit(ConvBNMixin, nn.Module):
    channels: Sequence[int]
    num_outputs: int
    upsample: str = "nearest"  # "nearest" | "bilinear"
    align_corners: bool = False
    train: bool = False
    bn_momentum: float = 0.9
    dtype: Any = None
    param_dtype: Any = jnp.float32
    kernel_init: Callable = KAIMING_FAN_OUT

    def _term(self, xs, i, j):
        x, c = xs[j], self.channels
        if j == i:
            return x
        if j > i:
            y = self._bn(f"{i}.{j}.1")(self._conv(c[i], 1, 1, f"{i}.{j}.0")(x))
            if self.upsample == "nearest":
                y = upsample_nearest(y, 2 ** (j - i))
                if y.shape[1:3] != xs[i].shape[1:3]:
                    raise ValueError(
                        f"nearest-upsampling fusion needs input H and W divisible by 32; stream {j} upsampled "
                        f"to {y.shape[1:3]} but stream {i} is {xs[i].shape[1:3]}")
                return y
            return resize_bilinear(y, xs[i].shape[1:3], self.align_corners)
        steps = i - j
        y = x
        for k in range(steps):
            last = k == steps - 1
            y = self._conv(c[i] if last else c[j], 3, 2, f"{i}.{j}.{k}.0")(y)
            y = self._bn(f"{i}.{j}.{k}.1")(y)
            if not last:
                y = nn.relu(y)
        return y

    @nn.compact
    def __call__(self, xs):
        outs = []
        for i in range(self.num_outputs):
            y = self._term(xs, i, 0)
            for j in range(1, len(xs)):
                y = y + self._term(xs, i, j)
            outs.append(nn.relu(y))
        return tuple(outs)
