"""Detection geometry on the host: aspect-keeping resize, static size buckets, bottom/right padding, flip, boxes
padded to a fixed count.

Resize (mmcv ``rescale_size`` with ``keep_ratio``, the recipe's ``img_scale=(1333, 800)``): the factor is
``min(long_max / long_side, short_max / short_side)``, the new size ``int(w * f + 0.5) x int(h * f + 0.5)``, and
boxes scale by the per-axis factors ``new_w / w`` and ``new_h / h`` (mmdet's ``w_scale`` / ``h_scale``), so a
box maps back to the original image exactly by dividing by them.

Buckets: every image is padded (bottom/right) to one of a few static ``(H, W)`` sizes (multiples of 32), so a
compiled step exists once per bucket. An image goes to the smallest-area bucket its resized size fits in; when
none fits it is scaled down further to fit the bucket that keeps it largest.
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

#: the recipe's image scale: long side at most 1333, short side at most 800
RECIPE_SCALE = (1333, 800)


def rescale_size(h: int, w: int, scale: Sequence[int] = RECIPE_SCALE) -> tuple[int, int]:
    """The aspect-keeping resized ``(h, w)`` (mmcv ``rescale_size``: long side <= max(scale), short <= min)."""
    long_max, short_max = max(scale), min(scale)
    f = min(long_max / max(h, w), short_max / min(h, w))
    return int(h * f + 0.5), int(w * f + 0.5)


def check_buckets(buckets: Sequence[Sequence[int]], divisor: int = 32) -> tuple[tuple[int, int], ...]:
    """``buckets`` as ``((H, W), ...)``; each size positive and a multiple of ``divisor``."""
    out = []
    for b in buckets:
        try:
            h, w = (int(v) for v in b)
        except (TypeError, ValueError):
            raise ValueError(f"a bucket must be (H, W), got {b!r}") from None
        if h <= 0 or w <= 0 or h % divisor or w % divisor:
            raise ValueError(f"bucket {(h, w)} must be positive multiples of {divisor}")
        out.append((h, w))
    if not out:
        raise ValueError("no size buckets given")
    return tuple(out)


def choose_bucket(h: int, w: int, buckets: Sequence[tuple[int, int]]) -> int:
    """Index of the smallest-area bucket holding an ``h x w`` image; if none does, the one it shrinks least in."""
    fits = [i for i, (bh, bw) in enumerate(buckets) if h <= bh and w <= bw]
    if fits:
        return min(fits, key=lambda i: (buckets[i][0] * buckets[i][1], i))
    return max(range(len(buckets)), key=lambda i: (min(buckets[i][0] / h, buckets[i][1] / w), -i))


def target_size(h: int, w: int, scale: Sequence[int], buckets: Sequence[tuple[int, int]]
                ) -> tuple[int, tuple[int, int]]:
    """(bucket index, resized ``(h, w)``) of an ``h x w`` image: the recipe resize, then (only if no bucket
    holds it) a further aspect-keeping shrink into the chosen bucket."""
    nh, nw = rescale_size(h, w, scale)
    b = choose_bucket(nh, nw, buckets)
    bh, bw = buckets[b]
    if nh > bh or nw > bw:
        f = min(bh / nh, bw / nw)
        nh, nw = min(bh, max(1, int(nh * f + 0.5))), min(bw, max(1, int(nw * f + 0.5)))
    return b, (nh, nw)


def resize_image(img: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Bilinear resize to ``(h, w)`` (a no-op at the same size)."""
    h, w = hw
    if img.shape[:2] == (h, w):
        return img
    return cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)


def scale_boxes(boxes: np.ndarray, sx: float, sy: float, hw: tuple[int, int]) -> np.ndarray:
    """x1y1x2y2 boxes times ``(sx, sy)``, clipped to an ``(h, w)`` image."""
    b = np.asarray(boxes, np.float32).reshape(-1, 4) * np.array([sx, sy, sx, sy], np.float32)
    b[:, 0::2] = np.clip(b[:, 0::2], 0, hw[1])
    b[:, 1::2] = np.clip(b[:, 1::2], 0, hw[0])
    return b


