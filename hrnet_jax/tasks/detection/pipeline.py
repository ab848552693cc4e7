"""Detection examples and their bucketed datasets, built with :mod:`hrnet_jax.data.pipeline`.

Every image belongs to one static size bucket (:func:`hrnet_jax.data.ops.detection.target_size`, decided from the
annotation's width / height when the source is indexed), and every batch holds images of one bucket, so the
loop's ``jax.jit`` compiles one train step (and one eval step) per bucket:

* training: one shuffled, repeated, batched stream per bucket (:func:`hrnet_jax.data.pipeline.train_dataset`),
  mixed batch by batch in proportion to the buckets' image counts (``grain.IterDataset.mix``); a bucket with
  fewer images than one global batch joins the largest bucket (its images are shrunk into it);
* evaluation: the buckets one after the other, each padded to a multiple of the global batch with
  ``valid`` False rows of its own shape.

Examples: ``image`` uint8 (H, W, 3) of the bucket, ``image_hw``, ``gt_boxes``, ``gt_labels``, ``gt_valid``,
``scale`` (sx, sy), ``image_id``, ``orig_hw`` (the original (h, w)); training flips with probability
``flip_prob``. A missing or corrupt image raises :class:`~hrnet_jax.data.ops.image.ImageReadError`: training
takes the next image of the bucket, evaluation yields a ``valid`` False row; both are counted in the
``_stats/missing_image`` / ``_stats/corrupt_image`` batch fields.
"""
from __future__ import annotations

from typing import Sequence

import grain
import numpy as np

from hrnet_jax.data import pipeline as dp
from hrnet_jax.data.ops import detection as D
from hrnet_jax.data.ops.image import read_image_rgb
from hrnet_jax.data.sources.coco_instances import CocoInstancesSource


class Geometry:
    """The resize / bucket / box-count settings shared by training and evaluation."""

    def __init__(self, scale: Sequence[int], buckets: Sequence[Sequence[int]], max_boxes: int):
        self.scale = (int(scale[0]), int(scale[1]))
        self.buckets = D.check_buckets(buckets)
        self.max_boxes = int(max_boxes)

    def bucket_of(self, rec: dict) -> int:
        return D.target_size(int(rec["height"]), int(rec["width"]), self.scale, self.buckets)[0]

    def placeholder(self, bucket: int) -> dict[str, np.ndarray]:
        """Zeros shaped like an example of ``bucket`` (evaluation padding rows)."""
        h, w = self.buckets[bucket]
        m = self.max_boxes
        return {"image": np.zeros((h, w, 3), np.uint8), "image_hw": np.zeros((2,), np.int32),
                "gt_boxes": np.zeros((m, 4), np.float32), "gt_labels": np.zeros((m,), np.int32),
                "gt_valid": np.zeros((m,), bool), "scale": np.ones((2,), np.float32),
                "image_id": np.int32(-1), "orig_hw": np.zeros((2,), np.int32)}


def make_example(rec: dict, image: np.ndarray, geo: Geometry, bucket: int, flip: bool) -> dict[str, np.ndarray]:
    """The batch fields of one image record and its decoded pixels, padded to ``bucket`` (whatever the image's
    own size: a record assigned to a bigger bucket is padded, one assigned to a smaller bucket shrunk into it)."""
    h, w = image.shape[:2]
    sx, sy = w / max(int(rec["width"]), 1), h / max(int(rec["height"]), 1)
    boxes = D.scale_boxes(rec["boxes"], sx, sy, (h, w))  # the JSON size and the file's can disagree
    ex = D.detection_example(image, boxes, rec["labels"], scale=geo.scale, buckets=(geo.buckets[bucket],),
                             max_boxes=geo.max_boxes, flip=flip)
    ex.pop("bucket")
    ex["scale"] = (ex["scale"] * np.array([sx, sy], np.float32)).astype(np.float32)
    ex["image_id"] = np.int32(rec["image_id"])
    ex["orig_hw"] = np.array([rec["height"], rec["width"]], np.int32)
    return ex


