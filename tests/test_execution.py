"""The execution policy (hrnet_jax.execution): where it routes convs and cuts fusions, what it leaves unchanged (the
variables, the function), and its fallbacks: no C++ compiler (XLA, same function; ``onednn=True`` says why) and
several devices (oneDNN off, same outputs and gradients as one device with oneDNN)."""
import json
import os
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from hrnet_jax import models
from hrnet_jax.execution import ExecutionPolicy, PolicyModel
from hrnet_jax.kernels import onednn
from hrnet_jax.models import HRNet, HRNetConfig, StageConfig

ROOT = Path(__file__).resolve().parents[1]
ONEDNN_SUPPORTED = sys.platform == "linux" and platform.machine() == "x86_64"  # pyproject installs oneDNN there

TINY = HRNetConfig(stem_width=8, stages=(
    StageConfig(1, 1, "BOTTLENECK", (2,), (4,)),
    StageConfig(1, 2, "BASIC", (1, 1), (4, 8)),
    StageConfig(2, 3, "BASIC", (1, 1, 1), (4, 8, 16)),
    StageConfig(1, 4, "BASIC", (1, 1, 1, 1), (4, 8, 16, 32)),
))
# The narrow network of the 1-vs-8-device check (the config).
NARROW = ("HRNetConfig(stem_width=32, stages=(StageConfig(1, 1, 'BOTTLENECK', (1,), (16,)), "
          "StageConfig(1, 2, 'BASIC', (1, 1), (16, 32)), StageConfig(1, 3, 'BASIC', (1, 1, 1), (16, 32, 64)), "
          "StageConfig(1, 4, 'BASIC', (1, 1, 1, 1), (16, 32, 64, 128))))")


def random_variables(shapes, seed: int = 0):
    """Variables of the given shapes: random kernels and BN statistics (a jitted init compiles slowly)."""
    rng = np.random.default_rng(seed)

    def fill(path, s):
        name = str(path[-1].key)
        if name == "var":
            return jnp.asarray(rng.uniform(0.5, 1.5, s.shape), s.dtype)
        scale = np.sqrt(2.0 / np.prod(s.shape[:-1])) if name == "kernel" else 0.1
        return jnp.asarray(rng.standard_normal(s.shape) * scale + (name == "scale"), s.dtype)
    return jax.tree_util.tree_map_with_path(fill, shapes)


def _run(script: str, env_extra: dict, tmp_path: Path, tag: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    env.update(PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests"), env.get("PYTHONPATH", "")]),
               JAX_PLATFORMS="cpu", **env_extra)
    path = tmp_path / f"{tag}.py"
    path.write_text(textwrap.dedent(script))
    return subprocess.Popen([sys.executable, str(path)], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _result(proc: subprocess.Popen, timeout: float = 300) -> dict:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-4000:]
    return json.loads(out.strip().splitlines()[-1])


def test_create_wraps_the_architecture():
    model = models.create("pose_hrnet_w18_small_v1", config=TINY, num_joints=5)
    assert isinstance(model, PolicyModel) and isinstance(model.module, HRNet)
    assert model.execution == ExecutionPolicy()
    assert model.head == "pose" and model.num_outputs == 5 and model.scan  # read from the module
    unrolled = model.clone(scan=False)
    assert isinstance(unrolled, PolicyModel) and not unrolled.scan and unrolled.execution == model.execution
    xla = model.clone(onednn=False)
    assert xla.execution == ExecutionPolicy(onednn=False) and xla.module == model.module
    assert models.create("hrnet_w18", onednn=False, cut_fusion=True).execution == \
        models.create("hrnet_w18", execution=ExecutionPolicy(onednn=False, cut_fusion=True)).execution
    with pytest.raises(TypeError, match="unknown override"):
        models.create("hrnet_w18", onedn=False)


def test_same_variables_and_function_as_the_bare_module():
    """The policy changes neither the variable tree nor (beyond float32 rounding) the training-mode outputs and BN
    statistics: the bare Linen module (XLA's convs, no cuts) is the reference."""
    model = models.create("pose_hrnet_w18_small_v1", config=TINY, num_outputs=7)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 64, 32, 3)), jnp.float32)
    shapes = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False), x)
    bare = jax.eval_shape(lambda x: model.module.init(jax.random.PRNGKey(0), x, train=False), x)
    assert jax.tree_util.tree_structure(shapes) == jax.tree_util.tree_structure(bare) and shapes == bare
    v = random_variables(shapes)
    got = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(v, x)
    want = jax.jit(lambda v, x: model.module.apply(v, x, train=True, mutable=["batch_stats"]))(v, x)
    for (path, w), g in zip(jax.tree_util.tree_flatten_with_path(want)[0], jax.tree.leaves(got)):
        scale = float(jnp.max(jnp.abs(w))) + 1e-12
        assert float(jnp.max(jnp.abs(g - w))) <= 1e-4 * scale, jax.tree_util.keystr(path)


