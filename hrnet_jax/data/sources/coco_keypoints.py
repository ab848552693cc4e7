"""COCO-format keypoint annotations (``person_keypoints_*.json`` + an image folder) for any number of keypoints.

:class:`CocoKeypointSource` is a random-access source (``__len__`` / ``__getitem__``, usable with
``grain.MapDataset.source``) of *person instances* — one record per box, images are not read here (that happens
in the per-example transform, where a missing or corrupt file is skipped and counted).

Boxes:

* ``boxes="gt"`` (training, and evaluation with ground-truth boxes): the official selection — non-crowd
  annotations of the spec's category with ``area > 0``, a box that survives clipping to the image
  (x1 = max(0, x), x2 = min(W-1, x1 + max(0, w-1)), same for y) and at least one labelled keypoint (v > 0).
  The box score is 1.
* ``boxes="det"`` (evaluation with a person detector, the published protocol): a COCO results JSON (``bbox``,
  ``score``, ``image_id``, ``category_id``); only ``category_id`` == the spec's category (1) and
  ``score >= det_score_thre`` are kept.

Each box becomes (center, scale) with :func:`hrnet_jax.data.ops.affine.box_to_center_scale` (aspect ratio = input
W/H, ×1.25, pixel_std 200). Everything skipped while building the index is counted in ``source.stats``.
"""
from __future__ import annotations

import json
import logging
import os
from collections import Counter
from typing import Any, Sequence

import numpy as np

from hrnet_jax.data.ops.affine import box_to_center_scale
from hrnet_jax.data.keypoints import KeypointSpec

log = logging.getLogger(__name__)


def valid_box(bbox) -> bool:
    """``[x, y, w, h]`` with finite numbers and a positive width and height."""
    try:
        x, y, w, h = (float(v) for v in bbox[:4])
    except (TypeError, ValueError):
        return False
    return bool(np.all(np.isfinite((x, y, w, h)))) and w > 0 and h > 0


def clip_box(bbox: Sequence[float], width: int, height: int) -> list[float] | None:
    """The official clean_bbox: clipped [x, y, w, h], or None when nothing is left (also for a box without width
    or height, or with non-finite values, which the official code would keep as a degenerate crop)."""
    if not valid_box(bbox):
        return None
    x, y, w, h = (float(v) for v in bbox[:4])
    x1, y1 = max(0.0, x), max(0.0, y)
    x2 = min(width - 1.0, x1 + max(0.0, w - 1.0))
    y2 = min(height - 1.0, y1 + max(0.0, h - 1.0))
    if x2 >= x1 and y2 >= y1:
        return [x1, y1, x2 - x1, y2 - y1]
    return None


