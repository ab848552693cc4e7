"""Execution policy: how an HRNet is computed on a backend, kept out of the architecture modules.

The modules of :mod:`hrnet_jax.models` define the network: layers, names, parameters. An :class:`ExecutionPolicy`
changes only how some layers are computed, by intercepting their calls (``flax.linen.intercept_methods``, as
:mod:`hrnet_jax.models.fold` does for BatchNorm). The variables are the same, and so is the function up to float32
rounding.

* ``pointwise_matmul``: a 1x1 stride-1 conv runs as one matmul ``[N*H*W, Cin] @ [Cin, Cout]``. It is the same
  arithmetic, but XLA CPU computes the gradients as plain matmuls instead of a "convolution" whose window is the
  whole feature map: the pointwise convs of the bottlenecks and fusion units train 2-4x faster on 2 cores
  (jax 0.10 and 0.12). It is on by default on every backend, as it was before the policy existed.
* ``onednn``: float32 3x3 and strided convs compute their gradients with oneDNN custom calls
  (:mod:`hrnet_jax.kernels.onednn`). The forward pass stays XLA's. In a training step, the convs of the
  single-stream sections (stem, stage 1 = ``layer1``, the classification head's ``downsamp_modules`` and
  ``final_layer.0``) are "serial": every float32 conv there, 1x1 included, runs forward and backward in oneDNN on
  all cores. Where nothing else runs beside those convs, XLA would use one core for its forward convs and for the
  1-thread gradient calls (W32 train step, batch 4, 2 cores: 1.78-1.80 s -> 1.64-1.68 s). Inference keeps XLA's
  forward convs and their fusions.
* ``cut_fusion``: :func:`cut_fusion` on the output of every residual block of the streams (stage 1 and the
  branches of stages 2-4, not the classification head's ``incre_modules``) and of every exchange unit.

* ``winograd`` (inference only, 0 = off): float 3x3 stride-1 convs with at least that many input and output
  channels run as Winograd F(2x2, 3x3) on CPU (:mod:`hrnet_jax.kernels.winograd`; 2.25x fewer multiplications,
  pure StableHLO, so an exported program keeps it). The inference entry point sets it on CPU
  (:func:`default_winograd`) and precomputes the transformed kernels (:func:`winograd_variables`).

``None`` means "decide for this process" (:meth:`ExecutionPolicy.resolve`): oneDNN on a single CPU device when
the kernels build (otherwise XLA, silently), and the fusion cuts on the CPU backend. ``onednn=True`` raises a
``RuntimeError`` that gives the reason when the kernels cannot be used.

Use: ``models.create(name, execution=ExecutionPolicy(onednn=False))`` returns a :class:`PolicyModel`, whose
``init`` / ``apply`` run the module under the policy. ``PolicyModel.module`` is the bare architecture.
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Optional

import jax
import jax.numpy as jnp
import flax.linen as nn

__all__ = ["ExecutionPolicy", "PolicyModel", "cut_fusion", "is_serial_section"]

# Top-level module names of the single-stream sections (their convs are "serial" in a oneDNN training step).
_SERIAL_ROOTS = ("conv1", "conv2", "layer1", "final_layer.0")
_SERIAL_PREFIXES = ("downsamp_modules.",)
# Residual blocks under these top-level names get no fusion cut (the classification head's incremental blocks).
_UNCUT_PREFIXES = ("incre_modules.",)
# The variable collection of transformed Winograd kernels (ExecutionPolicy.winograd).
WINOGRAD = "winograd"
# The fewest channels of a 3x3 conv that Winograd F(2x2, 3x3) computes faster than XLA's CPU conv (see
# hrnet_jax.kernels.winograd: at 32 channels the matmuls are too thin for the transforms' memory traffic).
WINOGRAD_MIN_CHANNELS = 64


def default_winograd(platforms) -> int:
    """The ``winograd`` of an inference policy for a program that runs on ``platforms``: CPU-only (GPUs and TPUs
    keep their own convolutions, cuDNN choosing its Winograd kernels itself), so
    :data:`WINOGRAD_MIN_CHANNELS` when ``cpu`` is among them, else 0."""
    return WINOGRAD_MIN_CHANNELS if "cpu" in tuple(platforms) else 0


def cut_fusion(x: jax.Array) -> jax.Array:
    """``x`` unchanged, computed into a buffer of its own that XLA will not re-compute in its consumers.

    XLA's CPU fusion pass copies cheap elementwise producers into every consumer. HRNet's residual streams are
    such chains: ``x_k = relu(bn(conv(..)) + x_{k-1})`` through a whole stage. Left alone, every block's add
    and every transpose that a conv weight gradient needs re-computes all earlier blocks' BN / add / ReLU
    (a 60-operand loop fusion per block). Measured on 2 CPU cores (pose W32 256x192, batch 4): train step
    4.1 s -> 1.7 s, inference -13%. A float divide counts as expensive, so XLA does not duplicate it, and
    ``x / 1`` is exact; the denominator is built from ``x`` so that no simplifier folds it away.
    (``lax.optimization_barrier`` does not do this under jax 0.10: its XLA expands barriers before fusion.)
    """
    return x / jax.lax.stop_gradient(x * 0 + 1)


def is_serial_section(path: tuple) -> bool:
    """Whether a conv at module ``path`` (names from the model's root) is in a single-stream section."""
    if not path:
        return False
    root = path[0]
    return root in _SERIAL_ROOTS or root.startswith(_SERIAL_PREFIXES)


def _pointwise(mod: nn.Conv, x) -> bool:
    return (tuple(mod.kernel_size) == (1, 1) and mod.strides in (1, None, (1, 1))
            and mod.padding in ("VALID", "SAME", ((0, 0), (0, 0))) and mod.feature_group_count == 1
            and mod.kernel_dilation in (1, None, (1, 1)) and x.ndim == 4)


def _onednn_ok(mod: nn.Conv, x) -> bool:
    s, p, d = mod.strides, mod.padding, mod.kernel_dilation
    dtype = mod.dtype or x.dtype
    return (x.ndim == 4 and mod.feature_group_count == 1 and d in (1, None, (1, 1))
            and isinstance(s, tuple) and s[0] == s[1] and isinstance(p, tuple) and len(p) == 2
            and p[0][0] == p[0][1] == p[1][0] == p[1][1] and jnp.dtype(dtype) == jnp.float32
            and mod.param_dtype == jnp.float32)


def _kernel_and_bias(mod: nn.Conv, cin: int):
    """The parameters ``nn.Conv`` creates (same names, shapes, initialisers and order)."""
    kernel = mod.param("kernel", mod.kernel_init, (*mod.kernel_size, cin, mod.features), mod.param_dtype)
    bias = mod.param("bias", mod.bias_init, (mod.features,), mod.param_dtype) if mod.use_bias else None
    return kernel, bias


def _matmul_conv(mod: nn.Conv, x):
    cin = x.shape[-1]
    kernel, bias = _kernel_and_bias(mod, cin)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=mod.dtype)
    y = jnp.dot(x.reshape(-1, cin), kernel.reshape(cin, mod.features), precision=mod.precision)
    y = y.reshape(*x.shape[:-1], mod.features)
    return y if bias is None else y + bias


