"""Variable-tree utilities: scanned <-> unrolled restacking and the PyTorch key mapping.

Scanned runs are named ``"start:stop"`` and hold parameters stacked on a leading axis; unrolled units are
named by index. :func:`restack` converts any tree to the layout of a target tree (both directions, and
between different scan splits), matching children by index.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

import jax
import numpy as np

_RANGE = re.compile(r"^(\d+):(\d+)$")


def _element(tree: Mapping, i: int, path: str):
    """Child ``i`` of ``tree``: an unrolled child ``"i"`` or slice ``i`` of a scanned ``"a:b"`` child."""
    if str(i) in tree:
        return tree[str(i)]
    for k, v in tree.items():
        m = _RANGE.match(k)
        if m and int(m.group(1)) <= i < int(m.group(2)):
            off = i - int(m.group(1))
            return jax.tree_util.tree_map(lambda a: a[off], v)
    raise KeyError(f"{path}/{i}")


def restack(tree: Mapping, target: Mapping, path: str = "") -> dict:
    """Returns ``tree``'s values laid out like ``target`` (a tree of arrays or ShapeDtypeStructs)."""
    out = {}
    for k, t in target.items():
        p = f"{path}/{k}"
        m = _RANGE.match(k)
        if m:  # a scanned run: gather each unit (unrolled or sliced from any scanned run), then stack
            if not isinstance(t, Mapping):
                raise ValueError(f"{p}: a scanned run must be a subtree")
            start, stop = int(m.group(1)), int(m.group(2))
            unit = jax.tree_util.tree_map(lambda s: jax.ShapeDtypeStruct(s.shape[1:], s.dtype), t)
            parts = [restack(_element(tree, i, path), unit, f"{path}/{i}") for i in range(start, stop)]
            out[k] = jax.tree_util.tree_map(lambda *a: np.stack([np.asarray(x) for x in a]), *parts)
            continue
        if k in tree:
            src = tree[k]
        elif k.isdigit():
            src = _element(tree, int(k), path)
        else:
            raise KeyError(p)
        if isinstance(t, Mapping):
            out[k] = restack(src, t, p)
        else:
            if tuple(np.shape(src)) != tuple(t.shape):
                raise ValueError(f"{p}: shape {tuple(np.shape(src))} != expected {tuple(t.shape)}")
            out[k] = src
    return out


def unstack(tree: Mapping) -> dict:
    """The unrolled layout (``scan=False``) of any tree: every scanned ``"a:b"`` run becomes children
    ``"a"`` ... ``"b-1"`` (nested runs included); other entries are kept as they are."""
    out = {}
    for k, v in tree.items():
        m = _RANGE.match(k)
        if m and isinstance(v, Mapping):
            start, stop = int(m.group(1)), int(m.group(2))
            for i in range(start, stop):
                out[str(i)] = unstack(jax.tree_util.tree_map(lambda a, o=i - start: a[o], v))
        else:
            out[k] = unstack(v) if isinstance(v, Mapping) else v
    return out


def flatten(tree: Mapping, prefix: tuple = ()) -> dict:
    flat = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            flat.update(flatten(v, prefix + (k,)))
        else:
            flat[prefix + (k,)] = v
    return flat


def unflatten(flat: Mapping) -> dict:
    tree: dict = {}
    for path, v in flat.items():
        node = tree
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = v
    return tree


# Modules holding a ``torch.nn.ConvTranspose2d`` weight (in, out, kh, kw), stored as (kh, kw, in, out):
# HigherHRNet's ``deconv_layers.{i}.0.0`` (hrnet-reference.md section 7.3).
_CONV_TRANSPOSE = re.compile(r"^deconv_layers\.\d+\.0\.0$")


def is_conv_transpose(path: tuple) -> bool:
    """Whether the (unrolled) Flax variable ``path`` is the kernel of a transposed conv."""
    return len(path) >= 2 and path[-1] == "kernel" and bool(_CONV_TRANSPOSE.match(path[-2]))


_LEAF_TO_TORCH = {("params", "kernel"): "weight", ("params", "scale"): "weight", ("params", "bias"): "bias",
                  ("batch_stats", "mean"): "running_mean", ("batch_stats", "var"): "running_var"}


def torch_key(collection: str, path: tuple) -> str:
    """PyTorch state-dict key of an (unrolled) Flax variable."""
    return ".".join(path[:-1] + (_LEAF_TO_TORCH[(collection, path[-1])],))


def torch_to_flax_array(collection: str, path: tuple, value: np.ndarray) -> np.ndarray:
    value = np.asarray(value)
    if collection == "params" and path[-1] == "kernel":
        if value.ndim == 4 and is_conv_transpose(path):  # ConvTranspose2d (I, O, kh, kw) -> (kh, kw, I, O)
            return np.ascontiguousarray(value.transpose(2, 3, 0, 1))
        if value.ndim == 4:  # Conv2d (O, I, kh, kw) -> (kh, kw, I, O)
            return np.ascontiguousarray(value.transpose(2, 3, 1, 0))
        if value.ndim == 2:  # Linear (out, in) -> (in, out)
            return np.ascontiguousarray(value.T)
    return value


def flax_to_torch_array(collection: str, path: tuple, value: Any) -> np.ndarray:
    value = np.asarray(value)
    if collection == "params" and path[-1] == "kernel":
        if value.ndim == 4 and is_conv_transpose(path):
            return np.ascontiguousarray(value.transpose(2, 3, 0, 1))
        if value.ndim == 4:
            return np.ascontiguousarray(value.transpose(3, 2, 0, 1))
        if value.ndim == 2:
            return np.ascontiguousarray(value.T)
    return value
