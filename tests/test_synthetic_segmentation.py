"""Synthetic Cityscapes-format street scenes: layout and names, label ids, image/label agreement, determinism and
the folder marker semantics (checked against literal Cityscapes facts written out here, not the module's tables)."""
import os
import re

import cv2
import numpy as np
import pytest

from hrnet_jax.data.synthetic.pose import SyntheticFolderError
from hrnet_jax.data.synthetic.segmentation import ensure_synthetic_seg_dataset, generate_synthetic_seg_dataset

SMALL = dict(num_train=6, num_val=3, image_size_hw=(64, 128), seed=0)
H, W = 64, 128
# the official Cityscapes label ids (labels.py of cityscapesScripts), and those of the 19 evaluated train classes
OFFICIAL_IDS = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26,
                27, 28, 29, 30, 31, 32, 33]
TRAIN_CLASS_IDS = {7: "road", 8: "sidewalk", 11: "building", 12: "wall", 13: "fence", 17: "pole",
                   19: "traffic light", 20: "traffic sign", 21: "vegetation", 22: "terrain", 23: "sky", 24: "person",
                   25: "rider", 26: "car", 27: "truck", 28: "bus", 31: "train", 32: "motorcycle", 33: "bicycle"}
NAME = re.compile(r"^(leftImg8bit|gtFine)/(train|val)/([a-z]+)/\3_(\d{6})_(\d{6})_(leftImg8bit|gtFine_labelIds)\.png$")


def _listing(root):
    out = []
    for d, _, names in os.walk(root):
        out += [os.path.relpath(os.path.join(d, n), root).replace(os.sep, "/") for n in names]
    return sorted(out)


def _bytes(root):
    return {p: open(os.path.join(root, p), "rb").read() for p in _listing(root)}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("seg") / "cs")
    info = generate_synthetic_seg_dataset(root, **SMALL)
    files = [p for p in _listing(root) if not p.startswith(".hrnet_jax_synthetic")]
    pairs = []
    for p in files:
        m = NAME.match(p)
        if m and m.group(1) == "leftImg8bit":
            lab = p.replace("leftImg8bit/", "gtFine/", 1).replace("_leftImg8bit.png", "_gtFine_labelIds.png")
            img = cv2.imread(os.path.join(root, p), cv2.IMREAD_UNCHANGED)
            pairs.append((m.group(2), img[..., ::-1], cv2.imread(os.path.join(root, lab), cv2.IMREAD_UNCHANGED)))
    return root, info, files, pairs


def test_cityscapes_layout_and_shapes(small):
    root, info, files, pairs = small
    assert info == dict(root=root, train=6, val=3, classes=info["classes"])
    assert all(NAME.match(p) for p in files), [p for p in files if not NAME.match(p)]
    count = {}
    for p in files:
        m = NAME.match(p)
        count[(m.group(1), m.group(2))] = count.get((m.group(1), m.group(2)), 0) + 1
        stem = p.split("/")[-1].rsplit("_leftImg8bit", 1)[0].rsplit("_gtFine", 1)[0]
        other = (p.replace("leftImg8bit/", "gtFine/", 1).replace("_leftImg8bit.png", "_gtFine_labelIds.png")
                 if m.group(1) == "leftImg8bit" else
                 p.replace("gtFine/", "leftImg8bit/", 1).replace("_gtFine_labelIds.png", "_leftImg8bit.png"))
        assert other in files and stem.startswith(m.group(3) + "_")
    assert count == {("leftImg8bit", "train"): 6, ("gtFine", "train"): 6, ("leftImg8bit", "val"): 3,
                     ("gtFine", "val"): 3}
    train_cities = {p.split("/")[2] for p in files if p.split("/")[1] == "train"}
    val_cities = {p.split("/")[2] for p in files if p.split("/")[1] == "val"}
    assert len(train_cities) == 3 and not train_cities & val_cities  # Cityscapes: val cities are not train cities
    for _split, img, lab in pairs:
        assert img.dtype == np.uint8 and img.shape == (H, W, 3)
        assert lab.dtype == np.uint8 and lab.shape == (H, W)


