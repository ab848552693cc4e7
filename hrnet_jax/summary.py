"""Model summary: parameters, MACs and a per-stage breakdown.

    python -m hrnet_jax.summary NAME --input HxW [--json]

MACs are multiply-adds of convolutions and linear layers only, the convention of the HRNet repos'
``get_model_summary``; their tables print ``MACs / 2**30`` and call it "GFLOPs". BatchNorm, activations,
resizes, pooling and attention matmuls are not counted. With ``--json`` the last line is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import OrderedDict

import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn

from hrnet_jax.models import registry
from hrnet_jax.models.layers import ConvTranspose

_GROUPS = (("stem", ("conv1", "bn1", "conv2", "bn2")), ("stage1", ("layer1",)),
           ("stage2", ("transition1", "stage2")), ("stage3", ("transition2", "stage3")),
           ("stage4", ("transition3", "stage4")))


def _group(root: str) -> str:
    for g, roots in _GROUPS:
        if root in roots:
            return g
    return "head"


def summarize(name: str, input_hw=(224, 224), **overrides) -> dict:
    model = registry.create(name, **{**overrides, "scan": False}).module  # the architecture, no execution policy
    x = jnp.zeros((1, *input_hw, 3), jnp.float32)
    macs = OrderedDict((g, 0) for g, _ in _GROUPS)
    macs["head"] = 0

    def count(next_fun, args, kwargs, context):
        mod = context.module
        if context.method_name != "__call__" or not isinstance(mod, (nn.Conv, nn.Dense, ConvTranspose)):
            return next_fun(*args, **kwargs)
        out = next_fun(*args, **kwargs)
        inp = args[0]
        if isinstance(mod, ConvTranspose):  # every input pixel meets every kernel tap once
            n = int(np.prod(inp.shape[1:3])) * mod.kernel ** 2 * inp.shape[-1] * mod.features
        elif isinstance(mod, nn.Conv):
            kh, kw = mod.kernel_size
            n = int(np.prod(out.shape[1:])) * kh * kw * inp.shape[-1] // mod.feature_group_count
        else:
            n = int(np.prod(out.shape[1:])) * inp.shape[-1]
        path = mod.scope.path
        macs[_group(path[0] if path else "")] += n
        return out

    def init():
        with nn.intercept_methods(count):
            return model.init(jax.random.PRNGKey(0), x)

    variables = jax.eval_shape(init)
    params = OrderedDict((g, 0) for g in macs)
    for path, leaf in jax.tree_util.tree_flatten_with_path(variables["params"])[0]:
        params[_group(path[0].key)] += int(np.prod(leaf.shape))
    total_macs = sum(macs.values())
    return {"model": registry.resolve_name(name), "input": list(input_hw), "params": sum(params.values()),
            "macs": total_macs, "gmacs_binary": total_macs / 2 ** 30,
            "breakdown": {g: {"params": params[g], "macs": macs[g]} for g in macs}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m hrnet_jax.summary", description=__doc__.split("\n\n")[0])
    p.add_argument("name", help="model name (see hrnet_jax.models.list_models())")
    p.add_argument("--input", default="224x224", help="HxW, e.g. 256x192")
    p.add_argument("--json", action="store_true", help="end with one JSON object on the last line")
    a = p.parse_args(argv)
    try:
        hw = tuple(int(v) for v in a.input.lower().split("x"))
        assert len(hw) == 2
    except (ValueError, AssertionError):
        print(f"error: --input must be HxW, got {a.input!r}", file=sys.stderr)
        return 2
    try:
        s = summarize(a.name, hw)
    except KeyError as e:
        print(f"error: {e.args[0]}", file=sys.stderr)
        return 2
    print(f"{s['model']} @ {hw[0]}x{hw[1]}")
    print("MACs = conv + linear multiply-adds (HRNet papers' convention; their 'GFLOPs' = MACs / 2^30)")
    print(f"{'part':<8} {'params':>14} {'MACs':>18}")
    for g, d in s["breakdown"].items():
        print(f"{g:<8} {d['params']:>14,} {d['macs']:>18,}")
    print(f"{'total':<8} {s['params']:>14,} {s['macs']:>18,}   ({s['gmacs_binary']:.2f} GMACs/2^30)")
    if a.json:
        print(json.dumps(s))
    return 0


if __name__ == "__main__":
    sys.exit(main())
