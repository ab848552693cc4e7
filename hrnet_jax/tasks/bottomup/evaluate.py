"""Host-side bottom-up evaluation: grouping, back to image pixels, COCO results, COCOeval with the spec's sigmas.

Protocol (HigherHRNet ``tools/valid.py`` and ``COCODataset.evaluate``):

* per image, the grouping (:func:`hrnet_jax.tasks.bottomup.grouping.group`) of the device-side candidates gives
  people ``(N, K, 3 + T)`` = [x, y, score, tags] in the aggregated-map frame (the input canvas at scale 1) and
  their scores;
* ``get_final_preds``: x, y mapped back with the inverse affine of the test-time resize (center, scale, output
  size = the resized size; :func:`hrnet_jax.data.ops.bottomup.to_image_coords`);
* results: ``keypoints`` [x, y, score]·K, ``score`` the grouping's person score, ``bbox`` the keypoint extent;
  no OKS-NMS (the reference's list of kept people is empty, so every person is written);
* ``pycocotools`` COCOeval (``iouType="keypoints"``) with the spec's sigmas (any K) through
  :func:`hrnet_jax.tasks.pose.evaluate.coco_keypoint_eval`, on every image of the evaluation source.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from hrnet_jax.data.ops.bottomup import to_image_coords
from hrnet_jax.tasks.pose.evaluate import STAT_NAMES, coco_keypoint_eval, write_results_json

#: the per-image fields of the task's ``predict`` that are not the grouping's (everything else goes to it)
META_KEYS = ("center", "scale", "size", "image_id", "shrunk", "valid")


def people_to_results(people: np.ndarray, scores: np.ndarray, image_id: int, center, scale, size,
                      category_id: int = 1) -> list[dict]:
    """Grouped people ``(N, K, ≥3)`` in the map frame → COCO results in image pixels."""
    out = []
    people = np.asarray(people, np.float64)
    for n in range(len(people)):
        kp = people[n, :, :3].copy()
        kp[:, :2] = to_image_coords(kp[:, :2], center, scale, size)
        lo, hi = kp[:, :2].min(0), kp[:, :2].max(0)
        out.append({"image_id": int(image_id), "category_id": int(category_id),
                    "keypoints": [float(v) for v in kp.reshape(-1)], "score": float(scores[n]),
                    "bbox": [float(lo[0]), float(lo[1]), float(hi[0] - lo[0]), float(hi[1] - lo[1])]})
    return out


class BottomUpEvaluator:
    """Groups each image's candidates as they come (``add``), then runs COCOeval (``result``).

    ``add(outputs)`` takes host numpy arrays with a leading batch dim (padding rows already dropped): the
    output of :func:`hrnet_jax.tasks.bottomup.inference.detect` (passed to the grouping as it is), and the
    :data:`META_KEYS` ``center``, ``scale``, ``size``, ``image_id`` (and optionally ``shrunk``, ``valid``).
    """

    def __init__(self, gt: Any, sigmas: Sequence[float], grouping_params, category_id: int = 1,
                 results_path: str | None = None, img_ids: Sequence[int] | None = None):
        self.gt, self.sigmas = gt, np.asarray(sigmas, np.float64)
        self.params, self.category_id = grouping_params, category_id
        self.results_path, self.img_ids = results_path, img_ids
        self.results: list[dict] = []
        self.seen: list[int] = []
        self.shrunk = 0

    def add(self, outputs: Mapping[str, Any], batch: Mapping[str, Any] | None = None) -> None:
        from hrnet_jax.tasks.bottomup.grouping import group
        src = {**(batch or {}), **outputs}
        ids = np.asarray(src["image_id"]).reshape(-1)
        valid = np.asarray(src["valid"], bool).reshape(-1) if "valid" in src else np.ones(len(ids), bool)
        for b in np.nonzero(valid)[0]:
            det = {k: np.asarray(v[b]) for k, v in src.items() if k not in META_KEYS}
            people, scores = group(det, self.params)
            self.results += people_to_results(people, scores, int(ids[b]), src["center"][b], src["scale"][b],
                                              src["size"][b], self.category_id)
            self.seen.append(int(ids[b]))
            if "shrunk" in src:
                self.shrunk += int(np.asarray(src["shrunk"]).reshape(-1)[b])

    def result(self) -> dict[str, float]:
        if self.results_path:
            write_results_json(self.results, self.results_path)
        img_ids = self.img_ids if self.img_ids is not None else sorted(set(self.seen))
        if not self.seen:
            stats = {n: 0.0 for n in STAT_NAMES}
        else:
            stats = coco_keypoint_eval(self.gt, self.results, self.sigmas, img_ids=img_ids)
        stats["num_people"] = float(len(self.results))
        stats["num_images"] = float(len(self.seen))
        stats["eval_shrunk"] = float(self.shrunk)
        return stats