def _winograd_ok(mod: nn.Conv, x, min_channels: int) -> bool:
    return (tuple(mod.kernel_size) == (3, 3) and mod.strides in (1, None, (1, 1))
            and mod.padding == ((1, 1), (1, 1)) and mod.feature_group_count == 1
            and mod.kernel_dilation in (1, None, (1, 1)) and x.ndim == 4
            and jnp.dtype(mod.dtype or x.dtype) == jnp.float32 and min(x.shape[-1], mod.features) >= min_channels)


def _winograd_conv(mod: nn.Conv, x):
    """A 3x3 stride-1 conv by Winograd F(2x2, 3x3) on CPU. Its transformed kernel comes from the ``winograd``
    collection when the variables have one (:func:`winograd_variables` computes them once and drops the 3x3
    kernels they replace); while that collection is mutable it is created there; otherwise the kernel is
    transformed here. A program lowered for several platforms (an export for cpu, cuda and tpu) computes the
    conv by Winograd on CPU only: ``lax.platform_dependent`` picks XLA's convolution elsewhere, with the 3x3
    kernel recovered from the transformed one."""
    from hrnet_jax.kernels import winograd
    bias = mod.param("bias", mod.bias_init, (mod.features,), mod.param_dtype) if mod.use_bias else None
    if mod.has_variable(WINOGRAD, "kernel"):
        u = mod.get_variable(WINOGRAD, "kernel")
        kernel_of = winograd.kernel_of
    else:
        kernel = mod.param("kernel", mod.kernel_init, (3, 3, x.shape[-1], mod.features), mod.param_dtype)
        u = (mod.variable(WINOGRAD, "kernel", winograd.winograd_kernel, kernel).value
             if mod.is_mutable_collection(WINOGRAD) else winograd.winograd_kernel(kernel))
        kernel_of = lambda _: kernel  # noqa: E731
    x, u, bias = nn.dtypes.promote_dtype(x, u, bias, dtype=mod.dtype)

    def on_cpu(x, u):
        return winograd.conv3x3(x, transformed=u, precision=mod.precision)

    def elsewhere(x, u):
        return jax.lax.conv_general_dilated(x, kernel_of(u).astype(x.dtype), (1, 1), ((1, 1), (1, 1)),
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=mod.precision)

    y = jax.lax.platform_dependent(x, u, cpu=on_cpu, default=elsewhere)
    return y if bias is None else y + bias


