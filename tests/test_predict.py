"""hrnet_jax.predict: converted and workdir checkpoints, images + video outputs, and decoded locations checked
against hand-computed values (forced heatmaps)."""
from __future__ import annotations

import json
import os

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.pose import DEMO_W16
from hrnet_jax import models
from hrnet_jax.predict import Predictor, main, read_boxes
from hrnet_jax.tasks.model_config import arch_from_dict
from hrnet_jax.data.keypoints import COCO17

H_IN, W_IN = 64, 64   # input (divisible by 32); heatmaps 16x16


def _variables(final_bias=None):
    model = models.create("pose_hrnet_w18_small_v1", num_joints=17, config=arch_from_dict(DEMO_W16))
    v = model.init(jax.random.PRNGKey(0), jnp.zeros((1, H_IN, W_IN, 3)), train=False)
    v = jax.tree.map(np.asarray, v)
    if final_bias is not None:
        fl = v["params"]["final_layer"]
        fl["kernel"] = np.zeros_like(fl["kernel"])
        fl["bias"] = np.full_like(fl["bias"], final_bias)
    return v


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    from hrnet_jax.convert import save_variables
    d = str(tmp_path_factory.mktemp("ckpt") / "tiny")
    save_variables(d, _variables(), {"model": "pose_hrnet_w18_small_v1", "overrides": {"arch": DEMO_W16}})
    return d


def _synthetic_images(folder, n=2, hw=(120, 160)):
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        img = rng.integers(0, 255, size=hw + (3,), dtype=np.uint8)
        cv2.circle(img, (80, 60), 20, (255, 255, 255), -1)
        p = os.path.join(folder, f"{i + 1:012d}.jpg")
        cv2.imwrite(p, img)
        paths.append(p)
    return paths


def _check_results(res, image_ids, width, height, inside=True):
    assert {r["image_id"] for r in res} == set(image_ids)
    for r in res:
        assert r["category_id"] == 1 and isinstance(r["score"], float)
        k = np.asarray(r["keypoints"]).reshape(17, 3)
        assert np.all(np.isfinite(k))
        if inside:
            assert np.all((k[:, 0] >= 0) & (k[:, 0] <= width - 1) & (k[:, 1] >= 0) & (k[:, 1] <= height - 1)), k


