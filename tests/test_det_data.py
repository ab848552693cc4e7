"""Detection data: COCO instances source (label mapping, bad annotations skipped and counted), the resize /
bucket / pad / flip geometry against numpy and OpenCV worked by hand, the bucketed train / eval datasets, and
the synthetic det_demo generator's folder rules."""
import json
import os

import cv2
import numpy as np
import pytest

from hrnet_jax.data import pipeline as dp
from hrnet_jax.data.ops import detection as D
from hrnet_jax.data.sources.coco_instances import CocoInstancesSource
from hrnet_jax.data.synthetic.detection import CATEGORIES, SyntheticFolderError, generate_synthetic_det_dataset
from hrnet_jax.tasks.detection import pipeline as P


def _write_image(path, h, w, seed=0):
    img = np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)
    cv2.imwrite(path, img)
    return img


# ---- geometry ----------------------------------------------------------------------------------------------------
def test_rescale_size_recipe_by_hand():
    # 640x480 (w x h): short side 480 -> 800 (factor 1.6667), long 1067 <= 1333
    assert D.rescale_size(480, 640, (1333, 800)) == (800, int(640 * 800 / 480 + 0.5))
    # a very wide 300x1200 image: the long side caps the factor at 1333 / 1200
    f = 1333 / 1200
    assert D.rescale_size(300, 1200, (1333, 800)) == (int(300 * f + 0.5), int(1200 * f + 0.5))
    assert D.rescale_size(640, 480, (1333, 800)) == (int(640 * 800 / 480 + 0.5), 800)


def test_bucket_choice_by_hand():
    buckets = ((800, 1088), (1088, 800), (800, 1344), (1344, 800))
    assert D.choose_bucket(800, 1067, buckets) == 0        # 4:3 landscape -> the small landscape bucket
    assert D.choose_bucket(1067, 800, buckets) == 1
    assert D.choose_bucket(750, 1333, buckets) == 2        # wide -> the long landscape bucket
    assert D.choose_bucket(1333, 750, buckets) == 3
    # nothing holds 900x1400: the bucket keeping it largest (min(800/900, 1344/1400) = 0.889 beats 0.571)
    assert D.choose_bucket(900, 1400, buckets) == 2
    b, hw = D.target_size(900, 1400, (1400, 900), buckets)
    f = min(800 / 900, 1344 / 1400)
    assert b == 2 and hw == (int(900 * f + 0.5), int(1400 * f + 0.5))
    with pytest.raises(ValueError):
        D.check_buckets([(100, 96)])


@pytest.mark.parametrize("flip", [False, True])
def test_example_geometry_maps_back_exactly(flip):
    h, w = 90, 150
    img = np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)
    boxes = np.array([[10, 20, 60, 80], [100.5, 0, 150, 45.25], [0, 0, 5, 5]], np.float32)
    labels = np.array([2, 0, 1], np.int32)
    scale, buckets = (200, 120), ((128, 224), (224, 128))
    ex = D.detection_example(img, boxes, labels, scale=scale, buckets=buckets, max_boxes=5, flip=flip)
    # by hand: factor min(200/150, 120/90) = 1.3333 -> 120 x 200, landscape bucket 128 x 224
    nh, nw = int(90 * 4 / 3 + 0.5), int(150 * 4 / 3 + 0.5)
    assert (nh, nw) == (120, 200) and ex["image"].shape == (128, 224, 3) and int(ex["bucket"]) == 0
    np.testing.assert_array_equal(ex["image_hw"], [nh, nw])
    np.testing.assert_allclose(ex["scale"], [nw / w, nh / h], rtol=1e-6)
    ref = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
    if flip:
        ref = ref[:, ::-1]
    np.testing.assert_array_equal(ex["image"][:nh, :nw], ref)
    assert not ex["image"][nh:].any() and not ex["image"][:, nw:].any()   # bottom / right padding
    np.testing.assert_array_equal(ex["gt_valid"], [True, True, True, False, False])
    np.testing.assert_array_equal(ex["gt_labels"][:3], labels)
    got = ex["gt_boxes"][:3].astype(np.float64)
    if flip:  # numpy by hand: x -> nw - x, x1 and x2 swap
        got = np.stack([nw - got[:, 2], got[:, 1], nw - got[:, 0], got[:, 3]], 1)
    np.testing.assert_allclose(D.boxes_to_original(got, ex["scale"]), boxes, atol=1e-4)


def test_pad_boxes_truncates_to_max():
    b, lab, v = D.pad_boxes(np.arange(24, dtype=np.float32).reshape(6, 4), np.arange(6), 4)
    assert b.shape == (4, 4) and v.all() and lab.tolist() == [0, 1, 2, 3]


# ---- source: categories, bad annotations ---------------------------------------------------------------------------
def _coco(tmp_path, anns, images=None, cats=((3, "cat"), (7, "dog"), (11, "owl"))):
    d = tmp_path / "imgs"
    d.mkdir(exist_ok=True)
    images = images or [dict(id=1, file_name="a.jpg", height=40, width=60),
                        dict(id=2, file_name="b.jpg", height=60, width=40),
                        dict(id=3, file_name="gone.jpg", height=40, width=40)]
    for im in images:
        if im["file_name"] != "gone.jpg":
            _write_image(str(d / im["file_name"]), im["height"], im["width"], im["id"])
    js = dict(images=images, annotations=[dict(id=i + 1, **a) for i, a in enumerate(anns)],
              categories=[dict(id=c, name=n) for c, n in cats])
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(js))
    return str(path), str(d)