def winograd_variables(apply_fn, params: dict, example: jax.Array) -> tuple[dict, dict]:
    """``(params, winograd)``: the transformed kernels of the convs that a policy with ``winograd`` computes by
    Winograd, found by tracing ``apply_fn({"params": params}, example, mutable=[WINOGRAD])`` (shapes only), then
    computed once from ``params``; the 3x3 kernels they replace are dropped from ``params``."""
    from hrnet_jax.kernels import winograd
    _, state = jax.eval_shape(lambda p, x: apply_fn({"params": p}, x, mutable=[WINOGRAD]), params, example)
    shapes = state.get(WINOGRAD, {})
    params = dict(params)   # walk copies each dict on a path to a transformed kernel before editing it

    def walk(shape_tree, p):
        out = {}
        for k, v in shape_tree.items():
            if k == "kernel" and not isinstance(v, dict):
                out[k] = winograd.winograd_kernel(p.pop("kernel"))
            else:
                p[k] = dict(p[k])
                out[k] = walk(v, p[k])
        return out

    return params, walk(shapes, params)


def _onednn_conv(mod: nn.Conv, x, serial: bool):
    from hrnet_jax.kernels import onednn
    kernel, bias = _kernel_and_bias(mod, x.shape[-1])
    y = onednn.conv2d(x.astype(jnp.float32), kernel, mod.strides[0], mod.padding[0][0], serial=serial)
    return y if bias is None else y + bias


