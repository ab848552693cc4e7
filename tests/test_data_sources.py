"""Sources and generators: the synthetic pose generator never touches a user's folder; the shapes source."""
import hashlib
import json
import os

import numpy as np
import pytest

from hrnet_jax.data.keypoints import COCO17
from hrnet_jax.data.sources.shapes import SyntheticShapes
from hrnet_jax.data.synthetic.pose import MARKER, SyntheticFolderError, generate_synthetic_pose_dataset

SMALL = dict(num_train=2, num_val=1, image_size_hw=(64, 64), max_people=1)


def _tree_hashes(root):
    out = {}
    for d, _, names in os.walk(root):
        for n in names:
            p = os.path.join(d, n)
            out[os.path.relpath(p, root)] = hashlib.sha256(open(p, "rb").read()).hexdigest()
    return out


@pytest.fixture()
def user_dataset(tmp_path):
    """A small user COCO-format dataset: annotations plus two image files."""
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    (root / "images" / "train").mkdir(parents=True)
    (root / "annotations" / "person_keypoints_train.json").write_text(json.dumps({"images": [], "annotations": []}))
    (root / "images" / "train" / "000000000001.jpg").write_bytes(b"\xff\xd8 user image one")
    (root / "images" / "train" / "000000000002.jpg").write_bytes(b"\xff\xd8 user image two")
    return str(root)


def test_generator_refuses_a_user_dataset_and_leaves_it_byte_identical(user_dataset):
    before = _tree_hashes(user_dataset)
    with pytest.raises(SyntheticFolderError) as e:
        generate_synthetic_pose_dataset(user_dataset, COCO17, **SMALL)
    assert user_dataset in str(e.value) and "empty folder" in str(e.value)
    assert _tree_hashes(user_dataset) == before


def test_generator_refuses_other_parameters_over_foreign_files(tmp_path):
    root = str(tmp_path / "syn")
    generate_synthetic_pose_dataset(root, COCO17, **SMALL)
    with open(os.path.join(root, "annotations", "my_notes.json"), "w") as f:
        f.write("{}")
    before = _tree_hashes(root)
    with pytest.raises(SyntheticFolderError, match=root):
        generate_synthetic_pose_dataset(root, COCO17, **{**SMALL, "seed": 5})
    assert _tree_hashes(root) == before


def test_generator_reuses_its_own_folder_and_regenerates_its_own_files(tmp_path):
    root = str(tmp_path / "syn")
    a = generate_synthetic_pose_dataset(root, COCO17, **SMALL)
    marker = json.load(open(os.path.join(root, MARKER)))
    assert marker["complete"] and marker["params"]["num_train"] == 2
    before = _tree_hashes(root)
    mtimes = {p: os.stat(os.path.join(root, p)).st_mtime_ns for p in before}
    assert generate_synthetic_pose_dataset(root, COCO17, **SMALL) == a          # reused, nothing rewritten
    assert {p: os.stat(os.path.join(root, p)).st_mtime_ns for p in before} == mtimes
    generate_synthetic_pose_dataset(root, COCO17, **{**SMALL, "num_train": 3})  # own files only: regenerated
    assert len(os.listdir(os.path.join(root, "images", "train"))) == 3
    assert json.load(open(os.path.join(root, MARKER)))["params"]["num_train"] == 3


def test_shapes_source_uint8_deterministic_and_learnable():
    tr, te = SyntheticShapes(240, seed=0), SyntheticShapes(120, seed=1)
    ex = tr[3]
    assert ex["image"].dtype == np.uint8 and ex["image"].shape == (32, 32, 3) and ex["label"].dtype == np.int32
    np.testing.assert_array_equal(SyntheticShapes(240, seed=0)[3]["image"], ex["image"])

    def feat(src, i):   # the class colour shows in the brightest pixels
        return np.percentile(src[i]["image"].reshape(-1, 3).astype(np.float32), 97, axis=0)

    x = np.array([feat(tr, i) for i in range(len(tr))])
    y = np.array([tr[i]["label"] for i in range(len(tr))])
    centroids = np.array([x[y == c].mean(0) for c in range(tr.num_classes)])
    xt = np.array([feat(te, i) for i in range(len(te))])
    yt = np.array([te[i]["label"] for i in range(len(te))])
    acc = np.mean(np.argmin(((xt[:, None] - centroids[None]) ** 2).sum(-1), 1) == yt)
    assert acc > 0.85, acc
