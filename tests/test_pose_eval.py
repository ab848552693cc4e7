"""Rescoring, OKS-NMS, losses and COCOeval: hand-worked values and pycocotools run directly."""
import contextlib
import io
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from hrnet_jax.data.sources.coco_keypoints import CocoKeypointSource
from hrnet_jax.data.synthetic.pose import generate_synthetic_pose_dataset
from hrnet_jax.tasks.pose.evaluate import PoseEvaluator, STAT_NAMES, oks_iou, oks_nms, rescore
from hrnet_jax.tasks.pose.loss import joints_mse_loss, joints_ohkm_mse_loss
from hrnet_jax.data.keypoints import COCO17, KeypointSpec

SPEC5 = KeypointSpec(name="star5", keypoints=("center", "left_arm", "right_arm", "left_leg", "right_leg"),
                     flip_pairs=((1, 2), (3, 4)), skeleton=((0, 1), (0, 2), (0, 3), (0, 4)),
                     sigmas=(0.05, 0.06, 0.06, 0.08, 0.08))


# ---- losses ---------------------------------------------------------------------------------------------------
def test_joints_mse_hand_value():
    pred = jnp.ones((2, 4, 3, 2))
    target = jnp.zeros((2, 4, 3, 2))
    w = jnp.array([[1.0, 0.0], [1.0, 0.0]])
    # joint 0: 0.5·mean(1²) = 0.5; joint 1 weighted out: 0 → mean over joints 0.25
    assert float(jax.jit(joints_mse_loss)(pred, target, w)) == pytest.approx(0.25)
    assert float(joints_mse_loss(pred, target)) == pytest.approx(0.5)


def test_ohkm_hand_value():
    pred = jnp.zeros((2, 2, 2, 3)).at[0, :, :, 0].set(2.0).at[1, :, :, 2].set(1.0)
    target = jnp.zeros_like(pred)
    # per-joint losses: sample 0 = [2, 0, 0], sample 1 = [0, 0, 0.5]; top-1 mean = (2 + 0.5)/2
    assert float(joints_ohkm_mse_loss(pred, target, None, topk=1)) == pytest.approx(1.25)
    # top-2: ((2+0)/2 + (0.5+0)/2)/2
    assert float(joints_ohkm_mse_loss(pred, target, None, topk=2)) == pytest.approx(0.625)


# ---- rescoring / NMS -------------------------------------------------------------------------------------------
def test_rescore_hand_values():
    assert rescore(0.8, [0.1, 0.5, 0.9]) == pytest.approx(0.8 * 0.7)
    assert rescore(0.8, [0.1, 0.2]) == 0.0  # none strictly above 0.2


def test_oks_iou_hand_value():
    g = np.array([[0.0, 0.0, 1.0]])
    d = np.array([[[1.0, 0.0, 1.0]], [[0.5, 0.0, 1.0]]])
    # var = (2·0.1)² = 0.04; e = d² / 0.04 / 100 / 2
    got = oks_iou(g, d, 100.0, np.array([100.0, 100.0]), np.array([0.1]))
    np.testing.assert_allclose(got, [np.exp(-0.125), np.exp(-0.03125)], rtol=1e-9)


def test_oks_nms_hand_boxes():
    sig = np.array([0.1])
    kps = np.array([[[0.0, 0.0, 1]], [[0.5, 0.0, 1]], [[1.0, 0.0, 1]], [[50.0, 50.0, 1]]])
    scores = np.array([0.7, 0.9, 0.8, 0.1])
    areas = np.full(4, 100.0)
    # order 1 (0.9), 2 (0.8), 0 (0.7), 3. OKS(1,2) = OKS(1,0) = exp(-0.03125) = 0.969 > 0.9 → both dropped.
    assert oks_nms(kps, scores, areas, 0.9, sig) == [1, 3]
    # threshold above 0.969: nothing suppressed except exact duplicates
    assert oks_nms(kps, scores, areas, 0.98, sig) == [1, 2, 0, 3]
    # instances 0 and 2 are 1 px apart: OKS 0.8825 ≤ 0.9 → both kept when 1 is absent
    assert oks_nms(kps[[0, 2]], scores[[0, 2]], areas[[0, 2]], 0.9, sig) == [1, 0]
    assert oks_nms(np.zeros((0, 1, 3)), np.zeros(0), np.zeros(0), 0.9, sig) == []


# ---- COCOeval ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def coco_synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth17")
    return generate_synthetic_pose_dataset(str(root), COCO17, num_train=2, num_val=30, seed=3)


