"""The segmentation task end to end on a declared custom dataset (its own 3 classes, no code): trains through the
generic loop, evaluates, and the logged mIoU / per-class IoU equal a numpy ``bincount`` of the final model's own
predictions (the predict path) against the label files; predict writes label PNGs and colour overlays."""
from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pytest

from experiments import get_experiment
from hrnet_jax.train import train

CLASSES = {"name": "blocks", "ignore_index": 255,
           "classes": [{"name": "floor", "color": [200, 40, 40]}, {"name": "wall", "color": [40, 200, 40]},
                       {"name": "lamp", "color": [40, 40, 200]}]}
TINY_ARCH = dict(stem_width=16, stages=(
    dict(num_modules=1, num_branches=1, block="BOTTLENECK", num_blocks=(1,), num_channels=(8,)),
    dict(num_modules=1, num_branches=2, block="BASIC", num_blocks=(1, 1), num_channels=(8, 16)),
    dict(num_modules=1, num_branches=3, block="BASIC", num_blocks=(1, 1, 1), num_channels=(8, 16, 32)),
    dict(num_modules=1, num_branches=4, block="BASIC", num_blocks=(1, 1, 1, 1), num_channels=(8, 16, 32, 64)),
))


def _write_dataset(root: str, n_train: int = 8, n_val: int = 5) -> None:
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        os.makedirs(os.path.join(root, split, "images", "sub"), exist_ok=True)
        os.makedirs(os.path.join(root, split, "labels", "sub"), exist_ok=True)
        for i in range(n):
            h, w = (64, 96) if i % 2 else (60, 90)          # two sizes: eval pads to one static size
            label = np.zeros((h, w), np.uint8)
            label[: h // 2] = 1
            y, x = rng.integers(5, h // 2), rng.integers(5, w - 25)
            label[y:y + 15, x:x + 20] = 2
            label[-3:, :] = 255                              # ignore strip
            colors = np.array([[90, 90, 90], [160, 160, 120], [250, 240, 60]], np.uint8)
            img = colors[np.minimum(label, 2)].astype(np.int16) + rng.integers(-20, 20, (h, w, 3))
            cv2.imwrite(os.path.join(root, split, "images", "sub", f"im{i}.png"),
                        np.clip(img, 0, 255).astype(np.uint8)[:, :, ::-1])
            cv2.imwrite(os.path.join(root, split, "labels", "sub", f"im{i}_gt.png"), label)
    with open(os.path.join(root, "classes.json"), "w") as f:
        json.dump(CLASSES, f)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("blocks"))
    _write_dataset(root)
    cfg = get_experiment("seg_demo", {**_overrides(root)})
    workdir = str(tmp_path_factory.mktemp("run"))
    result = train(cfg, workdir, quiet=True)
    return root, workdir, result


def _overrides(root: str) -> dict:
    return {
        "total_steps": 3, "batch_size": 4, "log_every": 1, "checkpoint_every": 3, "evals.val.every": 3,
        "model.arch": repr(TINY_ARCH), "model.ocr_mid_channels": 16, "model.ocr_key_channels": 8,
        "task.synthetic": "{}", "task.dataset": "folder", "task.data_root": root, "task.classes": "classes.json",
        "task.train_images": "train/images", "task.train_labels": "train/labels", "task.label_suffix": "_gt",
        "task.val_images": "val/images", "task.val_labels": "val/labels", "task.crop_size": "(32, 64)",
        "task.base_size": 96, "task.eval_size": "(64, 96)", "task.eval_batch_size": 4,
        "task.class_weights": "(1.0, 1.0, 2.0)"}


def test_a_declared_custom_dataset_trains_and_its_miou_equals_numpy_on_the_predictions(trained, tmp_path):
    from hrnet_jax.predict import load_segmentation
    from hrnet_jax.tasks.segmentation.predict import SegmentationPredictor
    root, workdir, result = trained
    metrics = result.eval_metrics
    assert "val/mIoU" in metrics, sorted(metrics)
    task, variables = load_segmentation(workdir)
    assert task.num_classes == 3 and task.classes.names == ("floor", "wall", "lamp")
    pred = SegmentationPredictor(task, variables)
    conf = np.zeros((3, 3), np.int64)
    for i in range(5):
        img = cv2.imread(os.path.join(root, "val", "images", "sub", f"im{i}.png"))[:, :, ::-1]
        lab = cv2.imread(os.path.join(root, "val", "labels", "sub", f"im{i}_gt.png"), cv2.IMREAD_UNCHANGED)
        p = pred.predict(np.ascontiguousarray(img))
        keep = lab < 3
        conf += np.bincount(lab[keep].astype(np.int64) * 3 + p[keep], minlength=9).reshape(3, 3)
    tp = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - tp
    iou = tp[union > 0] / union[union > 0]
    np.testing.assert_allclose(metrics["val/mIoU"], 100 * iou.mean(), rtol=1e-6)
    np.testing.assert_allclose(metrics["val/pixel_acc"], 100 * tp.sum() / conf.sum(), rtol=1e-6)
    for c, name in enumerate(("floor", "wall", "lamp")):
        if union[c]:
            np.testing.assert_allclose(metrics[f"val/IoU/{name}"], 100 * tp[c] / union[c], rtol=1e-6)


def test_predict_cli_writes_label_maps_and_overlays(trained, tmp_path):
    from hrnet_jax import predict
    root, workdir, _ = trained
    out = str(tmp_path / "out")
    rc = predict.main(["--checkpoint", workdir, "--images", os.path.join(root, "val", "images", "sub", "im1.png"),
                       "--out", out])
    assert rc == 0
    lab = cv2.imread(os.path.join(out, "im1_trainIds.png"), cv2.IMREAD_UNCHANGED)
    assert lab.shape == (64, 96) and lab.dtype == np.uint8 and lab.max() < 3
    assert cv2.imread(os.path.join(out, "im1_overlay.jpg")).shape == (64, 96, 3)
    color = cv2.imread(os.path.join(out, "im1_color.png"))[:, :, ::-1]
    palette = np.array([c["color"] for c in CLASSES["classes"]], np.uint8)
    np.testing.assert_array_equal(color, palette[lab])
    with open(os.path.join(out, "predictions.json")) as f:
        rec = json.load(f)[0]
    assert abs(sum(rec["class_share"].values()) - 1.0) < 1e-3
    assert "label_ids" not in rec["files"]               # a spec without raw ids writes train ids only


def test_evaluate_cli_reproduces_the_training_evaluation(trained, tmp_path):
    """``predict --evaluate EXPERIMENT`` (the path for converted official checkpoints) gives the loop's figures."""
    from hrnet_jax import predict
    root, workdir, result = trained
    out = str(tmp_path / "eval")
    args = [f"--config.{k}={v}" for k, v in _overrides(root).items()]
    assert predict.main(["--checkpoint", workdir, "--evaluate", "seg_demo", "--out", out, *args]) == 0
    with open(os.path.join(out, "eval_metrics.json")) as f:
        got = json.load(f)
    for key in ("val/mIoU", "val/pixel_acc", "val/mean_acc"):
        assert got[key] == pytest.approx(result.eval_metrics[key], rel=1e-9), key


def test_worker_processes_give_the_same_batches_as_in_process_reading(trained):
    """The example functions pickle into grain worker processes (no config objects inside) and, with per-example
    generators keyed by position, give the same augmented batches as reading in this process."""
    from experiments import build_task
    root = trained[0]
    batches = []
    for workers in (0, 1):
        task = build_task(get_experiment("seg_demo", {**_overrides(root), "task.read_workers": workers}))
        it = iter(task.train_dataset(0, 1))
        batches.append([next(it) for _ in range(2)])
    for a, b in zip(*batches):
        for key in ("image", "label"):
            np.testing.assert_array_equal(a[key], b[key])
