"""Detection prediction on image files (behind ``python -m hrnet_jax.predict`` for detection checkpoints).

Per image: the task's geometry (aspect-keeping resize to ``img_scale``, padding into its bucket; one compiled
function per bucket), normalisation and detector, then the boxes back in original image pixels. Written to
``--out``:

* ``<stem>_det.jpg``: the image with every detection scoring at least ``score_thr`` drawn (box, class name,
  score; one colour per class);
* ``detections.json``: every detection as COCO results (``image_id``, ``category_id``, ``bbox`` [x, y, w, h],
  ``score``) plus ``category`` (the class name) and ``file_name``; ``image_id`` is the file's numeric stem
  (COCO names) or its index.

:func:`load_detection` reads a training workdir (its ``config.json``) or a converted checkpoint (``model.json``:
the 80 COCO categories unless ``classes`` says otherwise).
"""
from __future__ import annotations

import os
import sys
from typing import Any, Sequence

import cv2
import jax
import numpy as np

from hrnet_jax import inference
from hrnet_jax.data.ops import detection as D
from hrnet_jax.data.ops.image import ImageReadError, read_image_rgb
from hrnet_jax.training.workdir import atomic_write_json


def _color(i: int) -> tuple[int, int, int]:
    """A distinct BGR colour per class index (golden-ratio hue steps)."""
    hue = int((i * 0.618033988749895 % 1.0) * 179)
    bgr = cv2.cvtColor(np.uint8([[[hue, 220, 235]]]), cv2.COLOR_HSV2BGR)[0, 0]
    return int(bgr[0]), int(bgr[1]), int(bgr[2])


def draw_detections(image_bgr: np.ndarray, dets: Sequence[dict], score_thr: float = 0.3) -> np.ndarray:
    """``image_bgr`` with each detection (``bbox`` x1y1x2y2, ``label``, ``category``, ``score``) at or above
    ``score_thr`` drawn: its box and ``"<class> <score>"``."""
    out = np.ascontiguousarray(image_bgr).copy()
    scale = max(out.shape[:2]) / 640.0
    thick = max(1, int(round(2 * scale)))
    font = max(0.35, 0.5 * scale)
    for d in sorted(dets, key=lambda d: d["score"]):
        if d["score"] < score_thr:
            continue
        x1, y1, x2, y2 = (int(round(v)) for v in d["bbox"])
        col = _color(int(d["label"]))
        cv2.rectangle(out, (x1, y1), (x2, y2), col, thick, cv2.LINE_AA)
        text = f"{d['category']} {d['score']:.2f}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font, 1)
        ty = max(y1, th + base)
        cv2.rectangle(out, (x1, ty - th - base), (x1 + tw, ty), col, -1)
        cv2.putText(out, text, (x1, ty - base), cv2.FONT_HERSHEY_SIMPLEX, font, (0, 0, 0), 1, cv2.LINE_AA)
    return out


class DetectionPredictor:
    """Detections of RGB images with a :class:`~hrnet_jax.tasks.detection.task.DetectionTask` and its variables."""

    def __init__(self, task, variables):
        self.task = task
        self.model = task.build_model()
        self.names = task.class_names
        self.cat_ids = task.cat_ids
        self.offset = float(getattr(self.model, "box_offset", 0.0))
        apply_fn, self._vars = inference.prepare(self.model, jax.device_put(variables))

        def run(v, image, image_hw):
            batch = task.preprocess({"image": image, "image_hw": image_hw}, None, train=False)
            out = task.forward(apply_fn, v, batch, train=False, rngs=None)
            return {k: out[k] for k in ("boxes", "scores", "labels", "valid")}

        self._run = inference.jit(run)

    def predict(self, image_rgb: np.ndarray) -> list[dict]:
        """``[{"bbox" x1y1x2y2 (original pixels), "score", "label", "category_id", "category"}]`` by score."""
        geo = self.task.geo
        h, w = image_rgb.shape[:2]
        ex = D.detection_example(image_rgb, np.zeros((0, 4), np.float32), np.zeros((0,), np.int32),
                                 scale=geo.scale, buckets=geo.buckets, max_boxes=1)
        out = jax.device_get(self._run(self._vars, ex["image"][None], ex["image_hw"][None]))
        keep = np.asarray(out["valid"][0], bool)
        boxes = D.boxes_to_original(np.asarray(out["boxes"][0])[keep], ex["scale"], (h, w))
        dets = []
        for b, s, lab in zip(boxes, np.asarray(out["scores"][0])[keep], np.asarray(out["labels"][0])[keep]):
            dets.append({"bbox": [float(v) for v in b], "score": float(s), "label": int(lab),
                         "category_id": int(self.cat_ids[int(lab)]), "category": self.names[int(lab)]})
        return sorted(dets, key=lambda d: -d["score"])

    def results(self, dets: Sequence[dict], image_id: int, file_name: str = "") -> list[dict]:
        """COCO results entries (``bbox`` as [x, y, w, h]) of one image's detections."""
        out = []
        for d in dets:
            x1, y1, x2, y2 = d["bbox"]
            out.append({"image_id": int(image_id), "category_id": d["category_id"], "category": d["category"],
                        "bbox": [x1, y1, x2 - x1 + self.offset, y2 - y1 + self.offset], "score": d["score"],
                        **({"file_name": file_name} if file_name else {})})
        return out


