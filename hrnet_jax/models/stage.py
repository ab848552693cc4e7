"""High-resolution modules, stages and transitions.

* :class:`HRModule` (one "exchange unit" of the paper, ``stageS.m``): parallel :class:`Stream` s, one per
  resolution, followed by an :class:`ExchangeUnit`.
* :class:`Stage` (``stageS``): ``num_modules`` HRModules; identical modules run under ``nn.scan``. Only the
  last module may fuse into the highest resolution alone (``multi_scale_output=False``, pose models).
* :class:`Transition` (``transitionS``): adapts the previous stage's streams and adds one new stream at half
  the resolution of the lowest one (3x3 stride-2 conv + BN + ReLU from the lowest-resolution output).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Sequence

import jax.numpy as jnp
import flax.linen as nn

from hrnet_jax.models.blocks import BLOCKS
from hrnet_jax.models.exchange import ExchangeUnit
from hrnet_jax.models.layers import KAIMING_FAN_OUT, BatchNorm, conv
from hrnet_jax.models.stream import Stream, repeat


@dataclasses.dataclass(frozen=True)
class StageConfig:
    num_modules: int
    num_branches: int
    block: str  # "BASIC" | "BOTTLENECK"
    num_blocks: tuple
    num_channels: tuple

    @property
    def out_channels(self) -> tuple:
        return tuple(c * BLOCKS[self.block].expansion for c in self.num_channels)


@dataclasses.dataclass(frozen=True)
class ModuleOptions:
    """Options shared by every layer of a network (hashable, so it can be a Linen attribute)."""
    bn_momentum: float = 0.9
    upsample: str = "nearest"  # fusion up path: "nearest" (CLS/POSE/timm/DET) or "bilinear" (SEG)
    align_corners: bool = False  # for bilinear resizes (fusion up path and heads)
    scan: bool = True
    scan_unroll: Any = True  # XLA loop unrolling of scanned runs: True = full, k = rolled loop of k units
    remat: Optional[str] = None  # None or a policy name from stream.REMAT_POLICIES, applied per HRModule
    dtype: Any = None
    param_dtype: Any = jnp.float32
    kernel_init: Callable = KAIMING_FAN_OUT


class HRModule(nn.Module):
    cfg: StageConfig
    in_channels: tuple
    multi_scale_output: bool = True
    train: bool = False
    opts: ModuleOptions = ModuleOptions()

    @nn.compact
    def __call__(self, xs):
        o, cfg = self.opts, self.cfg
        common = dict(train=self.train, scan=o.scan, scan_unroll=o.scan_unroll, bn_momentum=o.bn_momentum,
                      dtype=o.dtype, param_dtype=o.param_dtype, kernel_init=o.kernel_init)
        ys = tuple(
            Stream(block=cfg.block, num_blocks=cfg.num_blocks[b], planes=cfg.num_channels[b],
                   in_channels=self.in_channels[b], name=f"branches.{b}", **common)(xs[b])
            for b in range(cfg.num_branches))
        if cfg.num_branches == 1:
            return ys
        return ExchangeUnit(channels=cfg.out_channels,
                            num_outputs=cfg.num_branches if self.multi_scale_output else 1,
                            upsample=o.upsample, align_corners=o.align_corners, train=self.train,
                            bn_momentum=o.bn_momentum, dtype=o.dtype, param_dtype=o.param_dtype,
                            kernel_init=o.kernel_init, name="fuse_layers")(ys)


class Stage(nn.Module):
    cfg: StageConfig
    in_channels: tuple
    multi_scale_output: bool = True
    train: bool = False
    opts: ModuleOptions = ModuleOptions()

    @nn.compact
    def __call__(self, xs):
        n = self.cfg.num_modules
        common = dict(cfg=self.cfg, train=self.train, opts=self.opts)
        # Modules after the first see the stage's own output widths (equal to the input widths in every
        # published config); a module whose input width differs is kept out of the scanned run.
        first_differs = tuple(self.in_channels) != self.cfg.out_channels
        start = 0
        if first_differs:
            xs = HRModule(**common, in_channels=tuple(self.in_channels),
                          multi_scale_output=self.multi_scale_output or n > 1, name="0")(xs)
            start = 1
        same = n - start - (0 if self.multi_scale_output else 1)
        xs = repeat(HRModule, dict(common, in_channels=self.cfg.out_channels), tuple(xs), start=start,
                    count=same, scan=self.opts.scan, remat=self.opts.remat,
                    scan_unroll=self.opts.scan_unroll)
        if not self.multi_scale_output and start < n:
            xs = repeat(HRModule, dict(common, in_channels=self.cfg.out_channels, multi_scale_output=False),
                        tuple(xs), start=n - 1, count=1, scan=False, remat=self.opts.remat)
        return tuple(xs)


class Transition(nn.Module):
    pre_channels: Sequence[int]
    cur_channels: Sequence[int]
    train: bool = False
    opts: ModuleOptions = ModuleOptions()

    def _conv_bn_relu(self, x, features, stride, prefix):
        o = self.opts
        x = conv(features, 3, stride, name=f"{prefix}.0", dtype=o.dtype, param_dtype=o.param_dtype,
                 kernel_init=o.kernel_init)(x)
        x = BatchNorm(use_running_average=not self.train, momentum=o.bn_momentum, dtype=o.dtype,
                      param_dtype=o.param_dtype, name=f"{prefix}.1")(x)
        return nn.relu(x)

    @nn.compact
    def __call__(self, xs):
        pre, cur = list(self.pre_channels), list(self.cur_channels)
        outs = []
        for i, c in enumerate(cur):
            if i < len(pre):
                outs.append(xs[i] if pre[i] == c else self._conv_bn_relu(xs[i], c, 1, f"{i}"))
            else:
                y = xs[-1]
                steps = i + 1 - len(pre)
                for k in range(steps):
                    y = self._conv_bn_relu(y, c if k == steps - 1 else pre[-1], 2, f"{i}.{k}")
                outs.append(y)
        return tuple(outs)
