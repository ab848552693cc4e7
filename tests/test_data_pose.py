"""Pose data pipeline: specs, skipping/counting bad data, determinism, eval padding, uint8 images, and a
5-keypoint dataset trained and evaluated end to end with a stub model."""
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hrnet_jax.data import pipeline as dp
from hrnet_jax.data.keypoints import COCO17, MPII16, KeypointSpec, get_spec
from hrnet_jax.data.ops.image import IMAGENET_MEAN, IMAGENET_STD
from hrnet_jax.data.sources.coco_keypoints import CocoKeypointSource
from hrnet_jax.data.synthetic.pose import generate_synthetic_pose_dataset
from hrnet_jax.tasks.pose import pipeline as P
from hrnet_jax.tasks.pose.decode import decode_heatmaps
from hrnet_jax.tasks.pose.evaluate import PoseEvaluator, load_coco
from hrnet_jax.tasks.pose.loss import joints_mse_loss

SPEC5 = dict(name="star5", keypoints=["center", "left_arm", "right_arm", "left_leg", "right_leg"],
             flip_pairs=[[1, 2], [3, 4]], skeleton=[[0, 1], [0, 2], [0, 3], [0, 4]],
             sigmas=[0.05, 0.06, 0.06, 0.08, 0.08])


# ---- specs --------------------------------------------------------------------------------------------------------
def test_builtin_specs():
    for spec, k in ((COCO17, 17), (MPII16, 16)):
        perm = spec.flip_permutation()
        assert spec.num_keypoints == k and len(spec.sigmas) == k
        np.testing.assert_array_equal(perm[perm], np.arange(k))  # an involution
    assert COCO17.keypoints[COCO17.flip_permutation()[5]] == "right_shoulder"
    assert MPII16.keypoints[MPII16.flip_permutation()[0]] == "left_ankle"


def test_custom_spec_from_dict_and_file(tmp_path):
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(SPEC5))
    a, b = KeypointSpec.from_dict(SPEC5), get_spec(str(path))
    assert a == b and a.num_keypoints == 5 and a.upper_body_ids == (0, 1, 2, 3, 4)
    assert KeypointSpec.from_dict(a.to_dict()) == a
    with pytest.raises(ValueError):
        KeypointSpec.from_dict({**SPEC5, "sigmas": [0.1, 0.1]})
    with pytest.raises(ValueError):
        KeypointSpec.from_dict({**SPEC5, "flip_pairs": [[1, 7]]})


# ---- bad data ---------------------------------------------------------------------------------------------------
@pytest.fixture()
def damaged(tmp_path):
    """A small synthetic set with one corrupt image, one missing image and one annotation without keypoints."""
    paths = generate_synthetic_pose_dataset(str(tmp_path), COCO17, num_train=6, num_val=4, seed=1, max_people=2)
    ann = json.load(open(paths["train_ann"]))
    imgs = ann["images"]
    corrupt, missing = imgs[1]["file_name"], imgs[2]["file_name"]
    with open(os.path.join(paths["train_images"], corrupt), "wb") as f:
        f.write(b"\xff\xd8 definitely not a jpeg")
    os.remove(os.path.join(paths["train_images"], missing))
    extra = dict(ann["annotations"][0])
    extra.update(id=999999, keypoints=[0] * 51, num_keypoints=0)
    ann["annotations"].append(extra)
    flat = dict(ann["annotations"][0])   # a zero-width box
    flat.update(id=999998, bbox=[10.0, 10.0, 0.0, 30.0])
    neg = dict(ann["annotations"][0])    # a negative visibility flag
    kp = list(neg["keypoints"])
    kp[2] = -1
    neg.update(id=999997, keypoints=kp)
    ann["annotations"] += [flat, neg]
    json.dump(ann, open(paths["train_ann"], "w"))
    # also corrupt one val image
    val = json.load(open(paths["val_ann"]))
    with open(os.path.join(paths["val_images"], val["images"][0]["file_name"]), "wb") as f:
        f.write(b"")
    n_corrupt = sum(a["image_id"] == imgs[1]["id"] and a["num_keypoints"] > 0 for a in ann["annotations"])
    n_missing = sum(a["image_id"] == imgs[2]["id"] and a["num_keypoints"] > 0 for a in ann["annotations"])
    n_val_bad = sum(a["image_id"] == val["images"][0]["id"] and a["num_keypoints"] > 0 for a in val["annotations"])
    n_no_kp = sum(a["num_keypoints"] == 0 for a in ann["annotations"])
    return paths, dict(corrupt=n_corrupt, missing=n_missing, no_kp=n_no_kp, val_bad=n_val_bad,
                       total=sum(a["num_keypoints"] > 0 for a in ann["annotations"]) - 2)   # the two bad ones


