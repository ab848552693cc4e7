"""Prediction with a trained or converted checkpoint: pose (below), segmentation and classification.

The checkpoint's task decides: a segmentation checkpoint (workdir of the segmentation task, or a converted
``seg_hrnet_*``) writes label maps, Cityscapes label-id PNGs and overlays per image
(:mod:`hrnet_jax.tasks.segmentation.predict`; ``--classes`` for a converted one); a classification checkpoint
prints the top-k classes with names (:mod:`hrnet_jax.tasks.classification.predict`, ``--topk``). ``--evaluate
EXPERIMENT`` evaluates any task's checkpoint on the experiment's validation data. The rest of this page is pose.

    python -m hrnet_jax.predict --checkpoint WORKDIR_OR_CKPT --images PATH_OR_GLOB [--video FILE]
                                [--boxes boxes.json] --out DIR
                                [--video-boxes frames.json] [--kpt-thre 0.2]

``--checkpoint`` is one of

* a training workdir (``config.json`` + ``checkpoints/<step>/``): the model, keypoint spec and input size come
  from its config, the weights from its latest checkpoint (or ``--step``);
* one step of it (``WORKDIR/checkpoints/<step>``);
* a converted checkpoint folder (``hrnet_jax.convert.save_variables``: ``variables/`` + ``model.json``); the
  spec is COCO-17 (or ``--spec``) and the input size ``--input-size`` (default 256x192).

Person boxes: ``--boxes`` is a COCO results JSON (``[{"image_id", "bbox": [x, y, w, h], "score"}, ...]``, e.g. a
person detector's output; category 1 only, ``--box-thre`` on the score). An image's id is the integer value of
its file name stem (COCO's ``000000000139.jpg`` -> 139), else its position in the sorted image list. A video's
boxes come from ``--video-boxes`` (same format, ``image_id`` = frame index). An image or frame without boxes is taken as one box covering the whole picture.

Per box, on the device through :mod:`hrnet_jax.inference` (BN folded, the inference compiler options; the same
functions as an exported program, :mod:`hrnet_jax.export`): the affine crop (padding 1.25, aspect fixed to the
input; bilinear in floating point, ``inference.crop_boxes``), the model on the crop and its mirror (flip test with
the spec's flip pairs), flip averaging and decoding (the task's ``forward`` + ``predict``, the same code as
evaluation). Outputs in ``--out``:

* ``keypoints.json``: COCO results (``image_id``, ``category_id``, ``keypoints`` [x, y, score]·K in image
  pixels, ``score`` = box score × mean of the keypoint scores above ``--kpt-thre``, ``bbox``, ``file_name``);
* ``<image stem>.jpg``: the picture with the skeleton drawn (keypoints scoring below ``--kpt-thre`` omitted);
* with ``--video``: ``<video stem>_pose.mp4`` (annotated frames) and ``<video stem>_keypoints.json``.

Evaluation only (no training step, so BN statistics stay as loaded)::

    python -m hrnet_jax.predict --checkpoint CKPT --evaluate pose_w32 --out DIR [--config.task.data_root=...]

runs the experiment's validation set (its boxes, flip test, decoding, OKS-NMS, COCOeval) and writes
``DIR/eval_metrics.json`` (``--config.task.results_path=DIR/results.json`` also keeps the COCO results).

From Python: ``Predictor(checkpoint).predict(image_rgb, boxes=None)`` → a list of per-person dicts.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from typing import Any, Callable, Sequence

import cv2
import jax
import jax.numpy as jnp
import numpy as np

from hrnet_jax import inference
from hrnet_jax.data.ops import affine as T
from hrnet_jax.training.workdir import atomic_write_json

__all__ = ["Predictor", "load_checkpoint", "evaluate", "draw_pose", "read_boxes", "main"]


def _latest_step_dir(ckpt_dir: str, step: int | None = None) -> str:
    steps = sorted(int(d) for d in os.listdir(ckpt_dir) if d.isdigit()
                   and os.path.isdir(os.path.join(ckpt_dir, d, "state")))
    if not steps:
        raise FileNotFoundError(f"no checkpoint in {ckpt_dir}")
    if step is not None and step not in steps:
        raise FileNotFoundError(f"no checkpoint for step {step} in {ckpt_dir} (have {steps})")
    return os.path.join(ckpt_dir, str(step if step is not None else steps[-1]))


def _pose_task(model: dict, task: dict):
    from hrnet_jax.tasks.pose.task import PoseTask
    from hrnet_jax.training.config import Config
    return PoseTask(Config({"model": model, "task": task, "batch_size": 1, "seed": 0}))


def _locate(path: str, step: int | None = None) -> tuple[str | None, str | None]:
    """``(workdir, step_dir)`` of a training workdir or one of its step folders; ``(None, None)`` otherwise."""
    path = os.path.abspath(path)
    if os.path.basename(os.path.normpath(path)) == "state":
        path = os.path.dirname(path)
    if os.path.exists(os.path.join(path, "config.json")):
        return path, _latest_step_dir(os.path.join(path, "checkpoints"), step)
    if os.path.isdir(os.path.join(path, "state")) and os.path.exists(
            os.path.join(os.path.dirname(os.path.dirname(path)), "config.json")):
        return os.path.dirname(os.path.dirname(path)), path
    return None, None


def load_variables_at(path: str, step: int | None = None) -> tuple[dict, dict]:
    """``({params, batch_stats}, info)`` of a workdir / step folder / converted checkpoint; ``info`` holds the
    workdir's ``config`` or the converted checkpoint's ``meta`` (model name and overrides)."""
    from hrnet_jax.training.checkpoint import load_variables
    workdir, step_dir = _locate(path, step)
    if workdir is not None:
        with open(os.path.join(workdir, "config.json")) as f:
            cfg = json.load(f)
        state = load_variables(os.path.join(step_dir, "state"))
        return {"params": state["params"], "batch_stats": state.get("batch_stats", {})}, {"config": cfg}
    if os.path.isdir(os.path.join(path, "variables")):
        from hrnet_jax.convert import load_variables as load_converted
        variables, meta = load_converted(path)
        return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}, {"meta": meta}
    raise FileNotFoundError(f"{path} is neither a training workdir (config.json + checkpoints/), a checkpoint step "
                            f"folder, nor a converted checkpoint (variables/ + model.json)")


def checkpoint_task(path: str) -> str:
    """The task a checkpoint was trained for: ``config.task.name`` of a workdir, or by the converted model's
    head (pose / segmentation / classification / bottomup) or name (detection)."""
    workdir, _ = _locate(path) if not os.path.isdir(os.path.join(path, "variables")) else (None, None)
    if workdir is not None:
        with open(os.path.join(workdir, "config.json")) as f:
            return (json.load(f).get("task") or {}).get("name", "")
    meta_path = os.path.join(path, "model.json")
    if os.path.exists(meta_path):
        from hrnet_jax.models.detection import DETECTOR_NAMES
        from hrnet_jax.models.registry import MODEL_SPECS, resolve_name
        with open(meta_path) as f:
            name = json.load(f).get("model", "pose_hrnet_w32")
        if name in DETECTOR_NAMES:
            return "detection"
        head = MODEL_SPECS[resolve_name(name)]["head"]
        return {"segmentation": "segmentation", "ocr": "segmentation", "classification": "classification",
                "higher": "bottomup"}.get(head, "pose")
    return "pose"


def load_task(path: str, step: int | None = None, overrides: Sequence[str] = (), *,
              from_meta: Callable[[dict], tuple[dict, dict]] | None = None,
              workdir_task: Callable[[dict], dict] | None = None):
    """``(task, variables)`` of any task's checkpoint: a training workdir (its ``config.json`` gives the model and
    task groups; ``workdir_task`` may adjust the task group) or a converted checkpoint (``from_meta(meta)`` →
    ``(model group, task group)``). ``overrides`` are ``task.<field>=value`` / ``model.<field>=value`` strings;
    variables are laid out like the built model (scanned or not)."""
    from hrnet_jax.tasks import task_class
    from hrnet_jax.training.config import Config
    variables, info = load_variables_at(path, step)
    if "config" in info:
        cfg = info["config"]
        model_cfg, task_cfg = cfg["model"], dict(cfg["task"])
        if workdir_task is not None:
            task_cfg = workdir_task(task_cfg)
    else:
        if from_meta is None:
            raise ValueError(f"{path} is a converted checkpoint; this task has no converted-checkpoint loader")
        model_cfg, task_cfg = from_meta(dict(info["meta"]))
    conf = Config({"model": model_cfg, "task": task_cfg, "batch_size": 1, "seed": 0}).override(list(overrides))
    task = task_class(conf["task"]["name"])(conf)
    return task, _layout(task, variables)


def _converted_model(meta: dict, default: str) -> tuple[dict, dict]:
    """The ``model`` group of a converted checkpoint's meta, and its ``num_outputs`` override (or None)."""
    overrides = dict(meta.get("overrides") or {})
    num = overrides.pop("num_outputs", None)
    return {"name": meta.get("model", default), "dtype": "float32", **overrides}, num


