"""Detection ops against independent references: torchvision (roi_align, nms, batched_nms, BoxCoder, Matcher) and
numpy formulas written here (mmdet's anchor, level-mapping and legacy box rules)."""
import math

import numpy as np
import pytest
import torch
import torchvision
from torchvision.models.detection import _utils as tv_utils

import jax
import jax.numpy as jnp

from hrnet_jax.models.detection import anchors, boxes as B, nms, roi_align as ra, sampling


def _rand_boxes(rng, n, size=64.0, min_wh=1.0, max_wh=40.0, beyond=0.0):
    xy = rng.uniform(-beyond, size + beyond - min_wh, (n, 2))
    wh = rng.uniform(min_wh, max_wh, (n, 2))
    return np.concatenate([xy, xy + wh], 1).astype(np.float32)


@pytest.mark.parametrize("aligned", [True, False])
def test_roi_align_vs_torchvision(aligned):
    rng = np.random.default_rng(0)
    feat = rng.standard_normal((2, 5, 13, 17)).astype(np.float32)  # NCHW
    bxs = _rand_boxes(rng, 30, size=68.0, min_wh=0.5, max_wh=50.0, beyond=12.0)  # crosses / beyond borders
    bxs[0] = [0, 0, 68, 52]  # the whole map
    bxs[1] = [66, 50, 80, 60]  # mostly outside
    bidx = rng.integers(0, 2, 30)
    scale = 0.25
    ref = torchvision.ops.roi_align(torch.from_numpy(feat), [torch.from_numpy(bxs[bidx == i]) for i in range(2)],
                                    output_size=7, spatial_scale=scale, sampling_ratio=2, aligned=aligned).numpy()
    order = np.concatenate([np.nonzero(bidx == i)[0] for i in range(2)])
    nhwc = jnp.asarray(feat.transpose(0, 2, 3, 1))
    got = np.concatenate([np.asarray(ra.roi_align(nhwc[i], jnp.asarray(bxs[bidx == i]), 7, scale, 2, aligned))
                          for i in range(2)])
    np.testing.assert_allclose(got, ref.transpose(0, 2, 3, 1), atol=1e-5)
    assert order.shape[0] == 30


def test_roi_align_legacy_is_plus_one_end():
    """mmdet v1 kernel: end = (x2 + 1) * scale and no 1x1 minimum = torchvision aligned=False on x2 + 1 for RoIs at
    least one feature pixel wide; sampling ratio 0 (adaptive) is refused."""
    rng = np.random.default_rng(1)
    feat = rng.standard_normal((1, 3, 16, 16)).astype(np.float32)
    bxs = _rand_boxes(rng, 20, size=60, min_wh=8.0, max_wh=30.0)
    ref = torchvision.ops.roi_align(torch.from_numpy(feat), [torch.from_numpy(bxs + np.array([0, 0, 1, 1], np.float32))],
                                    7, 0.25, 2, aligned=False).numpy()
    got = ra.roi_align(jnp.asarray(feat[0].transpose(1, 2, 0)), jnp.asarray(bxs), 7, 0.25, 2, legacy=True)
    np.testing.assert_allclose(np.asarray(got), ref.transpose(0, 2, 3, 1), atol=1e-5)
    with pytest.raises(ValueError, match="sampling_ratio"):
        ra.roi_align(jnp.zeros((4, 4, 1)), jnp.zeros((1, 4)), 7, 1.0, 0)