def test_source_mapping_and_bad_annotations(tmp_path):
    anns = [
        dict(image_id=1, category_id=7, bbox=[5, 6, 10, 12], area=120, iscrowd=0),      # kept
        dict(image_id=1, category_id=11, bbox=[50, 30, 20, 20], area=400, iscrowd=0),   # kept, clipped to 60x40
        dict(image_id=1, category_id=3, bbox=[1, 1, 10, 10], area=100, iscrowd=1),      # crowd
        dict(image_id=1, category_id=3, bbox=[1, 1, 10, 10], area=0, iscrowd=0),        # zero area
        dict(image_id=1, category_id=3, bbox=[1, 1, 0.5, 10], area=5, iscrowd=0),       # w < 1
        dict(image_id=1, category_id=3, bbox=[70, 10, 10, 10], area=100, iscrowd=0),    # outside the image
        dict(image_id=1, category_id=3, bbox=[1, 1, float("nan"), 10], area=5, iscrowd=0),  # non-finite
        dict(image_id=9, category_id=3, bbox=[1, 1, 10, 10], area=100, iscrowd=0),      # unknown image
        dict(image_id=2, category_id=5, bbox=[1, 1, 10, 10], area=100, iscrowd=0),      # unknown category
        dict(image_id=3, category_id=3, bbox=[1, 1, 10, 10], area=100, iscrowd=0),      # image file missing
    ]
    ann, imgs = _coco(tmp_path, anns)
    src = CocoInstancesSource(ann, imgs, drop_empty=True)
    assert src.cat_ids == [3, 7, 11] and src.class_names == ["cat", "dog", "owl"]
    assert src.skipped() == dict(skipped_crowd=1, skipped_bad_box=3, skipped_outside_image=1,
                                 skipped_unknown_image=1, skipped_other_category=1, skipped_missing_image=1,
                                 skipped_no_boxes=1)
    assert len(src) == 1 and src[0]["image_id"] == 1
    np.testing.assert_allclose(src[0]["boxes"], [[5, 6, 15, 18], [50, 30, 60, 40]])
    np.testing.assert_array_equal(src[0]["labels"], [1, 2])
    val = CocoInstancesSource(ann, imgs, drop_empty=False)          # evaluation keeps images without boxes
    assert [r["image_id"] for r in val] == [1, 2]
    sub = CocoInstancesSource(ann, imgs, categories=[11, 7])        # a chosen category list, in its order
    np.testing.assert_array_equal(sub[0]["labels"], [1, 0])   # dog (7) -> 1, owl (11) -> 0
    with pytest.raises(ValueError, match="not in the file"):
        CocoInstancesSource(ann, imgs, categories=[4])


# ---- bucketed datasets ------------------------------------------------------------------------------------------
def test_bucketed_train_and_eval_datasets(tmp_path):
    images = [dict(id=i + 1, file_name=f"{i}.jpg", height=40 if i % 3 else 60, width=60 if i % 3 else 40)
              for i in range(9)]
    anns = [dict(image_id=i + 1, category_id=3, bbox=[2, 3, 20, 10], area=200, iscrowd=0) for i in range(9)]
    ann, d = _coco(tmp_path, anns, images=images, cats=((3, "x"),))
    os.remove(os.path.join(d, "4.jpg"))                 # found missing when the dataset reads it
    src = CocoInstancesSource(ann, d, check_images=False)
    geo = P.Geometry((96, 64), ((64, 96), (96, 64)), max_boxes=3)
    groups = P.split_by_bucket(src, geo)
    assert {b: len(v) for b, v in groups.items()} == {0: 6, 1: 3}
    it = iter(P.train_dataset(src, geo, batch_size=2, seed=0, flip_prob=0.5))
    shapes, bad = set(), 0
    for _ in range(12):
        batch = next(it)
        bad += dp.pop_stats(batch)["missing_image"]
        shapes.add(batch["image"].shape)
        assert batch["gt_valid"][:, 0].all() and not batch["gt_valid"][:, 1:].any()
    assert shapes == {(2, 64, 96, 3), (2, 96, 64, 3)}   # every batch holds one bucket; both occur
    assert bad >= 1
    seen, n_valid, stats = [], 0, {}
    for batch in P.eval_dataset(src, geo, batch_size=2):
        for k, v in dp.pop_stats(batch).items():
            stats[k] = stats.get(k, 0) + v
        keep = batch["valid"]
        n_valid += int(keep.sum())
        seen += batch["image_id"][keep].tolist()
    assert sorted(seen) == [i for i in range(1, 10) if i != 5] and stats["missing_image"] == 1
    assert P.eval_num_batches(src, geo, 2) == 3 + 2


# ---- synthetic det_demo data -------------------------------------------------------------------------------------
def test_synthetic_generator(tmp_path):
    root = str(tmp_path / "syn")
    out = generate_synthetic_det_dataset(root, num_train=6, num_val=3, image_size_hw=(96, 128), seed=3)
    src = CocoInstancesSource(out["train_ann"], out["train_images"])
    assert len(src) == 6 and src.cat_ids == [c for c, _ in CATEGORIES] and not any(src.skipped().values())
    for r in src:
        img = cv2.imread(r["image_path"])
        assert img.shape == (96, 128, 3)
        b = r["boxes"]
        assert (b[:, 0] >= 0).all() and (b[:, 2] <= 128).all() and (b[:, 3] <= 96).all()
    mtime = os.path.getmtime(out["val_ann"])
    generate_synthetic_det_dataset(root, num_train=6, num_val=3, image_size_hw=(96, 128), seed=3)  # reused
    assert os.path.getmtime(out["val_ann"]) == mtime
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("x")
    with pytest.raises(SyntheticFolderError):
        generate_synthetic_det_dataset(str(foreign), num_train=2, num_val=1)
    assert os.listdir(foreign) == ["mine.txt"]