def load_segmentation(path: str, step: int | None = None, classes: Any = None, overrides: Sequence[str] = ()):
    """``(SegmentationTask, variables)`` of a segmentation workdir or converted ``seg_hrnet_*`` checkpoint (class
    spec: the workdir's, else ``classes`` or Cityscapes); ``overrides`` are ``task.<field>=value`` strings
    (e.g. ``task.eval_mode=multiscale``)."""
    def workdir_task(t):
        return dict(t, synthetic={}, **({"classes": classes} if classes is not None else {}))

    def from_meta(meta):
        return _converted_model(meta, "seg_hrnet_w48")[0], {"name": "segmentation",
                                                             "classes": classes or "cityscapes"}
    return load_task(path, step, overrides, from_meta=from_meta, workdir_task=workdir_task)


def load_classification(path: str, step: int | None = None, overrides: Sequence[str] = ()):
    """``(ClassificationTask, variables)`` of a classification workdir or a converted ``hrnet_w*`` checkpoint
    (ImageNet-1k classes)."""
    def from_meta(meta):
        model_cfg, num = _converted_model(meta, "hrnet_w32")
        return model_cfg, {"name": "classification", "num_classes": int(num or 1000)}
    return load_task(path, step, overrides, from_meta=from_meta)


def load_checkpoint(path: str, step: int | None = None, input_size: Sequence[int] | None = None,
                    spec: Any = None):
    """``(task, variables)`` of a pose checkpoint: a training workdir, one of its step folders, or a converted
    checkpoint folder.

    ``task`` is a :class:`~hrnet_jax.tasks.pose.task.PoseTask` with no data attached (it supplies the model,
    spec, input size, flip test and decoding); the architecture comes from the workdir's ``config.json``.
    """
    variables, info = load_variables_at(path, step)
    if "config" in info:
        cfg = info["config"]
        if (cfg.get("task") or {}).get("name") != "pose":
            raise ValueError(f"{path} was trained for task {(cfg.get('task') or {}).get('name')!r}, not pose")
        from hrnet_jax.tasks.pose.task import resolve_spec
        t = dict(cfg["task"])
        spec_value = spec if spec is not None else resolve_spec(t.get("spec", "coco"), t.get("data_root", ""))
        t.update(synthetic={}, data_root="", det_file="", spec=spec_value)   # as training resolved it
        if input_size:
            t["input_size"] = tuple(int(v) for v in input_size)
        return _pose_task(cfg["model"], t), variables
    meta = info["meta"]
    overrides = dict(meta.get("overrides") or {})
    num = overrides.pop("num_outputs", None)
    model = {"name": meta.get("model", "pose_hrnet_w32"), "dtype": "float32", **overrides}
    task = _pose_task(model, {"spec": spec if spec is not None else "coco",
                              "input_size": tuple(int(v) for v in (input_size or (256, 192)))})
    if num is not None and num != task.spec.num_keypoints:
        raise ValueError(f"the checkpoint has {num} outputs but the spec {task.spec.name!r} has "
                         f"{task.spec.num_keypoints} keypoints: pass --spec")
    return task, variables


