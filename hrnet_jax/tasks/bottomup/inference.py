"""HigherHRNet test-time inference on the device (pure, jit-able, static shapes per input size).

Follows the reference's ``get_multi_stage_outputs`` / ``aggregate_results`` / ``HeatmapParser.top_k``
(HigherHRNet lib/core/inference.py, lib/core/group.py, tools/valid.py) with NHWC maps:

1. per scale, one forward pass on the image and (flip test) its mirror; each stage output but the last is
   resized bilinearly (align_corners=False) to the last one's size (1/2); the heatmaps of the stages with
   ``with_heatmaps`` are averaged, the tags of the stages with ``with_ae`` (stage 0) kept; the mirrored outputs
   are flipped back along W and their joint channels permuted by ``flip_index`` (heatmaps and tags);
2. PROJECT2IMAGE: every heatmap and tag map resized bilinearly to ``base_size`` (the input size at scale 1);
3. aggregation: heatmaps averaged over flip, summed over scales and divided by the number of scales (without
   PROJECT2IMAGE, resized to the first — largest — scale's size); only the scale-1.0 tags are kept (stacked on a
   last axis, T = 2 with flip), as the reference;
4. heatmap NMS: max-pool (kernel ``nms_kernel``, stride 1, padding ``nms_padding``, -inf border), keep the maxima;
5. top-k (``top_k`` = MAX_NUM_PEOPLE) candidates per joint: values, integer (x, y) and their tags.

The host-side grouping (:mod:`hrnet_jax.tasks.bottomup.grouping`) takes the result of :func:`detect`.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from hrnet_jax.models.layers import resize_bilinear


@dataclasses.dataclass(frozen=True)
class TestConfig:
    """TEST settings of the HigherHRNet COCO yamls (w32_512 / w32_640 / w48_640)."""
    flip: bool = True                      # FLIP_TEST
    scales: tuple = (1.0,)                 # SCALE_FACTOR (multi-scale test: e.g. (2.0, 1.0, 0.5))
    project2image: bool = True             # PROJECT2IMAGE
    with_heatmaps: tuple = (True, True)    # WITH_HEATMAPS per output stage
    with_ae: tuple = (True, False)         # WITH_AE per output stage
    nms_kernel: int = 5                    # NMS_KERNEL
    nms_padding: int = 2                   # NMS_PADDING
    top_k: int = 30                        # DATASET.MAX_NUM_PEOPLE

    def __post_init__(self):
        scales = tuple(float(s) for s in self.scales)
        object.__setattr__(self, "scales", scales)
        if not scales:
            raise ValueError("TestConfig.scales is empty")
        if len(scales) > 1 and 1.0 not in scales:
            raise ValueError(f"multi-scale test needs scale 1.0 among the scales (its tags group the joints, as "
                             f"the reference); got {scales}")
        if self.nms_kernel < 1 or self.nms_kernel % 2 == 0:
            raise ValueError(f"nms_kernel must be odd and >= 1, got {self.nms_kernel}")


def _up2(x: jax.Array, axis: int) -> jax.Array:
    """Exact 2x bilinear upsampling (align_corners=False) along ``axis``: output ``2i`` = 0.25 x[i-1] + 0.75 x[i],
    ``2i+1`` = 0.75 x[i] + 0.25 x[i+1], indices clamped at the border (PyTorch's source-index rule)."""
    n = x.shape[axis]
    prev = jnp.concatenate([jax.lax.slice_in_dim(x, 0, 1, axis=axis), jax.lax.slice_in_dim(x, 0, n - 1, axis=axis)],
                           axis=axis)
    nxt = jnp.concatenate([jax.lax.slice_in_dim(x, 1, n, axis=axis), jax.lax.slice_in_dim(x, n - 1, n, axis=axis)],
                          axis=axis)
    even, odd = 0.25 * prev + 0.75 * x, 0.75 * x + 0.25 * nxt
    out = jnp.stack([even, odd], axis=axis + 1)
    return out.reshape(x.shape[:axis] + (2 * n,) + x.shape[axis + 1:])


def _resize(x: jax.Array, size: Sequence[int]) -> jax.Array:
    """``F.interpolate(mode='bilinear', align_corners=False)`` of NHWC ``x`` to ``size`` (H, W). The exact 2x case
    (HigherHRNet's 1/4 -> 1/2 and 1/2 -> input steps) takes two taps per output instead of the dense
    interpolation matrices of :func:`hrnet_jax.models.layers.resize_bilinear`."""
    x = x.astype(jnp.float32)
    h, w = int(size[0]), int(size[1])
    if (h, w) == (2 * x.shape[1], 2 * x.shape[2]):
        return _up2(_up2(x, 1), 2)
    return resize_bilinear(x, (h, w), False)


def stage_maps(outputs: Sequence[jax.Array], num_joints: int, with_heatmaps=(True, True),
               with_ae=(True, False)) -> tuple[jax.Array, list]:
    """One forward pass's outputs -> (heatmaps averaged over stages, [tags]) at the last output's size."""
    k = int(num_joints)
    size = outputs[-1].shape[1:3]
    hm, n, tags = 0.0, 0, []
    for i, out in enumerate(outputs):
        out = out.astype(jnp.float32)
        if i != len(outputs) - 1:
            out = _resize(out, size)
        if with_heatmaps[i]:
            hm = hm + out[..., :k]
            n += 1
        if with_ae[i]:
            tags.append(out[..., k:])
    if n == 0:
        raise ValueError("with_heatmaps selects no output stage")
    return hm / n, tags


def scale_maps(apply_fn: Callable, images: jax.Array, num_joints: int, flip_index: Sequence[int] | None,
               cfg: TestConfig, base_size: Sequence[int] | None) -> tuple[list, list]:
    """The reference's ``get_multi_stage_outputs`` for one scale: ([heatmaps, heatmaps_flipped], [tags...]),
    projected to ``base_size`` when ``cfg.project2image``."""
    b = images.shape[0]
    x = jnp.concatenate([images, images[:, :, ::-1]], axis=0) if cfg.flip else images
    outputs = apply_fn(x)
    if not isinstance(outputs, (tuple, list)):
        outputs = (outputs,)
    hm, tags = stage_maps([o[:b] for o in outputs], num_joints, cfg.with_heatmaps, cfg.with_ae)
    heatmaps = [hm]
    if cfg.flip:
        if flip_index is None:
            raise ValueError("flip test needs flip_index (KeypointSpec.flip_permutation())")
        perm = jnp.asarray(np.asarray(flip_index, np.int32))
        if perm.shape[0] != int(num_joints):
            raise ValueError(f"flip_index has {perm.shape[0]} entries for {num_joints} joints")
        size = outputs[-1].shape[1:3]
        flipped = [(_resize(o[b:], size) if i != len(outputs) - 1 else o[b:].astype(jnp.float32))[:, :, ::-1]
                   for i, o in enumerate(outputs)]
        hm_f, tags_f = stage_maps(flipped, num_joints, cfg.with_heatmaps, cfg.with_ae)
        heatmaps.append(hm_f[..., perm])
        tags = tags + [t[..., perm] for t in tags_f]
    if cfg.project2image and base_size is not None:
        heatmaps = [_resize(h, base_size) for h in heatmaps]
        tags = [_resize(t, base_size) for t in tags]
    return heatmaps, tags


def multi_scale_maps(apply_fn: Callable, images_per_scale: Sequence[jax.Array], num_joints: int,
                     flip_index: Sequence[int] | None, base_size: Sequence[int], cfg: TestConfig = TestConfig()
                     ) -> dict:
    """Aggregated maps of all scales (the reference's scale loop of tools/valid.py + ``aggregate_results``).

    ``images_per_scale[i]`` (B, Hs, Ws, 3) is the normalised input at ``cfg.scales[i]``; ``base_size`` (H, W) the
    input size at scale 1.0. Returns ``{"heatmaps": (B, H, W, K), "tags": (B, H, W, K, T)}`` (at ``base_size``
    with PROJECT2IMAGE, else at the largest scale's output size)."""
    if len(images_per_scale) != len(cfg.scales):
        raise ValueError(f"{len(images_per_scale)} image tensors for {len(cfg.scales)} scales {cfg.scales}")
    order = sorted(range(len(cfg.scales)), key=lambda i: -cfg.scales[i])  # sorted(SCALE_FACTOR, reverse=True)
    final, tags_list = None, []
    for i in order:
        s = cfg.scales[i]
        heatmaps, tags = scale_maps(apply_fn, images_per_scale[i], num_joints, flip_index, cfg, base_size)
        if s == 1.0 or len(cfg.scales) == 1:
            if final is not None and not cfg.project2image:
                tags = [_resize(t, final.shape[1:3]) for t in tags]
            tags_list.extend(tags)
        avg = (heatmaps[0] + heatmaps[1]) / 2.0 if cfg.flip else heatmaps[0]
        if final is None:
            final = avg
        elif cfg.project2image:
            final = final + avg
        else:
            final = final + _resize(avg, final.shape[1:3])
    final = final / float(len(cfg.scales))
    return {"heatmaps": final, "tags": jnp.stack(tags_list, axis=-1)}


def heatmap_nms(heatmaps: jax.Array, kernel: int = 5, padding: int = 2) -> jax.Array:
    """``det * (maxpool(det) == det)`` with ``MaxPool2d(kernel, 1, padding)`` (-inf padding) on (B, H, W, K)."""
    pool = jax.lax.reduce_window(heatmaps, -jnp.inf, jax.lax.max, (1, kernel, kernel, 1), (1, 1, 1, 1),
                                 ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    return heatmaps * (pool == heatmaps).astype(heatmaps.dtype)


def top_k(heatmaps: jax.Array, tags: jax.Array, k: int = 30, nms_kernel: int = 5, nms_padding: int = 2) -> dict:
    """The reference's ``HeatmapParser.top_k`` on NHWC maps: NMS, then the ``k`` best cells of every joint.

    ``heatmaps`` (B, H, W, K), ``tags`` (B, H, W, K, T) -> ``vals`` (B, K, k), ``tags`` (B, K, k, T),
    ``locs`` (B, K, k, 2) int32 as (x, y). Ties keep the lower flat index first."""
    b, h, w, nj = heatmaps.shape
    det = heatmap_nms(heatmaps.astype(jnp.float32), nms_kernel, nms_padding)
    flat = jnp.transpose(det, (0, 3, 1, 2)).reshape(b, nj, h * w)
    vals, ind = jax.lax.top_k(flat, int(k))
    t = jnp.transpose(tags, (0, 3, 1, 2, 4)).reshape(b, nj, h * w, tags.shape[-1])
    tags_k = jnp.take_along_axis(t, ind[..., None], axis=2)
    locs = jnp.stack([ind % w, ind // w], axis=-1).astype(jnp.int32)
    return {"vals": vals, "tags": tags_k, "locs": locs}


BLOCK = 16  # side of the blocks whose statistics the grouping's refine step prunes with


def block_stats(heatmaps: jax.Array, tags: jax.Array, block: int = BLOCK) -> dict:
    """Per ``block`` x ``block`` cells (the last blocks cut by the border): the largest heatmap value
    ``block_max`` (B, K, hb, wb) and the tags' bounding box ``block_tag_min`` / ``block_tag_max``
    (B, K, hb, wb, T), from NHWC ``heatmaps`` (B, H, W, K) and ``tags`` (B, H, W, K, T)."""
    _, h, w, _ = heatmaps.shape
    pad = ((0, 0), (0, -h % block), (0, -w % block), (0, 0))

    def red(x, init, op):
        win = (1, block, block) + (1,) * (x.ndim - 3)
        return jax.lax.reduce_window(x, init, op, win, win, pad + ((0, 0),) * (x.ndim - 4))

    hm = heatmaps.astype(jnp.float32)
    tg = tags.astype(jnp.float32)
    return {"block_max": jnp.transpose(red(hm, -jnp.inf, jax.lax.max), (0, 3, 1, 2)),
            "block_tag_min": jnp.transpose(red(tg, jnp.inf, jax.lax.min), (0, 3, 1, 2, 4)),
            "block_tag_max": jnp.transpose(red(tg, -jnp.inf, jax.lax.max), (0, 3, 1, 2, 4))}


def detect(heatmaps: jax.Array, tags: jax.Array, nms_kernel: int = 5, nms_padding: int = 2, k: int = 30) -> dict:
    """Top-k candidates plus what the grouping reads (channel-first: per-joint planes are contiguous on the
    host): ``vals``, ``tags``, ``locs`` as :func:`top_k`, ``heatmaps`` (B, K, H, W), ``tagmaps`` (B, K, H, W, T)
    and the :func:`block_stats` of the maps."""
    out = top_k(heatmaps, tags, k, nms_kernel, nms_padding)
    out["heatmaps"] = jnp.transpose(heatmaps.astype(jnp.float32), (0, 3, 1, 2))
    out["tagmaps"] = jnp.transpose(tags.astype(jnp.float32), (0, 3, 1, 2, 4))
    out.update(block_stats(heatmaps, tags))
    return out


def inference_fn(apply_fn: Callable, num_joints: int, flip_index: Sequence[int] | None,
                 base_size: Sequence[int], cfg: TestConfig = TestConfig()) -> Callable:
    """``fn(*images_per_scale) -> detect(...)`` dict: the whole device side of bottom-up inference, to be jitted
    (``jax.jit(fn)``) or compiled once per input-size bucket."""
    def fn(*images_per_scale):
        maps = multi_scale_maps(apply_fn, images_per_scale, num_joints, flip_index, base_size, cfg)
        return detect(maps["heatmaps"], maps["tags"], cfg.nms_kernel, cfg.nms_padding, cfg.top_k)
    return fn
