"""Synthetic classification data: coloured shapes on noise, the class fixes (shape, colour).

Random access and deterministic per index, so it works as a grain source and every process/device count
sees the same examples.
"""
from __future__ import annotations

import numpy as np

SHAPES = ("square", "disc", "triangle", "cross")


class SyntheticShapes:
    """``ds[i]`` → ``{"image": float32 (H, W, 3) normalised, "label": int32}``."""

    def __init__(self, num_examples: int, num_classes: int = 8, image_size: int = 32, seed: int = 0,
                 noise: float = 0.2):
        self.num_examples, self.num_classes, self.size, self.seed, self.noise = (
            num_examples, num_classes, image_size, seed, noise)
        palette_rng = np.random.default_rng(12345)  # fixed: the classes are the same for every seed
        self.colours = palette_rng.uniform(0.2, 1.0, size=(num_classes, 3)).astype(np.float32)

    def __len__(self) -> int:
        return self.num_examples

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        rng = np.random.default_rng((self.seed, index))
        label = int(rng.integers(self.num_classes))
        s = self.size
        img = rng.normal(0.0, self.noise, size=(s, s, 3)).astype(np.float32)
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
        img[mask] += self.colours[label]
        return {"image": img, "label": np.int32(label)}


class Padded:
    """``source`` padded to ``length`` with zero examples marked ``valid=False`` (for even eval shards)."""

    def __init__(self, source, length: int):
        self.source, self.length = source, length
        self._blank = {k: np.zeros_like(v) for k, v in source[0].items()}

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        if index < len(self.source):
            return {**self.source[index], "valid": np.bool_(True)}
        return {**self._blank, "valid": np.bool_(False)}