class InputError(ValueError):
    """A bad input file: the message names the file and the problem."""


def read_boxes(path: str, category_id: int = 1, score_thre: float = 0.0) -> dict[int, list[tuple]]:
    """COCO results JSON → ``{image_id: [(x, y, w, h, score), ...]}``; entries without a finite positive box are
    skipped with a warning; a file that is not such a list is an :class:`InputError`."""
    from hrnet_jax.data.sources.coco_keypoints import valid_box
    try:
        with open(path) as f:
            dets = json.load(f)
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror or e})") from None
    except ValueError as e:
        raise InputError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(dets, list):
        raise InputError(f"{path}: expected a JSON list of COCO results [{{image_id, bbox, score}}, ...], "
                         f"got {type(dets).__name__}")
    out: dict[int, list[tuple]] = {}
    bad = 0
    for d in dets:
        if not (isinstance(d, dict) and "image_id" in d and "bbox" in d and valid_box(d["bbox"])):
            bad += 1
            continue
        if int(d.get("category_id", category_id)) != category_id or float(d.get("score", 1.0)) < score_thre:
            continue
        x, y, w, h = (float(v) for v in d["bbox"][:4])
        out.setdefault(int(d["image_id"]), []).append((x, y, w, h, float(d.get("score", 1.0))))
    if bad:
        print(f"warning: {path}: {bad} entr{'y' if bad == 1 else 'ies'} without image_id or a finite box of "
              f"positive size skipped", file=sys.stderr)
    return out


