"""PoseTask's wiring against hand-computed values: the flip test's one-pixel shift reaches the decoder, the
loss uses the target weights, and the evaluation defaults are the official ones (reference section 9.2:
TEST.OKS_THRE 0.9, IN_VIS_THRE 0.2, flip test and shift on)."""
import inspect

import jax.numpy as jnp
import numpy as np
import pytest

from experiments import get_experiment
from hrnet_jax.tasks import build_task
from hrnet_jax.tasks.pose.evaluate import PoseEvaluator
from hrnet_jax.tasks.pose.task import DEFAULTS

H_IN, W_IN = 64, 64   # heatmaps 16 x 16


def _task(**task):
    cfg = get_experiment("pose_demo", {"task.input_size": (H_IN, W_IN), "task.synthetic": "{}",
                                       **{f"task.{k}": v for k, v in task.items()}})
    return build_task(cfg)


def _flip_case(task):
    """Heatmaps of the crop all zero; the flipped crop's heatmaps have one peak for the left eye (joint 1) at
    column 3, row 7. Flip-back mirrors it to column 15 - 3 = 12 on the right eye (joint 2) and, with the shift,
    moves it one column right, to 13; the average halves it. Box: centre (80, 60), scale (1, 1) = 200 px, so one
    heatmap pixel is 200 / 16 = 12.5 px and column c maps to x = 80 + (c - 8) * 12.5."""
    hm = np.zeros((1, 16, 16, 17), np.float32)
    hf = np.zeros_like(hm)
    hf[0, 7, 3, 1] = 1.0
    batch = {"center": jnp.asarray([[80.0, 60.0]]), "scale": jnp.asarray([[1.0, 1.0]]),
             "score": jnp.ones((1,)), "image_id": jnp.zeros((1,), jnp.int32)}
    return task.predict({"heatmaps": jnp.asarray(hm), "heatmaps_flipped": jnp.asarray(hf)}, batch)


def test_flip_test_applies_the_one_pixel_shift():
    out = _flip_case(_task(shift_heatmap=True))
    assert float(out["keypoints"][0, 2, 0]) == pytest.approx(80 + (13 - 8) * 12.5)   # 142.5
    assert float(out["keypoints"][0, 2, 1]) == pytest.approx(60 + (7 - 8) * 12.5)
    assert float(out["maxvals"][0, 2]) == pytest.approx(0.5)
    out = _flip_case(_task(shift_heatmap=False))
    assert float(out["keypoints"][0, 2, 0]) == pytest.approx(80 + (12 - 8) * 12.5)   # 130.0


def test_loss_uses_the_target_weights():
    """JointsMSELoss by hand: mean over joints of 0.5 * mean over batch and pixels of (w * (pred - gt))^2."""
    rng = np.random.default_rng(0)
    pred, gt = rng.normal(size=(2, 16, 16, 17)).astype(np.float32), rng.normal(size=(2, 16, 16, 17)).astype(np.float32)
    w = np.ones((2, 17), np.float32)
    w[:, 5] = 0.0
    w[0, 9] = 0.0
    want = np.mean([0.5 * np.mean((w[:, None, None, k] * (pred[..., k] - gt[..., k])) ** 2) for k in range(17)])
    batch = {"target": jnp.asarray(gt), "target_weight": jnp.asarray(w)}
    loss, _ = _task().loss({"heatmaps": jnp.asarray(pred)}, batch)
    assert float(loss) == pytest.approx(want, rel=1e-5)
    unweighted = np.mean(0.5 * (pred - gt) ** 2)
    loss, _ = _task(use_target_weight=False).loss({"heatmaps": jnp.asarray(pred)}, batch)
    assert float(loss) == pytest.approx(unweighted, rel=1e-5)


def test_official_evaluation_defaults():
    assert (DEFAULTS["oks_thre"], DEFAULTS["in_vis_thre"], DEFAULTS["flip_test"], DEFAULTS["shift_heatmap"]) == \
        (0.9, 0.2, True, True)
    params = inspect.signature(PoseEvaluator).parameters
    assert params["oks_thre"].default == 0.9 and params["in_vis_thre"].default == 0.2
    for name in ("pose_demo", "pose_w32"):
        t = get_experiment(name).task
        assert (t.oks_thre, t.in_vis_thre, t.use_oks_nms) == (0.9, 0.2, True), name


def test_impossible_geometry_is_refused_at_build():
    from hrnet_jax.training.config import ConfigError
    for size in ((0, 0), (-64, 48), (63, 48)):
        with pytest.raises(ConfigError, match="task.input_size"):
            _task(input_size=size)
