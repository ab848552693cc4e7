"""The ``model`` config group → an HRNet: the architecture lives in the config itself.

``model = {"name": <hrnet_jax.models name>, "dtype": "float32" | "bfloat16", "arch": {} | {"stem_width": 32,
"stages": ({"num_modules": 1, "num_branches": 1, "block": "BOTTLENECK", "num_blocks": (1,),
"num_channels": (16,)}, ...)}, ...other hrnet_jax.models.create overrides}``. An empty ``arch`` keeps the named
model's published architecture; a filled one replaces it (narrow demo networks, ablations), and every field of it
can be overridden like any other (``--config.model.arch.stem_width=48``). Shared by every HRNet task and by
``hrnet_jax.predict``; needs no experiment module.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from hrnet_jax.models.backbone import HRNetConfig
from hrnet_jax.models.stage import StageConfig
from hrnet_jax.training.precision import compute_dtype

_NOT_CREATE_ARGS = ("name", "dtype", "arch")


def arch_to_dict(arch: HRNetConfig) -> dict:
    """An :class:`HRNetConfig` as plain config values (tuples and dicts)."""
    return {"stem_width": arch.stem_width,
            "stages": tuple({f.name: getattr(s, f.name) for f in dataclasses.fields(StageConfig)}
                            for s in arch.stages)}


def arch_from_dict(d: Mapping[str, Any]) -> HRNetConfig:
    stages = []
    for i, s in enumerate(d["stages"]):
        s = dict(s)
        try:
            stages.append(StageConfig(num_modules=int(s["num_modules"]), num_branches=int(s["num_branches"]),
                                      block=str(s["block"]), num_blocks=tuple(int(v) for v in s["num_blocks"]),
                                      num_channels=tuple(int(v) for v in s["num_channels"])))
        except KeyError as e:
            raise ValueError(f"model.arch.stages[{i}] lacks {e.args[0]!r}; each stage needs "
                             f"{[f.name for f in dataclasses.fields(StageConfig)]}") from None
    return HRNetConfig(stages=tuple(stages), stem_width=int(d.get("stem_width", 64)))


def create_overrides(model_cfg: Mapping[str, Any]) -> dict:
    """``hrnet_jax.models.create`` keyword arguments of a ``model`` config group (name excluded)."""
    kw = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in model_cfg.items() if k not in _NOT_CREATE_ARGS}
    dtype = compute_dtype(model_cfg.get("dtype", "float32"))
    if dtype is not None:
        kw["dtype"] = dtype
    if model_cfg.get("arch"):
        kw["config"] = arch_from_dict(model_cfg["arch"])
    return kw


def build_hrnet(model_cfg: Mapping[str, Any], **head):
    """The HRNet named by ``model_cfg.name`` with the config's overrides and the task's head arguments
    (``num_joints=17``, ``num_classes=1000``...)."""
    from hrnet_jax import models
    if not model_cfg.get("name"):
        raise ValueError("model.name is empty; valid: " + ", ".join(models.list_models()))
    return models.create(model_cfg["name"], **create_overrides(model_cfg), **head)
