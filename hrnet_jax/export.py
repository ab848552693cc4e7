"""Export a trained model as one self-contained program: weights, normalisation and the task's post-processing.

    python -m hrnet_jax.export --checkpoint DIR --out OUT_DIR [--batch N|dynamic] [--platforms cpu,cuda,tpu]
                               [--format jax|savedmodel|onnx] [--topk 5] [--input-size HxW] [--spec ...]

``--checkpoint`` is anything ``hrnet_jax.predict`` reads (a training workdir, one of its steps, a converted
checkpoint); the task (pose / segmentation / classification) comes from it. ``OUT_DIR`` receives the artifact and
``metadata.json`` beside it (model, task, input size, keypoint spec or class names, mean / std, inputs and
outputs with their shapes, the XLA compiler options to run it with, versions).

The program is the function of :mod:`hrnet_jax.inference` that ``hrnet_jax.predict`` runs, with the weights inside
(BatchNorm folded, XLA convolutions only), on what a user has:

=================  =============================================  =================================================
task               inputs                                         outputs
=================  =============================================  =================================================
pose (top-down)    ``image`` uint8 (h, w, 3) RGB, any size;        ``keypoints`` float32 (n, K, 3): x, y in image
                   ``boxes`` float32 (n, 4) person boxes           pixels and the score, per box (affine crop,
                   ``[x, y, w, h]``                               flip test and decoding as the checkpoint's task)
segmentation       ``images`` uint8 (b, H, W, 3) RGB               ``labels`` uint8 (b, H, W) train ids
classification     ``images`` uint8 (b, S, S, 3) RGB, resized and  ``classes`` int32 (b, k), ``probs`` float32
                   centre-cropped as ``metadata["preprocess"]``   (b, k), most probable first
=================  =============================================  =================================================

Formats:

* ``jax`` (default): ``model.jaxexport``, a serialized ``jax.export.Exported`` (StableHLO) with a symbolic batch
  dimension (``--batch dynamic``; pose images of any size too), lowered for every ``--platforms`` entry in one
  file; no custom call beyond the ones JAX itself resolves (checked, listed in the metadata). Runs with only
  ``jax`` installed::

      import json, jax, numpy as np
      exp = jax.export.deserialize(open("OUT/model.jaxexport", "rb").read())
      opts = json.load(open("OUT/metadata.json"))["compiler_options"].get(jax.default_backend(), {})
      run = jax.jit(exp.call, compiler_options=opts or None)
      keypoints = np.asarray(run(image_uint8, boxes_xywh))

  (:func:`load` does exactly this and returns named numpy outputs.)
* ``savedmodel`` (``pip install hrnet_jax[tf]``): a TF SavedModel with a ``serving_default`` signature (jax2tf,
  native serialization: one ``XlaCallModule`` op holding the same StableHLO).
* ``onnx`` (``pip install hrnet_jax[onnx]``): ``model.onnx`` through ``jax2onnx``.

From Python: ``export(checkpoint, out)`` or ``export(task=..., variables=..., out=...)``; ``load(out)``.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from typing import Any, Sequence

import numpy as np

__all__ = ["export", "load", "Loaded", "FORMATS", "main"]

FORMATS = ("jax", "savedmodel", "onnx")
ARTIFACT = {"jax": "model.jaxexport", "savedmodel": "savedmodel", "onnx": "model.onnx"}
METADATA = "metadata.json"
DEFAULT_PLATFORMS = ("cpu", "cuda", "tpu")
#: custom-call targets an exported program may hold: resolved by every JAX / XLA runtime
JAX_RESOLVED_TARGETS = ("shape_assertion", "mhlo.topk", "Sharding", "SPMDFullToShardShape",
                        "SPMDShardToFullShape", "annotate_device_placement")


# ---------------------------------------------------------------------------------------------------- loading
class Loaded:
    """A loaded artifact: ``loaded(*inputs)`` → ``{output name: numpy array}``; ``.metadata``; ``.exported`` (the
    ``jax.export.Exported``); ``.call`` (the jitted function returning JAX arrays)."""

    def __init__(self, exported, metadata: dict):
        import jax
        self.exported, self.metadata = exported, metadata
        opts = (metadata.get("compiler_options") or {}).get(jax.default_backend()) or None
        self.call = jax.jit(exported.call, compiler_options=opts)
        self.output_names = [o["name"] for o in metadata.get("outputs", [])]

    def __call__(self, *inputs) -> dict[str, np.ndarray]:
        import jax
        specs = self.metadata.get("inputs", [])
        if len(inputs) != len(specs):
            raise TypeError(f"this program takes {len(specs)} input(s) {[s['name'] for s in specs]}, "
                            f"got {len(inputs)}")
        args = [np.asarray(x, dtype=s["dtype"]) for x, s in zip(inputs, specs)]
        out = self.call(*args)
        outs = out if isinstance(out, (tuple, list)) else (out,)
        return {n: np.asarray(jax.device_get(o)) for n, o in zip(self.output_names, outs)}


def _artifact_dir(path: str) -> str:
    return path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))


def load(path: str) -> Loaded:
    """The ``jax``-format program in ``path`` (the export folder or its ``model.jaxexport``); needs only ``jax``
    (no model code is imported)."""
    from jax import export as jex
    d = _artifact_dir(path)
    f = path if os.path.isfile(path) else os.path.join(d, ARTIFACT["jax"])
    with open(os.path.join(d, METADATA)) as fh:
        meta = json.load(fh)
    with open(f, "rb") as fh:
        exported = jex.deserialize(bytearray(fh.read()))
    return Loaded(exported, meta)


# ---------------------------------------------------------------------------------------------------- export
def custom_call_targets(mlir_text: str) -> list[str]:
    """The ``custom_call`` targets named in a StableHLO module's text."""
    return sorted(set(re.findall(r'custom_call\s*@\s*"?([\w.$-]+)"?', mlir_text)) |
                  set(re.findall(r'call_target_name\s*=\s*"([^"]+)"', mlir_text)))


