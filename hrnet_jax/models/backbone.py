"""The HRNet backbone: stem, stage 1 (``layer1``), transitions and stages 2-4; configs per width.

:func:`backbone` is called inside a model's compact ``__call__`` so that the backbone's variables sit at
the root of the tree under their PyTorch names (``conv1``, ``layer1.0``, ``transition1``, ``stage2``, ...),
exactly like every reference checkpoint.
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn

from hrnet_jax.models.blocks import Bottleneck
from hrnet_jax.models.layers import BatchNorm, conv
from hrnet_jax.models.stage import ModuleOptions, Stage, StageConfig, Transition
from hrnet_jax.models.stream import repeat


@dataclasses.dataclass(frozen=True)
class HRNetConfig:
    stages: tuple  # four StageConfig, stage 1 = layer1
    stem_width: int = 64

    @property
    def out_channels(self) -> tuple:
        return self.stages[3].out_channels


def standard(c: int) -> HRNetConfig:
    """The standard family (W18 ... W64): 4 Bottlenecks, then 1/4/3 modules of 4 BasicBlocks per stream."""
    return HRNetConfig(stages=(
        StageConfig(1, 1, "BOTTLENECK", (4,), (64,)),
        StageConfig(1, 2, "BASIC", (4, 4), (c, 2 * c)),
        StageConfig(4, 3, "BASIC", (4, 4, 4), (c, 2 * c, 4 * c)),
        StageConfig(3, 4, "BASIC", (4, 4, 4, 4), (c, 2 * c, 4 * c, 8 * c)),
    ))


CONFIGS = {
    "w18_small_v1": HRNetConfig(stages=(
        StageConfig(1, 1, "BOTTLENECK", (1,), (32,)),
        StageConfig(1, 2, "BASIC", (2, 2), (16, 32)),
        StageConfig(1, 3, "BASIC", (2, 2, 2), (16, 32, 64)),
        StageConfig(1, 4, "BASIC", (2, 2, 2, 2), (16, 32, 64, 128)),
    )),
    "w18_small_v2": HRNetConfig(stages=(
        StageConfig(1, 1, "BOTTLENECK", (2,), (64,)),
        StageConfig(1, 2, "BASIC", (2, 2), (18, 36)),
        StageConfig(3, 3, "BASIC", (2, 2, 2), (18, 36, 72)),
        StageConfig(2, 4, "BASIC", (2, 2, 2, 2), (18, 36, 72, 144)),
    )),
    **{f"w{c}": standard(c) for c in (18, 30, 32, 40, 44, 48, 64)},
}


def backbone(x, cfg: HRNetConfig, opts: ModuleOptions, train: bool, multi_scale_output: bool = True):
    """Runs the backbone on NHWC ``x``; returns the stage-4 streams (or only the highest if not multi-scale).

    Must be called from inside a compact method: the layers are created in the caller's scope.
    """
    def bn(name):
        return BatchNorm(use_running_average=not train, momentum=opts.bn_momentum, dtype=opts.dtype,
                         param_dtype=opts.param_dtype, name=name)

    def cv(features, name):
        return conv(features, 3, 2, name=name, dtype=opts.dtype, param_dtype=opts.param_dtype,
                    kernel_init=opts.kernel_init)

    # Stem: two stride-2 3x3 convs, 1/4 resolution, 64 channels.
    if opts.dtype is not None:
        x = x.astype(opts.dtype)
    x = nn.relu(bn("bn1")(cv(cfg.stem_width, "conv1")(x)))
    x = nn.relu(bn("bn2")(cv(64, "conv2")(x)))

    # Stage 1: Bottlenecks at 1/4 resolution; block 0 has the projection shortcut.
    s1 = cfg.stages[0]
    planes = s1.num_channels[0]
    x = _Layer1(planes=planes, num_blocks=s1.num_blocks[0], train=train, opts=opts, name="layer1")(x)

    xs, pre = (x,), [planes * Bottleneck.expansion]
    for s in (1, 2, 3):
        st = cfg.stages[s]
        xs = Transition(pre_channels=tuple(pre), cur_channels=st.out_channels, train=train, opts=opts,
                        name=f"transition{s}")(xs)
        xs = Stage(cfg=st, in_channels=st.out_channels, train=train, opts=opts, name=f"stage{s + 1}",
                   multi_scale_output=multi_scale_output if s == 3 else True)(xs)
        pre = list(st.out_channels)
    return xs


class _Layer1(nn.Module):
    planes: int
    num_blocks: int
    train: bool = False
    opts: ModuleOptions = ModuleOptions()

    @nn.compact
    def __call__(self, x):
        o = self.opts
        common = dict(planes=self.planes, train=self.train, bn_momentum=o.bn_momentum, dtype=o.dtype,
                      param_dtype=o.param_dtype, kernel_init=o.kernel_init)
        x = Bottleneck(**common, downsample=x.shape[-1] != self.planes * 4, name="0")(x)
        return repeat(Bottleneck, common, x, start=1, count=self.num_blocks - 1, scan=o.scan,
                      scan_unroll=o.scan_unroll)
