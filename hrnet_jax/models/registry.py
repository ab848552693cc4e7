"""Named models: ``create(name, **overrides)`` and ``list_models()``.

Names follow timm for classification (``hrnet_w18_small_v1`` … ``hrnet_w64``; timm's ``hrnet_w18_small`` is
accepted as an alias), the official repos for the task models (``pose_hrnet_w32``, ``seg_hrnet_w48``,
``seg_hrnet_ocr_w48``, ``hrnetv2p_w32``, ``higher_hrnet_w32``, ...). Overrides are the :class:`HRNet` fields plus the task aliases
``num_classes`` / ``num_joints`` (both set ``num_outputs``), ``execution`` (an
:class:`~hrnet_jax.execution.ExecutionPolicy`) and that policy's fields (``onednn``, ``cut_fusion``,
``pointwise_matmul``) as shorthand.
"""
from __future__ import annotations

import dataclasses
import difflib

from hrnet_jax.execution import ExecutionPolicy, PolicyModel
from hrnet_jax.models.backbone import CONFIGS
from hrnet_jax.models.layers import KAIMING_FAN_OUT, NORMAL_0001
from hrnet_jax.models.model import HRNet

_CLS_WIDTHS = ("w18_small_v1", "w18_small_v2", "w18", "w30", "w32", "w40", "w44", "w48", "w64")


def _specs() -> dict:
    s = {}
    for w in _CLS_WIDTHS:
        s[f"hrnet_{w}"] = dict(width=w, head="classification", num_outputs=1000, kernel_init=KAIMING_FAN_OUT)
    for w in ("w18", "w48"):
        s[f"hrnet_{w}_ssld"] = dict(width=w, head="classification", num_outputs=1000, head_conv_bias=False,
                                    kernel_init=KAIMING_FAN_OUT)
    # Top-down pose (HRNetV1): nearest-upsampling fusion, stage 4 fuses into the high-resolution stream only.
    for w in ("w32", "w48", "w18_small_v1", "w18_small_v2", "w18"):
        s[f"pose_hrnet_{w}"] = dict(width=w, head="pose", num_outputs=17, kernel_init=NORMAL_0001)
    # Bottom-up pose (HigherHRNet): the pose backbone, deconv head; num_outputs = joints (tags = one per joint).
    for w in ("w32", "w48"):
        s[f"higher_hrnet_{w}"] = dict(width=w, head="higher", num_outputs=17, kernel_init=NORMAL_0001)
    # Segmentation (HRNetV2, HRNet-OCR branch): bilinear fusion; align_corners False in the V2 Cityscapes
    # yamls, True (the config default) in the OCR yamls.
    for w in ("w18_small_v1", "w18_small_v2", "w18", "w32", "w48"):
        s[f"seg_hrnet_{w}"] = dict(width=w, head="segmentation", num_outputs=19, upsample="bilinear",
                                   align_corners=False, kernel_init=NORMAL_0001)
    s["seg_hrnet_ocr_w48"] = dict(width="w48", head="ocr", num_outputs=19, upsample="bilinear",
                                  align_corners=True, kernel_init=NORMAL_0001)
    for w in ("w18", "w32", "w40", "w48"):
        s[f"hrnetv2p_{w}"] = dict(width=w, head="v2p", num_outputs=0, kernel_init=KAIMING_FAN_OUT)
    return s


MODEL_SPECS = _specs()
ALIASES = {"hrnet_w18_small": "hrnet_w18_small_v1"}
_FIELDS = {f.name for f in dataclasses.fields(HRNet)} - {"parent", "name", "config"}
_POLICY_FIELDS = {f.name for f in dataclasses.fields(ExecutionPolicy)}


def list_models() -> list[str]:
    return sorted(MODEL_SPECS)


def resolve_name(name: str) -> str:
    name = ALIASES.get(name, name)
    if name not in MODEL_SPECS:
        close = difflib.get_close_matches(name, list(MODEL_SPECS), n=5, cutoff=0.5)
        raise KeyError(f"unknown model {name!r}; closest: {close}; all: {list_models()}")
    return name


def create(name: str, **overrides) -> PolicyModel:
    """Builds a named HRNet under an execution policy (default: ``ExecutionPolicy()``, decided per process).

    Example: ``create("pose_hrnet_w32", num_joints=17, dtype=jnp.bfloat16)``; ``create(name, onednn=False)`` is
    ``create(name, execution=ExecutionPolicy(onednn=False))``. ``.module`` of the result is the bare HRNet."""
    spec = dict(MODEL_SPECS[resolve_name(name)])
    for alias in ("num_classes", "num_joints"):
        if alias in overrides:
            overrides["num_outputs"] = overrides.pop(alias)
    execution = overrides.pop("execution", None) or ExecutionPolicy()
    if not isinstance(execution, ExecutionPolicy):
        raise TypeError(f"execution must be an ExecutionPolicy, got {execution!r}")
    execution = dataclasses.replace(execution, **{k: overrides.pop(k) for k in list(overrides)
                                                  if k in _POLICY_FIELDS})
    width = overrides.pop("width", spec.pop("width"))
    spec.pop("width", None)
    config = overrides.pop("config", None)  # a custom HRNetConfig instead of a named width
    unknown = set(overrides) - _FIELDS
    if unknown:
        valid = _FIELDS | _POLICY_FIELDS | {"num_classes", "num_joints", "width", "config", "execution"}
        raise TypeError(f"unknown override(s) {sorted(unknown)} for {name}; valid: {sorted(valid)}")
    if config is None:
        if width not in CONFIGS:
            raise KeyError(f"unknown width {width!r}; valid: {sorted(CONFIGS)}")
        config = CONFIGS[width]
    return PolicyModel(HRNet(config=config, **{**spec, **overrides}), execution)
