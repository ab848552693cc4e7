"""Segmentation prediction on image files (behind ``python -m hrnet_jax.predict`` for segmentation checkpoints).

Per image, inside one ``jax.jit`` per image size: the task's normalisation and inference mode (``eval_mode``:
whole image, sliding window or multi-scale + flip; :meth:`SegmentationTask.scores`), argmax. The image is padded
(bottom/right) to a multiple of 32 for the network and the prediction cropped back. Written to ``--out``:

* ``<stem>_trainIds.png``: the label map in train ids (0..C-1);
* ``<stem>_labelIds.png``: the same in the dataset's raw label ids, when the class spec has them (Cityscapes:
  the benchmark server's format);
* ``<stem>_color.png``: the label map in the class colours; ``<stem>_overlay.jpg``: blended over the image;
* ``predictions.json``: per image, the file names written and the pixel share of every predicted class.
"""
from __future__ import annotations

import os
import sys
from typing import Sequence

import cv2
import jax
import numpy as np

from hrnet_jax import inference
from hrnet_jax.data.ops.image import ImageReadError, read_image_rgb
from hrnet_jax.training.workdir import atomic_write_json

MULTIPLE = inference.MULTIPLE


class SegmentationPredictor:
    """Label maps (train ids) of RGB images with a :class:`SegmentationTask` and its variables."""

    def __init__(self, task, variables):
        self.task = task
        self.model = task.build_model()
        self.variables = jax.device_put(variables)
        # hrnet_jax.inference: BN folded, XLA convs, inference compiler options (the exported program's function)
        apply_fn, self._infer_variables = inference.prepare(self.model, self.variables)
        self._run = inference.jit(inference.segmentation_fn(task, apply_fn))

    def predict(self, image_rgb: np.ndarray) -> np.ndarray:
        return np.asarray(self._run(self._infer_variables, image_rgb[None]))[0]   # pads to MULTIPLE and crops back


def overlay(image_rgb: np.ndarray, color_rgb: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    return (image_rgb.astype(np.float32) * (1 - alpha) + color_rgb.astype(np.float32) * alpha).astype(np.uint8)


def predict_images(task, variables, paths: Sequence[str], out_dir: str) -> list[dict]:
    """Predicts every readable image of ``paths`` into ``out_dir`` (see the module docstring); an unreadable one
    is skipped with its reason; returns the per-image records of ``predictions.json``."""
    pred = SegmentationPredictor(task, variables)
    spec = task.classes
    records, skipped = [], 0
    for path in paths:
        try:
            rgb = read_image_rgb(path)
        except ImageReadError as e:
            print(f"warning: {path}: {e.reason}; skipped", file=sys.stderr)
            skipped += 1
            continue
        labels = pred.predict(rgb)
        stem = os.path.splitext(os.path.basename(path))[0]
        files = {"train_ids": f"{stem}_trainIds.png", "color": f"{stem}_color.png", "overlay": f"{stem}_overlay.jpg"}
        cv2.imwrite(os.path.join(out_dir, files["train_ids"]), labels)
        if spec.ids is not None:
            files["label_ids"] = f"{stem}_labelIds.png"
            cv2.imwrite(os.path.join(out_dir, files["label_ids"]), spec.to_raw_ids(labels).astype(np.uint8))
        color = spec.colorize(labels)
        cv2.imwrite(os.path.join(out_dir, files["color"]), color[:, :, ::-1])
        cv2.imwrite(os.path.join(out_dir, files["overlay"]), overlay(rgb, color)[:, :, ::-1])
        counts = np.bincount(labels.ravel(), minlength=spec.num_classes)
        share = {spec.names[i]: round(float(c) / labels.size, 5) for i, c in enumerate(counts[:spec.num_classes])
                 if c}
        records.append({"image": path, "files": files, "class_share": share})
    if skipped == len(paths):
        raise ValueError(f"{paths[0] if len(paths) == 1 else f'all {len(paths)} images'}: no readable image")
    atomic_write_json(os.path.join(out_dir, "predictions.json"), records, indent=1, sort_keys=False)
    return records
