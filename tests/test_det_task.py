"""Detection task: the evaluator's box AP equals pycocotools run directly on the same detections, the task's
config checks, a short det_demo-like run through the generic loop (outputs format, rising AP), and 1 vs 8
devices giving the same losses for the detector's train step."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from hrnet_jax.tasks.detection.evaluate import STAT_NAMES, DetectionEvaluator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---- evaluator vs pycocotools ------------------------------------------------------------------------------------
def _gt_and_dets(seed=0):
    rng = np.random.default_rng(seed)
    cats = [2, 5, 9]
    images, anns = [], []
    for i in range(6):
        h, w = int(rng.integers(60, 120)), int(rng.integers(60, 120))
        images.append(dict(id=10 + i, file_name=f"{i}.jpg", height=h, width=w))
        for _ in range(int(rng.integers(1, 5))):
            bw, bh = rng.uniform(4, w / 2), rng.uniform(4, h / 2)
            x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
            anns.append(dict(id=len(anns) + 1, image_id=10 + i, category_id=int(rng.choice(cats)),
                             bbox=[x, y, bw, bh], area=bw * bh, iscrowd=int(rng.random() < 0.1)))
    gt = dict(images=images, annotations=anns, categories=[dict(id=c, name=f"c{c}") for c in cats])
    # detections in input pixels of a resized image (scale sx, sy), D = 6 slots per image, some invalid
    D = 6
    B = len(images)
    boxes = np.zeros((B, D, 4), np.float32)
    scores = rng.uniform(0.05, 1, (B, D)).astype(np.float32)
    labels = rng.integers(0, 3, (B, D)).astype(np.int32)
    valid = rng.random((B, D)) < 0.8
    scale = rng.uniform(0.5, 2.0, (B, 2)).astype(np.float32)
    orig_hw = np.array([[im["height"], im["width"]] for im in images], np.int32)
    for i, im in enumerate(images):
        own = [a for a in anns if a["image_id"] == im["id"]]
        for d in range(D):
            if d < len(own) and rng.random() < 0.8:   # a jittered ground-truth box with its class
                x, y, bw, bh = own[d]["bbox"]
                x1, y1 = x + rng.normal(0, 1.5), y + rng.normal(0, 1.5)
                x2, y2 = x + bw + rng.normal(0, 1.5), y + bh + rng.normal(0, 1.5)
                labels[i, d] = cats.index(own[d]["category_id"])
            else:                                     # a false positive
                x1, y1 = rng.uniform(0, im["width"] - 10), rng.uniform(0, im["height"] - 10)
                x2, y2 = x1 + rng.uniform(3, 30), y1 + rng.uniform(3, 30)
            sx, sy = scale[i]
            boxes[i, d] = [x1 * sx, y1 * sy, x2 * sx, y2 * sy]
    return gt, cats, dict(boxes=boxes, scores=scores, labels=labels, valid=valid, image_id=np.array(
        [im["id"] for im in images], np.int32), scale=scale, orig_hw=orig_hw)


def test_evaluator_equals_pycocotools_directly(tmp_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    gt, cats, out = _gt_and_dets()
    gt_path = tmp_path / "gt.json"
    gt_path.write_text(json.dumps(gt))
    res_path = tmp_path / "dets.json"
    ev = DetectionEvaluator(str(gt_path), cats, results_path=str(res_path))
    ev.add({k: v[:4] for k, v in out.items()})
    ev.add({**{k: v[4:] for k, v in out.items()}, "image_id": np.array([14, 15, -1][:2], np.int32)})
    got = ev.result()
    # the same detections converted by hand: input pixels / scale, clipped to the image, xywh, category ids
    dets = []
    for i in range(len(out["image_id"])):
        sx, sy = (float(v) for v in out["scale"][i])
        h, w = out["orig_hw"][i]
        for d in range(out["boxes"].shape[1]):
            if not out["valid"][i, d]:
                continue
            x1, y1, x2, y2 = (float(v) for v in out["boxes"][i, d])
            x1, x2 = np.clip([x1 / sx, x2 / sx], 0, w)
            y1, y2 = np.clip([y1 / sy, y2 / sy], 0, h)
            dets.append(dict(image_id=int(out["image_id"][i]), category_id=cats[int(out["labels"][i, d])],
                             bbox=[x1, y1, x2 - x1, y2 - y1], score=float(out["scores"][i, d])))
    direct_path = tmp_path / "direct.json"
    direct_path.write_text(json.dumps(dets))
    coco = COCO(str(gt_path))
    e = COCOeval(coco, coco.loadRes(str(direct_path)), "bbox")
    e.evaluate()
    e.accumulate()
    e.summarize()
    assert got["AP"] > 0.1
    for name, v in zip(STAT_NAMES, e.stats):
        assert got[name] == pytest.approx(max(v, 0.0), abs=2e-4), name
    written = json.load(open(res_path))
    assert len(written) == len(dets)
    np.testing.assert_allclose([r["bbox"] for r in written], [r["bbox"] for r in dets], atol=2e-3)
