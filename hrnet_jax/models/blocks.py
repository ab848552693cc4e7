"""Residual blocks: BasicBlock (expansion 1) and Bottleneck (expansion 4), as in ResNet / HRNet."""
from __future__ import annotations

from typing import Any, Callable

import jax.numpy as jnp
import flax.linen as nn

from hrnet_jax.models.layers import KAIMING_FAN_OUT, ConvBNMixin


class _Block(ConvBNMixin, nn.Module):
    planes: int
    stride: int = 1
    downsample: bool = False
    train: bool = False
    bn_momentum: float = 0.9
    dtype: Any = None
    param_dtype: Any = jnp.float32
    kernel_init: Callable = KAIMING_FAN_OUT

    def _shortcut(self, x, out_ch):
        if not self.downsample:
            return x
        return self._bn("downsample.1")(self._conv(out_ch, 1, self.stride, "downsample.0")(x))


class BasicBlock(_Block):
    """conv3x3 → BN → ReLU → conv3x3 → BN → (+ shortcut) → ReLU."""

    expansion = 1

    @nn.compact
    def __call__(self, x):
        y = nn.relu(self._bn("bn1")(self._conv(self.planes, 3, self.stride, "conv1")(x)))
        y = self._bn("bn2")(self._conv(self.planes, 3, 1, "conv2")(y))
        return nn.relu(y + self._shortcut(x, self.planes))


class Bottleneck(_Block):
    """conv1x1 → BN → ReLU → conv3x3 → BN → ReLU → conv1x1 (×4) → BN → (+ shortcut) → ReLU."""

    expansion = 4

    @nn.compact
    def __call__(self, x):
        y = nn.relu(self._bn("bn1")(self._conv(self.planes, 1, 1, "conv1")(x)))
        y = nn.relu(self._bn("bn2")(self._conv(self.planes, 3, self.stride, "conv2")(y)))
        y = self._bn("bn3")(self._conv(self.planes * 4, 1, 1, "conv3")(y))
        return nn.relu(y + self._shortcut(x, self.planes * 4))


BLOCKS = {"BASIC": BasicBlock, "BOTTLENECK": Bottleneck}
