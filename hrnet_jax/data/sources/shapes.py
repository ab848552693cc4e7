"""Synthetic classification data: a coloured shape on a noisy dark background; the class fixes (shape, colour).

Random access and deterministic per (seed, index), so every process / worker / device count sees the same
examples. Images are uint8 HWC RGB, as from a decoded file.
"""
from __future__ import annotations

import numpy as np

SHAPES = ("square", "disc", "triangle", "cross")
_BACKGROUND = 40.0   # background level; shapes add 40..200 in their class colour
_CONTRAST = 200.0


class SyntheticShapes:
    """``src[i]`` -> ``{"image": uint8 (S, S, 3) RGB, "label": int32}``.

    The class colours are fixed (the same for every seed); ``noise`` is the background noise std as a fraction
    of the shape contrast.
    """

    def __init__(self, num_examples: int, num_classes: int = 8, image_size: int = 32, seed: int = 0,
                 noise: float = 0.2):
        self.num_examples, self.num_classes, self.size, self.seed, self.noise = (
            num_examples, num_classes, image_size, seed, noise)
        palette_rng = np.random.default_rng(12345)
        self.colours = palette_rng.uniform(0.2, 1.0, size=(num_classes, 3)).astype(np.float32)

    def __len__(self) -> int:
        return self.num_examples

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        if not 0 <= index < self.num_examples:
            raise IndexError(index)
        rng = np.random.default_rng((self.seed, index))
        label = int(rng.integers(self.num_classes))
        s = self.size
        img = _BACKGROUND + rng.normal(0.0, self.noise * _CONTRAST, size=(s, s, 3))
        r = int(rng.integers(s // 6, s // 3))
        cy, cx = rng.integers(r, s - r, size=2)
        yy, xx = np.mgrid[0:s, 0:s]
        dy, dx = yy - cy, xx - cx
        shape = SHAPES[label % len(SHAPES)]
        if shape == "square":
            mask = (np.abs(dy) <= r) & (np.abs(dx) <= r)
        elif shape == "disc":
            mask = dy ** 2 + dx ** 2 <= r ** 2
        elif shape == "triangle":
            mask = (dy <= r) & (dy >= -r) & (np.abs(dx) <= (dy + r) / 2)
        else:
            mask = ((np.abs(dy) <= r) & (np.abs(dx) <= r // 3)) | ((np.abs(dx) <= r) & (np.abs(dy) <= r // 3))
        img[mask] += self.colours[label] * _CONTRAST
        return {"image": np.clip(np.rint(img), 0, 255).astype(np.uint8), "label": np.int32(label)}
