"""The gradients of HRNet's 3x3 and strided convolutions through oneDNN (the library behind PyTorch's CPU convs),
as XLA FFI custom calls.

Why: on CPUs XLA's own convolution kernels (Eigen, YNNPACK) run the forward pass as fast as oneDNN, but the two
gradients much slower: on 2 cores, four 3x3 convs of 32 channels at 56x56 (batch 4) take ~5.4 ms forward, after
which XLA needs 19-24 ms for the input and weight gradients and PyTorch 12.6 ms. The weight gradient is the worst
(XLA computes it as a "convolution" whose window is the whole feature map, 2.5x the forward time, after
transposing the activations to put the batch last).

What: :func:`conv2d` is ``lax.conv_general_dilated`` for NHWC activations, HWIO kernels, symmetric padding and
equal strides, float32. Its forward pass is XLA's conv (so inference, which has no backward pass, is unchanged
and keeps XLA's fusions), and its ``jax.custom_vjp`` backward pass computes the input gradient and the weight
gradient with two custom calls into oneDNN (``kernels/onednn_conv.cc``). oneDNN reads and writes NHWC
activations as they are and reorders the small kernels into its own layout. Measured W32 train step (batch 4,
2 cores, jax 0.10.2): 1.88 s -> 1.63 s. ``serial=True`` convs (the single-stream sections of a training
network) also run the forward pass through oneDNN, on one OpenMP thread per core: see :func:`conv2d`.

How it is built: on first use the C++ file is compiled with the system C++ compiler against jaxlib's FFI
headers and the ``onednn-cpu-gomp`` / ``onednn-devel-cpu-gomp`` wheels (oneDNN 3.2, GNU OpenMP), into
``$HRNET_JAX_CACHE`` (default ``~/.cache/hrnet_jax``), keyed by a hash of the source and the versions. If anything
is missing, :func:`unavailable_reason` says why and the model keeps XLA's gradients
(:class:`hrnet_jax.execution.ExecutionPolicy`, which decides which convs come here).
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from hrnet_jax.compile_cache import cache_root

_SRC = Path(__file__).with_name("onednn_conv.cc")
_TARGETS = {"fwd": "HrnetOnednnConvForward", "bwd_data": "HrnetOnednnConvBackwardData",
            "bwd_weights": "HrnetOnednnConvBackwardWeights"}


def _prefixes() -> list[Path]:
    roots = [os.environ.get("HRNET_ONEDNN_ROOT"), sys.prefix, sys.base_prefix, "/usr/local", "/usr"]
    return [Path(r) for r in roots if r]


def _find_onednn() -> tuple[Path, Path]:
    """(include dir, lib dir) of a oneDNN with dnnl.hpp and libdnnl.so."""
    for root in _prefixes():
        inc, lib = root / "include", root / "lib"
        if (inc / "oneapi" / "dnnl" / "dnnl.hpp").exists() and any(lib.glob("libdnnl.so*")):
            return inc, lib
    raise RuntimeError("oneDNN not found (pip install onednn-cpu-gomp onednn-devel-cpu-gomp, or set "
                       f"HRNET_ONEDNN_ROOT); looked in {[str(p) for p in _prefixes()]}")


def _build() -> Path:
    import jaxlib
    inc, lib = _find_onednn()
    ffi_inc = jax.ffi.include_dir()
    src = _SRC.read_bytes()
    key = hashlib.sha256(b"|".join([src, str(inc).encode(), str(lib).encode(), jaxlib.__version__.encode(),
                                    sys.version.encode()])).hexdigest()[:16]
    out = cache_root() / f"onednn-{key}" / "libhrnet_onednn.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(f".{os.getpid()}.tmp")
    cxx = os.environ.get("CXX", "g++")
    cmd = [cxx, "-O2", "-std=c++17", "-shared", "-fPIC", "-fopenmp", f"-I{ffi_inc}", f"-I{inc}", str(_SRC), "-o", str(tmp),
           f"-L{lib}", "-ldnnl", f"-Wl,-rpath,{lib}"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RuntimeError(f"could not run the C++ compiler {cxx!r}: {e}") from e
    if proc.returncode != 0:
        raise RuntimeError(f"building the oneDNN kernels failed ({' '.join(cmd)}):\n{proc.stderr[-2000:]}")
    os.replace(tmp, out)  # atomic: concurrent builders (pytest-xdist, several hosts) never see half a file
    return out


@functools.lru_cache(maxsize=None)
def _load() -> str | None:
    """Builds, loads and registers the kernels once per process; None if that worked, else the reason."""
    if sys.platform != "linux":
        return f"oneDNN kernels are built for Linux only (this is {sys.platform})"
    try:
        lib = ctypes.CDLL(str(_build()))
        for kind, symbol in _TARGETS.items():
            jax.ffi.register_ffi_target(f"hrnet_onednn_conv_{kind}", jax.ffi.pycapsule(getattr(lib, symbol)),
                                        platform="cpu")
    except Exception as e:  # noqa: BLE001 - any failure means: keep XLA's convolutions, and say why
        return f"{type(e).__name__}: {e}"
    return None


def available() -> bool:
    return _load() is None


def unavailable_reason() -> str | None:
    return _load()


def default_off_reason() -> str | None:
    """None where ``ExecutionPolicy(onednn=None)`` uses the kernels (a single CPU device, kernels built); else why not.

    Off on several devices: XLA's SPMD partitioner would replicate a custom call over a batch-sharded mesh."""
    if jax.default_backend() != "cpu" or jax.device_count() > 1:
        return f"{jax.device_count()} {jax.default_backend()} device(s)"
    return _load()


