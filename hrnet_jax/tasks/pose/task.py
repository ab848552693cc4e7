"""Top-down pose task (HRNetV1 heatmaps) implementing :mod:`hrnet_jax.tasks.base`.

Config: :class:`PoseTaskConfig`. ``PoseTask(config)`` accepts a ``PoseTaskConfig``, a flat dict of its fields, or
a loop config (:class:`hrnet_jax.training.config.Config`) whose ``task`` section holds these fields and whose
``model`` section holds ``name``, ``dtype`` and any other keys as ``models.create`` overrides (``batch_size`` and
``seed`` are taken from the loop config's top level).

Evaluation with flip test — how the loop runs it
-------------------------------------------------

The loop's eval step (``hrnet_jax.training.steps.eval_step``) does, inside one ``jax.jit``::

    preds = task.eval_forward(model.apply, variables, batch)   # if the task has eval_forward
    out = task.predict(preds, batch)                           # device-side decoding

* ``eval_forward(apply_fn, variables, batch)`` runs the model on ``batch["image"]`` and, when ``flip_test`` is
  on, on the horizontally mirrored images too (one forward pass of the 2B concatenation; BN is in inference
  mode so this equals two passes). It returns ``{"heatmaps": (B,h,w,K), "heatmaps_flipped": (B,h,w,K) | absent}``.
* ``predict(preds, batch)`` accepts that dict **or** a bare heatmap array (a loop without ``eval_forward`` gets
  no flip test) and optionally ``preds_flipped=`` explicitly. It flip-backs (mirror + swap pairs), applies the
  official one-pixel shift (``shift_heatmap``), averages, decodes (``decode``: legacy / dark / argmax) and maps
  to image coordinates with the batch's ``center``/``scale``. Outputs: ``keypoints`` (B, K, 2) image pixels,
  ``maxvals`` (B, K).
* ``evaluator()`` (host) takes those outputs plus the batch's ``center``, ``scale``, ``score``, ``image_id`` and
  ``valid``; ``result()`` rescoring + OKS-NMS + COCOeval (with the spec's sigmas) → ``AP, AP50, AP75, APm, APl,
  AR, AR50, AR75, ARm, ARl, num_instances``.

Skipped data: ``data_stats()`` (logged by the loop as ``data/...``) merges the index-time counts of both sources
(``train_skipped_no_keypoints``, ``train_skipped_missing_image``, ...) with the run-time counts of unreadable
images seen in this process (``corrupt_image``, ``missing_image``). Every batch also carries ``num_skipped``
(int32 per example), which stays correct with multi-process grain workers.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from hrnet_jax.data.coco_keypoints import CocoKeypointSource
from hrnet_jax.tasks.pose import pipeline as P
from hrnet_jax.tasks.pose.decode import DECODE_MODES, decode_heatmaps
from hrnet_jax.tasks.pose.evaluate import PoseEvaluator, load_coco
from hrnet_jax.tasks.pose.loss import joints_mse_loss, joints_ohkm_mse_loss
from hrnet_jax.tasks.pose.spec import KeypointSpec, get_spec
from hrnet_jax.tasks.pose.targets import default_sigma


@dataclasses.dataclass
class PoseTaskConfig:
    # ---- data location (relative paths are joined to data_root) ----
    data_root: str = ""
    train_ann: str = "annotations/person_keypoints_train2017.json"
    train_images: str = "train2017"
    val_ann: str = "annotations/person_keypoints_val2017.json"
    val_images: str = "val2017"
    spec: Any = "coco"                          # "coco" | "mpii" | path to a spec JSON | a dict | KeypointSpec
    # If set (a dict of generate_synthetic_pose_dataset kwargs, e.g. {"num_train": 800, "num_val": 100}), the
    # synthetic dataset is generated in data_root when absent, and the paths above are set to its files.
    synthetic: Any = None
    # ---- geometry ----
    input_size: tuple = (256, 192)              # (H, W)
    heatmap_size: tuple = ()                    # (H, W); default input / 4
    sigma: float = 0.0                          # 0 -> 2 for 256x192, 3 for 384x288
    box_padding: float = 1.25
    # ---- augmentation (training) ----
    scale_factor: float = 0.35
    rotation_factor: float = 45.0
    rot_prob: float = 0.6
    flip: bool = True
    prob_half_body: float = 0.3
    num_joints_half_body: int = 8
    use_joint_weights: bool = False
    # ---- loss ----
    loss: str = "mse"                           # "mse" (JointsMSELoss) | "ohkm"
    ohkm_topk: int = 8
    use_target_weight: bool = True
    # ---- evaluation ----
    eval_boxes: str = "gt"                      # "gt" | "det" (explicit: the published numbers use "det")
    det_file: str = ""                          # COCO results JSON of person boxes, for eval_boxes="det"
    det_score_thre: float = 0.0
    flip_test: bool = True
    shift_heatmap: bool = True
    decode: str = "legacy"                      # "legacy" | "dark" | "argmax"
    dark_kernel: int = 11
    in_vis_thre: float = 0.2
    oks_thre: float = 0.9
    use_oks_nms: bool = True
    results_path: str = ""                      # write the COCO results JSON here at every evaluation
    eval_seen_images_only: bool = False         # COCOeval only on images that had a box (partial evals)
    # ---- batching / determinism ----
    batch_size: int = 32                        # global train batch (over processes)
    eval_batch_size: int = 0                    # global; 0 -> batch_size
    seed: int = 0
    num_epochs: int = 0                         # 0 = repeat forever (the loop counts steps)
    # ---- model ----
    model_name: str = "pose_hrnet_w32"
    model_dtype: str = "float32"
    model_overrides: dict = dataclasses.field(default_factory=dict)

    @classmethod
    def from_any(cls, config: Any) -> "PoseTaskConfig":
        if isinstance(config, cls):
            return dataclasses.replace(config)
        fields = {f.name for f in dataclasses.fields(cls)}
        if isinstance(config, Mapping) and "task" in config and isinstance(config["task"], Mapping):
            d = {k: v for k, v in dict(config["task"]).items()}
            for k in ("batch_size", "seed"):
                if k in config:
                    d.setdefault(k, config[k])
            model = dict(config.get("model", {}) or {})
            if model.get("name"):
                d.setdefault("model_name", model.pop("name"))
            else:
                model.pop("name", None)
            if "dtype" in model:
                d.setdefault("model_dtype", model.pop("dtype"))
            d.setdefault("model_overrides", model)
        elif isinstance(config, Mapping):
            d = dict(config)
        else:
            raise TypeError(f"cannot read a PoseTaskConfig from {type(config).__name__}")
        unknown = set(d) - fields
        if unknown:
            import difflib
            hints = {u: difflib.get_close_matches(u, fields, n=2) for u in unknown}
            raise ValueError(f"unknown pose task field(s) {hints}")
        d = {k: (_plain(v) if k in ("synthetic", "model_overrides") else v) for k, v in d.items()}
        return cls(**d)


def _plain(v):
    if isinstance(v, Mapping):
        return {k: _plain(x) for k, x in v.items()}
    return v


class PoseTask:
    name = "pose"

    def __init__(self, config: Any):
        self.cfg = c = PoseTaskConfig.from_any(config)
        self.spec: KeypointSpec = get_spec(c.spec)
        self.input_size = (int(c.input_size[0]), int(c.input_size[1]))
        self.heatmap_size = (tuple(int(v) for v in c.heatmap_size) if c.heatmap_size
                             else (self.input_size[0] // 4, self.input_size[1] // 4))
        self.sigma = float(c.sigma) if c.sigma else default_sigma(self.input_size)
        if c.decode not in DECODE_MODES:
            raise ValueError(f"decode must be one of {DECODE_MODES}, got {c.decode!r}")
        if c.eval_boxes not in ("gt", "det"):
            raise ValueError(f"eval_boxes must be 'gt' or 'det', got {c.eval_boxes!r}")
        if c.loss not in ("mse", "ohkm"):
            raise ValueError(f"loss must be 'mse' or 'ohkm', got {c.loss!r}")
        self.flip_perm = self.spec.flip_permutation()
        self.aug = P.AugmentConfig(scale_factor=c.scale_factor, rotation_factor=c.rotation_factor,
                                   rot_prob=c.rot_prob, flip=c.flip, prob_half_body=c.prob_half_body,
                                   num_joints_half_body=c.num_joints_half_body,
                                   use_joint_weights=c.use_joint_weights)
        self.skip_counter = P.SkipCounter()
        self._paths = self._resolve_paths()
        self._train_source: CocoKeypointSource | None = None
        self._eval_source: CocoKeypointSource | None = None
        self._coco_gt = None

    # ---- paths / sources ---------------------------------------------------------------------------------
    def _resolve_paths(self) -> dict[str, str]:
        c = self.cfg
        if c.synthetic:
            from hrnet_jax.data.synthetic_pose import ensure_synthetic_pose_dataset
            if not c.data_root:
                raise ValueError("synthetic data needs data_root (the folder to generate it in)")
            out = ensure_synthetic_pose_dataset(c.data_root, self.spec, **dict(c.synthetic))
            return dict(train_ann=out["train_ann"], train_images=out["train_images"], val_ann=out["val_ann"],
                        val_images=out["val_images"], det_file=c.det_file and self._join(c.det_file)
                        or out["val_det"])
        return dict(train_ann=self._join(c.train_ann), train_images=self._join(c.train_images),
                    val_ann=self._join(c.val_ann), val_images=self._join(c.val_images),
                    det_file=self._join(c.det_file) if c.det_file else "")

    def _join(self, p: str) -> str:
        return p if (not p or os.path.isabs(p) or not self.cfg.data_root) else os.path.join(self.cfg.data_root, p)

    @property
    def paths(self) -> dict[str, str]:
        return dict(self._paths)

    def train_source(self) -> CocoKeypointSource:
        if self._train_source is None:
            self._train_source = CocoKeypointSource(self._paths["train_ann"], self._paths["train_images"], self.spec,
                                                    self.input_size, boxes="gt", padding=self.cfg.box_padding)
        return self._train_source

    def eval_source(self) -> CocoKeypointSource:
        if self._eval_source is None:
            c = self.cfg
            self._eval_source = CocoKeypointSource(
                self._paths["val_ann"], self._paths["val_images"], self.spec, self.input_size, boxes=c.eval_boxes,
                det_file=self._paths["det_file"] or None, det_score_thre=c.det_score_thre, padding=c.box_padding)
        return self._eval_source

    def data_stats(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for prefix, src in (("train", self._train_source), ("eval", self._eval_source)):
            if src is not None:
                out.update({f"{prefix}_{k}": float(v) for k, v in src.stats.items() if k.startswith("skipped")})
        out.update({k: float(v) for k, v in self.skip_counter.as_dict().items()})
        return out

    # ---- model -------------------------------------------------------------------------------------------
    def build_model(self):
        from hrnet_jax import models
        from hrnet_jax.training.precision import compute_dtype
        overrides = dict(self.cfg.model_overrides)
        dtype = compute_dtype(self.cfg.model_dtype)
        if dtype is not None:
            overrides.setdefault("dtype", dtype)
        return models.create(self.cfg.model_name, num_joints=self.spec.num_keypoints, **overrides)

    # ---- data --------------------------------------------------------------------------------------------
    @staticmethod
    def _local(global_batch: int, process_count: int) -> int:
        if global_batch % process_count:
            raise ValueError(f"batch size {global_batch} is not divisible by {process_count} processes")
        return global_batch // process_count

    def train_dataset(self, process_index: int = 0, process_count: int = 1):
        c = self.cfg
        return P.train_dataset(self.train_source(), self.spec, self.input_size, self.heatmap_size, self.sigma,
                               self.aug, self._local(c.batch_size, process_count), c.seed, process_index,
                               process_count, num_epochs=c.num_epochs or None, counter=self.skip_counter)

    def eval_dataset(self, process_index: int = 0, process_count: int = 1):
        gb = self.cfg.eval_batch_size or self.cfg.batch_size
        return P.eval_dataset(self.eval_source(), self.input_size, self._local(gb, process_count), process_index,
                              process_count, counter=self.skip_counter, global_batch_size=gb)

    # ---- device side -------------------------------------------------------------------------------------
    def loss(self, preds, batch):
        hm = preds["heatmaps"] if isinstance(preds, Mapping) else preds
        w = batch["target_weight"] if self.cfg.use_target_weight else None
        if self.cfg.loss == "ohkm":
            loss = joints_ohkm_mse_loss(hm, batch["target"], w, self.cfg.ohkm_topk)
        else:
            loss = joints_mse_loss(hm, batch["target"], w)
        return loss, {"heatmap_max": jnp.mean(jnp.max(hm.astype(jnp.float32), axis=(1, 2)))}

    def eval_forward(self, apply_fn: Callable, variables, batch) -> dict[str, jax.Array]:
        images = batch["image"]
        if not self.cfg.flip_test:
            return {"heatmaps": apply_fn(variables, images, train=False)}
        b = images.shape[0]
        both = apply_fn(variables, jnp.concatenate([images, images[:, :, ::-1, :]], axis=0), train=False)
        return {"heatmaps": both[:b], "heatmaps_flipped": both[b:]}

    def predict(self, preds, batch, preds_flipped=None) -> dict[str, jax.Array]:
        if isinstance(preds, Mapping):
            hm = preds["heatmaps"]
            preds_flipped = preds.get("heatmaps_flipped", preds_flipped)
        else:
            hm = preds
        out = decode_heatmaps(hm, batch["center"], batch["scale"], mode=self.cfg.decode, hm_flipped=preds_flipped,
                              flip_perm=self.flip_perm, shift_flipped=self.cfg.shift_heatmap,
                              dark_kernel=self.cfg.dark_kernel)
        return {"keypoints": out["keypoints"], "maxvals": out["maxvals"]}

    # ---- host side ---------------------------------------------------------------------------------------
    def coco_gt(self):
        if self._coco_gt is None:
            self._coco_gt = load_coco(self._paths["val_ann"])
        return self._coco_gt

    def evaluator(self) -> PoseEvaluator:
        c = self.cfg
        return PoseEvaluator(self.coco_gt(), self.spec.sigmas, self.spec.category_id, c.in_vis_thre, c.oks_thre,
                             c.use_oks_nms, c.results_path or None, seen_images_only=c.eval_seen_images_only)
