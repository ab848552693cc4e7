"""Heatmap decoding on device (jax.numpy, jit-able, batched). Heatmaps are NHWC: (B, H, W, K).

Pipeline (reference 9.2), all inside one jitted function ``decode_heatmaps``:

1. optional flip fusion: ``flip_back`` (mirror along W, swap the left/right channels), the official one-pixel
   ``shift_right`` (on by default; ``hm[:, :, 1:] = hm[:, :, :-1]``, column 0 keeps its value), ``(orig + flipped)/2``;
2. ``get_max_preds``: integer argmax (x = idx mod W, y = idx // W), maxval = peak; coordinates zeroed where
   maxval <= 0;
3. sub-pixel refinement: ``legacy`` = the official quarter offset (0.25·sign of the neighbour difference, only for
   ``1 < px < W-1`` and ``1 < py < H-1``), ``dark`` = DARK (Zhang et al. 2020): Gaussian-blur the heatmap
   (zero-padded, renormalised to its original max), take the log and one Newton step of the second-order Taylor
   expansion at the argmax (only for ``1 < px < W-2`` and ``1 < py < H-2``, and a non-singular Hessian),
   ``argmax`` = none;
4. ``heatmap_to_image``: the inverse crop transform of (center, scale) with rotation 0 and output size = the
   heatmap size, i.e. ``x_img = cx + (x - W/2) · scale_w·200 / W`` (same for y, with the same factor — the
   official transform zooms by ``scale[0]`` only).
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

DECODE_MODES = ("legacy", "dark", "argmax")


def get_max_preds(hm: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(B, H, W, K) -> coords (B, K, 2) float32 as (x, y) heatmap cells, maxvals (B, K)."""
    b, h, w, k = hm.shape
    flat = hm.reshape(b, h * w, k)
    idx = jnp.argmax(flat, axis=1)                     # (B, K), first maximum in row-major order
    maxvals = jnp.max(flat, axis=1)
    x = (idx % w).astype(jnp.float32)
    y = (idx // w).astype(jnp.float32)
    coords = jnp.stack([x, y], axis=-1) * (maxvals > 0)[..., None]
    return coords, maxvals


def _gather(hm: jax.Array, px: jax.Array, py: jax.Array) -> jax.Array:
    """hm[b, py[b,k], px[b,k], k] with indices clipped into range. (B, K)."""
    b, h, w, k = hm.shape
    px = jnp.clip(px, 0, w - 1)
    py = jnp.clip(py, 0, h - 1)
    flat = hm.reshape(b, h * w, k)
    return jnp.take_along_axis(flat, (py * w + px)[:, None, :], axis=1)[:, 0, :]


def quarter_offset(coords: jax.Array, hm: jax.Array) -> jax.Array:
    """The official POST_PROCESS step: ±0.25 towards the higher neighbour, strictly inside the border."""
    _, h, w, _ = hm.shape
    px = jnp.floor(coords[..., 0] + 0.5).astype(jnp.int32)
    py = jnp.floor(coords[..., 1] + 0.5).astype(jnp.int32)
    inside = (px > 1) & (px < w - 1) & (py > 1) & (py < h - 1)
    dx = _gather(hm, px + 1, py) - _gather(hm, px - 1, py)
    dy = _gather(hm, px, py + 1) - _gather(hm, px, py - 1)
    off = 0.25 * jnp.stack([jnp.sign(dx), jnp.sign(dy)], axis=-1)
    return coords + jnp.where(inside[..., None], off, 0.0)


def gaussian_kernel1d(ksize: int, sigma: float = 0.0) -> np.ndarray:
    """cv2.getGaussianKernel semantics (sigma <= 0 -> 0.3·((ksize-1)·0.5 - 1) + 0.8)."""
    if sigma <= 0:
        sigma = 0.3 * ((ksize - 1) * 0.5 - 1) + 0.8
    x = np.arange(ksize, dtype=np.float64) - (ksize - 1) / 2.0
    g = np.exp(-(x ** 2) / (2 * sigma ** 2))
    return (g / g.sum()).astype(np.float32)


def gaussian_blur(hm: jax.Array, ksize: int = 11) -> jax.Array:
    """Zero-padded separable Gaussian blur of each (H, W) map, rescaled so each map keeps its original max."""
    b, h, w, k = hm.shape
    g = jnp.asarray(gaussian_kernel1d(ksize))
    x = jnp.transpose(hm, (0, 3, 1, 2)).reshape(b * k, h, w, 1).astype(jnp.float32)
    dn = ("NHWC", "HWIO", "NHWC")
    pad = (ksize - 1) // 2
    x = jax.lax.conv_general_dilated(x, g.reshape(ksize, 1, 1, 1), (1, 1), ((pad, pad), (0, 0)),
                                     dimension_numbers=dn, precision=jax.lax.Precision.HIGHEST)
    x = jax.lax.conv_general_dilated(x, g.reshape(1, ksize, 1, 1), (1, 1), ((0, 0), (pad, pad)),
                                     dimension_numbers=dn, precision=jax.lax.Precision.HIGHEST)
    out = jnp.transpose(x.reshape(b, k, h, w), (0, 2, 3, 1))
    orig_max = jnp.max(hm, axis=(1, 2), keepdims=True)
    new_max = jnp.max(out, axis=(1, 2), keepdims=True)
    return out * jnp.where(new_max != 0, orig_max / jnp.where(new_max != 0, new_max, 1.0), 1.0)


def dark_refine(coords: jax.Array, hm: jax.Array, ksize: int = 11) -> jax.Array:
    """DARK: Newton step on the log of the blurred heatmap at the integer argmax."""
    _, h, w, _ = hm.shape
    lhm = jnp.log(jnp.maximum(gaussian_blur(hm, ksize), 1e-10))
    px = coords[..., 0].astype(jnp.int32)
    py = coords[..., 1].astype(jnp.int32)
    at = lambda dx, dy: _gather(lhm, px + dx, py + dy)  # noqa: E731
    c = at(0, 0)
    dx = 0.5 * (at(1, 0) - at(-1, 0))
    dy = 0.5 * (at(0, 1) - at(0, -1))
    dxx = 0.25 * (at(2, 0) - 2 * c + at(-2, 0))
    dxy = 0.25 * (at(1, 1) - at(1, -1) - at(-1, 1) + at(-1, -1))
    dyy = 0.25 * (at(0, 2) - 2 * c + at(0, -2))
    det = dxx * dyy - dxy ** 2
    ok = (px > 1) & (px < w - 2) & (py > 1) & (py < h - 2) & (det != 0)
    sdet = jnp.where(ok, det, 1.0)
    # -H^{-1} g with H^{-1} = [[dyy, -dxy], [-dxy, dxx]] / det
    ox = -(dyy * dx - dxy * dy) / sdet
    oy = -(-dxy * dx + dxx * dy) / sdet
    return coords + jnp.where(ok[..., None], jnp.stack([ox, oy], axis=-1), 0.0)


def flip_back(hm_flipped: jax.Array, flip_perm: Sequence[int] | np.ndarray) -> jax.Array:
    """Maps heatmaps predicted on a mirrored input back: mirror along W and swap the left/right channels."""
    return hm_flipped[:, :, ::-1, :][..., np.asarray(flip_perm)]


def shift_right(hm: jax.Array) -> jax.Array:
    """The official SHIFT_HEATMAP: ``hm[:, :, 1:] = hm[:, :, :-1]``; column 0 keeps its value."""
    return jnp.concatenate([hm[:, :, :1], hm[:, :, :-1]], axis=2)


def fuse_flip(hm: jax.Array, hm_flipped: jax.Array, flip_perm, shift: bool = True) -> jax.Array:
    """``(hm + shift(flip_back(hm_flipped))) / 2``."""
    fb = flip_back(hm_flipped, flip_perm)
    if shift:
        fb = shift_right(fb)
    return (hm + fb) * 0.5


def heatmap_to_image(coords: jax.Array, center: jax.Array, scale: jax.Array,
                     heatmap_size_hw: Sequence[int], pixel_std: float = 200.0) -> jax.Array:
    """(B, K, 2) heatmap coordinates -> image pixels (inverse crop transform, rotation 0)."""
    hm_h, hm_w = float(heatmap_size_hw[0]), float(heatmap_size_hw[1])
    center = jnp.asarray(center, jnp.float32)[:, None, :]
    factor = (jnp.asarray(scale, jnp.float32)[:, 0] * pixel_std / hm_w)[:, None, None]
    half = jnp.array([hm_w * 0.5, hm_h * 0.5], jnp.float32)
    return center + (coords - half) * factor


def decode_heatmaps(hm: jax.Array, center: jax.Array | None = None, scale: jax.Array | None = None,
                    mode: str = "legacy", hm_flipped: jax.Array | None = None, flip_perm=None,
                    shift_flipped: bool | None = None, dark_kernel: int = 11) -> dict[str, jax.Array]:
    """Full decoding. Returns ``{"keypoints": (B, K, 2) image coords (or heatmap coords without center/scale),
    "maxvals": (B, K), "heatmap_coords": (B, K, 2)}``.

    ``shift_flipped`` (default True) applies the one-pixel shift to the flipped heatmaps. It compensates the bias
    of the official (non-UDP) crop/flip convention, which every model trained with this pipeline has, whatever
    the decoder, so it stays on for ``dark`` too (as in the DARK authors' configs)."""
    if mode not in DECODE_MODES:
        raise ValueError(f"decode mode {mode!r} not in {DECODE_MODES}")
    hm = hm.astype(jnp.float32)
    if hm_flipped is not None:
        if flip_perm is None:
            raise ValueError("flip fusion needs flip_perm (KeypointSpec.flip_permutation())")
        shift = True if shift_flipped is None else bool(shift_flipped)
        hm = fuse_flip(hm, hm_flipped.astype(jnp.float32), flip_perm, shift)
    coords, maxvals = get_max_preds(hm)
    if mode == "legacy":
        coords = quarter_offset(coords, hm)
    elif mode == "dark":
        coords = dark_refine(coords, hm, dark_kernel)
    out = {"heatmap_coords": coords, "maxvals": maxvals}
    if center is not None and scale is not None:
        out["keypoints"] = heatmap_to_image(coords, center, scale, hm.shape[1:3])
    else:
        out["keypoints"] = coords
    return out
