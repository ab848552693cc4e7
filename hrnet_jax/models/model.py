"""The HRNet model: backbone + one representation head, as a single Linen module (the architecture only).

``HRNet(...).apply(variables, images_nhwc, train=bool, mutable=[...])``. :func:`hrnet_jax.models.create` returns
it wrapped with an execution policy (:mod:`hrnet_jax.execution`: oneDNN convs, fusion cuts on CPUs), which computes
the same function with the same variables. Outputs by ``head``:

* ``"classification"``: logits (B, num_classes)
* ``"pose"`` (V1): heatmaps (B, H/4, W/4, num_outputs)
* ``"higher"`` (HigherHRNet, bottom-up): tuple (heatmaps + tags (B, H/4, W/4, 2 * num_outputs),
  heatmaps (B, H/2, W/2, num_outputs))
* ``"segmentation"`` (V2): logits (B, H/4, W/4, num_outputs)
* ``"ocr"``: tuple (aux logits, logits), both (B, H/4, W/4, num_outputs)
* ``"v2p"``: tuple of 5 pyramid levels (B, H/2^(i+2), W/2^(i+2), 256)
* ``"features"``: tuple of the four stage-4 streams (C, 2C, 4C, 8C channels at strides 4, 8, 16, 32)
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import jax.numpy as jnp
import flax.linen as nn

from hrnet_jax.models.backbone import HRNetConfig, backbone
from hrnet_jax.models.heads import classification_head, higher_head, hrfpn_neck, pose_head, segmentation_head
from hrnet_jax.models.layers import KAIMING_FAN_OUT
from hrnet_jax.models.ocr import ocr_head
from hrnet_jax.models.stage import ModuleOptions

HEADS = ("classification", "pose", "segmentation", "ocr", "v2p", "features", "higher")
_SINGLE_SCALE_HEADS = ("pose", "higher")  # stage 4's last module fuses into the highest resolution only


class HRNet(nn.Module):
    config: HRNetConfig
    head: str = "classification"
    num_outputs: int = 1000
    head_conv_bias: bool = True  # classification head convs (False for the PaddleClas "ssld" weights)
    ocr_mid_channels: int = 512  # OCR head: pixel / object representation width (MODEL.OCR.MID_CHANNELS)
    ocr_key_channels: int = 256  # OCR head: attention key width (MODEL.OCR.KEY_CHANNELS)
    bn_momentum: float = 0.9  # Flax convention (PyTorch 0.1); 0.99 for the SEG master/v1.1 branches
    upsample: str = "nearest"
    align_corners: bool = False
    scan: bool = True  # identical blocks / modules under nn.scan with stacked parameters
    scan_unroll: Any = True  # XLA unrolling of scanned runs (True = full; 1 = rolled loop, faster compile)
    remat: Optional[str] = None
    dtype: Any = None  # compute dtype, e.g. jnp.bfloat16
    param_dtype: Any = jnp.float32
    kernel_init: Callable = KAIMING_FAN_OUT

    @property
    def opts(self) -> ModuleOptions:
        return ModuleOptions(bn_momentum=self.bn_momentum, upsample=self.upsample,
                             align_corners=self.align_corners, scan=self.scan, scan_unroll=self.scan_unroll,
                             remat=self.remat, dtype=self.dtype, param_dtype=self.param_dtype,
                             kernel_init=self.kernel_init)

    @nn.compact
    def __call__(self, images, train: bool = False):
        if self.head not in HEADS:
            raise ValueError(f"unknown head {self.head!r}; valid: {HEADS}")
        opts = self.opts
        xs = backbone(images, self.config, opts, train, multi_scale_output=self.head not in _SINGLE_SCALE_HEADS)
        if self.head == "classification":
            return classification_head(xs, opts, train, self.num_outputs, self.head_conv_bias)
        if self.head == "pose":
            return pose_head(xs, opts, train, self.num_outputs)
        if self.head == "higher":
            return higher_head(xs, opts, train, self.num_outputs)
        if self.head == "segmentation":
            return segmentation_head(xs, opts, train, self.num_outputs)
        if self.head == "ocr":
            return ocr_head(xs, opts, train, self.num_outputs, self.ocr_mid_channels, self.ocr_key_channels)
        if self.head == "v2p":
            return hrfpn_neck(xs, opts, train)
        return tuple(x.astype(jnp.float32) for x in xs)
