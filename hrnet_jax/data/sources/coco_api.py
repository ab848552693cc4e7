"""pycocotools' ``COCO`` index, built quietly from a path, a dict or an existing object: the ground truth that
every COCOeval in the project (keypoints, boxes, bottom-up keypoints) is computed against."""
from __future__ import annotations

import contextlib
import io
from typing import Any


def load_coco(gt: Any):
    """A pycocotools COCO from a path, a dict or a COCO object (its index printout suppressed)."""
    from pycocotools.coco import COCO
    if isinstance(gt, COCO):
        return gt
    with contextlib.redirect_stdout(io.StringIO()):
        if isinstance(gt, str):
            return COCO(gt)
        coco = COCO()
        coco.dataset = dict(gt)
        coco.createIndex()
        return coco
