"""Experiment configuration: nested plain-Python dicts with attribute access, fixed keys and typed overrides.

A :class:`Config` is a ``dict`` (so it pretty-prints, JSON-serialises and works with ``**``) whose keys are fixed
once built: setting an unknown key raises :class:`ConfigError` naming the key and the closest valid ones.
Overrides given as text (``--config.optimizer.lr=1e-3``) are parsed against the type of the current value.
"""
from __future__ import annotations

import ast
import difflib
import json
from typing import Any, Iterable, Mapping


class ConfigError(ValueError):
    """A bad key or value in a configuration or an override."""


class Config(dict):
    """A dict of settings; nested dicts become Configs. ``cfg.a.b`` == ``cfg["a"]["b"]``."""

    def __init__(self, *args, **kwargs):
        super().__init__()
        for k, v in dict(*args, **kwargs).items():
            dict.__setitem__(self, k, _wrap(v))

    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError:
            raise AttributeError(_unknown(key, self)) from None

    def __setattr__(self, key, value):
        self[key] = value

    def __setitem__(self, key, value):
        if key not in self:
            raise ConfigError(_unknown(key, self))
        dict.__setitem__(self, key, _wrap(value))

    def __deepcopy__(self, memo):
        return Config(json.loads(json.dumps(self.to_dict())))

    def copy(self) -> "Config":
        return self.__deepcopy__({})

    def to_dict(self) -> dict:
        return {k: v.to_dict() if isinstance(v, Config) else v for k, v in self.items()}

    def __reduce__(self):   # pickle (grain worker processes, multiprocessing) through the plain dict
        return (type(self), (self.to_dict(),))

    def keys_flat(self, prefix: str = "") -> list[str]:
        out = []
        for k, v in self.items():
            out += v.keys_flat(f"{prefix}{k}.") if isinstance(v, Config) else [f"{prefix}{k}"]
        return out

    def get_path(self, path: str) -> Any:
        node = self
        for part in path.split("."):
            if not isinstance(node, Config) or part not in node:
                raise ConfigError(_unknown(path, self, flat=True))
            node = node[part]
        return node

    def set_path(self, path: str, value: Any) -> None:
        """Sets a dotted key; a string value is parsed against the current value's type."""
        parent_path, _, leaf = path.rpartition(".")
        parent = self.get_path(parent_path) if parent_path else self
        if not isinstance(parent, Config) or leaf not in parent:
            raise ConfigError(_unknown(path, self, flat=True))
        parent[leaf] = coerce(parent[leaf], value, path)

    def override(self, overrides: Mapping[str, Any] | Iterable[str] = ()) -> "Config":
        """Returns a copy with ``{"a.b": value}`` or ``["a.b=value", ...]`` applied (type-checked)."""
        cfg = self.copy()
        items = overrides.items() if isinstance(overrides, Mapping) else (_split(o) for o in overrides)
        for k, v in items:
            cfg.set_path(k, v)
        return cfg


def _wrap(v):
    if isinstance(v, Config):
        return v
    if isinstance(v, Mapping):
        return Config(v)
    if isinstance(v, list):
        return tuple(v)
    return v


def _split(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value")
    k, v = text.split("=", 1)
    return k.strip(), v


def _unknown(key: str, cfg: Config, flat: bool = False) -> str:
    valid = cfg.keys_flat() if flat else list(cfg)
    close = difflib.get_close_matches(key, valid, n=3, cutoff=0.5)
    if not close:  # try the last component against the leaves
        leaf = key.rsplit(".", 1)[-1]
        close = [k for k in valid if difflib.get_close_matches(leaf, [k.rsplit(".", 1)[-1]], cutoff=0.75)][:3]
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return f"unknown config key {key!r}{hint}"


_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


def coerce(current: Any, value: Any, path: str = "value") -> Any:
    """Converts ``value`` (a string from the command line, or a Python value) to the type of ``current``."""
    want = type(current)

    def fail(why=""):
        raise ConfigError(f"bad value for {path}: {value!r} is not a {want.__name__}"
                          f" (current value {current!r}){why}")

    if isinstance(current, Config):
        if isinstance(value, str):  # a dict literal: "{}" empties the group (e.g. task.synthetic={}); an open
            try:                    # (empty) group takes any keys; otherwise its keys are set one by one
                value = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                fail(" (it is a group of settings: set its fields one by one, or give a dict literal)")
            if not isinstance(value, Mapping):
                fail(" (it is a group of settings: set its fields one by one, or give a dict literal)")
            if not current or not value:
                return Config(value)
        if isinstance(value, Mapping) and not current:
            return Config(value)
        if isinstance(value, Mapping):
            out = current.copy()
            for k, v in value.items():
                out.set_path(k, v)
            return out
        fail(" (it is a group of settings; set its fields one by one)")
    if current is None:  # untyped: literal if it parses, else the string
        if isinstance(value, str):
            try:
                return ast.literal_eval(value)
            except (ValueError, SyntaxError):
                return value
        return value
    if isinstance(current, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        fail()
    if isinstance(current, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value.strip().replace("_", ""))
            except ValueError:
                try:  # 1e6 style
                    f = float(value)
                    if f.is_integer():
                        return int(f)
                except ValueError:
                    pass
        fail()
    if isinstance(current, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        fail()
    if isinstance(current, str):
        if isinstance(value, str):
            return value
        fail()
    if isinstance(current, (tuple, list)):
        if isinstance(value, str):
            text = value.strip()
            try:
                parsed = ast.literal_eval(text) if text else ()
            except (ValueError, SyntaxError):
                parsed = tuple(p.strip() for p in text.split(",") if p.strip())
            value = parsed if isinstance(parsed, (tuple, list)) else (parsed,)
        if not isinstance(value, (tuple, list)):
            fail()
        if current:  # element type of the current value
            proto = current[0]
            return tuple(coerce(proto, v, f"{path}[{i}]") for i, v in enumerate(value))
        return tuple(value)
    if isinstance(value, want):
        return value
    fail()