def flip_boxes(boxes: np.ndarray, width: float) -> np.ndarray:
    """Horizontal flip of x1y1x2y2 boxes in a ``width``-pixel image (continuous coordinates: x -> width - x)."""
    b = np.asarray(boxes, np.float32).reshape(-1, 4).copy()
    b[:, [0, 2]] = width - b[:, [2, 0]]
    return b


def pad_image(img: np.ndarray, hw: tuple[int, int], value: int = 0) -> np.ndarray:
    """Pads (bottom / right) an ``(h, w, C)`` image to ``hw``."""
    h, w = img.shape[:2]
    if (h, w) == tuple(hw):
        return img
    out = np.full((hw[0], hw[1]) + img.shape[2:], value, img.dtype)
    out[:h, :w] = img
    return out


def pad_boxes(boxes: np.ndarray, labels: np.ndarray, max_boxes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(boxes (M, 4), labels (M,), valid (M,)) with ``M = max_boxes``: the first ``max_boxes`` boxes, then zeros."""
    n = min(len(labels), max_boxes)
    b = np.zeros((max_boxes, 4), np.float32)
    lab = np.zeros((max_boxes,), np.int32)
    valid = np.zeros((max_boxes,), bool)
    b[:n] = np.asarray(boxes, np.float32).reshape(-1, 4)[:n]
    lab[:n] = np.asarray(labels, np.int32)[:n]
    valid[:n] = True
    return b, lab, valid


def detection_example(image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, *, scale: Sequence[int],
                      buckets: Sequence[tuple[int, int]], max_boxes: int, flip: bool = False
                      ) -> dict[str, np.ndarray]:
    """One image and its boxes → the batch fields: ``image`` uint8 (bucket H, W, 3) (resized, optionally
    flipped, padded with 0), ``image_hw`` int32 (2,) the resized size, ``gt_boxes`` (M, 4) float32 in input
    pixels, ``gt_labels`` (M,) int32, ``gt_valid`` (M,) bool, ``scale`` float32 (2,) = ``(sx, sy)`` (input
    pixels per original pixel: original = input / scale), ``bucket`` int32."""
    h, w = image.shape[:2]
    b, (nh, nw) = target_size(h, w, scale, buckets)
    sx, sy = nw / w, nh / h
    img = resize_image(image, (nh, nw))
    bx = scale_boxes(boxes, sx, sy, (nh, nw))
    if flip:
        img = img[:, ::-1]
        bx = flip_boxes(bx, nw)
    keep = (bx[:, 2] > bx[:, 0]) & (bx[:, 3] > bx[:, 1])
    gb, gl, gv = pad_boxes(bx[keep], np.asarray(labels, np.int32)[keep], max_boxes)
    return {"image": np.ascontiguousarray(pad_image(img, buckets[b]), np.uint8),
            "image_hw": np.array([nh, nw], np.int32), "gt_boxes": gb, "gt_labels": gl, "gt_valid": gv,
            "scale": np.array([sx, sy], np.float32), "bucket": np.int32(b)}


def boxes_to_original(boxes: np.ndarray, scale: np.ndarray, hw: Sequence[int] | None = None) -> np.ndarray:
    """Input-pixel x1y1x2y2 boxes (..., 4) back to original image pixels (``scale`` = ``(sx, sy)``), clipped to the
    original ``(h, w)`` when given."""
    sx, sy = float(scale[0]), float(scale[1])
    b = np.asarray(boxes, np.float64) / np.array([sx, sy, sx, sy])
    if hw is not None:
        b[..., 0::2] = np.clip(b[..., 0::2], 0, hw[1])
        b[..., 1::2] = np.clip(b[..., 1::2], 0, hw[0])
    return b
