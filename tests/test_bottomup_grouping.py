"""Bottom-up inference and grouping, each against an independent computation:

* heatmap NMS and top-k: numpy (a max-pool written out, a stable argsort);
* flip / two-stage / multi-scale aggregation: the reference's get_multi_stage_outputs + aggregate_results
  re-computed with torch (``F.interpolate``, ``torch.flip``) on a fake network computable in both;
* grouping: synthetic people (known positions and tags, touching people, missing joints) are recovered, and the
  vectorised grouping equals a straightforward per-person-loop implementation of the reference's algorithm
  (match_by_tag / adjust / refine, written below) on random inputs.
"""
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

import jax
import jax.numpy as jnp

from hrnet_jax.tasks.bottomup import inference as bu
from hrnet_jax.tasks.bottomup.grouping import COCO_JOINT_ORDER, GroupingParams, group

COCO_FLIP = [0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15]


# ------------------------------------------------------------------------------------------ NMS and top-k

def _np_nms(hm, k, pad):
    b, h, w, c = hm.shape
    p = np.full((b, h + 2 * pad, w + 2 * pad, c), -np.inf, hm.dtype)
    p[:, pad:pad + h, pad:pad + w] = hm
    pool = np.full_like(hm, -np.inf)
    for dy in range(k):
        for dx in range(k):
            pool = np.maximum(pool, p[:, dy:dy + h, dx:dx + w])
    return hm * (pool == hm)


