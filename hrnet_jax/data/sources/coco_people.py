"""COCO-format keypoint annotations as *images* with all their people (bottom-up pose, HigherHRNet).

:class:`CocoPeopleSource` is a random-access source of image records; images are not read here (that happens in
the per-example transform, where a missing or corrupt file is skipped and counted). It follows the reference's
``CocoKeypoints`` (HRNet/HigherHRNet-Human-Pose-Estimation ``lib/dataset/COCOKeypoints.py``):

* training keeps the images with at least one annotation of any kind (``remove_images_without_annotations``:
  64,115 of COCO train2017's 118,287 images); evaluation keeps every image (val2017: 5,000);
* people: annotations of the spec's category that are not crowd (or have labelled keypoints) and have at least
  one labelled keypoint (v > 0). The reference also keeps non-crowd people with no labelled keypoint as all-zero
  rows; they add nothing to any target, so they are left out here;
* the ignore mask (:func:`ignore_mask`): crowd regions and people without labelled keypoints, decoded from their
  ``segmentation`` (polygons or RLE) with pycocotools; an annotation without a segmentation masks its box.
  ``mask`` is True where the loss counts (the reference's ``m < 0.5``).

Everything skipped while building the index is counted in ``source.stats``.
"""
from __future__ import annotations

import json
import logging
import os
from collections import Counter
from typing import Any, Sequence

import numpy as np

from hrnet_jax.data.keypoints import KeypointSpec

log = logging.getLogger(__name__)


def ignore_mask(regions: Sequence[dict], height: int, width: int) -> np.ndarray:
    """(H, W) bool, True where the loss counts: False on every region's ``segmentation`` (polygons or RLE, as
    pycocotools ``frPyObjects`` reads them) or, without one, its ``bbox``."""
    from pycocotools import mask as mask_utils
    m = np.zeros((int(height), int(width)), np.float64)
    for reg in regions:
        seg = reg.get("segmentation")
        if seg:
            rles = mask_utils.frPyObjects(seg, int(height), int(width))
            for rle in (rles if isinstance(rles, list) else [rles]):
                m += mask_utils.decode(rle)
        elif reg.get("bbox") is not None:
            x, y, w, h = (float(v) for v in reg["bbox"][:4])
            x0, y0 = max(0, int(np.floor(x))), max(0, int(np.floor(y)))
            x1, y1 = min(int(width), int(np.ceil(x + w))), min(int(height), int(np.ceil(y + h)))
            m[y0:y1, x0:x1] += 1
    return m < 0.5


class CocoPeopleSource:
    """Images of a COCO-format keypoint file. ``self[i]`` is a dict:

    ``image_path`` (str), ``image_id`` (int), ``height`` / ``width`` (ints, from the annotation file),
    ``joints`` (N, K, 3) float32 [x, y, v] with v in {0, 1} (v = 1 and 2 both count as labelled), ``bbox``
    (N, 4) float32, ``area`` (N,), ``ignore`` (a list of the annotations to mask: their ``segmentation`` /
    ``bbox``). N may be 0 (evaluation images without people).
    """

    def __init__(self, ann_file: str, image_dir: str, spec: KeypointSpec, *, require_annotations: bool = True,
                 check_images: bool = True, coco_json: dict | None = None):
        self.ann_file, self.image_dir, self.spec = ann_file, image_dir, spec
        if coco_json is None:
            with open(ann_file) as f:
                coco_json = json.load(f)
        self.stats: Counter = Counter()
        k = spec.num_keypoints
        for cat in coco_json.get("categories", []):
            if int(cat["id"]) == spec.category_id and "keypoints" in cat and len(cat["keypoints"]) != k:
                raise ValueError(f"{ann_file}: category {cat['id']} has {len(cat['keypoints'])} keypoints but the "
                                 f"spec {spec.name!r} has {k}")
        images = {int(im["id"]): im for im in coco_json.get("images", [])}
        people: dict[int, list] = {i: [] for i in images}
        ignore: dict[int, list] = {i: [] for i in images}
        any_ann: set = set()
        for ann in coco_json.get("annotations", []):
            img_id = int(ann["image_id"])
            if img_id not in images:
                self.stats["skipped_unknown_image"] += 1
                continue
            any_ann.add(img_id)
            if int(ann.get("category_id", spec.category_id)) != spec.category_id:
                self.stats["skipped_other_category"] += 1
                continue
            kp = np.asarray(ann.get("keypoints") or np.zeros(3 * k), np.float32).reshape(-1, 3)
            if kp.shape[0] != k:
                raise ValueError(f"annotation {ann.get('id')} has {kp.shape[0]} keypoints, spec has {k}")
            if not np.all(np.isfinite(kp)) or np.any((kp[:, 2] < 0) | (kp[:, 2] > 2)):
                self.stats["skipped_bad_keypoints"] += 1
                continue
            labelled = int(np.sum(kp[:, 2] > 0))
            crowd = bool(ann.get("iscrowd", 0))
            if crowd or labelled == 0:
                # the reference masks crowd regions and people without labelled keypoints
                ignore[img_id].append({"segmentation": ann.get("segmentation"), "bbox": ann.get("bbox")})
                self.stats["masked_crowd" if crowd else "masked_no_keypoints"] += 1
            if labelled == 0:
                continue
            kp[:, 2] = np.minimum(kp[:, 2], 1.0)
            people[img_id].append((kp, np.asarray(ann.get("bbox") or (0, 0, 0, 0), np.float32)[:4],
                                   float(ann.get("area", 0.0))))
        ids = sorted(images)
        if require_annotations:
            kept = [i for i in ids if i in any_ann]
            self.stats["skipped_no_annotations"] += len(ids) - len(kept)
            ids = kept
        if check_images and os.path.isdir(image_dir):
            existing = set(os.listdir(image_dir))
            kept = [i for i in ids if images[i]["file_name"] in existing]
            self.stats["skipped_missing_image"] += len(ids) - len(kept)
            if len(kept) < len(ids):
                log.warning("%s: %d image(s) skipped because their file is missing from %s", ann_file,
                            len(ids) - len(kept), image_dir)
            ids = kept
        self._recs = []
        for i in ids:
            im = images[i]
            p = people[i]
            self._recs.append(dict(
                image_path=os.path.join(image_dir, im["file_name"]), image_id=i, height=int(im["height"]),
                width=int(im["width"]), file_name=im["file_name"],
                joints=np.stack([q[0] for q in p]) if p else np.zeros((0, k, 3), np.float32),
                bbox=np.stack([q[1] for q in p]) if p else np.zeros((0, 4), np.float32),
                area=np.asarray([q[2] for q in p], np.float32), ignore=ignore[i]))
        self.image_ids = [r["image_id"] for r in self._recs]
        self.stats["num_images"] = len(self._recs)
        self.stats["num_people"] = int(sum(len(r["joints"]) for r in self._recs))

    def mask(self, index: int) -> np.ndarray:
        """The record's (H, W) bool loss mask at the annotation file's image size (:func:`ignore_mask`)."""
        rec = self[index]
        return ignore_mask(rec["ignore"], rec["height"], rec["width"])

    def __len__(self) -> int:
        return len(self._recs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self._recs[int(index)]

    def __repr__(self) -> str:
        return f"CocoPeopleSource({self.ann_file!r}, images={len(self)}, stats={dict(self.stats)})"
