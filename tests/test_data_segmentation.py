"""Segmentation data layer: class specs, sources (Cityscapes folder, custom folders, TFDS), host transforms."""
from __future__ import annotations

import json
import os
import pickle
import sys

import cv2
import numpy as np
import pytest

from hrnet_jax.data import pipeline
from hrnet_jax.data.classes import (CITYSCAPES, CITYSCAPES_CLASS_WEIGHTS, ClassSpec, LabelValueError,
                                    get_class_spec)
from hrnet_jax.data.ops import segmentation as segops
from hrnet_jax.data.pipeline import SkipExample
from hrnet_jax.data.sources.segmentation import (SEG_REASONS, TfdsSegmentationSource, cityscapes_source,
                                                 folder_source)

# The official labelIds -> trainId pairs (HRNet-Semantic-Segmentation lib/datasets/cityscapes.py), written out.
OFFICIAL_PAIRS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
                  26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
OFFICIAL_IGNORED = (0, 1, 2, 3, 4, 5, 6, 9, 10, 14, 15, 16, 18, 29, 30)


def _write_rgb(path, rgb):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    assert cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1]))


def _write_label(path, lab):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    assert cv2.imwrite(str(path), lab)


def _png_bytes(arr):
    ok, buf = cv2.imencode(".png", arr)
    assert ok
    return buf.tobytes()


def _image(seed, h=16, w=32):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# ---- class spec ------------------------------------------------------------------------------------------------

def test_cityscapes_mapping_matches_official_pairs():
    raw = np.array(sorted(OFFICIAL_PAIRS) + list(OFFICIAL_IGNORED) + [255], np.uint8).reshape(1, -1)
    want = np.array([OFFICIAL_PAIRS[v] for v in sorted(OFFICIAL_PAIRS)] + [255] * (len(OFFICIAL_IGNORED) + 1))
    out = CITYSCAPES.to_train_ids(raw)
    assert out.dtype == np.uint8 and out.shape == raw.shape
    np.testing.assert_array_equal(out[0], want)
    lut = CITYSCAPES.lut()
    assert lut.shape == (256,)
    for r, t in OFFICIAL_PAIRS.items():
        assert lut[r] == t
    assert all(lut[r] == 255 for r in OFFICIAL_IGNORED) and lut[255] == 255
    assert all(lut[r] == -1 for r in range(34, 255))
    assert CITYSCAPES.num_classes == 19 and len(CITYSCAPES_CLASS_WEIGHTS) == 19
    assert CITYSCAPES.names[0] == "road" and CITYSCAPES.names[18] == "bicycle"
    assert CITYSCAPES.colors[0] == (128, 64, 128) and CITYSCAPES.colors[13] == (0, 0, 142)
    # inverse (submission): train ids back to labelIds, ignore -> 0 (unlabeled)
    train = np.array([list(range(19)) + [255]], np.uint8)
    np.testing.assert_array_equal(CITYSCAPES.to_raw_ids(train)[0], sorted(OFFICIAL_PAIRS) + [0])
    col = CITYSCAPES.colorize(train)
    assert col.shape == (1, 20, 3) and col.dtype == np.uint8
    assert tuple(col[0, 11]) == (220, 20, 60) and tuple(col[0, 19]) == (0, 0, 0)
    # undeclared values, also in 16-bit maps
    with pytest.raises(LabelValueError, match=r"x\.png.*\[40, 77\]"):
        CITYSCAPES.to_train_ids(np.array([[7, 77, 40]], np.uint8), "x.png")
    with pytest.raises(LabelValueError, match=r"300"):
        CITYSCAPES.to_train_ids(np.array([[7, 300]], np.uint16), "y.png")
    np.testing.assert_array_equal(CITYSCAPES.to_train_ids(np.array([[7, 33]], np.uint16)), [[0, 18]])