HW, HM = (64, 48), (16, 12)
SYNC = dp.ReadConfig(num_threads=0, prefetch_batches=0)


def _sources(paths, spec=COCO17, **eval_kw):
    return (CocoKeypointSource(paths["train_ann"], paths["train_images"], spec, HW),
            CocoKeypointSource(paths["val_ann"], paths["val_images"], spec, HW, **eval_kw))


def _train(src, batch_size=2, seed=0, spec=COCO17, **kw):
    return P.train_dataset(src, spec, HW, HM, 2.0, P.AugmentConfig(), batch_size, seed, **kw)


def _take(ds, n):
    it = iter(ds)
    return [next(it) for _ in range(n)]


def test_corrupt_missing_and_empty_are_skipped_and_counted(damaged):
    paths, n = damaged
    assert n["corrupt"] >= 1 and n["missing"] >= 1 and n["no_kp"] >= 1
    src, ev_src = _sources(paths)
    assert src.stats["skipped_no_keypoints"] == n["no_kp"]
    assert src.stats["skipped_bad_box"] == 1 and src.stats["skipped_bad_keypoints"] == 1
    assert src.stats["skipped_missing_image"] == n["missing"]   # absent files are dropped with the index
    assert len(src) == n["total"] - n["missing"]
    it = iter(_train(src, batch_size=1, read=dp.ReadConfig(num_threads=2)))
    for epoch in range(2):   # each pass counts every corrupt instance exactly once, and never raises
        stats = {"corrupt_image": 0, "missing_image": 0}
        for _ in range(len(src)):
            b = next(it)
            for k, v in dp.pop_stats(b).items():
                stats[k] += v
            assert b["image"].shape == (1, 64, 48, 3) and b["image"].dtype == np.uint8
        assert stats == {"corrupt_image": n["corrupt"], "missing_image": 0}, epoch
    # evaluation: a bad image gives a valid=False row, counted once, no crash
    batches = list(P.eval_dataset(ev_src, HW, 2))
    assert len(batches) == P.eval_num_batches(ev_src, 2)
    valid = np.concatenate([b["valid"] for b in batches])
    bad = sum(dp.pop_stats(b)["corrupt_image"] for b in batches)
    assert bad == n["val_bad"] and valid.sum() == len(ev_src) - n["val_bad"]


def test_train_pipeline_deterministic_per_seed(tmp_path):
    paths = generate_synthetic_pose_dataset(str(tmp_path), COCO17, num_train=6, num_val=2, seed=2)
    src, _ = _sources(paths)
    a = _take(_train(src, read=SYNC), 8)
    b = _take(_train(src, read=dp.ReadConfig(num_threads=2)), 8)
    c = _take(_train(src, seed=1, read=SYNC), 1)
    for i in (0, 3, 7):
        for k in ("image", "target", "target_weight", "joints"):
            np.testing.assert_array_equal(a[i][k], b[i][k])
    assert not np.array_equal(a[0]["image"], c[0]["image"])
    assert a[0]["image"].dtype == np.uint8 and a[0]["target"].shape == (2, 16, 12, 17)
    # two processes: per-process batches
    p0 = _take(_train(src, batch_size=2, process_index=0, process_count=2, read=SYNC), 1)[0]
    assert p0["image"].shape[0] == 2


