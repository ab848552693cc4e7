"""mmdetection Faster R-CNN checkpoints (HRNet-Object-Detection, mmdetection ``configs/hrnet``) → Flax variables.

Key layout: ``backbone.*`` (the HRNet keys), ``neck.reduction_conv.0.*``, ``neck.fpn_conv.{i}.*``,
``rpn_head.rpn_{conv,cls,reg}.*``, and ``bbox_head.{shared_fcs.{0,1},fc_cls,fc_reg}.*`` (mmdet v1, which the
official HRNet-Object-Detection code forks) or ``roi_head.bbox_head.*`` (mmdet v2+). Every Flax variable of
:class:`~hrnet_jax.models.detection.faster_rcnn.FasterRCNN` sits at exactly that dotted path, so the mapping is
mechanical (``hrnet_jax.models.params.torch_key``).

Class order: mmdet v1 heads have ``fc_cls`` with C + 1 outputs, BACKGROUND FIRST, and ``fc_reg`` with 4 (C + 1)
outputs (a background slot first); mmdet v2+ put the background LAST and have 4C regression outputs. The JAX head
is v2-style; ``background="first"`` reorders ``fc_cls`` and drops the background regression slot (exact: it is
never used), ``"auto"`` decides by the ``fc_reg`` size. The official HRNet files are v1 (background first) and
were trained with mmdet v1's +1 box conventions: build the model with ``legacy_coords=True`` for them
(:func:`convention_of` says which a state dict needs).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hrnet_jax.convert import BACKBONE_ROOTS, CheckpointMismatchError, LoadReport, load_state_dict
from hrnet_jax.models.detection import create_detector
from hrnet_jax.models.params import flatten, restack, torch_key, torch_to_flax_array, unflatten

_COLLECTIONS = ("params", "batch_stats")
_NECK_ROOTS = ("reduction_conv", "fpn_conv")
BACKGROUND_CHOICES = ("auto", "first", "last")


def mmdet_state_dict(src: Any) -> dict:
    """A checkpoint (path or mapping) as ``{mmdet key: numpy array}`` with the v2 ``roi_head.`` prefix removed.

    Reuses :func:`hrnet_jax.convert.load_state_dict` (containers, ``module.``, ``num_batches_tracked``), which
    strips ``backbone.`` / ``neck.``; they are put back here by the key's first component."""
    out = {}
    for key, v in load_state_dict(src).items():
        if key.startswith("roi_head."):
            key = key[len("roi_head."):]
        root = key.split(".")[0]
        if root in BACKBONE_ROOTS:
            key = "backbone." + key
        elif root in _NECK_ROOTS:
            key = "neck." + key
        out[key] = v
    return out


def background_position(sd: dict, num_classes: int) -> str:
    """``"first"`` (mmdet v1: 4 (C + 1) regression outputs) or ``"last"`` (v2: 4C), from ``bbox_head.fc_reg``."""
    w = sd.get("bbox_head.fc_reg.weight")
    if w is None:
        raise ValueError("checkpoint has no bbox_head.fc_reg.weight (nor roi_head.bbox_head.fc_reg.weight): not a "
                         "Faster R-CNN state dict")
    if w.shape[0] == 4 * (num_classes + 1):
        return "first"
    if w.shape[0] == 4 * num_classes:
        return "last"
    raise ValueError(f"bbox_head.fc_reg has {w.shape[0]} outputs; expected 4 * {num_classes} (background last) or "
                     f"4 * {num_classes + 1} (background first); is num_classes={num_classes} right?")


def convention_of(src: Any) -> dict:
    """``{"background": "first"|"last", "legacy_coords": bool}`` a checkpoint needs (v1 layout ⇒ v1 boxes)."""
    sd = mmdet_state_dict(src)
    w = sd.get("bbox_head.fc_cls.weight")
    if w is None:
        raise ValueError("checkpoint has no bbox_head.fc_cls.weight (nor roi_head.bbox_head.fc_cls.weight): not a "
                         "Faster R-CNN state dict")
    bg = background_position(sd, w.shape[0] - 1)
    return {"background": bg, "legacy_coords": bg == "first"}


def _reorder_head(sd: dict, background: str, num_classes: int) -> dict:
    if background == "last":
        return sd
    sd = dict(sd)
    for k in ("bbox_head.fc_cls.weight", "bbox_head.fc_cls.bias"):
        if k in sd and sd[k].shape[0] == num_classes + 1:
            sd[k] = np.concatenate([sd[k][1:], sd[k][:1]])
    for k in ("bbox_head.fc_reg.weight", "bbox_head.fc_reg.bias"):
        if k in sd and sd[k].shape[0] == 4 * (num_classes + 1):
            sd[k] = sd[k][4:]
    return sd


def _abstract(model):
    x = jnp.zeros((1, 64, 64, 3), jnp.float32)
    hw = jnp.array([[64, 64]], jnp.int32)
    return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, hw, train=False))


def mmdet_to_flax(src: Any, name: str, num_classes: int = 80, strict: bool = True, background: str = "auto",
                  rng: int = 0, **overrides):
    """Converts an mmdet Faster R-CNN checkpoint to variables of ``create_detector(name, num_classes, **overrides)``.

    Returns ``(variables, report)`` (:class:`hrnet_jax.convert.LoadReport`); strict loading raises
    :class:`hrnet_jax.convert.CheckpointMismatchError` naming every missing / unexpected / mis-shaped key."""
    if background not in BACKGROUND_CHOICES:
        raise ValueError(f"background={background!r}; valid: {BACKGROUND_CHOICES}")
    sd = mmdet_state_dict(src)
    if background == "auto":
        background = background_position(sd, num_classes)
    sd = _reorder_head(sd, background, num_classes)
    unrolled = create_detector(name, num_classes=num_classes, **{**overrides, "scan": False})
    abstract = _abstract(unrolled)
    report = LoadReport(model=name)
    flat_out = {c: {} for c in _COLLECTIONS}
    used = set()
    for col in _COLLECTIONS:
        for path, leaf in flatten(abstract.get(col, {})).items():
            key = torch_key(col, path)
            if key not in sd:
                report.missing.append(key)
                continue
            used.add(key)
            arr = torch_to_flax_array(col, path, sd[key])
            if tuple(arr.shape) != tuple(leaf.shape):
                report.mismatched.append((key, tuple(sd[key].shape), tuple(leaf.shape)))
                continue
            flat_out[col][path] = np.asarray(arr, leaf.dtype)
            report.loaded += 1
    report.unexpected.extend(sorted(set(sd) - used))
    if strict and not report.ok:
        raise CheckpointMismatchError(report)
    if report.missing or report.mismatched:
        x = jnp.zeros((1, 64, 64, 3), jnp.float32)
        init = unrolled.init(jax.random.PRNGKey(rng), x, jnp.array([[64, 64]], jnp.int32), train=False)
        for col in _COLLECTIONS:
            for path, leaf in flatten(init.get(col, {})).items():
                flat_out[col].setdefault(path, np.asarray(leaf))
    variables = {col: unflatten(flat_out[col]) for col in _COLLECTIONS}
    target = _abstract(create_detector(name, num_classes=num_classes, **overrides))
    variables = {col: restack(variables[col], target[col]) for col in _COLLECTIONS}
    return variables, report
