"""Top-down pose examples and their datasets, built with :mod:`hrnet_jax.data.pipeline`.

Training (per instance, official order): read image (RGB) -> half-body (p = ``prob_half_body``, needs more than
``num_joints_half_body`` labelled joints) -> random scale -> random rotation (p = 0.6) -> horizontal flip
(p = 0.5, flip pairs) -> affine crop to the input size -> affine of the joints -> Gaussian heatmap targets.
Evaluation: the rotation-0 crop of each box with its ``center`` / ``scale`` / ``score`` / ``image_id``.

Images leave the host as uint8 HWC RGB crops; the task normalises them on device
(:data:`hrnet_jax.data.ops.image.IMAGENET_MEAN` / ``IMAGENET_STD``).

A missing or undecodable image raises :class:`~hrnet_jax.data.ops.image.ImageReadError` (a ``SkipExample``):
training replaces the instance by the next one, evaluation yields a ``valid`` False row; both are counted in
the batch's ``_stats/missing_image`` / ``_stats/corrupt_image`` fields (:func:`hrnet_jax.data.pipeline.pop_stats`).
Annotations without labelled keypoints, crowd / zero-area boxes and files absent from the image folder are
dropped when the source is built and counted in ``source.stats``.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Iterable, Sequence

import grain
import numpy as np

from hrnet_jax.data import pipeline as dp
from hrnet_jax.data.keypoints import KeypointSpec
from hrnet_jax.data.ops import affine as T
from hrnet_jax.data.ops.image import read_image_rgb
from hrnet_jax.data.sources.coco_keypoints import CocoKeypointSource
from hrnet_jax.tasks.pose.targets import generate_heatmaps


@dataclasses.dataclass
class AugmentConfig:
    scale_factor: float = 0.35          # s *= clip(randn·sf + 1, 1 - sf, 1 + sf)
    rotation_factor: float = 45.0       # r = clip(randn·rf, -2rf, 2rf) with probability rot_prob
    rot_prob: float = 0.6
    flip: bool = True                   # horizontal flip with probability 0.5
    prob_half_body: float = 0.3         # -1 / 0 disables (MPII)
    num_joints_half_body: int = 8
    use_joint_weights: bool = False     # USE_DIFFERENT_JOINTS_WEIGHT


def train_example(rec: dict, img: np.ndarray, rng: np.random.Generator, spec: KeypointSpec,
                  input_size_hw: Sequence[int], heatmap_size_hw: Sequence[int], sigma: float,
                  aug: AugmentConfig) -> dict[str, np.ndarray]:
    """One augmented training example from an instance record and its decoded RGB image (uint8 crop)."""
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
    return {"image": crop, "target": target, "target_weight": weight,
            "joints": joints, "vis": vis}


def eval_example(rec: dict, img: np.ndarray, input_size_hw: Sequence[int]) -> dict[str, np.ndarray]:
    """The rotation-0 uint8 crop of an evaluation box, with its center / scale / score / image id."""
    h_in, w_in = int(input_size_hw[0]), int(input_size_hw[1])
    trans = T.get_affine_transform(rec["center"], rec["scale"], 0, (w_in, h_in))
    return {"image": T.warp_image(img, trans, (w_in, h_in)), "center": np.asarray(rec["center"], np.float32),
            "scale": np.asarray(rec["scale"], np.float32), "score": np.float32(rec["score"]),
            "image_id": np.int32(rec["image_id"])}


class TrainExampleFn:
    """``fn(index, rng) -> example`` for :func:`hrnet_jax.data.pipeline.train_dataset` (raises ImageReadError)."""

    def __init__(self, source: CocoKeypointSource, spec: KeypointSpec, input_size_hw, heatmap_size_hw, sigma,
                 aug: AugmentConfig):
        self.source, self.spec, self.aug = source, spec, aug
        self.input_size_hw, self.heatmap_size_hw, self.sigma = tuple(input_size_hw), tuple(heatmap_size_hw), sigma

    def __call__(self, index: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        rec = self.source[index]
        img = read_image_rgb(rec["image_path"])
        return train_example(rec, img, rng, self.spec, self.input_size_hw, self.heatmap_size_hw, self.sigma,
                             self.aug)


class EvalExampleFn:
    """``fn(index) -> example`` for :func:`hrnet_jax.data.pipeline.eval_dataset` (raises ImageReadError)."""

    def __init__(self, source: CocoKeypointSource, input_size_hw):
        self.source, self.input_size_hw = source, tuple(input_size_hw)

    def __call__(self, index: int) -> dict[str, np.ndarray]:
        rec = self.source[index]
        return eval_example(rec, read_image_rgb(rec["image_path"]), self.input_size_hw)


def train_dataset(source: CocoKeypointSource, spec: KeypointSpec, input_size_hw, heatmap_size_hw, sigma: float,
                  aug: AugmentConfig, batch_size: int, seed: int, process_index: int = 0, process_count: int = 1,
                  num_epochs: int | None = None, read: dp.ReadConfig = dp.ReadConfig(),
                  max_retries: int = 16) -> grain.IterDataset:
    """Shuffled (per epoch), augmented, batched (drop remainder) training examples for one process.

    Batches: ``image`` uint8 (B, H, W, 3), ``target`` (B, h, w, K), ``target_weight`` (B, K), ``joints``,
    ``vis`` and the ``_stats/*`` counters.
    """
    if len(source) == 0:
        raise ValueError(f"no training instances in {source.ann_file} (stats: {dict(source.stats)})")
    fn = TrainExampleFn(source, spec, input_size_hw, heatmap_size_hw, sigma, aug)
    return dp.train_dataset(len(source), fn, batch_size=batch_size, seed=seed, process_index=process_index,
                            process_count=process_count, num_epochs=num_epochs, read=read, max_retries=max_retries)


def eval_dataset(source: CocoKeypointSource, input_size_hw, batch_size: int, process_index: int = 0,
                 process_count: int = 1, read: dp.ReadConfig = dp.ReadConfig()) -> grain.IterDataset:
    """Every evaluation box once, in order, padded to the global batch (``batch_size * process_count``).

    Batches: ``image`` uint8, ``center``, ``scale``, ``score``, ``image_id``, ``valid`` (False on padding and
    unreadable images) and the ``_stats/*`` counters; :func:`eval_num_batches` batches on every process.
    """
    if len(source) == 0:
        raise ValueError(f"no evaluation boxes in {source.ann_file} (stats: {dict(source.stats)})")
    return dp.eval_dataset(len(source), EvalExampleFn(source, input_size_hw), batch_size=batch_size,
                           process_index=process_index, process_count=process_count, read=read)


def eval_num_batches(source: CocoKeypointSource, batch_size: int, process_count: int = 1) -> int:
    return dp.eval_num_batches(len(source), batch_size, process_count)


def measure_throughput(dataset: Iterable, num_batches: int = 20) -> dict[str, float]:
    """Images/s of a batched dataset (decode + crop + augment + targets, no model), after one warm-up batch.

    The reader threads / workers are those of the dataset's :class:`~hrnet_jax.data.pipeline.ReadConfig`.
    """
    it = iter(dataset)
    bs = len(next(it)["image"])
    t = time.perf_counter()
    for _ in range(num_batches):
        next(it)
    dt = time.perf_counter() - t
    return {"images_per_s": num_batches * bs / dt, "batches": float(num_batches), "batch_size": float(bs)}