def test_class_spec_dict_json_and_validation(tmp_path):
    d = {"name": "mydata", "classes": [{"name": "bg", "color": [0, 0, 0], "id": 10},
                                       {"name": "road", "color": [128, 64, 128], "id": 20}],
         "ignore_index": 255, "ignore_ids": [0, 1]}
    spec = get_class_spec(d)
    assert spec.ids == (10, 20) and spec.ignore_ids == (0, 1) and spec.num_classes == 2
    assert ClassSpec.from_dict(spec.to_dict()) == spec
    p = tmp_path / "spec.json"
    p.write_text(json.dumps(d))
    assert get_class_spec(str(p)) == spec and get_class_spec(spec) is spec
    assert get_class_spec("Cityscapes") is CITYSCAPES
    assert ClassSpec.from_dict(CITYSCAPES.to_dict()) == CITYSCAPES
    np.testing.assert_array_equal(spec.to_train_ids(np.array([[10, 20, 0, 1, 255]], np.uint8)),
                                  [[0, 1, 255, 255, 255]])
    no_ids = get_class_spec({"classes": [{"name": "a", "color": [1, 2, 3]}, {"name": "b", "color": [4, 5, 6]}]})
    np.testing.assert_array_equal(no_ids.to_train_ids(np.array([[0, 1, 255]], np.uint8)), [[0, 1, 255]])
    np.testing.assert_array_equal(no_ids.to_raw_ids(np.array([[0, 1, 255]], np.uint8)), [[0, 1, 255]])
    with pytest.raises(LabelValueError, match=r"\[2\]"):
        no_ids.to_train_ids(np.array([[2]], np.uint8))

    def bad(mod, match):
        dd = json.loads(json.dumps(d))
        mod(dd)
        with pytest.raises(ValueError, match=match):
            ClassSpec.from_dict(dd)

    bad(lambda x: x["classes"][1].update(id=10), "duplicate class id")
    bad(lambda x: x["classes"][1].update(id=1), "both a class")
    bad(lambda x: x["classes"][1].update(id=255), "both a class")
    bad(lambda x: x["classes"][1].update(color=[0, 300, 0]), "colour")
    bad(lambda x: x["classes"][1].update(color=[0, 0]), "colour")
    bad(lambda x: x["classes"][1].pop("id"), "all classes or for none")
    bad(lambda x: x["classes"][1].update(name="bg"), "duplicate class name")
    bad(lambda x: x.update(extra=1), "unknown class-spec field")
    bad(lambda x: x.update(ignore_index=1), "ignore_index")
    bad(lambda x: x.update(classes=[]), "non-empty")
    with pytest.raises(KeyError, match="cityscapes"):
        get_class_spec("ade20k")


# ---- sources ---------------------------------------------------------------------------------------------------

def _cityscapes_tree(root):
    """2 cities; labels with raw ids. Returns {stem: (rgb, raw label)} of the good records."""
    good = {}
    raw = np.full((16, 32), 7, np.uint8)
    raw[:, 8:16], raw[:, 16:24], raw[:4] = 26, 0, 255
    for k, (city, idx) in enumerate([("aachen", 0), ("aachen", 1), ("bremen", 0), ("bremen", 1), ("bremen", 2)]):
        stem = f"{city}_{idx:06d}_000019"
        img = _image(k)
        _write_rgb(root / "leftImg8bit" / "val" / city / f"{stem}_leftImg8bit.png", img)
        lab = np.roll(raw, k, axis=1)
        _write_label(root / "gtFine" / "val" / city / f"{stem}_gtFine_labelIds.png", lab)
        # the other files of a real gtFine folder must be ignored
        _write_label(root / "gtFine" / "val" / city / f"{stem}_gtFine_instanceIds.png", lab)
        good[stem] = (img, lab)
    lab_dir = root / "gtFine" / "val"
    # bremen_000000: corrupt image; bremen_000001: label file missing; bremen_000002: truncated label PNG
    (root / "leftImg8bit" / "val" / "bremen" / "bremen_000000_000019_leftImg8bit.png").write_bytes(b"not a png")
    os.remove(lab_dir / "bremen" / "bremen_000001_000019_gtFine_labelIds.png")
    p = lab_dir / "bremen" / "bremen_000002_000019_gtFine_labelIds.png"
    p.write_bytes(p.read_bytes()[:40])
    return {s: good[s] for s in ("aachen_000000_000019", "aachen_000001_000019")}