def predict_images(task, variables, paths: Sequence[str], out_dir: str, score_thr: float = 0.3) -> list[dict]:
    """Predicts every readable image of ``paths`` into ``out_dir`` (module docstring); an unreadable one is
    skipped with its reason. Returns the COCO results written to ``detections.json``."""
    from hrnet_jax.predict import _image_id   # numeric file stems are COCO image ids, as for pose
    pred = DetectionPredictor(task, variables)
    os.makedirs(out_dir, exist_ok=True)
    results, skipped = [], 0
    for i, path in enumerate(paths):
        try:
            rgb = read_image_rgb(path)
        except ImageReadError as e:
            print(f"warning: {path}: {e.reason}; skipped", file=sys.stderr)
            skipped += 1
            continue
        dets = pred.predict(rgb)
        stem = os.path.splitext(os.path.basename(path))[0]
        cv2.imwrite(os.path.join(out_dir, f"{stem}_det.jpg"), draw_detections(rgb[:, :, ::-1], dets, score_thr))
        results += pred.results(dets, _image_id(path, i), os.path.basename(path))
    if paths and skipped == len(paths):
        raise ValueError(f"{paths[0] if len(paths) == 1 else f'all {len(paths)} images'}: no readable image")
    atomic_write_json(os.path.join(out_dir, "detections.json"), results, indent=None, sort_keys=False)
    return results


def load_detection(path: str, step: int | None = None, classes: Any = None, overrides: Sequence[str] = ()):
    """``(DetectionTask, variables)`` of a detection workdir or a converted detector checkpoint (classes: the
    workdir's dataset, else ``classes``: ``"coco"`` (default for converted checkpoints) or a JSON of
    ``[{"id", "name"}]``); ``overrides`` are ``task.<field>=value`` / ``model.<field>=value`` strings."""
    from hrnet_jax.predict import load_task

    def workdir_task(t):
        return dict(t, **({"classes": classes} if classes else {}))

    def from_meta(meta):
        model_cfg = {"name": meta.get("model", "faster_rcnn_hrnetv2p_w32"), "dtype": "float32",
                     **{k: v for k, v in (meta.get("overrides") or {}).items() if k != "num_classes"}}
        return model_cfg, {"name": "detection", "classes": classes or "coco"}
    return load_task(path, step, overrides, from_meta=from_meta, workdir_task=workdir_task)


def layout_like_task(task, variables: dict) -> dict:
    """``{params, batch_stats}`` of ``variables`` restacked to the layout of the task's detector (scanned <->
    unrolled stages), initialised abstractly through the task's own example batch (the detector takes
    ``image_hw`` besides the images)."""
    from hrnet_jax.models.params import restack
    from hrnet_jax.training import steps
    model = task.build_model()
    example = {k: v[:1] for k, v in task.example_batch().items()}
    abstract = jax.eval_shape(lambda: steps.init_variables(task, model, example, jax.random.PRNGKey(0)))
    out = {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}
    for k in ("params", "batch_stats"):
        if k in abstract:
            try:
                out[k] = restack(out[k], abstract[k])
            except (KeyError, ValueError):
                pass  # a different structure: apply() reports it
    return out