class CocoKeypointSource:
    """Person instances of a COCO-format keypoint file. ``self[i]`` is a dict of numpy arrays / scalars:

    ``image_path`` (str), ``image_id``, ``center`` (2,), ``scale`` (2,), ``score``, ``joints`` (K, 2),
    ``vis`` (K,) in {0, 1} (v = 1 and v = 2 both count as labelled), ``area`` (the annotation area; 0 for det
    boxes), ``bbox`` (4,).
    """

    def __init__(self, ann_file: str, image_dir: str, spec: KeypointSpec, input_size_hw: Sequence[int],
                 boxes: str = "gt", det_file: str | None = None, det_score_thre: float = 0.0,
                 padding: float = 1.25, check_images: bool = True, coco_json: dict | None = None):
        if boxes not in ("gt", "det"):
            raise ValueError(f"boxes must be 'gt' or 'det', got {boxes!r}")
        if boxes == "det" and not det_file:
            raise ValueError("boxes='det' needs det_file (a COCO results JSON of person boxes)")
        self.ann_file = ann_file
        self.image_dir = image_dir
        self.spec = spec
        self.input_size_hw = (int(input_size_hw[0]), int(input_size_hw[1]))
        self.aspect_ratio = self.input_size_hw[1] / self.input_size_hw[0]
        self.padding = padding
        self.boxes = boxes
        if coco_json is None:
            with open(ann_file) as f:
                coco_json = json.load(f)
        self.stats: Counter = Counter()
        self._check_categories(coco_json)
        images = {int(im["id"]): im for im in coco_json.get("images", [])}
        self.image_ids = sorted(images)
        existing = None
        if check_images and os.path.isdir(image_dir):
            existing = set(os.listdir(image_dir))
        k = spec.num_keypoints
        recs: list[dict] = []
        if boxes == "gt":
            for ann in coco_json.get("annotations", []):
                rec = self._gt_record(ann, images, k)
                if rec is not None:
                    recs.append(rec)
        else:
            try:
                with open(det_file) as f:
                    dets = json.load(f)
            except ValueError as e:
                raise ValueError(f"{det_file}: not a JSON list of detections ({e})") from None
            if not isinstance(dets, list):
                raise ValueError(f"{det_file}: expected a JSON list of COCO results "
                                 f"[{{image_id, category_id, bbox, score}}, ...], got {type(dets).__name__}")
            for det in dets:
                if not (isinstance(det, dict) and {"image_id", "bbox", "score"} <= set(det)
                        and valid_box(det["bbox"])):
                    self.stats["skipped_det_bad_box"] += 1
                    continue
                if int(det.get("category_id", 1)) != spec.category_id:
                    self.stats["skipped_det_other_category"] += 1
                    continue
                if float(det["score"]) < det_score_thre:
                    self.stats["skipped_det_low_score"] += 1
                    continue
                img = images.get(int(det["image_id"]))
                if img is None:
                    self.stats["skipped_det_unknown_image"] += 1
                    continue
                c, s = box_to_center_scale(det["bbox"], self.aspect_ratio, padding)
                recs.append(dict(image_id=int(det["image_id"]), center=c, scale=s, score=float(det["score"]),
                                 joints=np.zeros((k, 2), np.float32), vis=np.zeros((k,), np.float32),
                                 area=0.0, bbox=np.asarray(det["bbox"], np.float32)))
        if existing is not None:
            kept = []
            for r in recs:
                if images[r["image_id"]]["file_name"] in existing:
                    kept.append(r)
                else:
                    self.stats["skipped_missing_image"] += 1
            if self.stats["skipped_missing_image"]:
                log.warning("%s: %d instance(s) skipped because their image file is missing from %s",
                            ann_file, self.stats["skipped_missing_image"], image_dir)
            recs = kept
        for r in recs:
            r["image_path"] = os.path.join(image_dir, images[r["image_id"]]["file_name"])
        self._recs = recs
        self.stats["num_instances"] = len(recs)
        self.stats["num_images"] = len(images)
        if self.stats["skipped_no_keypoints"]:
            log.info("%s: %d annotation(s) without labelled keypoints skipped", ann_file,
                     self.stats["skipped_no_keypoints"])

    def _check_categories(self, coco_json: dict) -> None:
        for cat in coco_json.get("categories", []):
            if int(cat["id"]) == self.spec.category_id and "keypoints" in cat:
                if len(cat["keypoints"]) != self.spec.num_keypoints:
                    raise ValueError(f"{self.ann_file}: category {cat['id']} has {len(cat['keypoints'])} keypoints "
                                     f"but the spec {self.spec.name!r} has {self.spec.num_keypoints}")

    def _gt_record(self, ann: dict, images: dict, k: int) -> dict | None:
        if int(ann.get("category_id", 1)) != self.spec.category_id:
            self.stats["skipped_other_category"] += 1
            return None
        if ann.get("iscrowd", 0):
            self.stats["skipped_crowd"] += 1
            return None
        img = images.get(int(ann["image_id"]))
        if img is None:
            self.stats["skipped_unknown_image"] += 1
            return None
        box = clip_box(ann["bbox"], int(img["width"]), int(img["height"]))
        if float(ann.get("area", 0)) <= 0 or box is None:
            self.stats["skipped_bad_box"] += 1
            return None
        kp = np.asarray(ann.get("keypoints", []), dtype=np.float32).reshape(-1, 3)
        if kp.shape[0] != k:
            raise ValueError(f"annotation {ann.get('id')} has {kp.shape[0]} keypoints, spec has {k}")
        if not np.all(np.isfinite(kp)) or np.any((kp[:, 2] < 0) | (kp[:, 2] > 2)):
            self.stats["skipped_bad_keypoints"] += 1   # visibility outside {0, 1, 2} or non-finite values
            return None
        if not np.any(kp[:, 2] > 0):
            self.stats["skipped_no_keypoints"] += 1
            return None
        c, s = box_to_center_scale(box, self.aspect_ratio, self.padding)
        vis = np.minimum(kp[:, 2], 1.0).astype(np.float32)
        return dict(image_id=int(ann["image_id"]), center=c, scale=s, score=1.0, joints=kp[:, :2].copy(), vis=vis,
                    area=float(ann["area"]), bbox=np.asarray(box, np.float32))

    def __len__(self) -> int:
        return len(self._recs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self._recs[int(index)]

    def __repr__(self) -> str:
        return (f"CocoKeypointSource({self.ann_file!r}, boxes={self.boxes!r}, instances={len(self)}, "
                f"stats={dict(self.stats)})")
