"""Segmentation losses of the HRNet-Semantic-Segmentation recipe (reference 8.3), jit-compatible.

* :func:`upsample_logits`: the 1/4-resolution logits resized bilinearly to the label size with the model's
  ``align_corners`` (the loss is taken at label resolution, not on downsampled labels).
* :func:`cross_entropy`: class-weighted cross-entropy with an ignore index, reduced like PyTorch's weighted
  ``nn.CrossEntropyLoss``: ``sum_i w[y_i] * nll_i / sum_i w[y_i]`` over the non-ignored pixels.
* :func:`ohem_cross_entropy`: online hard example mining as the reference's ``OhemCrossEntropy``: per-pixel weighted
  losses; over the non-ignored pixels the ground-truth class probability sorted ascending; ``threshold =
  max(p_sorted[min(min_kept, n - 1)], thresh)``; the *unweighted* mean of the losses of pixels with ``p <
  threshold``. The official code applies it per GPU (3 images); ``group`` images per OHEM group reproduces that
  under one global batch.
* :func:`segmentation_loss`: one output, or OCR's ``(aux, main)`` pair with weights ``(0.4, 1.0)``; only the last
  output uses OHEM, the others plain weighted cross-entropy (as the reference).
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from hrnet_jax.models.layers import resize_bilinear


def upsample_logits(logits: jax.Array, size_hw: Sequence[int], align_corners: bool) -> jax.Array:
    """(B, h, w, C) logits → (B, H, W, C) float32, bilinear as PyTorch's ``F.interpolate``."""
    return resize_bilinear(logits.astype(jnp.float32), tuple(size_hw), align_corners)


def _pixel_nll(logits: jax.Array, labels: jax.Array, ignore_index: int):
    """Per-pixel ``-log p[y]``, the gathered log-probability and the validity mask (ignore pixels: loss 0)."""
    labels = labels.astype(jnp.int32)
    valid = labels != ignore_index
    safe = jnp.where(valid, labels, 0)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    logp_y = jnp.take_along_axis(logp, safe[..., None], axis=-1)[..., 0]
    return jnp.where(valid, -logp_y, 0.0), logp_y, valid, safe


def _class_weight(safe: jax.Array, valid: jax.Array, class_weights) -> jax.Array:
    if class_weights is None:
        return valid.astype(jnp.float32)
    w = jnp.asarray(class_weights, jnp.float32)[safe]
    return jnp.where(valid, w, 0.0)


def cross_entropy(logits: jax.Array, labels: jax.Array, class_weights=None, ignore_index: int = 255) -> jax.Array:
    """Weighted mean cross-entropy over non-ignored pixels (0 when every pixel is ignored)."""
    nll, _, valid, safe = _pixel_nll(logits, labels, ignore_index)
    w = _class_weight(safe, valid, class_weights)
    return jnp.sum(w * nll) / jnp.maximum(jnp.sum(w), 1e-12)


def _ohem_one(loss: jax.Array, prob: jax.Array, valid: jax.Array, thresh: float, min_kept: int) -> jax.Array:
    loss, prob, valid = loss.reshape(-1), prob.reshape(-1), valid.reshape(-1)
    n = jnp.sum(valid.astype(jnp.int32))
    ordered = jnp.sort(jnp.where(valid, prob, jnp.inf))           # valid probabilities first, ascending
    k = jnp.clip(jnp.minimum(max(int(min_kept), 1), n - 1), 0, ordered.shape[0] - 1)
    threshold = jnp.maximum(ordered[k], thresh)
    keep = valid & (prob < threshold)
    return jnp.sum(jnp.where(keep, loss, 0.0)) / jnp.maximum(jnp.sum(keep.astype(jnp.float32)), 1.0)


def ohem_cross_entropy(logits: jax.Array, labels: jax.Array, class_weights=None, ignore_index: int = 255,
                       thresh: float = 0.9, min_kept: int = 131072, group: int = 0) -> jax.Array:
    """OHEM cross-entropy (see the module docstring); ``group`` images per OHEM group (0: the whole batch), the
    result is the mean over groups."""
    nll, logp_y, valid, safe = _pixel_nll(logits, labels, ignore_index)
    loss = _class_weight(safe, valid, class_weights) * nll     # the reference's reduction='none' weighted losses
    prob = jnp.exp(logp_y)
    b = loss.shape[0]
    g = b if not group or group >= b else int(group)
    if b % g:
        raise ValueError(f"OHEM group of {g} images does not divide the batch of {b}")

    def split(x):
        return x.reshape((b // g, g) + x.shape[1:])

    per_group = jax.vmap(lambda l, p, v: _ohem_one(l, p, v, thresh, min_kept))(split(loss), split(prob),
                                                                                split(valid))
    return jnp.mean(per_group)


def segmentation_loss(outputs, labels: jax.Array, *, align_corners: bool, class_weights=None,
                      ignore_index: int = 255, output_weights: Sequence[float] = (1.0,), ohem: bool = False,
                      ohem_thresh: float = 0.9, ohem_min_kept: int = 131072, ohem_group: int = 0):
    """The recipe's loss of one output or a tuple of outputs (OCR: ``(aux, main)``) against (B, H, W) labels.

    Returns ``(loss, {"loss_<i>": per-output loss})``; every output is upsampled to the label size first.
    """
    outs = tuple(outputs) if isinstance(outputs, (tuple, list)) else (outputs,)
    if len(output_weights) != len(outs):
        raise ValueError(f"{len(outs)} model outputs but {len(output_weights)} output weights {tuple(output_weights)}")
    size = labels.shape[1:3]
    total, parts = 0.0, {}
    for i, (out, w) in enumerate(zip(outs, output_weights)):
        logits = upsample_logits(out, size, align_corners)
        if ohem and i == len(outs) - 1:
            li = ohem_cross_entropy(logits, labels, class_weights, ignore_index, ohem_thresh, ohem_min_kept,
                                    ohem_group)
        else:
            li = cross_entropy(logits, labels, class_weights, ignore_index)
        parts[f"loss_{i}"] = li
        total = total + float(w) * li
    return total, parts