class Predictor:
    """Top-down keypoints for person boxes in RGB images (see the module docstring)."""

    def __init__(self, checkpoint: str | None = None, *, task=None, variables=None, batch_size: int = 16,
                 kpt_thre: float = 0.2, step: int | None = None, input_size=None, spec=None):
        if task is None:
            task, variables = load_checkpoint(checkpoint, step=step, input_size=input_size, spec=spec)
        self.task, self.spec = task, task.spec
        self.input_size = task.input_size  # (H, W)
        self.model = task.build_model()
        self.variables = jax.device_put(_layout_like_model(self.model, variables, self.input_size))
        self.batch_size = int(batch_size)
        self.kpt_thre = float(kpt_thre)
        self.padding = float(task.t.box_padding)
        # hrnet_jax.inference: BN folded, XLA convs, inference compiler options; the same two functions as an
        # exported pose program (hrnet_jax.export), split so that a new image size recompiles only the crop
        apply_fn, self._infer_variables = inference.prepare(self.model, self.variables)
        self._crops = inference.jit(lambda image, boxes: inference.pose_crops(task, image, boxes))
        self._run = inference.jit(lambda v, batch: inference.pose_from_crops(task, apply_fn, v, batch))

    def crops(self, image_rgb: np.ndarray, boxes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The host (``cv2.warpAffine``) crops of the evaluation pipeline: uint8 images, centers, scales.
        :meth:`predict` crops on the device instead (``hrnet_jax.inference.pose_crops``)."""
        h_in, w_in = self.input_size
        imgs, centers, scales = [], [], []
        for b in boxes:
            c, s = T.box_to_center_scale(b[:4], w_in / h_in, self.padding)
            trans = T.get_affine_transform(c, s, 0, (w_in, h_in))
            imgs.append(T.warp_image(image_rgb, trans, (w_in, h_in)))   # uint8: normalised on the device
            centers.append(c)
            scales.append(s)
        return np.stack(imgs), np.stack(centers).astype(np.float32), np.stack(scales).astype(np.float32)

    def predict(self, image_rgb: np.ndarray, boxes: Sequence[Sequence[float]] | None = None) -> list[dict]:
        """Per box ``(x, y, w, h[, score])`` (default: the whole image): ``{"keypoints": (K, 3) [x, y, score],
        "score", "bbox"}`` in image pixels."""
        ih, iw = image_rgb.shape[:2]
        boxes = [tuple(b) for b in (boxes if boxes else [(0.0, 0.0, float(iw), float(ih), 1.0)])]
        box_arr = np.asarray([b[:4] for b in boxes], np.float32)
        n, bs = len(boxes), self.batch_size
        out = []
        for i in range(0, n, bs):   # fixed batch shape: one compilation of the network
            chunk = box_arr[i:i + bs]
            pad = bs - len(chunk)
            if pad:
                chunk = np.concatenate([chunk, np.repeat(chunk[:1], pad, 0)], 0)
            batch = self._crops(image_rgb, chunk)   # affine crops on the device (hrnet_jax.inference.crop_boxes)
            out.append(np.asarray(self._run(self._infer_variables, batch))[:bs - pad])
        kpv = np.concatenate(out)
        kps, vals = kpv[..., :2], kpv[..., 2]
        people = []
        for b, k, v in zip(boxes, kps, vals):
            box_score = float(b[4]) if len(b) > 4 else 1.0
            sel = v[v > self.kpt_thre]
            people.append({"keypoints": np.concatenate([k, v[:, None]], 1).astype(np.float64),
                           "score": box_score * (float(sel.mean()) if sel.size else 0.0),
                           "bbox": [float(x) for x in b[:4]]})
        return people

    def results(self, people: list[dict], image_id: int, file_name: str = "") -> list[dict]:
        """COCO results entries for one image."""
        out = []
        for p in people:
            r = {"image_id": int(image_id), "category_id": int(self.spec.category_id),
                 "keypoints": [round(float(x), 3) for x in p["keypoints"].reshape(-1)],
                 "score": round(float(p["score"]), 5), "bbox": [round(x, 2) for x in p["bbox"]]}
            if file_name:
                r["file_name"] = file_name
            out.append(r)
        return out

    def draw(self, image_bgr: np.ndarray, people: list[dict]) -> np.ndarray:
        return draw_pose(image_bgr, people, self.spec.skeleton, self.kpt_thre)


def _layout(task, variables: dict, sample=(64, 64)) -> dict:
    """``variables`` laid out like ``task``'s model (scanned <-> unrolled runs)."""
    if task.name == "detection":  # the detector takes image_hw besides the images: init through its example batch
        from hrnet_jax.tasks.detection.predict import layout_like_task
        return layout_like_task(task, variables)
    return _layout_like_model(task.build_model(), variables, sample)


def _layout_like_model(model, variables: dict, input_size) -> dict:
    """``variables`` restacked to the model's layout (scanned <-> unrolled runs), when they differ only so."""
    from hrnet_jax.models.params import restack
    abstract = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, *input_size, 3)),
                                                 train=False))
    out = dict(variables)
    for k in ("params", "batch_stats"):
        if k in abstract:
            try:
                out[k] = restack(variables.get(k, {}), abstract[k])
            except (KeyError, ValueError):
                pass   # a different structure: apply() reports it
    return out