@dataclasses.dataclass(frozen=True)
class ExecutionPolicy:
    """How the convs and fusions of an HRNet are computed (see the module docstring). ``None`` = auto."""
    onednn: Optional[bool] = None
    cut_fusion: Optional[bool] = None
    pointwise_matmul: bool = True
    winograd: int = 0

    def resolve(self) -> "ExecutionPolicy":
        """The policy with every ``None`` decided for this process (JAX's backend, its device count, whether the
        oneDNN kernels build). Raises ``RuntimeError`` for ``onednn=True`` when the kernels cannot be used."""
        from hrnet_jax.kernels import onednn as kernels
        if self.onednn is None:
            use_onednn = kernels.default_off_reason() is None
        elif self.onednn:
            reason = kernels.unavailable_reason()
            if reason is not None:
                raise RuntimeError(f"onednn=True, but the oneDNN kernels cannot be used: {reason}")
            use_onednn = True
        else:
            use_onednn = False
        cut = jax.default_backend() == "cpu" if self.cut_fusion is None else bool(self.cut_fusion)
        return ExecutionPolicy(onednn=use_onednn, cut_fusion=cut, pointwise_matmul=bool(self.pointwise_matmul),
                               winograd=int(self.winograd))

    def interceptor(self, train: bool):
        """A ``flax.linen.intercept_methods`` interceptor applying this (resolved) policy to an HRNet called
        with ``train``."""
        from hrnet_jax.models.blocks import BLOCKS
        from hrnet_jax.models.exchange import ExchangeUnit
        from hrnet_jax.models.layers import Conv
        blocks = tuple(BLOCKS.values())
        onednn, cut, pointwise = bool(self.onednn), bool(self.cut_fusion), bool(self.pointwise_matmul)
        winograd = int(self.winograd)

        def intercept(next_fun, args, kwargs, context):
            mod = context.module
            if context.method_name != "__call__":
                return next_fun(*args, **kwargs)
            if isinstance(mod, Conv) and len(args) == 1 and not kwargs:
                x = args[0]
                if onednn and train and is_serial_section(mod.path) and _onednn_ok(mod, x):
                    return _onednn_conv(mod, x, serial=True)
                if pointwise and _pointwise(mod, x):
                    return _matmul_conv(mod, x)
                if winograd and not train and _winograd_ok(mod, x, winograd):
                    return _winograd_conv(mod, x)
                if onednn and _onednn_ok(mod, x):
                    return _onednn_conv(mod, x, serial=False)
                return next_fun(*args, **kwargs)
            if cut and isinstance(mod, blocks) and not (mod.path and mod.path[0].startswith(_UNCUT_PREFIXES)):
                return cut_fusion(next_fun(*args, **kwargs))
            if cut and isinstance(mod, ExchangeUnit):
                return tuple(cut_fusion(y) for y in next_fun(*args, **kwargs))
            return next_fun(*args, **kwargs)

        return intercept

    @contextlib.contextmanager
    def applied(self, train: bool = False):
        """Context in which HRNet modules are computed under this policy (resolved on entry)."""
        with nn.intercept_methods(self.resolve().interceptor(train)):
            yield


def _train_flag(args: tuple, kwargs: dict) -> bool:
    """``train`` of an ``HRNet.__call__(images, train=False)`` call given to init / apply."""
    return bool(kwargs["train"] if "train" in kwargs else (args[1] if len(args) > 1 else False))


@dataclasses.dataclass(frozen=True)
class PolicyModel:
    """A Linen module and the :class:`ExecutionPolicy` that its ``init`` / ``apply`` run under.

    Reads other attributes from the module (``model.head``, ``model.scan``, ...); ``clone`` returns a
    ``PolicyModel`` (the policy's fields and ``execution`` replace the policy, any other field the module's)."""
    module: nn.Module
    execution: ExecutionPolicy = ExecutionPolicy()

    def init(self, rngs, *args, **kwargs):
        with self.execution.applied(_train_flag(args, kwargs)):
            return self.module.init(rngs, *args, **kwargs)

    def init_with_output(self, rngs, *args, **kwargs):
        with self.execution.applied(_train_flag(args, kwargs)):
            return self.module.init_with_output(rngs, *args, **kwargs)

    def apply(self, variables, *args, **kwargs):
        with self.execution.applied(_train_flag(args, kwargs)):
            return self.module.apply(variables, *args, **kwargs)

    def clone(self, **updates) -> "PolicyModel":
        execution = updates.pop("execution", self.execution)
        policy_fields = {f.name for f in dataclasses.fields(ExecutionPolicy)}
        changes = {k: updates.pop(k) for k in list(updates) if k in policy_fields}
        module = self.module.clone(**updates) if updates else self.module
        return PolicyModel(module, dataclasses.replace(execution, **changes))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name == "module":
            raise AttributeError(name)
        return getattr(self.module, name)
