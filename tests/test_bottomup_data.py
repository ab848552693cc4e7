"""Bottom-up (HigherHRNet) data: targets worked by hand, masks vs pycocotools, augmentation geometry found in the
warped pixels, the test-time resize vs the reference's formula."""
import json
import os

import numpy as np
import pytest

from hrnet_jax.data.keypoints import COCO17
from hrnet_jax.data.ops import bottomup as B
from hrnet_jax.data.sources.coco_people import CocoPeopleSource
from hrnet_jax.tasks.bottomup import pipeline as P
from hrnet_jax.tasks.bottomup.targets import heatmaps, joint_indices

K = 17


def _joints(*people):
    """people: lists of (k, x, y) labelled joints -> (N, K, 3)."""
    out = np.zeros((len(people), K, 3))
    for n, p in enumerate(people):
        for k, x, y in p:
            out[n, k] = (x, y, 1)
    return out


def test_heatmap_peaks_and_window_by_hand():
    hm = heatmaps(_joints([(3, 10.7, 5.2)]), (32, 32), 2.0)
    assert hm.shape == (32, 32, K) and hm.dtype == np.float32
    ch = hm[..., 3]
    assert ch[5, 10] == pytest.approx(1.0)                            # int() truncation: (10, 5)
    assert ch[5, 12] == pytest.approx(np.exp(-4 / 8), rel=1e-6)
    assert ch[7, 11] == pytest.approx(np.exp(-(1 + 4) / 8), rel=1e-6)
    assert ch[5, 17] == pytest.approx(np.exp(-49 / 8), rel=1e-6)      # window half-width 3 sigma + 1 = 7
    assert ch[5, 18] == 0.0 and ch[13, 10] == 0.0
    assert np.count_nonzero(hm[..., [k for k in range(K) if k != 3]]) == 0


def test_heatmaps_max_over_people_and_skips():
    j = _joints([(0, 4, 4)], [(0, 6, 4)], [(0, 40, 4)])   # the third is outside the 32-wide map
    j = np.concatenate([j, _joints([(1, 8, 8)])])
    j[3, 1, 2] = 0                                          # unlabelled: ignored
    hm = heatmaps(j, (32, 32), 2.0)
    # cell (5, 4) is 1 from both people: max, not sum
    assert hm[4, 5, 0] == pytest.approx(np.exp(-1 / 8), rel=1e-6)
    assert hm[4, 4, 0] == pytest.approx(1.0) and hm[4, 6, 0] == pytest.approx(1.0)
    assert hm[..., 1].max() == 0.0
    # the reference's int() truncates toward zero: x = -0.5 lands in column 0
    hm2 = heatmaps(_joints([(2, -0.5, 3)]), (16, 16), 1.0)
    assert hm2[3, 0, 2] == pytest.approx(1.0)


def test_joint_indices_packed_as_reference():
    j = _joints([(0, 3.9, 4.2), (2, 50, 1), (5, 7, 1)], [(16, 31, 31)])
    j[0, 5, 2] = 1
    out = joint_indices(j, 4, (32, 32))
    assert out.shape == (4, K, 2) and out.dtype == np.int32
    # person 0: joint 0 at cell (3, 4); joint 2 is outside; joint 5 at (7, 1) packed into slot 1
    assert out[0, 0].tolist() == [0 * 1024 + 4 * 32 + 3, 1]
    assert out[0, 1].tolist() == [5 * 1024 + 1 * 32 + 7, 1]
    assert out[0, 2:].sum() == 0
    assert out[1, 0].tolist() == [16 * 1024 + 31 * 32 + 31, 1]
    assert out[2:].sum() == 0
    assert joint_indices(j, 4, (32, 32), tag_per_joint=False)[0, 1].tolist() == [1 * 32 + 7, 1]
    assert joint_indices(j, 1, (32, 32)).shape == (1, K, 2)     # people past M dropped