def test_cityscapes_source_pairs_mapping_and_skips(tmp_path):
    good = _cityscapes_tree(tmp_path)
    src = cityscapes_source(str(tmp_path), "val")
    assert len(src) == 5 and src.spec is CITYSCAPES
    stems = [os.path.basename(src.image_path(i))[:-len("_leftImg8bit.png")] for i in range(5)]
    assert stems == ["aachen_000000_000019", "aachen_000001_000019", "bremen_000000_000019",
                     "bremen_000001_000019", "bremen_000002_000019"]
    assert src.label_path(0).endswith(os.path.join("gtFine", "val", "aachen", "aachen_000000_000019_gtFine_labelIds.png"))
    to_train = {7: 0, 26: 13, 0: 255, 255: 255}
    for i in range(2):
        img, lab = src.load(i)
        want_img, want_raw = good[stems[i]]
        assert img.dtype == np.uint8 and img.shape == (16, 32, 3) and lab.dtype == np.uint8 and lab.shape == (16, 32)
        np.testing.assert_array_equal(img, want_img)
        np.testing.assert_array_equal(lab, np.vectorize(to_train.get)(want_raw))
    for i, reason in [(2, "corrupt_image"), (3, "missing_label"), (4, "corrupt_label")]:
        with pytest.raises(SkipExample) as e:
            src.load(i)
        assert e.value.reason == reason
        assert reason in SEG_REASONS

    def example(i):
        img, lab = src.load(i)
        return {"image": img, "label": lab}

    ds = pipeline.eval_dataset(len(src), example, batch_size=2, reasons=SEG_REASONS,
                               read=pipeline.ReadConfig(num_threads=1, prefetch_batches=1))
    valid, stats = [], {r: 0 for r in SEG_REASONS}
    for batch in ds:
        for r, n in pipeline.pop_stats(batch).items():
            stats[r] += n
        valid += list(np.asarray(batch["valid"]))
        assert batch["image"].shape[1:] == (16, 32, 3) and batch["label"].shape[1:] == (16, 32)
    assert valid == [True, True, False, False, False, False]  # 5 records padded to 6
    assert stats == {"missing_image": 0, "corrupt_image": 1, "missing_label": 1, "corrupt_label": 1}


def test_cityscapes_source_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"leftImg8bit.*train.*<city>.*gtFine_labelIds\.png"):
        cityscapes_source(str(tmp_path), "train")
    img = _image(0)
    _write_rgb(tmp_path / "leftImg8bit" / "train" / "ulm" / "ulm_000000_000019_leftImg8bit.png", img)
    _write_rgb(tmp_path / "leftImg8bit" / "train" / "ulm" / "ulm_000001_000019_leftImg8bit.png", img)
    _write_rgb(tmp_path / "leftImg8bit" / "train" / "ulm" / "ulm_000002_000019_leftImg8bit.png", img)
    lab_dir = tmp_path / "gtFine" / "train" / "ulm"
    bad = np.full((16, 32), 7, np.uint8)
    bad[3, 5] = 77
    _write_label(lab_dir / "ulm_000000_000019_gtFine_labelIds.png", bad)
    _write_label(lab_dir / "ulm_000001_000019_gtFine_labelIds.png", np.full((16, 31), 7, np.uint8))
    _write_rgb(lab_dir / "ulm_000002_000019_gtFine_labelIds.png", img)  # a colour file where labelIds belong
    src = cityscapes_source(str(tmp_path), "train")
    with pytest.raises(LabelValueError, match=r"ulm_000000_000019_gtFine_labelIds\.png.*\[77\]") as e:
        src.load(0)
    assert e.value.values == (77,)
    with pytest.raises(SkipExample, match="31") as e:  # size mismatch
        src.load(1)
    assert e.value.reason == "corrupt_label"
    with pytest.raises(ValueError, match=r"ulm_000002_000019_gtFine_labelIds\.png.*3 channels"):
        src.load(2)


