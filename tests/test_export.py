"""hrnet_jax.export: for pose, segmentation and classification, the exported program (jax.export, symbolic batch,
lowered for cpu/cuda/tpu) gives the in-library predict path's outputs within 1e-5 at two batch sizes, also in a
fresh process that never imports hrnet_jax; no custom call a serving host cannot resolve; the optional formats when
their extras are installed. Tiny networks with random weights and BN statistics (so folding is exercised)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hrnet_jax import export as E
from hrnet_jax.training.config import Config

TINY_ARCH = {"stem_width": 8, "stages": (
    {"num_modules": 1, "num_branches": 1, "block": "BOTTLENECK", "num_blocks": (1,), "num_channels": (4,)},
    {"num_modules": 1, "num_branches": 2, "block": "BASIC", "num_blocks": (1, 1), "num_channels": (4, 8)},
    {"num_modules": 1, "num_branches": 3, "block": "BASIC", "num_blocks": (1, 1, 1), "num_channels": (4, 8, 16)},
    {"num_modules": 1, "num_branches": 4, "block": "BASIC", "num_blocks": (1, 1, 1, 1),
     "num_channels": (4, 8, 16, 32)})}
ATOL = 1e-5


def random_variables(model, hw, seed=0):
    """Variables of the model's shapes (``eval_shape``: nothing compiled) with random kernels and random BN
    scale / bias / mean / var, so that folding changes the kernels."""
    shapes = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(seed), x, train=False),
                            jax.ShapeDtypeStruct((1, *hw, 3), jnp.float32))
    rng = np.random.default_rng(seed)

    def fill(path, s):
        name = str(getattr(path[-1], "key", path[-1]))
        if name == "var":
            return rng.uniform(0.5, 2.0, s.shape).astype(s.dtype)
        if name in ("mean", "bias"):
            return rng.normal(0, 0.1, s.shape).astype(s.dtype)
        if name == "scale":
            return rng.uniform(0.5, 1.5, s.shape).astype(s.dtype)
        fan_in = int(np.prod(s.shape[-4:-1])) if len(s.shape) >= 4 else s.shape[0]
        return (rng.standard_normal(s.shape) * np.sqrt(2.0 / max(fan_in, 1))).astype(s.dtype)
    return jax.tree_util.tree_map_with_path(fill, shapes)


def images(n, hw, seed=1):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, *hw, 3), dtype=np.uint8)


# ------------------------------------------------------------------------------------------------------ pose
@pytest.fixture(scope="module")
def pose(tmp_path_factory):
    """A converted pose checkpoint exported through the CLI."""
    from hrnet_jax.convert import save_variables
    from hrnet_jax.predict import _pose_task
    task = _pose_task({"name": "pose_hrnet_w18_small_v1", "dtype": "float32", "arch": TINY_ARCH},
                      {"spec": "coco", "input_size": (64, 64)})
    variables = random_variables(task.build_model(), (64, 64))
    # heatmap peaks of a trained model's size (<= ~1; random weights give ~20): the 1e-5 tolerance is then
    # ~1e-5 relative, the float32 difference of two compilations of the same network (XLA may block it differently)
    fl = variables["params"]["final_layer"]
    fl["kernel"], fl["bias"] = fl["kernel"] * 0.04, fl["bias"] * 0.04
    root = tmp_path_factory.mktemp("pose")
    ckpt = str(root / "ckpt")
    save_variables(ckpt, variables, {"model": "pose_hrnet_w18_small_v1", "overrides": {"arch": TINY_ARCH}})
    out = str(root / "export")
    assert E.main(["--checkpoint", ckpt, "--out", out, "--input-size", "64x64"]) == 0
    return ckpt, out


def test_pose_artifact_equals_predict_at_two_batch_sizes_and_image_sizes(pose):
    from hrnet_jax.predict import Predictor
    ckpt, out = pose
    meta = json.load(open(os.path.join(out, "metadata.json")))
    assert meta["task"] == "pose" and meta["batch"] == "dynamic" and meta["platforms"] == ["cpu", "cuda", "tpu"]
    assert meta["input_size"] == [64, 64] and len(meta["keypoints"]["names"]) == 17 and meta["flip_test"]
    assert [i["shape"] for i in meta["inputs"]] == [["h", "w", 3], ["n", 4]]
    assert set(meta["custom_call_targets"]) <= set(E.JAX_RESOLVED_TARGETS)
    loaded = E.load(out)
    pred = Predictor(ckpt, input_size=(64, 64), batch_size=4)
    for hw, boxes in (((120, 160), [(60, 30, 40, 40), (20, 20, 30, 50), (0, 0, 160, 120)]),
                      ((96, 80), [(10, 10, 40, 60), (30, 5, 20, 20), (0, 0, 80, 96), (5, 50, 60, 30),
                                  (40, 40, 30, 30)])):
        img = images(1, hw)[0]
        got = loaded(img, np.asarray(boxes, np.float32))["keypoints"]
        want = np.stack([p["keypoints"] for p in pred.predict(img, [b + (1.0,) for b in boxes])])
        assert got.shape == (len(boxes), 17, 3)
        np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)


# ----------------------------------------------------------------------------------------------- segmentation
SEG_CLASSES = {"name": "tiny", "classes": [{"name": "a", "color": [255, 0, 0]}, {"name": "b", "color": [0, 255, 0]},
                                           {"name": "c", "color": [0, 0, 255]}]}


@pytest.fixture(scope="module")
def seg(tmp_path_factory):
    from hrnet_jax.tasks.segmentation.task import SegmentationTask
    task = SegmentationTask(Config({"model": {"name": "seg_hrnet_w18_small_v1", "dtype": "float32",
                                              "arch": TINY_ARCH},
                                    "task": {"name": "segmentation", "classes": SEG_CLASSES, "eval_flip": True,
                                             "eval_size": (40, 56)},
                                    "batch_size": 1, "seed": 0}))
    variables = random_variables(task.build_model(), (64, 64))
    out = str(tmp_path_factory.mktemp("seg") / "export")
    E.export(task=task, variables=variables, out=out, platforms=("cpu", "cuda", "tpu"))
    return task, variables, out


def test_segmentation_artifact_equals_predictor_at_two_batch_sizes(seg):
    from hrnet_jax.tasks.segmentation.predict import SegmentationPredictor
    task, variables, out = seg
    meta = json.load(open(os.path.join(out, "metadata.json")))
    assert meta["task"] == "segmentation" and meta["input_size"] == [40, 56]
    assert meta["classes"]["names"] == ["a", "b", "c"]
    assert set(meta["custom_call_targets"]) <= set(E.JAX_RESOLVED_TARGETS)
    loaded = E.load(out)
    pred = SegmentationPredictor(task, variables)
    for n in (1, 3):
        x = images(n, (40, 56), seed=n)
        got = loaded(x)["labels"]
        assert got.shape == (n, 40, 56) and got.dtype == np.uint8
        want = np.stack([pred.predict(im) for im in x])
        np.testing.assert_array_equal(got, want)


# --------------------------------------------------------------------------------------------- classification
@pytest.fixture(scope="module")
def cls(tmp_path_factory):
    from hrnet_jax.tasks.classification.task import ClassificationTask
    task = ClassificationTask(Config({"model": {"name": "hrnet_w18_small_v1", "dtype": "float32", "arch": TINY_ARCH},
                                      "task": {"name": "classification", "num_classes": 8, "eval_crop": 32,
                                               "eval_resize": 36},
                                      "batch_size": 1, "seed": 0}))
    variables = random_variables(task.build_model(), (32, 32))
    out = str(tmp_path_factory.mktemp("cls") / "export")
    E.export(task=task, variables=variables, out=out, topk=3)
    return task, variables, out


def test_classification_artifact_equals_predict_at_two_batch_sizes(cls):
    task, variables, out = cls
    meta = json.load(open(os.path.join(out, "metadata.json")))
    assert meta["task"] == "classification" and meta["topk"] == 3 and len(meta["classes"]["names"]) == 8
    assert "centre crop 32" in meta["preprocess"]
    loaded = E.load(out)
    model = task.build_model()

    @jax.jit
    def reference(x):   # the predict path, unfolded: normalise, forward, softmax, top-k
        logits = model.apply(variables, task.preprocess({"image": x}, None, train=False)["image"], train=False)
        return jax.nn.softmax(logits, axis=-1)

    x5 = images(5, (32, 32), seed=5)
    probs5 = np.asarray(reference(x5))   # one reference compilation: the first n rows for batch n
    for n in (2, 5):
        x, probs = x5[:n], probs5[:n]
        got = loaded(x)
        order = np.argsort(-probs, axis=-1)[:, :3]
        np.testing.assert_array_equal(got["classes"], order)
        np.testing.assert_allclose(got["probs"], np.take_along_axis(probs, order, -1), atol=ATOL, rtol=0)


# ------------------------------------------------------------------------------------- fresh process, jax only
FRESH = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    from jax import export
    d = np.load(sys.argv[1])
    res = {}
    for task, folder, args in json.loads(sys.argv[2]):
        meta = json.load(open(folder + "/metadata.json"))
        exp = export.deserialize(bytearray(open(folder + "/model.jaxexport", "rb").read()))
        run = jax.jit(exp.call, compiler_options=meta["compiler_options"].get(jax.default_backend()) or None)
        out = run(*[d[a] for a in args])
        for name, o in zip([o["name"] for o in meta["outputs"]], out if isinstance(out, (tuple, list)) else (out,)):
            res[task + "/" + name] = np.asarray(o)
    assert not any(m == "hrnet_jax" or m.startswith("hrnet_jax.") for m in sys.modules), "hrnet_jax imported"
    np.savez(sys.argv[3], **res)
""")


