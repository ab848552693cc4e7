"""Convert PyTorch HRNet checkpoints (official repos, timm) to Flax variables and an Orbax checkpoint.

    python -m hrnet_jax.convert SRC --model NAME --out DIR [--backbone-only] [--non-strict]

SRC is a ``.pth``/``.pt``/``.pth.tar`` file (read with ``torch.load(weights_only=True)``: arbitrary pickled
objects are refused) or a ``.safetensors`` file. Accepted containers: a bare state dict, or a dict holding it
under ``state_dict``/``model``/``best_state_dict``; ``module.`` (DataParallel) and ``model.`` (segmentation
FullModel) and mmdet ``backbone.``/``neck.`` prefixes are stripped; ``num_batches_tracked`` and ``loss.*``
buffers are dropped.

Loading is strict by default: any missing, unexpected or shape-mismatched key fails with a report naming the
keys. ``backbone_only=True`` is the official recipe for initialising a pose/segmentation model from ImageNet
weights: backbone keys must all be present, head keys of the source are ignored, and the report lists the
head variables that stay freshly initialised.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from hrnet_jax.models import registry
from hrnet_jax.models.params import (flatten, flax_to_torch_array, restack, torch_key,
                                     torch_to_flax_array, unflatten)

BACKBONE_ROOTS = ("conv1", "bn1", "conv2", "bn2", "layer1", "transition1", "transition2", "transition3",
                  "stage2", "stage3", "stage4")
_CONTAINER_KEYS = ("state_dict", "best_state_dict", "model", "model_state")
_COLLECTIONS = ("params", "batch_stats")


class CheckpointMismatchError(ValueError):
    """Raised by a strict load whose keys or shapes do not match the model; ``.report`` has the details."""

    def __init__(self, report: "LoadReport"):
        self.report = report
        super().__init__(report.describe())


@dataclasses.dataclass
class LoadReport:
    model: str
    loaded: int = 0
    missing: list = dataclasses.field(default_factory=list)
    unexpected: list = dataclasses.field(default_factory=list)
    mismatched: list = dataclasses.field(default_factory=list)  # (key, source shape, expected shape)
    fresh: list = dataclasses.field(default_factory=list)  # backbone_only: model keys left initialised
    ignored: list = dataclasses.field(default_factory=list)  # backbone_only: source keys not used

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def describe(self, limit: int = 20) -> str:
        def show(title, items):
            if not items:
                return []
            lines = [f"  {title} ({len(items)}):"]
            lines += [f"    {it}" for it in items[:limit]]
            if len(items) > limit:
                lines.append(f"    ... and {len(items) - limit} more")
            return lines

        lines = [f"checkpoint -> {self.model}: {self.loaded} tensors loaded"]
        lines += show("missing from checkpoint", self.missing)
        lines += show("unexpected in checkpoint", self.unexpected)
        lines += show("shape mismatch (key, checkpoint, model)", self.mismatched)
        lines += show("left freshly initialised", self.fresh)
        lines += show("ignored (not part of the backbone)", self.ignored)
        return "\n".join(lines)


def load_state_dict(src: Any) -> dict[str, np.ndarray]:
    """Reads a checkpoint (path or mapping) into a flat ``{torch key: numpy array}`` dict, normalised."""
    if isinstance(src, (str, os.PathLike)):
        path = os.fspath(src)
        if not os.path.exists(path):
            raise FileNotFoundError(path)
        if path.endswith(".safetensors"):
            from safetensors.numpy import load_file
            src = load_file(path)
        else:
            try:
                import torch
            except ImportError as e:  # torch is an optional extra
                raise ImportError("reading .pth files needs PyTorch: pip install 'hrnet_jax[torch]'") from e
            try:
                src = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as e:  # UnpicklingError and friends: refuse anything that is not plain weights
                raise ValueError(f"{path} is not a plain weights file (torch.load(weights_only=True) refused "
                                 f"it: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). Only "
                                 f"state dicts of tensors are accepted.") from e
    if not isinstance(src, Mapping):
        raise ValueError(f"expected a state dict (a mapping of names to tensors), got {type(src).__name__}")
    for k in _CONTAINER_KEYS:  # checkpoint containers: {'state_dict': {...}, 'epoch': ...}
        if k in src and isinstance(src[k], Mapping):
            src = src[k]
            break
    out = {}
    for key, value in src.items():
        if not hasattr(value, "shape"):
            raise ValueError(f"entry {key!r} is a {type(value).__name__}, not a tensor")
        for prefix in ("module.", "model.", "backbone.", "neck."):  # DataParallel, SEG FullModel, mmdet
            while key.startswith(prefix):
                key = key[len(prefix):]
        if key.endswith("num_batches_tracked") or key.startswith("loss."):
            continue
        if hasattr(value, "detach"):
            value = value.detach().cpu().float().numpy() if value.is_floating_point() else value.numpy()
        out[key] = np.asarray(value)
    return out


def _abstract(model, input_hw=(64, 64)):
    x = jnp.zeros((1, *input_hw, 3), jnp.float32)
    return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x))


def torch_to_flax(src: Any, name: str, *, backbone_only: bool = False, strict: bool = True,
                  rng: int = 0, return_report: bool = False, **overrides):
    """Converts a PyTorch state dict (or checkpoint path) to Flax variables for ``create(name, **overrides)``.

    Returns ``{"params": ..., "batch_stats": ...}`` laid out for the model as created (scanned by default),
    or ``(variables, report)`` with ``return_report=True``.
    """
    sd = load_state_dict(src)
    unrolled = registry.create(name, **{**overrides, "scan": False})
    abstract = _abstract(unrolled)
    report = LoadReport(model=name)
    used = set()
    fresh_paths = []
    flat_out = {c: {} for c in _COLLECTIONS}
    for col in _COLLECTIONS:
        for path, leaf in flatten(abstract.get(col, {})).items():
            key = torch_key(col, path)
            in_backbone = path[0] in BACKBONE_ROOTS
            if key not in sd:
                if backbone_only and not in_backbone:
                    fresh_paths.append((col, path))
                    report.fresh.append(key)
                else:
                    report.missing.append(key)
                continue
            if backbone_only and not in_backbone:
                fresh_paths.append((col, path))
                report.fresh.append(key)
                continue
            used.add(key)
            arr = torch_to_flax_array(col, path, sd[key])
            if tuple(arr.shape) != tuple(leaf.shape):
                report.mismatched.append((key, tuple(sd[key].shape), tuple(flax_to_torch_array(
                    col, path, np.zeros(leaf.shape, np.float32)).shape)))
                continue
            flat_out[col][path] = arr.astype(leaf.dtype)
            report.loaded += 1
    for key in sorted(set(sd) - used):
        if backbone_only and (key.split(".")[0] not in BACKBONE_ROOTS or key in report.fresh
                              or _is_extra_fuse_output(key)):
            report.ignored.append(key)
        else:
            report.unexpected.append(key)
    if strict and not report.ok:
        raise CheckpointMismatchError(report)
    if fresh_paths or report.missing or report.mismatched:  # fill what was not loaded from a real init
        init = unrolled.init(jax.random.PRNGKey(rng), jnp.zeros((1, 64, 64, 3), jnp.float32))
        for col in _COLLECTIONS:
            for path, leaf in flatten(init.get(col, {})).items():
                flat_out[col].setdefault(path, np.asarray(leaf))
    variables = {col: unflatten(flat_out[col]) for col in _COLLECTIONS}
    target = _abstract(registry.create(name, **overrides))
    variables = {col: restack(variables[col], target[col]) for col in _COLLECTIONS}
    return (variables, report) if return_report else variables


def _is_extra_fuse_output(key: str) -> bool:
    """Stage-4 fuse outputs 1..3 of a classification checkpoint, which a pose model does not have."""
    parts = key.split(".")
    return len(parts) > 3 and parts[0] == "stage4" and parts[2] == "fuse_layers" and parts[3] != "0"


def flax_to_torch(variables: Mapping, name: str, **overrides) -> dict[str, np.ndarray]:
    """The inverse mapping: Flax variables (scanned or not) → a PyTorch-layout state dict of numpy arrays."""
    target = _abstract(registry.create(name, **{**overrides, "scan": False}))
    out = {}
    for col in _COLLECTIONS:
        unrolled = restack(variables[col], target[col])
        for path, v in flatten(unrolled).items():
            out[torch_key(col, path)] = flax_to_torch_array(col, path, v)
    return out


def save_variables(directory: str, variables: Mapping, meta: Mapping | None = None) -> str:
    """Writes ``{"params", "batch_stats"}`` as an Orbax checkpoint at ``directory/variables`` + ``model.json``.

    ``--init_from=directory`` of the training loop and ``hrnet_jax.predict`` read it.
    """
    from hrnet_jax.training.checkpoint import save_variables as save_tree

    directory = os.path.abspath(directory)
    os.makedirs(directory, exist_ok=True)
    save_tree(os.path.join(directory, "variables"), jax.tree_util.tree_map(np.asarray, dict(variables)))
    with open(os.path.join(directory, "model.json"), "w") as f:
        json.dump(dict(meta or {}), f, indent=2)
    return directory


def load_variables(directory: str) -> tuple[dict, dict]:
    """Reads a checkpoint written by :func:`save_variables`; returns ``(variables, meta)``."""
    from hrnet_jax.training.checkpoint import load_variables as load_tree

    directory = os.path.abspath(directory)
    meta_path = os.path.join(directory, "model.json")
    meta = json.load(open(meta_path)) if os.path.exists(meta_path) else {}
    return load_tree(directory), meta


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m hrnet_jax.convert", description=__doc__.split("\n\n")[0])
    p.add_argument("src", help=".pth / .pth.tar / .safetensors checkpoint")
    p.add_argument("--model", required=True, help=f"one of: {', '.join(registry.list_models())}")
    p.add_argument("--out", required=True, help="output directory (Orbax checkpoint)")
    p.add_argument("--backbone-only", action="store_true",
                   help="load only the backbone (e.g. ImageNet weights into a pose/segmentation model)")
    p.add_argument("--non-strict", action="store_true", help="report mismatches instead of failing")
    p.add_argument("--num-outputs", type=int, default=None, help="classes / joints, if not the default")
    a = p.parse_args(argv)
    overrides = {} if a.num_outputs is None else {"num_outputs": a.num_outputs}
    try:
        registry.resolve_name(a.model)
        variables, report = torch_to_flax(a.src, a.model, backbone_only=a.backbone_only,
                                          strict=not a.non_strict, return_report=True, **overrides)
    except (CheckpointMismatchError, ValueError, KeyError, FileNotFoundError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report.describe())
    save_variables(a.out, variables, {"model": registry.resolve_name(a.model), "overrides": overrides,
                                      "source": os.path.abspath(a.src), "backbone_only": a.backbone_only,
                                      "fresh": report.fresh})
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