def _coco_file(tmp_path, h=60, w=80):
    kp = np.zeros((K, 3))
    kp[0] = (20, 20, 2)
    kp[5] = (30, 40, 1)
    from pycocotools import mask as mask_utils
    m = np.zeros((h, w), np.uint8, order="F")
    m[5:15, 50:70] = 1
    enc = mask_utils.encode(np.asfortranarray(m))
    # uncompressed RLE as in COCO's crowd annotations
    counts, prev, run = [], 0, 0
    flat = m.flatten(order="F")
    for v in flat:
        if v == prev:
            run += 1
        else:
            counts.append(run)
            run, prev = 1, v
    counts.append(run)
    crowd_rle = {"counts": counts, "size": [h, w]}
    assert mask_utils.decode(mask_utils.frPyObjects(crowd_rle, h, w)).sum() == mask_utils.decode(enc).sum()
    anns = [
        dict(id=1, image_id=7, category_id=1, iscrowd=0, keypoints=kp.reshape(-1).tolist(), num_keypoints=2,
             bbox=[15, 15, 20, 30], area=300.0, segmentation=[[15, 15, 35, 15, 35, 45, 15, 45]]),
        dict(id=2, image_id=7, category_id=1, iscrowd=1, keypoints=[0] * 3 * K, num_keypoints=0,
             bbox=[50, 5, 20, 10], area=200.0, segmentation=crowd_rle),
        dict(id=3, image_id=7, category_id=1, iscrowd=0, keypoints=[0] * 3 * K, num_keypoints=0,
             bbox=[2, 40, 10, 12], area=100.0, segmentation=[[2, 40, 12, 40, 12, 52, 2, 52]]),
    ]
    coco = dict(images=[dict(id=7, file_name="a.jpg", height=h, width=w), dict(id=8, file_name="b.jpg", height=h,
                                                                              width=w)],
                annotations=anns, categories=[COCO17.coco_category()])
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(coco))
    return str(path), coco


def test_source_people_and_mask_vs_pycocotools(tmp_path):
    from pycocotools.coco import COCO
    path, _ = _coco_file(tmp_path)
    src = CocoPeopleSource(path, str(tmp_path / "images"), COCO17, require_annotations=True)
    assert len(src) == 1 and src.stats["skipped_no_annotations"] == 1
    rec = src[0]
    assert rec["joints"].shape == (1, K, 3) and rec["joints"][0, 5].tolist() == [30, 40, 1]
    coco = COCO(path)
    expect = ~((coco.annToMask(coco.anns[2]) > 0) | (coco.annToMask(coco.anns[3]) > 0))
    got = src.mask(0)
    assert got.dtype == bool and got.shape == (60, 80)
    np.testing.assert_array_equal(got, expect)
    assert (~got).sum() > 200   # both regions are there
    assert len(CocoPeopleSource(path, str(tmp_path / "images"), COCO17, require_annotations=False)) == 2


def _dot_image(h, w, pts, radius=2):
    import cv2
    img = np.zeros((h, w, 3), np.uint8)
    for i, (x, y) in enumerate(pts):
        cv2.circle(img, (int(round(x)), int(round(y))), radius, (255, 80 * i, 0), -1)
    return img


