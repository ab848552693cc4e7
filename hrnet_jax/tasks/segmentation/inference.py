"""Segmentation inference modes (reference 9.3), pure and jit-compatible, batched.

``model_fn(images)`` maps normalised NHWC images to 1/4-resolution logits (for OCR the main output). Every mode
returns a per-class *score map* at the input resolution whose argmax is the prediction:

* :func:`whole_image`: one pass over the whole image (optionally with its mirror), logits upsampled to the image
  size with the model's ``align_corners``.
* :func:`sliding_window`: windows of ``crop_hw`` every ``stride_hw`` (the last window in each direction shifted to
  end at the border, as the reference), each window's scores upsampled to the window, overlaps averaged by a
  count map. Windows run one after another under ``lax.scan``, so memory holds one window's activations.
* :func:`multi_scale`: per scale the image's long side is resized to ``base_size * scale`` (bilinear, half-pixel,
  no antialiasing, as OpenCV's INTER_LINEAR); scales <= 1 in one pass, scales > 1 by sliding windows; each
  scale's scores are resized back to the input size and combined. ``combine="exp_sum"`` is the official
  HRNet-Semantic-Segmentation rule: per pass ``exp(mean(logits, mirrored flip logits))``, summed over scales;
  ``combine="softmax_mean"`` is the common variant (mmseg's): per pass the mean of the softmax probabilities,
  averaged over scales.
"""
from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from hrnet_jax.models.layers import resize_bilinear

COMBINE = ("exp_sum", "softmax_mean")

ModelFn = Callable[[jax.Array], jax.Array]


def _scores(logits: jax.Array, flipped: jax.Array | None, combine: str) -> jax.Array:
    """One pass's scores from its logits (and the mirrored-back logits of the flipped input)."""
    if combine == "exp_sum":
        avg = logits if flipped is None else 0.5 * (logits + flipped)
        return jnp.exp(avg)
    if combine == "softmax_mean":
        p = jax.nn.softmax(logits, axis=-1)
        return p if flipped is None else 0.5 * (p + jax.nn.softmax(flipped, axis=-1))
    if combine == "logits":
        return logits if flipped is None else 0.5 * (logits + flipped)
    raise ValueError(f"unknown combine {combine!r}; valid: {COMBINE}")


def _pass(model_fn: ModelFn, images: jax.Array, align_corners: bool, flip: bool, combine: str) -> jax.Array:
    size = images.shape[1:3]
    logits = resize_bilinear(model_fn(images).astype(jnp.float32), size, align_corners)
    flipped = None
    if flip:
        f = resize_bilinear(model_fn(images[:, :, ::-1, :]).astype(jnp.float32), size, align_corners)
        flipped = f[:, :, ::-1, :]
    return _scores(logits, flipped, combine)


def whole_image(model_fn: ModelFn, images: jax.Array, *, align_corners: bool, flip: bool = False,
                combine: str = "logits") -> jax.Array:
    """Scores of one pass over the whole image (``combine="logits"``: the (flip-averaged) logits)."""
    return _pass(model_fn, images, align_corners, flip, combine)


def window_offsets(size_hw: Sequence[int], crop_hw: Sequence[int], stride_hw: Sequence[int]) -> list[tuple[int, int]]:
    """Top-left corners of the sliding windows over an image of ``size_hw`` (the reference's grid: ``ceil((size -
    crop) / stride) + 1`` windows per axis, the last shifted to end at the border)."""
    (h, w), (ch, cw), (sh, sw) = size_hw, crop_hw, stride_hw
    rows = int(np.ceil(max(h - ch, 0) / sh)) + 1
    cols = int(np.ceil(max(w - cw, 0) / sw)) + 1
    out = []
    for r in range(rows):
        for c in range(cols):
            h1, w1 = min(r * sh + ch, h), min(c * sw + cw, w)
            out.append((max(h1 - ch, 0), max(w1 - cw, 0)))
    return out


def sliding_window(model_fn: ModelFn, images: jax.Array, crop_hw: Sequence[int], stride_hw: Sequence[int], *,
                   align_corners: bool, flip: bool = False, combine: str = "logits",
                   pad_value: float = 0.0) -> jax.Array:
    """Count-averaged scores of the windows (see the module docstring). An image smaller than the crop is padded
    (bottom/right, ``pad_value``) for the pass and the scores cropped back."""
    b, h, w, _ = images.shape
    ch, cw = int(crop_hw[0]), int(crop_hw[1])
    ph, pw = max(ch - h, 0), max(cw - w, 0)
    if ph or pw:
        images = jnp.pad(images, ((0, 0), (0, ph), (0, pw), (0, 0)), constant_values=pad_value)
    hh, ww = h + ph, w + pw
    offsets = window_offsets((hh, ww), (ch, cw), stride_hw)
    wh, wwid = min(ch, hh), min(cw, ww)
    probe = jax.eval_shape(lambda x: _pass(model_fn, x, align_corners, False, combine),
                           jax.ShapeDtypeStruct((b, wh, wwid, images.shape[-1]), images.dtype))
    num_classes = probe.shape[-1]

    def one(carry, offset):
        acc, count = carry
        y0, x0 = offset[0], offset[1]
        crop = jax.lax.dynamic_slice(images, (0, y0, x0, 0), (b, wh, wwid, images.shape[-1]))
        s = _pass(model_fn, crop, align_corners, flip, combine)
        cur = jax.lax.dynamic_slice(acc, (0, y0, x0, 0), s.shape)
        acc = jax.lax.dynamic_update_slice(acc, cur + s, (0, y0, x0, 0))
        ccur = jax.lax.dynamic_slice(count, (y0, x0), (wh, wwid))
        count = jax.lax.dynamic_update_slice(count, ccur + 1.0, (y0, x0))
        return (acc, count), None

    init = (jnp.zeros((b, hh, ww, num_classes), jnp.float32), jnp.zeros((hh, ww), jnp.float32))
    (acc, count), _ = jax.lax.scan(one, init, jnp.asarray(offsets, jnp.int32))
    out = acc / count[None, :, :, None]
    return out[:, :h, :w]


def scaled_size(size_hw: Sequence[int], base_size: int, scale: float) -> tuple[int, int]:
    """The reference's ``multi_scale_aug`` size: long side ``int(base_size * scale + 0.5)``, the other side in
    proportion (rounded the same way)."""
    h, w = int(size_hw[0]), int(size_hw[1])
    long_size = int(base_size * scale + 0.5)
    if h > w:
        return long_size, int(w * long_size / h + 0.5)
    return int(h * long_size / w + 0.5), long_size


def multi_scale(model_fn: ModelFn, images: jax.Array, scales: Sequence[float], *, base_size: int,
                crop_hw: Sequence[int], stride_hw: Sequence[int], align_corners: bool, flip: bool = True,
                combine: str = "exp_sum", pad_value: float = 0.0) -> jax.Array:
    """Multi-scale (+ flip) scores at the input resolution (see the module docstring)."""
    if combine not in COMBINE:
        raise ValueError(f"unknown combine {combine!r}; valid: {COMBINE}")
    size = images.shape[1:3]
    total = None
    for scale in scales:
        new = scaled_size(size, base_size, scale)
        x = resize_bilinear(images, new, False)
        if scale <= 1.0:
            s = _pass(model_fn, x, align_corners, flip, combine)
        else:
            s = sliding_window(model_fn, x, crop_hw, stride_hw, align_corners=align_corners, flip=flip,
                               combine=combine, pad_value=pad_value)
        s = resize_bilinear(s, size, align_corners)
        total = s if total is None else total + s
    return total if combine == "exp_sum" else total / len(scales)
