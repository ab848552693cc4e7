"""Host-side COCO keypoint evaluation: rescoring, OKS-NMS, results JSON and COCOeval with per-dataset sigmas.

Protocol (reference 9.2, steps 7-9):

* rescoring: instance score = box score × mean of the keypoint maxvals above ``in_vis_thre`` (0.2), or 0 when
  none is above;
* OKS-NMS per image (greedy, ``oks_thre`` 0.9) with area = (scale_w·200)·(scale_h·200), the enlarged box;
* results JSON in the COCO results format (``keypoints`` = [x, y, maxval]·K, ``score``, ``image_id``,
  ``category_id``);
* ``pycocotools.cocoeval.COCOeval(iouType="keypoints")``. pycocotools hard-codes the 17 COCO sigmas in
  ``Params.setKpParams``; ``computeOks`` takes ``k = len(params.kpt_oks_sigmas)``, so replacing
  ``params.kpt_oks_sigmas`` with the dataset's own sigmas (length K) after construction is all a K≠17 dataset
  needs. ``coco_keypoint_eval`` does that and checks that K agrees with the ground truth and the results.
"""
from __future__ import annotations

import contextlib
import io
import json
from collections import defaultdict
from typing import Any, Mapping, Sequence

import numpy as np

from hrnet_jax.data.sources.coco_api import load_coco

STAT_NAMES = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")


# ---- rescoring and OKS-NMS --------------------------------------------------------------------------------------
def rescore(box_score: float, maxvals: np.ndarray, in_vis_thre: float = 0.2) -> float:
    """box score × mean of the maxvals above ``in_vis_thre`` (0 if none)."""
    m = np.asarray(maxvals, dtype=np.float64).reshape(-1)
    sel = m[m > in_vis_thre]
    return float(box_score) * (float(sel.mean()) if sel.size else 0.0)


def oks_iou(g: np.ndarray, d: np.ndarray, area_g: float, area_d: np.ndarray, sigmas: np.ndarray,
            in_vis_thre: float | None = None) -> np.ndarray:
    """OKS between one instance ``g`` (K, 3) and instances ``d`` (N, K, 3), with the mean of the two areas."""
    sigmas = np.asarray(sigmas, dtype=np.float64)
    var = (sigmas * 2) ** 2
    g = np.asarray(g, dtype=np.float64)
    d = np.asarray(d, dtype=np.float64).reshape(-1, *g.shape)
    dx = d[:, :, 0] - g[None, :, 0]
    dy = d[:, :, 1] - g[None, :, 1]
    area = (area_g + np.asarray(area_d, dtype=np.float64)) / 2 + np.spacing(1)
    e = (dx ** 2 + dy ** 2) / var[None, :] / area[:, None] / 2
    out = np.zeros(len(d))
    for n in range(len(d)):
        en = e[n]
        if in_vis_thre is not None:
            en = en[(g[:, 2] > in_vis_thre) & (d[n, :, 2] > in_vis_thre)]
        out[n] = np.sum(np.exp(-en)) / en.shape[0] if en.shape[0] else 0.0
    return out