def _task_of(checkpoint: str, step=None, input_size=None, spec=None, classes=None):
    from hrnet_jax import predict as P
    kind = P.checkpoint_task(checkpoint)
    if kind == "segmentation":
        return P.load_segmentation(checkpoint, step, classes)
    if kind == "classification":
        return P.load_classification(checkpoint, step)
    task, variables = P.load_checkpoint(checkpoint, step=step, input_size=input_size, spec=spec)
    return task, P._layout_like_model(task.build_model(), variables, task.input_size)


def _spec(shape, dtype):
    import jax
    return jax.ShapeDtypeStruct(shape, dtype)


def _dim(d):
    return d if isinstance(d, int) else str(d)


def _signature(task, batch, image_size=None, topk: int = 5) -> tuple[list, list, list]:
    """(input ShapeDtypeStructs, input descriptions, output descriptions) of ``task``'s program."""
    import jax.numpy as jnp
    from jax import export as jex
    dyn = batch in (None, "dynamic", "")
    name = task.name
    if name == "pose":
        if dyn:
            n, h, w = jex.symbolic_shape("n, h, w")
        else:
            h, w = jex.symbolic_shape("h, w")
            n = int(batch)
        if image_size:
            h, w = (int(v) for v in image_size)
        k = task.spec.num_keypoints
        specs = [_spec((h, w, 3), jnp.uint8), _spec((n, 4), jnp.float32)]
        ins = [dict(name="image", shape=[_dim(h), _dim(w), 3], dtype="uint8", doc="one RGB image"),
               dict(name="boxes", shape=[_dim(n), 4], dtype="float32", doc="person boxes [x, y, w, h] in pixels")]
        outs = [dict(name="keypoints", shape=[_dim(n), k, 3], dtype="float32",
                     doc="per box and keypoint: x, y (image pixels), score (heatmap peak)")]
        return specs, ins, outs
    b = jex.symbolic_shape("b")[0] if dyn else int(batch)
    if name == "segmentation":
        hw = tuple(int(v) for v in image_size)
        specs = [_spec((b, *hw, 3), jnp.uint8)]
        ins = [dict(name="images", shape=[_dim(b), hw[0], hw[1], 3], dtype="uint8", doc="RGB images")]
        outs = [dict(name="labels", shape=[_dim(b), hw[0], hw[1]], dtype="uint8",
                     doc="per pixel: class index (train id)")]
        return specs, ins, outs
    if name == "classification":
        s = int(image_size[0]) if image_size else int(task.t.eval_crop)
        hw = (int(image_size[0]), int(image_size[1])) if image_size else (s, s)
        kk = min(int(topk), int(task.t.num_classes))
        specs = [_spec((b, *hw, 3), jnp.uint8)]
        ins = [dict(name="images", shape=[_dim(b), hw[0], hw[1], 3], dtype="uint8",
                    doc="RGB images, resized and centre-cropped (metadata preprocess)")]
        outs = [dict(name="classes", shape=[_dim(b), kk], dtype="int32", doc="top-k class indices, best first"),
                dict(name="probs", shape=[_dim(b), kk], dtype="float32", doc="their softmax probabilities")]
        return specs, ins, outs
    raise ValueError(f"cannot export task {name!r}")


