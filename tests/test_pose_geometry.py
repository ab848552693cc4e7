"""Crop transform, targets, decoding and flip: checked against cv2, hand-worked values and analytic results."""
import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hrnet_jax.data.ops import affine as T
from hrnet_jax.tasks.pose import decode as D
from hrnet_jax.tasks.pose.pipeline import AugmentConfig, train_example
from hrnet_jax.data.keypoints import COCO17, KeypointSpec
from hrnet_jax.tasks.pose.targets import generate_heatmaps


# ---- affine transform -----------------------------------------------------------------------------------------
def test_affine_matrix_rot0_is_hand_derived_zoom():
    c, s, out = np.array([100.0, 60.0]), np.array([0.5, 0.8]), (48, 64)
    k = 48 / (0.5 * 200)  # output width / source width; only scale[0] matters
    expected = np.array([[k, 0, 24 - k * 100], [0, k, 32 - k * 60]])
    np.testing.assert_allclose(T.get_affine_transform(c, s, 0, out), expected, atol=1e-4)
    inv = T.get_affine_transform(c, s, 0, out, inv=True)
    np.testing.assert_allclose(inv, np.linalg.inv(np.vstack([expected, [0, 0, 1]]))[:2], atol=1e-4)


def test_affine_rot90_maps_up_direction_to_left():
    # rot +90°: the image point below the center (source "up" direction rotated) must land above the crop center.
    c, s, out = np.array([50.0, 50.0]), np.array([0.5, 0.5]), (100, 100)
    t = T.get_affine_transform(c, s, 90, out)
    # scale 0.5 → source width 100 = output width: rotation only. Source point (50, 50 - 0.5·100) rotated by 90°
    # (x, y) -> (x cos - y sin, x sin + y cos) around the center gives direction (+50, 0) -> maps to (50, 0).
    np.testing.assert_allclose(T.affine_points([[100.0, 50.0]], t), [[50.0, 0.0]], atol=1e-3)
    np.testing.assert_allclose(T.affine_points([[50.0, 50.0]], t), [[50.0, 50.0]], atol=1e-3)


@pytest.mark.parametrize("rot", [0.0, 30.0, -70.0])
def test_affine_points_match_warp_of_single_bright_pixel(rot):
    img = np.zeros((120, 100), np.float32)
    src = (37.0, 52.0)
    img[int(src[1]), int(src[0])] = 1.0
    c, s, out = np.array([45.0, 55.0]), np.array([0.25, 0.3]), (96, 128)  # ~2x zoom
    trans = T.get_affine_transform(c, s, rot, out)
    warped = T.warp_image(img, trans, out)
    ys, xs = np.nonzero(warped > 0)
    w = warped[ys, xs]
    centroid = np.array([np.sum(xs * w), np.sum(ys * w)]) / np.sum(w)
    np.testing.assert_allclose(centroid, T.affine_points([src], trans)[0], atol=0.1)


def test_box_to_center_scale_hand_values():
    c, s = T.box_to_center_scale([10, 20, 30, 100], aspect_ratio=0.75)
    np.testing.assert_allclose(c, [25, 70])
    np.testing.assert_allclose(s, [75 / 200 * 1.25, 100 / 200 * 1.25])  # w enlarged to 0.75·100
    c, s = T.box_to_center_scale([0, 0, 150, 100], aspect_ratio=0.75)
    np.testing.assert_allclose(s, [150 / 200 * 1.25, 200 / 200 * 1.25])  # h enlarged to 150/0.75


def test_half_body_uses_randn_quirk():
    rng = np.random.default_rng(0)
    joints = np.array([[i * 3.0, i * 5.0] for i in range(17)], np.float32)
    vis = np.ones(17, np.float32)
    upper = 0
    for _ in range(3000):
        c, s = T.half_body_center_scale(joints, vis, COCO17.upper_body_ids, 0.75, rng)
        upper += bool(np.isclose(c[1], np.mean(joints[:11, 1])))
    assert abs(upper / 3000 - 0.6915) < 0.03  # P(N(0,1) < 0.5)


# ---- targets ----------------------------------------------------------------------------------------------------
def test_heatmap_target_hand_values():
    joints = np.array([[10.0, 14.0], [-20.0, 8.0], [-40.0, 8.0], [30.0, 30.0]])
    vis = np.array([2, 1, 1, 0])
    hm, w = generate_heatmaps(joints, vis, (64, 48), (16, 12), sigma=2)
    assert hm.shape == (16, 12, 4)
    # joint 0: mu = (int(2.5 + .5), int(3.5 + .5)) = (3, 4)
    assert hm[4, 3, 0] == 1.0
    np.testing.assert_allclose(hm[4, 5, 0], np.exp(-4 / 8), rtol=1e-6)
    np.testing.assert_allclose(hm[6, 4, 0], np.exp(-5 / 8), rtol=1e-6)
    np.testing.assert_allclose(hm[4, 9, 0], np.exp(-36 / 8), rtol=1e-6)  # window edge: 3σ
    assert hm[4, 10, 0] == 0.0 and hm[11, 3, 0] == 0.0                   # just outside the (6σ+1)² window
    # joint 1: mu_x = int(-5 + .5) = int(-4.5) = -4 (truncation): window reaches columns 0..2
    assert w[1] == 1.0
    np.testing.assert_allclose(hm[2, 0:3, 1], np.exp(-np.array([16, 25, 36]) / 8), rtol=1e-6)
    assert hm[2, 3, 1] == 0.0
    # joint 2: mu_x = int(-9.5) = -9, window ends at column -2: fully outside → weight 0
    assert w[2] == 0.0 and hm[..., 2].max() == 0.0
    assert w[3] == 0.0 and hm[..., 3].max() == 0.0  # unlabelled


