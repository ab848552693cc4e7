"""Bottom-up pose examples and their datasets, built with :mod:`hrnet_jax.data.pipeline` (static shapes).

Training (per image, the reference's order): read the image (RGB) and its loss mask (crowd / unlabelled people,
:func:`hrnet_jax.data.sources.coco_people.ignore_mask`) -> random whole-image affine (scale, rotation,
translation; :mod:`hrnet_jax.data.ops.bottomup`) to the square input and to each output resolution -> horizontal
flip (p = ``flip``, the spec's pairs) -> heatmaps at every output resolution and the joint indices at the first
(:mod:`hrnet_jax.tasks.bottomup.targets`). People past ``max_people`` are dropped (the first ones kept).

Batch fields: ``image`` uint8 (B, S, S, 3); per output resolution i (stride 4, then 2): ``heatmaps_i`` float32
(B, S/s, S/s, K) and ``mask_i`` float32 (B, S/s, S/s) (1 = counted); ``joints`` int32 (B, M, K, 2).

Evaluation (static shapes): each image resized as the reference's test-time resize (short side to the input
size, long side rounded up to a multiple of 64; :func:`hrnet_jax.data.ops.bottomup.eval_canvases`) into the
top-left corner of a fixed zero canvas ``eval_canvas`` (H, W), both multiples of 64 — one compiled shape for every
image, instead of one per aspect ratio. An image whose resized size does not fit is shrunk to fit (``shrunk`` 1;
the evaluator counts them). With several test scales, scale i is ``image_s<i>`` in a canvas × s. Batch fields:
``image`` (B, Hc, Wc, 3) uint8, ``center`` (B, 2), ``scale`` (B, 2), ``size`` (B, 2) (w, h
of the resized region: the reference's ``transform_preds`` output size), ``image_id``, ``shrunk``, ``valid``.

A missing or undecodable image raises :class:`~hrnet_jax.data.ops.image.ImageReadError` (a ``SkipExample``):
training replaces the image by the next one, evaluation yields a ``valid`` False row; both are counted in the
batch's ``_stats/missing_image`` / ``_stats/corrupt_image`` fields.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import grain
import numpy as np

from hrnet_jax.data import pipeline as dp
from hrnet_jax.data.ops import bottomup as B
from hrnet_jax.data.ops.image import read_image_rgb
from hrnet_jax.data.sources.coco_people import CocoPeopleSource, ignore_mask
from hrnet_jax.tasks.bottomup.targets import heatmaps, joint_indices, scale_aware_sigmas

@dataclasses.dataclass
class AugmentConfig:
    min_scale: float = 0.75            # zoom U(min_scale, max_scale) of the short side
    max_scale: float = 1.5
    max_rotation: float = 30.0         # degrees, U(-r, r)
    max_translate: float = 40.0        # pixels × scale, randint(-t·s, t·s)
    scale_type: str = "short"
    flip: float = 0.5                  # horizontal flip probability
    scale_aware_sigma: bool = False    # the reference's SCALE_AWARE_SIGMA (off in the released yamls)
    base_sigma: float = 2.0
    base_size: float = 256.0
    int_sigma: bool = False


def train_example(rec: dict, img: np.ndarray, mask: np.ndarray, rng: np.random.Generator, flip_perm: np.ndarray,
                  input_size: int, output_sizes: Sequence[int], sigma: float, max_people: int,
                  aug: AugmentConfig, tag_per_joint: bool = True) -> dict[str, np.ndarray]:
    """One augmented training example from an image record, its RGB image and its (H, W) bool loss mask."""
    joints = np.asarray(rec["joints"], np.float64)[:max_people]
    center, scale, rot, aug_scale = B.random_affine_params(
        rng, img.shape[0], img.shape[1], min_scale=aug.min_scale, max_scale=aug.max_scale,
        max_rotation=aug.max_rotation, max_translate=aug.max_translate, scale_type=aug.scale_type)
    image, masks, js = B.affine_people(img, mask, joints, center, scale, rot, input_size, output_sizes)
    if aug.flip > 0 and rng.random() < aug.flip:
        image, masks, js = B.flip_people(image, masks, js, output_sizes, flip_perm)
    sig = None
    if aug.scale_aware_sigma:
        sig = scale_aware_sigmas(np.asarray(rec["bbox"])[:max_people], aug.base_sigma, aug.base_size,
                                 aug.int_sigma) / aug_scale
    out = {"image": image}
    for i, (res, m, j) in enumerate(zip(output_sizes, masks, js)):
        out[f"heatmaps_{i}"] = heatmaps(j, (res, res), sigma, sig)
        out[f"mask_{i}"] = m.astype(np.float32)
    out["joints"] = joint_indices(js[0], max_people, (output_sizes[0], output_sizes[0]), tag_per_joint)
    return out


def scale_key(i: int) -> str:
    """The batch field of test scale ``i``: ``image`` for the first, ``image_s<i>`` for the others."""
    return "image" if i == 0 else f"image_s{i}"


def eval_example(rec: dict, img: np.ndarray, input_size: int, canvas_hw: Sequence[int],
                 scales: Sequence[float] = (1.0,)) -> dict[str, np.ndarray]:
    """The canvases of every test scale with ``center`` / ``scale`` / ``size`` / ``image_id`` / ``shrunk``."""
    canvases, center, scale, size, shrunk = B.eval_canvases(img, input_size, canvas_hw, scales)
    out = {scale_key(i): c for i, c in enumerate(canvases)}
    out.update(center=center, scale=scale, size=size, image_id=np.int32(rec["image_id"]), shrunk=np.int32(shrunk))
    return out


class TrainExampleFn:
    """``fn(index, rng) -> example`` for :func:`hrnet_jax.data.pipeline.train_dataset` (raises ImageReadError)."""

    def __init__(self, source: CocoPeopleSource, flip_perm, input_size: int, output_sizes, sigma: float,
                 max_people: int, aug: AugmentConfig, tag_per_joint: bool = True):
        self.source, self.flip_perm = source, np.asarray(flip_perm)
        self.input_size, self.output_sizes = int(input_size), tuple(int(s) for s in output_sizes)
        self.sigma, self.max_people, self.aug, self.tag_per_joint = sigma, int(max_people), aug, tag_per_joint

    def __call__(self, index: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        rec = self.source[index]
        img = read_image_rgb(rec["image_path"])
        mask = (ignore_mask(rec["ignore"], img.shape[0], img.shape[1]) if rec["ignore"]
                else np.ones(img.shape[:2], bool))
        return train_example(rec, img, mask, rng, self.flip_perm, self.input_size, self.output_sizes, self.sigma,
                             self.max_people, self.aug, self.tag_per_joint)


class EvalExampleFn:
    """``fn(index) -> example`` for :func:`hrnet_jax.data.pipeline.eval_dataset` (raises ImageReadError)."""

    def __init__(self, source: CocoPeopleSource, input_size: int, canvas_hw, scales=(1.0,)):
        self.source, self.input_size, self.canvas_hw = source, int(input_size), tuple(int(v) for v in canvas_hw)
        self.scales = tuple(float(s) for s in scales)

    def __call__(self, index: int) -> dict[str, np.ndarray]:
        rec = self.source[index]
        return eval_example(rec, read_image_rgb(rec["image_path"]), self.input_size, self.canvas_hw, self.scales)


def train_dataset(source: CocoPeopleSource, flip_perm, input_size: int, output_sizes, sigma: float,
                  max_people: int, aug: AugmentConfig, batch_size: int, seed: int, process_index: int = 0,
                  process_count: int = 1, num_epochs: int | None = None, read: dp.ReadConfig = dp.ReadConfig(),
                  tag_per_joint: bool = True, max_retries: int = 16) -> grain.IterDataset:
    """Shuffled (per epoch), augmented, batched (drop remainder) training images for one process."""
    if len(source) == 0:
        raise ValueError(f"no training images in {source.ann_file} (stats: {dict(source.stats)})")
    fn = TrainExampleFn(source, flip_perm, input_size, output_sizes, sigma, max_people, aug, tag_per_joint)
    return dp.train_dataset(len(source), fn, batch_size=batch_size, seed=seed, process_index=process_index,
                            process_count=process_count, num_epochs=num_epochs, read=read, max_retries=max_retries)


def eval_dataset(source: CocoPeopleSource, input_size: int, canvas_hw, batch_size: int, process_index: int = 0,
                 process_count: int = 1, read: dp.ReadConfig = dp.ReadConfig(),
                 scales: Sequence[float] = (1.0,)) -> grain.IterDataset:
    """Every image once, in order, padded to the global batch; ``valid`` False on padding / unreadable images."""
    if len(source) == 0:
        raise ValueError(f"no evaluation images in {source.ann_file} (stats: {dict(source.stats)})")
    return dp.eval_dataset(len(source), EvalExampleFn(source, input_size, canvas_hw, scales), batch_size=batch_size,
                           process_index=process_index, process_count=process_count, read=read)


def eval_num_batches(source: CocoPeopleSource, batch_size: int, process_count: int = 1) -> int:
    return dp.eval_num_batches(len(source), batch_size, process_count)
