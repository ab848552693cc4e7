"""Associative-embedding grouping of HigherHRNet candidates into people (host numpy), vectorised.

The algorithm is the reference's ``HeatmapParser.parse`` (HigherHRNet lib/core/group.py: ``match_by_tag``,
``adjust``, ``refine``); only the evaluation order differs:

* matching: the joints in ``joint_order``; candidates of a joint with value > ``detection_threshold``; the first
  joint (or any joint while nobody exists) starts one person per candidate; otherwise the candidates are matched to
  the first ``max_num_people`` people by the L2 distance of their tag to each person's mean tag, with the cost
  ``round(distance) * 100 - value`` (``use_detection_val``) and the Hungarian assignment (columns padded with 1e10
  when there are more candidates than people); a pair whose distance is >= ``tag_threshold`` (or a padded column)
  starts a new person. With ``ignore_too_much`` a joint is skipped once ``max_num_people`` people exist.
  Here each step is a handful of array operations over all candidates and people (running tag sums instead of
  per-person lists; ``scipy.optimize.linear_sum_assignment`` for the assignment).
* adjust: every found joint moves from its cell (x, y) to (x + 0.5 ± 0.25, y + 0.5 ± 0.25), towards the larger
  horizontal / vertical neighbour (ties: -0.25; neighbours clipped at the border) — all joints at once.
* person score: the mean over the K joints of the joint values (0 for missing joints), after adjust, before
  refine (the reference's ``scores``).
* refine: for a person missing joint i, the cell maximising ``heatmap_i - round(||tag_i - mean tag||)`` (mean
  tag of the person's found joints, read from the tag maps at their cells) is taken, with the quarter offset, if
  its heatmap value is > 0. The reference scans the whole map for every person and every joint; here the same
  maximum (and the same first maximum in row-major order) is found exactly by branch and bound over 16x16
  blocks, for all people missing the joint at once (see :func:`refine`).

Coordinates are heatmap cells of the aggregated maps (the input image size at scale 1 with PROJECT2IMAGE).
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, Optional, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

# The reference's joint order for COCO-17 (1-based [1..7, 12, 13, 8..11, 14..17]): head, shoulders, hips,
# then elbows, wrists, knees, ankles.
COCO_JOINT_ORDER = (0, 1, 2, 3, 4, 5, 6, 11, 12, 7, 8, 9, 10, 13, 14, 15, 16)


@dataclasses.dataclass(frozen=True)
class GroupingParams:
    """TEST / DATASET settings of the HigherHRNet COCO yamls (DETECTION_THRESHOLD 0.1 there, 0.2 the default)."""
    num_joints: int = 17
    max_num_people: int = 30
    detection_threshold: float = 0.1
    tag_threshold: float = 1.0
    use_detection_val: bool = True
    ignore_too_much: bool = False
    adjust: bool = True
    refine: bool = True
    joint_order: Optional[tuple] = None  # None: COCO_JOINT_ORDER for 17 joints, else 0..K-1

    def order(self) -> tuple:
        if self.joint_order is not None:
            order = tuple(int(j) for j in self.joint_order)
            if sorted(order) != list(range(self.num_joints)):
                raise ValueError(f"joint_order {order} is not a permutation of 0..{self.num_joints - 1}")
            return order
        return COCO_JOINT_ORDER if self.num_joints == 17 else tuple(range(self.num_joints))


def match_by_tag(vals: np.ndarray, tags: np.ndarray, locs: np.ndarray, params: GroupingParams) -> np.ndarray:
    """Candidates of one image (``vals`` (K, k), ``tags`` (K, k, T), ``locs`` (K, k, 2) (x, y)) -> people
    (N, K, 3 + T) float32 rows [x, y, value, tag...], in order of creation (zeros for missing joints)."""
    nj, k = vals.shape
    t = tags.shape[-1]
    if nj != params.num_joints:
        raise ValueError(f"{nj} joints in the candidates, GroupingParams.num_joints = {params.num_joints}")
    tags = np.asarray(tags, np.float32)
    cand = np.concatenate([np.asarray(locs, np.float64), np.asarray(vals, np.float64)[..., None],
                           tags.astype(np.float64)], axis=-1)                       # (K, k, 3 + T)
    cap = nj * k
    people = np.zeros((cap, nj, 3 + t), np.float64)
    tag_sum = np.zeros((cap, t), np.float32)
    tag_cnt = np.zeros((cap,), np.int64)
    n = 0
    for i, idx in enumerate(params.order()):
        keep = vals[idx] > params.detection_threshold
        if not keep.any():
            continue
        joints, jtags = cand[idx][keep], tags[idx][keep]
        if i == 0 or n == 0:
            new = np.arange(joints.shape[0])
        else:
            grouped = min(n, params.max_num_people)
            if params.ignore_too_much and grouped == params.max_num_people:
                continue
            mean = tag_sum[:grouped] / tag_cnt[:grouped, None].astype(np.float32)
            dist = np.linalg.norm(joints[:, None, 3:] - mean[None].astype(np.float64), ord=2, axis=2)
            cost = np.round(dist) * 100 - joints[:, 2:3] if params.use_detection_val else dist.copy()
            added = joints.shape[0]
            if added > grouped:
                cost = np.concatenate([cost, np.full((added, added - grouped), 1e10)], axis=1)
            rows, cols = linear_sum_assignment(cost)
            ok = cols < grouped
            ok[ok] = dist[rows[ok], cols[ok]] < params.tag_threshold
            r, c = rows[ok], cols[ok]
            people[c, idx] = joints[r]
            tag_sum[c] += jtags[r]
            tag_cnt[c] += 1
            new = rows[~ok]
        m = new.shape[0]
        people[n:n + m, idx] = joints[new]
        tag_sum[n:n + m] = jtags[new]
        tag_cnt[n:n + m] = 1
        n += m
    return people[:n].astype(np.float32)


def _quarter(hm: np.ndarray, j: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """±0.25 towards the larger horizontal / vertical neighbour of cells (x, y) of planes j (ties: -0.25)."""
    _, h, w = hm.shape
    dx = np.where(hm[j, y, np.minimum(x + 1, w - 1)] > hm[j, y, np.maximum(x - 1, 0)], 0.25, -0.25)
    dy = np.where(hm[j, np.minimum(y + 1, h - 1), x] > hm[j, np.maximum(y - 1, 0), x], 0.25, -0.25)
    return dx, dy


def adjust(people: np.ndarray, heatmaps: np.ndarray) -> np.ndarray:
    """The reference's ``adjust``: found joints (value > 0) -> cell + 0.5 ± 0.25 per axis. ``heatmaps`` (K, H, W)."""
    out = people.copy()
    p, j = np.nonzero(people[..., 2] > 0)
    x = people[p, j, 0].astype(np.int64)
    y = people[p, j, 1].astype(np.int64)
    dx, dy = _quarter(heatmaps, j, x, y)
    out[p, j, 0] = x + dx + 0.5
    out[p, j, 1] = y + dy + 0.5
    return out