def test_round_trip_official_targets_quantisation():
    rng = np.random.default_rng(1)
    joints = rng.uniform(20, 170, size=(17, 2))
    hm, w = generate_heatmaps(joints, np.ones(17), (256, 192), (64, 48), sigma=2)
    out = D.decode_heatmaps(jnp.asarray(hm[None]), mode="legacy")
    dec = np.asarray(out["keypoints"][0])
    np.testing.assert_array_equal(dec, np.trunc(joints / 4 + 0.5))    # peak at mu, symmetric → no quarter shift
    assert np.all(np.abs(dec * 4 - joints) <= 2.0 + 1e-6)              # ≤ stride/2 input pixels
    np.testing.assert_allclose(np.asarray(out["maxvals"][0]), 1.0)


def _continuous_gaussians(pts, h, w, sigma):
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma ** 2)) for x, y in pts], -1)


def test_round_trip_subpixel_legacy_and_dark():
    rng = np.random.default_rng(2)
    pts = rng.uniform(8, 40, size=(64, 2))
    hm = _continuous_gaussians(pts, 64, 48, 2.0)[None]
    err = {}
    for mode in ("argmax", "legacy", "dark"):
        dec = np.asarray(D.decode_heatmaps(jnp.asarray(hm), mode=mode)["keypoints"][0])
        err[mode] = np.abs(dec - pts)
    assert err["argmax"].max() <= 0.5 + 1e-5
    assert err["legacy"].max() <= 0.25 + 1e-5          # quarter offset: ≤ 0.25 per axis
    assert err["dark"].max() < 0.02                    # log of a Gaussian is quadratic: Newton is ~exact
    assert err["dark"].mean() < 0.1 * err["legacy"].mean()


def test_get_max_preds_and_quarter_offset_hand_values():
    hm = np.zeros((1, 8, 10, 3), np.float32)
    hm[0, 3, 4, 0] = 1.0
    hm[0, 3, 5, 0] = 0.5   # right neighbour higher than left → +0.25 in x
    hm[0, 2, 4, 0] = 0.2   # upper neighbour higher than lower → -0.25 in y
    hm[0, 1, 4, 1] = 1.0   # py = 1: not strictly inside → no offset
    hm[0, 1, 5, 1] = 0.5
    hm[..., 2] = -1.0      # maxval <= 0 → coordinates zeroed
    hm[0, 5, 6, 2] = -0.5
    coords, maxvals = D.get_max_preds(jnp.asarray(hm))
    np.testing.assert_array_equal(np.asarray(coords[0]), [[4, 3], [4, 1], [0, 0]])
    np.testing.assert_array_equal(np.asarray(maxvals[0]), [1.0, 1.0, -0.5])
    refined = np.asarray(D.quarter_offset(coords, jnp.asarray(hm))[0])
    np.testing.assert_array_equal(refined, [[4.25, 2.75], [4, 1], [0, 0]])


def test_gaussian_blur_matches_cv2():
    rng = np.random.default_rng(3)
    hm = rng.random((1, 20, 16, 2)).astype(np.float32)
    got = np.asarray(D.gaussian_blur(jnp.asarray(hm), 11))
    for k in range(2):
        pad = np.zeros((30, 26), np.float64)
        pad[5:-5, 5:-5] = hm[0, :, :, k]
        ref = cv2.GaussianBlur(pad, (11, 11), 0)[5:-5, 5:-5]
        ref *= hm[0, :, :, k].max() / ref.max()
        np.testing.assert_allclose(got[0, :, :, k], ref, atol=1e-5)


def test_back_projection_matches_cv2_inverse_transform():
    rng = np.random.default_rng(4)
    coords = rng.uniform(0, 48, size=(3, 17, 2)).astype(np.float32)
    centers = rng.uniform(50, 400, size=(3, 2)).astype(np.float32)
    scales = rng.uniform(0.3, 2.0, size=(3, 2)).astype(np.float32)
    got = np.asarray(jax.jit(D.heatmap_to_image, static_argnums=3)(coords, centers, scales, (64, 48)))
    for i in range(3):
        ref = T.transform_preds(coords[i], centers[i], scales[i], (48, 64))
        np.testing.assert_allclose(got[i], ref, atol=2e-3)