def _expected_sites(params: dict, head: str) -> dict:
    """What the policy must touch, read off the (unrolled) parameter tree: residual blocks outside the
    classification head, exchange-unit outputs, serial (single-stream) convs and other 3x3 convs."""
    blocks, serial, parallel = 0, 0, 0
    for path, leaf in flatten_dict(params).items():
        if path[-1] == "kernel" and leaf.ndim == 4:
            root = path[0]
            is_serial = root in ("conv1", "conv2", "layer1") or root.startswith("downsamp_modules.") \
                or (root == "final_layer.0" and head == "classification")
            serial += is_serial
            parallel += (not is_serial) and leaf.shape[0] == 3
        if len(path) > 2 and path[-2:] == ("conv1", "kernel") and not path[0].startswith("incre_modules"):
            blocks += 1
    fuse = {}
    for path in flatten_dict(params):
        if "fuse_layers" in path:
            i = path.index("fuse_layers")
            fuse.setdefault(path[:i], set()).add(path[i + 1].split(".")[0])
    outputs = sum(len(s) for s in fuse.values())
    return dict(blocks=blocks, exchange_outputs=outputs, serial=serial, parallel=parallel)


@pytest.mark.parametrize("name", ["hrnet_w18_small_v1", "pose_hrnet_w18_small_v1"])
def test_policy_routes_the_expected_convs_and_cuts(name):
    """Counted in the lowered programs: one fusion cut (a divide) per residual block and exchange-unit output;
    with oneDNN, one forward custom call per serial conv and a weight-gradient call per serial or 3x3 conv."""
    model = models.create(name, config=TINY, num_outputs=7, scan=False)
    x = jnp.zeros((2, 64, 64, 3), jnp.float32)
    v = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, train=False))
    sites = _expected_sites(v["params"], model.head)
    stage4_outputs = 4 if model.head == "classification" else 1  # pose: stage 4 fuses into one stream
    assert sites["blocks"] == 2 + 2 + 2 * 3 + 4 and sites["exchange_outputs"] == 2 + 2 * 3 + stage4_outputs
    means = 1 if model.head == "classification" else 0  # the classification head's global average pool

    def infer_text(m):
        return jax.jit(lambda v, x: m.apply(v, x, train=False)).lower(v, x).as_text()
    assert infer_text(model.clone(cut_fusion=True)).count("stablehlo.divide") \
        == sites["blocks"] + sites["exchange_outputs"] + means
    assert infer_text(model.clone(cut_fusion=False)).count("stablehlo.divide") == means
    if not (ONEDNN_SUPPORTED and onednn.unavailable_reason() is None):
        pytest.skip(f"oneDNN kernels unavailable: {onednn.unavailable_reason()}")
    net = model.clone(onednn=True)

    def loss(params, stats):
        y, _ = net.apply({"params": params, "batch_stats": stats}, x, train=True, mutable=["batch_stats"])
        return jnp.sum(y)
    train = jax.jit(jax.grad(loss)).lower(v["params"], v["batch_stats"]).as_text()
    assert train.count("hrnet_onednn_conv_fwd") == sites["serial"]
    assert train.count("hrnet_onednn_conv_bwd_weights") == sites["serial"] + sites["parallel"]
    assert train.count("hrnet_onednn_conv_bwd_data") == sites["serial"] + sites["parallel"] - 1  # not the image's
    assert "hrnet_onednn" not in infer_text(net)  # inference keeps XLA's forward convs (custom_vjp forward)