def test_folder_source_declared_custom_datasets(tmp_path):
    # 3 classes, no ids: the PNGs hold train ids 0..2 (255 = ignore); nested folders, label suffix
    spec_file = tmp_path / "three.json"
    spec_file.write_text(json.dumps({"name": "three", "classes": [
        {"name": "bg", "color": [0, 0, 0]}, {"name": "cat", "color": [255, 0, 0]},
        {"name": "dog", "color": [0, 255, 0]}]}))
    lab = np.zeros((16, 32), np.uint8)
    lab[:, 10:20], lab[:, 20:30], lab[:, 30:] = 1, 2, 255
    img_a, img_b = _image(1), _image(2)
    _write_rgb(tmp_path / "imgs" / "a.png", img_a)
    _write_rgb(tmp_path / "imgs" / "sub" / "b.png", img_b)
    cv2.imwrite(str(tmp_path / "imgs" / "c.jpg"), img_b)  # label missing
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")
    _write_label(tmp_path / "labs" / "a_mask.png", lab)
    _write_label(tmp_path / "labs" / "sub" / "b_mask.png", lab[:, ::-1])
    src = folder_source(str(tmp_path / "imgs"), str(tmp_path / "labs"), str(spec_file), label_suffix="_mask")
    assert len(src) == 3 and src.spec.name == "three" and src.spec.num_classes == 3
    assert [os.path.relpath(src.image_path(i), tmp_path / "imgs") for i in range(3)] == \
        ["a.png", "c.jpg", os.path.join("sub", "b.png")]
    img, got = src.load(0)
    np.testing.assert_array_equal(img, img_a)
    np.testing.assert_array_equal(got, lab)
    np.testing.assert_array_equal(src.load(2)[1], lab[:, ::-1])
    with pytest.raises(SkipExample) as e:
        src.load(1)
    assert e.value.reason == "missing_label"

    # with ids (and an ignore id), images and labels in one folder
    spec = {"name": "ids", "classes": [{"name": "bg", "color": [0, 0, 0], "id": 10},
                                       {"name": "cat", "color": [255, 0, 0], "id": 20},
                                       {"name": "dog", "color": [0, 255, 0], "id": 30}], "ignore_ids": [0]}
    raw = np.full((16, 32), 10, np.uint8)
    raw[:, 10:20], raw[:, 20:30], raw[:, 30:] = 20, 30, 0
    _write_rgb(tmp_path / "both" / "x.png", img_a)
    _write_label(tmp_path / "both" / "x_gt.png", raw)
    src = folder_source(str(tmp_path / "both"), str(tmp_path / "both"), spec, label_suffix="_gt")
    assert len(src) == 1
    np.testing.assert_array_equal(src.load(0)[1], lab)
    raw[0, 0] = 5
    _write_label(tmp_path / "both" / "x_gt.png", raw)
    with pytest.raises(LabelValueError, match=r"x_gt\.png.*\[5\].*class ids 10, 20, 30, ignore 0, 255"):
        src.load(0)
    with pytest.raises(ValueError, match="label_suffix"):
        folder_source(str(tmp_path / "both"), str(tmp_path / "both"), spec)
    with pytest.raises(FileNotFoundError):
        folder_source(str(tmp_path / "labs"), str(tmp_path / "labs"), spec, image_exts=(".jpg",))


def test_tfds_source_without_tensorflow(tmp_path):
    """A tiny TFDS ``cityscapes/semantic_segmentation`` dataset (ArrayRecord), prepared and read back without
    TensorFlow.

    The real TFDS cityscapes builder cannot prepare without TensorFlow: its ``_split_generators`` /
    ``_generate_examples`` list the extracted zips with ``tf.io.gfile`` (ModuleNotFoundError: tensorflow). So the
    test subclasses it and replaces only those two methods: the features (``_info``: ``image_id`` Text,
    ``image_left`` PNG Image, ``segmentation_label`` 1-channel PNG Image with raw labelIds), config, name and
    version are the real builder's, and the examples are given as encoded PNG bytes (encoding arrays would call
    TF). The reader then opens it through the *registered* real builder, as in production.
    """
    tfds = pytest.importorskip("tensorflow_datasets")
    from tensorflow_datasets.datasets.cityscapes import cityscapes_dataset_builder as cb

    rng = np.random.default_rng(0)
    records = {}
    for split, n in (("train", 1), ("validation", 3)):
        for k in range(n):
            raw = rng.choice(np.array(sorted(OFFICIAL_PAIRS) + [0, 4, 255], np.uint8), size=(8, 12))
            if split == "train":
                raw[2, 3] = 77  # undeclared
            records[(split, f"aachen_{k:06d}_000019")] = (_image(k, 8, 12), raw)

    with tfds.core.registered.skip_registration():
        class TinyCityscapes(cb.Builder):
            name = "cityscapes"
            code_path = None  # no checksums file (and no importlib_resources lookup)

            @classmethod
            def get_metadata(cls):
                return cb.Builder.get_metadata()

            def _split_generators(self, dl_manager):
                return {s: self._generate_examples(split=s) for s in ("train", "validation")}

            def _generate_examples(self, split):
                for (s, image_id), (img, raw) in records.items():
                    if s == split:
                        yield image_id, {"image_id": image_id, "image_left": _png_bytes(img[..., ::-1]),
                                         "segmentation_label": _png_bytes(raw)}

    data_dir = str(tmp_path / "tfds")
    TinyCityscapes(config="semantic_segmentation", data_dir=data_dir,
                   file_format="array_record").download_and_prepare()

    src = TfdsSegmentationSource("cityscapes", "validation", data_dir, CITYSCAPES, config="semantic_segmentation")
    assert len(src) == 3 and src.spec is CITYSCAPES
    assert src.image_path(2) == "tfds:cityscapes/semantic_segmentation/validation[2]"
    seen = set()
    for i in range(len(src)):
        rec = src.record(i)
        assert rec["image_left"].dtype == np.uint8 and rec["image_left"].shape == (8, 12, 3)
        assert rec["segmentation_label"].dtype == np.uint8 and rec["segmentation_label"].shape == (8, 12, 1)
        image_id = rec["image_id"].decode()
        seen.add(image_id)
        want_img, want_raw = records[("validation", image_id)]
        img, lab = src.load(i)
        np.testing.assert_array_equal(img, want_img)
        want = np.vectorize(lambda v: OFFICIAL_PAIRS.get(int(v), 255))(want_raw)
        np.testing.assert_array_equal(lab, want)
    assert seen == {f"aachen_{k:06d}_000019" for k in range(3)}
    clone = pickle.loads(pickle.dumps(src))
    np.testing.assert_array_equal(clone.load(1)[1], src.load(1)[1])

    train = TfdsSegmentationSource("cityscapes", "train", data_dir, "cityscapes", config="semantic_segmentation")
    with pytest.raises(LabelValueError, match=r"tfds:cityscapes/semantic_segmentation/train\[0\].*\[77\]"):
        train.load(0)
    with pytest.raises(KeyError, match="image_right"):
        TfdsSegmentationSource("cityscapes", "train", data_dir, CITYSCAPES, image_key="image_right",
                               config="semantic_segmentation")
    with pytest.raises(FileNotFoundError, match="not prepared"):
        TfdsSegmentationSource("cityscapes", "train", str(tmp_path / "empty"), CITYSCAPES,
                               config="semantic_segmentation")
    assert "tensorflow" not in sys.modules