_BLOCK = 16  # refine: cells per block side of the pruning grid (= inference.BLOCK)


def block_stats(heatmaps: np.ndarray, tagmaps: np.ndarray, block: int = _BLOCK) -> tuple:
    """Host fallback of :func:`hrnet_jax.tasks.bottomup.inference.block_stats` for one image: per block the
    largest heatmap value (K, hb, wb) and the tags' bounding box (K, hb, wb, T) x 2 (padding ignored)."""
    nj, h, w = heatmaps.shape
    t = tagmaps.shape[-1]
    hb, wb = -(-h // block), -(-w // block)
    ph, pw = hb * block - h, wb * block - w
    det = np.pad(heatmaps, ((0, 0), (0, ph), (0, pw)), constant_values=-np.inf)
    tag = np.ascontiguousarray(np.moveaxis(tagmaps, -1, 1))                        # (K, T, H, W)
    lo = np.pad(tag, ((0, 0), (0, 0), (0, ph), (0, pw)), constant_values=np.inf)
    hi = np.pad(tag, ((0, 0), (0, 0), (0, ph), (0, pw)), constant_values=-np.inf)
    shape = (nj, hb, block, wb, block)
    bmax = det.reshape(shape).max(axis=4).max(axis=2)
    tmin = lo.reshape((nj, t) + shape[1:]).min(axis=5).min(axis=3)
    tmax = hi.reshape((nj, t) + shape[1:]).max(axis=5).max(axis=3)
    return bmax, np.moveaxis(tmin, 1, -1), np.moveaxis(tmax, 1, -1)


def _scores(det: np.ndarray, tag: np.ndarray, prev: np.ndarray) -> np.ndarray:
    """The reference's refine score ``det - round(||tag - prev||)`` (float32, same operations)."""
    return det - np.round(np.sqrt(((tag - prev) ** 2).sum(axis=-1)))


def refine(people: np.ndarray, heatmaps: np.ndarray, tagmaps: np.ndarray, vals: np.ndarray,
           locs: np.ndarray, blocks: Optional[tuple] = None) -> np.ndarray:
    """The reference's ``refine`` for all people at once: fills missing joints (value == 0) from the heatmap near
    the person's mean tag. ``heatmaps`` (K, H, W), ``tagmaps`` (K, H, W, T); the candidates ``vals`` (K, k) and
    ``locs`` (K, k, 2) give the first lower bound of each maximum; ``blocks`` = :func:`block_stats` of the maps
    (computed here when not given; the device side gives them).

    Exact branch and bound over 16x16 blocks of the map: a block's score is at most its largest heatmap value minus
    ``round`` of the distance from the person's tag to the block's tag bounding box (``round`` is monotone; the
    distance is shrunk by a relative 1e-6 against float rounding). The lower bound of a person's maximum is the
    best of the joint's top-k candidates and of its most promising block, computed exactly; only blocks whose
    upper bound reaches it are evaluated, all (person, block) pairs in one array. The first maximum in row-major
    order is kept, as ``np.argmax`` over the whole map."""
    out = people.copy()
    n, nj = people.shape[:2]
    if n == 0:
        return out
    _, h, w = heatmaps.shape
    t = tagmaps.shape[-1]
    bs = _BLOCK
    hb, wb = -(-h // bs), -(-w // bs)
    ph, pw = hb * bs - h, wb * bs - w
    hm_flat = heatmaps.reshape(nj, h * w)
    tag_flat = tagmaps.reshape(nj, h * w, t)
    found = people[..., 2] > 0                                                     # (N, K)
    xi = people[..., 0].astype(np.int32).clip(0, w - 1)
    yi = people[..., 1].astype(np.int32).clip(0, h - 1)
    own = tag_flat[np.arange(nj)[None, :], yi * w + xi]                            # (N, K, T) float32
    own = np.where(found[..., None], own, np.float32(0))
    prev = own.sum(axis=1, dtype=np.float32) / np.maximum(found.sum(axis=1), 1).astype(np.float32)[:, None]
    cand_flat = locs[..., 1].astype(np.int64) * w + locs[..., 0]                   # (K, k)
    if blocks is None:
        blocks = block_stats(heatmaps, tagmaps, bs)
    bmax_all, tmin_all, tmax_all = (np.asarray(b) for b in blocks)
    if bmax_all.shape != (nj, hb, wb):
        raise ValueError(f"block statistics of shape {bmax_all.shape}; expected {(nj, hb, wb)} ({bs}x{bs} blocks)")
    for i in range(nj):
        who = np.flatnonzero(~found[:, i])
        if who.size == 0:
            continue
        pv = prev[who]                                                             # (P, T)
        ci = cand_flat[i]
        lower = _scores(hm_flat[i, ci][None], tag_flat[i, ci][None], pv[:, None]).max(axis=1)   # (P,)
        det, tag = heatmaps[i], tagmaps[i]
        if ph or pw:  # padding cells: -inf heatmap (never chosen)
            det = np.pad(det, ((0, ph), (0, pw)), constant_values=-np.inf)
            tag = np.pad(tag, ((0, ph), (0, pw), (0, 0)))
        d4 = det.reshape(hb, bs, wb, bs)
        t5 = tag.reshape(hb, bs, wb, bs, t)
        bmax = bmax_all[i].reshape(-1)                                             # (B,)
        tmin = tmin_all[i].reshape(-1, t)
        tmax = tmax_all[i].reshape(-1, t)
        gap = np.maximum(tmin[None] - pv[:, None], 0) + np.maximum(pv[:, None] - tmax[None], 0)   # (P, B, T)
        dlb = np.sqrt((gap.astype(np.float64) ** 2).sum(axis=-1)) * (1 - 1e-6)
        upper = bmax[None] - np.round(dlb)                                         # (P, B)
        top = np.argmax(upper, axis=1)                                             # most promising block
        ty, tx = top // wb, top % wb
        lower = np.maximum(lower, _scores(d4[ty, :, tx, :], t5[ty, :, tx, :, :], pv[:, None, None]).max(axis=(1, 2)))
        pp, bb = np.nonzero(upper >= lower[:, None] - 1e-6)                        # pairs, sorted by person
        by, bx = bb // wb, bb % wb
        sc = _scores(d4[by, :, bx, :], t5[by, :, bx, :, :], pv[pp][:, None, None]).reshape(len(pp), bs * bs)
        arg = np.argmax(sc, axis=1)                                                # first maximum in the block
        pair_max = sc[np.arange(len(pp)), arg]
        cell = (by * bs + arg // bs) * w + bx * bs + arg % bs                      # its flat map index
        starts = np.flatnonzero(np.r_[True, pp[1:] != pp[:-1]])
        best = np.maximum.reduceat(pair_max, starts)      # (P,): every person has a pair (its best block)
        flat = np.minimum.reduceat(np.where(pair_max == best[pp], cell, h * w), starts)
        y, x = flat // w, flat % w
        val = hm_flat[i, flat]
        dx, dy = _quarter(heatmaps, np.full_like(x, i), x, y)
        fill = val > 0
        out[who[fill], i, 0] = (x + 0.5 + dx)[fill]
        out[who[fill], i, 1] = (y + 0.5 + dy)[fill]
        out[who[fill], i, 2] = val[fill]
    return out


def group(det: Mapping[str, np.ndarray], params: GroupingParams = GroupingParams()) -> tuple[np.ndarray, np.ndarray]:
    """People of ONE image from :func:`hrnet_jax.tasks.bottomup.inference.detect`'s output (batch index taken,
    numpy): ``(people (N, K, 3 + T) float32 [x, y, value, tag...], scores (N,) float32)``."""
    vals, tags, locs = (np.asarray(det[key]) for key in ("vals", "tags", "locs"))
    people = match_by_tag(vals, tags, locs, params)
    heatmaps = np.asarray(det["heatmaps"], np.float32)
    if params.adjust:
        people = adjust(people, heatmaps)
    scores = people[..., 2].mean(axis=1) if len(people) else np.zeros((0,), np.float32)
    if params.refine and len(people):
        blocks = tuple(det[k] for k in ("block_max", "block_tag_min", "block_tag_max")) if "block_max" in det \
            else None
        people = refine(people, heatmaps, np.asarray(det["tagmaps"], np.float32), vals, locs, blocks)
    return people, scores.astype(np.float32)


def group_batch(det: Mapping[str, np.ndarray], params: GroupingParams = GroupingParams()) -> list:
    """:func:`group` for every image of a batched ``detect`` output."""
    det = {k: np.asarray(v) for k, v in det.items()}
    return [group({k: v[b] for k, v in det.items()}, params) for b in range(det["vals"].shape[0])]