def test_artifacts_run_in_a_fresh_process_without_hrnet_jax(pose, seg, cls, tmp_path):
    inputs = {"pose_image": images(1, (100, 90))[0], "pose_boxes": np.asarray([[10, 10, 50, 60], [0, 0, 90, 100]],
                                                                              np.float32),
              "seg_images": images(2, (40, 56), seed=7), "cls_images": images(3, (32, 32), seed=8)}
    np.savez(tmp_path / "in.npz", **inputs)
    jobs = [("pose", pose[1], ["pose_image", "pose_boxes"]), ("seg", seg[2], ["seg_images"]),
            ("cls", cls[2], ["cls_images"])]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, "-c", FRESH, str(tmp_path / "in.npz"), json.dumps(jobs),
                        str(tmp_path / "out.npz")], cwd=str(tmp_path), env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    fresh = np.load(tmp_path / "out.npz")
    here = {"pose": E.load(pose[1])(inputs["pose_image"], inputs["pose_boxes"]),
            "seg": E.load(seg[2])(inputs["seg_images"]), "cls": E.load(cls[2])(inputs["cls_images"])}
    for task, outs in here.items():
        for name, v in outs.items():
            np.testing.assert_allclose(fresh[f"{task}/{name}"], v, atol=ATOL, rtol=0)