def test_multilevel_roi_align_levels_and_values():
    rng = np.random.default_rng(2)
    strides = (4, 8, 16, 32)
    feats = [rng.standard_normal((1, 4, 128 // s, 96 // s)).astype(np.float32) for s in strides]
    bxs = _rand_boxes(rng, 40, size=96, min_wh=4, max_wh=90)
    bxs[:4] = [[0, 0, 20, 20], [0, 0, 120, 120], [0, 0, 250, 250], [0, 0, 500, 500]]
    # mmdet formula by hand in numpy
    scale = np.sqrt((bxs[:, 2] - bxs[:, 0]) * (bxs[:, 3] - bxs[:, 1]))
    lvl_ref = np.clip(np.floor(np.log2(scale / 56.0 + 1e-6)), 0, 3).astype(int)
    lvl = np.asarray(ra.map_roi_levels(jnp.asarray(bxs), 4))
    np.testing.assert_array_equal(lvl, lvl_ref)
    assert set(lvl_ref[:4]) == {0, 1, 2, 3}
    got = np.asarray(ra.multilevel_roi_align([jnp.asarray(f[0].transpose(1, 2, 0)) for f in feats],
                                             jnp.asarray(bxs), strides, 7, 2, aligned=True))
    for i in range(len(bxs)):
        ref = torchvision.ops.roi_align(torch.from_numpy(feats[lvl_ref[i]]), [torch.from_numpy(bxs[i:i + 1])], 7,
                                        1.0 / strides[lvl_ref[i]], 2, aligned=True).numpy()[0]
        np.testing.assert_allclose(got[i], ref.transpose(1, 2, 0), atol=1e-5)


def test_nms_vs_torchvision():
    rng = np.random.default_rng(3)
    for trial in range(3):
        bxs = _rand_boxes(rng, 300, size=100, max_wh=40)
        sc = rng.uniform(size=300).astype(np.float32)
        ref = torchvision.ops.nms(torch.from_numpy(bxs), torch.from_numpy(sc), 0.5).numpy()
        max_out = 400 if trial == 0 else 25
        idx, keep = jax.jit(lambda b, s: nms.nms_padded(b, s, jnp.ones(300, bool), 0.5, max_out))(bxs, sc)
        k = int(keep.sum())
        assert k == min(len(ref), max_out)
        np.testing.assert_array_equal(np.asarray(idx)[:k], ref[:k])
        assert not np.asarray(keep)[k:].any()
    # invalid entries are never kept
    valid = np.ones(300, bool)
    valid[ref[:5]] = False
    idx, keep = nms.nms_padded(jnp.asarray(bxs), jnp.asarray(sc), jnp.asarray(valid), 0.5, 300)
    ref2 = torchvision.ops.nms(torch.from_numpy(bxs[valid]), torch.from_numpy(sc[valid]), 0.5).numpy()
    np.testing.assert_array_equal(np.asarray(idx)[:int(keep.sum())], np.nonzero(valid)[0][ref2])


def test_batched_nms_vs_torchvision():
    rng = np.random.default_rng(4)
    bxs = _rand_boxes(rng, 400, size=80, max_wh=40)
    sc = rng.uniform(size=400).astype(np.float32)
    cls = rng.integers(0, 7, 400)
    ref = torchvision.ops.batched_nms(torch.from_numpy(bxs), torch.from_numpy(sc), torch.from_numpy(cls), 0.5).numpy()
    idx, keep = nms.batched_nms_padded(jnp.asarray(bxs), jnp.asarray(sc), jnp.asarray(cls), jnp.ones(400, bool),
                                       0.5, 100)
    assert int(keep.sum()) == 100
    np.testing.assert_array_equal(np.asarray(idx), ref[:100])


def test_box_coder_vs_torchvision_and_legacy_formula():
    rng = np.random.default_rng(5)
    props = _rand_boxes(rng, 50, size=200, min_wh=2, max_wh=100)
    gts = _rand_boxes(rng, 50, size=200, min_wh=2, max_wh=100)
    stds = (0.1, 0.1, 0.2, 0.2)
    tv = tv_utils.BoxCoder(weights=tuple(1.0 / s for s in stds), bbox_xform_clip=math.log(1000.0 / 16))
    ref_enc = tv.encode_single(torch.from_numpy(gts), torch.from_numpy(props)).numpy()
    coder = B.BoxCoder(stds)
    enc = np.asarray(coder.encode(jnp.asarray(props), jnp.asarray(gts)))
    np.testing.assert_allclose(enc, ref_enc, rtol=1e-4, atol=1e-4)
    deltas = rng.normal(0, 1.0, (50, 4)).astype(np.float32)  # includes clamped dw/dh (|0.2 * d| ... up to large)
    deltas[:3, 2:] = 30.0
    ref_dec = tv.decode_single(torch.from_numpy(deltas), torch.from_numpy(props)).numpy()
    np.testing.assert_allclose(np.asarray(coder.decode(jnp.asarray(props), jnp.asarray(deltas))), ref_dec,
                               rtol=1e-4, atol=1e-3)
    # legacy mmdet v1 (+1) by hand in numpy
    legacy = B.BoxCoder((1, 1, 1, 1), offset=1.0)
    pw, ph = props[:, 2] - props[:, 0] + 1, props[:, 3] - props[:, 1] + 1
    px, py = (props[:, 0] + props[:, 2]) / 2, (props[:, 1] + props[:, 3]) / 2
    gw, gh = gts[:, 2] - gts[:, 0] + 1, gts[:, 3] - gts[:, 1] + 1
    gx, gy = (gts[:, 0] + gts[:, 2]) / 2, (gts[:, 1] + gts[:, 3]) / 2
    ref = np.stack([(gx - px) / pw, (gy - py) / ph, np.log(gw / pw), np.log(gh / ph)], 1)
    np.testing.assert_allclose(np.asarray(legacy.encode(jnp.asarray(props), jnp.asarray(gts))), ref, rtol=1e-4,
                               atol=1e-5)
    dec = np.asarray(legacy.decode(jnp.asarray(props), jnp.asarray(ref)))
    np.testing.assert_allclose(dec, gts, atol=1e-3)  # round trip, and the + 0.5 / - 0.5 corners by the formula
    d = np.clip(deltas[:, 2:], -abs(math.log(16 / 1000)), abs(math.log(16 / 1000)))
    w = pw * np.exp(d[:, 0])
    cx = px + pw * deltas[:, 0]
    np.testing.assert_allclose(np.asarray(legacy.decode(jnp.asarray(props), jnp.asarray(deltas)))[:, 0],
                               cx - 0.5 * w + 0.5, rtol=1e-4, atol=1e-3)


def test_iou_vs_torchvision():
    rng = np.random.default_rng(6)
    a, b = _rand_boxes(rng, 20), _rand_boxes(rng, 30)
    ref = torchvision.ops.box_iou(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    np.testing.assert_allclose(np.asarray(B.pairwise_iou(jnp.asarray(a), jnp.asarray(b))), ref, atol=1e-6)


def test_anchor_grid_by_hand():
    # mmdet v2, stride 16, scale 8 → size 128; ratio h/w = 0.5: w = 128 * sqrt(2), h = 128 / sqrt(2)
    a = anchors.grid_anchors((2, 3), 16)
    assert a.shape == (2 * 3 * 3, 4)
    w, h = 128 * math.sqrt(2), 128 / math.sqrt(2)
    np.testing.assert_allclose(a[0], [-w / 2, -h / 2, w / 2, h / 2], rtol=1e-6)
    np.testing.assert_allclose(a[1], [-64, -64, 64, 64], rtol=1e-6)
    # location (y=1, x=2) is row 1 * 3 + 2 = 5, anchors 15..17; ratio 2 (tall) is the third
    np.testing.assert_allclose(a[5 * 3 + 2], [32 - h / 2, 16 - w / 2, 32 + h / 2, 16 + w / 2], rtol=1e-6)
    # mmdet v1 legacy: centre (16 - 1) / 2 = 7.5, corners 7.5 -+ 0.5 * (size - 1), rounded
    L = anchors.grid_anchors((2, 3), 16, legacy=True)
    np.testing.assert_allclose(L[1], np.round([7.5 - 63.5, 7.5 - 63.5, 7.5 + 63.5, 7.5 + 63.5]))
    np.testing.assert_allclose(L[5 * 3 + 1], L[1] + [32, 16, 32, 16])


def test_assign_vs_torchvision_matcher():
    rng = np.random.default_rng(7)
    gts = _rand_boxes(rng, 6, size=100, min_wh=10, max_wh=50)
    props = np.concatenate([_rand_boxes(rng, 500, size=100, min_wh=5, max_wh=60), gts + 1.0])
    gt_valid = np.ones(8, bool)
    gts8 = np.concatenate([gts, np.zeros((2, 4), np.float32)])
    gt_valid[6:] = False
    for hi, lo in ((0.7, 0.3), (0.5, 0.5)):
        assigned, _ = sampling.max_iou_assign(jnp.asarray(props), jnp.ones(len(props), bool), jnp.asarray(gts8),
                                              jnp.asarray(gt_valid), hi, lo, lo)
        assigned = np.asarray(assigned)
        iou = torchvision.ops.box_iou(torch.from_numpy(gts), torch.from_numpy(props))
        m = tv_utils.Matcher(hi, lo, allow_low_quality_matches=True)(iou).numpy()
        # torchvision's low-quality step has no min_pos_iou: every gt here has a proposal with IoU > 0.5 (gt + 1)
        expect = np.where(m >= 0, m + 1, np.where(m == -1, 0, -1))
        np.testing.assert_array_equal(assigned, expect)
        assert (assigned > 0).sum() >= 6
    # no valid gt: every valid box is negative, invalid boxes ignored
    valid = np.ones(len(props), bool)
    valid[:3] = False
    a, _ = sampling.max_iou_assign(jnp.asarray(props), jnp.asarray(valid), jnp.asarray(gts8), jnp.zeros(8, bool),
                                   0.7, 0.3, 0.3)
    assert (np.asarray(a)[:3] == -1).all() and (np.asarray(a)[3:] == 0).all()


def test_random_sample_counts_and_uniformity():
    assigned = np.zeros(1000, np.int32)
    assigned[:50] = 3  # 50 positives
    assigned[50:100] = -1  # ignored
    pos_idx, pos_ok, neg_idx, neg_ok = sampling.random_sample(jax.random.PRNGKey(0), jnp.asarray(assigned), 256, 0.5)
    pos = np.asarray(pos_idx)[np.asarray(pos_ok)]
    neg = np.asarray(neg_idx)[np.asarray(neg_ok)]
    assert len(pos) == 50 and set(pos) == set(range(50))
    assert len(neg) == 206 and (neg >= 100).all() and len(set(neg)) == 206
    counts = np.zeros(1000)
    keys = jax.random.split(jax.random.PRNGKey(1), 200)
    assigned[:50] = 1
    assigned[:] = np.where(np.arange(1000) < 400, 1, 0)  # 400 positives, 600 negatives
    f = jax.jit(jax.vmap(lambda k: sampling.random_sample(k, jnp.asarray(assigned), 256, 0.5)))
    pi, po, ni, no = f(keys)
    np.add.at(counts, np.asarray(pi)[np.asarray(po)], 1)
    assert np.asarray(po).sum(1).min() == 128 and np.asarray(no).sum(1).min() == 128
    # each positive is drawn with probability 128 / 400 = 0.32 (200 draws: mean 64, sd ~6.6)
    assert abs(counts[:400].mean() - 64) < 2 and counts[:400].std() < 12