def _find_dot(img, channel=0, value=None):
    w = img[..., channel].astype(np.float64)
    if value is not None:
        w = w * (np.abs(img[..., 1].astype(np.float64) - value) < 30)
    w = np.where(w > 0.5 * w.max(), w, 0)
    ys, xs = np.nonzero(w)
    return np.array([np.average(xs, weights=w[ys, xs]), np.average(ys, weights=w[ys, xs])])


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_affine_and_flip_move_keypoints_with_the_pixels(seed):
    rng = np.random.default_rng(seed)
    h, w, s = 120, 160, 96
    pts = np.array([[40.0, 30.0], [110.0, 85.0]])
    img = _dot_image(h, w, pts, radius=3)
    joints = np.zeros((1, K, 3))
    joints[0, 1, :2], joints[0, 1, 2] = pts[0], 1       # left eye
    joints[0, 2, :2], joints[0, 2, 2] = pts[1], 1       # right eye
    c, sc, rot, _ = B.random_affine_params(rng, h, w, min_scale=0.9, max_scale=1.2, max_rotation=30,
                                           max_translate=10)
    image, masks, js = B.affine_people(img, np.ones((h, w), bool), joints, c, sc, rot, s, (s, s // 4))
    flip = seed % 2 == 1
    if flip:
        image, masks, js = B.flip_people(image, masks, js, (s, s // 4), COCO17.flip_permutation())
    # the dot drawn for the left eye (green 0) is now joint 2 when flipped, 1 otherwise
    first, second = (2, 1) if flip else (1, 2)
    np.testing.assert_allclose(_find_dot(image, value=0), js[0][0, first, :2], atol=1.0)
    np.testing.assert_allclose(_find_dot(image, value=80), js[0][0, second, :2], atol=1.0)
    # the 1/4 joints are the input-frame joints scaled (with the reference's x' = res - x - 1 on a flip)
    expect = js[0][0, :, :2] / 4
    if flip:
        expect[:, 0] = (s // 4) - ((s - 1) - js[0][0, :, 0]) / 4 - 1
    np.testing.assert_allclose(js[1][0, [1, 2], :2], expect[[1, 2]], atol=1e-6)


def test_flip_swaps_pairs_and_mirrors_masks():
    j = _joints([(5, 10, 3), (6, 20, 4)])
    mask = np.ones((32, 32), bool)
    mask[:, :4] = False
    img = np.zeros((32, 32, 3), np.uint8)
    _, masks, js = B.flip_people(img, [mask], [j], (32,), COCO17.flip_permutation())
    assert js[0][0, 6].tolist() == [32 - 10 - 1, 3, 1]      # left shoulder (5) became the right one (6)
    assert js[0][0, 5].tolist() == [32 - 20 - 1, 4, 1]
    assert not masks[0][:, 28:].any() and masks[0][:, :28].all()


def test_mask_outside_the_image_is_not_counted():
    mat = B.affine_matrix((50, 50), 100 / 200 * 2.0, 32)     # a window twice the 100x100 image
    m = B.warp_mask(np.ones((100, 100), bool), mat, 32)
    assert m[16, 16] and not m[0, 0] and not m[31, 31]
    assert 0.2 < m.mean() < 0.3                               # a quarter of the window is image


def test_eval_resize_matches_the_reference_formula():
    # 640x480 landscape at 512: short side 512, long side 512/480*640 = 682.7 rounded up to 704
    (w_r, h_r), center, scale = B.eval_resize(480, 640, 512)
    assert (w_r, h_r) == (704, 512)
    assert center.tolist() == [320, 240]
    np.testing.assert_allclose(scale, [704 / 512 * 480 / 200, 480 / 200])
    (w_r, h_r), _, scale = B.eval_resize(640, 427, 512)      # portrait: int((512/427*640+63)//64*64) = 768
    assert (w_r, h_r) == (512, 768)
    np.testing.assert_allclose(scale, [427 / 200, 768 / 512 * 427 / 200])
    # multi-scale at (0.5, 1, 2): sizes rounded at the min scale (256 x int((256/480*640+63)//64*64) = 384),
    # the others scaled from it
    assert B.eval_resize(480, 640, 512, 2.0, 0.5)[0] == (1536, 1024)
    assert B.eval_resize(480, 640, 512, 1.0, 0.5)[0] == (768, 512)


def test_eval_canvas_maps_back_to_image_pixels():
    h, w = 90, 130
    pts = np.array([[20.0, 15.0], [100.0, 70.0]])
    img = _dot_image(h, w, pts, radius=2)
    canvases, c, sc, size, shrunk = B.eval_canvases(img, 64, (128, 192))
    assert canvases[0].shape == (128, 192, 3) and not shrunk
    assert size.tolist() == [128, 64]                         # short side 64, 130/90*64 = 92.4 -> 128
    assert canvases[0][64:].max() == 0
    for i, p in enumerate(pts):
        found = _find_dot(canvases[0], value=80 * i)
        np.testing.assert_allclose(B.to_image_coords(found, c, sc, size), p, atol=1.5)
    small, c2, sc2, size2, shrunk2 = B.eval_canvases(img, 64, (64, 64))
    assert shrunk2 and small[0].shape == (64, 64, 3) and size2.tolist() == [64, 32]
    found = _find_dot(small[0], value=80)
    np.testing.assert_allclose(B.to_image_coords(found, c2, sc2, size2), pts[1], atol=2.5)


def test_train_example_targets_at_both_resolutions(tmp_path):
    """No-op augmentation: a joint at input pixel (40, 20) peaks at (10, 5) at 1/4 and (20, 10) at 1/2."""
    rec = {"joints": _joints([(0, 40.0, 20.0), (9, 100.0, 64.0)]), "bbox": np.zeros((2, 4))}
    img = np.zeros((128, 128, 3), np.uint8)
    mask = np.ones((128, 128), bool)
    mask[:, 64:] = False
    aug = P.AugmentConfig(min_scale=1.0, max_scale=1.0, max_rotation=0, max_translate=0, flip=0)
    ex = P.train_example(rec, img, mask, np.random.default_rng(0), COCO17.flip_permutation(), 128, (32, 64), 2.0,
                         5, aug)
    assert ex["image"].shape == (128, 128, 3)
    assert np.unravel_index(np.argmax(ex["heatmaps_0"][..., 0]), (32, 32)) == (5, 10)
    assert np.unravel_index(np.argmax(ex["heatmaps_1"][..., 0]), (64, 64)) == (10, 20)
    assert ex["heatmaps_0"][5, 10, 0] == pytest.approx(1.0)
    assert ex["mask_0"].shape == (32, 32) and ex["mask_0"][:, :15].all() and not ex["mask_0"][:, 17:].any()
    assert ex["mask_1"].shape == (64, 64)
    assert ex["joints"].shape == (5, K, 2)
    assert ex["joints"][0, 0].tolist() == [0 * 1024 + 5 * 32 + 10, 1]
    assert ex["joints"][0, 1].tolist() == [9 * 1024 + 16 * 32 + 25, 1]   # packed into slot 1
    assert ex["joints"][1:].sum() == 0


def test_datasets_skip_and_count_bad_images(tmp_path):
    import cv2
    from hrnet_jax.data.pipeline import pop_stats
    path, coco = _coco_file(tmp_path)
    img_dir = tmp_path / "images"
    img_dir.mkdir()
    cv2.imwrite(str(img_dir / "a.jpg"), np.full((60, 80, 3), 90, np.uint8))
    (img_dir / "b.jpg").write_bytes(b"not a jpeg")
    src = CocoPeopleSource(path, str(img_dir), COCO17, require_annotations=False)
    ds = P.eval_dataset(src, 64, (64, 128), batch_size=4)
    batch = dict(next(iter(ds)))
    stats = pop_stats(batch)
    assert stats["corrupt_image"] == 1
    assert batch["image"].shape == (4, 64, 128, 3) and batch["valid"].tolist() == [True, False, False, False]
    assert batch["size"][0].tolist() == [128, 64]
    tr = P.train_dataset(src, COCO17.flip_permutation(), 64, (16, 32), 2.0, 4, P.AugmentConfig(), 2, seed=0)
    b = dict(next(iter(tr)))
    st = pop_stats(b)
    assert b["image"].shape == (2, 64, 64, 3) and b["heatmaps_1"].shape == (2, 32, 32, K)
    assert b["joints"].shape == (2, 4, K, 2) and b["mask_0"].shape == (2, 16, 16)
    assert st["corrupt_image"] >= 1


def test_synthetic_generator_people_range(tmp_path):
    from hrnet_jax.data.synthetic.pose import generate_synthetic_pose_dataset
    out = generate_synthetic_pose_dataset(str(tmp_path / "d"), num_train=6, num_val=1, image_size_hw=(64, 64),
                                          min_people=3, max_people=4, height_range=(0.4, 0.6))
    with open(out["train_ann"]) as f:
        coco = json.load(f)
    per = np.bincount([a["image_id"] for a in coco["annotations"]], minlength=7)[1:7]
    assert per.max() <= 4 and per.min() >= 2 and per.mean() >= 2.5   # a figure with no pixel left may drop
    with pytest.raises(ValueError, match="min_people"):
        generate_synthetic_pose_dataset(str(tmp_path / "e"), num_train=1, num_val=1, min_people=5, max_people=2)
    assert os.path.exists(out["val_ann"])
