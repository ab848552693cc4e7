"""Bottom-up task: COCOeval figures vs pycocotools run directly, the evaluator end to end on ideal maps (AP 1),
config checks, and a short training run through the generic loop."""
from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest

from experiments import get_experiment
from hrnet_jax.data.keypoints import KeypointSpec
from hrnet_jax.data.ops import bottomup as B
from hrnet_jax.tasks.bottomup.evaluate import BottomUpEvaluator, people_to_results
from hrnet_jax.tasks.pose.evaluate import STAT_NAMES, coco_keypoint_eval

HAND5 = KeypointSpec(name="hand5", keypoints=("wrist", "thumb", "index", "middle", "pinky"),
                     sigmas=(0.05, 0.04, 0.06, 0.05, 0.08), category_id=1)
TINY_ARCH = dict(stem_width=16, stages=(
    dict(num_modules=1, num_branches=1, block="BOTTLENECK", num_blocks=(1,), num_channels=(8,)),
    dict(num_modules=1, num_branches=2, block="BASIC", num_blocks=(1, 1), num_channels=(8, 16)),
    dict(num_modules=1, num_branches=3, block="BASIC", num_blocks=(1, 1, 1), num_channels=(8, 16, 32)),
    dict(num_modules=1, num_branches=4, block="BASIC", num_blocks=(1, 1, 1, 1), num_channels=(8, 16, 32, 64)),
))


def _gt(k=5, people=((3, 20.0, 15.0), (2, 60.0, 40.0)), h=90, w=130, n_images=2):
    """A COCO dict of ``n_images`` images, each with people laid out from (count, x0, y0) seeds."""
    rng = np.random.default_rng(0)
    images, anns = [], []
    for i in range(n_images):
        images.append(dict(id=i + 1, file_name=f"{i}.jpg", height=h, width=w))
        for n, (_, x0, y0) in enumerate(people):
            pts = np.stack([x0 + rng.uniform(0, 30, k), y0 + rng.uniform(0, 30, k)], 1)
            kp = np.concatenate([pts, np.full((k, 1), 2.0)], 1)
            kp[-1, 2] = 0 if n == 0 else 2
            kp[-1, :2] = 0 if n == 0 else kp[-1, :2]
            anns.append(dict(id=len(anns) + 1, image_id=i + 1, category_id=1, iscrowd=0, num_keypoints=int(
                (kp[:, 2] > 0).sum()), keypoints=kp.reshape(-1).round(2).tolist(), bbox=[x0, y0, 30, 30],
                area=900.0))
    cat = dict(id=1, name="hand", keypoints=[f"k{j}" for j in range(k)], skeleton=[])
    return dict(images=images, annotations=anns, categories=[cat])


def _pycocotools_direct(gt: dict, results: list, sigmas) -> list:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = json.loads(json.dumps(gt))
        coco.createIndex()
        dt = coco.loadRes(json.loads(json.dumps(results)))
        ev = COCOeval(coco, dt, "keypoints")
        ev.params.kpt_oks_sigmas = np.asarray(sigmas)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return list(ev.stats)


def _to_map_frame(gt, image_id, center, scale, size):
    """GT people of one image as (N, K, 3) [x, y, 1] in the input-canvas frame (the forward eval affine)."""
    from hrnet_jax.data.ops.affine import affine_points, get_affine_transform
    trans = get_affine_transform(center, scale, 0, (float(size[0]), float(size[1])))
    people = []
    for a in gt["annotations"]:
        if a["image_id"] == image_id:
            kp = np.asarray(a["keypoints"], np.float64).reshape(-1, 3)
            people.append(np.concatenate([affine_points(kp[:, :2], trans), np.ones((len(kp), 1))], 1))
    return np.stack(people)


def test_results_and_cocoeval_equal_pycocotools_direct():
    gt = _gt()
    (w_r, h_r), center, scale = B.eval_resize(90, 130, 64)
    size = np.array([w_r, h_r], np.float32)
    rng = np.random.default_rng(1)
    results = []
    for img in (1, 2):
        people = _to_map_frame(gt, img, center, scale, size)
        people[..., :2] += rng.normal(0, 0.6, people[..., :2].shape)          # imperfect predictions
        people[..., 2] = rng.uniform(0.3, 1.0, people.shape[:2])
        scores = rng.uniform(0.2, 0.9, len(people))
        results += people_to_results(people, scores, img, center, scale, size)
    assert len(results) == 4 and len(results[0]["keypoints"]) == 15
    ours = coco_keypoint_eval(gt, results, HAND5.sigmas)
    direct = _pycocotools_direct(gt, results, HAND5.sigmas)
    np.testing.assert_allclose([ours[n] for n in STAT_NAMES], direct, atol=1e-12)
    assert 0.2 < ours["AP"] < 1.0


