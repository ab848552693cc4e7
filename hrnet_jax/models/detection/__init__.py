"""HRNetV2p + Faster R-CNN (static shapes): ``create_detector(name, num_classes=80, **overrides)``.

Names: ``faster_rcnn_hrnetv2p_w18`` / ``_w32`` / ``_w40`` / ``_w48`` (the HRNet-Object-Detection backbones).
Overrides: ``config`` (a custom :class:`~hrnet_jax.models.backbone.HRNetConfig`, e.g. a narrow demo network) and
every field of :class:`~hrnet_jax.models.detection.faster_rcnn.FasterRCNN` (``dtype``, ``neck_channels``, the
RPN / R-CNN hyper-parameters, ``legacy_coords``...).
"""
from __future__ import annotations

import dataclasses
import difflib

from hrnet_jax.models.backbone import CONFIGS
from hrnet_jax.models.detection.faster_rcnn import FasterRCNN

DETECTOR_WIDTHS = {f"faster_rcnn_hrnetv2p_{w}": w for w in ("w18", "w32", "w40", "w48")}
DETECTOR_NAMES = tuple(DETECTOR_WIDTHS)
_FIELDS = {f.name for f in dataclasses.fields(FasterRCNN)} - {"parent", "name"}


def create_detector(name: str, num_classes: int = 80, **overrides) -> FasterRCNN:
    """A named HRNetV2p Faster R-CNN (a plain Linen module)."""
    if name not in DETECTOR_WIDTHS:
        close = difflib.get_close_matches(name, DETECTOR_NAMES, n=3, cutoff=0.5)
        raise KeyError(f"unknown detector {name!r}; closest: {close}; valid: {list(DETECTOR_NAMES)}")
    unknown = set(overrides) - _FIELDS
    if unknown:
        raise TypeError(f"unknown override(s) {sorted(unknown)} for {name}; valid: {sorted(_FIELDS)}")
    config = overrides.pop("config", None) or CONFIGS[DETECTOR_WIDTHS[name]]
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    return FasterRCNN(config=config, num_classes=num_classes, **overrides)


__all__ = ["DETECTOR_NAMES", "FasterRCNN", "create_detector"]
