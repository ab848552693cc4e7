"""Top-down pose task (HRNetV1 heatmaps) on the contract of :mod:`hrnet_jax.tasks.base`.

Its settings are the experiment config's ``task`` group; :data:`DEFAULTS` lists every field with its default
(the one place they are written: experiments start from :func:`task_defaults`). The model comes from the
``model`` group (:mod:`hrnet_jax.tasks.model_config`), with ``num_joints`` from the keypoint spec.

Per batch on the device (inside the loop's jitted steps):

* ``preprocess``: uint8 crops → float, ImageNet normalisation.
* ``forward(train=False)``: with ``flip_test`` the model runs once on the 2B concatenation of the crops and
  their mirrors (BN in inference mode, so this equals two passes) → ``{"heatmaps", "heatmaps_flipped"}``.
* ``loss``: JointsMSE (or OHKM) against the Gaussian targets, weighted by ``target_weight``.
* ``predict``: flip-back (mirror + swap pairs), the official one-pixel shift (``shift_heatmap``), averaging,
  decoding (``decode``: legacy / dark / argmax), back to image pixels with the crop's ``center``/``scale``;
  the box fields ride along for the host evaluator.
* ``evaluator`` (host): rescoring, OKS-NMS and COCOeval with the spec's sigmas → ``AP, AP50, ..., ARl``.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from hrnet_jax.data import pipeline as dp
from hrnet_jax.data.keypoints import KeypointSpec, get_spec
from hrnet_jax.data.sources.coco_keypoints import CocoKeypointSource
from hrnet_jax.tasks.base import Task, local_batch, with_defaults
from hrnet_jax.tasks.model_config import build_hrnet
from hrnet_jax.tasks.pose import pipeline as P
from hrnet_jax.tasks.pose.decode import DECODE_MODES, decode_heatmaps
from hrnet_jax.tasks.pose.evaluate import PoseEvaluator, load_coco
from hrnet_jax.tasks.pose.loss import joints_mse_loss, joints_ohkm_mse_loss
from hrnet_jax.tasks.pose.targets import default_sigma
from hrnet_jax.training.config import Config, ConfigError

DEFAULTS = dict(
    name="pose",
    # ---- data location (relative paths are joined to data_root) ----
    data_root="",
    train_ann="annotations/person_keypoints_train2017.json",
    train_images="train2017",
    val_ann="annotations/person_keypoints_val2017.json",
    val_images="val2017",
    spec="coco",                     # "coco" | "mpii" | a spec JSON (relative: as given if it exists, else in data_root)
    # generate the synthetic COCO-format dataset into data_root (hrnet_jax.data.synthetic.pose; only into an
    # absent/empty folder or one it generated itself): {} = off, else generator kwargs {"num_train": 800, ...}
    synthetic={},
    # ---- geometry ----
    input_size=(256, 192),           # (H, W)
    heatmap_size=(),                 # (H, W); () -> input / 4
    sigma=0.0,                       # 0 -> 2 for 256x192, 3 for 384x288
    box_padding=1.25,
    # ---- augmentation (training) ----
    scale_factor=0.35,
    rotation_factor=45.0,
    rot_prob=0.6,
    flip=True,
    prob_half_body=0.3,
    num_joints_half_body=8,
    use_joint_weights=False,
    # ---- loss ----
    loss="mse",                      # "mse" (JointsMSELoss) | "ohkm"
    ohkm_topk=8,
    use_target_weight=True,
    # ---- evaluation ----
    eval_boxes="gt",                 # "gt" | "det" (the published numbers use "det")
    det_file="",                     # COCO results JSON of person boxes, for eval_boxes="det"
    det_score_thre=0.0,
    flip_test=True,
    shift_heatmap=True,
    decode="legacy",                 # "legacy" | "dark" | "argmax"
    dark_kernel=11,
    in_vis_thre=0.2,
    oks_thre=0.9,
    use_oks_nms=True,
    results_path="",                 # write the COCO results JSON here at every evaluation
    eval_seen_images_only=False,     # COCOeval only on images that had a box (partial evals)
    eval_batch_size=0,               # global; 0 -> batch_size
    num_epochs=0,                    # 0 = repeat forever (the loop counts steps)
    # ---- input pipeline (hrnet_jax.data.pipeline.ReadConfig) ----
    read_threads=2,
    read_prefetch_batches=4,
    read_workers=0,                  # > 0: grain worker processes (mp_prefetch)
)


def resolve_spec(spec: Any, data_root: str = "") -> Any:
    """A spec name or object unchanged; a relative spec path as given when it exists (relative to the working
    directory), else under ``data_root``."""
    if not isinstance(spec, str) or spec in ("coco", "mpii") or os.path.isabs(spec) or os.path.exists(spec):
        return spec
    return os.path.join(data_root, spec) if data_root else spec


def task_defaults(**changes) -> dict:
    """:data:`DEFAULTS` with ``changes`` (unknown names are an error naming the valid ones)."""
    return with_defaults(DEFAULTS, changes, "pose")


class PoseTask(Task):
    name = "pose"

    def __init__(self, config: Any):
        super().__init__(config)
        self.t = t = Config(with_defaults(DEFAULTS, config.get("task") or {}, "pose"))
        self.spec: KeypointSpec = get_spec(resolve_spec(t.spec, t.data_root))
        self.input_size = (int(t.input_size[0]), int(t.input_size[1]))
        if min(self.input_size) <= 0 or self.input_size[0] % 4 or self.input_size[1] % 4:
            raise ConfigError(f"task.input_size must be positive multiples of 4 (H, W), got {tuple(t.input_size)}")
        self.heatmap_size = (tuple(int(v) for v in t.heatmap_size) if t.heatmap_size
                             else (self.input_size[0] // 4, self.input_size[1] // 4))
        self.sigma = float(t.sigma) if t.sigma else default_sigma(self.input_size)
        for key, valid in (("decode", DECODE_MODES), ("eval_boxes", ("gt", "det")), ("loss", ("mse", "ohkm"))):
            if t[key] not in valid:
                raise ConfigError(f"task.{key} must be one of {tuple(valid)}, got {t[key]!r}")
        self.flip_perm = self.spec.flip_permutation()
        self.aug = P.AugmentConfig(scale_factor=t.scale_factor, rotation_factor=t.rotation_factor,
                                   rot_prob=t.rot_prob, flip=t.flip, prob_half_body=t.prob_half_body,
                                   num_joints_half_body=t.num_joints_half_body,
                                   use_joint_weights=t.use_joint_weights)
        self.read = dp.ReadConfig(num_threads=t.read_threads, prefetch_batches=t.read_prefetch_batches,
                                 worker_count=t.read_workers)
        self._paths: dict[str, str] | None = None
        self._train_source: CocoKeypointSource | None = None
        self._eval_source: CocoKeypointSource | None = None
        self._coco_gt = None

    # ---- paths / sources ---------------------------------------------------------------------------------
    @property
    def paths(self) -> dict[str, str]:
        """Resolved data paths (generates the synthetic dataset on first use when ``task.synthetic`` is set)."""
        if self._paths is None:
            t = self.t
            if t.synthetic:
                from hrnet_jax.data.synthetic.pose import ensure_synthetic_pose_dataset
                if not t.data_root:
                    raise ConfigError("task.synthetic needs task.data_root (the folder to generate it in)")
                out = ensure_synthetic_pose_dataset(t.data_root, self.spec, **t.synthetic.to_dict())
                self._paths = dict(train_ann=out["train_ann"], train_images=out["train_images"],
                                   val_ann=out["val_ann"], val_images=out["val_images"],
                                   det_file=self._join(t.det_file) if t.det_file else out["val_det"])
            else:
                self._paths = dict(train_ann=self._join(t.train_ann), train_images=self._join(t.train_images),
                                   val_ann=self._join(t.val_ann), val_images=self._join(t.val_images),
                                   det_file=self._join(t.det_file) if t.det_file else "")
        return dict(self._paths)

    def _join(self, p: str) -> str:
        return p if (not p or os.path.isabs(p) or not self.t.data_root) else os.path.join(self.t.data_root, p)

    def check_data(self) -> None:
        """A clear error (the expected layout) when a real dataset is not where the config says."""
        t, p = self.t, self.paths
        if t.synthetic:
            return
        missing = [p["val_ann"]] if not os.path.exists(p["val_ann"]) else []
        if t.eval_boxes == "det" and p["det_file"] and not os.path.exists(p["det_file"]):
            missing.append(p["det_file"])
        if missing:
            raise ConfigError(
                f"missing {', '.join(missing)}. Expected under task.data_root={t.data_root!r} (COCO layout): "
                f"{t.train_ann}, {t.val_ann}, {t.train_images}/, {t.val_images}/ and, for eval_boxes='det', "
                f"task.det_file={t.det_file!r}. Set --config.task.data_root=/path/to/coco (or task.det_file / "
                f"task.eval_boxes=gt).")

    def train_source(self) -> CocoKeypointSource:
        if self._train_source is None:
            p = self.paths
            self._train_source = CocoKeypointSource(p["train_ann"], p["train_images"], self.spec, self.input_size,
                                                    boxes="gt", padding=self.t.box_padding)
        return self._train_source

    def eval_source(self) -> CocoKeypointSource:
        if self._eval_source is None:
            t, p = self.t, self.paths
            self._eval_source = CocoKeypointSource(
                p["val_ann"], p["val_images"], self.spec, self.input_size, boxes=t.eval_boxes,
                det_file=p["det_file"] or None, det_score_thre=t.det_score_thre, padding=t.box_padding)
        return self._eval_source

    def data_stats(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for prefix, src in (("train", self._train_source), ("val", self._eval_source)):
            if src is not None:
                out.update({f"{prefix}/{k}": float(v) for k, v in src.stats.items() if k.startswith("skipped")})
        return out

    def next_command(self, workdir: str) -> str:
        return f"python -m hrnet_jax.predict --checkpoint {workdir} --images IMAGES --out OUT"

    # ---- model and data ----------------------------------------------------------------------------------
    def build_model(self):
        return build_hrnet(self.config["model"], num_joints=self.spec.num_keypoints)

    def train_dataset(self, process_index: int = 0, process_count: int = 1):
        self.check_data()
        return P.train_dataset(self.train_source(), self.spec, self.input_size, self.heatmap_size, self.sigma,
                               self.aug, local_batch(self.config["batch_size"], process_count),
                               self.config.get("seed", 0), process_index, process_count,
                               num_epochs=self.t.num_epochs or None, read=self.read)

    def eval_dataset(self, name: str = "val", process_index: int = 0, process_count: int = 1):
        self.check_data()
        gb = self.t.eval_batch_size or self.config["batch_size"]
        return P.eval_dataset(self.eval_source(), self.input_size, local_batch(gb, process_count), process_index,
                              process_count, read=self.read)

    # ---- device side -------------------------------------------------------------------------------------
    def forward(self, apply_fn: Callable, variables, batch, *, train: bool, rngs=None):
        images = batch["image"]
        if train or not self.t.flip_test:
            return {"heatmaps": apply_fn(variables, images, train=train, rngs=rngs)}
        b = images.shape[0]
        both = apply_fn(variables, jnp.concatenate([images, images[:, :, ::-1, :]], axis=0), train=False, rngs=rngs)
        return {"heatmaps": both[:b], "heatmaps_flipped": both[b:]}

    def loss(self, preds, batch):
        hm = preds["heatmaps"] if isinstance(preds, Mapping) else preds
        w = batch["target_weight"] if self.t.use_target_weight else None
        if self.t.loss == "ohkm":
            loss = joints_ohkm_mse_loss(hm, batch["target"], w, self.t.ohkm_topk)
        else:
            loss = joints_mse_loss(hm, batch["target"], w)
        return loss, {"heatmap_max": jnp.mean(jnp.max(hm.astype(jnp.float32), axis=(1, 2)))}

    def predict(self, preds, batch) -> dict[str, jax.Array]:
        """Decoded keypoints (B, K, 2) in image pixels and their scores (B, K), plus the box fields the COCO
        evaluator needs."""
        hm = preds["heatmaps"] if isinstance(preds, Mapping) else preds
        flipped = preds.get("heatmaps_flipped") if isinstance(preds, Mapping) else None
        out = decode_heatmaps(hm, batch["center"], batch["scale"], mode=self.t.decode, hm_flipped=flipped,
                              flip_perm=self.flip_perm, shift_flipped=self.t.shift_heatmap,
                              dark_kernel=self.t.dark_kernel)
        res = {"keypoints": out["keypoints"], "maxvals": out["maxvals"]}
        for key in ("center", "scale", "score", "image_id"):
            if key in batch:
                res[key] = batch[key]
        return res

    # ---- host side ---------------------------------------------------------------------------------------
    def coco_gt(self):
        if self._coco_gt is None:
            self._coco_gt = load_coco(self.paths["val_ann"])
        return self._coco_gt

    def evaluator(self, name: str = "val") -> PoseEvaluator:
        t = self.t
        return PoseEvaluator(self.coco_gt(), self.spec.sigmas, self.spec.category_id, t.in_vis_thre, t.oks_thre,
                             t.use_oks_nms, t.results_path or None, seen_images_only=t.eval_seen_images_only)
