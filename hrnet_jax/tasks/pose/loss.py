"""Heatmap losses (jax.numpy, jit-able). Heatmaps are NHWC: (B, H, W, K); target weights (B, K)."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def per_joint_mse(pred: jax.Array, target: jax.Array, target_weight: jax.Array | None = None) -> jax.Array:
    """(B, K) ``0.5 * mean_{pixels}((w·pred - w·target)²)``."""
    pred = pred.astype(jnp.float32)
    target = target.astype(jnp.float32)
    diff = pred - target
    if target_weight is not None:
        diff = diff * target_weight.astype(jnp.float32)[:, None, None, :]
    return 0.5 * jnp.mean(jnp.square(diff), axis=(1, 2))


def joints_mse_loss(pred: jax.Array, target: jax.Array, target_weight: jax.Array | None = None) -> jax.Array:
    """JointsMSELoss: per joint 0.5·MSE over batch and pixels, then the mean over joints (= the overall mean)."""
    return jnp.mean(per_joint_mse(pred, target, target_weight))


def joints_ohkm_mse_loss(pred: jax.Array, target: jax.Array, target_weight: jax.Array | None = None,
                         topk: int = 8) -> jax.Array:
    """Online hard keypoint mining: per sample, the mean of the ``topk`` largest per-joint losses, batch-averaged."""
    per = per_joint_mse(pred, target, target_weight)
    k = min(int(topk), per.shape[-1])
    top, _ = jax.lax.top_k(per, k)
    return jnp.mean(jnp.sum(top, axis=-1) / k)