def test_no_custom_calls_beyond_jax(pose, seg, cls):
    from jax import export as jex
    for folder in (pose[1], seg[2], cls[2]):
        exp = jex.deserialize(bytearray(open(os.path.join(folder, "model.jaxexport"), "rb").read()))
        text = exp.mlir_module()
        assert "Hrnet" not in text and "onednn" not in text.lower()
        assert set(E.custom_call_targets(text)) <= set(E.JAX_RESOLVED_TARGETS)
        assert tuple(exp.platforms) == ("cpu", "cuda", "tpu") or folder == cls[2]


# ---------------------------------------------------------------------------------------------- optional formats
def test_onnx_format_matches(pose, seg, cls, tmp_path):
    """ONNX (jax2onnx) for the three tasks: classification and segmentation with a symbolic batch, pose with a
    fixed one (its image size stays free), run by onnxruntime, equal to the jax artifact within 1e-4."""
    pytest.importorskip("jax2onnx")
    ort = pytest.importorskip("onnxruntime")
    from hrnet_jax.export import _task_of
    pose_task, pose_vars = _task_of(pose[0], input_size=(64, 64))
    with pytest.raises(ValueError, match="fixed --batch"):
        E.export(task=pose_task, variables=pose_vars, out=str(tmp_path / "p0"), format="onnx")
    cases = [("cls", cls[0], cls[1], cls[2], dict(topk=3), [[images(2, (32, 32), 11)], [images(5, (32, 32), 12)]]),
             ("seg", seg[0], seg[1], seg[2], {}, [[images(1, (40, 56), 13)], [images(3, (40, 56), 14)]]),
             ("pose", pose_task, pose_vars, pose[1], dict(batch=2),
              [[images(1, (90, 70), 15)[0], np.asarray([[5, 5, 40, 50], [20, 10, 30, 30]], np.float32)]])]
    for name, task, variables, jax_dir, kw, calls in cases:
        path = E.export(task=task, variables=variables, out=str(tmp_path / name), format="onnx", **kw)
        assert json.load(open(tmp_path / name / "metadata.json"))["format"] == "onnx"
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        for args in calls:
            got = sess.run(None, {i.name: a for i, a in zip(sess.get_inputs(), args)})
            want = list(E.load(jax_dir)(*args).values())
            for g, w in zip(got, want):
                np.testing.assert_allclose(g, w, atol=1e-4, rtol=0)


def test_savedmodel_format_matches(pose, seg, cls, tmp_path):
    """TF SavedModel (jax2tf native serialization, serving_default signature) for the three tasks, symbolic
    batch (pose: also a free image size), equal to the jax artifact within 1e-4."""
    tf = pytest.importorskip("tensorflow")
    from hrnet_jax.export import _task_of
    pose_task, pose_vars = _task_of(pose[0], input_size=(64, 64))
    cases = [("cls", cls[0], cls[1], cls[2], dict(topk=3), [[images(2, (32, 32), 21)], [images(5, (32, 32), 22)]]),
             ("seg", seg[0], seg[1], seg[2], {}, [[images(1, (40, 56), 23)], [images(3, (40, 56), 24)]]),
             ("pose", pose_task, pose_vars, pose[1], {},
              [[images(1, (90, 70), 25)[0], np.asarray([[5, 5, 40, 50], [20, 10, 30, 30]], np.float32)],
               [images(1, (50, 60), 26)[0], np.asarray([[5, 5, 40, 40]], np.float32)]])]
    for name, task, variables, jax_dir, kw, calls in cases:
        path = E.export(task=task, variables=variables, out=str(tmp_path / name), format="savedmodel",
                        platforms=("cpu",), **kw)
        meta = json.load(open(tmp_path / name / "metadata.json"))
        serve = tf.saved_model.load(path).signatures["serving_default"]
        for args in calls:
            got = serve(**{i["name"]: tf.constant(a) for i, a in zip(meta["inputs"], args)})
            want = E.load(jax_dir)(*args)
            for k, w in want.items():
                np.testing.assert_allclose(got[k].numpy(), w, atol=1e-4, rtol=0)