def evaluate(checkpoint: str, experiment: str, overrides: Sequence[str] = (), step: int | None = None) -> dict:
    """Evaluation of ``checkpoint`` with ``experiment``'s task and evals (its data, inference mode and metrics:
    COCOeval for pose, the confusion matrix for segmentation, top-k for classification):
    :func:`hrnet_jax.training.evaluate.evaluate`, the loop's own evaluation, without training.
    Returns ``{"<eval>/<metric>": value}`` (e.g. ``val/AP``, ``val/mIoU``)."""
    from experiments import build_task, get_experiment   # the CLI's experiment registry
    from hrnet_jax.training.evaluate import evaluate as evaluate_task

    cfg = get_experiment(experiment, list(overrides))
    task = build_task(cfg)
    if task.name == "pose":
        _, variables = load_checkpoint(checkpoint, step=step, input_size=task.input_size, spec=task.spec)
        sample = task.input_size
    else:
        variables, _ = load_variables_at(checkpoint, step)
        sample = (64, 64)
    variables = _layout(task, variables, sample)
    return evaluate_task(task, {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})})


def _color(i: int) -> tuple[int, int, int]:
    hsv = np.uint8([[[(i * 37) % 180, 220, 255]]])
    return tuple(int(c) for c in cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0])


def draw_pose(image_bgr: np.ndarray, people: list[dict], skeleton: Sequence[Sequence[int]],
              kpt_thre: float = 0.2, draw_boxes: bool = True) -> np.ndarray:
    """A copy of ``image_bgr`` with each person's skeleton (limbs coloured per edge) and keypoints drawn."""
    img = np.ascontiguousarray(image_bgr.copy())
    scale = max(1, int(round(max(img.shape[:2]) / 320)))
    for p in people:
        k = np.asarray(p["keypoints"], np.float64)
        if draw_boxes and p.get("bbox") is not None:
            x, y, w, h = p["bbox"]
            cv2.rectangle(img, (int(x), int(y)), (int(x + w), int(y + h)), (200, 200, 200), 1)
        for e, (a, b) in enumerate(skeleton):
            if k[a, 2] > kpt_thre and k[b, 2] > kpt_thre:
                cv2.line(img, (int(round(k[a, 0])), int(round(k[a, 1]))), (int(round(k[b, 0])), int(round(k[b, 1]))),
                         _color(e), 2 * scale, cv2.LINE_AA)
        for j in range(len(k)):
            if k[j, 2] > kpt_thre:
                cv2.circle(img, (int(round(k[j, 0])), int(round(k[j, 1]))), 2 * scale, (255, 255, 255), -1,
                           cv2.LINE_AA)
    return img


