"""Bottom-up prediction: every person in whole images or video frames, no boxes needed.

Per image (or frame): the reference's test-time resize (short side to the input size, long side rounded up to a
multiple of 64; for video one size, so one compilation), the device side of the task's evaluation (flip test,
optional multi-scale, heatmap NMS, top-k: :mod:`hrnet_jax.tasks.bottomup.inference`, BN folded through
:func:`hrnet_jax.inference.prepare`), the host grouping, back to image pixels. Outputs in ``out_dir``:

* ``keypoints.json`` (images) / ``<video stem>_keypoints.json``: COCO results (``image_id``, ``category_id``,
  ``keypoints`` [x, y, score]·K, ``score``, ``bbox`` = keypoint extent, ``person_id``, ``file_name``);
* ``<image stem>.jpg`` / ``<video stem>_pose.mp4``: the picture with every person's skeleton and its id.

In a video, ids follow people from frame to frame: each person takes the id of the previous frame's person with
the highest OKS to it (greedy, OKS ≥ ``track_oks``), otherwise a new id.

Called by ``python -m hrnet_jax.predict`` for a bottom-up checkpoint (:func:`run_cli`); from Python::

    task, variables = load_bottomup("WORKDIR")
    pred = BottomUpPredictor(task, variables)
    people = pred.predict(image_rgb)        # [{"keypoints": (K, 3), "score", "bbox", "person_id"}, ...]
"""
from __future__ import annotations

import os
import sys
from typing import Any, Sequence

import cv2
import jax
import numpy as np

from hrnet_jax.data.ops import bottomup as B
from hrnet_jax.tasks.bottomup.evaluate import META_KEYS, people_to_results

__all__ = ["load_bottomup", "BottomUpPredictor", "predict_images", "predict_video", "run_cli"]


def load_bottomup(path: str, step: int | None = None, overrides: Sequence[str] = (), spec: Any = None,
                  input_size: int | None = None):
    """``(task, variables)`` of a bottom-up training workdir (or step folder) or a converted ``higher_hrnet_*``
    checkpoint (spec ``coco`` unless given, input size 512 unless given), through
    :func:`hrnet_jax.predict.load_task`; ``overrides`` are ``task.<field>=v`` strings (e.g.
    ``task.test_scales=(0.5, 1.0, 2.0)``)."""
    from hrnet_jax.predict import _converted_model, load_task
    extra = {"spec": spec} if spec is not None else {}
    if input_size:
        extra["input_size"] = int(input_size)

    def from_meta(meta: dict):
        model_cfg, _ = _converted_model(meta, "higher_hrnet_w32")
        return model_cfg, {"name": "bottomup", "spec": "coco", **extra}

    def workdir_task(t: dict) -> dict:
        if t.get("name") != "bottomup":
            raise ValueError(f"{path} was trained for task {t.get('name')!r}, not bottomup")
        return dict(t, synthetic={}, **extra)
    return load_task(path, step, overrides, from_meta=from_meta, workdir_task=workdir_task)


class BottomUpPredictor:
    """All people of RGB images (see the module docstring)."""

    def __init__(self, task, variables, kpt_thre: float = 0.2, track_oks: float = 0.3, person_thre: float = 0.2):
        from hrnet_jax import inference
        self.task, self.spec = task, task.spec
        self.kpt_thre, self.track_oks = float(kpt_thre), float(track_oks)
        self.person_thre = float(person_thre)  # drawing only: the results keep every person (COCO style)
        self.model = task.build_model()
        apply_fn, self._variables = inference.prepare(self.model, jax.device_put(variables))
        self._apply = apply_fn
        self._fns: dict = {}
        self._params = task.grouping_params()
        self._prev: list = []
        self._next_id = 0

    def _fn(self, canvas_hw: tuple):
        if canvas_hw not in self._fns:
            from hrnet_jax import inference
            from hrnet_jax.tasks.bottomup import inference as bu
            task = self.task

            def run(v, *images):
                images = [task.normalize(x) for x in images]
                fn = bu.inference_fn(lambda x: self._apply(v, x, train=False), task.spec.num_keypoints,
                                     task.flip_perm, canvas_hw, task.test_config())
                return fn(*images)
            self._fns[canvas_hw] = inference.jit(run)
        return self._fns[canvas_hw]

    def predict(self, image_rgb: np.ndarray) -> list[dict]:
        """``[{"keypoints": (K, 3) [x, y, score] in image pixels, "score", "bbox"}, ...]`` of one RGB image."""
        task = self.task
        (w_r, h_r), _, _ = B.eval_resize(image_rgb.shape[0], image_rgb.shape[1], task.input_size, 1.0,
                                         min(task.test_scales))
        canvases, center, scale, size, _ = B.eval_canvases(image_rgb, task.input_size, (h_r, w_r),
                                                           task.test_scales)
        det = jax.device_get(self._fn((h_r, w_r))(self._variables, *[c[None] for c in canvases]))
        from hrnet_jax.tasks.bottomup.grouping import group
        people, scores = group({k: np.asarray(v[0]) for k, v in det.items() if k not in META_KEYS}, self._params)
        res = people_to_results(people, scores, 0, center, scale, size, self.spec.category_id)
        return [{"keypoints": np.asarray(r["keypoints"], np.float64).reshape(-1, 3), "score": r["score"],
                 "bbox": r["bbox"]} for r in res]

    def assign_ids(self, people: list[dict], image_hw: Sequence[int], track: bool = False) -> list[dict]:
        """Sets ``person_id``: the index in the image, or (``track``) the id of the best-matching person of the
        previous call (OKS ≥ ``track_oks``, greedy by score)."""
        if not track:
            for i, p in enumerate(people):
                p["person_id"] = i
            return people
        from hrnet_jax.tasks.pose.evaluate import oks_iou
        prev, used = self._prev, set()
        for p in sorted(people, key=lambda q: -q["score"]):
            best, best_oks = None, self.track_oks
            if prev:
                area = max(1.0, p["bbox"][2] * p["bbox"][3])
                oks = oks_iou(p["keypoints"], np.stack([q["keypoints"] for q in prev]), area,
                              np.array([max(1.0, q["bbox"][2] * q["bbox"][3]) for q in prev]),
                              self.spec.sigmas_array(), in_vis_thre=self.kpt_thre)
                for j in np.argsort(-oks):
                    if oks[j] >= best_oks and prev[j]["person_id"] not in used:
                        best = prev[j]["person_id"]
                        break
            if best is None:
                best = self._next_id
                self._next_id += 1
            used.add(best)
            p["person_id"] = best
        self._prev = [p for p in people]
        return people

    def results(self, people: list[dict], image_id: int, file_name: str = "") -> list[dict]:
        out = []
        for p in people:
            r = {"image_id": int(image_id), "category_id": int(self.spec.category_id),
                 "keypoints": [round(float(x), 3) for x in p["keypoints"].reshape(-1)],
                 "score": round(float(p["score"]), 5), "bbox": [round(float(x), 2) for x in p["bbox"]],
                 "person_id": int(p.get("person_id", -1))}
            if file_name:
                r["file_name"] = file_name
            out.append(r)
        return out

    def draw(self, image_bgr: np.ndarray, people: list[dict]) -> np.ndarray:
        """Skeletons (:func:`hrnet_jax.predict.draw_pose`) and each person's id at its top-left keypoint, for the
        people scoring at least ``person_thre``."""
        from hrnet_jax.predict import _color, draw_pose
        people = [p for p in people if p["score"] >= self.person_thre]
        img = draw_pose(image_bgr, people, self.spec.skeleton, self.kpt_thre, draw_boxes=False)
        scale = max(1, int(round(max(img.shape[:2]) / 320)))
        for p in people:
            k = p["keypoints"]
            vis = k[k[:, 2] > self.kpt_thre]
            if not len(vis):
                continue
            x, y = int(vis[:, 0].min()), int(vis[:, 1].min())
            pid = int(p.get("person_id", 0))
            cv2.putText(img, str(pid), (x, max(10, y - 3)), cv2.FONT_HERSHEY_SIMPLEX, 0.4 * scale, _color(pid),
                        max(1, scale), cv2.LINE_AA)
        return img


