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
    where = ""
    if isinstance(src, (str, os.PathLike)):
        path = os.fspath(src)
        where = f"{path}: "
        src = _read_checkpoint_file(path)
    if not isinstance(src, Mapping):
        raise ValueError(f"{where}expected a state dict (a mapping of names to tensors), got {type(src).__name__}")
    for k in _CONTAINER_KEYS:  # checkpoint containers: {'state_dict': {...}, 'epoch': ...}
        if k in src and isinstance(src[k], Mapping):
            src = src[k]
            break
    out = {}
    for key, value in src.items():
        if not hasattr(value, "shape"):
            raise ValueError(f"{where}entry {key!r} is a {type(value).__name__}, not a tensor")
        for prefix in ("module.", "model.", "backbone.", "neck."):  # DataParallel, SEG FullModel, mmdet
            while key.startswith(prefix):
                key = key[len(prefix):]
        if key.endswith("num_batches_tracked") or key.startswith("loss."):
            continue
        if hasattr(value, "detach"):
            value = value.detach().cpu().float().numpy() if value.is_floating_point() else value.numpy()
        out[key] = np.asarray(value)
    return out


def _one_line(e: BaseException, prefer: str = "") -> str:
    """``Type: message`` of an exception on one line (the line matching ``prefer`` if there is one)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    pick = next((ln for ln in lines if prefer and prefer.lower() in ln.lower()), lines[0] if lines else "")
    pick = pick if len(pick) <= 300 else pick[:297] + "..."
    return f"{type(e).__name__}: {pick}" if pick else type(e).__name__


def _read_checkpoint_file(path: str) -> Any:
    """``torch.load(weights_only=True)`` / safetensors of ``path``; every failure is one ``ValueError`` /
    ``FileNotFoundError`` / ``PermissionError`` line naming the file and the problem."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    if os.path.isdir(path):
        raise ValueError(f"{path}: is a directory, not a checkpoint file (.pth / .pth.tar / .safetensors)")
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as e:
        raise PermissionError(f"{path}: cannot be read ({e.strerror or e})") from None
    if not head:
        raise ValueError(f"{path}: the file is empty (an interrupted download or copy?)")
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file
        try:
            return load_file(path)
        except Exception as e:  # SafetensorError is not a ValueError
            raise ValueError(f"{path}: not a readable .safetensors file, truncated or corrupt ({_one_line(e)})"
                             ) from None
    try:
        import torch
    except ImportError as e:  # torch is an optional extra
        raise ImportError(f"{path}: reading .pth files needs PyTorch: pip install 'hrnet_jax[torch]'") from e
    import pickle
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only load failed" in str(e).lower():  # refuse anything that is not plain weights
            raise ValueError(f"{path} is not a plain weights file (torch.load(weights_only=True) refused it: "
                             f"{_one_line(e, prefer='unsupported global')}). Only state dicts of tensors are "
                             f"accepted.") from None
        raise ValueError(f"{path}: not a readable PyTorch checkpoint, truncated or corrupt ({_one_line(e)})"
                         ) from None
    except Exception as e:  # a cut-off zip (OSError), a damaged pickle (EOFError, KeyError, RuntimeError...)
        raise ValueError(f"{path}: not a readable PyTorch checkpoint, truncated or corrupt ({_one_line(e)})"
                         ) from None


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
    p.add_argument("--model", required=True, help=f"one of: {', '.join(registry.list_models())}, or a detector "
                                                  "faster_rcnn_hrnetv2p_w18/w32/w40/w48 (mmdetection files)")
    p.add_argument("--out", required=True, help="output directory (Orbax checkpoint)")
    p.add_argument("--backbone-only", action="store_true",
                   help="load only the backbone (e.g. ImageNet weights into a pose/segmentation model)")
    p.add_argument("--non-strict", action="store_true", help="report mismatches instead of failing")
    p.add_argument("--num-outputs", type=int, default=None, help="classes / joints, if not the default")
    a = p.parse_args(argv)
    overrides = {} if a.num_outputs is None else {"num_outputs": a.num_outputs}

    def fail(msg: str) -> int:
        print(f"error: {msg}", file=sys.stderr)
        return 2

    out = os.path.abspath(a.out)
    if os.path.exists(out) and not os.path.isdir(out):
        return fail(f"--out {a.out}: exists and is not a directory")
    from hrnet_jax.models.detection import DETECTOR_NAMES
    detector = a.model in DETECTOR_NAMES  # an mmdetection Faster R-CNN file (HRNet-Object-Detection or mmdet v2)
    name = a.model
    if not detector:
        try:
            name = registry.resolve_name(a.model)
        except (KeyError, ValueError) as e:
            return fail(f"--model {a.model}: {e.args[0] if e.args else e}; detectors: {', '.join(DETECTOR_NAMES)}")
    try:
        if detector:
            from hrnet_jax.models.detection.checkpoint import convention_of, mmdet_to_flax
            conv = convention_of(a.src)
            num = a.num_outputs or 80
            variables, report = mmdet_to_flax(a.src, name, num_classes=num, strict=not a.non_strict,
                                              background=conv["background"], legacy_coords=conv["legacy_coords"])
            overrides = {"num_classes": num, "legacy_coords": conv["legacy_coords"]}
        else:
            variables, report = torch_to_flax(a.src, a.model, backbone_only=a.backbone_only,
                                              strict=not a.non_strict, return_report=True, **overrides)
    except CheckpointMismatchError as e:  # the report names the keys, one per line
        return fail(f"{a.src} does not match {name} (strict; --non-strict loads what matches, "
                    f"--backbone-only the backbone):\n{e}")
    except (ValueError, KeyError, FileNotFoundError, PermissionError, ImportError) as e:
        return fail(str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e))
    except Exception as e:  # anything else while reading: still one line naming the file
        return fail(f"{a.src}: cannot convert ({type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''})")
    print(report.describe())
    # Written next to --out and renamed into place: an interrupted or failed write leaves no half checkpoint.
    parent = os.path.dirname(out)
    tmp = os.path.join(parent, f".{os.path.basename(out)}.tmp-{os.getpid()}")
    old = os.path.join(parent, f".{os.path.basename(out)}.old-{os.getpid()}")
    import shutil
    try:
        os.makedirs(parent, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        save_variables(tmp, variables, {"model": name, "overrides": overrides,
                                        "source": os.path.abspath(a.src), "backbone_only": a.backbone_only,
                                        "fresh": report.fresh})
        if os.path.isdir(out):
            os.rename(out, old)
        os.rename(tmp, out)
    except (Exception, KeyboardInterrupt) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if os.path.isdir(old) and not os.path.exists(out):
            os.rename(old, out)
        if isinstance(e, KeyboardInterrupt):
            raise
        msg = f"{e.strerror} ({e.filename})" if isinstance(e, OSError) and e.strerror else \
            f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        return fail(f"--out {a.out}: could not write the checkpoint: {msg}")
    shutil.rmtree(old, ignore_errors=True)
    print(f"wrote {a.out}")
    return 0

if __name__ == "__main__":
    sys.exit(main())