def test_cli_images_boxes_and_video(converted, tmp_path):
    paths = _synthetic_images(str(tmp_path / "imgs"))
    # Boxes whose padded crops (square already, x1.25) stay inside the 160x120 image: every decoded
    # keypoint (crop pixel + at most a quarter heatmap pixel) is then inside the image.
    boxes = [{"image_id": 1, "category_id": 1, "bbox": [60, 30, 40, 40], "score": 0.9},
             {"image_id": 1, "category_id": 1, "bbox": [20, 20, 30, 30], "score": 0.8},
             {"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.01},   # below --box-thre
             {"image_id": 2, "category_id": 1, "bbox": [70, 25, 45, 45], "score": 0.7}]
    bpath = tmp_path / "boxes.json"
    bpath.write_text(json.dumps(boxes))
    video = str(tmp_path / "clip.mp4")
    vw = cv2.VideoWriter(video, cv2.VideoWriter_fourcc(*"mp4v"), 5.0, (96, 64))
    for i in range(3):
        frame = np.full((64, 96, 3), 40 * i, np.uint8)
        cv2.rectangle(frame, (30 + 5 * i, 10), (60 + 5 * i, 55), (0, 200, 0), -1)
        vw.write(frame)
    vw.release()
    out = tmp_path / "out"
    rc = main(["--checkpoint", converted, "--images", str(tmp_path / "imgs" / "*.jpg"), "--boxes", str(bpath),
               "--box-thre", "0.1", "--video", video, "--out", str(out), "--input-size", f"{H_IN}x{W_IN}",
               "--batch-size", "2"])
    assert rc == 0
    res = json.loads((out / "keypoints.json").read_text())
    assert len(res) == 3 and sorted(r["image_id"] for r in res) == [1, 1, 2]
    assert {r["file_name"] for r in res} == {os.path.basename(p) for p in paths}
    _check_results(res, [1, 2], 160, 120)
    for p in paths:
        drawn = cv2.imread(str(out / os.path.basename(p)))
        assert drawn is not None and drawn.shape == (120, 160, 3)
    vres = json.loads((out / "clip_keypoints.json").read_text())
    assert [r["image_id"] for r in vres] == [0, 1, 2]   # one whole-frame box per frame
    for r in vres:
        assert r["bbox"] == [0.0, 0.0, 96.0, 64.0]
        assert len(r["keypoints"]) == 51
    cap = cv2.VideoCapture(str(out / "clip_pose.mp4"))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    assert n == 3


def test_read_boxes_filters(tmp_path):
    p = tmp_path / "b.json"
    p.write_text(json.dumps([{"image_id": 5, "category_id": 1, "bbox": [1, 2, 3, 4], "score": 0.5},
                             {"image_id": 5, "category_id": 2, "bbox": [1, 2, 3, 4], "score": 0.9},
                             {"image_id": 6, "category_id": 1, "bbox": [1, 2, 0, 4], "score": 0.9},
                             {"image_id": 7, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.1}]))
    assert read_boxes(str(p), score_thre=0.2) == {5: [(1.0, 2.0, 3.0, 4.0, 0.5)]}


def test_uniform_heatmaps_decode_to_crop_corner(tmp_path):
    """final_layer kernel 0, bias 0.5: every heatmap is constant 0.5 (flip test and shift keep it so), argmax
    is pixel (0, 0) with no quarter offset, i.e. the crop's top-left corner: center - scale·200/2."""
    from hrnet_jax.convert import save_variables
    d = str(tmp_path / "uniform")
    save_variables(d, _variables(final_bias=0.5), {"model": "pose_hrnet_w18_small_v1",
                                                    "overrides": {"arch": DEMO_W16}})
    pred = Predictor(d, input_size=(H_IN, W_IN), batch_size=4)
    img = np.zeros((120, 160, 3), np.uint8)
    (p,) = pred.predict(img)   # whole image (0, 0, 160, 120): aspect 1 (64x64 input) -> h = 160
    # box -> 160 x 160, x1.25 -> 200 x 200 px around (80, 60): corner (-20, -40)
    k = p["keypoints"]
    np.testing.assert_allclose(k[:, 0], -20.0, atol=1e-3)
    np.testing.assert_allclose(k[:, 1], -40.0, atol=1e-3)
    np.testing.assert_allclose(k[:, 2], 0.5, atol=1e-6)
    assert p["score"] == pytest.approx(0.5)
    assert p["bbox"] == [0.0, 0.0, 160.0, 120.0]


def test_forced_peak_decodes_to_hand_computed_location(converted):
    """A stub forward pass returns heatmaps with one peak: legacy decoding (argmax + quarter offset toward the
    larger neighbour) and back-projection give the hand-computed image point."""
    pred = Predictor(converted, input_size=(H_IN, W_IN), batch_size=2)
    hm = np.zeros((16, 16), np.float32)           # heatmap (H, W) = input / 4
    hm[7, 9] = 1.0
    hm[7, 10] = 0.5                               # right neighbour larger -> x + 0.25
    hm[6, 9] = hm[8, 9] = 0.2                     # equal vertical neighbours -> no y offset
    forced = jnp.asarray(np.repeat(hm[None, :, :, None], 17, axis=-1))
    task = pred.task
    task.forward = lambda apply_fn, variables, batch, *, train, rngs: {
        "heatmaps": jnp.broadcast_to(forced, (batch["image"].shape[0],) + forced.shape[1:])}
    pred2 = Predictor(task=task, variables=pred.variables, batch_size=2)
    img = np.zeros((120, 160, 3), np.uint8)
    people = pred2.predict(img, [(0, 0, 160, 120, 1.0), (40, 20, 30, 40, 0.5)])
    # box 1: scale·200 = (200, 200), centre (80, 60): one heatmap pixel = 200 / 16 = 12.5 image pixels
    np.testing.assert_allclose(people[0]["keypoints"][:, 0], 80 + (9.25 - 8) * 12.5, atol=1e-3)   # 95.625
    np.testing.assert_allclose(people[0]["keypoints"][:, 1], 60 + (7 - 8) * 12.5, atol=1e-3)      # 47.5
    # box 2: (40, 20, 30, 40) widened to 40 x 40 (aspect 1), x1.25 -> 50 x 50 around (55, 40)
    px2 = 50.0 / 16
    np.testing.assert_allclose(people[1]["keypoints"][:, 0], 55 + (9.25 - 8) * px2, atol=1e-3)
    np.testing.assert_allclose(people[1]["keypoints"][:, 1], 40 + (7 - 8) * px2, atol=1e-3)
    np.testing.assert_allclose(people[1]["keypoints"][:, 2], 1.0)
    assert people[1]["score"] == pytest.approx(0.5)


def test_workdir_checkpoint(tmp_path):
    """A training workdir (config.json + checkpoints/<step>/state) is found and its latest step loaded."""
    from experiments import get_experiment
    from hrnet_jax.training.checkpoint import Checkpointer
    cfg = get_experiment("pose_demo", {"task.input_size": (H_IN, W_IN)})
    wd = tmp_path / "wd"
    wd.mkdir()
    (wd / "config.json").write_text(json.dumps(cfg.to_dict()))
    v = _variables(final_bias=0.25)
    ck = Checkpointer(str(wd / "checkpoints"))
    for step in (1, 3):
        ck.save(step, {"step": np.int32(step), "params": v["params"], "batch_stats": v["batch_stats"]})
    ck.close()
    pred = Predictor(str(wd), batch_size=1)
    assert pred.input_size == (H_IN, W_IN) and pred.spec.keypoints == COCO17.keypoints
    (p,) = pred.predict(np.zeros((64, 48, 3), np.uint8))
    np.testing.assert_allclose(p["keypoints"][:, 2], 0.25, atol=1e-6)   # the saved (forced) weights were used
    assert not (tmp_path / "data").exists()                                # no dataset generated for predict
    # a custom spec given relative to the working directory, inside a relative data_root: found as training
    # found it (not data/x/data/x/spec.json)
    from hrnet_jax.data.keypoints import COCO17 as coco
    os.makedirs(tmp_path / "data" / "x")
    (tmp_path / "data" / "x" / "spec.json").write_text(json.dumps({**coco.to_dict(), "name": "mine"}))
    cfg2 = cfg.override({"task.data_root": "data/x", "task.spec": "data/x/spec.json"})
    (wd / "config.json").write_text(json.dumps(cfg2.to_dict()))
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert Predictor(str(wd), batch_size=1).spec.name == "mine"
        cfg3 = cfg.override({"task.data_root": "data/x", "task.spec": "spec.json"})   # relative to data_root
        (wd / "config.json").write_text(json.dumps(cfg3.to_dict()))
        assert Predictor(str(wd), batch_size=1).spec.name == "mine"
    finally:
        os.chdir(cwd)


def _gt_heatmap_forward(monkeypatch, offset_px: float):
    """PoseTask.forward replaced by hand-made heatmaps: a Gaussian at every GT joint of the box (found by its
    center in the eval source), moved ``offset_px`` heatmap pixels to the right."""
    from hrnet_jax.data.ops.affine import affine_points, get_affine_transform
    from hrnet_jax.tasks.pose.task import PoseTask

    def forward(self, apply_fn, variables, batch, *, train, rngs=None):
        src = self.eval_source()
        hh, hw = self.heatmap_size
        centers = np.stack([src[i]["center"] for i in range(len(src))]).astype(np.float32)
        maps = []
        yy, xx = np.mgrid[0:hh, 0:hw]
        for i in range(len(src)):
            rec = src[i]
            pts = affine_points(rec["joints"], get_affine_transform(rec["center"], rec["scale"], 0, (hw, hh)))
            g = np.exp(-((xx[None] - pts[:, :1, None] - offset_px) ** 2 + (yy[None] - pts[:, 1:, None]) ** 2) / 4.5)
            maps.append(np.moveaxis(g, 0, -1))
        table_c, table_m = jnp.asarray(centers), jnp.asarray(np.stack(maps).astype(np.float32))
        idx = jnp.argmin(jnp.sum((batch["center"][:, None] - table_c[None]) ** 2, -1), axis=1)
        return {"heatmaps": table_m[idx]}

    monkeypatch.setattr(PoseTask, "forward", forward)


@pytest.mark.parametrize("offset,ap_range", [(0.0, (0.9, 1.0)), (6.0, (0.0, 0.2))])
def test_evaluate_gives_the_known_ap_of_hand_made_heatmaps(converted, tmp_path, monkeypatch, offset, ap_range):
    """``--evaluate``: the experiment's val set through the eval step + evaluator without training. Heatmaps
    peaking at the GT joints give AP near 1, the same moved by 6 heatmap pixels give AP near 0; both equal
    pycocotools run directly on the results JSON the evaluator wrote."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    _gt_heatmap_forward(monkeypatch, offset)
    root, out = tmp_path / "data", tmp_path / "eval"
    results = tmp_path / "results.json"
    rc = main(["--checkpoint", converted, "--evaluate", "pose_demo", "--out", str(out),
               f"--config.task.data_root={root}", "--config.task.synthetic.num_train=2",
               "--config.task.synthetic.num_val=6", "--config.task.synthetic.image_size_hw=(96,96)",
               f"--config.task.input_size=({H_IN},{W_IN})", "--config.task.eval_batch_size=4",
               f"--config.task.results_path={results}", "--config.task.use_oks_nms=False",
               "--config.task.eval_boxes=gt", "--config.task.flip_test=False"])
    assert rc == 0
    metrics = json.loads((out / "eval_metrics.json").read_text())
    gt = COCO(str(root / "annotations" / "person_keypoints_val.json"))
    dets = json.loads(results.read_text())
    assert len(dets) == len(gt.getAnnIds())          # one result per GT box (eval_boxes="gt", no NMS)
    ev = COCOeval(gt, gt.loadRes(str(results)), "keypoints")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    assert metrics["val/AP"] == pytest.approx(max(float(ev.stats[0]), 0.0), abs=1e-9)
    assert metrics["val/AR"] == pytest.approx(max(float(ev.stats[5]), 0.0), abs=1e-9)
    assert ap_range[0] <= metrics["val/AP"] <= ap_range[1], metrics


def test_bad_inputs_end_in_one_line_and_write_nothing(converted, tmp_path, capsys):
    """Each bad input: exit 2, one ``error: <file>: <problem>`` line, no keypoints.json written."""
    imgs = _synthetic_images(str(tmp_path / "imgs"), n=1)
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(open(imgs[0], "rb").read()[:400])
    (tmp_path / "boxes_bad.json").write_text("[{\"image_id\": 1, \"bbox\": [1, 2")
    (tmp_path / "not_video.mp4").write_text("just text")
    base = ["--checkpoint", converted, "--input-size", f"{H_IN}x{W_IN}"]
    cases = {
        "missing image": (["--images", str(tmp_path / "nope.jpg")], "nope.jpg: no readable image"),
        "truncated JPEG": (["--images", str(truncated)], "cut.jpg: no readable image"),
        "malformed boxes JSON": (["--images", imgs[0], "--boxes", str(tmp_path / "boxes_bad.json")],
                                 "boxes_bad.json: not valid JSON"),
        "not a video": (["--video", str(tmp_path / "not_video.mp4")], "not_video.mp4: "),
    }
    for name, (args, msg) in cases.items():
        out = tmp_path / ("out_" + name.replace(" ", "_"))
        rc = main(base + args + ["--out", str(out)])
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.startswith("error:")]
        assert rc == 2 and len(lines) == 1 and msg in lines[0], (name, err)
        assert not (out / "keypoints.json").exists() and not list(out.glob("*_keypoints.json")), name
    # a box with NaN or zero width among good ones: skipped with a warning, the rest predicted
    (tmp_path / "boxes_nan.json").write_text(json.dumps([
        {"image_id": 1, "category_id": 1, "bbox": [float("nan"), 0, 10, 10], "score": 1.0},
        {"image_id": 1, "category_id": 1, "bbox": [5, 5, 0, 10], "score": 1.0},
        {"image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 60], "score": 0.9}]).replace("NaN", "NaN"))
    out = tmp_path / "out_nan"
    assert main(base + ["--images", imgs[0], "--boxes", str(tmp_path / "boxes_nan.json"), "--out", str(out)]) == 0
    assert "2 entries without image_id or a finite box" in capsys.readouterr().err
    assert len(json.loads((out / "keypoints.json").read_text())) == 1
