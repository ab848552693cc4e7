"""Detection task: the evaluator's box AP equals pycocotools run directly on the same detections, the task's
config checks, a short det_demo-like run through the generic loop (outputs format, rising AP), and 1 vs 8
devices giving the same losses for the detector's train step."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from hrnet_jax.tasks.detection.evaluate import STAT_NAMES, DetectionEvaluator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---- evaluator vs pycocotools ------------------------------------------------------------------------------------
def _gt_and_dets(seed=0):
    rng = np.random.default_rng(seed)
    cats = [2, 5, 9]
    images, anns = [], []
    for i in range(6):
        h, w = int(rng.integers(60, 120)), int(rng.integers(60, 120))
        images.append(dict(id=10 + i, file_name=f"{i}.jpg", height=h, width=w))
        for _ in range(int(rng.integers(1, 5))):
            bw, bh = rng.uniform(4, w / 2), rng.uniform(4, h / 2)
            x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
            anns.append(dict(id=len(anns) + 1, image_id=10 + i, category_id=int(rng.choice(cats)),
                             bbox=[x, y, bw, bh], area=bw * bh, iscrowd=int(rng.random() < 0.1)))
    gt = dict(images=images, annotations=anns, categories=[dict(id=c, name=f"c{c}") for c in cats])
    # detections in input pixels of a resized image (scale sx, sy), D = 6 slots per image, some invalid
    D = 6
    B = len(images)
    boxes = np.zeros((B, D, 4), np.float32)
    scores = rng.uniform(0.05, 1, (B, D)).astype(np.float32)
    labels = rng.integers(0, 3, (B, D)).astype(np.int32)
    valid = rng.random((B, D)) < 0.8
    scale = rng.uniform(0.5, 2.0, (B, 2)).astype(np.float32)
    orig_hw = np.array([[im["height"], im["width"]] for im in images], np.int32)
    for i, im in enumerate(images):
        own = [a for a in anns if a["image_id"] == im["id"]]
        for d in range(D):
            if d < len(own) and rng.random() < 0.8:   # a jittered ground-truth box with its class
                x, y, bw, bh = own[d]["bbox"]
                x1, y1 = x + rng.normal(0, 1.5), y + rng.normal(0, 1.5)
                x2, y2 = x + bw + rng.normal(0, 1.5), y + bh + rng.normal(0, 1.5)
                labels[i, d] = cats.index(own[d]["category_id"])
            else:                                     # a false positive
                x1, y1 = rng.uniform(0, im["width"] - 10), rng.uniform(0, im["height"] - 10)
                x2, y2 = x1 + rng.uniform(3, 30), y1 + rng.uniform(3, 30)
            sx, sy = scale[i]
            boxes[i, d] = [x1 * sx, y1 * sy, x2 * sx, y2 * sy]
    return gt, cats, dict(boxes=boxes, scores=scores, labels=labels, valid=valid, image_id=np.array(
        [im["id"] for im in images], np.int32), scale=scale, orig_hw=orig_hw)


def test_evaluator_equals_pycocotools_directly(tmp_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    gt, cats, out = _gt_and_dets()
    gt_path = tmp_path / "gt.json"
    gt_path.write_text(json.dumps(gt))
    res_path = tmp_path / "dets.json"
    ev = DetectionEvaluator(str(gt_path), cats, results_path=str(res_path))
    ev.add({k: v[:4] for k, v in out.items()})
    ev.add({**{k: v[4:] for k, v in out.items()}, "image_id": np.array([14, 15, -1][:2], np.int32)})
    got = ev.result()
    # the same detections converted by hand: input pixels / scale, clipped to the image, xywh, category ids
    dets = []
    for i in range(len(out["image_id"])):
        sx, sy = (float(v) for v in out["scale"][i])
        h, w = out["orig_hw"][i]
        for d in range(out["boxes"].shape[1]):
            if not out["valid"][i, d]:
                continue
            x1, y1, x2, y2 = (float(v) for v in out["boxes"][i, d])
            x1, x2 = np.clip([x1 / sx, x2 / sx], 0, w)
            y1, y2 = np.clip([y1 / sy, y2 / sy], 0, h)
            dets.append(dict(image_id=int(out["image_id"][i]), category_id=cats[int(out["labels"][i, d])],
                             bbox=[x1, y1, x2 - x1, y2 - y1], score=float(out["scores"][i, d])))
    direct_path = tmp_path / "direct.json"
    direct_path.write_text(json.dumps(dets))
    coco = COCO(str(gt_path))
    e = COCOeval(coco, coco.loadRes(str(direct_path)), "bbox")
    e.evaluate()
    e.accumulate()
    e.summarize()
    assert got["AP"] > 0.1
    for name, v in zip(STAT_NAMES, e.stats):
        assert got[name] == pytest.approx(max(v, 0.0), abs=2e-4), name
    written = json.load(open(res_path))
    assert len(written) == len(dets)
    np.testing.assert_allclose([r["bbox"] for r in written], [r["bbox"] for r in dets], atol=2e-3)


# ---- config checks ---------------------------------------------------------------------------------------------
def test_task_config_errors_name_the_choices(tmp_path):
    from hrnet_jax.tasks.detection.task import COCO_CATEGORIES, DetectionTask
    from hrnet_jax.training.config import Config, ConfigError
    base = {"batch_size": 2, "seed": 0, "model": {"name": "faster_rcnn_hrnetv2p_w18"}}
    with pytest.raises(ConfigError, match="valid"):
        DetectionTask(Config({**base, "task": {"name": "detection", "bucket": (64, 64)}}))
    with pytest.raises(ConfigError, match="multiples of 32"):
        DetectionTask(Config({**base, "task": {"name": "detection", "buckets": ((100, 64),)}}))
    with pytest.raises(ConfigError, match="annotations/instances_val2017.json"):
        DetectionTask(Config({**base, "task": {"name": "detection", "data_root": str(tmp_path)}})).source("val")
    t = DetectionTask(Config({**base, "task": {"name": "detection", "classes": "coco"}}))
    assert t.num_classes == 80 and t.cat_ids[-1] == 90 and t.class_names[0] == "person"
    assert len(COCO_CATEGORIES) == 80
    with pytest.raises(ConfigError, match="not a detector"):
        DetectionTask(Config({**base, "model": {"name": "hrnet_w18"}, "task": {"name": "detection",
                                                                                "classes": "coco"}})).build_model()


# ---- a short det_demo-like run through the generic loop ----------------------------------------------------------
TINY_ARCH = dict(stem_width=16, stages=(
    dict(num_modules=1, num_branches=1, block="BOTTLENECK", num_blocks=(1,), num_channels=(8,)),
    dict(num_modules=1, num_branches=2, block="BASIC", num_blocks=(1, 1), num_channels=(8, 16)),
    dict(num_modules=1, num_branches=3, block="BASIC", num_blocks=(1, 1, 1), num_channels=(8, 16, 32)),
    dict(num_modules=1, num_branches=4, block="BASIC", num_blocks=(1, 1, 1, 1), num_channels=(8, 16, 32, 64)),
))
TINY_MODEL = dict(neck_channels=16, anchor_scales=(4.0,), rpn_pre_nms_top_n=50, rpn_post_nms_top_n=50,
                  rpn_max_proposals=50, rpn_pre_nms_top_n_test=50, rpn_post_nms_top_n_test=50,
                  rpn_max_proposals_test=50, num_rois=32, fc_channels=32, rpn_batch_size=64,
                  detections_per_img=20)


def tiny_config(data_root, steps=40):
    from experiments import get_experiment
    from hrnet_jax.training.config import Config
    cfg = get_experiment("det_demo").to_dict()
    cfg.update(total_steps=steps, batch_size=8, log_every=10, checkpoint_every=steps,
               evals={"val": {"every": steps, "steps": 0}})
    cfg["model"] = {"name": "faster_rcnn_hrnetv2p_w18", "dtype": "float32", "arch": TINY_ARCH, **TINY_MODEL}
    cfg["optimizer"].update(lr=3e-3, warmup_steps=5)
    cfg["task"].update(data_root=str(data_root), img_scale=(64, 64), buckets=((64, 64),), max_boxes=4,
                       eval_batch_size=8, synthetic=dict(num_train=32, num_val=8, image_size_hw=(64, 64), seed=0,
                                                         min_objects=1, max_objects=2, min_size=20.0,
                                                         max_size=44.0))
    return Config(cfg)


def test_short_run_through_the_loop_outputs_and_rising_ap(tmp_path):
    import jax
    from hrnet_jax.tasks import build_task
    from hrnet_jax.train import train
    from hrnet_jax.training import steps
    from hrnet_jax.training.evaluate import evaluate
    cfg = tiny_config(tmp_path / "data", steps=40)
    task = build_task(cfg)
    seen = []
    make_evaluator = task.evaluator

    def recording_evaluator(name="val"):
        ev = make_evaluator(name)
        add = ev.add
        ev.add = lambda outputs, batch=None: (seen.append(dict(outputs)), add(outputs, batch))
        return ev
    task.evaluator = recording_evaluator
    # AP of the loop's own step-0 state (same seed, same init)
    init = steps.init_variables(task, task.build_model(),
                                {k: v[:1] for k, v in task.example_batch().items()},
                                jax.random.split(jax.random.PRNGKey(cfg.seed))[0])
    before = evaluate(task, init)["val/AP"]
    seen.clear()
    res = train(cfg, str(tmp_path / "run"), task=task, quiet=True)
    losses = [h["loss"] for h in res.history if "loss" in h]
    assert len(losses) == 4 and losses[-1] < losses[0]
    assert set(STAT_NAMES) <= {k.split("/", 1)[1] for k in res.eval_metrics}
    assert res.eval_metrics["val/AP"] > before, (res.eval_metrics["val/AP"], before)
    # predict(): per-image detections + the fields the evaluator needs (padding rows already dropped)
    D = TINY_MODEL["detections_per_img"]
    out = {k: np.concatenate([o[k] for o in seen]) for k in seen[0]}
    n = len(out["image_id"])
    assert n == 8 and sorted(out["image_id"].tolist()) == list(range(1, 9))
    assert out["boxes"].shape == (n, D, 4) and out["scores"].shape == (n, D) and out["labels"].shape == (n, D)
    assert out["valid"].dtype == bool and out["scale"].shape == (n, 2) and out["orig_hw"].shape == (n, 2)
    assert int(np.max(np.where(out["valid"], out["labels"], 0))) < task.num_classes
    b = out["boxes"][out["valid"]]
    assert (b[:, 2] >= b[:, 0]).all() and (b[:, 3] >= b[:, 1]).all() and b.min() >= 0 and b.max() <= 64


# ---- 1 vs 8 devices -----------------------------------------------------------------------------------------------
def test_8_devices_match_1_device_train_step(tmp_path):
    # the loop's train step (task preprocess / forward with the sampling RNG / loss, optimizer) on a 1-device and
    # an 8-device data mesh, from the same initial state on the same two batches
    code = f"""
        import functools, json, sys, jax, numpy as np
        sys.path.insert(0, {os.path.join(ROOT, 'tests')!r})
        from test_det_task import tiny_config
        from hrnet_jax.data.pipeline import pop_stats
        from hrnet_jax.tasks import build_task
        from hrnet_jax.training import optim, steps, sharding as shd
        assert jax.device_count() == 8
        cfg = tiny_config({str(tmp_path / 'data')!r}, steps=2)
        task = build_task(cfg)
        model = task.build_model()
        it = iter(task.train_dataset(0, 1))
        batches = [next(it) for _ in range(2)]
        for b in batches:
            pop_stats(b)
        example = {{k: v[:1] for k, v in task.example_batch().items()}}
        tx, lr_fn = optim.make_optimizer(cfg.optimizer, cfg.total_steps, None)

        def run(devices):
            mesh = shd.make_mesh(devices)
            data_sh, repl = shd.batch_sharding(mesh), shd.replicated(mesh)
            state = jax.jit(functools.partial(steps.init_state, task, model, tx, example, cfg.seed),
                            out_shardings=repl)()
            step = jax.jit(functools.partial(steps.train_step, task=task, model=model, tx=tx, lr_fn=lr_fn),
                           in_shardings=(repl, data_sh), out_shardings=(repl, repl))
            losses = []
            with jax.set_mesh(mesh):
                for b in batches:
                    state, m = step(state, jax.device_put(b, data_sh))
                    losses.append([float(m[k]) for k in ("loss", "rpn_cls", "rpn_box", "rcnn_cls", "rcnn_box")])
            return losses
        print(json.dumps([run(jax.devices()[:1]), run(jax.devices())]))
    """
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    p = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-4000:]
    d1, d8 = json.loads(p.stdout.strip().splitlines()[-1])
    assert len(d1) == 2 and all(np.isfinite(d1[0]))
    np.testing.assert_allclose(d8, d1, rtol=2e-5, atol=1e-6)