class TrainExampleFn:
    """``fn(index, rng) -> example`` over the records ``indices`` of one bucket."""

    def __init__(self, source: CocoInstancesSource, indices: Sequence[int], geo: Geometry, bucket: int,
                 flip_prob: float):
        self.source, self.indices, self.geo, self.bucket = source, np.asarray(indices), geo, int(bucket)
        self.flip_prob = float(flip_prob)

    def __call__(self, i: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        rec = self.source[int(self.indices[i])]
        flip = rng.random() < self.flip_prob
        return make_example(rec, read_image_rgb(rec["image_path"]), self.geo, self.bucket, flip)


class EvalExampleFn:
    """``fn(index) -> example`` over the records ``indices`` of one bucket (no flip)."""

    def __init__(self, source: CocoInstancesSource, indices: Sequence[int], geo: Geometry, bucket: int):
        self.source, self.indices, self.geo, self.bucket = source, np.asarray(indices), geo, int(bucket)

    def __call__(self, i: int) -> dict[str, np.ndarray]:
        rec = self.source[int(self.indices[i])]
        return make_example(rec, read_image_rgb(rec["image_path"]), self.geo, self.bucket, False)


def split_by_bucket(source: CocoInstancesSource, geo: Geometry, min_records: int = 1) -> dict[int, list[int]]:
    """``{bucket: [record indices]}``; buckets with fewer than ``min_records`` records are merged into the
    bucket with the most records."""
    groups: dict[int, list[int]] = {}
    for i in range(len(source)):
        groups.setdefault(geo.bucket_of(source[i]), []).append(i)
    if not groups:
        return groups
    big = max(groups, key=lambda b: (len(groups[b]), -b))
    for b in sorted(groups):
        if b != big and len(groups[b]) < min_records:
            groups[big] += groups.pop(b)
    return {b: sorted(v) for b, v in sorted(groups.items())}


def train_dataset(source: CocoInstancesSource, geo: Geometry, *, batch_size: int, seed: int, flip_prob: float,
                  process_index: int = 0, process_count: int = 1, read: dp.ReadConfig = dp.ReadConfig()):
    """Infinite batches of one bucket each (module docstring); per-process batch ``batch_size``."""
    if len(source) == 0:
        raise ValueError(f"no training images in {source.ann_file} (stats: {dict(source.stats)})")
    groups = split_by_bucket(source, geo, batch_size * process_count)
    parts, weights = [], []
    for b, idx in groups.items():
        fn = TrainExampleFn(source, idx, geo, b, flip_prob)
        parts.append(dp.train_dataset(len(idx), fn, batch_size=batch_size, seed=seed + 7919 * b,
                                      process_index=process_index, process_count=process_count, read=read))
        weights.append(float(len(idx)))
    if len(parts) == 1:
        return parts[0]
    return grain.IterDataset.mix(parts, [w / sum(weights) for w in weights])


def eval_dataset(source: CocoInstancesSource, geo: Geometry, *, batch_size: int, process_index: int = 0,
                 process_count: int = 1, read: dp.ReadConfig = dp.ReadConfig()):
    """Every image once, bucket after bucket, each bucket padded to the global batch (``valid`` False rows)."""
    if len(source) == 0:
        raise ValueError(f"no evaluation images in {source.ann_file} (stats: {dict(source.stats)})")
    parts = []
    for b, idx in split_by_bucket(source, geo).items():
        fn = EvalExampleFn(source, idx, geo, b)
        total = dp.eval_num_batches(len(idx), batch_size, process_count) * batch_size * process_count
        ds = grain.MapDataset.range(total)[process_index::process_count]
        ds = ds.map(dp._EvalFn(len(idx), fn, dp.DEFAULT_REASONS, geo.placeholder(b), 64))
        parts.append(ds.batch(batch_size, drop_remainder=False))
    ds = parts[0] if len(parts) == 1 else grain.MapDataset.concatenate(parts)
    return ds.to_iter_dataset(read.read_options())


def eval_num_batches(source: CocoInstancesSource, geo: Geometry, batch_size: int, process_count: int = 1) -> int:
    return sum(dp.eval_num_batches(len(idx), batch_size, process_count)
               for idx in split_by_bucket(source, geo).values())
