"""Host-side COCO box evaluation: detections back to original image pixels and category ids, a COCO results
JSON, and ``pycocotools`` COCOeval (``iouType="bbox"``).

A detection's box (x1, y1, x2, y2 in input pixels of the resized, padded image) is divided by the example's
``scale`` = (sx, sy) (:mod:`hrnet_jax.data.ops.detection`), clipped to the original image, and written as COCO
``[x, y, w, h]`` with ``w = x2 - x1 + box_offset`` (``box_offset`` 1 for mmdet v1 / the official HRNet
checkpoints' legacy coordinates, 0 otherwise); its label is mapped back to the dataset's category id. The
statistics are COCOeval's 12 (``AP`` = AP@[.5:.95], ``AP50``, ``AP75``, ``APs``, ``APm``, ``APl``, ``AR1``,
``AR10``, ``AR100``, ``ARs``, ``ARm``, ``ARl``).
"""
from __future__ import annotations

import contextlib
import io
import json
from collections import defaultdict
from typing import Any, Mapping, Sequence

import numpy as np

from hrnet_jax.data.ops.detection import boxes_to_original
from hrnet_jax.data.sources.coco_api import load_coco

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def to_coco_results(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, valid: np.ndarray,
                    image_ids: np.ndarray, scales: np.ndarray, orig_hw: np.ndarray | None,
                    cat_ids: Sequence[int], box_offset: float = 0.0) -> list[dict]:
    """Per-image detections (B, D, ...) → COCO results ``[{image_id, category_id, bbox, score}]``."""
    out = []
    cat_ids = np.asarray(cat_ids)
    for i in range(len(image_ids)):
        keep = np.asarray(valid[i], bool)
        if not keep.any():
            continue
        hw = None if orig_hw is None else np.asarray(orig_hw[i])
        b = boxes_to_original(np.asarray(boxes[i])[keep], np.asarray(scales[i]),
                              hw if hw is not None and hw.min() > 0 else None)
        for (x1, y1, x2, y2), s, lab in zip(b, np.asarray(scores[i])[keep], np.asarray(labels[i])[keep]):
            out.append({"image_id": int(image_ids[i]), "category_id": int(cat_ids[int(lab)]),
                        "bbox": [float(x1), float(y1), float(x2 - x1 + box_offset), float(y2 - y1 + box_offset)],
                        "score": float(s)})
    return out


def write_results_json(results: Sequence[Mapping[str, Any]], path: str) -> None:
    with open(path, "w") as f:
        json.dump(list(results), f)


def coco_box_eval(gt: Any, results: "Sequence[Mapping[str, Any]] | str", img_ids: Sequence[int] | None = None,
                  verbose: bool = False) -> dict[str, float]:
    """COCOeval bbox of ``results`` (a list or a results-JSON path) against ``gt`` → :data:`STAT_NAMES`."""
    from pycocotools.cocoeval import COCOeval
    coco_gt = load_coco(gt)
    if isinstance(results, str):
        with open(results) as f:
            results = json.load(f)
    results = [dict(r) for r in results]
    if not results:
        return {n: 0.0 for n in STAT_NAMES}
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        coco_dt = coco_gt.loadRes(results)
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        if img_ids is not None:
            ev.params.imgIds = sorted(int(i) for i in img_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    if verbose:
        print(buf.getvalue())
    return {n: float(max(v, 0.0)) for n, v in zip(STAT_NAMES, ev.stats)}


class DetectionEvaluator:
    """Accumulates detections (``add``) and runs COCOeval bbox (``result``).

    ``add(outputs)`` takes host arrays from ``DetectionTask.predict``: ``boxes`` (B, D, 4), ``scores`` (B, D),
    ``labels`` (B, D), ``valid`` (B, D) per detection, and ``image_id`` (B,), ``scale`` (B, 2), ``orig_hw``
    (B, 2) per image (an ``image_id`` < 0 is a padding row). ``img_ids``: the images the evaluation covers
    (default: every image of the ground truth; ``seen_images_only``: those added).
    """

    def __init__(self, gt: Any, cat_ids: Sequence[int], results_path: str | None = None, box_offset: float = 0.0,
                 img_ids: Sequence[int] | None = None, seen_images_only: bool = False):
        self.gt, self.cat_ids, self.results_path = gt, list(cat_ids), results_path
        self.box_offset, self.img_ids, self.seen_images_only = float(box_offset), img_ids, seen_images_only
        self.results: list[dict] = []
        self._seen: set[int] = set()
        self._parts: dict[str, list] = defaultdict(list)

    def add(self, outputs: Mapping[str, Any], batch: Mapping[str, Any] | None = None) -> None:
        src = {**(batch or {}), **outputs}
        ids = np.asarray(src["image_id"]).reshape(-1)
        rows = ids >= 0
        if "valid_image" in src:
            rows &= np.asarray(src["valid_image"], bool).reshape(-1)
        if not rows.any():
            return
        self._seen.update(int(i) for i in ids[rows])
        self.results += to_coco_results(np.asarray(src["boxes"])[rows], np.asarray(src["scores"])[rows],
                                        np.asarray(src["labels"])[rows], np.asarray(src["valid"])[rows],
                                        ids[rows], np.asarray(src["scale"])[rows],
                                        np.asarray(src["orig_hw"])[rows] if "orig_hw" in src else None,
                                        self.cat_ids, self.box_offset)

    def result(self) -> dict[str, float]:
        if self.results_path:
            write_results_json(self.results, self.results_path)
        img_ids = self.img_ids
        if img_ids is None and self.seen_images_only:
            img_ids = sorted(self._seen)
        stats = coco_box_eval(self.gt, self.results, img_ids=img_ids)
        stats["num_images"] = float(len(self._seen))
        stats["num_detections"] = float(len(self.results))
        return stats
