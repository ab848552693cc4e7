"""HigherHRNet training loss (jax.numpy, jit-able, static shapes): masked heatmap MSE at every output resolution
and the associative-embedding (AE) grouping loss on the 1/4-resolution tags (HigherHRNet lib/core/loss.py;
hrnet-reference.md section 4.6).

Layouts: outputs NHWC as the model returns them, ``(out_q (B, H4, W4, 2K) = K heatmaps then K tags,
out_h (B, H2, W2, K))``; ``joints`` (B, M, S, 2) int32 is the reference's JointsGenerator layout: for person m,
its visible joints packed in slots ``s`` as ``(k * H4 * W4 + y * W4 + x, 1)`` (a flat index into the
(K, H4, W4) tag volume), unused slots ``(0, 0)``.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import jax
import jax.numpy as jnp

AE_TYPES = ("exp", "max")


def heatmap_loss(pred: jax.Array, target: jax.Array, mask: jax.Array) -> jax.Array:
    """(B,) per image ``mean_{H, W, K}((pred - target)² · mask)`` (the reference's HeatmapLoss; mask (B, H, W))."""
    pred = pred.astype(jnp.float32)
    d = jnp.square(pred - target.astype(jnp.float32)) * mask.astype(jnp.float32)[..., None]
    return jnp.mean(d, axis=(1, 2, 3))


def ae_loss(tags: jax.Array, joints: jax.Array, ae_type: str = "exp") -> tuple[jax.Array, jax.Array]:
    """Per-image (push, pull), each (B,), of the associative-embedding loss (the reference's AELoss).

    ``tags`` (B, H, W, K) one tag per joint type; ``joints`` (B, M, S, 2). For each image, the people are the
    persons with at least one visible joint (n of them), each with mean tag ``m_p`` over its visible joints:
    pull = Σ_p mean_j (t_j - m_p)² / n; push = (Σ_{p,q} f(m_p - m_q) - n) / (n (n - 1)) / 2 with
    f = exp(-d²) ('exp') or max(1 - |d|, 0) ('max'); both 0 without people, push 0 with one person.
    """
    if ae_type not in AE_TYPES:
        raise ValueError(f"unknown ae_type {ae_type!r}; valid: {AE_TYPES}")
    b, h, w, k = tags.shape
    flat = jnp.transpose(tags.astype(jnp.float32), (0, 3, 1, 2)).reshape(b, k * h * w)
    idx = jnp.clip(joints[..., 0].astype(jnp.int32), 0, k * h * w - 1)
    vis = (joints[..., 1] > 0).astype(jnp.float32)                          # (B, M, S)
    t = jnp.take_along_axis(flat, idx.reshape(b, -1), axis=1).reshape(idx.shape)
    cnt = jnp.sum(vis, axis=-1)                                              # (B, M)
    has = (cnt > 0).astype(jnp.float32)
    safe = jnp.maximum(cnt, 1.0)
    mean = jnp.sum(t * vis, axis=-1) / safe                                  # (B, M)
    pull_p = jnp.sum(jnp.square(t - mean[..., None]) * vis, axis=-1) / safe
    n = jnp.sum(has, axis=-1)                                                # (B,)
    pull = jnp.sum(pull_p * has, axis=-1) / jnp.maximum(n, 1.0)
    diff = mean[:, :, None] - mean[:, None, :]
    f = jnp.exp(-jnp.square(diff)) if ae_type == "exp" else jnp.maximum(1.0 - jnp.abs(diff), 0.0)
    pair = has[:, :, None] * has[:, None, :]
    push = (jnp.sum(f * pair, axis=(1, 2)) - n) / jnp.maximum((n - 1.0) * n, 1.0) * 0.5
    push = jnp.where(n > 1, push, 0.0)
    return push, pull


def bottomup_loss(outputs: Sequence[jax.Array], batch: Mapping[str, jax.Array], num_joints: int,
                  ae_type: str = "exp", push_factor: float = 0.001, pull_factor: float = 0.001,
                  heatmap_factors: Sequence[float] = (1.0, 1.0)) -> tuple[jax.Array, dict]:
    """The reference's MultiLossFactory + trainer sum for HigherHRNet: heatmap losses at every stage i
    (``batch["heatmaps_i"]``, ``batch["mask_i"]``, factor ``heatmap_factors[i]``), AE push/pull on the stage-0
    tags (``batch["joints"]``, WITH_AE_LOSS = (True, False)); each per-image term averaged over the batch.

    Returns ``(loss, aux)`` with aux ``heatmap_loss_{i}``, ``push_loss``, ``pull_loss`` (factors applied)."""
    if len(heatmap_factors) != len(outputs):
        raise ValueError(f"{len(heatmap_factors)} heatmap_factors for {len(outputs)} outputs")
    k = int(num_joints)
    aux = {}
    total = jnp.zeros((), jnp.float32)
    for i, (out, factor) in enumerate(zip(outputs, heatmap_factors)):
        hl = jnp.mean(heatmap_loss(out[..., :k], batch[f"heatmaps_{i}"], batch[f"mask_{i}"])) * factor
        aux[f"heatmap_loss_{i}"] = hl
        total = total + hl
    q = outputs[0]
    if q.shape[-1] != 2 * k:
        raise ValueError(f"stage-0 output has {q.shape[-1]} channels; expected {2 * k} (K heatmaps + K tags)")
    push, pull = ae_loss(q[..., k:], batch["joints"], ae_type)
    aux["push_loss"] = jnp.mean(push) * push_factor
    aux["pull_loss"] = jnp.mean(pull) * pull_factor
    total = total + aux["push_loss"] + aux["pull_loss"]
    return total, aux