def default_threads() -> int:
    """OpenMP threads per conv in the parallel streams: ``$HRNET_ONEDNN_THREADS``, else 1 (0 = one per core).

    One is fastest for HRNet's multi-stream stages on 2 cores: XLA already runs the independent convs of the
    parallel streams on its own threads at the same time, and a second OpenMP team per conv only oversubscribes
    the cores (W32 train step, batch 4: 1.63 s with 1 thread per conv, 1.73 s with 2). The single-stream
    sections (stem, stage 1, the classification head's downsampling chain) are the opposite case: see
    ``serial`` in :func:`conv2d`."""
    return int(os.environ.get("HRNET_ONEDNN_THREADS", "1"))


def _call(kind: str, out_shape, a, b, stride: int, pad: int, threads: int):
    out = jax.ShapeDtypeStruct(tuple(out_shape), jnp.float32)
    return jax.ffi.ffi_call(f"hrnet_onednn_conv_{kind}", out)(a, b, stride=np.int64(stride), pad=np.int64(pad),
                                                             threads=np.int64(threads))


def _out_shape(x_shape, k_shape, stride: int, pad: int):
    n, h, w, _ = x_shape
    kh, kw, _, o = k_shape
    return (n, (h + 2 * pad - kh) // stride + 1, (w + 2 * pad - kw) // stride + 1, o)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _conv2d(x, kernel, stride, pad, threads, onednn_forward):
    if onednn_forward:
        return _call("fwd", _out_shape(x.shape, kernel.shape, stride, pad), x, kernel, stride, pad, threads)
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride), ((pad, pad), (pad, pad)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _fwd(x, kernel, stride, pad, threads, onednn_forward):
    return _conv2d(x, kernel, stride, pad, threads, onednn_forward), (x, kernel)


def _bwd(stride, pad, threads, onednn_forward, res, dy):
    x, kernel = res
    dy = dy.astype(jnp.float32)
    dx = _call("bwd_data", x.shape, dy, kernel, stride, pad, threads)
    dk = _call("bwd_weights", kernel.shape, x, dy, stride, pad, threads)
    return dx, dk


_conv2d.defvjp(_fwd, _bwd)


def conv2d(x: jax.Array, kernel: jax.Array, stride: int = 1, pad: int = 1, threads: int | None = None,
           serial: bool = False) -> jax.Array:
    """``lax.conv_general_dilated(x, kernel, (stride, stride), ((pad, pad), (pad, pad)))``, NHWC / HWIO, float32,
    with oneDNN's two gradients. Raises ``RuntimeError`` if the kernels cannot be built.

    ``serial=False`` (a conv that runs beside other convs, in the parallel streams): XLA's forward pass (which
    XLA fuses with its neighbours) and gradients on ``threads`` OpenMP threads (default :func:`default_threads`).
    ``serial=True`` (a conv that XLA runs alone, in a single-stream section): the forward pass through oneDNN too,
    and all three on one OpenMP thread per core unless ``threads`` says otherwise. XLA runs such a section's
    forward convs and the 1-thread gradient calls on one of its threads while the other cores idle.

    Tried and dropped (W32 train step, batch 4, 2 cores, medians of 30 steps): cutting a serial conv along the
    batch into one 1-thread custom call per core, for XLA's thread pool to run side by side (no OpenMP barrier to
    stall when XLA runs something else beside the conv): 1.53-1.77 s against 1.40-1.72 s for the OpenMP team.
    XLA's own gradients for the classification head's wide stride-2 convs (faster than oneDNN's in isolation:
    512->1024 at 14x14, 37 vs 54 ms): no difference beyond the run-to-run noise of the whole step.
    BN-folded inference (W48, batch 4, jax 0.10.2) with every 3x3 / strided conv forward through oneDNN: 5.3-5.6
    img/s on 2-thread teams, 4.6 on 1-thread calls, against 5.5 for XLA's convs, although four BasicBlocks of one
    W48 stream alone run at 182-217 GFLOP/s in oneDNN (bias, ReLU and residual add left to XLA) against XLA's
    171-201; HWIO weights read directly, or reordered once instead of at every call, changed <= 3%. oneDNN 3.2
    offers no Winograd convolution on this AMD CPU (primitive creation fails), which was the remaining way to
    fewer flops than PyTorch's direct convs.
    """
    reason = _load()
    if reason is not None:
        raise RuntimeError(f"the oneDNN kernels cannot be used: {reason}")
    if x.dtype != jnp.float32 or kernel.dtype != jnp.float32:
        raise TypeError(f"oneDNN conv2d takes float32, got {x.dtype} and {kernel.dtype}")
    if x.shape[-1] != kernel.shape[2]:
        raise ValueError(f"input channels {x.shape[-1]} != kernel input channels {kernel.shape[2]}")
    if threads is None:
        threads = 0 if serial else default_threads()
    return _conv2d(x, kernel, int(stride), int(pad), int(threads), bool(serial))