def _image_id(path: str, index: int) -> int:
    stem = os.path.splitext(os.path.basename(path))[0]
    return int(stem) if stem.isdigit() else index


def _expand_images(spec: str) -> list[str]:
    exts = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
    if os.path.isdir(spec):
        return sorted(os.path.join(spec, f) for f in os.listdir(spec) if f.lower().endswith(exts))
    return sorted(glob.glob(spec)) if any(c in spec for c in "*?[") else [spec]


def predict_images(pred: Predictor, paths: Sequence[str], out_dir: str, boxes: dict | None = None) -> list[dict]:
    """Keypoints for every readable image; an unreadable one (missing, corrupt, truncated) is skipped with its
    reason and counted; none readable is an :class:`InputError`."""
    from hrnet_jax.data.ops.image import ImageReadError, read_image_rgb
    results, skipped = [], []
    for i, path in enumerate(paths):
        try:
            rgb = read_image_rgb(path)
        except ImageReadError as e:
            print(f"warning: {path}: {e.reason}; skipped", file=sys.stderr)
            skipped.append(path)
            continue
        image_id = _image_id(path, i)
        people = pred.predict(rgb, (boxes or {}).get(image_id))
        results += pred.results(people, image_id, os.path.basename(path))
        stem = os.path.splitext(os.path.basename(path))[0]
        cv2.imwrite(os.path.join(out_dir, f"{stem}.jpg"), pred.draw(np.ascontiguousarray(rgb[:, :, ::-1]), people))
    if len(skipped) == len(paths):
        raise InputError(f"{paths[0] if len(paths) == 1 else f'all {len(paths)} images'}: no readable image")
    atomic_write_json(os.path.join(out_dir, "keypoints.json"), results, indent=None, sort_keys=False)
    return results


