"""Bottom-up pose task (HigherHRNet, associative embedding) on the contract of :mod:`hrnet_jax.tasks.base`.

Its settings are the experiment config's ``task`` group; :data:`DEFAULTS` lists every field with its default
(reference values: HigherHRNet ``experiments/coco/higher_hrnet/w32_512_adam_lr1e-3.yaml``). The model comes from
the ``model`` group (:mod:`hrnet_jax.tasks.model_config`; ``higher_hrnet_w32`` / ``higher_hrnet_w48`` or a
narrow ``arch``), with ``num_joints`` from the keypoint spec.

Per batch on the device (inside the loop's jitted steps):

* ``preprocess``: uint8 images → float, ImageNet normalisation.
* ``forward(train=True)``: the model's ``(out_q, out_h)`` (1/4: K heatmaps + K tags; 1/2: K heatmaps).
* ``loss``: :func:`hrnet_jax.tasks.bottomup.loss.bottomup_loss` (masked heatmap MSE at both resolutions, AE
  push/pull 'exp' × 0.001 at 1/4) against the host targets (:mod:`hrnet_jax.tasks.bottomup.pipeline`).
* ``forward(train=False)``: the reference's test-time inference (:mod:`hrnet_jax.tasks.bottomup.inference`):
  flip test, the two resolutions averaged and projected to the input canvas, optional multi-scale, heatmap NMS and
  the top-k candidates per joint type.
* ``predict``: those candidates (and the maps the grouping's refinement reads) with the image's ``center`` /
  ``scale`` / ``size`` for the host evaluator.
* ``evaluator`` (host, :mod:`hrnet_jax.tasks.bottomup.evaluate`): grouping, back to image pixels, COCO results and
  COCOeval with the spec's sigmas → ``AP, AP50, AP75, APm, APl, AR, ...``.
"""
from __future__ import annotations

import os
from typing import Any, Callable

from hrnet_jax.data import pipeline as dp
from hrnet_jax.data.keypoints import KeypointSpec, get_spec
from hrnet_jax.data.sources.coco_people import CocoPeopleSource
from hrnet_jax.tasks.base import Task, local_batch, with_defaults
from hrnet_jax.tasks.bottomup import pipeline as P
from hrnet_jax.tasks.model_config import build_hrnet
from hrnet_jax.tasks.pose.task import resolve_spec
from hrnet_jax.training.config import Config, ConfigError

DEFAULTS = dict(
    name="bottomup",
    # ---- data location (relative paths are joined to data_root) ----
    data_root="",
    train_ann="annotations/person_keypoints_train2017.json",
    train_images="train2017",
    val_ann="annotations/person_keypoints_val2017.json",
    val_images="val2017",
    spec="coco",                     # "coco" | "mpii" | a spec JSON (CrowdPose-style specs: a JSON with 14 keypoints)
    # generate the synthetic COCO-format dataset into data_root (hrnet_jax.data.synthetic.pose): {} = off, else
    # generator kwargs {"num_train": 800, "min_people": 2, "max_people": 6, ...}
    synthetic={},
    # ---- geometry ----
    input_size=512,                  # square training input; outputs at 1/4 and 1/2
    sigma=2.0,                       # Gaussian sigma in pixels of each output resolution
    max_people=30,                   # people slots per image (MAX_NUM_PEOPLE)
    # ---- augmentation (training) ----
    min_scale=0.75,
    max_scale=1.5,
    max_rotation=30.0,
    max_translate=40.0,
    scale_type="short",
    flip=0.5,
    scale_aware_sigma=False,
    base_sigma=2.0,
    base_size=256.0,
    int_sigma=False,
    # ---- loss ----
    ae_type="exp",                   # "exp" | "max"
    push_factor=0.001,
    pull_factor=0.001,
    heatmap_factors=(1.0, 1.0),
    tag_per_joint=True,
    # ---- evaluation ----
    eval_canvas=(),                  # (H, W) multiples of 64 every eval image is resized into; () -> square of the
                                     # input size × 1.5 rounded up to 64 (768 for 512: COCO's 4:3 images fit)
    flip_test=True,
    test_scales=(1.0,),              # the reference's TEST.SCALE_FACTOR; (0.5, 1.0, 2.0) for multi-scale
    nms_kernel=5,
    top_k=30,                        # candidates per joint type (= max people found)
    detection_threshold=0.1,
    tag_threshold=1.0,
    use_detection_val=True,
    ignore_too_much=False,
    adjust=True,
    refine=True,
    results_path="",                 # write the COCO results JSON here at every evaluation
    eval_seen_images_only=False,     # COCOeval only on the images evaluated (partial evals)
    eval_batch_size=0,               # global; 0 -> batch_size
    num_epochs=0,                    # 0 = repeat forever (the loop counts steps)
    # ---- input pipeline (hrnet_jax.data.pipeline.ReadConfig) ----
    read_threads=2,
    read_prefetch_batches=4,
    read_workers=0,
)


