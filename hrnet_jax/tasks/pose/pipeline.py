"""Per-example pose pipeline and the grain datasets built on :class:`~hrnet_jax.data.coco_keypoints.CocoKeypointSource`.

Training (per instance, official order): read image (RGB) -> half-body (p = ``prob_half_body``, needs more than
``num_joints_half_body`` labelled joints) -> random scale -> random rotation (p = 0.6) -> horizontal flip
(p = 0.5, flip pairs) -> affine crop to the input size -> ImageNet normalisation -> affine of the joints ->
Gaussian heatmap targets.

Determinism: ``MapDataset.range(n)[process::count].shuffle(seed).repeat(epochs).random_map(fn, seed=...)`` — the
order is reshuffled every epoch and each element's augmentation draws from a generator that grain derives from
(seed, element index), so a pipeline is reproducible per seed, independent of worker count, and resumable from
any step (random access).

Bad data never stops an epoch:

* A missing or undecodable image in **training** is replaced by the next instance (index + 1, + 2, ... up to
  ``max_retries``) whose image reads; every skip is added to the example's ``num_skipped`` field (int32, so the
  count survives grain worker processes and arrives with every batch: ``batch["num_skipped"].sum()``) and to the
  in-process :class:`SkipCounter` (``PoseTask.skip_counter``), which also logs each bad path once.
* In **evaluation**, a bad image yields a zero image with ``valid = False`` (its instance is then not predicted),
  again counted in ``num_skipped`` and the counter.
* Annotations without labelled keypoints, crowd / zero-area boxes and files absent from the image folder are
  dropped when the source is built and counted in ``source.stats``.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
from collections import Counter
from typing import Any, Sequence

import grain
import numpy as np

from hrnet_jax.data import transforms as T
from hrnet_jax.data.coco_keypoints import CocoKeypointSource
from hrnet_jax.tasks.pose.spec import KeypointSpec
from hrnet_jax.tasks.pose.targets import generate_heatmaps

log = logging.getLogger(__name__)


@dataclasses.dataclass
class AugmentConfig:
    scale_factor: float = 0.35          # s *= clip(randn·sf + 1, 1 - sf, 1 + sf)
    rotation_factor: float = 45.0       # r = clip(randn·rf, -2rf, 2rf) with probability rot_prob
    rot_prob: float = 0.6
    flip: bool = True                   # horizontal flip with probability 0.5
    prob_half_body: float = 0.3         # -1 / 0 disables (MPII)
    num_joints_half_body: int = 8
    use_joint_weights: bool = False     # USE_DIFFERENT_JOINTS_WEIGHT


class SkipCounter:
    """Thread-safe counts of skipped examples by reason, plus the first few offending paths."""

    def __init__(self, max_paths: int = 20):
        self._lock = threading.Lock()
        self.counts: Counter = Counter()
        self.paths: list[str] = []
        self._max_paths = max_paths
        self._seen: set[str] = set()

    def add(self, reason: str, path: str = "") -> None:
        with self._lock:
            self.counts[reason] += 1
            if path and path not in self._seen:
                self._seen.add(path)
                if len(self.paths) < self._max_paths:
                    self.paths.append(path)
                log.warning("skipping %s (%s)", path, reason)

    def as_dict(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)


def _read(path: str, counter: SkipCounter | None) -> np.ndarray | None:
    try:
        return T.read_image_rgb(path)
    except T.ImageReadError as e:
        if counter is not None:
            counter.add(e.reason, path)
        return None


def train_example(rec: dict, img: np.ndarray, rng: np.random.Generator, spec: KeypointSpec,
                  input_size_hw: Sequence[int], heatmap_size_hw: Sequence[int], sigma: float,
                  aug: AugmentConfig) -> dict[str, np.ndarray]:
    """One augmented training example from an instance record and its decoded RGB image."""
    h_in, w_in = int(input_size_hw[0]), int(input_size_hw[1])
    aspect = w_in / h_in
    joints = np.array(rec["joints"], dtype=np.float32)
    vis = np.array(rec["vis"], dtype=np.float32)
    c = np.array(rec["center"], dtype=np.float32)
    s = np.array(rec["scale"], dtype=np.float32)
    if np.sum(vis) > aug.num_joints_half_body and rng.random() < aug.prob_half_body:
        hb = T.half_body_center_scale(joints, vis, spec.upper_body_ids, aspect, rng)
        if hb is not None:
            c, s = hb
    s = s * T.random_scale_factor(rng, aug.scale_factor)
    r = T.random_rotation(rng, aug.rotation_factor, aug.rot_prob)
    if aug.flip and rng.random() <= 0.5:
        img = img[:, ::-1]
        joints, vis = T.fliplr_joints(joints, vis, img.shape[1], spec.flip_pairs)
        c = c.copy()
        c[0] = img.shape[1] - c[0] - 1
    trans = T.get_affine_transform(c, s, r, (w_in, h_in))
    crop = T.warp_image(np.ascontiguousarray(img), trans, (w_in, h_in))
    joints = np.where(vis[:, None] > 0, T.affine_points(joints, trans), joints).astype(np.float32)
    jw = np.asarray(spec.joint_weights, np.float32) if aug.use_joint_weights else None
    target, weight = generate_heatmaps(joints, vis, (h_in, w_in), heatmap_size_hw, sigma, jw)
    return {"image": T.normalize_image(crop), "target": target, "target_weight": weight,
            "joints": joints, "vis": vis}


def eval_example(rec: dict, img: np.ndarray | None, input_size_hw: Sequence[int]) -> dict[str, np.ndarray]:
    """The rotation-0 crop of an evaluation box, with its center/scale/score/image id and a validity flag."""
    h_in, w_in = int(input_size_hw[0]), int(input_size_hw[1])
    if img is None:
        image = np.zeros((h_in, w_in, 3), np.float32)
    else:
        trans = T.get_affine_transform(rec["center"], rec["scale"], 0, (w_in, h_in))
        image = T.normalize_image(T.warp_image(img, trans, (w_in, h_in)))
    return {"image": image, "center": np.asarray(rec["center"], np.float32),
            "scale": np.asarray(rec["scale"], np.float32), "score": np.float32(rec["score"]),
            "image_id": np.int32(rec["image_id"]), "valid": np.bool_(img is not None),
            "num_skipped": np.int32(img is None)}


class TrainExampleFn:
    """``fn(index, rng) -> example`` for ``MapDataset.random_map``; falls back to later instances on bad images."""

    def __init__(self, source: CocoKeypointSource, spec: KeypointSpec, input_size_hw, heatmap_size_hw, sigma,
                 aug: AugmentConfig, counter: SkipCounter | None = None, max_retries: int = 16):
        self.source, self.spec, self.aug = source, spec, aug
        self.input_size_hw, self.heatmap_size_hw, self.sigma = tuple(input_size_hw), tuple(heatmap_size_hw), sigma
        self.counter = counter
        self.max_retries = max_retries

    def __call__(self, index: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        n = len(self.source)
        skipped = 0
        for attempt in range(self.max_retries):
            rec = self.source[(int(index) + attempt) % n]
            img = _read(rec["image_path"], self.counter)
            if img is None:
                skipped += 1
                continue
            ex = train_example(rec, img, rng, self.spec, self.input_size_hw, self.heatmap_size_hw, self.sigma,
                               self.aug)
            ex["num_skipped"] = np.int32(skipped)
            return ex
        raise RuntimeError(f"{self.max_retries} consecutive unreadable images around instance {index} of "
                           f"{self.source.ann_file}; is image_dir ({self.source.image_dir}) right?")


class EvalExampleFn:
    """``fn(index) -> example``; indices past the end of the source are padding (zero image, ``valid`` False)."""

    def __init__(self, source: CocoKeypointSource, input_size_hw, counter: SkipCounter | None = None):
        self.source, self.input_size_hw, self.counter = source, tuple(input_size_hw), counter

    def __call__(self, index: int) -> dict[str, np.ndarray]:
        if int(index) >= len(self.source):
            ex = eval_example(self.source[0], None, self.input_size_hw)
            ex["num_skipped"] = np.int32(0)
            return ex
        rec = self.source[int(index)]
        return eval_example(rec, _read(rec["image_path"], self.counter), self.input_size_hw)


def stack_examples(examples: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
    return {k: np.stack([np.asarray(e[k]) for e in examples]) for k in examples[0]}


class PadToBatch:
    """batch_fn padding a short final batch to ``batch_size`` with copies of its first element, ``valid=False``."""

    def __init__(self, batch_size: int):
        self.batch_size = batch_size

    def __call__(self, examples: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
        examples = list(examples)
        pad = self.batch_size - len(examples)
        if pad > 0:
            filler = dict(examples[0])
            filler["valid"] = np.bool_(False)
            filler["num_skipped"] = np.int32(0)
            examples += [filler] * pad
        return stack_examples(examples)


def train_dataset(source: CocoKeypointSource, spec: KeypointSpec, input_size_hw, heatmap_size_hw, sigma: float,
                  aug: AugmentConfig, batch_size: int, seed: int, process_index: int = 0, process_count: int = 1,
                  num_epochs: int | None = None, counter: SkipCounter | None = None) -> grain.MapDataset:
    """Shuffled (per epoch), augmented, batched (drop remainder) training examples for one process."""
    if len(source) == 0:
        raise ValueError(f"no training instances in {source.ann_file} (stats: {dict(source.stats)})")
    fn = TrainExampleFn(source, spec, input_size_hw, heatmap_size_hw, sigma, aug, counter)
    ds = grain.MapDataset.range(len(source))[process_index::process_count]
    ds = ds.shuffle(seed=seed).repeat(num_epochs)
    ds = ds.random_map(fn, seed=seed * 1000003 + process_index)
    return ds.batch(batch_size, drop_remainder=True, batch_fn=stack_examples)


def eval_dataset(source: CocoKeypointSource, input_size_hw, batch_size: int, process_index: int = 0,
                 process_count: int = 1, counter: SkipCounter | None = None,
                 global_batch_size: int | None = None) -> grain.MapDataset:
    """Every evaluation box once, in order, for one process.

    The index range is padded to a multiple of the global batch (``batch_size · process_count`` by default) so
    that every process runs the same number of batches; padding rows have ``valid`` False.
    """
    if len(source) == 0:
        raise ValueError(f"no evaluation boxes in {source.ann_file} (stats: {dict(source.stats)})")
    gb = global_batch_size or batch_size * process_count
    total = -(-len(source) // gb) * gb
    ds = grain.MapDataset.range(total)[process_index::process_count]
    ds = ds.map(EvalExampleFn(source, input_size_hw, counter))
    return ds.batch(batch_size, drop_remainder=False, batch_fn=PadToBatch(batch_size))


def measure_throughput(dataset: grain.MapDataset, num_batches: int = 20, num_threads: int = 0) -> dict[str, float]:
    """Images/s of a (batched) pose dataset: decode + crop + augment + targets, no model.

    ``num_threads`` > 0 iterates through ``to_iter_dataset`` with that many reader threads (what the loop does
    with grain's defaults); 0 reads batches sequentially in this thread.
    """
    import time
    if num_threads > 0:
        it = iter(dataset.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=2 *
                                                            num_threads)))
        get = lambda i: next(it)  # noqa: E731
    else:
        get = dataset.__getitem__
    first = get(0)
    bs = len(first["image"])
    t = time.perf_counter()
    for i in range(1, num_batches + 1):
        get(i)
    dt = time.perf_counter() - t
    return {"images_per_s": num_batches * bs / dt, "batches": float(num_batches), "batch_size": float(bs)}