def predict_images(pred: BottomUpPredictor, paths: Sequence[str], out_dir: str) -> list[dict]:
    """People of every readable image (unreadable ones skipped with their reason and counted)."""
    from hrnet_jax.data.ops.image import ImageReadError, read_image_rgb
    from hrnet_jax.predict import InputError, _image_id
    from hrnet_jax.training.workdir import atomic_write_json
    results, skipped = [], 0
    for i, path in enumerate(paths):
        try:
            rgb = read_image_rgb(path)
        except ImageReadError as e:
            print(f"warning: {path}: {e.reason}; skipped", file=sys.stderr)
            skipped += 1
            continue
        people = pred.assign_ids(pred.predict(rgb), rgb.shape[:2])
        results += pred.results(people, _image_id(path, i), os.path.basename(path))
        stem = os.path.splitext(os.path.basename(path))[0]
        cv2.imwrite(os.path.join(out_dir, f"{stem}.jpg"), pred.draw(np.ascontiguousarray(rgb[:, :, ::-1]), people))
    if skipped == len(paths):
        raise InputError(f"{paths[0] if len(paths) == 1 else f'all {len(paths)} images'}: no readable image")
    atomic_write_json(os.path.join(out_dir, "keypoints.json"), results, indent=None, sort_keys=False)
    return results


def predict_video(pred: BottomUpPredictor, path: str, out_dir: str) -> tuple[str, list[dict]]:
    """Every frame's people, with ids tracked across frames; an annotated ``<stem>_pose.mp4``."""
    from hrnet_jax.predict import annotate_video

    def frame_fn(bgr, frame):
        people = pred.assign_ids(pred.predict(np.ascontiguousarray(bgr[:, :, ::-1])), bgr.shape[:2], track=True)
        return pred.draw(bgr, people), pred.results(people, frame)
    return annotate_video(path, out_dir, frame_fn)


def run_cli(a) -> int:
    """``python -m hrnet_jax.predict`` for a bottom-up checkpoint: ``a`` holds ``checkpoint``, ``step``,
    ``images``, ``video``, ``out``, ``kpt_thre``, ``spec`` and ``input_size`` ("512" or "512x512")."""
    from hrnet_jax.predict import InputError, _expand_images
    size = int(str(a.input_size).lower().split("x")[0]) if getattr(a, "input_size", "") else None
    try:
        task, variables = load_bottomup(a.checkpoint, a.step, spec=a.spec, input_size=size)
        pred = BottomUpPredictor(task, variables, kpt_thre=a.kpt_thre, person_thre=getattr(a, "person_thre", 0.2))
    except (FileNotFoundError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    os.makedirs(a.out, exist_ok=True)
    try:
        if a.images:
            paths = _expand_images(a.images)
            if not paths:
                print(f"error: no images match {a.images!r}", file=sys.stderr)
                return 2
            res = predict_images(pred, paths, a.out)
            print(f"{len(paths)} image(s), {len(res)} person(s): {os.path.join(a.out, 'keypoints.json')}")
        if a.video:
            out_path, res = predict_video(pred, a.video, a.out)
            print(f"video: {out_path} ({len(res)} person-frames)")
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