def _seg_size(task, image_size):
    if image_size:
        return tuple(int(v) for v in image_size)
    if task.t.eval_size:
        return tuple(int(v) for v in task.t.eval_size)
    return tuple(int(v) for v in task.crop_size)


def _metadata(task, ins, outs, *, fmt, platforms, batch, topk, targets, extra=None) -> dict:
    import jax
    import hrnet_jax
    from hrnet_jax import xla_options
    mc = task.config["model"]
    model_cfg = mc.to_dict() if hasattr(mc, "to_dict") else dict(mc)
    meta: dict[str, Any] = {
        "format": {"jax": "jax.export", "savedmodel": "tf.saved_model", "onnx": "onnx"}[fmt],
        "artifact": ARTIFACT[fmt],
        "task": task.name,
        "model": model_cfg.get("name"),
        "model_config": json.loads(json.dumps(model_cfg, default=lambda o: getattr(o, "to_dict", lambda: str(o))())),
        "mean": [float(v) for v in task.mean], "std": [float(v) for v in task.std],
        "inputs": ins, "outputs": outs,
        "batch": "dynamic" if batch in (None, "dynamic", "") else int(batch),
        "platforms": list(platforms),
        "compiler_options": {p: xla_options.inference(p) for p in ("cpu",) if p in platforms},
        "custom_call_targets": targets,
        "hrnet_jax_version": hrnet_jax.__version__, "jax_version": jax.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if task.name == "pose":
        s = task.spec
        meta.update(input_size=list(task.input_size), heatmap_size=list(task.heatmap_size),
                    keypoints={"spec": s.name, "names": list(s.keypoints), "flip_pairs": [list(p) for p in s.flip_pairs],
                               "skeleton": [list(p) for p in s.skeleton], "sigmas": list(s.sigmas),
                               "category_id": int(s.category_id)},
                    box_padding=float(task.t.box_padding), flip_test=bool(task.t.flip_test),
                    decode=task.t.decode, shift_heatmap=bool(task.t.shift_heatmap))
    elif task.name == "segmentation":
        c = task.classes
        meta.update(input_size=[ins[0]["shape"][1], ins[0]["shape"][2]],
                    classes={"spec": c.name, "names": list(c.names), "colors": [list(x) for x in c.colors],
                             "ids": list(c.ids) if c.ids is not None else None},
                    eval_mode=task.t.eval_mode, eval_flip=bool(task.t.eval_flip))
    else:
        t = task.t
        try:   # a converted ImageNet checkpoint has no data source of its own ("shapes" names): indices
            names = ([str(i) for i in range(int(t.num_classes))] if t.source == "shapes" and int(t.num_classes) > 64
                     else list(task.class_names()))
        except Exception:   # noqa: BLE001 - a source that cannot be opened here: indices only
            names = [str(i) for i in range(int(t.num_classes))]
        meta.update(input_size=[ins[0]["shape"][1], ins[0]["shape"][2]], classes={"names": names}, topk=int(topk),
                    preprocess=f"decode RGB, resize the short side to {int(t.eval_resize)} (bilinear, antialiased, "
                               f"torchvision Resize), centre crop {int(t.eval_crop)}; uint8")
    meta.update(extra or {})
    return meta


def _write_json(path: str, obj: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def export(checkpoint: str | None = None, out: str | None = None, *, task=None, variables=None, step=None,
           batch: int | str = "dynamic", platforms: Sequence[str] = DEFAULT_PLATFORMS, format: str = "jax",  # noqa: A002
           topk: int = 5, image_size: Sequence[int] | None = None, input_size=None, spec=None,
           classes=None, winograd: int | None = None) -> str:
    """Writes the program of a checkpoint (or of ``task`` + ``variables``) and ``metadata.json`` into the folder
    ``out``; returns the artifact's path. ``batch``: ``"dynamic"`` (a symbolic batch) or a fixed size;
    ``image_size``: segmentation / classification input (H, W) (default: the task's evaluation size), pose: fix
    the image size (default any); ``input_size`` / ``spec`` / ``classes``: as ``hrnet_jax.predict`` for
    converted checkpoints. ``winograd``: as :func:`hrnet_jax.inference.prepare` (default: Winograd 3x3 convs on
    CPU when ``cpu`` is a platform, chosen per platform inside the program; never for ONNX, whose runtimes have
    convolution kernels of their own)."""
    import jax
    from jax import export as jex
    from hrnet_jax import inference
    if format not in FORMATS:
        raise ValueError(f"format {format!r}; valid: {FORMATS}")
    if out is None:
        raise ValueError("export needs out (a folder)")
    if task is None:
        if checkpoint is None:
            raise ValueError("export needs a checkpoint or task + variables")
        task, variables = _task_of(checkpoint, step, input_size, spec, classes)
    platforms = tuple(p.strip().lower() for p in platforms if p.strip())
    if task.name == "segmentation":
        image_size = _seg_size(task, image_size)
    model = task.build_model()
    # XLA convs only (no oneDNN custom calls); Winograd 3x3 convs on CPU (see the docstring)
    apply_fn, v = inference.prepare(model, variables, platforms=platforms,
                                    winograd=0 if format == "onnx" else winograd)
    v = jax.tree.map(np.asarray, v)
    kwargs = {"topk": int(topk)} if task.name == "classification" else {}
    fn = inference.task_fn(task, apply_fn, **kwargs)

    def program(*inputs):   # the weights are constants of the program: one self-contained file
        return fn(v, *inputs)

    if format == "onnx" and task.name == "pose" and batch in (None, "dynamic", ""):
        raise ValueError("--format onnx for pose needs a fixed --batch N (jax2onnx slices the flip-test batch "
                         "wrongly when it is symbolic); the image size stays free")
    specs, ins, outs = _signature(task, batch, image_size, topk)
    os.makedirs(out, exist_ok=True)
    exp = jex.export(jax.jit(program), platforms=platforms)(*specs)
    targets = custom_call_targets(exp.mlir_module())
    foreign = [t for t in targets if t not in JAX_RESOLVED_TARGETS]
    if foreign:
        raise RuntimeError(f"the exported program calls custom targets a serving host cannot resolve: {foreign}")
    path = os.path.join(out, ARTIFACT[format])
    extra: dict[str, Any] = {}
    if format == "jax":
        try:
            blob = exp.serialize()
        except ImportError as e:   # jax.export's serialization needs the flatbuffers package
            raise RuntimeError(f"{e} (pip install flatbuffers)") from None
        with open(path + ".tmp", "wb") as f:
            f.write(blob)
        os.replace(path + ".tmp", path)
    elif format == "savedmodel":
        extra = _save_savedmodel(program, specs, ins, outs, path, platforms)
    else:
        extra = _save_onnx(program, specs, ins, outs, path)
    # how many 3x3 convs run by Winograd on CPU (0: all by the platform's own convolution)
    extra["winograd_convs"] = len(jax.tree_util.tree_leaves(v.get("winograd", {})))
    _write_json(os.path.join(out, METADATA), _metadata(task, ins, outs, fmt=format, platforms=platforms, batch=batch,
                                                       topk=topk, targets=targets, extra=extra))
    return path


# ------------------------------------------------------------------------------------------- optional formats
def _tf_spec(s, name):
    import tensorflow as tf
    shape = [d if isinstance(d, int) else None for d in s.shape]
    return tf.TensorSpec(shape, tf.as_dtype(np.dtype(s.dtype)), name=name)


def _poly(s) -> str:
    return "(" + ", ".join(str(d) for d in s.shape) + ")"


def _save_savedmodel(program, specs, ins, outs, path, platforms) -> dict:
    try:
        import tensorflow as tf
        from jax.experimental import jax2tf
    except ImportError as e:
        raise RuntimeError(f"--format savedmodel needs TensorFlow (pip install 'hrnet_jax[tf]'): {e}") from None
    tf_fn = jax2tf.convert(program, polymorphic_shapes=[_poly(s) for s in specs],
                           native_serialization_platforms=tuple(p for p in platforms if p in ("cpu", "cuda", "tpu")))
    names = [o["name"] for o in outs]

    @tf.function(autograph=False, input_signature=[_tf_spec(s, i["name"]) for s, i in zip(specs, ins)])
    def serve(*args):
        r = tf_fn(*args)
        r = r if isinstance(r, (tuple, list)) else (r,)
        return dict(zip(names, r))

    module = tf.Module()
    module.serve = serve
    tf.saved_model.save(module, path, signatures={"serving_default": serve})
    return {"serving_signature": "serving_default", "tensorflow_version": tf.__version__}


def _save_onnx(program, specs, ins, outs, path) -> dict:
    try:
        import jax2onnx
    except ImportError as e:
        raise RuntimeError(f"--format onnx needs jax2onnx (pip install 'hrnet_jax[onnx]'): {e}") from None
    jax2onnx.to_onnx(program, list(specs), model_name="hrnet_jax", input_names=[i["name"] for i in ins],
                     output_names=[o["name"] for o in outs], return_mode="file", output_path=path)
    try:
        from importlib.metadata import version
        v = version("jax2onnx")
    except Exception:   # noqa: BLE001
        v = ""
    return {"jax2onnx_version": v}


# -------------------------------------------------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hrnet_jax.export", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="training workdir, its checkpoints/<step>, or a converted "
                                                       "checkpoint folder")
    p.add_argument("--out", required=True, help="output folder (artifact + metadata.json)")
    p.add_argument("--batch", default="dynamic", help="'dynamic' (symbolic batch) or a fixed batch size")
    p.add_argument("--platforms", default=",".join(DEFAULT_PLATFORMS), help="comma list of cpu, cuda, tpu")
    p.add_argument("--format", default="jax", choices=FORMATS)
    p.add_argument("--topk", type=int, default=5, help="classification: classes returned per image")
    p.add_argument("--image-size", default="", help="HxW: segmentation / classification input (default: the "
                                                    "task's evaluation size); pose: fix the image size")
    p.add_argument("--step", type=int, default=None)
    p.add_argument("--input-size", default="", help="pose, converted checkpoint: network input HxW (default 256x192)")
    p.add_argument("--spec", default=None, help="pose, converted checkpoint: keypoint spec")
    p.add_argument("--classes", default=None, help="segmentation, converted checkpoint: class spec")
    a = p.parse_args(argv)
    hw = lambda s: tuple(int(v) for v in s.lower().split("x")) if s else None  # noqa: E731
    batch = a.batch if a.batch == "dynamic" else int(a.batch)
    t = time.perf_counter()
    try:
        path = export(a.checkpoint, a.out, step=a.step, batch=batch, platforms=a.platforms.split(","),
                      format=a.format, topk=a.topk, image_size=hw(a.image_size), input_size=hw(a.input_size),
                      spec=a.spec, classes=a.classes)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    with open(os.path.join(a.out, METADATA)) as f:
        meta = json.load(f)
    sig = ", ".join(f"{i['name']} {i['dtype']}{tuple(i['shape'])}" for i in meta["inputs"])
    res = ", ".join(f"{o['name']} {o['dtype']}{tuple(o['shape'])}" for o in meta["outputs"])
    print(f"{meta['task']} {meta['model']} -> {path} ({meta['format']}, {', '.join(meta['platforms'])}; "
          f"{time.perf_counter() - t:.1f} s): ({sig}) -> ({res})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