# ---- transforms ------------------------------------------------------------------------------------------------

def test_resize_long_side_sizes_and_nearest_labels():
    # landscape 16x32 -> long 45: w 45, h = int(16 * 45 / 32 + 0.5) = int(23.0) = 23 (22.5 rounds up, not to even)
    img = _image(0, 16, 32)
    lab = np.random.default_rng(1).choice(np.array([3, 9, 200], np.uint8), size=(16, 32))
    out_img, out_lab = segops.resize_long_side(img, lab, 45)
    assert out_img.shape == (23, 45, 3) and out_lab.shape == (23, 45) and out_lab.dtype == np.uint8
    assert set(np.unique(out_lab)) <= {3, 9, 200}
    # portrait 30x20 -> long 7: h 7, w = int(20 * 7 / 30 + 0.5) = int(5.1667) = 5
    out_img, none = segops.resize_long_side(_image(0, 30, 20), None, 7)
    assert out_img.shape == (7, 5, 3) and none is None
    # square: the width is the long side; 10x10 -> 4x4
    assert segops.resize_long_side(_image(0, 10, 10), None, 4)[0].shape == (4, 4, 3)
    assert segops.long_side_size(1024, 2048, int(2048 * 0.5 + 0.5)) == (512, 1024)
    for size in [(5, 7), (40, 90), (16, 32), (3, 3)]:
        assert set(np.unique(segops.resize_label(lab, size))) <= {3, 9, 200}
    assert segops.resize_image(img, (8, 12)).shape == (8, 12, 3)


def test_pad_to_fills_bottom_right():
    img = np.full((3, 4, 3), 7, np.uint8)
    lab = np.full((3, 4), 5, np.uint8)
    pi, pl = segops.pad_to(img, lab, (5, 6))
    assert pi.shape == (5, 6, 3) and pl.shape == (5, 6) and pi.dtype == np.uint8 and pl.dtype == np.uint8
    assert (pi[:3, :4] == 7).all() and (pi[3:] == 0).all() and (pi[:, 4:] == 0).all()
    assert (pl[:3, :4] == 5).all() and (pl[3:] == 255).all() and (pl[:, 4:] == 255).all()
    # only the short dimension grows; nothing is cropped
    pi, pl = segops.pad_to(img, lab, (2, 6), label_fill=9)
    assert pi.shape == (3, 6, 3) and (pl[:, 4:] == 9).all()
    assert segops.pad_to(img, None, (1, 1))[0] is img