def _gt_predictions(ann_file, image_dir, spec, noise=0.0, seed=0):
    src = CocoKeypointSource(ann_file, image_dir, spec, (256, 192), boxes="gt")
    rng = np.random.default_rng(seed)
    recs = [src[i] for i in range(len(src))]
    kp = np.stack([r["joints"] for r in recs]).astype(np.float64)
    kp = kp + rng.normal(0, noise, kp.shape) * np.stack([r["scale"][1] * 200 for r in recs])[:, None, None]
    maxvals = np.full(kp.shape[:2], 0.9) if noise == 0 else rng.uniform(0, 1, kp.shape[:2])
    outputs = dict(keypoints=kp, maxvals=maxvals)
    batch = dict(center=np.stack([r["center"] for r in recs]), scale=np.stack([r["scale"] for r in recs]),
                 score=np.ones(len(recs)) if noise == 0 else rng.uniform(0.3, 1, len(recs)),
                 image_id=np.array([r["image_id"] for r in recs]), valid=np.ones(len(recs), bool))
    return outputs, batch


def _pycocotools_direct(ann_file, res_file, sigmas=None):
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(ann_file)
        dt = gt.loadRes(res_file)
        ev = COCOeval(gt, dt, "keypoints")
        if sigmas is not None:
            ev.params.kpt_oks_sigmas = np.array(sigmas)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


def test_perfect_predictions_give_ap_one(coco_synth):
    outputs, batch = _gt_predictions(coco_synth["val_ann"], coco_synth["val_images"], COCO17)
    ev = PoseEvaluator(coco_synth["val_ann"], COCO17.sigmas)
    half = len(batch["score"]) // 2
    for sl in (slice(0, half), slice(half, None)):  # two batches
        ev.add({k: v[sl] for k, v in outputs.items()}, {k: v[sl] for k, v in batch.items()})
    res = ev.result()
    assert res["AP"] == pytest.approx(1.0) and res["AR"] == pytest.approx(1.0)
    assert res["AP50"] == pytest.approx(1.0) and res["AP75"] == pytest.approx(1.0)


def test_perturbed_predictions_match_pycocotools_direct(coco_synth, tmp_path):
    outputs, batch = _gt_predictions(coco_synth["val_ann"], coco_synth["val_images"], COCO17, noise=0.03, seed=1)
    batch["valid"][:3] = False  # padding rows are ignored
    res_file = str(tmp_path / "res.json")
    ev = PoseEvaluator(coco_synth["val_ann"], COCO17.sigmas, results_path=res_file)
    ev.add(outputs, batch)
    mine = ev.result()
    direct = _pycocotools_direct(coco_synth["val_ann"], res_file)  # default (COCO) sigmas, pycocotools' own
    np.testing.assert_allclose([mine[n] for n in STAT_NAMES], direct, atol=1e-12)
    assert 0.05 < mine["AP"] < 0.95  # actually perturbed
    # the JSON holds rescored, NMS-ed instances: score = box score × mean maxval above 0.2
    res = json.load(open(res_file))
    valid = np.flatnonzero(batch["valid"])
    assert len(res) <= len(valid)
    r0 = res[0]
    i = [j for j in valid if batch["image_id"][j] == r0["image_id"]
         and np.allclose(outputs["keypoints"][j][:, 0], r0["keypoints"][0::3])][0]
    assert r0["score"] == pytest.approx(rescore(batch["score"][i], outputs["maxvals"][i]))


def test_custom_five_keypoint_dataset_uses_its_own_sigmas(tmp_path):
    paths = generate_synthetic_pose_dataset(str(tmp_path), SPEC5, num_train=2, num_val=12, seed=5)
    ann = json.load(open(paths["val_ann"]))
    assert len(ann["categories"][0]["keypoints"]) == 5 and all(len(a["keypoints"]) == 15 for a in ann["annotations"])
    outputs, batch = _gt_predictions(paths["val_ann"], paths["val_images"], SPEC5)
    ev = PoseEvaluator(paths["val_ann"], SPEC5.sigmas, results_path=str(tmp_path / "r.json"))
    ev.add(outputs, batch)
    res = ev.result()
    assert res["AP"] == pytest.approx(1.0) and res["AR"] == pytest.approx(1.0)
    # plain pycocotools (17 hard-coded sigmas) cannot evaluate K = 5 …
    with pytest.raises((ValueError, IndexError)):
        _pycocotools_direct(paths["val_ann"], str(tmp_path / "r.json"))
    # … and with the sigmas set directly it agrees with the evaluator on perturbed predictions.
    outputs, batch = _gt_predictions(paths["val_ann"], paths["val_images"], SPEC5, noise=0.03, seed=2)
    ev = PoseEvaluator(paths["val_ann"], SPEC5.sigmas, results_path=str(tmp_path / "r2.json"))
    ev.add(outputs, batch)
    mine = ev.result()
    direct = _pycocotools_direct(paths["val_ann"], str(tmp_path / "r2.json"), SPEC5.sigmas)
    np.testing.assert_allclose([mine[n] for n in STAT_NAMES], direct, atol=1e-12)


def test_empty_evaluator_returns_zeros(coco_synth):
    res = PoseEvaluator(coco_synth["val_ann"], COCO17.sigmas).result()
    assert res["AP"] == 0.0 and res["num_instances"] == 0.0
