"""Object-Contextual Representations (OCR) head for HRNetV2 segmentation (HRNet-OCR branch semantics).

feats (HRNetV2 concat) → ``aux_head`` (soft object regions) and ``conv3x3_ocr`` (512-d pixel features);
``SpatialGather``: per-class spatial softmax of the aux logits pools the pixel features into K object
representations; :class:`ObjectAttention` lets each pixel attend to the K objects; ``conv_bn_dropout`` fuses
``[context, pixel features]`` (context first); ``cls_head`` classifies. Returns ``(aux_logits, logits)``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import flax.linen as nn

from hrnet_jax.models.heads import _bn, _conv, concat_streams, seg_classifier
from hrnet_jax.models.stage import ModuleOptions

TORCH_DEFAULT_CONV = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def spatial_gather(feats, aux_logits):
    """Object region representations: softmax over pixels of each class map, then a weighted pixel sum."""
    b, h, w, c = feats.shape
    probs = jax.nn.softmax(aux_logits.reshape(b, h * w, -1).astype(jnp.float32), axis=1)  # (B, HW, K)
    return jnp.einsum("bpk,bpc->bkc", probs, feats.reshape(b, h * w, c).astype(jnp.float32))  # (B, K, C)


class ObjectAttention(nn.Module):
    """ObjectAttentionBlock2D with scale 1: pixel queries attend to object keys/values."""
    key_channels: int
    out_channels: int
    train: bool = False
    opts: ModuleOptions = ModuleOptions()

    def _proj(self, x, prefix, features, two: bool):
        o = self.opts
        x = _conv(o, features, 1, 1, False, f"{prefix}.0", TORCH_DEFAULT_CONV)(x)
        x = nn.relu(_bn(o, self.train, f"{prefix}.1.0")(x))
        if two:
            x = _conv(o, features, 1, 1, False, f"{prefix}.2", TORCH_DEFAULT_CONV)(x)
            x = nn.relu(_bn(o, self.train, f"{prefix}.3.0")(x))
        return x

    @nn.compact
    def __call__(self, pixels, objects):
        # pixels (B, H, W, C); objects (B, K, C) treated as a (B, K, 1, C) image.
        b, h, w, _ = pixels.shape
        obj = objects[:, :, None, :].astype(pixels.dtype)
        query = self._proj(pixels, "f_pixel", self.key_channels, True).reshape(b, h * w, -1)
        key = self._proj(obj, "f_object", self.key_channels, True).reshape(b, -1, self.key_channels)
        value = self._proj(obj, "f_down", self.key_channels, False).reshape(b, -1, self.key_channels)
        sim = jnp.einsum("bpc,bkc->bpk", query.astype(jnp.float32), key.astype(jnp.float32))
        sim = jax.nn.softmax(sim * self.key_channels ** -0.5, axis=-1)
        ctx = jnp.einsum("bpk,bkc->bpc", sim, value.astype(jnp.float32)).reshape(b, h, w, -1)
        return self._proj(ctx.astype(pixels.dtype), "f_up", self.out_channels, False)


class SpatialOCR(nn.Module):
    key_channels: int = 256
    out_channels: int = 512
    dropout: float = 0.05
    train: bool = False
    opts: ModuleOptions = ModuleOptions()

    @nn.compact
    def __call__(self, pixels, objects):
        o = self.opts
        ctx = ObjectAttention(self.key_channels, pixels.shape[-1], train=self.train, opts=o,
                              name="object_context_block")(pixels, objects)
        y = jnp.concatenate([ctx, pixels.astype(ctx.dtype)], axis=-1)
        y = _conv(o, self.out_channels, 1, 1, False, "conv_bn_dropout.0", TORCH_DEFAULT_CONV)(y)
        y = nn.relu(_bn(o, self.train, "conv_bn_dropout.1.0")(y))
        # Dropout2d: whole channels dropped per example.
        return nn.Dropout(self.dropout, broadcast_dims=(1, 2), deterministic=not self.train)(y)


def ocr_head(xs, opts: ModuleOptions, train: bool, num_classes: int, mid_channels: int = 512,
             key_channels: int = 256):
    feats = concat_streams(xs, opts.align_corners)
    aux = seg_classifier(feats, opts, train, num_classes, "aux_head")
    pix = _conv(opts, mid_channels, 3, 1, True, "conv3x3_ocr.0")(feats)
    pix = nn.relu(_bn(opts, train, "conv3x3_ocr.1")(pix))
    objects = spatial_gather(pix, aux)
    y = SpatialOCR(key_channels, mid_channels, train=train, opts=opts, name="ocr_distri_head")(pix, objects)
    out = _conv(opts, num_classes, 1, 1, True, "cls_head", TORCH_DEFAULT_CONV)(y).astype(jnp.float32)
    return aux, out