def test_evaluator_end_to_end_on_ideal_maps_gives_ap_1():
    """Perfect heatmaps (Gaussians at the GT joints) and tags (one value per person) through the device-side
    top-k, the grouping and the mapping back: every person is found, AP = 1."""
    import jax
    from hrnet_jax.tasks.bottomup.grouping import GroupingParams
    from hrnet_jax.tasks.bottomup.inference import detect
    from hrnet_jax.tasks.bottomup.targets import heatmaps
    gt = _gt()
    canvas = (64, 128)
    hms, tms, meta = [], [], []
    for img in (1, 2):
        canvases, center, scale, size, _ = B.eval_canvases(np.zeros((90, 130, 3), np.uint8), 64, canvas)
        people = _to_map_frame(gt, img, center, scale, size)
        gt_vis = np.asarray([a["keypoints"][2::3] for a in gt["annotations"] if a["image_id"] == img]) > 0
        people[..., 2] = gt_vis
        hm = heatmaps(people, canvas, 2.0)
        tm = np.zeros(canvas + (5, 1), np.float32)
        for n, p in enumerate(people):
            for j in range(5):
                if p[j, 2] > 0:
                    x, y = int(p[j, 0]), int(p[j, 1])
                    tm[max(0, y - 3):y + 4, max(0, x - 3):x + 4, j, 0] = 3.0 * n
        hms.append(hm)
        tms.append(tm)
        meta.append((center, scale, size, img))
    det = jax.device_get(detect(np.stack(hms), np.stack(tms), 5, 2, 4))
    ev = BottomUpEvaluator(gt, HAND5.sigmas, GroupingParams(num_joints=5, max_num_people=4), img_ids=[1, 2])
    ev.add({**det, "center": np.stack([m[0] for m in meta]), "scale": np.stack([m[1] for m in meta]),
            "size": np.stack([m[2] for m in meta]), "image_id": np.array([m[3] for m in meta]),
            "valid": np.array([True, True])})
    res = ev.result()
    assert res["num_images"] == 2 and res["num_people"] == 4
    assert res["AP"] == pytest.approx(1.0) and res["AR"] == pytest.approx(1.0)


def test_config_errors_name_the_valid_choices():
    from experiments import build_task
    from hrnet_jax.training.config import ConfigError
    with pytest.raises(ConfigError, match="multiple of 64"):
        build_task(get_experiment("bottomup_demo", {"task.input_size": 100}))
    with pytest.raises(ConfigError, match="ae_type"):
        build_task(get_experiment("bottomup_demo", {"task.ae_type": "hinge"}))
    with pytest.raises(ConfigError, match="test_scales"):
        build_task(get_experiment("bottomup_demo", {"task.test_scales": "(0.5, 2.0)"}))


def test_official_recipes():
    for name, size, batch, model in (("bottomup_w32_512", 512, 48, "higher_hrnet_w32"),
                                     ("bottomup_w32_640", 640, 48, "higher_hrnet_w32"),
                                     ("bottomup_w48_640", 640, 40, "higher_hrnet_w48")):
        cfg = get_experiment(name)
        spe = -(-64115 // batch)
        assert cfg.task.input_size == size and cfg.batch_size == batch and cfg.model.name == model
        assert cfg.total_steps == 300 * spe
        assert tuple(cfg.optimizer.boundaries) == (200 * spe, 260 * spe) and cfg.optimizer.lr == 1e-3
        assert cfg.optimizer.name == "adam" and cfg.task.max_people == 30 and cfg.task.flip_test
        assert (cfg.task.min_scale, cfg.task.max_scale, cfg.task.max_rotation, cfg.task.max_translate) == (
            0.75, 1.5, 30.0, 40.0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from hrnet_jax.train import train
    root = str(tmp_path_factory.mktemp("bu_data"))
    cfg = get_experiment("bottomup_demo", {
        "total_steps": 4, "batch_size": 4, "log_every": 2, "checkpoint_every": 4, "evals.val.every": 4,
        "model.arch": repr(TINY_ARCH), "task.data_root": root, "task.input_size": 64,
        "task.eval_canvas": "(64, 64)", "task.eval_batch_size": 4, "task.top_k": 4,
        "task.synthetic": repr(dict(num_train=8, num_val=5, image_size_hw=(64, 64), min_people=2, max_people=3,
                                    height_range=(0.5, 0.8), seed=0)),
        "optimizer.warmup_steps": 0})
    workdir = str(tmp_path_factory.mktemp("bu_run"))
    return train(cfg, workdir, quiet=True), workdir


def test_short_training_run_through_the_generic_loop(trained):
    result, workdir = trained
    m = result.eval_metrics
    for key in ("AP", "AP50", "AP75", "APm", "APl", "AR", "num_images", "num_people"):
        assert f"val/{key}" in m, sorted(m)
    assert m["val/num_images"] == 5.0 and 0.0 <= m["val/AP"] <= 1.0
    losses = [r["loss"] for r in result.history if "loss" in r]
    assert losses and all(np.isfinite(losses))
    assert any(all(k in r for k in ("heatmap_loss_0", "heatmap_loss_1", "push_loss", "pull_loss"))
               for r in result.history)


def test_predict_images_writes_results_and_drawings(trained, tmp_path):
    """predict on the run's own validation images: the COCO results JSON has the spec's K keypoints per person,
    ids, and a drawing per image; an unreadable file is skipped."""
    import glob
    import os
    from hrnet_jax.tasks.bottomup.predict import BottomUpPredictor, load_bottomup, predict_images
    result, workdir = trained
    task, variables = load_bottomup(workdir)
    assert task.name == "bottomup" and task.input_size == 64
    root = os.path.join(task.t.data_root, "images", "val")     # the synthetic layout
    paths = sorted(glob.glob(os.path.join(root, "*.jpg")))[:2]
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"nope")
    out = tmp_path / "out"
    out.mkdir()
    res = predict_images(BottomUpPredictor(task, variables), paths + [str(bad)], str(out))
    with open(out / "keypoints.json") as f:
        assert json.load(f) == json.loads(json.dumps(res))
    assert all(len(r["keypoints"]) == 3 * 17 and "person_id" in r for r in res)
    assert sorted(os.listdir(out)) == sorted(["keypoints.json"] + [os.path.basename(p) for p in paths])
