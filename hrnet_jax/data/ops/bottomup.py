"""Whole-image geometry for bottom-up pose (HigherHRNet), numpy + OpenCV on the host.

Training (the reference's ``RandomAffineTransform`` then ``RandomHorizontalFlip``, HigherHRNet
``lib/dataset/transforms/transforms.py``):

* :func:`random_affine_params`: center = image center, scale = short (or long) side / 200 × U(min_scale,
  max_scale), rotation U(-max_rotation, max_rotation) degrees, translation ``randint(-t·scale, t·scale)`` pixels
  in x and y (t = ``max_translate``, 40);
* :func:`affine_matrix`: the square ``res × res`` window of side ``200·scale`` about the center, rotated about
  the output center (the reference's ``_get_affine_matrix``); the same (center, scale, rotation) gives the input
  image and every output resolution, so joints at an output resolution are the input-frame joints × res_out /
  res_in;
* :func:`warp_mask`: the loss mask warped like the image (bilinear on 0/255, then > 0.5); pixels from outside the
  image become 0 (not counted), as in the reference;
* :func:`flip_people`: mirror image, masks and joints; joints take the flip permutation and ``x' = res - x - 1``
  at their own resolution (the reference's formula at every resolution).

Evaluation (the reference's ``get_multi_scale_size`` / ``resize_align_multi_scale``, ``lib/utils/transforms.py``):
:func:`eval_resize` gives the size with the short side at the input size and the long side rounded up to a
multiple of 64, and the (center, scale) whose inverse affine maps input-frame points back to the image
(:func:`to_image_coords`); :func:`eval_canvases` places the resized image (per test scale) into a fixed canvas.
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from hrnet_jax.data.ops.affine import affine_points, get_affine_transform


def random_affine_params(rng: np.random.Generator, height: int, width: int, *, min_scale: float = 0.75,
                         max_scale: float = 1.5, max_rotation: float = 30.0, max_translate: float = 40.0,
                         scale_type: str = "short") -> tuple[np.ndarray, float, float, float]:
    """(center (2,), scale, rotation in degrees, aug_scale) of one random whole-image affine."""
    if scale_type not in ("short", "long"):
        raise ValueError(f"scale_type must be 'short' or 'long', got {scale_type!r}")
    center = np.array([width / 2.0, height / 2.0])
    scale = (min(height, width) if scale_type == "short" else max(height, width)) / 200.0
    aug_scale = rng.random() * (max_scale - min_scale) + min_scale
    scale *= aug_scale
    rot = (rng.random() * 2 - 1) * max_rotation
    if max_translate > 0:
        lim = int(max_translate * scale)
        if lim > 0:
            center[0] += rng.integers(-lim, lim)
            center[1] += rng.integers(-lim, lim)
    return center, float(scale), float(rot), float(aug_scale)


def affine_matrix(center: Sequence[float], scale: float, res: int, rot: float = 0.0) -> np.ndarray:
    """2x3 matrix from image pixels to the ``res × res`` window of side ``200·scale`` about ``center``, rotated by
    ``rot`` degrees (counter-clockwise in the picture) about the window center."""
    h = 200.0 * scale
    t = np.array([[res / h, 0.0, res * (-float(center[0]) / h + 0.5)],
                  [0.0, res / h, res * (-float(center[1]) / h + 0.5)],
                  [0.0, 0.0, 1.0]])
    if rot != 0:
        rad = -rot * np.pi / 180.0
        sn, cs = np.sin(rad), np.cos(rad)
        r = np.array([[cs, -sn, 0.0], [sn, cs, 0.0], [0.0, 0.0, 1.0]])
        to0 = np.array([[1.0, 0.0, -res / 2.0], [0.0, 1.0, -res / 2.0], [0.0, 0.0, 1.0]])
        back = np.array([[1.0, 0.0, res / 2.0], [0.0, 1.0, res / 2.0], [0.0, 0.0, 1.0]])
        t = back @ r @ to0 @ t
    return t[:2]


def warp_square(img: np.ndarray, mat: np.ndarray, res: int) -> np.ndarray:
    """cv2.warpAffine to ``res × res`` (bilinear, constant 0 border)."""
    return cv2.warpAffine(np.ascontiguousarray(img), mat, (int(res), int(res)), flags=cv2.INTER_LINEAR)


def warp_mask(mask: np.ndarray, mat: np.ndarray, res: int) -> np.ndarray:
    """A bool mask warped as the reference: (mask·255) uint8, bilinear, /255 > 0.5 → (res, res) bool."""
    m = warp_square((np.asarray(mask) * 255).astype(np.uint8), mat, res)
    return (m / 255.0) > 0.5


def transform_joints(joints: np.ndarray, mat: np.ndarray) -> np.ndarray:
    """(N, K, C ≥ 2) joints with x, y mapped by a 2x3 matrix (other columns kept)."""
    out = np.array(joints, dtype=np.float64, copy=True)
    if out.size:
        out[..., :2] = affine_points(out[..., :2], mat)
    return out


def affine_people(img: np.ndarray, mask: np.ndarray, joints: np.ndarray, center, scale: float, rot: float,
                  input_res: int, output_res: Sequence[int]):
    """The image at ``input_res``, and the mask and joints at every resolution of ``output_res``."""
    masks, js = [], []
    for res in output_res:
        mat = affine_matrix(center, scale, res, rot)
        masks.append(warp_mask(mask, mat, res))
        js.append(transform_joints(joints, mat))
    image = warp_square(img, affine_matrix(center, scale, input_res, rot), input_res)
    return image, masks, js


def flip_people(image: np.ndarray, masks: list, joints: list, output_res: Sequence[int], flip_perm: np.ndarray):
    """Horizontal flip of the image, of each mask, and of each resolution's joints (pairs swapped by
    ``flip_perm``, ``x' = res - x - 1``)."""
    image = np.ascontiguousarray(image[:, ::-1])
    masks = [np.ascontiguousarray(m[:, ::-1]) for m in masks]
    out = []
    for j, res in zip(joints, output_res):
        j = np.array(j[:, flip_perm], copy=True)
        j[..., 0] = res - j[..., 0] - 1
        out.append(j)
    return image, masks, out


