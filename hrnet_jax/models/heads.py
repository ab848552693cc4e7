"""Representation heads of the HRNet papers. Each is called inside the model's compact ``__call__`` so its
layers carry the reference checkpoints' names at the root of the variable tree.

* :func:`classification_head` (HRNet-Wx-C): incremental Bottlenecks, stride-2 downsampling convs, a 2048-d
  1x1 conv, global average pooling and a linear classifier.
* :func:`pose_head` (HRNetV1): the highest-resolution stream → 1x1 conv → K heatmaps at 1/4 resolution.
* :func:`segmentation_head` (HRNetV2): all streams resized bilinearly to 1/4 and concatenated, then
  1x1 conv-BN-ReLU and a 1x1 conv to the classes.
* :func:`hrfpn_neck` (HRNetV2p): the V2 concatenation reduced to 256 channels and average-pooled into a
  5-level feature pyramid (strides 4-64), each level through a 3x3 conv.
* :func:`higher_head` (HigherHRNet, bottom-up): K heatmaps + K associative-embedding tags at 1/4 from the
  highest-resolution stream; that stream concatenated with them, a 4x4 stride-2 transposed conv + BN + ReLU and
  4 BasicBlocks at 1/2, then K heatmaps at 1/2 (hrnet-reference.md section 4.6).
* The OCR head is in :mod:`hrnet_jax.models.ocr`.
"""
from __future__ import annotations

import jax.numpy as jnp
import flax.linen as nn

from hrnet_jax.models.blocks import BasicBlock, Bottleneck
from hrnet_jax.models.layers import TORCH_LINEAR, BatchNorm, ConvTranspose, conv, resize_bilinear
from hrnet_jax.models.stage import ModuleOptions

HEAD_CHANNELS = (32, 64, 128, 256)


def _bn(opts: ModuleOptions, train: bool, name: str):
    return BatchNorm(use_running_average=not train, momentum=opts.bn_momentum, dtype=opts.dtype,
                     param_dtype=opts.param_dtype, name=name)


def _conv(opts: ModuleOptions, features: int, kernel: int, stride: int, bias: bool, name: str, init=None):
    return conv(features, kernel, stride, bias=bias, name=name, dtype=opts.dtype, param_dtype=opts.param_dtype,
                kernel_init=init or opts.kernel_init)


def classification_head(xs, opts: ModuleOptions, train: bool, num_classes: int, conv_bias: bool = True,
                        pre_logits: bool = False):
    y = None
    for i, x in enumerate(xs):
        inc = Bottleneck(planes=HEAD_CHANNELS[i], downsample=True, train=train, bn_momentum=opts.bn_momentum,
                         dtype=opts.dtype, param_dtype=opts.param_dtype, kernel_init=opts.kernel_init,
                         name=f"incre_modules.{i}.0")(x)
        if y is None:
            y = inc
        else:
            d = _conv(opts, HEAD_CHANNELS[i] * 4, 3, 2, conv_bias, f"downsamp_modules.{i - 1}.0")(y)
            y = inc + nn.relu(_bn(opts, train, f"downsamp_modules.{i - 1}.1")(d))
    y = _conv(opts, 2048, 1, 1, conv_bias, "final_layer.0")(y)
    y = nn.relu(_bn(opts, train, "final_layer.1")(y))
    y = jnp.mean(y.astype(jnp.float32), axis=(1, 2))
    if pre_logits:
        return y
    return nn.Dense(num_classes, dtype=opts.dtype, param_dtype=opts.param_dtype, kernel_init=TORCH_LINEAR,
                    name="classifier")(y).astype(jnp.float32)


def pose_head(xs, opts: ModuleOptions, train: bool, num_joints: int):
    del train
    return _conv(opts, num_joints, 1, 1, True, "final_layer")(xs[0]).astype(jnp.float32)


HIGHER_NUM_BASIC_BLOCKS = 4  # MODEL.EXTRA.DECONV.NUM_BASIC_BLOCKS of every published HigherHRNet yaml


def higher_head(xs, opts: ModuleOptions, train: bool, num_joints: int):
    """HigherHRNet head (one deconv, CAT_OUTPUT, TAG_PER_JOINT, AE at 1/4 only; deconv width = stream-0 width).

    Returns ``(out_quarter (B, H/4, W/4, 2K): K heatmaps then K tags, out_half (B, H/2, W/2, K))``."""
    x = xs[0]
    c = x.shape[-1]
    y = _conv(opts, 2 * num_joints, 1, 1, True, "final_layers.0")(x)
    x = jnp.concatenate([x, y.astype(x.dtype)], axis=-1)
    x = ConvTranspose(c, 4, 2, 1, dtype=opts.dtype, param_dtype=opts.param_dtype, kernel_init=opts.kernel_init,
                      name="deconv_layers.0.0.0")(x)
    x = nn.relu(_bn(opts, train, "deconv_layers.0.0.1")(x))
    for i in range(1, HIGHER_NUM_BASIC_BLOCKS + 1):
        x = BasicBlock(planes=c, train=train, bn_momentum=opts.bn_momentum, dtype=opts.dtype,
                       param_dtype=opts.param_dtype, kernel_init=opts.kernel_init, name=f"deconv_layers.0.{i}.0")(x)
    y1 = _conv(opts, num_joints, 1, 1, True, "final_layers.1")(x)
    return y.astype(jnp.float32), y1.astype(jnp.float32)


def concat_streams(xs, align_corners: bool):
    """HRNetV2 representation: every stream resized (bilinear) to the highest resolution, concatenated."""
    size = xs[0].shape[1:3]
    return jnp.concatenate([xs[0]] + [resize_bilinear(x, size, align_corners) for x in xs[1:]], axis=-1)


def segmentation_head(xs, opts: ModuleOptions, train: bool, num_classes: int, prefix: str = "last_layer"):
    feats = concat_streams(xs, opts.align_corners)
    return seg_classifier(feats, opts, train, num_classes, prefix)


def seg_classifier(feats, opts: ModuleOptions, train: bool, num_classes: int, prefix: str):
    c = feats.shape[-1]
    y = _conv(opts, c, 1, 1, True, f"{prefix}.0")(feats)
    y = nn.relu(_bn(opts, train, f"{prefix}.1")(y))
    return _conv(opts, num_classes, 1, 1, True, f"{prefix}.3")(y).astype(jnp.float32)


def hrfpn_neck(xs, opts: ModuleOptions, train: bool, out_channels: int = 256, num_levels: int = 5,
               pooling: str = "avg"):
    del train
    # HRFPN upsamples with scale_factor 2^i and align_corners=False (mmdet default).
    size = xs[0].shape[1:3]
    feats = jnp.concatenate([xs[0]] + [resize_bilinear(x, size, False) for x in xs[1:]], axis=-1)
    init = nn.initializers.variance_scaling(2.0 / (1 + 1.0), "fan_in", "normal")  # kaiming_normal(a=1)
    r = _conv(opts, out_channels, 1, 1, True, "reduction_conv.0", init)(feats)
    pool = nn.avg_pool if pooling == "avg" else nn.max_pool
    levels = [r] + [pool(r, (2 ** i, 2 ** i), (2 ** i, 2 ** i), "VALID") for i in range(1, num_levels)]
    return tuple(_conv(opts, out_channels, 3, 1, True, f"fpn_conv.{i}", init)(lv).astype(jnp.float32)
                 for i, lv in enumerate(levels))