_FALLBACK = """
    import json, jax, jax.numpy as jnp, numpy as np
    from test_execution import random_variables
    from hrnet_jax import models
    from hrnet_jax.compile_cache import cache_root
    from hrnet_jax.kernels import onednn
    from hrnet_jax.models import ExecutionPolicy, HRNetConfig, StageConfig
    cfg = HRNetConfig(stem_width=8, stages=(
        StageConfig(1, 1, "BOTTLENECK", (1,), (4,)), StageConfig(1, 2, "BASIC", (1, 1), (4, 8)),
        StageConfig(1, 3, "BASIC", (1, 1, 1), (4, 8, 16)), StageConfig(1, 4, "BASIC", (1, 1, 1, 1), (4, 8, 16, 32))))
    reason = onednn.unavailable_reason()
    auto = models.create("pose_hrnet_w18_small_v1", config=cfg, num_joints=5)
    xla = models.create("pose_hrnet_w18_small_v1", config=cfg, num_joints=5, execution=ExecutionPolicy(onednn=False))
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 64, 32, 3)), jnp.float32)
    v = random_variables(jax.eval_shape(lambda: auto.init(jax.random.PRNGKey(0), x, train=False)))

    def step(m):
        def loss(p):
            y, _ = m.apply({"params": p, "batch_stats": v["batch_stats"]}, x, train=True, mutable=["batch_stats"])
            return jnp.sum(jnp.square(y)), y
        return jax.jit(jax.value_and_grad(loss, has_aux=True))
    lowered = step(auto).lower(v["params"])
    hlo = lowered.as_text()
    (la, ya), ga = lowered.compile()(v["params"])
    (lx, yx), gx = step(xla)(v["params"])
    same = bool(np.array_equal(ya, yx)) and all(
        np.array_equal(a, b) for a, b in zip(jax.tree.leaves(ga), jax.tree.leaves(gx)))
    try:
        insist = models.create("pose_hrnet_w18_small_v1", config=cfg, num_joints=5, onednn=True)
        jax.eval_shape(lambda: insist.apply(v, x))
        error = None
    except RuntimeError as e:
        error = str(e)
    print(json.dumps(dict(reason=reason, resolved=auto.execution.resolve().onednn, same=same,
                          custom_calls=hlo.count("custom_call"), error=error,
                          built=[str(p) for p in cache_root().rglob("*.so")])))
"""


