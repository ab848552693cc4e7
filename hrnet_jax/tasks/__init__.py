"""Tasks: one folder per HRNet system, each composing data sources/ops with its targets, loss, decoding and
metrics behind the contract of :mod:`hrnet_jax.tasks.base`.

A config names its task in ``config.task.name``: a key of :data:`TASKS` or ``"package.module:ClassName"`` for a
task defined outside this package. :func:`build_task` imports it and builds it from the whole config.
"""
from __future__ import annotations

import difflib
import importlib
from typing import Any

TASKS = {
    "pose": "hrnet_jax.tasks.pose.task:PoseTask",
    "classification": "hrnet_jax.tasks.classification.task:ClassificationTask",
    "segmentation": "hrnet_jax.tasks.segmentation.task:SegmentationTask",
    "detection": "hrnet_jax.tasks.detection.task:DetectionTask",
    "bottomup": "hrnet_jax.tasks.bottomup.task:BottomUpTask",
}


def task_class(name: str) -> type:
    path = TASKS.get(name, name)
    if ":" not in path:
        close = difflib.get_close_matches(name, list(TASKS), n=2, cutoff=0.5)
        hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"unknown task {name!r}{hint} (known: {', '.join(sorted(TASKS))}, or 'module:Class')")
    module, _, cls = path.partition(":")
    return getattr(importlib.import_module(module), cls)


def build_task(config: Any):
    """The task object of an experiment config (``config.task.name`` picks the class)."""
    name = (config.get("task") or {}).get("name", "")
    if not name:
        raise ValueError("config.task.name is empty: say which task this experiment trains "
                         f"({', '.join(sorted(TASKS))}, or 'module:Class')")
    return task_class(name)(config)
