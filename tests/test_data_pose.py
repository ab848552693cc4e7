"""Pose data pipeline: skipping/counting bad data, determinism, eval padding, specs, and the task end to end."""
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hrnet_jax.data.coco_keypoints import CocoKeypointSource
from hrnet_jax.data.synthetic_pose import generate_synthetic_pose_dataset
from hrnet_jax.tasks.base import Evaluator, Task
from hrnet_jax.tasks.pose.spec import COCO17, MPII16, KeypointSpec, get_spec
from hrnet_jax.tasks.pose.task import PoseTask

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
                       total=sum(a["num_keypoints"] > 0 for a in ann["annotations"]))


def _task(paths, **kw):
    cfg = dict(train_ann=paths["train_ann"], train_images=paths["train_images"], val_ann=paths["val_ann"],
               val_images=paths["val_images"], input_size=(64, 48), batch_size=2, seed=0)
    cfg.update(kw)
    return PoseTask(cfg)


def test_corrupt_missing_and_empty_are_skipped_and_counted(damaged):
    paths, n = damaged
    assert n["corrupt"] >= 1 and n["missing"] >= 1 and n["no_kp"] >= 1
    task = _task(paths)
    ds = task.train_dataset(0, 1)
    src = task.train_source()
    assert src.stats["skipped_no_keypoints"] == n["no_kp"]
    assert src.stats["skipped_missing_image"] == n["missing"]
    assert len(src) == n["total"] - n["missing"]
    epoch_batches = len(src) // 2
    skipped = 0
    for i in range(2 * epoch_batches):  # two epochs, never raises
        b = ds[i]
        assert b["image"].shape == (2, 64, 48, 3) and np.isfinite(b["image"]).all()
        skipped += int(b["num_skipped"].sum())
    assert skipped >= n["corrupt"]  # each corrupt instance is met at least once per epoch (unless dropped)
    stats = task.data_stats()
    assert stats["corrupt_image"] == skipped
    assert stats["train_skipped_no_keypoints"] == n["no_kp"]
    assert stats["train_skipped_missing_image"] == n["missing"]
    # evaluation: a bad image gives valid=False rows, counted, no crash
    ev = task.eval_dataset(0, 1)
    valid = np.concatenate([ev[i]["valid"] for i in range(len(ev))])
    nskip = sum(int(ev[i]["num_skipped"].sum()) for i in range(len(ev)))
    assert nskip == n["val_bad"] and (~valid).sum() >= n["val_bad"]
    assert valid.sum() == len(task.eval_source()) - n["val_bad"]


def test_train_pipeline_deterministic_per_seed(tmp_path):
    paths = generate_synthetic_pose_dataset(str(tmp_path), COCO17, num_train=6, num_val=2, seed=2)
    a = _task(paths).train_dataset(0, 1)
    b = _task(paths).train_dataset(0, 1)
    c = _task(paths, seed=1).train_dataset(0, 1)
    for i in (0, 3, 7):
        for k in ("image", "target", "target_weight"):
            np.testing.assert_array_equal(a[i][k], b[i][k])
    assert not np.array_equal(a[0]["image"], c[0]["image"])
    # two processes see disjoint halves, each with the per-process batch
    p0, p1 = _task(paths, batch_size=4).train_dataset(0, 2), _task(paths, batch_size=4).train_dataset(1, 2)
    assert p0[0]["image"].shape[0] == 2 and p1[0]["image"].shape[0] == 2


def test_eval_dataset_padding_and_det_boxes(tmp_path):
    paths = generate_synthetic_pose_dataset(str(tmp_path), COCO17, num_train=2, num_val=5, seed=4)
    task = _task(paths, eval_boxes="det", det_file=paths["val_det"], det_score_thre=0.45, eval_batch_size=4)
    src = task.eval_source()
    dets = json.load(open(paths["val_det"]))
    assert len(src) == sum(d["score"] >= 0.45 for d in dets) and src.stats["skipped_det_low_score"] >= 1
    per_proc = [task.eval_dataset(p, 2) for p in (0, 1)]
    assert len(per_proc[0]) == len(per_proc[1])  # same number of batches on every process
    ids = np.concatenate([ds[i]["image_id"][ds[i]["valid"]] for ds in per_proc for i in range(len(ds))])
    assert len(ids) == len(src) and per_proc[0][0]["image"].shape == (2, 64, 48, 3)
    with pytest.raises(ValueError):
        CocoKeypointSource(paths["val_ann"], paths["val_images"], COCO17, (64, 48), boxes="det")


# ---- the task end to end with a stub model ------------------------------------------------------------------
class TinyPoseNet(nn.Module):
    """Stub model (stride 4 heatmaps, NHWC) standing in for hrnet_jax.models in this test."""
    num_joints: int

    @nn.compact
    def __call__(self, x, train: bool = False):
        for i, ch in enumerate((16, 16)):
            x = nn.relu(nn.Conv(ch, (3, 3), strides=(2, 2), name=f"c{i}")(x))
        x = nn.relu(nn.Conv(16, (3, 3), name="c2")(x))
        return nn.Conv(self.num_joints, (1, 1), name="head")(x)


def test_five_keypoint_task_trains_and_evaluates(tmp_path):
    spec = KeypointSpec.from_dict(SPEC5)
    root = str(tmp_path / "data")
    task = PoseTask(dict(data_root=root, synthetic=dict(num_train=8, num_val=4, image_size_hw=(96, 96)), spec=SPEC5,
                         input_size=(64, 48), batch_size=4, seed=0, flip_test=True))
    assert isinstance(task, Task) and isinstance(task.evaluator(), Evaluator)
    model = TinyPoseNet(spec.num_keypoints)
    ds = task.train_dataset(0, 1)
    b0 = ds[0]
    assert b0["target"].shape == (4, 16, 12, 5)
    params = model.init(jax.random.PRNGKey(0), jnp.asarray(b0["image"]))
    tx = optax.adam(3e-3)
    opt = tx.init(params)

    @jax.jit
    def step(params, opt, batch):
        def f(p):
            return task.loss(model.apply(p, batch["image"]), batch)[0]
        loss, g = jax.value_and_grad(f)(params)
        up, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, up), opt, loss

    losses = []
    for i in range(12):
        batch = {k: jnp.asarray(v) for k, v in ds[i % 2].items()}
        params, opt, loss = step(params, opt, batch)
        losses.append(float(loss))
    assert losses[-1] < losses[0]

    apply_fn = lambda v, x, train=False: model.apply(v, x)  # noqa: E731
    eval_step = jax.jit(lambda p, b: task.predict(task.eval_forward(apply_fn, p, b), b))
    ev = task.evaluator()
    eds = task.eval_dataset(0, 1)
    for i in range(len(eds)):
        host = eds[i]
        out = jax.device_get(eval_step(params, {k: jnp.asarray(v) for k, v in host.items()}))
        assert out["keypoints"].shape == (4, 5, 2)
        ev.add(out, host)
    res = ev.result()
    assert set(res) >= {"AP", "AP50", "AP75", "APm", "APl", "AR"} and 0.0 <= res["AP"] <= 1.0
    assert res["num_instances"] == len(task.eval_source())