def annotate_video(path: str, out_dir: str, frame_fn: Callable[[np.ndarray, int], tuple[np.ndarray, list[dict]]]
                   ) -> tuple[str, list[dict]]:
    """Every frame of the video ``path`` through ``frame_fn(bgr, frame_index) -> (annotated bgr, result records)``;
    writes ``<stem>_pose.mp4`` and ``<stem>_keypoints.json`` (the records) into ``out_dir``."""
    if not os.path.isfile(path):
        raise InputError(f"{path}: no such file")
    cap = cv2.VideoCapture(path)
    if not cap.isOpened():
        raise InputError(f"{path}: not a video OpenCV can open")
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    stem = os.path.splitext(os.path.basename(path))[0]
    out_path = os.path.join(out_dir, f"{stem}_pose.mp4")
    writer, results, frame = None, [], 0
    try:
        while True:
            ok, bgr = cap.read()
            if not ok:
                break
            if writer is None:
                h, w = bgr.shape[:2]
                writer = cv2.VideoWriter(out_path, cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
            drawn, records = frame_fn(bgr, frame)
            results += records
            writer.write(drawn)
            frame += 1
    finally:
        cap.release()
        if writer is not None:
            writer.release()
    if frame == 0:
        raise InputError(f"{path}: no frame could be decoded (not a video?)")
    atomic_write_json(os.path.join(out_dir, f"{stem}_keypoints.json"), results, indent=None, sort_keys=False)
    return out_path, results


def predict_video(pred: Predictor, path: str, out_dir: str, boxes: dict | None = None) -> tuple[str, list[dict]]:
    """Top-down pose on every frame (``boxes``: per-frame person boxes, else the whole frame)."""
    def frame_fn(bgr, frame):
        people = pred.predict(bgr[:, :, ::-1], (boxes or {}).get(frame))
        return pred.draw(bgr, people), pred.results(people, frame)
    return annotate_video(path, out_dir, frame_fn)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hrnet_jax.predict", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="training workdir, its checkpoints/<step>, or a converted "
                                                       "checkpoint folder")
    p.add_argument("--images", default="", help="an image, a folder or a glob")
    p.add_argument("--video", default="", help="a video file (annotated copy written to --out)")
    p.add_argument("--boxes", default="", help="person boxes, COCO results JSON (default: whole image)")
    p.add_argument("--video-boxes", default="", help="person boxes for the video, COCO results JSON with "
                                                     "image_id = frame index (default: whole frame)")
    p.add_argument("--box-thre", type=float, default=0.0, help="minimum box score")
    p.add_argument("--kpt-thre", type=float, default=0.2, help="keypoints below this score are not drawn")
    p.add_argument("--person-thre", type=float, default=0.2,
                   help="bottom-up: people scoring below this are not drawn (the JSON keeps every person)")
    p.add_argument("--out", required=True)
    p.add_argument("--step", type=int, default=None, help="checkpoint step of a workdir (default: latest)")
    p.add_argument("--input-size", default="", help="HxW for a converted checkpoint (default 256x192)")
    p.add_argument("--spec", default=None, help="keypoint spec: coco, mpii or a spec JSON (converted checkpoints)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--classes", default=None, help="segmentation: class spec (cityscapes or a JSON) for a converted "
                                                   "checkpoint (default cityscapes)")
    p.add_argument("--topk", type=int, default=5, help="classification: classes printed per image")
    p.add_argument("--evaluate", default="", metavar="EXPERIMENT",
                   help="evaluate the checkpoint on EXPERIMENT's validation set (COCOeval) instead of predicting; "
                        "--config.<key>=<value> overrides its config (e.g. --config.task.data_root=data/coco)")
    a, rest = p.parse_known_args(argv)
    bad = [r for r in rest if not r.startswith("--config.")]
    if bad:
        p.error(f"unrecognized arguments: {' '.join(bad)}")
    if a.evaluate:
        overrides = [r[len("--config."):] for r in rest]
        from hrnet_jax.training.config import ConfigError
        try:
            metrics = evaluate(a.checkpoint, a.evaluate, overrides, step=a.step)
        except (ConfigError, FileNotFoundError, KeyError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        os.makedirs(a.out, exist_ok=True)
        with open(os.path.join(a.out, "eval_metrics.json"), "w") as f:
            json.dump({k: float(v) for k, v in metrics.items()}, f, indent=1)
        print(", ".join(f"{k}={float(v):.4f}" for k, v in metrics.items()))
        return 0
    if rest:
        p.error("--config.* overrides need --evaluate")
    if not a.images and not a.video:
        p.error("give --images and/or --video (or --evaluate EXPERIMENT)")
    kind = checkpoint_task(a.checkpoint) if os.path.exists(a.checkpoint) else "pose"
    if kind == "bottomup":  # whole images / video, no boxes: every person with an id
        from hrnet_jax.tasks.bottomup.predict import run_cli
        return run_cli(a)
    if kind in ("segmentation", "classification", "detection"):
        return _predict_other(kind, a)
    input_size = tuple(int(v) for v in a.input_size.lower().split("x")) if a.input_size else None
    try:
        pred = Predictor(a.checkpoint, step=a.step, input_size=input_size, spec=a.spec, batch_size=a.batch_size,
                         kpt_thre=a.kpt_thre)
    except (FileNotFoundError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    os.makedirs(a.out, exist_ok=True)
    try:
        boxes = read_boxes(a.boxes, pred.spec.category_id, a.box_thre) if a.boxes else None
        if a.images:
            paths = _expand_images(a.images)
            if not paths:
                print(f"error: no images match {a.images!r}", file=sys.stderr)
                return 2
            res = predict_images(pred, paths, a.out, boxes)
            print(f"{len(paths)} image(s), {len(res)} person(s): {os.path.join(a.out, 'keypoints.json')}")
        if a.video:
            vboxes = read_boxes(a.video_boxes, pred.spec.category_id, a.box_thre) if a.video_boxes else None
            out_path, res = predict_video(pred, a.video, a.out, vboxes)
            print(f"video: {out_path} ({len(res)} person-frames)")
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def _predict_other(kind: str, a) -> int:
    """``--images`` for a segmentation, classification or detection checkpoint (the task folder's
    ``predict_images``)."""
    if a.video:
        print(f"error: --video is for pose checkpoints; this is a {kind} checkpoint", file=sys.stderr)
        return 2
    paths = _expand_images(a.images)
    if not paths:
        print(f"error: no images match {a.images!r}", file=sys.stderr)
        return 2
    try:
        if kind == "segmentation":
            from hrnet_jax.tasks.segmentation.predict import predict_images as seg_predict
            task, variables = load_segmentation(a.checkpoint, a.step, a.classes)
            os.makedirs(a.out, exist_ok=True)
            recs = seg_predict(task, variables, paths, a.out)
            print(f"{len(recs)} image(s) segmented: {os.path.join(a.out, 'predictions.json')}")
        elif kind == "detection":
            from hrnet_jax.tasks.detection.predict import load_detection, predict_images as det_predict
            task, variables = load_detection(a.checkpoint, a.step, a.classes)
            res = det_predict(task, variables, paths, a.out, score_thr=a.box_thre or 0.3)
            print(f"{len(paths)} image(s), {len(res)} detection(s): {os.path.join(a.out, 'detections.json')}")
        else:
            from hrnet_jax.tasks.classification.predict import predict_images as cls_predict
            task, variables = load_classification(a.checkpoint, a.step)
            os.makedirs(a.out, exist_ok=True)
            cls_predict(task, variables, paths, a.out, topk=a.topk)
    except (FileNotFoundError, ValueError, OSError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
