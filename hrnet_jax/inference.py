"""The inference entry point: the fastest way to run a trained HRNet, in one call.

    from hrnet_jax import inference, models
    model = models.create("hrnet_w32")
    run = inference.compile(model, variables, example=images)     # BN folded, Winograd on CPU, inference options
    logits = run(images)                                           # == model.apply(variables, images, train=False)

What :func:`compile` (and :func:`prepare` / :func:`jit` below it) does that a plain ``jax.jit(model.apply)`` does
not, each measured by ``python -m hrnet_jax.bench`` (``--entry-point``):

* **BatchNorm folding** (:mod:`hrnet_jax.models.fold`): every conv + BN pair runs as one conv (+ bias), and the
  scanned runs of identical blocks become straight-line code with their own kernels (no slicing of stacked
  parameters per call).
* **Winograd 3x3 convolutions on CPU** (:mod:`hrnet_jax.kernels.winograd`): every 3x3 stride-1 conv with at
  least 64 channels runs as F(2x2, 3x3), 2.25x fewer multiplications, its transformed kernels computed once here
  (pose W32 batch 8 on 2 cores: 11.0 -> 14.0 img/s; hrnet_w32 8.9 -> 10.8). Pure StableHLO, so the exported
  program keeps it; a program for several platforms picks it on CPU only (``lax.platform_dependent``).
* **Inference compiler options** (:func:`hrnet_jax.xla_options.inference`): on CPU, XLA's own convolutions and
  matmuls, no YNNPACK fusions (Eigen runs Winograd's batched matmuls faster).
* **An inference execution policy**: XLA's convolutions only (``ExecutionPolicy(onednn=False)``), so no oneDNN
  custom call is traced (they serve training gradients; a forward pass is the same XLA conv either way) and an
  exported program holds nothing a serving host cannot resolve.
* **Ahead-of-time compiled** per input shape, called without ``jit``'s dispatch.

Huge pages (``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``, :mod:`hrnet_jax.host_memory`) are a process setting that
no library call can apply after the process started: set the variable before starting Python (the bench and
``python -m hrnet_jax.train`` restart themselves with it) for the remaining few percent on CPU.

The same entry point runs a task's whole inference path: :func:`task_fn` returns, per task, the function from
what a user has (uint8 RGB images; person boxes for top-down pose) to the task's answer (keypoints in image
pixels with scores; a label map at the input resolution; top-k classes and probabilities). ``hrnet_jax.predict``,
the segmentation predictor and :mod:`hrnet_jax.export` all run these functions.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from hrnet_jax import xla_options

__all__ = ["prepare", "jit", "compile", "InferenceFunction", "task_fn", "pose_crops", "pose_from_crops",
           "pose_fn", "segmentation_fn", "classification_fn", "PIXEL_STD"]

PIXEL_STD = 200.0


# ------------------------------------------------------------------------------------------- model preparation
def _bare(model):
    return getattr(model, "module", model)


def _is_hrnet(model) -> bool:
    from hrnet_jax.models.model import HRNet
    return isinstance(_bare(model), HRNet)


def inference_model(model, winograd: int = 0):
    """``model`` under the inference execution policy: XLA convolutions only (no oneDNN custom calls), and 3x3
    stride-1 convs with at least ``winograd`` channels by Winograd F(2x2, 3x3) on CPU (0: none)."""
    from hrnet_jax.execution import ExecutionPolicy, PolicyModel
    if isinstance(model, PolicyModel):
        if model.execution.onednn is not False or model.execution.winograd != winograd:
            return model.clone(onednn=False, winograd=winograd)
        return model
    if winograd and _is_hrnet(model):
        return PolicyModel(model, ExecutionPolicy(onednn=False, winograd=winograd))
    return model


def prepare(model, variables, *, fold: bool = True, winograd: int | None = None,
            platforms: Sequence[str] | None = None) -> tuple[Callable, dict]:
    """``(apply_fn, inference_variables)``: ``apply_fn(inference_variables, x, train=False, rngs=None)`` equals
    ``model.apply(variables, x, train=False)`` up to float rounding, computed the fast way (BN folded into the
    convs, scanned runs unrolled, XLA convs, Winograd 3x3 convs on CPU). ``apply_fn`` has ``model.apply``'s
    calling convention, so a task's ``forward`` / ``scores`` take it unchanged. Models that are not HRNets (or
    ``fold=False``) keep their own ``apply`` and variables.

    ``winograd``: the minimum channel count of the 3x3 stride-1 convs computed by Winograd F(2x2, 3x3) on CPU
    (:mod:`hrnet_jax.kernels.winograd`; 0 = none; ``None`` = :func:`hrnet_jax.execution.default_winograd` of
    ``platforms``, the platforms the program will run on, default this process's backend). Their transformed
    kernels are computed here, once, into the ``winograd`` collection of the returned variables.

    Pure ``jax.numpy``: it may run inside ``jit`` (an eval step whose variables change between passes)."""
    from hrnet_jax.execution import WINOGRAD, default_winograd, winograd_variables
    if winograd is None:
        winograd = default_winograd(tuple(platforms) if platforms else (jax.default_backend(),))
    if not (fold and _is_hrnet(model) and variables.get("batch_stats")):
        model = inference_model(model)

        def apply_plain(v, *args, train: bool = False, rngs=None, **kw):
            if train:
                raise ValueError("an inference function runs with train=False")
            return model.apply(v, *args, train=False, **({"rngs": rngs} if rngs else {}), **kw)
        return apply_plain, {k: v for k, v in variables.items() if k in ("params", "batch_stats")}
    from hrnet_jax.models.fold import fold_batchnorm
    model = inference_model(model, int(winograd))
    # scanned runs become straight-line code with their own kernels, unless the model asked for rolled loops
    # (scan_unroll != True: a faster compile matters more to it)
    folded, params = fold_batchnorm(model, variables, unstack=getattr(_bare(model), "scan_unroll", True) is True)

    def apply_folded(v, *args, train: bool = False, rngs=None, **kw):
        if train:
            raise ValueError("an inference function runs with train=False (BatchNorm is folded)")
        extra = {k: c for k, c in v.items() if k != "params"}
        return folded.apply(v["params"], *args, extra=extra, **kw)

    out = {"params": params}
    if winograd:
        trace = lambda v, x, mutable: folded.apply(v["params"], x, mutable=mutable)  # noqa: E731
        params, transformed = winograd_variables(trace, params, jnp.zeros((1, 64, 64, 3), jnp.float32))
        out = {"params": params, **({WINOGRAD: transformed} if transformed else {})}   # none: no collection
    return apply_folded, out


def jit(fn: Callable, backend: str | None = None, **kwargs):
    """``jax.jit`` with the inference compiler options of the backend (:func:`hrnet_jax.xla_options.inference`)."""
    opts = dict(xla_options.inference(backend))
    opts.update(kwargs.pop("compiler_options", None) or {})
    return jax.jit(fn, compiler_options=opts or None, **kwargs)


def _key(tree) -> tuple:
    return tuple((tuple(np.shape(a)), str(getattr(a, "dtype", type(a).__name__)))
                 for a in jax.tree_util.tree_leaves(tree)) + (jax.tree_util.tree_structure(tree),)


class InferenceFunction:
    """``fn(variables, *inputs)`` jitted with the inference options, its variables bound, compiled ahead of time
    once per input shape. ``__call__(*inputs)`` runs it; ``lower(*inputs)`` gives the ``jax.stages.Lowered``."""

    def __init__(self, fn: Callable, variables: Any, *, apply_fn: Callable | None = None):
        self.fn = fn
        self.apply_fn = apply_fn
        self.variables = jax.device_put(variables)
        self._jit = jit(fn)
        self._compiled: dict = {}

    def lower(self, *inputs):
        return self._jit.lower(self.variables, *inputs)

    def compiled(self, *inputs):
        key = _key(inputs)
        c = self._compiled.get(key)
        if c is None:
            c = self._compiled[key] = self.lower(*inputs).compile()
        return c

    def __call__(self, *inputs):
        inputs = jax.tree.map(lambda a: a if isinstance(a, jax.Array) else np.asarray(a), inputs)
        return self.compiled(*inputs)(self.variables, *inputs)


def compile(model, variables, example=None, *, task=None, fold: bool = True, winograd: int | None = None,  # noqa: A001
            **task_kwargs) -> InferenceFunction:
    """The fast inference function of ``model`` with ``variables``.

    Without ``task``: ``run(x) == model.apply(variables, x, train=False)`` (``x`` as the model takes it: float
    NHWC, normalised). With ``task`` (a task object): ``run`` is the task's whole inference path on what a user
    has (:func:`task_fn`; ``task_kwargs`` go to it). ``example`` (an input, or a tuple of inputs) compiles it
    now; otherwise the first call of each input shape does. ``winograd``: as :func:`prepare`."""
    apply_fn, v = prepare(model, variables, fold=fold, winograd=winograd)
    if task is None:
        def fn(v, x):
            return apply_fn(v, x, train=False)
    else:
        fn = task_fn(task, apply_fn, **task_kwargs)
    run = InferenceFunction(fn, v, apply_fn=apply_fn)
    if example is not None:
        run.compiled(*(example if isinstance(example, tuple) else (example,)))
    return run


# ---------------------------------------------------------------------------------------------- task functions
def normalize(task, images: jax.Array) -> jax.Array:
    """uint8 or float pixels (0-255) → ``(x - mean) / std`` with the task's mean / std (float32)."""
    mean = jnp.asarray(task.mean, jnp.float32)
    inv_std = 1.0 / jnp.asarray(task.std, jnp.float32)
    return (images.astype(jnp.float32) - mean) * inv_std


def boxes_to_center_scale(boxes: jax.Array, aspect_ratio: float, padding: float = 1.25) -> tuple[jax.Array, jax.Array]:
    """``(N, 4)`` boxes ``[x, y, w, h]`` → center ``(N, 2)`` and scale ``(N, 2)`` (``pixel_std`` 200 units): the
    box enlarged to the aspect ratio about its centre, times ``padding`` (as
    :func:`hrnet_jax.data.ops.affine.box_to_center_scale`)."""
    boxes = boxes.astype(jnp.float32)
    x, y, w, h = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    center = jnp.stack([x + w * 0.5, y + h * 0.5], axis=-1)
    w2 = jnp.where(w < aspect_ratio * h, h * aspect_ratio, w)
    h2 = jnp.where(w > aspect_ratio * h, w / aspect_ratio, h)
    return center, jnp.stack([w2, h2], axis=-1) / PIXEL_STD * padding


def crop_boxes(image: jax.Array, center: jax.Array, scale: jax.Array, out_hw: Sequence[int]) -> jax.Array:
    """The top-down crops of one image ``(H, W, C)``: ``(N, out_h, out_w, C)`` float32, bilinear, zero outside
    the image. Crop pixel ``(u, v)`` samples the image at ``center + ((u, v) - (out_w, out_h) / 2) · s`` with
    ``s = scale_w · 200 / out_w`` for both axes: the inverse of the official crop transform (rotation 0) that
    ``cv2.warpAffine`` applies, in floating point instead of OpenCV's 1/32-pixel fixed point. ``H`` and ``W``
    may be symbolic (an exported program takes any image size)."""
    out_h, out_w = int(out_hw[0]), int(out_hw[1])
    h, w, c = image.shape
    img = image.astype(jnp.float32).reshape(-1, c)                       # (H*W, C)
    s = (scale[:, 0] * PIXEL_STD / out_w)[:, None]                        # (N, 1)
    xs = center[:, 0:1] + (jnp.arange(out_w, dtype=jnp.float32)[None] - out_w * 0.5) * s   # (N, out_w)
    ys = center[:, 1:2] + (jnp.arange(out_h, dtype=jnp.float32)[None] - out_h * 0.5) * s   # (N, out_h)
    x0f, y0f = jnp.floor(xs), jnp.floor(ys)
    fx, fy = xs - x0f, ys - y0f
    x0, y0 = x0f.astype(jnp.int32), y0f.astype(jnp.int32)
    wi, hi = jnp.asarray(w, jnp.int32), jnp.asarray(h, jnp.int32)

    def tap(yy, xx):   # (N, out_h, 1), (N, 1, out_w) -> (N, out_h, out_w, C), zero outside
        ok = (yy >= 0) & (yy < hi) & (xx >= 0) & (xx < wi)
        idx = jnp.clip(yy, 0, hi - 1) * wi + jnp.clip(xx, 0, wi - 1)
        return jnp.where(ok[..., None], jnp.take(img, idx, axis=0), 0.0)

    y0e, y1e = y0[:, :, None], y0[:, :, None] + 1
    x0e, x1e = x0[:, None, :], x0[:, None, :] + 1
    wx, wy = fx[:, None, :, None], fy[:, :, None, None]
    top = tap(y0e, x0e) * (1.0 - wx) + tap(y0e, x1e) * wx
    bottom = tap(y1e, x0e) * (1.0 - wx) + tap(y1e, x1e) * wx
    return top * (1.0 - wy) + bottom * wy


def pose_crops(task, image: jax.Array, boxes: jax.Array) -> dict:
    """One image ``(H, W, 3)`` uint8 and its person boxes ``(N, 4)`` → the batch of normalised crops with their
    ``center`` / ``scale`` (the task's input size and box padding)."""
    h_in, w_in = task.input_size
    center, scale = boxes_to_center_scale(boxes[:, :4], w_in / h_in, float(task.t.box_padding))
    crops = crop_boxes(image, center, scale, (h_in, w_in))
    return {"image": normalize(task, crops), "center": center, "scale": scale}


def pose_from_crops(task, apply_fn: Callable, variables, batch: dict) -> jax.Array:
    """Normalised crops + center / scale → ``(N, K, 3)`` keypoints ``[x, y, score]`` in image pixels: the
    task's forward (flip test when ``task.t.flip_test``) and decoding (``task.t.decode``), as evaluation."""
    preds = task.forward(apply_fn, variables, batch, train=False, rngs=None)
    out = task.predict(preds, batch)
    k = out["keypoints"].astype(jnp.float32)
    return jnp.concatenate([k, out["maxvals"].reshape(k.shape[:2] + (1,)).astype(jnp.float32)], axis=-1)


def pose_fn(task, apply_fn: Callable) -> Callable:
    """``fn(variables, image uint8 (H, W, 3), boxes float32 (N, 4) [x, y, w, h]) -> (N, K, 3)``."""
    def fn(variables, image, boxes):
        return pose_from_crops(task, apply_fn, variables, pose_crops(task, image, boxes))
    return fn


MULTIPLE = 32


def segmentation_fn(task, apply_fn: Callable) -> Callable:
    """``fn(variables, images uint8 (B, H, W, 3)) -> labels uint8 (B, H, W)``: padded bottom/right to a
    multiple of 32 for the network (zero pixels, as the predictor), the task's ``scores`` (``eval_mode``,
    ``eval_flip``), argmax, cropped back."""
    def fn(variables, images):
        h, w = images.shape[1:3]
        ph, pw = -h % MULTIPLE, -w % MULTIPLE
        if ph or pw:
            images = jnp.pad(images, ((0, 0), (0, ph), (0, pw), (0, 0)))
        x = task.preprocess({"image": images}, None, train=False)["image"]
        scores = task.scores(apply_fn, variables, x)
        return jnp.argmax(scores, axis=-1).astype(jnp.uint8)[:, :h, :w]
    return fn


def classification_fn(task, apply_fn: Callable, topk: int = 5) -> Callable:
    """``fn(variables, images uint8 (B, S, S, 3)) -> (classes int32 (B, k), probs float32 (B, k))``: the
    task's normalisation, forward, softmax, the ``topk`` most probable classes (descending)."""
    def fn(variables, images):
        batch = task.preprocess({"image": images}, None, train=False)
        logits = task.forward(apply_fn, variables, batch, train=False, rngs=None)
        probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
        k = min(int(topk), probs.shape[-1])
        # a stable sort rather than lax.top_k: top_k lowers to a StableHLO composite that older serving runtimes
        # (TF 2.21's XlaCallModule) cannot read; equal probabilities keep the lower class index first
        top_i = jnp.argsort(-probs, axis=-1, stable=True)[:, :k]
        return top_i.astype(jnp.int32), jnp.take_along_axis(probs, top_i, axis=-1)
    return fn


def task_fn(task, apply_fn: Callable, **kwargs) -> Callable:
    """The inference function of ``task`` (by ``task.name``): :func:`pose_fn`, :func:`segmentation_fn` or
    :func:`classification_fn` (``topk=``)."""
    name = getattr(task, "name", "")
    if name == "pose":
        return pose_fn(task, apply_fn, **kwargs)
    if name == "segmentation":
        return segmentation_fn(task, apply_fn, **kwargs)
    if name == "classification":
        return classification_fn(task, apply_fn, **kwargs)
    raise ValueError(f"no inference function for task {name!r} (pose, segmentation, classification)")