def test_label_ids_are_cityscapes_ids_and_enough_classes(small):
    root, info, _files, pairs = small
    seen = set()
    per_image = []
    for _split, _img, lab in pairs:
        vals = set(np.unique(lab).tolist())
        assert vals <= set(OFFICIAL_IDS), vals - set(OFFICIAL_IDS)
        seen |= vals
        per_image.append(len(vals & set(TRAIN_CLASS_IDS)))
    present = [TRAIN_CLASS_IDS[i] for i in sorted(seen & set(TRAIN_CLASS_IDS))]
    assert len(present) >= 8, present
    assert sorted(info["classes"]) == sorted(present)
    assert np.median(per_image) >= 6, per_image
    assert {7, 11, 21}.issubset(seen)  # road, building, vegetation in any street set


def test_pixel_colours_follow_the_labels(small):
    _root, _info, _files, pairs = small
    sums = {}
    for _split, img, lab in pairs:
        for cid in (7, 21, 23):  # road, vegetation, sky
            m = lab == cid
            if m.any():
                s, n = sums.get(cid, (np.zeros(3), 0))
                sums[cid] = (s + img[m].astype(np.float64).sum(0), n + int(m.sum()))
    assert set(sums) == {7, 21, 23}
    mean = {c: s / n for c, (s, n) in sums.items()}
    road, veg, sky = mean[7], mean[21], mean[23]
    for a, b in ((road, veg), (road, sky), (veg, sky)):
        assert np.linalg.norm(a - b) > 25, (a, b)
    assert veg[1] > veg[0] and veg[1] > veg[2]  # vegetation is green
    assert sky[2] > road[2] + 40  # sky: bright, bluish; asphalt: dark grey
    assert abs(road[0] - road[2]) < 25  # asphalt is grey
    # texture: a class is not one flat colour within an image
    _s, img, lab = pairs[0]
    assert img[lab == 7].std(0).max() > 3


def test_deterministic_per_seed(tmp_path, small):
    root, _info, _files, _pairs = small
    again = str(tmp_path / "again")
    generate_synthetic_seg_dataset(again, **SMALL)
    a, b = _bytes(root), _bytes(again)
    assert a == b
    other = str(tmp_path / "other")
    generate_synthetic_seg_dataset(other, **{**SMALL, "seed": 1})
    c = _bytes(other)
    assert set(c) == set(a)
    assert sum(a[p] != c[p] for p in a if p.endswith(".png")) == len([p for p in a if p.endswith(".png")])


def test_marker_semantics(tmp_path):
    small = dict(num_train=2, num_val=1, image_size_hw=(32, 64), seed=3, num_cities=1)
    root = str(tmp_path / "data")
    first = ensure_synthetic_seg_dataset(root, **small)
    stamp = {p: os.stat(os.path.join(root, p)).st_mtime_ns for p in _listing(root)}
    assert ensure_synthetic_seg_dataset(root, **small) == first  # a no-op: nothing rewritten
    assert {p: os.stat(os.path.join(root, p)).st_mtime_ns for p in _listing(root)} == stamp

    # other parameters: regenerated, none of the old files left over
    bigger = ensure_synthetic_seg_dataset(root, **{**small, "num_train": 3, "seed": 4})
    assert bigger["train"] == 3
    imgs = [p for p in _listing(root) if p.startswith("leftImg8bit/")]
    assert len(imgs) == 4 and len([p for p in imgs if "/train/" in p]) == 3

    # an incomplete dataset (a file went missing) is regenerated
    os.remove(os.path.join(root, imgs[0]))
    ensure_synthetic_seg_dataset(root, **{**small, "num_train": 3, "seed": 4})
    assert os.path.isfile(os.path.join(root, imgs[0]))

    # a folder we did not write is refused and left as it is
    foreign = tmp_path / "user"
    (foreign / "leftImg8bit" / "train" / "aachen").mkdir(parents=True)
    (foreign / "leftImg8bit" / "train" / "aachen" / "aachen_000000_000019_leftImg8bit.png").write_bytes(b"user data")
    before = _bytes(str(foreign))
    with pytest.raises(SyntheticFolderError):
        ensure_synthetic_seg_dataset(str(foreign), **small)
    assert _bytes(str(foreign)) == before

    # our folder with a user's file added: regenerating it would need to delete around that file -> refused
    (tmp_path / "data" / "notes.txt").write_text("mine")
    with pytest.raises(SyntheticFolderError):
        ensure_synthetic_seg_dataset(root, **small)
    assert (tmp_path / "data" / "notes.txt").read_text() == "mine"
