"""Top-down crop geometry and augmentation (numpy + OpenCV, host side).

Everything here follows the official HRNet pose pipeline (reference sections 8.2 and 9.2) so that converted
official checkpoints reproduce their numbers:

* ``box_to_center_scale``: box -> (center, scale) with the aspect-ratio fix to the input W/H, ``pixel_std`` 200
  and the 1.25 padding.
* ``get_affine_transform``: the "biased" (non-UDP) crop transform. Three point pairs: the center maps to the
  output center, a point half a source-width above the center (rotated by ``rot`` degrees) maps to half an
  output-width above the output center, and the third point of each triangle is the second one rotated by 90°
  about the first. Only ``scale[0]`` (the width) sets the zoom; the crop's height follows from the output aspect.
* ``warp_image`` (cv2.warpAffine, INTER_LINEAR, constant 0 border) and ``affine_points`` with the same matrix.
* ``fliplr_joints`` (``x' = width - x - 1`` and swapping the flip pairs), ``half_body_center_scale`` (with the
  official ``randn() < 0.5`` quirk), ``random_scale_factor``, ``random_rotation``.

Random draws take an explicit ``numpy.random.Generator`` so that a pipeline is deterministic per seed.
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

PIXEL_STD = 200.0


def box_to_center_scale(box: Sequence[float], aspect_ratio: float, padding: float = 1.25,
                        pixel_std: float = PIXEL_STD) -> tuple[np.ndarray, np.ndarray]:
    """COCO ``[x, y, w, h]`` -> (center, scale). ``aspect_ratio`` is the input W/H (0.75 for 192x256).

    The box is enlarged (never shrunk) to the aspect ratio about its center, then ``scale = (w, h) / pixel_std
    * padding``.
    """
    x, y, w, h = (float(v) for v in box[:4])
    center = np.array([x + w * 0.5, y + h * 0.5], dtype=np.float32)
    if w > aspect_ratio * h:
        h = w / aspect_ratio
    elif w < aspect_ratio * h:
        w = h * aspect_ratio
    scale = np.array([w / pixel_std, h / pixel_std], dtype=np.float32) * padding
    return center, scale


def _rotate(pt: np.ndarray, rad: float) -> np.ndarray:
    s, c = np.sin(rad), np.cos(rad)
    return np.array([pt[0] * c - pt[1] * s, pt[0] * s + pt[1] * c], dtype=np.float32)


def _third_point(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = a - b
    return b + np.array([-d[1], d[0]], dtype=np.float32)


def get_affine_transform(center, scale, rot: float, output_size: Sequence[int], shift=(0.0, 0.0),
                         inv: bool = False, pixel_std: float = PIXEL_STD) -> np.ndarray:
    """2x3 matrix mapping image pixels to the ``output_size = (W, H)`` crop (or back, with ``inv``)."""
    scale = np.asarray(scale, dtype=np.float32)
    if scale.ndim == 0:
        scale = np.array([scale, scale], dtype=np.float32)
    scale_px = scale * pixel_std
    src_w = scale_px[0]
    dst_w, dst_h = float(output_size[0]), float(output_size[1])
    shift = np.asarray(shift, dtype=np.float32)
    rad = np.pi * rot / 180.0
    src = np.zeros((3, 2), dtype=np.float32)
    dst = np.zeros((3, 2), dtype=np.float32)
    src[0] = np.asarray(center, dtype=np.float32) + scale_px * shift
    src[1] = src[0] + _rotate(np.array([0.0, -0.5 * src_w], dtype=np.float32), rad)
    dst[0] = [dst_w * 0.5, dst_h * 0.5]
    dst[1] = dst[0] + np.array([0.0, -0.5 * dst_w], dtype=np.float32)
    src[2] = _third_point(src[0], src[1])
    dst[2] = _third_point(dst[0], dst[1])
    if inv:
        return cv2.getAffineTransform(dst, src)
    return cv2.getAffineTransform(src, dst)


def affine_points(pts: np.ndarray, trans: np.ndarray) -> np.ndarray:
    """Applies a 2x3 affine matrix to (..., 2) points."""
    pts = np.asarray(pts, dtype=np.float64)
    return pts @ trans[:, :2].T.astype(np.float64) + trans[:, 2].astype(np.float64)


def warp_image(img: np.ndarray, trans: np.ndarray, output_size: Sequence[int]) -> np.ndarray:
    """cv2.warpAffine to ``(W, H)`` with bilinear interpolation and a constant 0 border (as the official code)."""
    return cv2.warpAffine(img, trans, (int(output_size[0]), int(output_size[1])), flags=cv2.INTER_LINEAR)


def transform_preds(coords: np.ndarray, center, scale, output_size: Sequence[int]) -> np.ndarray:
    """Heatmap coordinates (K, 2) -> image coordinates: the inverse crop transform with rot 0 (host reference)."""
    trans = get_affine_transform(center, scale, 0, output_size, inv=True)
    return affine_points(coords, trans).astype(np.float32)


def fliplr_joints(joints: np.ndarray, vis: np.ndarray, width: int,
                  flip_pairs: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Mirrors (K, 2) joints in an image of ``width`` (x' = width - x - 1), swaps pairs, zeroes invisible ones."""
    joints = np.array(joints, dtype=np.float32, copy=True)
    vis = np.array(vis, dtype=np.float32, copy=True)
    joints[:, 0] = width - joints[:, 0] - 1
    for a, b in flip_pairs:
        joints[[a, b]] = joints[[b, a]]
        vis[[a, b]] = vis[[b, a]]
    return joints * (vis[:, None] > 0), vis