def test_nms_and_top_k_equal_numpy():
    rng = np.random.RandomState(0)
    hm = rng.rand(2, 12, 10, 3).astype(np.float32)
    hm[0, 3, 4:6, 1] = 2.0  # a two-cell plateau: both kept, as MaxPool2d + eq
    tags = rng.randn(2, 12, 10, 3, 2).astype(np.float32)
    for kernel, pad in ((5, 2), (3, 1)):
        np.testing.assert_array_equal(np.asarray(bu.heatmap_nms(jnp.asarray(hm), kernel, pad)),
                                      _np_nms(hm, kernel, pad))
    out = jax.jit(lambda h, t: bu.top_k(h, t, 7, 5, 2))(hm, tags)
    det = _np_nms(hm, 5, 2).transpose(0, 3, 1, 2).reshape(2, 3, -1)
    ind = np.argsort(-det, axis=-1, kind="stable")[..., :7]
    np.testing.assert_array_equal(np.asarray(out["vals"]), np.take_along_axis(det, ind, -1))
    np.testing.assert_array_equal(np.asarray(out["locs"]), np.stack([ind % 10, ind // 10], -1))
    t = tags.transpose(0, 3, 1, 2, 4).reshape(2, 3, -1, 2)
    np.testing.assert_array_equal(np.asarray(out["tags"]), np.take_along_axis(t, ind[..., None], 2))
    assert out["vals"][0, 1, 0] == 2.0 and out["vals"][0, 1, 1] == 2.0


# ------------------------------------------------------------------------------- multi-stage / multi-scale

K = 4
FLIP4 = [1, 0, 2, 3]
W_Q = np.random.RandomState(1).randn(3, 2 * K).astype(np.float32)
W_H = np.random.RandomState(2).randn(3, K).astype(np.float32)


def _fake_apply(x):
    """A stand-in network: average pooling to 1/4 and 1/2, then a 1x1 projection (NHWC, jax)."""
    b, h, w, _ = x.shape
    q = x.reshape(b, h // 4, 4, w // 4, 4, 3).mean((2, 4)) @ W_Q
    hh = x.reshape(b, h // 2, 2, w // 2, 2, 3).mean((2, 4)) @ W_H
    return q + x[:, ::4, ::4, :1] ** 2, hh


def _torch_reference(images, scales, base_hw, flip, project):
    """tools/valid.py's scale loop with get_multi_stage_outputs and aggregate_results, in torch (NCHW)."""
    import torch
    import torch.nn.functional as F

    def net(x):  # the same fake network in torch
        b, _, h, w = x.shape
        q = F.avg_pool2d(x, 4).permute(0, 2, 3, 1) @ torch.from_numpy(W_Q)
        hh = F.avg_pool2d(x, 2).permute(0, 2, 3, 1) @ torch.from_numpy(W_H)
        q = q.permute(0, 3, 1, 2) + x[:, :1, ::4, ::4] ** 2
        return [q, hh.permute(0, 3, 1, 2)]

    def interp(t, size):
        return F.interpolate(t, size=size, mode="bilinear", align_corners=False)

    final, tags_list = None, []
    for s in sorted(scales, reverse=True):
        x = torch.from_numpy(np.ascontiguousarray(images[s].transpose(0, 3, 1, 2)))
        heatmaps, tags = [], []
        for flipped in ((False, True) if flip else (False,)):
            outs = net(torch.flip(x, [3]) if flipped else x)
            avg, n = 0, 0
            for i, o in enumerate(outs):
                if i != len(outs) - 1:
                    o = interp(o, outs[-1].shape[2:])
                if flipped:
                    o = torch.flip(o, [3])
                avg, n = avg + o[:, :K], n + 1
                if i == 0:
                    tags.append(o[:, K:][:, FLIP4] if flipped else o[:, K:])
            heatmaps.append((avg / n)[:, FLIP4] if flipped else avg / n)
        if project:
            heatmaps = [interp(h, base_hw) for h in heatmaps]
            tags = [interp(t, base_hw) for t in tags]
        if s == 1 or len(scales) == 1:
            if final is not None and not project:
                tags = [interp(t, final.shape[2:]) for t in tags]
            tags_list += [t.unsqueeze(4) for t in tags]
        hm = (heatmaps[0] + heatmaps[1]) / 2.0 if flip else heatmaps[0]
        if final is None:
            final = hm
        else:
            final = final + (hm if project else interp(hm, final.shape[2:]))
    final = final / float(len(scales))
    return final.numpy().transpose(0, 2, 3, 1), torch.cat(tags_list, 4).numpy().transpose(0, 2, 3, 1, 4)


@pytest.mark.parametrize("scales,flip,project", [((1.0,), True, True), ((2.0, 1.0, 0.5), True, True),
                                                 ((1.0, 0.5), False, False), ((0.5, 1.0), True, False)])
def test_multi_scale_aggregation_equals_torch_reference(scales, flip, project):
    pytest.importorskip("torch")
    rng = np.random.RandomState(0)
    sizes = {s: (int(32 * s), int(48 * s)) for s in scales}
    images = {s: rng.randn(2, *sizes[s], 3).astype(np.float32) for s in scales}
    base = (32, 48)
    cfg = bu.TestConfig(flip=flip, scales=scales, project2image=project)
    fn = jax.jit(lambda *ims: bu.multi_scale_maps(_fake_apply, ims, K, FLIP4, base, cfg))
    out = fn(*[images[s] for s in scales])
    ref_hm, ref_tags = _torch_reference(images, scales, base, flip, project)
    assert out["heatmaps"].shape == ref_hm.shape and out["tags"].shape == ref_tags.shape
    np.testing.assert_allclose(np.asarray(out["heatmaps"]), ref_hm, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(out["tags"]), ref_tags, rtol=1e-4, atol=1e-4)


def test_test_config_errors_name_the_problem():
    with pytest.raises(ValueError, match="1.0"):
        bu.TestConfig(scales=(2.0, 0.5))
    with pytest.raises(ValueError, match="odd"):
        bu.TestConfig(nms_kernel=4)
    with pytest.raises(ValueError, match="flip_index"):
        bu.multi_scale_maps(_fake_apply, (np.zeros((1, 32, 32, 3), np.float32),), K, None, (32, 32))


# ------------------------------------------------------------------ reference grouping (per-person loops)

def reference_group(vals, tags, locs, hm, tm, p: GroupingParams):
    """HeatmapParser.parse of the reference, written plainly: a list of people, loops over people and joints,
    the whole map scanned per person and joint in refine. hm (K, H, W), tm (K, H, W, T)."""
    nj, t = vals.shape[0], tags.shape[-1]
    people = []  # [joints (K, 3 + T) float64, list of tags]
    for i, idx in enumerate(p.order()):
        cands = [np.concatenate([locs[idx, c].astype(np.float64), [vals[idx, c]], tags[idx, c]])
                 for c in range(vals.shape[1]) if vals[idx, c] > p.detection_threshold]
        if not cands:
            continue
        if i == 0 or not people:
            for c in cands:
                people.append([np.zeros((nj, 3 + t)), [c[3:].astype(np.float32)]])
                people[-1][0][idx] = c
            continue
        grouped = people[:p.max_num_people]
        if p.ignore_too_much and len(grouped) == p.max_num_people:
            continue
        means = [np.mean(np.array(person[1], np.float32), axis=0) for person in grouped]
        dist = np.zeros((len(cands), len(grouped)))
        for r, c in enumerate(cands):
            for q, m in enumerate(means):
                dist[r, q] = np.linalg.norm(c[3:] - m)
        cost = np.round(dist) * 100 - np.array([c[2] for c in cands])[:, None] if p.use_detection_val else dist.copy()
        if len(cands) > len(grouped):
            cost = np.concatenate([cost, np.full((len(cands), len(cands) - len(grouped)), 1e10)], 1)
        for r, q in zip(*linear_sum_assignment(cost)):
            if q < len(grouped) and dist[r, q] < p.tag_threshold:
                grouped[q][0][idx] = cands[r]
                grouped[q][1].append(cands[r][3:].astype(np.float32))
            else:
                people.append([np.zeros((nj, 3 + t)), [cands[r][3:].astype(np.float32)]])
                people[-1][0][idx] = cands[r]
    ans = [person[0].astype(np.float32) for person in people]
    h, w = hm.shape[1:]
    if p.adjust:
        for person in ans:
            for j in range(nj):
                if person[j, 2] > 0:
                    x, y = person[j, :2]
                    xi, yi = int(x), int(y)
                    x += 0.25 if hm[j, yi, min(xi + 1, w - 1)] > hm[j, yi, max(xi - 1, 0)] else -0.25
                    y += 0.25 if hm[j, min(yi + 1, h - 1), xi] > hm[j, max(yi - 1, 0), xi] else -0.25
                    person[j, :2] = (x + 0.5, y + 0.5)
    scores = [person[:, 2].mean() for person in ans]
    if p.refine:
        for person in ans:
            own = [tm[j, int(person[j, 1]), int(person[j, 0])] for j in range(nj) if person[j, 2] > 0]
            prev = np.mean(own, axis=0)
            found = []
            for j in range(nj):
                score = hm[j] - np.round(np.sqrt(((tm[j] - prev[None, None]) ** 2).sum(axis=2)))
                y, x = np.unravel_index(np.argmax(score), score.shape)
                val = hm[j, y, x]
                dx = 0.25 if hm[j, y, min(x + 1, w - 1)] > hm[j, y, max(x - 1, 0)] else -0.25
                dy = 0.25 if hm[j, min(y + 1, h - 1), x] > hm[j, max(y - 1, 0), x] else -0.25
                found.append((x + 0.5 + dx, y + 0.5 + dy, val))
            for j in range(nj):
                if found[j][2] > 0 and person[j, 2] == 0:
                    person[j, :3] = found[j]
    return (np.stack(ans) if ans else np.zeros((0, nj, 3 + t), np.float32)), np.array(scores, np.float32)


# ------------------------------------------------------------------------------------ synthetic scenes

def _scene(rng, people, h, w, nj, sigma=1.0, tag_noise=0.0, t=1):
    """Heatmaps (K, H, W): a Gaussian of peak ``amp`` at each present joint (max over people); tag maps
    (K, H, W, T): each cell takes the tag of the person whose joint k is nearest (+ optional noise)."""
    yy, xx = np.mgrid[:h, :w]
    hm = np.zeros((nj, h, w), np.float32)
    tm = np.zeros((nj, h, w, t), np.float32)
    for k in range(nj):
        best = np.full((h, w), np.inf)
        for tag, joints in people:
            if k not in joints:
                continue
            x, y, amp = joints[k]
            d2 = (xx - x) ** 2 + (yy - y) ** 2
            hm[k] = np.maximum(hm[k], amp * np.exp(-d2 / (2 * sigma ** 2)))
            closer = d2 < best
            best = np.where(closer, d2, best)
            tm[k][closer] = tag
    tm += tag_noise * rng.randn(*tm.shape).astype(np.float32)
    return hm, tm


def _detect(hm, tm, k=30):
    out = bu.detect(jnp.asarray(hm.transpose(1, 2, 0)[None]), jnp.asarray(tm.transpose(1, 2, 0, 3)[None]), 5, 2, k)
    return {key: np.asarray(v)[0] for key, v in out.items()}


def test_grouping_recovers_synthetic_people_touching_and_with_missing_joints():
    rng = np.random.RandomState(0)
    nj, h, w = 17, 64, 64
    truth = []
    for n, (ox, oy, tag) in enumerate([(8, 8, -3.0), (30, 10, 0.0), (34, 10, 3.0), (12, 40, 6.0)]):
        joints = {k: (ox + (k % 4) * 3 + (n == 2), oy + (k // 4) * 4, 0.5 + 0.5 * rng.rand()) for k in range(nj)}
        truth.append((tag, joints))
    # person 1 and 2 touch: same joint types 4 (or 5) cells apart; person 3 misses joints 9, 10 and 16
    for k in (9, 10, 16):
        del truth[3][1][k]
    hm, tm = _scene(rng, truth, h, w, nj)
    people, scores = group(_detect(hm, tm), GroupingParams(refine=False))
    assert len(people) == len(truth)
    for tag, joints in truth:
        match = [i for i, p in enumerate(people) if np.all(np.abs(p[p[:, 2] > 0, 3] - tag) < 1e-6)]
        assert len(match) == 1
        person = people[match[0]]
        assert sorted(np.flatnonzero(person[:, 2] > 0)) == sorted(joints)
        for k, (x, y, amp) in joints.items():
            assert abs(person[k, 0] - (x + 0.5)) == 0.25 and abs(person[k, 1] - (y + 0.5)) == 0.25
            assert abs(person[k, 2] - amp) < 1e-6
        np.testing.assert_allclose(scores[match[0]], sum(a for _, _, a in joints.values()) / nj, rtol=1e-5)
    # refine: a missing joint with a weak peak (below the detection threshold) near the person is filled
    truth[3][1][9] = (20, 52, 0.05)
    hm, tm = _scene(rng, truth, h, w, nj)
    people, _ = group(_detect(hm, tm), GroupingParams())
    person = [p for p in people if abs(p[0, 3] - 6.0) < 1e-6][0]
    assert person[9, 2] == pytest.approx(0.05) and abs(person[9, 0] - 20.5) == 0.25
    assert abs(person[9, 1] - 52.5) == 0.25


@pytest.mark.parametrize("seed,params", [
    (0, GroupingParams()),
    (1, GroupingParams(detection_threshold=0.05, tag_threshold=0.6)),
    (2, GroupingParams(max_num_people=4, use_detection_val=False)),
    (3, GroupingParams(max_num_people=3, ignore_too_much=True, adjust=False)),
])
def test_vectorised_grouping_equals_per_person_reference(seed, params):
    rng = np.random.RandomState(seed)
    nj, h, w, t = 17, 48, 40, 2
    people = []
    for n in range(rng.randint(3, 9)):
        cx, cy = rng.randint(4, w - 12), rng.randint(4, h - 16)
        joints = {k: (cx + rng.randint(0, 9), cy + rng.randint(0, 13), rng.rand() * 0.9 + 0.02)
                  for k in range(nj) if rng.rand() < 0.8}
        people.append((rng.randn() * 2, joints))
    hm, tm = _scene(rng, people, h, w, nj, sigma=1.5, tag_noise=0.3, t=t)
    hm += 0.01 * rng.randn(*hm.shape).astype(np.float32)
    det = _detect(hm, tm)
    got, got_scores = group(det, params)
    ref, ref_scores = reference_group(det["vals"], det["tags"], det["locs"], hm, tm, params)
    assert got.shape == ref.shape and got.shape[0] > 0
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got_scores, ref_scores, rtol=1e-6, atol=1e-7)
    # without the device's block statistics (computed on the host): the same people
    host, _ = group({k: v for k, v in det.items() if not k.startswith("block_")}, params)
    np.testing.assert_array_equal(host, got)


def test_block_statistics_equal_numpy():
    rng = np.random.RandomState(0)
    hm, tm = rng.randn(3, 40, 24).astype(np.float32), rng.randn(3, 40, 24, 2).astype(np.float32)
    det = _detect(hm, tm)
    for bi, by in enumerate(range(0, 40, 16)):
        for bj, bx in enumerate(range(0, 24, 16)):
            np.testing.assert_array_equal(det["block_max"][:, bi, bj], hm[:, by:by + 16, bx:bx + 16].max(axis=(1, 2)))
            np.testing.assert_array_equal(det["block_tag_min"][:, bi, bj],
                                          tm[:, by:by + 16, bx:bx + 16].min(axis=(1, 2)))
            np.testing.assert_array_equal(det["block_tag_max"][:, bi, bj],
                                          tm[:, by:by + 16, bx:bx + 16].max(axis=(1, 2)))


def test_default_joint_order_and_bad_order():
    assert GroupingParams().order() == COCO_JOINT_ORDER
    assert GroupingParams(num_joints=5).order() == (0, 1, 2, 3, 4)
    with pytest.raises(ValueError, match="permutation"):
        GroupingParams(num_joints=3, joint_order=(0, 0, 1)).order()


def test_exact_2x_upsampling_equals_torch_interpolate():
    torch = pytest.importorskip("torch")
    x = np.random.RandomState(0).randn(2, 5, 7, 3).astype(np.float32)
    ref = torch.nn.functional.interpolate(torch.from_numpy(x.transpose(0, 3, 1, 2)), size=(10, 14),
                                          mode="bilinear", align_corners=False).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(np.asarray(bu._resize(jnp.asarray(x), (10, 14))), ref, rtol=1e-6, atol=1e-6)
