"""Host-side segmentation augmentation (numpy / OpenCV, uint8 in and out).

The official HRNet-Semantic-Segmentation training recipe (lib/datasets/base_dataset.py, Cityscapes yaml):

1. scale ``s = 0.5 + randint(0, 16) / 10`` (Python's inclusive randint: 0.5, 0.6, ..., 2.1);
2. resize so the long side is ``int(base_size * s + 0.5)`` and the other ``int(other * long / long_side + 0.5)``,
   image bilinear (``cv2.INTER_LINEAR``), label nearest (``cv2.INTER_NEAREST``);
3. pad bottom/right to at least the crop (image 0, label ignore 255), then a random crop, offsets uniform in
   ``[0, size - crop]``;
4. horizontal flip with probability 0.5.

All randomness comes from the ``numpy.random.Generator`` passed in (the pipeline derives one per example), in
the order: scale, crop top, crop left, flip.
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np


def random_scale_factor(rng: np.random.Generator, min_scale: float = 0.5, max_scale: float = 2.1,
                        step: float = 0.1) -> float:
    """A scale drawn uniformly from ``min_scale, min_scale + step, ..., max_scale`` (both ends included)."""
    if step <= 0 or max_scale < min_scale:
        raise ValueError(f"bad scale range [{min_scale}, {max_scale}] step {step}")
    n = int(round((max_scale - min_scale) / step))
    k = int(rng.integers(0, n + 1))
    return round(min_scale + k * step, 10)


def long_side_size(h: int, w: int, long_size: int) -> tuple[int, int]:
    """(new_h, new_w) with the long side ``long_size`` and the other rounded half up (as the official code)."""
    long_size = int(long_size)
    if h > w:
        new_h, new_w = long_size, int(w * long_size / h + 0.5)
    else:
        new_w, new_h = long_size, int(h * long_size / w + 0.5)
    return max(new_h, 1), max(new_w, 1)


def resize_long_side(image: np.ndarray, label: np.ndarray | None, long_size: int) -> tuple:
    """Resizes image (bilinear) and label (nearest; may be None) so the long side is ``long_size``."""
    new_h, new_w = long_side_size(image.shape[0], image.shape[1], long_size)
    image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    if label is not None:
        label = cv2.resize(label, (new_w, new_h), interpolation=cv2.INTER_NEAREST)
    return image, label


def resize_image(image: np.ndarray, size_hw: Sequence[int]) -> np.ndarray:
    """Bilinear resize to ``size_hw`` (eval-time input resizing)."""
    return cv2.resize(image, (int(size_hw[1]), int(size_hw[0])), interpolation=cv2.INTER_LINEAR)


def resize_label(label: np.ndarray, size_hw: Sequence[int]) -> np.ndarray:
    """Nearest-neighbour resize of a label map to ``size_hw``."""
    return cv2.resize(label, (int(size_hw[1]), int(size_hw[0])), interpolation=cv2.INTER_NEAREST)


def pad_to(image: np.ndarray, label: np.ndarray | None, size_hw: Sequence[int], image_fill=0,
           label_fill: int = 255) -> tuple:
    """Pads bottom/right so both are at least ``size_hw`` (never crops); image with ``image_fill`` (a scalar or one
    value per channel), label with ``label_fill``."""
    h, w = image.shape[:2]
    ph, pw = max(int(size_hw[0]) - h, 0), max(int(size_hw[1]) - w, 0)
    if ph == 0 and pw == 0:
        return image, label
    fill = np.broadcast_to(np.asarray(image_fill, np.float64), (image.shape[2] if image.ndim == 3 else 1,))
    image = cv2.copyMakeBorder(image, 0, ph, 0, pw, cv2.BORDER_CONSTANT, value=tuple(float(v) for v in fill))
    if label is not None:
        label = cv2.copyMakeBorder(label, 0, ph, 0, pw, cv2.BORDER_CONSTANT, value=int(label_fill))
    return image, label


def random_crop(image: np.ndarray, label: np.ndarray | None, size_hw: Sequence[int],
                rng: np.random.Generator) -> tuple:
    """A ``size_hw`` window at a uniform offset: top ``rng.integers(0, H - ch + 1)`` then left
    ``rng.integers(0, W - cw + 1)``. The inputs must be at least ``size_hw`` (:func:`pad_to` first)."""
    ch, cw = int(size_hw[0]), int(size_hw[1])
    h, w = image.shape[:2]
    if h < ch or w < cw:
        raise ValueError(f"random_crop: {h}x{w} input is smaller than the {ch}x{cw} crop; pad_to first")
    top = int(rng.integers(0, h - ch + 1))
    left = int(rng.integers(0, w - cw + 1))
    image = image[top:top + ch, left:left + cw]
    if label is not None:
        label = label[top:top + ch, left:left + cw]
    return image, label


def hflip(image: np.ndarray, label: np.ndarray | None = None) -> tuple:
    return image[:, ::-1], (None if label is None else label[:, ::-1])


def train_transform(image: np.ndarray, label: np.ndarray, rng: np.random.Generator, *,
                    crop_hw: Sequence[int] = (512, 1024), base_size: int = 2048,
                    scale_range: Sequence[float] = (0.5, 2.1), scale_step: float = 0.1, flip: bool = True,
                    ignore_index: int = 255) -> tuple[np.ndarray, np.ndarray]:
    """The official multi-scale training augmentation; always returns (crop_h, crop_w, 3) uint8 image and
    (crop_h, crop_w) label (contiguous)."""
    scale = random_scale_factor(rng, float(scale_range[0]), float(scale_range[1]), scale_step)
    image, label = resize_long_side(image, label, int(base_size * scale + 0.5))
    image, label = pad_to(image, label, crop_hw, image_fill=0, label_fill=ignore_index)
    image, label = random_crop(image, label, crop_hw, rng)
    if flip and rng.random() < 0.5:
        image, label = hflip(image, label)
    return np.ascontiguousarray(image), np.ascontiguousarray(label)