def eval_resize(height: int, width: int, input_size: int, current_scale: float = 1.0,
                min_scale: float = 1.0) -> tuple[tuple[int, int], np.ndarray, np.ndarray]:
    """((w_resized, h_resized), center (2,), scale (2,)) of the reference's test-time resize: the short side to
    ``input_size`` (rounded up to 64 at ``min_scale``), the long side in proportion rounded up to a multiple of 64,
    both × ``current_scale / min_scale``; ``center = int(side / 2 + 0.5)``."""
    h, w = int(height), int(width)
    center = np.array([int(w / 2.0 + 0.5), int(h / 2.0 + 0.5)], np.float64)
    min_input = int((min_scale * input_size + 63) // 64 * 64)
    if w < h:
        w_r = int(min_input * current_scale / min_scale)
        h_r = int(int((min_input / w * h + 63) // 64 * 64) * current_scale / min_scale)
        scale = np.array([w / 200.0, h_r / w_r * w / 200.0])
    else:
        h_r = int(min_input * current_scale / min_scale)
        w_r = int(int((min_input / h * w + 63) // 64 * 64) * current_scale / min_scale)
        scale = np.array([w_r / h_r * h / 200.0, h / 200.0])
    return (w_r, h_r), center, scale


def warp_to_canvas(img: np.ndarray, center, scale, size: Sequence[int], canvas_hw: Sequence[int]) -> np.ndarray:
    """The image resized by the affine of (center, scale, output ``size`` = (w, h)) — the reference's
    ``resize_align_multi_scale`` warp — into the top-left corner of a zero ``canvas_hw`` (H, W) canvas."""
    hc, wc = int(canvas_hw[0]), int(canvas_hw[1])
    w_r, h_r = int(size[0]), int(size[1])
    trans = get_affine_transform(np.asarray(center, np.float32), np.asarray(scale, np.float32), 0, (w_r, h_r))
    canvas = cv2.warpAffine(np.ascontiguousarray(img), trans, (wc, hc), flags=cv2.INTER_LINEAR)
    canvas[h_r:] = 0     # past the resized region is padding (the warp would reach past the image edge there)
    canvas[:, w_r:] = 0
    return canvas


def eval_canvases(img: np.ndarray, input_size: int, canvas_hw: Sequence[int], scales: Sequence[float] = (1.0,)):
    """The test-time inputs of one image: per scale ``s`` of ``scales``, the reference's resize at ``s`` (min
    scale ``min(scales)``) in a zero canvas of ``canvas_hw × s``.

    Returns ``(canvases, center, scale, size, shrunk)``: ``size`` (w, h) is the resized region at scale 1.0 (the
    base size the maps are aggregated at) and (center, scale) those of the smallest scale (as the reference's
    loop leaves them), so that base-frame points map back with :func:`to_image_coords`. When the scale-1.0 size
    does not fit the canvas, every scale is shrunk by the same factor (``shrunk`` True; not in the reference).
    """
    hc, wc = int(canvas_hw[0]), int(canvas_hw[1])
    min_s = min(scales)
    (w1, h1), _, _ = eval_resize(img.shape[0], img.shape[1], input_size, 1.0, min_s)
    f = min(1.0, wc / w1, hc / h1)
    canvases, center, scale = [], None, None
    for s in scales:
        (ws, hs), center_s, scale_s = eval_resize(img.shape[0], img.shape[1], input_size, s, min_s)
        size_s = (max(1, int(ws * f)), max(1, int(hs * f)))
        canvases.append(warp_to_canvas(img, center_s, scale_s, size_s, (int(round(hc * s)), int(round(wc * s)))))
        if s == min_s:
            center, scale = center_s, scale_s
    size = np.array([max(1, int(w1 * f)), max(1, int(h1 * f))], np.float32)
    return canvases, center.astype(np.float32), scale.astype(np.float32), size, f < 1.0


def to_image_coords(points: np.ndarray, center, scale, size) -> np.ndarray:
    """(..., 2) input-frame points → image pixels: the inverse of the eval resize (the reference's
    ``transform_preds`` with output size = the resized size)."""
    trans = get_affine_transform(np.asarray(center, np.float32), np.asarray(scale, np.float32), 0,
                                 (float(size[0]), float(size[1])), inv=True)
    return affine_points(points, trans)
