"""The experiment registry: ``get_experiment("pose_w32")`` → a :class:`~hrnet_jax.training.config.Config`.

One module per family (``experiments/classification.py``, ``experiments/pose.py``, ...). A family module
defines plain Python and nothing else:

* ``EXPERIMENTS``: ``{name: function returning a config}``; start each config from
  :func:`hrnet_jax.training.defaults.default_config` (``default_config(total_steps=..., task=dict(...))``);

The task class is named by each config's ``task.name`` (:mod:`hrnet_jax.tasks`), so the library never imports
this package; :func:`build_task` here is :func:`hrnet_jax.tasks.build_task`.

The registry imports the families listed in :data:`FAMILIES` (those that exist), so adding a family file
only needs its name listed here once.
"""
from __future__ import annotations

import difflib
import importlib
from types import ModuleType
from typing import Any, Callable

from hrnet_jax.training.config import Config, ConfigError
from hrnet_jax.training.defaults import REQUIRED, default_config

__all__ = ["FAMILIES", "get_experiment", "list_experiments", "build_task", "default_config",
           "UnknownExperimentError"]

FAMILIES = ("experiments.classification", "experiments.pose", "experiments.segmentation",
            "experiments.detection", "experiments.bottomup")


class UnknownExperimentError(KeyError):
    def __str__(self):
        return self.args[0]


def _families() -> dict[str, ModuleType]:
    mods = {}
    for name in FAMILIES:
        try:
            mods[name] = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:  # the family exists but one of its imports is missing: a real error
                raise
    return mods


def _table() -> dict[str, tuple[str, Callable[[], Any]]]:
    table = {}
    for fam, mod in _families().items():
        for exp, fn in getattr(mod, "EXPERIMENTS", {}).items():
            if exp in table:
                raise ValueError(f"experiment {exp!r} defined in both {table[exp][0]} and {fam}")
            table[exp] = (fam, fn)
    return table


def list_experiments() -> list[str]:
    return sorted(_table())


def get_experiment(name: str, overrides: Any = ()) -> Config:
    """The config of experiment ``name``, with ``overrides`` applied: ``{"optimizer.lr": 1e-3}`` or
    ``["optimizer.lr=1e-3"]`` (type-checked against the defaults)."""
    table = _table()
    if name not in table:
        close = difflib.get_close_matches(name, list(table), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise UnknownExperimentError(
            f"unknown experiment {name!r}.{hint} Available: {', '.join(sorted(table)) or '(none)'}")
    fam, fn = table[name]
    cfg = fn()
    cfg = cfg if isinstance(cfg, Config) else Config(cfg)
    missing = [k for k in REQUIRED if k not in cfg]
    if missing:
        raise ConfigError(f"experiment {name!r} lacks the required fields {missing}")
    cfg = Config({**cfg, "experiment": name, "family": fam})
    return cfg.override(overrides)


def build_task(config: Config):
    """The task object of a config from :func:`get_experiment` (``config.task.name`` picks the class)."""
    from hrnet_jax.tasks import build_task as _build
    try:
        return _build(config)
    except ValueError as e:
        raise ConfigError(str(e)) from None
