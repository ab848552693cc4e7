"""Benchmark of the JAX HRNets against timm's eager PyTorch HRNet, in one run, on the same threads.

    python -m hrnet_jax.bench                       # the default set (slow on a small CPU)
    python -m hrnet_jax.bench --quick               # a subset sized for a 2-core CPU
    python -m hrnet_jax.bench --models hrnet_w32,pose_hrnet_w32@384x288 --batch 1,8 --json out.json
    python -m hrnet_jax.bench --pose-pipeline       # also: pose input-pipeline images/s (no model)
    python -m hrnet_jax.bench --device-script       # prints the one command for a GPU machine
                                                    # (bash scripts/bench_gpu.sh: bf16, eager + torch.compile)
    python -m hrnet_jax.bench --deploy ...          # plain jit / inference entry point / exported artifact
    python -m hrnet_jax.bench --detection [flags]   # Faster R-CNN vs torchvision (hrnet_jax.bench_detection)
    python -m hrnet_jax.bench --bottomup [flags]    # HigherHRNet grouping + inference (hrnet_jax.bench_bottomup)

Per model (after ``--warmup`` untimed calls, the median of ``--iters`` timed calls, each synchronised):

* ``infer_b1`` / ``infer_bN``: inference images/s at batch 1 and ``--batch``'s larger size, JAX with BN folded
  into the convs (:mod:`hrnet_jax.models.fold`); ``infer_bN_unfolded``: the plain ``train=False`` model.
* ``train``: training-step images/s (forward, backward, BN running-statistics update, SGD with momentum;
  the same in PyTorch: ``model.train()``, ``optimizer.step()``), at the larger batch.
* ``compile_s``: ``jit(...).lower(...).compile()`` seconds per jitted function.
* ``gflops``: the XLA cost analysis' flops of one call / median time (achieved GFLOP/s).
* ``peak_rss_mb`` (CPU: the process's peak resident memory so far, from ``resource``) or the device's
  ``peak_bytes_in_use``; ``temp_mb``: XLA's temporary buffer size of the compiled call.
* ``torch_*``: the same figures for timm in eager mode, and ``ratio_*`` = JAX images/s / torch images/s.

Every model is measured in two fresh child processes (``--worker``), one per framework, one after the other,
with the same thread count: JAX first, then PyTorch in a process that never imports JAX. In one process the
two runtimes slow each other: on the 2-core CPU, timm's W32 inference at batch 1 drops from 7.0 to 5.5 img/s
once JAX has run one tiny computation, and to 3.3 img/s after a few JAX training steps (idle XLA / OpenMP worker
threads, allocator state); a shared process would flatter JAX's ratios. A JAX process that has already run
other models is slower too (W32 train step 2.04 img/s after W18-small and W18, 2.4-2.8 fresh).

Models are given as ``name[@HxW]``; classification models map to timm's model of the same width, pose and
segmentation models to timm's backbone (``features_only=True, feature_location=''``: the four stage-4 streams)
plus an equivalent head (pose: 1x1 conv on the highest-resolution stream; segmentation: bilinear concat +
1x1 conv-BN-ReLU + 1x1 conv). timm's backbone always fuses every stream in the last module, so the torch pose
model does slightly *more* work than the JAX one (whose last module fuses into the high-resolution stream only).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from types import SimpleNamespace
from typing import Any

DEFAULT_MODELS = ("hrnet_w18_small_v1", "hrnet_w18", "hrnet_w32", "hrnet_w48", "pose_hrnet_w32@256x192",
                  "pose_hrnet_w32@384x288", "seg_hrnet_w48@512x1024")
QUICK_MODELS = ("hrnet_w18_small_v1", "hrnet_w18", "pose_hrnet_w32@256x192")
DEFAULT_SIZES = {"classification": (224, 224), "pose": (256, 192), "segmentation": (512, 1024), "ocr": (512, 1024)}
SEG_HEADS = ("segmentation", "ocr")
TIMM_NAMES = {"w18_small_v1": "hrnet_w18_small", "w18_small_v2": "hrnet_w18_small_v2"}
GPU_COMMAND = "bash scripts/bench_gpu.sh"  # bf16, batch 1/128, train 64; timm eager and torch.compile


# ---------------------------------------------------------------------------------------------------- helpers
def TINY_CONFIG():  # noqa: N802 - a narrow 4-stage network for smoke tests (--tiny)
    from hrnet_jax.models import HRNetConfig, StageConfig
    return HRNetConfig(stem_width=8, stages=(
        StageConfig(1, 1, "BOTTLENECK", (1,), (4,)),
        StageConfig(1, 2, "BASIC", (1, 1), (4, 8)),
        StageConfig(1, 3, "BASIC", (1, 1, 1), (4, 8, 16)),
        StageConfig(1, 4, "BASIC", (1, 1, 1, 1), (4, 8, 16, 32)),
    ))


def _median_time(fn, warmup: int, iters: int) -> float:
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def _peak_rss_mb() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return r / (1024 * 1024) if sys.platform == "darwin" else r / 1024


def _cpu_isa(flags: set[str]) -> str:
    """The vector ISA that decides conv speed on x86 (PyTorch's oneDNN is ~3x faster with AVX-512 BF16)."""
    if "avx512f" in flags:
        return "AVX-512 with BF16" if "avx512_bf16" in flags else "AVX-512"
    return "AVX2" if "avx2" in flags else "no AVX2"


def _cpu_model() -> str:
    """CPU model name and its vector ISA, e.g. ``AMD EPYC (AVX-512 with BF16)``."""
    name, flags = "", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and not name:
                    name = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    name = name or platform.processor() or platform.machine()
    return f"{name} ({_cpu_isa(flags)})" if flags else name


def _loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def parse_model(spec: str) -> tuple[str, tuple[int, int] | None]:
    if "@" in spec:
        name, size = spec.split("@", 1)
        h, w = (int(v) for v in size.lower().split("x"))
        return name, (h, w)
    return spec, None


def host_info() -> dict:
    """The machine as the orchestrating process sees it (no JAX backend started)."""
    return dict(cpu=_cpu_model(), cores=os.cpu_count(), python=platform.python_version(),
                xla_flags=os.environ.get("XLA_FLAGS", ""), glibc_tunables=os.environ.get("GLIBC_TUNABLES", ""),
                load_at_start=_loadavg())


def jax_machine_info() -> dict:
    """The JAX side of the machine: versions, device, compiler options, oneDNN status (starts the backend)."""
    import jax
    import flax
    from hrnet_jax import xla_options
    dev = jax.devices()[0]
    return dict(jax=jax.__version__, flax=flax.__version__, device=f"{dev.platform}:{getattr(dev, 'device_kind', '')}",
                inference_compiler_options=xla_options.inference(), onednn_conv_gradients=_onednn_status())


def torch_machine_info(torch_mod) -> dict:
    info = dict(torch=torch_mod.__version__, torch_threads=torch_mod.get_num_threads())
    try:
        import timm
        info["timm"] = timm.__version__
    except ImportError:
        pass
    return info


def _onednn_status() -> str:
    """Whether the default execution policy (``ExecutionPolicy(onednn=None)``) computes conv gradients with oneDNN
    here, and why not."""
    from hrnet_jax.kernels import onednn
    reason = onednn.default_off_reason()
    return f"on ({onednn.default_threads()} OpenMP thread(s) per conv)" if reason is None else f"off: {reason}"


def _cost_flops(stage) -> float | None:  # a jax Lowered or Compiled
    try:
        ca = stage.cost_analysis()
    except Exception:  # noqa: BLE001 - not every backend implements it
        return None
    if isinstance(ca, (list, tuple)):
        ca = ca[0] if ca else None
    if not ca:
        return None
    f = ca.get("flops")
    return float(f) if f is not None and f > 0 else None


def _temp_mb(compiled) -> float | None:
    try:
        m = compiled.memory_analysis()
        return round(m.temp_size_in_bytes / 2**20, 1)
    except Exception:  # noqa: BLE001
        return None


def _device_peak_mb() -> float | None:
    import jax
    try:
        st = jax.devices()[0].memory_stats() or {}
    except Exception:  # noqa: BLE001
        return None
    v = st.get("peak_bytes_in_use")
    return round(v / 2**20, 1) if v else None


# -------------------------------------------------------------------------------------------------------- JAX
def _random_variables(model, x):
    """Variables with the model's shapes, random kernels, identity-ish BN (no init compile needed)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    shapes = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False), x)
    rng = np.random.default_rng(0)

    def fill(path, s):
        name = str(path[-1].key) if hasattr(path[-1], "key") else str(path[-1])
        if name in ("scale", "var"):
            return jnp.ones(s.shape, s.dtype)
        if name in ("bias", "mean"):
            return jnp.zeros(s.shape, s.dtype)
        fan_in = int(np.prod(s.shape[-4:-1])) if len(s.shape) >= 4 else s.shape[0]
        return jnp.asarray(rng.standard_normal(s.shape, np.float32) * np.sqrt(2.0 / max(fan_in, 1)), s.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def _compile(fn, *args, flops_fn=None):
    """(compiled, lower+compile seconds, flops of one call).

    The flops come from XLA's cost analysis of the lowered (backend-independent) HLO: on GPU the optimised module
    holds cuDNN convolutions as custom calls that the analysis of the compiled module does not count. Where the
    function itself calls custom kernels (the oneDNN convs on CPU, invisible to the analysis), ``flops_fn`` is the
    same computation with XLA's convolutions, lowered only to be counted."""
    t = time.perf_counter()
    lowered = fn.lower(*args)
    compiled = lowered.compile()
    ct = time.perf_counter() - t
    flops = _cost_flops(flops_fn.lower(*args)) if flops_fn is not None else None
    return compiled, ct, flops or _cost_flops(lowered) or _cost_flops(compiled)


def bench_jax(name: str, hw, batches: tuple[int, ...], train_batch: int, args, out: dict | None = None,
              on_update=None) -> dict:
    """The JAX figures; ``args`` has the fields of :data:`JAX_ARGS`. Runs in a ``--worker`` child process."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from hrnet_jax import inference, models
    from hrnet_jax import xla_options
    from hrnet_jax.models.fold import fold_batchnorm

    dtype = jnp.bfloat16 if args.dtype == "bfloat16" else None
    policy = models.ExecutionPolicy(onednn={"auto": None, "on": True, "off": False}[args.onednn])
    kw: dict[str, Any] = dict(scan=not args.no_scan, dtype=dtype, execution=policy)
    if args.scan_unroll != "true":
        kw["scan_unroll"] = int(args.scan_unroll)
    if args.tiny:
        kw["config"] = TINY_CONFIG()
    model = models.create(name, **kw)
    out = {} if out is None else out
    out.update(compile_s={}, gflops={}, temp_mb={})
    on_update = on_update or (lambda: None)
    x1 = jnp.zeros((1, *hw, 3), jnp.float32)
    variables = _random_variables(model, x1)
    rng = np.random.default_rng(1)
    # the folded inference: the inference entry point's preparation (BN folded, Winograd 3x3 convs on CPU)
    apply_fn, fparams = inference.prepare(model, variables, winograd=_winograd_arg(args))
    opts = xla_options.inference()
    infer = jax.jit(lambda v, x: model.apply(v, x, train=False), compiler_options=opts)
    infer_f = jax.jit(lambda v, x: apply_fn(v, x), compiler_options=opts)
    # The oneDNN custom calls are invisible to XLA's cost analysis, and Winograd does fewer multiplications than
    # the network's convolutions: count the network's flops on an XLA-only, direct-convolution copy.
    direct_model = model.clone(onednn=False)
    xla_model = direct_model if model.execution.resolve().onednn else None
    folded_direct, fp_direct = fold_batchnorm(direct_model, variables)
    fp_shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), fp_direct)
    direct = SimpleNamespace(lower=lambda v, x: jax.jit(folded_direct.apply).lower(fp_shapes, x))
    flops_of = {infer: None, infer_f: direct}
    if xla_model is not None:
        flops_of[infer] = jax.jit(lambda v, x: xla_model.apply(v, x, train=False))

    def run_infer(tag, fn, v, b):
        x = jnp.asarray(rng.standard_normal((b, *hw, 3), np.float32))
        compiled, ct, flops = _compile(fn, v, x, flops_fn=flops_of[fn])
        dt = _median_time(lambda: jax.block_until_ready(compiled(v, x)), args.warmup, args.iters)
        out[tag] = b / dt
        out["compile_s"][tag] = round(ct, 2)
        out["gflops"][tag] = round(flops / dt / 1e9, 1) if flops else None
        out["temp_mb"][tag] = _temp_mb(compiled)
        if tag == f"infer_b{max(batches)}":
            out["gflop_per_image"] = round(flops / b / 1e9, 2) if flops else None
        on_update()

    for b in batches:
        run_infer(f"infer_b{b}", infer_f, fparams, b)
    if not args.no_unfolded:
        run_infer(f"infer_b{max(batches)}_unfolded", infer, variables, max(batches))

    if train_batch > 0:
        step = make_jax_train_step(model)
        x = jnp.asarray(rng.standard_normal((train_batch, *hw, 3), np.float32))
        y_shape = jax.tree.map(lambda a: a.shape, jax.eval_shape(lambda v, x: model.apply(v, x, train=False),
                                                                   variables, x))
        target = _jax_target(model.head, y_shape, rng, hw)
        state = (variables["params"], variables["batch_stats"],
                 jax.tree_util.tree_map(jnp.zeros_like, variables["params"]))
        compiled, ct, flops = _compile(step, state, x, target,
                                       flops_fn=make_jax_train_step(xla_model) if xla_model is not None else None)
        holder = [state]

        def one():
            holder[0], loss = compiled(holder[0], x, target)
            jax.block_until_ready(loss)

        dt = _median_time(one, args.warmup, args.iters)
        out["train"] = train_batch / dt
        out["compile_s"]["train"] = round(ct, 2)
        out["gflops"]["train"] = round(flops / dt / 1e9, 1) if flops else None
        out["temp_mb"]["train"] = _temp_mb(compiled)
    dp = _device_peak_mb()
    out["peak_mb"] = dp if dp is not None else round(_peak_rss_mb(), 1)
    out["peak_kind"] = "device" if dp is not None else "host_rss"
    on_update()
    return out


DEPLOY_PATHS = ("plain", "entry", "artifact")


def _winograd_arg(args):
    """``--winograd``: auto (the entry point's default), off (0) or a minimum channel count."""
    w = getattr(args, "winograd", "auto")
    return None if w == "auto" else (0 if w == "off" else int(w))


def bench_deploy(path: str, name: str, hw, batches: tuple[int, ...], args, out: dict | None = None,
                 on_update=None) -> dict:
    """Inference images/s of one deployment path, in its own fresh process (``--deploy``):

    * ``plain``: what a user writes, ``jax.jit(model.apply)`` on ``models.create(name)`` (``train=False``);
    * ``entry``: the inference entry point, ``hrnet_jax.inference.compile(model, variables)``;
    * ``artifact``: the model exported with ``hrnet_jax.export`` machinery (``jax.export``, symbolic batch,
      weights inside), serialized, deserialized and run as ``hrnet_jax.export.load`` runs it.
    """
    import jax
    import jax.numpy as jnp
    import numpy as np
    from hrnet_jax import inference, models

    kw: dict[str, Any] = {"dtype": jnp.bfloat16} if args.dtype == "bfloat16" else {}
    if args.tiny:
        kw["config"] = TINY_CONFIG()
    model = models.create(name, **kw)
    out = {} if out is None else out
    out.update(path=path, compile_s={})
    on_update = on_update or (lambda: None)
    variables = _random_variables(model, jnp.zeros((1, *hw, 3), jnp.float32))
    rng = np.random.default_rng(1)
    if path == "plain":
        fn = jax.jit(lambda v, x: model.apply(v, x, train=False))
        call = lambda compiled, x: compiled(variables, x)  # noqa: E731
        lower = lambda x: fn.lower(variables, x)  # noqa: E731
    elif path == "entry":
        run = inference.compile(model, variables, winograd=_winograd_arg(args))
        call = lambda compiled, x: compiled(run.variables, x)  # noqa: E731
        lower = run.lower
    elif path == "artifact":
        from jax import export as jex
        from hrnet_jax import xla_options
        apply_fn, iv = inference.prepare(model, variables, winograd=_winograd_arg(args),
                                         platforms=("cpu", "cuda", "tpu"))
        iv = jax.tree.map(np.asarray, iv)
        b_sym, = jex.symbolic_shape("b")
        t = time.perf_counter()
        exp = jex.export(jax.jit(lambda x: apply_fn(iv, x, train=False)), platforms=("cpu", "cuda", "tpu"))(
            jax.ShapeDtypeStruct((b_sym, *hw, 3), jnp.float32))
        blob = exp.serialize()
        out["export_s"] = round(time.perf_counter() - t, 2)
        out["artifact_mb"] = round(len(blob) / 2**20, 1)
        loaded = jex.deserialize(blob)
        fn = jax.jit(loaded.call, compiler_options=xla_options.inference() or None)
        call = lambda compiled, x: compiled(x)  # noqa: E731
        lower = fn.lower
    else:
        raise ValueError(f"unknown deploy path {path!r}; valid: {DEPLOY_PATHS}")
    for b in batches:
        x = jnp.asarray(rng.standard_normal((b, *hw, 3), np.float32))
        t = time.perf_counter()
        compiled = lower(x).compile()
        out["compile_s"][f"infer_b{b}"] = round(time.perf_counter() - t, 2)
        out[f"infer_b{b}"] = b / _median_time(lambda: jax.block_until_ready(call(compiled, x)), args.warmup,
                                              args.iters)
        out[f"load_b{b}"] = _loadavg()
        on_update()
    return out


def _jax_target(head, shape, rng, hw=None):
    """Random targets: class labels, per-pixel labels at the input size (segmentation: the recipe's loss is
    taken at label resolution), or heatmaps."""
    import jax.numpy as jnp
    if head in SEG_HEADS:
        shape = shape[-1] if isinstance(shape, tuple) and isinstance(shape[0], tuple) else shape
        return jnp.asarray(rng.integers(0, shape[-1], (shape[0], *hw)), jnp.int32)
    if head == "classification":
        return jnp.asarray(rng.integers(0, shape[-1], shape[0]), jnp.int32)
    return jnp.asarray(rng.random(shape, dtype="float32"))


def make_jax_train_step(model, lr: float = 0.01, momentum: float = 0.9):
    """A jitted SGD-with-momentum step (PyTorch's SGD update rule) incl. the BN running-statistics update."""
    import jax
    import jax.numpy as jnp
    import optax

    def loss_fn(params, stats, x, target):
        y, upd = model.apply({"params": params, "batch_stats": stats}, x, train=True, mutable=["batch_stats"],
                             rngs={"dropout": jax.random.PRNGKey(0)})
        if model.head in SEG_HEADS:   # the segmentation task's loss: logits upsampled to the labels; OCR 0.4 aux
            from hrnet_jax.tasks.segmentation.loss import segmentation_loss
            loss, _ = segmentation_loss(y, target, align_corners=model.align_corners,
                                        output_weights=(0.4, 1.0) if model.head == "ocr" else (1.0,))
        elif model.head == "classification":
            loss = optax.softmax_cross_entropy_with_integer_labels(y.astype(jnp.float32), target).mean()
        else:
            loss = jnp.mean(jnp.square(y.astype(jnp.float32) - target))
        return loss, upd["batch_stats"]

    def step(state, x, target):
        params, stats, mom = state
        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, stats, x, target)
        mom = jax.tree_util.tree_map(lambda m, g: momentum * m + g, mom, grads)
        params = jax.tree_util.tree_map(lambda p, m: p - lr * m, params, mom)
        return (params, stats, mom), loss

    return jax.jit(step, donate_argnums=(0,))


# ------------------------------------------------------------------------------------------------------ torch
def timm_name(width: str) -> str:
    return TIMM_NAMES.get(width, f"hrnet_{width}")


def build_torch_model(head: str, tname: str, num_outputs: int):
    """timm's model (classification) or timm's backbone plus the task head; (module, description)."""
    import timm
    import torch
    if head == "classification":
        return timm.create_model(tname, pretrained=False, num_classes=num_outputs), tname
    body = timm.create_model(tname, pretrained=False, features_only=True, feature_location="")
    chans = body.feature_info.channels()[1:]  # [stem, s0, s1, s2, s3] -> the four streams
    nn = torch.nn
    F = torch.nn.functional

    class PoseNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.final_layer = body, nn.Conv2d(chans[0], num_outputs, 1)

        def forward(self, x):
            return self.final_layer(self.body(x)[1])

    class SegNet(nn.Module):
        def __init__(self):
            super().__init__()
            c = sum(chans)
            self.body = body
            self.last_layer = nn.Sequential(nn.Conv2d(c, c, 1), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                                            nn.Conv2d(c, num_outputs, 1))

        def forward(self, x):
            xs = self.body(x)[1:]
            size = xs[0].shape[2:]
            xs = [xs[0]] + [F.interpolate(t, size=size, mode="bilinear", align_corners=False) for t in xs[1:]]
            return self.last_layer(torch.cat(xs, 1))

    def cbr(cin, cout, k=1, bias=False):
        return [nn.Conv2d(cin, cout, k, padding=k // 2, bias=bias), nn.BatchNorm2d(cout), nn.ReLU()]

    class OCRNet(SegNet):
        """HRNetV2 + OCR as the reference's seg_hrnet_ocr.py (mid 512, key 256; align_corners True)."""

        def __init__(self, mid=512, key=256):
            super().__init__()
            c, k = sum(chans), num_outputs
            self.key = key
            self.aux_head = self.last_layer
            self.conv3x3_ocr = nn.Sequential(*cbr(c, mid, 3, bias=True))
            self.f_pixel = nn.Sequential(*cbr(mid, key), *cbr(key, key))
            self.f_object = nn.Sequential(*cbr(mid, key), *cbr(key, key))
            self.f_down = nn.Sequential(*cbr(mid, key))
            self.f_up = nn.Sequential(*cbr(key, mid))
            self.conv_bn_dropout = nn.Sequential(*cbr(2 * mid, mid), nn.Dropout2d(0.05))
            self.cls_head = nn.Conv2d(mid, k, 1)

        def forward(self, x):
            xs = self.body(x)[1:]
            size = xs[0].shape[2:]
            xs = [xs[0]] + [F.interpolate(t, size=size, mode="bilinear", align_corners=True) for t in xs[1:]]
            feats = torch.cat(xs, 1)
            aux = self.aux_head(feats)
            pix = self.conv3x3_ocr(feats)
            b, _, h, w = pix.shape
            ctx = torch.matmul(aux.flatten(2).softmax(-1), pix.flatten(2).transpose(1, 2))  # B, K, mid
            ctx = ctx.permute(0, 2, 1).unsqueeze(3)
            q = self.f_pixel(pix).flatten(2).transpose(1, 2)
            sim = (torch.matmul(q, self.f_object(ctx).flatten(2)) * self.key ** -0.5).softmax(-1)
            o = torch.matmul(sim, self.f_down(ctx).flatten(2).transpose(1, 2)).transpose(1, 2)
            o = self.f_up(o.reshape(b, self.key, h, w))
            return aux, self.cls_head(self.conv_bn_dropout(torch.cat([o, pix], 1)))

    if head == "pose":
        return PoseNet(), f"{tname}(features_only)+1x1 conv"
    if head == "segmentation":
        return SegNet(), f"{tname}(features_only)+concat/1x1-BN-ReLU-1x1"
    if head == "ocr":
        return OCRNet(), f"{tname}(features_only)+OCR head"
    raise ValueError(f"no torch counterpart for head {head!r}")


def bench_torch(head: str, tname: str, hw, batches, train_batch: int, num_outputs: int, args, compiled: bool = False,
                out: dict | None = None, on_update=None) -> dict:
    """The PyTorch figures; ``args`` has ``warmup``, ``iters``, ``dtype``, ``torch_device``, ``torch_channels_last``.
    Runs in a ``--worker`` child process (see the module docstring)."""
    import torch
    torch.manual_seed(0)
    dev = torch.device("cuda" if torch.cuda.is_available() and args.torch_device != "cpu" else "cpu")
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True  # what a PyTorch user sets for fixed-size inputs
    model, desc = build_torch_model(head, tname, num_outputs)
    model = model.to(dev)
    dtype = torch.bfloat16 if args.dtype == "bfloat16" else None
    channels_last = args.torch_channels_last == "on" or (args.torch_channels_last == "auto" and dev.type == "cuda")
    mf = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=mf)
    out = {} if out is None else out
    out.update(model=desc + (" torch.compile" if compiled else ""), device=str(dev), channels_last=channels_last)
    on_update = on_update or (lambda: None)
    sync = (lambda: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda: None)
    fwd = torch.compile(model, dynamic=False) if compiled else model
    extra_warmup = 2 if compiled else 0

    def autocast():
        return torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None)

    model.eval()
    for b in batches:
        x = torch.randn(b, 3, *hw, device=dev).to(memory_format=mf)

        def one():
            with torch.inference_mode(), autocast():
                fwd(x)
            sync()
        out[f"infer_b{b}"] = b / _median_time(one, args.warmup + extra_warmup, args.iters)
        on_update()
    if train_batch > 0:
        x = torch.randn(train_batch, 3, *hw, device=dev).to(memory_format=mf)
        with torch.no_grad():
            y1 = model(x[:1])  # still in eval mode
        yshape = (y1[-1] if isinstance(y1, tuple) else y1).shape
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        if head == "classification":
            target = torch.randint(0, yshape[1], (train_batch,), device=dev)
            lossf = torch.nn.functional.cross_entropy
        elif head in SEG_HEADS:   # logits upsampled to the labels (input size); OCR 0.4 aux + main
            target = torch.randint(0, yshape[1], (train_batch, *hw), device=dev)
            ac = head == "ocr"

            def lossf(y, t):
                ys, ws = (y, (0.4, 1.0)) if isinstance(y, tuple) else ((y,), (1.0,))
                return sum(w * torch.nn.functional.cross_entropy(
                    torch.nn.functional.interpolate(o.float(), size=tuple(hw), mode="bilinear", align_corners=ac), t)
                    for w, o in zip(ws, ys))
        else:
            target = torch.rand(train_batch, *yshape[1:], device=dev)
            lossf = torch.nn.functional.mse_loss

        def step():
            opt.zero_grad(set_to_none=True)
            with autocast():
                y = fwd(x)
                loss = lossf(y if isinstance(y, tuple) else y.float(), target)
            loss.backward()
            opt.step()
            sync()
        out["train"] = train_batch / _median_time(step, args.warmup + extra_warmup, args.iters)
    if dev.type == "cuda":
        out["peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        del model, fwd
        torch.cuda.empty_cache()  # hand the cached blocks back before the next model's JAX run
        torch.cuda.reset_peak_memory_stats()
    return out


JAX_ARGS = ("warmup", "iters", "dtype", "no_scan", "scan_unroll", "onednn", "tiny", "no_unfolded", "winograd")
TORCH_ARGS = ("warmup", "iters", "dtype", "torch_device", "torch_channels_last")


def worker(job: dict) -> None:
    """``--worker JOB``: one framework's measurements of one model in this fresh process (the torch worker never
    imports JAX); ``{"machine", "figures"}`` go to ``job["out"]`` as JSON, rewritten after every measurement so
    that a killed run keeps them."""
    res: dict[str, Any] = {"machine": {}, "figures": {}}

    def write():
        with open(job["out"] + ".tmp", "w") as f:
            json.dump(res, f)
        os.replace(job["out"] + ".tmp", job["out"])

    args = SimpleNamespace(**job["args"])
    hw, batches = tuple(job["hw"]), tuple(job["batches"])
    if job["framework"] == "jax":
        import jax
        jax.config.update("jax_enable_compilation_cache", False)  # compile times are cold compiles
        res["machine"] = jax_machine_info()
        bench_jax(job["name"], hw, batches, job["train_batch"], args, out=res["figures"], on_update=write)
    elif job["framework"].startswith("deploy:"):
        import jax
        jax.config.update("jax_enable_compilation_cache", False)
        res["machine"] = jax_machine_info()
        bench_deploy(job["framework"].split(":", 1)[1], job["name"], hw, batches, args, out=res["figures"],
                     on_update=write)
    else:
        import torch
        torch.set_num_threads(job["threads"])
        res["machine"] = torch_machine_info(torch)
        bench_torch(job["head"], job["timm_name"], hw, batches, job["train_batch"], job["num_outputs"], args,
                    compiled=job["compiled"], out=res["figures"], on_update=write)
        res["machine"]["jax_in_torch_process"] = "jax" in sys.modules  # must stay False
    write()


def run_worker(framework: str, name: str, spec: dict, hw, batches, train_batch: int, args, threads: int, store,
               compiled: bool = False) -> None:
    """Runs :func:`worker` in a child process and calls ``store`` with its ``{"machine", "figures"}``: also with
    the partial figures when the child fails (``figures["error"]`` says how) or when this process is being
    stopped (SIGTERM -> SystemExit, see ``__main__``), before the stop goes on."""
    with tempfile.TemporaryDirectory(prefix="hrnet_bench_") as d:
        keys = JAX_ARGS if framework == "jax" or framework.startswith("deploy:") else TORCH_ARGS
        job = dict(framework=framework, name=name, head=spec["head"], timm_name=timm_name(spec["width"]),
                   num_outputs=spec["num_outputs"], hw=list(hw), batches=list(batches), train_batch=train_batch,
                   compiled=compiled, threads=threads, args={k: getattr(args, k) for k in keys},
                   out=os.path.join(d, "figures.json"))
        cmd = [sys.executable, "-m", "hrnet_jax.bench", "--worker", json.dumps(job)]
        err = "stopped"
        try:
            rc = subprocess.run(cmd, stdout=sys.stderr).returncode
            err = f"{framework} worker exited with {rc}" if rc else None
        finally:
            res = {"machine": {}, "figures": {}}
            if os.path.exists(job["out"]):
                with open(job["out"]) as f:
                    res = json.load(f)
            if err:
                res["figures"]["error"] = err
            store(res)


# ------------------------------------------------------------------------------------------------ pipeline
def bench_pose_pipeline(batch_size: int, num_batches: int, root: str | None = None, hw=(256, 192)) -> dict:
    """Pose input pipeline images/s (decode, crop, augment, targets; no model) with 1 and all reader threads,
    each with the process's peak RSS after it (the read-ahead is bounded to a few batches)."""
    import resource

    from hrnet_jax.data import pipeline as dp
    from hrnet_jax.data.keypoints import COCO17
    from hrnet_jax.data.sources.coco_keypoints import CocoKeypointSource
    from hrnet_jax.data.synthetic.pose import ensure_synthetic_pose_dataset
    from hrnet_jax.tasks.pose.pipeline import AugmentConfig, measure_throughput, train_dataset
    root = root or os.path.join(tempfile.gettempdir(), "hrnet_bench_synthetic_pose")
    paths = ensure_synthetic_pose_dataset(root, COCO17, num_train=64, num_val=8)
    src = CocoKeypointSource(paths["train_ann"], paths["train_images"], COCO17, hw)
    res = {}
    n = os.cpu_count() or 1
    for name, threads in (("single_thread", 0), (f"{n}_threads", n)):
        if name in res:
            continue
        read = dp.ReadConfig(num_threads=threads, prefetch_batches=2 * max(threads, 1))
        ds = train_dataset(src, COCO17, hw, (hw[0] // 4, hw[1] // 4), 2.0, AugmentConfig(), batch_size, seed=0,
                           read=read)
        res[name] = measure_throughput(ds, num_batches=num_batches)
        res[name]["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return res


def bench_seg_pipeline(batch_size: int, num_batches: int, root: str | None = None, hw=(1024, 2048),
                       workers=(0, 1, 2)) -> dict:
    """Segmentation input pipeline images/s of ``seg_w48_cityscapes``'s training examples (PNG decode of
    1024x2048 Cityscapes-format sources, label mapping, random scale 0.5-2.1, pad, 512x1024 crop, flip; no
    model): in the reading process with 1 and all reader threads, then with N grain worker processes."""
    from experiments import get_experiment
    from hrnet_jax.data.synthetic.segmentation import ensure_synthetic_seg_dataset
    from hrnet_jax.tasks.segmentation.task import SegmentationTask
    root = root or os.path.join(tempfile.gettempdir(), "hrnet_bench_synthetic_seg")
    ensure_synthetic_seg_dataset(root, num_train=24, num_val=2, image_size_hw=tuple(hw), seed=0)
    n = os.cpu_count() or 1
    res = {}
    configs = [("1_thread", 1, 0), (f"{n}_threads", n, 0)] + [(f"{w}_workers", 1, w) for w in workers if w > 0]
    for name, threads, wk in configs:
        cfg = get_experiment("seg_w48_cityscapes", {"task.data_root": root, "batch_size": batch_size,
                                                    "task.read_threads": threads, "task.read_workers": wk,
                                                    "task.read_prefetch_batches": 2})
        res[name] = {**_time_pipeline(SegmentationTask(cfg), batch_size, num_batches), "threads": threads,
                     "workers": wk}
    return res


def _time_pipeline(task, batch_size: int, num_batches: int) -> dict:
    """Images/s of a task's training pipeline (first batch, with worker start-up, not timed) and peak RSS."""
    import resource
    import time
    it = iter(task.train_dataset(0, 1))
    next(it)
    t0 = time.perf_counter()
    for _ in range(num_batches):
        next(it)
    dt = time.perf_counter() - t0
    return {"img_per_s": round(batch_size * num_batches / dt, 2),
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}


def bench_cls_pipeline(batch_size: int, num_batches: int, root: str | None = None, size: int = 224,
                       workers=None) -> dict:
    """ImageNet classification input pipeline images/s per host (TFDS ArrayRecord read + JPEG decode +
    RandomResizedCrop(224) + flip; no model) of ``cls_w32_in1k``'s training examples on ImageNet-sized JPEGs
    (333-500 px a side, the cls_demo generator): in the reading process with 1 and all reader threads, then with
    1, 2, ..., N grain worker processes; ``draft_off`` rows decode every JPEG at full size."""
    from experiments import get_experiment
    from hrnet_jax.data.synthetic.classification import ensure_cls_demo
    from hrnet_jax.tasks.classification.task import ClassificationTask
    root = root or os.path.join(tempfile.gettempdir(), "hrnet_bench_cls_imagenet_like")
    ensure_cls_demo(root, quiet=True, num_train=256, num_val=8, min_side=333, max_side=500, seed=0)
    n = os.cpu_count() or 1
    workers = workers or sorted({1, 2, n})
    configs = [("1_thread", 1, 0, True), ("1_thread_draft_off", 1, 0, False), (f"{n}_threads", n, 0, True)]
    configs += [(f"{w}_workers", 1, w, True) for w in workers]
    res = {}
    for name, threads, wk, draft in configs:
        cfg = get_experiment("cls_w32_in1k", {"task.data_dir": root, "task.tfds_name": "cls_demo",
                                              "task.num_classes": 10, "batch_size": batch_size,
                                              "task.image_size": size, "task.read_threads": threads,
                                              "task.read_workers": wk, "task.read_prefetch_batches": 2,
                                              "task.decode_draft": draft})
        res[name] = {**_time_pipeline(ClassificationTask(cfg), batch_size, num_batches), "threads": threads,
                     "workers": wk, "draft": draft, "load": _loadavg()}
    return res


# --------------------------------------------------------------------------------------------------- output
def _fmt(v, nd=1):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}f}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = [f"Machine: {m['cpu']}, {m['cores']} cores, device {m.get('device', '?')}; python {m['python']}, "
             f"jax {m.get('jax', '?')}, flax {m.get('flax', '?')}"
             + (f", torch {m['torch']} ({m['torch_threads']} threads), timm {m.get('timm', '?')}"
                if "torch" in m else ", torch not measured")
             + (f"; {results['config']['isolation']}" if "isolation" in results["config"] else "")
             + f"; XLA_FLAGS='{m['xla_flags']}'; GLIBC_TUNABLES='{m.get('glibc_tunables', '')}'; inference compiler_options {m.get('inference_compiler_options')}; Winograd 3x3 convs (folded inference) {results['config'].get('winograd', 'off')}; oneDNN conv gradients {results['config'].get('onednn', 'auto')}: {m.get('onednn_conv_gradients', '-')}; dtype {results['config']['dtype']}; threads {results['config'].get('threads')}; load {m['load_at_start']}", ""]
    bs = results["config"]["batches"]
    small, big = min(bs), max(bs)
    tb = results["config"]["train_batch"]
    hdr = (f"| model | input | jax b{small} img/s | torch b{small} | ratio | jax b{big} img/s | torch b{big} | ratio "
           f"| jax b{big} unfolded | jax train b{tb} img/s | torch train | ratio | compile infer/train s "
           f"| GFLOP/img | GFLOP/s infer/train | peak MB | load |")
    lines += [hdr, "|" + "---|" * (hdr.count("|") - 1)]
    for r in results["models"]:
        j, t = r.get("jax", {}), r.get("torch", {})
        ra = ratios(j, t)
        cs = j.get("compile_s", {})
        gf = j.get("gflops", {})
        lines.append("| " + " | ".join([
            r["name"], "x".join(map(str, r["input_hw"])),
            _fmt(j.get(f"infer_b{small}")), _fmt(t.get(f"infer_b{small}")), _fmt(ra.get(f"infer_b{small}"), 2),
            _fmt(j.get(f"infer_b{big}")), _fmt(t.get(f"infer_b{big}")), _fmt(ra.get(f"infer_b{big}"), 2),
            _fmt(j.get(f"infer_b{big}_unfolded")),
            _fmt(j.get("train")), _fmt(t.get("train")), _fmt(ra.get("train"), 2),
            f"{_fmt(cs.get(f'infer_b{big}'))}/{_fmt(cs.get('train'))}",
            _fmt(j.get("gflop_per_image"), 2),
            f"{_fmt(gf.get(f'infer_b{big}'))}/{_fmt(gf.get('train'))}",
            _fmt(j.get("peak_mb"), 0), _fmt(r.get("load"), 2)]) + " |")
    compiled = [r for r in results["models"] if r.get("torch_compile")]
    if compiled:
        hdr = (f"| model | input | torch.compile b{small} img/s | jax/compiled | torch.compile b{big} | jax/compiled "
               f"| torch.compile train b{tb} | jax/compiled |")
        lines += ["", hdr, "|" + "---|" * (hdr.count("|") - 1)]
        for r in compiled:
            t = r["torch_compile"]
            ra = ratios(r.get("jax", {}), t)
            lines.append("| " + " | ".join([
                r["name"], "x".join(map(str, r["input_hw"])),
                _fmt(t.get(f"infer_b{small}")), _fmt(ra.get(f"infer_b{small}"), 2),
                _fmt(t.get(f"infer_b{big}")), _fmt(ra.get(f"infer_b{big}"), 2),
                _fmt(t.get("train")), _fmt(ra.get("train"), 2)]) + " |")
    if results.get("pose_pipeline"):
        lines += ["", "Pose input pipeline (synthetic COCO-17, decode+augment+targets, no model): " + ", ".join(
            f"{k}: {v['images_per_s']:.1f} img/s (batch {int(v['batch_size'])}, peak RSS "
            f"{v.get('peak_rss_mib', float('nan')):.0f} MiB)"
            for k, v in results["pose_pipeline"].items())]
    if results.get("seg_pipeline"):
        lines += ["", "Segmentation input pipeline (seg_w48_cityscapes examples: 1024x2048 PNG decode, label "
                  "mapping, scale 0.5-2.1, pad, 512x1024 crop, flip; no model): " + ", ".join(
                      f"{k}: {v['img_per_s']:.1f} img/s" for k, v in results["seg_pipeline"].items())]
    if results.get("cls_pipeline"):
        lines += ["", "ImageNet classification input pipeline (TFDS ArrayRecord, JPEG 333-500 px decode, "
                  "RandomResizedCrop 224, flip; no model): " + ", ".join(
                      f"{k}: {v['img_per_s']:.1f} img/s" for k, v in results["cls_pipeline"].items())]
    return "\n".join(lines)


def _cpu_vector_flags() -> str:
    """The CPU family / model numbers and its vector-ISA flags from /proc/cpuinfo (``fam 25 model 17: avx2
    avx512f ...``)."""
    info: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                k, _, v = line.partition(":")
                k = k.strip()
                if k in ("cpu family", "model", "flags") and k not in info:
                    info[k] = v.strip()
    except OSError:
        return ""
    keep = [x for x in info.get("flags", "").split() if x.startswith(("avx", "fma", "amx", "f16c"))]
    return f"family {info.get('cpu family', '?')} model {info.get('model', '?')}: {' '.join(keep)}"


def deploy_markdown(results: dict) -> str:
    """The ``--deploy`` table: images/s of each inference path and its ratio to timm eager and torch.compile."""
    m = results["machine"]
    lines = [f"Machine: {m['cpu']} [{m.get('cpu_flags', '')}], {m['cores']} cores; python {m['python']}, "
             f"jax {m.get('jax', '?')}, "
             f"torch {m.get('torch', '?')} ({m.get('torch_threads', '?')} threads), timm {m.get('timm', '?')}; "
             f"GLIBC_TUNABLES='{m.get('glibc_tunables', '')}'; dtype {results['config']['dtype']}; "
             f"Winograd 3x3 convs (entry, artifact): {results['config'].get('winograd', 'off')}; each path in a "
             f"fresh process; load at start {m['load_at_start']}", ""]
    bs = results["config"]["batches"]
    hdr = ("| model | input | path | " + " | ".join(f"b{b} img/s | /eager | /compile" for b in bs)
           + " | compile s (b" + str(max(bs)) + ") | load |")
    lines += [hdr, "|" + "---|" * (hdr.count("|") - 1)]
    for r in results["models"]:
        eager, comp = r.get("torch", {}), r.get("torch_compile", {})
        rows = [(d, r.get(f"deploy:{d}", {})) for d in DEPLOY_PATHS] + [("timm eager", eager),
                                                                           ("torch.compile", comp)]
        for label, f in rows:
            cells = []
            for b in bs:
                v, e, c = f.get(f"infer_b{b}"), eager.get(f"infer_b{b}"), comp.get(f"infer_b{b}")
                cells += [_fmt(v), _fmt(v / e, 2) if v and e else "-", _fmt(v / c, 2) if v and c else "-"]
            loads = [f.get(f"load_b{b}") for b in bs if f.get(f"load_b{b}") is not None]
            lines.append("| " + " | ".join([r["name"], "x".join(map(str, r["input_hw"])), label] + cells + [
                _fmt((f.get("compile_s") or {}).get(f"infer_b{max(bs)}")),
                "/".join(_fmt(x, 1) for x in loads) or _fmt(r.get("load"), 2)]) + " |")
    return "\n".join(lines)


def ratios(jax_res: dict, torch_res: dict) -> dict:
    """JAX images/s divided by torch images/s for every throughput both measured."""
    out = {}
    for k, v in jax_res.items():
        if (k.startswith("infer_b") or k == "train") and not k.endswith("_unfolded") \
                and isinstance(v, (int, float)) and isinstance(torch_res.get(k), (int, float)) and torch_res[k] > 0:
            out[k] = round(v / torch_res[k], 3)
    return out


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--detection" in argv:  # detector vs torchvision FasterRCNN: hrnet_jax.bench_detection's own flags follow
        from hrnet_jax import bench_detection
        return bench_detection.main([a for a in argv if a != "--detection"])
    if "--bottomup" in argv:  # HigherHRNet grouping and whole inference: hrnet_jax.bench_bottomup's flags follow
        from hrnet_jax import bench_bottomup
        return bench_bottomup.main([a for a in argv if a != "--bottomup"])
    p = argparse.ArgumentParser(prog="python -m hrnet_jax.bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=None, help="comma list of name[@HxW] (default: the issue's set; 'none': no model)")
    p.add_argument("--quick", action="store_true", help=f"the 2-core-CPU subset {QUICK_MODELS}, batch 1,4")
    p.add_argument("--batch", default="1,8", help="inference batch sizes (comma list; default 1,8)")
    p.add_argument("--train-batch", type=int, default=None, help="training batch (default: largest --batch; 0 = skip)")
    p.add_argument("--size", default=None, help="HxW for every model without an @HxW")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--no-scan", action="store_true", help="unrolled Python loops instead of nn.scan")
    p.add_argument("--scan-unroll", default="true", help="'true' (full unroll) or k (rolled loop of k units)")
    p.add_argument("--onednn", default="auto", choices=["auto", "on", "off"],
                   help="conv gradients through oneDNN (execution.ExecutionPolicy): auto = on for one CPU device")
    p.add_argument("--no-unfolded", action="store_true", help="skip the BN-unfolded inference measurement")
    p.add_argument("--no-torch", action="store_true", help="JAX only")
    p.add_argument("--tiny", action="store_true",
                   help="smoke test: a narrow JAX config (figures not comparable with torch's full model)")
    p.add_argument("--torch-compile", action="store_true",
                   help="also measure torch.compile(model) (after eager, same process); ratios_compile = jax/compiled")
    p.add_argument("--no-torch-eager", action="store_true", help="with --torch-compile: skip the eager measurement")
    p.add_argument("--torch-channels-last", default="auto", choices=["auto", "on", "off"],
                   help="PyTorch channels_last memory format (auto: on for CUDA, where cuDNN wants NHWC)")
    p.add_argument("--torch-device", default="auto", choices=["auto", "cpu"])
    p.add_argument("--threads", type=int, default=0,
                   help="threads for both sides (default: all cores; 1 also makes XLA single-threaded). On a "
                        "CPU shared with other work, 2-thread PyTorch eager collapses (OpenMP barriers)")
    p.add_argument("--xla-onednn", default="keep", choices=["on", "off", "keep"],
                   help="XLA CPU convolutions through oneDNN (--xla_cpu_use_onednn; no measurable gain at low load on "
                        "the 2-core EPYC: W32 b4 116 GFLOP/s either way); keep (default) leaves XLA_FLAGS alone")
    p.add_argument("--winograd", default="auto",
                   help="Winograd 3x3 convs in the folded inference, the entry point and the artifact: auto (the "
                        "default of hrnet_jax.inference.prepare), off, or a minimum channel count")
    p.add_argument("--deploy", action="store_true",
                   help="inference paths instead of the default rows, each in a fresh process: a user's plain "
                        "jax.jit(model.apply), the inference entry point (hrnet_jax.inference.compile) and the "
                        "exported artifact (jax.export), against timm eager and torch.compile (no training)")
    p.add_argument("--pose-pipeline", action="store_true", help="also measure the pose input pipeline")
    p.add_argument("--seg-pipeline", action="store_true", help="also measure the segmentation input pipeline "
                   "(seg_w48_cityscapes examples from 1024x2048 sources)")
    p.add_argument("--cls-pipeline", action="store_true", help="also measure the ImageNet classification input "
                   "pipeline (TFDS ArrayRecord + JPEG decode + RandomResizedCrop 224; threads and worker processes)")
    p.add_argument("--pipeline-batches", type=int, default=10)
    p.add_argument("--json", default=None, metavar="OUT")
    p.add_argument("--device-script", action="store_true", help="print the GPU command and exit")
    p.add_argument("--worker", metavar="JOB", help=argparse.SUPPRESS)  # internal: see worker()
    p.add_argument("--report", nargs="+", metavar="JSON", help="print the markdown tables of saved --json files "
                   "(also partial ones, from a run stopped by a time limit) and exit")
    args = p.parse_args(argv)
    if args.worker:
        worker(json.loads(args.worker))
        return {}
    if args.report:
        for path in args.report:
            with open(path) as f:
                saved = json.load(f)
            print((deploy_markdown(saved) if saved.get("config", {}).get("deploy") else markdown(saved)) + "\n")
        return {}
    threads = args.threads or os.cpu_count() or 1
    if args.threads == 1:  # XLA reads XLA_FLAGS when its backend starts (the first computation)
        extra = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + extra).strip()
    if args.xla_onednn != "keep" and "xla_cpu_use_onednn" not in os.environ.get("XLA_FLAGS", ""):
        flag = f"--xla_cpu_use_onednn={'true' if args.xla_onednn == 'on' else 'false'}"
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + flag).strip()
    if args.device_script:
        print(GPU_COMMAND)
        return {}
    batches = tuple(int(b) for b in args.batch.split(","))
    specs = args.models.split(",") if args.models else (QUICK_MODELS if args.quick else DEFAULT_MODELS)
    if args.models == "none":  # e.g. --models none --pose-pipeline
        specs = []
    if args.quick and args.batch == "1,8":
        batches = (1, 4)
    train_batch = max(batches) if args.train_batch is None else args.train_batch

    with_torch = not args.no_torch
    if with_torch and not all(importlib.util.find_spec(m) for m in ("torch", "timm")):
        print("# torch/timm not installed; JAX only", file=sys.stderr)
        with_torch = False
    from hrnet_jax.models.registry import MODEL_SPECS, resolve_name
    results: dict[str, Any] = {"machine": host_info(), "models": [],
                               "config": dict(batches=list(batches), train_batch=train_batch, warmup=args.warmup,
                                              iters=args.iters, dtype=args.dtype, scan=not args.no_scan,
                                              scan_unroll=args.scan_unroll, torch_compile=args.torch_compile,
                                              tiny=args.tiny, threads=threads, onednn=args.onednn,
                                              isolation="each model in a fresh JAX process, then a fresh PyTorch "
                                                        "one")}

    def save():  # keep partial results of long runs (a timeout during torch.compile keeps what was measured)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=1)

    for s in specs:
        name, hw = parse_model(s.strip())
        spec = MODEL_SPECS[resolve_name(name)]
        if hw is None:
            hw = tuple(int(v) for v in args.size.lower().split("x")) if args.size else DEFAULT_SIZES[spec["head"]]
        entry: dict[str, Any] = {"name": name, "input_hw": list(hw), "head": spec["head"], "load": _loadavg()}
        print(f"# {name} @{hw[0]}x{hw[1]} (load {entry['load']})", file=sys.stderr, flush=True)
        results["models"].append(entry)
        runs = [("jax", False)] if not args.deploy else [(f"deploy:{d}", False) for d in DEPLOY_PATHS]
        if args.deploy:
            train_batch = 0
            args.torch_compile = True
        if with_torch and not (args.torch_compile and args.no_torch_eager):
            runs.append(("torch", False))
        if with_torch and args.torch_compile:
            runs.append(("torch_compile", True))
        for key, compiled in runs:
            print(f"#   {key} {name} (child process)", file=sys.stderr, flush=True)

            def store(res, key=key):
                results["machine"].update(res["machine"])
                entry[key] = res["figures"]
                if key.startswith("deploy:"):
                    return save()
                if key != "jax":
                    entry["ratios" if key == "torch" else "ratios_compile"] = ratios(entry.get("jax", {}), entry[key])
                save()
            run_worker(key if key == "jax" or key.startswith("deploy:") else "torch", name, spec, hw, batches,
                       train_batch, args, threads, store, compiled=compiled)
        print(f"#   {json.dumps(entry)}", file=sys.stderr, flush=True)
    if args.pose_pipeline:
        results["pose_pipeline"] = bench_pose_pipeline(max(batches), args.pipeline_batches)
    if args.seg_pipeline:
        results["seg_pipeline"] = bench_seg_pipeline(4, args.pipeline_batches)
    if args.cls_pipeline:
        results["cls_pipeline"] = bench_cls_pipeline(32, args.pipeline_batches)
    results["config"]["winograd"] = args.winograd
    if args.deploy:
        results["config"]["deploy"] = True
        results["machine"]["cpu_flags"] = _cpu_vector_flags()
        print(deploy_markdown(results))
    else:
        print(markdown(results))
    save()
    return results


if __name__ == "__main__":
    from hrnet_jax.host_memory import reexec_with_hugepage_malloc
    reexec_with_hugepage_malloc("hrnet_jax.bench")  # XLA's per-call temp buffer on huge pages: see host_memory
    # A stop (e.g. timeout's SIGTERM) becomes SystemExit, so that run_worker stores what its child measured.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    main()