def oks_nms(keypoints: np.ndarray, scores: np.ndarray, areas: np.ndarray, thresh: float, sigmas: np.ndarray,
            in_vis_thre: float | None = None) -> list[int]:
    """Greedy OKS-NMS: highest score first; drop every remaining instance with OKS > ``thresh`` to a kept one.

    keypoints (N, K, 3), scores (N,), areas (N,). Returns the kept indices in order of decreasing score.
    """
    n = len(scores)
    if n == 0:
        return []
    keypoints = np.asarray(keypoints, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    areas = np.asarray(areas, dtype=np.float64)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size > 0:
        i = order[0]
        keep.append(int(i))
        ovr = oks_iou(keypoints[i], keypoints[order[1:]], areas[i], areas[order[1:]], sigmas, in_vis_thre)
        order = order[1:][ovr <= thresh]
    return keep


# ---- results ----------------------------------------------------------------------------------------------------
def build_results(keypoints: np.ndarray, maxvals: np.ndarray, centers: np.ndarray, scales: np.ndarray,
                  box_scores: np.ndarray, image_ids: np.ndarray, sigmas: Sequence[float], category_id: int = 1,
                  in_vis_thre: float = 0.2, oks_thre: float = 0.9, use_nms: bool = True,
                  pixel_std: float = 200.0) -> list[dict]:
    """Per-crop predictions -> COCO results after rescoring and per-image OKS-NMS."""
    keypoints = np.asarray(keypoints, dtype=np.float64)
    maxvals = np.asarray(maxvals, dtype=np.float64).reshape(len(keypoints), -1)
    scales = np.asarray(scales, dtype=np.float64)
    kps3 = np.concatenate([keypoints, maxvals[..., None]], axis=-1)        # (N, K, 3)
    areas = np.prod(scales * pixel_std, axis=1)
    scores = np.array([rescore(s, m, in_vis_thre) for s, m in zip(box_scores, maxvals)])
    by_image: dict[int, list[int]] = defaultdict(list)
    for i, img in enumerate(np.asarray(image_ids).reshape(-1)):
        by_image[int(img)].append(i)
    results = []
    for img, idx in sorted(by_image.items()):
        idx = np.asarray(idx)
        keep = oks_nms(kps3[idx], scores[idx], areas[idx], oks_thre, sigmas) if use_nms else list(range(len(idx)))
        if not keep:
            keep = list(range(len(idx)))
        for j in keep:
            i = int(idx[j])
            results.append({"image_id": img, "category_id": int(category_id),
                            "keypoints": [float(v) for v in kps3[i].reshape(-1)], "score": float(scores[i]),
                            "center": [float(v) for v in np.asarray(centers[i]).reshape(-1)],
                            "scale": [float(v) for v in scales[i]]})
    return results


def write_results_json(results: Sequence[Mapping[str, Any]], path: str) -> None:
    with open(path, "w") as f:
        json.dump(list(results), f)


# ---- COCOeval ---------------------------------------------------------------------------------------------------
def coco_keypoint_eval(gt: Any, results: "Sequence[Mapping[str, Any]] | str", sigmas: Sequence[float],
                       img_ids: Sequence[int] | None = None, verbose: bool = False) -> dict[str, float]:
    """COCOeval keypoints with per-keypoint ``sigmas`` (any K). ``results`` is a list or a results-JSON path."""
    from pycocotools.cocoeval import COCOeval
    coco_gt = load_coco(gt)
    if isinstance(results, str):
        with open(results) as f:
            results = json.load(f)
    results = [dict(r) for r in results]
    sigmas = np.asarray(sigmas, dtype=np.float64)
    k = len(sigmas)
    for ann in coco_gt.dataset.get("annotations", [])[:1]:
        if len(ann["keypoints"]) != 3 * k:
            raise ValueError(f"{k} sigmas but the ground truth has {len(ann['keypoints']) // 3} keypoints")
    for r in results[:1]:
        if len(r["keypoints"]) != 3 * k:
            raise ValueError(f"{k} sigmas but the results have {len(r['keypoints']) // 3} keypoints")
    if not results:
        return {n: 0.0 for n in STAT_NAMES}
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        coco_dt = coco_gt.loadRes(results)
        ev = COCOeval(coco_gt, coco_dt, "keypoints")
        ev.params.useSegm = None
        ev.params.kpt_oks_sigmas = sigmas
        if img_ids is not None:
            ev.params.imgIds = sorted(int(i) for i in img_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    if verbose:
        print(buf.getvalue())
    return {n: float(v) for n, v in zip(STAT_NAMES, ev.stats)}


class PoseEvaluator:
    """Accumulates decoded crops (``add``) and runs rescoring, OKS-NMS and COCOeval (``result``).

    ``add(outputs, batch)`` takes host numpy arrays: ``outputs["keypoints"]`` (B, K, 2) image coordinates and
    ``outputs["maxvals"]`` (B, K) (from ``PoseTask.predict``), and from the batch ``center`` (B, 2), ``scale``
    (B, 2), ``score`` (B,), ``image_id`` (B,) and the optional ``valid`` (B,) padding mask.
    """

    def __init__(self, gt: Any, sigmas: Sequence[float], category_id: int = 1, in_vis_thre: float = 0.2,
                 oks_thre: float = 0.9, use_nms: bool = True, results_path: str | None = None,
                 img_ids: Sequence[int] | None = None, seen_images_only: bool = False):
        self.gt = gt
        self.sigmas = np.asarray(sigmas, dtype=np.float64)
        self.category_id = category_id
        self.in_vis_thre = in_vis_thre
        self.oks_thre = oks_thre
        self.use_nms = use_nms
        self.results_path = results_path
        self.img_ids = img_ids
        self.seen_images_only = seen_images_only
        self._parts: dict[str, list[np.ndarray]] = defaultdict(list)
        self.results: list[dict] = []

    def add(self, outputs: Mapping[str, Any], batch: Mapping[str, Any] | None = None) -> None:
        """One batch of host arrays: ``keypoints``, ``maxvals``, ``center``, ``scale``, ``score``, ``image_id`` (from
        ``outputs``, or ``batch`` when given), rows with ``valid`` False left out."""
        src = {**(batch or {}), **outputs}
        kp = np.asarray(src["keypoints"])
        valid = np.asarray(src["valid"], dtype=bool).reshape(-1) if "valid" in src else np.ones(len(kp), bool)
        self._parts["keypoints"].append(kp[valid])
        self._parts["maxvals"].append(np.asarray(src["maxvals"]).reshape(len(kp), -1)[valid])
        for key in ("center", "scale", "score", "image_id"):
            self._parts[key].append(np.asarray(src[key])[valid])

    def num_instances(self) -> int:
        return int(sum(len(a) for a in self._parts.get("image_id", [])))

    def result(self) -> dict[str, float]:
        if not self.num_instances():
            self.results = []
            return {**{n: 0.0 for n in STAT_NAMES}, "num_instances": 0.0}
        cat = {k: np.concatenate(v, axis=0) for k, v in self._parts.items()}
        self.results = build_results(cat["keypoints"], cat["maxvals"], cat["center"], cat["scale"], cat["score"],
                                     cat["image_id"], self.sigmas, self.category_id, self.in_vis_thre,
                                     self.oks_thre, self.use_nms)
        if self.results_path:
            write_results_json(self.results, self.results_path)
        img_ids = self.img_ids
        if img_ids is None and self.seen_images_only:
            img_ids = np.unique(cat["image_id"]).tolist()
        stats = coco_keypoint_eval(self.gt, self.results, self.sigmas, img_ids=img_ids)
        stats["num_instances"] = float(len(cat["image_id"]))
        return stats