def test_eval_dataset_padding_and_det_boxes(tmp_path):
    paths = generate_synthetic_pose_dataset(str(tmp_path), COCO17, num_train=2, num_val=5, seed=4)
    _, src = _sources(paths, boxes="det", det_file=paths["val_det"], det_score_thre=0.45)
    dets = json.load(open(paths["val_det"]))
    assert len(src) == sum(d["score"] >= 0.45 for d in dets) and src.stats["skipped_det_low_score"] >= 1
    per_proc = [list(P.eval_dataset(src, HW, 2, p, 2)) for p in (0, 1)]
    assert len(per_proc[0]) == len(per_proc[1]) == P.eval_num_batches(src, 2, 2)
    ids = np.concatenate([b["image_id"][b["valid"]] for bs in per_proc for b in bs])
    assert len(ids) == len(src) and per_proc[0][0]["image"].shape == (2, 64, 48, 3)
    with pytest.raises(ValueError):
        CocoKeypointSource(paths["val_ann"], paths["val_images"], COCO17, HW, boxes="det")


# ---- a 5-keypoint dataset end to end with a stub model ---------------------------------------------------------
class TinyPoseNet(nn.Module):
    """Stub model (stride 4 heatmaps, NHWC) standing in for hrnet_jax.models in this test."""
    num_joints: int

    @nn.compact
    def __call__(self, x, train: bool = False):
        for i, ch in enumerate((16, 16)):
            x = nn.relu(nn.Conv(ch, (3, 3), strides=(2, 2), name=f"c{i}")(x))
        x = nn.relu(nn.Conv(16, (3, 3), name="c2")(x))
        return nn.Conv(self.num_joints, (1, 1), name="head")(x)


def test_five_keypoint_dataset_trains_and_evaluates(tmp_path):
    spec = KeypointSpec.from_dict(SPEC5)
    paths = generate_synthetic_pose_dataset(str(tmp_path / "data"), spec, num_train=8, num_val=4,
                                            image_size_hw=(96, 96))
    src, ev_src = _sources(paths, spec)
    model = TinyPoseNet(spec.num_keypoints)
    mean, std = jnp.asarray(IMAGENET_MEAN), jnp.asarray(IMAGENET_STD)
    norm = lambda img: (img.astype(jnp.float32) - mean) / std   # noqa: E731  (on device, as the task does)
    batches = _take(_train(src, batch_size=4, spec=spec, read=SYNC), 2)
    for b in batches:
        dp.pop_stats(b)
    assert batches[0]["target"].shape == (4, 16, 12, 5) and batches[0]["image"].dtype == np.uint8
    params = model.init(jax.random.PRNGKey(0), norm(jnp.asarray(batches[0]["image"])))
    tx = optax.adam(3e-3)
    opt = tx.init(params)

    @jax.jit
    def step(params, opt, batch):
        def f(p):
            return joints_mse_loss(model.apply(p, norm(batch["image"])), batch["target"], batch["target_weight"])
        loss, g = jax.value_and_grad(f)(params)
        up, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, up), opt, loss

    losses = []
    for i in range(12):
        params, opt, loss = step(params, opt, {k: jnp.asarray(v) for k, v in batches[i % 2].items()})
        losses.append(float(loss))
    assert losses[-1] < losses[0]

    @jax.jit
    def predict(params, b):
        out = decode_heatmaps(model.apply(params, norm(b["image"])), b["center"], b["scale"])
        return {"keypoints": out["keypoints"], "maxvals": out["maxvals"]}

    ev = PoseEvaluator(load_coco(paths["val_ann"]), spec.sigmas, spec.category_id)
    for host in P.eval_dataset(ev_src, HW, 4, read=SYNC):
        dp.pop_stats(host)
        out = jax.device_get(predict(params, {k: jnp.asarray(v) for k, v in host.items()}))
        assert out["keypoints"].shape == (4, 5, 2)
        ev.add(out, host)
    res = ev.result()
    assert set(res) >= {"AP", "AP50", "AP75", "APm", "APl", "AR"} and 0.0 <= res["AP"] <= 1.0
    assert res["num_instances"] == len(ev_src)