def task_defaults(**changes) -> dict:
    """:data:`DEFAULTS` with ``changes`` (unknown names are an error naming the valid ones)."""
    return with_defaults(DEFAULTS, changes, "bottomup")


def default_canvas(input_size: int) -> tuple[int, int]:
    side = int(-(-int(input_size) * 1.5 // 64) * 64)
    return side, side


class BottomUpTask(Task):
    name = "bottomup"

    def __init__(self, config: Any):
        super().__init__(config)
        self.t = t = Config(with_defaults(DEFAULTS, config.get("task") or {}, "bottomup"))
        self.spec: KeypointSpec = get_spec(resolve_spec(t.spec, t.data_root))
        self.input_size = int(t.input_size)
        if self.input_size <= 0 or self.input_size % 64:
            raise ConfigError(f"task.input_size must be a positive multiple of 64, got {t.input_size}")
        self.output_sizes = (self.input_size // 4, self.input_size // 2)
        self.canvas = (tuple(int(v) for v in t.eval_canvas) if t.eval_canvas else default_canvas(self.input_size))
        if len(self.canvas) != 2 or min(self.canvas) <= 0 or self.canvas[0] % 64 or self.canvas[1] % 64:
            raise ConfigError(f"task.eval_canvas must be (H, W), positive multiples of 64, got {t.eval_canvas}")
        for key, valid in (("ae_type", ("exp", "max")), ("scale_type", ("short", "long"))):
            if t[key] not in valid:
                raise ConfigError(f"task.{key} must be one of {valid}, got {t[key]!r}")
        self.test_scales = tuple(float(s) for s in t.test_scales)
        if not self.test_scales or 1.0 not in self.test_scales:
            raise ConfigError(f"task.test_scales must include 1.0 (the reference takes tags at scale 1), got "
                              f"{tuple(t.test_scales)}")
        self.flip_perm = self.spec.flip_permutation()
        self.aug = P.AugmentConfig(min_scale=t.min_scale, max_scale=t.max_scale, max_rotation=t.max_rotation,
                                   max_translate=t.max_translate, scale_type=t.scale_type, flip=float(t.flip),
                                   scale_aware_sigma=t.scale_aware_sigma, base_sigma=t.base_sigma,
                                   base_size=t.base_size, int_sigma=t.int_sigma)
        self.read = dp.ReadConfig(num_threads=t.read_threads, prefetch_batches=t.read_prefetch_batches,
                                 worker_count=t.read_workers)
        self._paths: dict[str, str] | None = None
        self._train_source: CocoPeopleSource | None = None
        self._eval_source: CocoPeopleSource | None = None
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
                self._paths = {k: out[k] for k in ("train_ann", "train_images", "val_ann", "val_images")}
            else:
                self._paths = {k: self._join(t[k]) for k in ("train_ann", "train_images", "val_ann", "val_images")}
        return dict(self._paths)

    def _join(self, p: str) -> str:
        return p if (not p or os.path.isabs(p) or not self.t.data_root) else os.path.join(self.t.data_root, p)

    def check_data(self) -> None:
        """A clear error (the expected layout) when a real dataset is not where the config says."""
        t, p = self.t, self.paths
        if t.synthetic:
            return
        missing = [p[k] for k in ("train_ann", "val_ann") if not os.path.exists(p[k])]
        if missing:
            raise ConfigError(
                f"missing {', '.join(missing)}. Expected under task.data_root={t.data_root!r} (COCO layout): "
                f"{t.train_ann}, {t.val_ann}, {t.train_images}/, {t.val_images}/. Set "
                f"--config.task.data_root=/path/to/coco.")

    def train_source(self) -> CocoPeopleSource:
        if self._train_source is None:
            p = self.paths
            src = CocoPeopleSource(p["train_ann"], p["train_images"], self.spec, require_annotations=True)
            # people past max_people are dropped from the targets (the first max_people of an image kept)
            src.stats["people_over_max"] = sum(max(0, len(r["joints"]) - int(self.t.max_people)) for r in src)
            self._train_source = src
        return self._train_source

    def eval_source(self) -> CocoPeopleSource:
        if self._eval_source is None:
            p = self.paths
            self._eval_source = CocoPeopleSource(p["val_ann"], p["val_images"], self.spec,
                                                 require_annotations=False)
        return self._eval_source

    def data_stats(self) -> dict[str, float]:
        out = {}
        for prefix, src in (("train", self._train_source), ("val", self._eval_source)):
            if src is not None:
                out.update({f"{prefix}_{k}": float(v) for k, v in src.stats.items()})
        return out

    def next_command(self, workdir: str) -> str:
        return f"python -m hrnet_jax.predict --checkpoint {workdir} --images IMAGES --out OUT"

    # ---- host side ---------------------------------------------------------------------------------------
    def build_model(self):
        return build_hrnet(self.config["model"], num_joints=self.spec.num_keypoints)

    def train_dataset(self, process_index: int = 0, process_count: int = 1):
        self.check_data()
        return P.train_dataset(self.train_source(), self.flip_perm, self.input_size, self.output_sizes,
                               float(self.t.sigma), int(self.t.max_people), self.aug,
                               local_batch(self.config["batch_size"], process_count), self.config.get("seed", 0),
                               process_index, process_count, num_epochs=self.t.num_epochs or None, read=self.read,
                               tag_per_joint=bool(self.t.tag_per_joint))

    def eval_dataset(self, name: str = "val", process_index: int = 0, process_count: int = 1):
        self.check_data()
        gb = self.t.eval_batch_size or self.config["batch_size"]
        return P.eval_dataset(self.eval_source(), self.input_size, self.canvas, local_batch(gb, process_count),
                              process_index, process_count, read=self.read, scales=self.test_scales)

    # ---- device side -------------------------------------------------------------------------------------
    def test_config(self):
        from hrnet_jax.tasks.bottomup import inference as bu
        t = self.t
        return bu.TestConfig(flip=bool(t.flip_test), scales=self.test_scales, project2image=True,
                             nms_kernel=int(t.nms_kernel), top_k=int(t.top_k))

    def forward(self, apply_fn: Callable, variables, batch, *, train: bool, rngs=None):
        if train:
            return apply_fn(variables, batch["image"], train=True, rngs=rngs)
        from hrnet_jax.tasks.bottomup import inference as bu
        images = tuple(batch[P.scale_key(i)] for i in range(len(self.test_scales)))
        fn = bu.inference_fn(lambda x: apply_fn(variables, x, train=False, rngs=rngs), self.spec.num_keypoints,
                             self.flip_perm, self.canvas, self.test_config())
        return fn(*images)

    def preprocess(self, batch, rng, *, train: bool):
        out = dict(batch)
        for key in [k for k in batch if k == "image" or k.startswith("image_s")]:
            out[key] = self.normalize(batch[key])
        return out

    def loss(self, preds, batch):
        from hrnet_jax.tasks.bottomup.loss import bottomup_loss
        t = self.t
        loss, aux = bottomup_loss(tuple(preds), batch, num_joints=self.spec.num_keypoints, ae_type=t.ae_type,
                                  push_factor=t.push_factor, pull_factor=t.pull_factor,
                                  heatmap_factors=tuple(t.heatmap_factors))
        return loss, aux

    def predict(self, preds, batch):
        """The device-side candidates (``vals``, ``tags``, ``locs``, and the maps for refinement) per image, with
        the fields that map them back to the image."""
        out = {k: v for k, v in preds.items()}
        for key in ("center", "scale", "size", "image_id", "shrunk"):
            if key in batch:
                out[key] = batch[key]
        return out

    # ---- host evaluation ---------------------------------------------------------------------------------
    def coco_gt(self):
        if self._coco_gt is None:
            from hrnet_jax.data.sources.coco_api import load_coco
            self._coco_gt = load_coco(self.paths["val_ann"])
        return self._coco_gt

    def grouping_params(self):
        from hrnet_jax.tasks.bottomup.grouping import GroupingParams
        t = self.t
        return GroupingParams(num_joints=self.spec.num_keypoints, max_num_people=int(t.top_k),
                              detection_threshold=float(t.detection_threshold), tag_threshold=float(t.tag_threshold),
                              use_detection_val=bool(t.use_detection_val), ignore_too_much=bool(t.ignore_too_much),
                              adjust=bool(t.adjust), refine=bool(t.refine))

    def evaluator(self, name: str = "val"):
        from hrnet_jax.tasks.bottomup.evaluate import BottomUpEvaluator
        t = self.t
        img_ids = None if t.eval_seen_images_only else self.eval_source().image_ids
        return BottomUpEvaluator(self.coco_gt(), self.spec.sigmas, self.grouping_params(), self.spec.category_id,
                                 results_path=t.results_path or None, img_ids=img_ids)