def test_random_crop_matches_identically_seeded_slicing():
    img = _image(3, 20, 30)
    lab = np.arange(600, dtype=np.int32).reshape(20, 30).astype(np.uint16)
    for seed in range(5):
        ci, cl = segops.random_crop(img, lab, (7, 11), np.random.default_rng(seed))
        ref = np.random.default_rng(seed)
        top, left = int(ref.integers(0, 20 - 7 + 1)), int(ref.integers(0, 30 - 11 + 1))
        np.testing.assert_array_equal(ci, img[top:top + 7, left:left + 11])
        np.testing.assert_array_equal(cl, lab[top:top + 7, left:left + 11])
    full = segops.random_crop(img, lab, (20, 30), np.random.default_rng(0))
    np.testing.assert_array_equal(full[0], img)
    with pytest.raises(ValueError, match="pad_to"):
        segops.random_crop(img, lab, (21, 30), np.random.default_rng(0))


def test_random_scale_factor_official_grid():
    rng = np.random.default_rng(0)
    seen = {segops.random_scale_factor(rng) for _ in range(400)}
    assert seen == {0.5 + k / 10.0 for k in range(17)}  # 0.5, 0.6, ..., 2.1 (both ends)
    assert {segops.random_scale_factor(rng, 1.0, 1.0) for _ in range(5)} == {1.0}


def test_train_transform_shapes_values_and_flip():
    img = _image(4, 16, 32)
    lab = np.random.default_rng(5).choice(np.array([0, 1, 7], np.uint8), size=(16, 32))
    for seed in range(12):
        # base 32 with scales 0.5..2.1: from 8x16 (padded) to 34x67 (cropped)
        oi, ol = segops.train_transform(img, lab, np.random.default_rng(seed), crop_hw=(12, 20), base_size=32)
        assert oi.shape == (12, 20, 3) and ol.shape == (12, 20) and oi.dtype == np.uint8 and ol.dtype == np.uint8
        assert oi.flags.c_contiguous and ol.flags.c_contiguous
        assert set(np.unique(ol)) <= {0, 1, 7, 255}
    # scale 1 at the image's own size: the output is the input or its mirror, both occur
    outs = set()
    for seed in range(16):
        oi, ol = segops.train_transform(img, lab, np.random.default_rng(seed), crop_hw=(16, 32), base_size=32,
                                        scale_range=(1.0, 1.0))
        flipped = np.array_equal(oi, img[:, ::-1])
        assert flipped or np.array_equal(oi, img)
        np.testing.assert_array_equal(ol, lab[:, ::-1] if flipped else lab)
        outs.add(flipped)
    assert outs == {True, False}
    # a small input is padded with image 0 / label ignore_index
    oi, ol = segops.train_transform(img[:4, :4], lab[:4, :4], np.random.default_rng(0), crop_hw=(12, 20),
                                    base_size=4, scale_range=(1.0, 1.0), flip=False, ignore_index=254)
    np.testing.assert_array_equal(oi[:4, :4], img[:4, :4])
    assert (oi[4:] == 0).all() and (ol[4:] == 254).all() and (ol[:, 4:] == 254).all()


def test_a_class_may_merge_several_raw_ids():
    from hrnet_jax.data.classes import ClassSpec, LabelValueError
    spec = ClassSpec.from_dict({"name": "coarse", "ignore_ids": [0], "classes": [
        {"name": "flat", "color": [1, 2, 3], "id": [7, 8]}, {"name": "vehicle", "color": [4, 5, 6], "id": [26, 27, 28]},
        {"name": "sky", "color": [7, 8, 9], "id": 23}]})
    raw = np.array([[7, 8, 26, 27], [28, 23, 0, 255]], np.uint8)
    np.testing.assert_array_equal(spec.to_train_ids(raw), [[0, 0, 1, 1], [1, 2, 255, 255]])
    np.testing.assert_array_equal(spec.to_raw_ids(np.array([[0, 1, 2, 255]])), [[7, 26, 23, 0]])   # first id
    assert ClassSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(LabelValueError, match="11"):
        spec.to_train_ids(np.array([[11]], np.uint8))
    with pytest.raises(ValueError, match=r"duplicate class id\(s\) \[8\]"):
        ClassSpec.from_dict({"classes": [{"name": "a", "color": [0, 0, 0], "id": [7, 8]},
                                         {"name": "b", "color": [0, 0, 0], "id": 8}]})