def half_body_center_scale(joints: np.ndarray, vis: np.ndarray, upper_ids: Sequence[int], aspect_ratio: float,
                           rng: np.random.Generator, pixel_std: float = PIXEL_STD,
                           padding: float = 1.5) -> tuple[np.ndarray, np.ndarray] | None:
    """Half-body box around the visible upper or lower joints; None when fewer than 2 joints are selected.

    Upper body is chosen when ``rng.standard_normal() < 0.5`` (the official quirk: a *normal* sample against 0.5,
    so about 69%) and more than 2 upper joints are visible; otherwise lower body if more than 2 are visible,
    otherwise upper.
    """
    up = set(int(i) for i in upper_ids)
    visible = [i for i in range(len(joints)) if vis[i] > 0]
    upper = [joints[i] for i in visible if i in up]
    lower = [joints[i] for i in visible if i not in up]
    if rng.standard_normal() < 0.5 and len(upper) > 2:
        sel = upper
    else:
        sel = lower if len(lower) > 2 else upper
    if len(sel) < 2:
        return None
    sel = np.asarray(sel, dtype=np.float32)
    center = sel.mean(axis=0)[:2]
    lt, rb = sel.min(axis=0), sel.max(axis=0)
    w, h = float(rb[0] - lt[0]), float(rb[1] - lt[1])
    if w > aspect_ratio * h:
        h = w / aspect_ratio
    elif w < aspect_ratio * h:
        w = h * aspect_ratio
    scale = np.array([w / pixel_std, h / pixel_std], dtype=np.float32) * padding
    return center.astype(np.float32), scale


def random_scale_factor(rng: np.random.Generator, sf: float) -> float:
    """``clip(randn * sf + 1, 1 - sf, 1 + sf)``."""
    return float(np.clip(rng.standard_normal() * sf + 1.0, 1.0 - sf, 1.0 + sf))


def random_rotation(rng: np.random.Generator, rf: float, prob: float = 0.6) -> float:
    """``clip(randn * rf, -2 rf, 2 rf)`` degrees with probability ``prob`` (0.6), else 0."""
    r = float(np.clip(rng.standard_normal() * rf, -2.0 * rf, 2.0 * rf))
    return r if rng.random() <= prob else 0.0