def test_onednn_falls_back_to_xla_without_a_compiler(tmp_path):
    """An empty kernel cache and a C++ compiler that fails: the kernels say why, the default policy computes the
    same outputs and gradients as an explicitly-XLA model, and ``onednn=True`` raises with the reason."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("g++", "c++", "cc", "gcc", "clang++"):
        (bin_dir / tool).write_text("#!/bin/sh\necho 'no compiler here' >&2\nexit 1\n")
        (bin_dir / tool).chmod(0o755)
    cache = tmp_path / "cache"
    env = dict(HRNET_JAX_CACHE=str(cache), CXX=str(bin_dir / "g++"),
               PATH=str(bin_dir) + os.pathsep + os.environ.get("PATH", ""))
    r = _result(_run(_FALLBACK, env, tmp_path, "fallback"))
    assert r["reason"], r
    if ONEDNN_SUPPORTED:
        assert "building the oneDNN kernels failed" in r["reason"] and "no compiler here" in r["reason"], r["reason"]
    assert r["built"] == []
    assert r["resolved"] is False and r["custom_calls"] == 0
    assert r["same"], "the fallback must be the XLA model, bit for bit"
    assert r["error"] and "onednn=True" in r["error"] and r["reason"][:80] in r["error"], r["error"]


_DEVICES = """
    import json, sys, jax, jax.numpy as jnp, numpy as np
    from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P
    from test_execution import random_variables
    from hrnet_jax import models
    from hrnet_jax.models import HRNetConfig, StageConfig
    model = models.create("pose_hrnet_w18_small_v1", config=%s)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((8, 64, 64, 3)), jnp.float32)
    t = jnp.asarray(rng.standard_normal((8, 16, 16, 17)), jnp.float32)
    v = random_variables(jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x[:1], train=False)))
    n = jax.device_count()
    if n > 1:
        mesh = Mesh(np.asarray(jax.devices()), ("batch",), axis_types=(AxisType.Auto,))  # as training.sharding
        x, t = (jax.device_put(a, NamedSharding(mesh, P("batch"))) for a in (x, t))
        v = jax.device_put(v, NamedSharding(mesh, P()))

    def loss(params, stats, x, t):
        y, upd = model.apply({"params": params, "batch_stats": stats}, x, train=True, mutable=["batch_stats"])
        return jnp.mean(jnp.square(y - t)), (y, upd["batch_stats"])
    fn = jax.jit(jax.value_and_grad(loss, has_aux=True))
    hlo = fn.lower(v["params"], v["batch_stats"], x, t).as_text()
    (l, (y, stats)), g = fn(v["params"], v["batch_stats"], x, t)
    arrays = {"y": y, "loss": l}
    arrays.update({"grad/" + jax.tree_util.keystr(p): a for p, a in jax.tree_util.tree_flatten_with_path(g)[0]})
    arrays.update({"stats/" + jax.tree_util.keystr(p): a for p, a in jax.tree_util.tree_flatten_with_path(stats)[0]})
    np.savez(sys.argv[0] + ".npz", **{k: np.asarray(a) for k, a in arrays.items()})
    print(json.dumps(dict(devices=n, onednn=model.execution.resolve().onednn, onednn_calls=hlo.count("hrnet_onednn"),
                          sharded=str(getattr(y, "sharding", "")))))
""" % NARROW


def test_same_function_on_one_and_eight_devices(tmp_path):
    """The default policy in a 1-device process (oneDNN where it builds) and in an 8-device one (batch sharded over a
    mesh, oneDNN off) computes the same heatmaps, gradients and BN statistics (float32 reassociation aside)."""
    procs = {1: _run(_DEVICES, {}, tmp_path, "one"),
             8: _run(_DEVICES, {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}, tmp_path, "eight")}
    res = {n: _result(p) for n, p in procs.items()}
    assert res[1]["devices"] == 1 and res[8]["devices"] == 8
    assert res[8]["onednn"] is False and res[8]["onednn_calls"] == 0 and "'batch'" in res[8]["sharded"]
    if ONEDNN_SUPPORTED:
        assert res[1]["onednn"] is True and res[1]["onednn_calls"] > 0, res[1]
    one, eight = np.load(tmp_path / "one.py.npz"), np.load(tmp_path / "eight.py.npz")
    assert sorted(one.files) == sorted(eight.files) and len(one.files) > 50
    for k in one.files:
        want, got = one[k], eight[k]
        assert want.shape == got.shape, k
        scale = float(np.max(np.abs(want))) + 1e-12
        err = float(np.max(np.abs(got - want)))
        assert err <= 5e-5 * scale + 1e-7, (k, err, scale)  # measured: <= 6e-6 * scale