# ---- flip ---------------------------------------------------------------------------------------------------------
def _blob_image(joints, h=200, w=160):
    """Each joint drawn as a blob of a unique colour (id+1)·10 in channel 0."""
    img = np.zeros((h, w, 3), np.uint8)
    for j, (x, y) in enumerate(joints):
        cv2.circle(img, (int(round(x)), int(round(y))), 4, ((j + 1) * 10, 0, 0), -1)
    return img


@pytest.mark.parametrize("flip", [False, True])
def test_flip_image_and_pairs_equals_mirrored_keypoints(flip):
    rng = np.random.default_rng(5)
    joints = np.stack([rng.uniform(40, 120, 17), rng.uniform(30, 170, 17)], -1).round()
    # keep the blobs apart so each pixel has a single owner
    joints[:, 1] = 30 + np.arange(17) * 8
    img = _blob_image(joints)
    rec = dict(joints=joints, vis=np.ones(17), center=np.array([80.0, 100.0]), scale=np.array([0.9, 1.2]))
    aug = AugmentConfig(scale_factor=0.0, rotation_factor=0.0, flip=True, prob_half_body=0.0)

    class FixedRng:  # random() <= 0.5 decides the flip; everything else is disabled
        def random(self):
            return 0.1 if flip else 0.9

        def standard_normal(self):
            return 0.0

    ex = train_example(rec, img, FixedRng(), COCO17, (256, 192), (64, 48), 2.0, aug)
    crop = ex["image"].astype(np.float32) / 255.0   # uint8 RGB crop -> [0, 1]
    assert ex["image"].dtype == np.uint8 and ex["image"].shape == (256, 192, 3)
    perm = COCO17.flip_permutation()
    for k in range(17):
        x, y = ex["joints"][k]
        val = crop[int(round(y)), int(round(x)), 0] * 255
        owner = perm[k] if flip else k      # after a flip, "left_x" sits on the mirrored right_x blob
        assert abs(val - (owner + 1) * 10) < 3, (k, val)
    if flip:
        # Analytic: x_img -> W_img - 1 - x_img and c -> W_img - 1 - c, so in crop coordinates
        # x_crop = k(x - c) + W/2 becomes -k(x - c) + W/2 = W - x_crop (192 - x, not 191 - x: the official bias).
        ex0 = train_example(rec, img, type("R", (), {"random": lambda s: 0.9,
                                                     "standard_normal": lambda s: 0.0})(), COCO17, (256, 192),
                            (64, 48), 2.0, aug)
        np.testing.assert_allclose(ex["joints"][perm][:, 0], 192 - ex0["joints"][:, 0], atol=1e-3)
        np.testing.assert_allclose(ex["joints"][perm][:, 1], ex0["joints"][:, 1], atol=1e-3)


def test_flip_back_with_shift_recovers_heatmap_cell():
    # A joint at x = 4m in a 192-wide crop: mu = m. In the mirrored crop it sits at 191 - 4m → mu' = 48 - m;
    # flip_back puts it at 47 - mu' = m - 1: the one-pixel shift to the right restores m.
    spec = KeypointSpec(name="p", keypoints=("l", "r", "c"), flip_pairs=((0, 1),))
    joints = np.array([[40.0, 80.0], [100.0, 120.0], [60.0, 60.0]])
    mirrored = np.stack([191 - joints[:, 0], joints[:, 1]], -1)[spec.flip_permutation()]
    hm, _ = generate_heatmaps(joints, np.ones(3), (256, 192), (64, 48), 2)
    hm_m, _ = generate_heatmaps(mirrored, np.ones(3), (256, 192), (64, 48), 2)
    perm = spec.flip_permutation()
    fb = D.flip_back(jnp.asarray(hm_m[None]), perm)
    no_shift = np.asarray(D.get_max_preds(fb)[0][0])
    np.testing.assert_array_equal(no_shift[:, 0], joints[:, 0] / 4 - 1)
    shifted = np.asarray(D.get_max_preds(D.shift_right(fb))[0][0])
    np.testing.assert_array_equal(shifted, joints / 4)
    fused = D.decode_heatmaps(jnp.asarray(hm[None]), mode="legacy", hm_flipped=jnp.asarray(hm_m[None]),
                              flip_perm=perm)
    np.testing.assert_array_equal(np.asarray(fused["keypoints"][0]), joints / 4)


def test_decode_is_jittable_and_batched():
    hm = jnp.asarray(_continuous_gaussians([(10.3, 20.6), (30.0, 5.2)], 64, 48, 2.0)[None].repeat(3, 0))
    f = jax.jit(lambda h, c, s: D.decode_heatmaps(h, c, s, mode="dark", hm_flipped=h, flip_perm=np.array([1, 0])))
    out = f(hm, jnp.zeros((3, 2)), jnp.ones((3, 2)))
    assert out["keypoints"].shape == (3, 2, 2) and out["maxvals"].shape == (3, 2)
