"""COCO-format instance annotations (``instances_*.json`` + an image folder) for any category list.

:class:`CocoInstancesSource` is a random-access source of *images* (one record per image, with all its boxes);
images are not read here (that happens in the per-example transform, where a missing or corrupt file is skipped
and counted). A custom dataset in the COCO instances format works by pointing at its JSON and image folder.

Categories: the JSON's ``categories`` sorted by id become contiguous labels ``0..C-1`` (:attr:`cat_ids` maps a
label back to its category id, :attr:`class_names` names it), as mmdet's ``CocoDataset`` does (``cat2label``).
A ``categories`` list given to the source restricts / orders them instead.

Boxes (mmdet 2.x ``CocoDataset._parse_ann_info``, which the HRNet detection configs follow for what is ignored):

* ``iscrowd`` annotations are dropped (the HRNet Faster R-CNN configs train and evaluate without ignore
  regions; COCOeval reads the crowd boxes from the ground-truth file itself) — counted ``skipped_crowd``;
* ``[x, y, w, h]`` becomes ``x1, y1, x2, y2 = x, y, x + w, y + h`` (continuous pixel coordinates), clipped to
  the image; an annotation with ``area <= 0``, ``w < 1`` or ``h < 1`` or non-finite numbers is
  ``skipped_bad_box``; one with nothing left inside the image after clipping is ``skipped_outside_image``;
* an annotation of an unknown image is ``skipped_unknown_image``, one of a category not in the list
  ``skipped_other_category``.

Images: an image whose file is absent from the image folder is ``skipped_missing_image`` (checked once, when the
source is built); with ``drop_empty`` (training: mmdet's ``filter_empty_gt``) an image left without boxes is
``skipped_no_boxes``. All counters are in ``source.stats``.
"""
from __future__ import annotations

import json
import logging
import math
import os
from collections import Counter
from typing import Any, Sequence

import numpy as np

log = logging.getLogger(__name__)

#: the keys of ``source.stats`` that count something dropped (logged as ``data/<split>/<key>``)
SKIP_KEYS = ("skipped_crowd", "skipped_bad_box", "skipped_outside_image", "skipped_unknown_image",
             "skipped_other_category", "skipped_missing_image", "skipped_no_boxes")


def coco_box_to_xyxy(bbox: Sequence[float], width: float, height: float) -> tuple[np.ndarray | None, str]:
    """``[x, y, w, h]`` → (clipped ``[x1, y1, x2, y2]`` float32 or None, the skip reason or "")."""
    try:
        x, y, w, h = (float(v) for v in bbox[:4])
    except (TypeError, ValueError, IndexError):
        return None, "skipped_bad_box"
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w < 1 or h < 1:
        return None, "skipped_bad_box"
    x1, y1 = max(0.0, x), max(0.0, y)
    x2, y2 = min(float(width), x + w), min(float(height), y + h)
    if x2 - x1 < 1e-3 or y2 - y1 < 1e-3:
        return None, "skipped_outside_image"
    return np.array([x1, y1, x2, y2], np.float32), ""


class CocoInstancesSource:
    """Images of a COCO-format instances file. ``self[i]`` is a dict: ``image_path`` (str), ``image_id`` (int),
    ``height``, ``width`` (the JSON's), ``boxes`` (N, 4) float32 x1y1x2y2 image pixels, ``labels`` (N,) int32."""

    def __init__(self, ann_file: str, image_dir: str, *, categories: Sequence[int] | None = None,
                 drop_empty: bool = False, check_images: bool = True, coco_json: dict | None = None):
        self.ann_file, self.image_dir = ann_file, image_dir
        if coco_json is None:
            if not os.path.exists(ann_file):
                raise FileNotFoundError(f"{ann_file}: no such annotation file (COCO instances JSON)")
            with open(ann_file) as f:
                coco_json = json.load(f)
        cats = sorted(coco_json.get("categories", []), key=lambda c: int(c["id"]))
        names = {int(c["id"]): str(c.get("name", c["id"])) for c in cats}
        if categories is None:
            self.cat_ids = [int(c["id"]) for c in cats]
        else:
            unknown = [c for c in categories if int(c) not in names]
            if unknown:
                raise ValueError(f"{ann_file}: categories {unknown} not in the file; its ids: {sorted(names)}")
            self.cat_ids = [int(c) for c in categories]
        if not self.cat_ids:
            raise ValueError(f"{ann_file}: no categories")
        self.class_names = [names[c] for c in self.cat_ids]
        self.cat_to_label = {c: i for i, c in enumerate(self.cat_ids)}
        self.stats: Counter = Counter({k: 0 for k in SKIP_KEYS})

        images = {int(im["id"]): im for im in coco_json.get("images", [])}
        per_image: dict[int, list] = {i: [] for i in images}
        for ann in coco_json.get("annotations", []):
            img = images.get(int(ann.get("image_id", -1)))
            if img is None:
                self.stats["skipped_unknown_image"] += 1
                continue
            label = self.cat_to_label.get(int(ann.get("category_id", -1)))
            if label is None:
                self.stats["skipped_other_category"] += 1
                continue
            if ann.get("iscrowd", 0):
                self.stats["skipped_crowd"] += 1
                continue
            try:
                area_ok = float(ann.get("area", 1.0)) > 0
            except (TypeError, ValueError):
                area_ok = False
            box, why = coco_box_to_xyxy(ann.get("bbox", ()), img["width"], img["height"])
            if not area_ok:
                box, why = None, "skipped_bad_box"
            if box is None:
                self.stats[why] += 1
                continue
            per_image[int(img["id"])].append((box, label))

        existing = set(os.listdir(image_dir)) if check_images and os.path.isdir(image_dir) else None
        recs = []
        for image_id in sorted(images):
            im = images[image_id]
            if existing is not None and im["file_name"] not in existing:
                self.stats["skipped_missing_image"] += 1
                continue
            anns = per_image[image_id]
            if drop_empty and not anns:
                self.stats["skipped_no_boxes"] += 1
                continue
            boxes = np.stack([b for b, _ in anns]).astype(np.float32) if anns else np.zeros((0, 4), np.float32)
            labels = np.array([lab for _, lab in anns], np.int32)
            recs.append(dict(image_path=os.path.join(image_dir, im["file_name"]), image_id=image_id,
                             height=int(im["height"]), width=int(im["width"]), boxes=boxes, labels=labels))
        self._recs = recs
        self.stats["num_images"] = len(recs)
        self.stats["num_boxes"] = int(sum(len(r["labels"]) for r in recs))
        if self.stats["skipped_missing_image"]:
            log.warning("%s: %d image(s) missing from %s were skipped", ann_file,
                        self.stats["skipped_missing_image"], image_dir)

    @property
    def num_classes(self) -> int:
        return len(self.cat_ids)

    def skipped(self) -> dict[str, int]:
        """The ``skipped_*`` counters."""
        return {k: int(v) for k, v in self.stats.items() if k.startswith("skipped")}

    def __len__(self) -> int:
        return len(self._recs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self._recs[int(index)]

    def __repr__(self) -> str:
        return (f"CocoInstancesSource({self.ann_file!r}, images={len(self)}, classes={self.num_classes}, "
                f"stats={dict(self.stats)})")
