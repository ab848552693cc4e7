"""Pose experiment configs against the official recipe (numbers worked out by hand from the yamls), path
resolution on COCO's standard layout, and the demo's settings. Nothing here trains."""
from __future__ import annotations

import os

import numpy as np
import pytest

from experiments import build_task, get_experiment, list_experiments
from hrnet_jax.training.optim import make_schedule

# ceil(149813 / 128) = 1171 steps per epoch; ceil(149813 / 96) = 1561.
RECIPES = {
    "pose_w32": ("pose_hrnet_w32", (256, 192), 128, 2.0, 1171),
    "pose_w32_384x288": ("pose_hrnet_w32", (384, 288), 128, 3.0, 1171),
    "pose_w48": ("pose_hrnet_w48", (256, 192), 128, 2.0, 1171),
    "pose_w48_384x288": ("pose_hrnet_w48", (384, 288), 96, 3.0, 1561),
}


def test_all_registered():
    assert set(RECIPES) | {"pose_demo"} <= set(list_experiments())


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_coco_recipe(name):
    model, size, batch, sigma, spe = RECIPES[name]
    cfg = get_experiment(name)
    assert cfg.family == "experiments.pose" and cfg.task.name == "pose"
    assert cfg.model.name == model and tuple(cfg.task.input_size) == size and cfg.task.sigma == sigma
    assert cfg.batch_size == batch and cfg.total_steps == 210 * spe
    o = cfg.optimizer
    assert (o.name, o.lr, o.weight_decay, o.schedule, o.decay_factor) == ("adam", 1e-3, 0.0, "step", 0.1)
    assert tuple(o.boundaries) == (170 * spe, 200 * spe)
    lr = make_schedule(o, cfg.total_steps)
    np.testing.assert_allclose([float(lr(s)) for s in (0, 170 * spe - 1, 170 * spe + 1, 200 * spe - 1,
                                                       200 * spe + 1, 210 * spe)],
                               [1e-3, 1e-3, 1e-4, 1e-4, 1e-5, 1e-5], rtol=1e-5)
    t = cfg.task
    assert t.flip_test and t.shift_heatmap and t.decode == "legacy" and t.use_oks_nms and t.oks_thre == 0.9
    assert t.eval_boxes == "det" and t.in_vis_thre == 0.2
    assert (t.scale_factor, t.rotation_factor, t.prob_half_body, t.flip) == (0.35, 45.0, 0.3, True)
    every = cfg.evals.val.every
    assert every > 0 and cfg.total_steps % every == 0   # the last step is evaluated
    assert cfg.best_metric == "val/AP"


def _fake_coco(root):
    """Empty files at the standard COCO paths (nothing is read when a task is built)."""
    for rel in ("annotations/person_keypoints_train2017.json", "annotations/person_keypoints_val2017.json",
                "person_detection_results/COCO_val2017_detections_AP_H_56_person.json"):
        os.makedirs(os.path.dirname(os.path.join(root, rel)), exist_ok=True)
        open(os.path.join(root, rel), "w").close()


def test_missing_data_is_a_clear_config_error(tmp_path):
    from hrnet_jax.training.config import ConfigError
    with pytest.raises(ConfigError, match="person_keypoints_val2017.json.*task.data_root"):
        build_task(get_experiment("pose_w32", [f"task.data_root={tmp_path / 'nowhere'}"])).train_dataset(0, 1)


def test_coco_paths_standard_layout_and_override(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _fake_coco("data/coco")
    task = build_task(get_experiment("pose_w32"))
    p = task.paths
    assert p["train_ann"] == os.path.join("data/coco", "annotations/person_keypoints_train2017.json")
    assert p["train_images"] == os.path.join("data/coco", "train2017")
    assert p["val_ann"] == os.path.join("data/coco", "annotations/person_keypoints_val2017.json")
    assert p["val_images"] == os.path.join("data/coco", "val2017")
    assert p["det_file"] == os.path.join(
        "data/coco", "person_detection_results/COCO_val2017_detections_AP_H_56_person.json")
    assert task.input_size == (256, 192) and task.heatmap_size == (64, 48) and task.sigma == 2.0
    root = str(tmp_path / "coco")
    _fake_coco(root)
    dets = str(tmp_path / "dets.json")
    open(dets, "w").close()
    task = build_task(get_experiment("pose_w48_384x288", [f"task.data_root={root}", f"task.det_file={dets}"]))
    assert task.paths["val_images"] == os.path.join(root, "val2017")
    assert task.paths["det_file"] == dets
    assert task.heatmap_size == (96, 72) and task.sigma == 3.0
    assert task.build_model().config.stages[-1].num_channels == (48, 96, 192, 384)


def test_demo_config():
    cfg = get_experiment("pose_demo")
    assert cfg.evals.val.every == cfg.total_steps and cfg.task.flip_test
    h, w = cfg.task.input_size
    assert h % 32 == 0 and w % 32 == 0
    assert cfg.task.synthetic and cfg.task.data_root
    # the architecture is in the config itself, overridable field by field
    from hrnet_jax.models import HRNetConfig, StageConfig
    from hrnet_jax.tasks.model_config import arch_from_dict, arch_to_dict
    arch = arch_from_dict(cfg.model.arch)
    assert arch == HRNetConfig(stem_width=32, stages=(
        StageConfig(1, 1, "BOTTLENECK", (1,), (16,)), StageConfig(1, 2, "BASIC", (1, 1), (16, 32)),
        StageConfig(1, 3, "BASIC", (1, 1, 1), (16, 32, 64)), StageConfig(1, 4, "BASIC", (1, 1, 1, 1), (16, 32, 64, 128))))
    assert arch_from_dict(arch_to_dict(arch)) == arch
    wider = get_experiment("pose_demo", {"model.arch.stem_width": 48})
    assert build_task(wider).build_model().config.stem_width == 48
    off = get_experiment("pose_demo", ["task.synthetic={}"])   # the generator can be switched off
    assert not off.task.synthetic
