"""Declarative semantic-segmentation class specification.

A :class:`ClassSpec` holds everything that is dataset-specific about the label maps of a segmentation dataset:
class names and display colours (indexed by *train id* 0..C-1), the raw value each class has in the label PNGs
(``ids``; None when the PNGs already hold train ids), the raw values that mean "ignore" (``ignore_ids``) and the
ignore value of the train-id maps (``ignore_index``, 255 as in the official HRNet code).

Cityscapes (19 evaluated classes, ``*_gtFine_labelIds.png``) is built in (``CITYSCAPES``, or
``get_class_spec("cityscapes")``); any other dataset is declared with a dict or a JSON file, no code::

    {"name": "mydata",
     "classes": [{"name": "road", "color": [128, 64, 128], "id": 7},
                 {"name": "car", "color": [0, 0, 142], "id": 26}],
     "ignore_index": 255, "ignore_ids": [0, 1]}

``"id"`` is optional but must be given for all classes or for none (without ids, label value i is train id i);
a list of ids merges those raw classes into one (``{"name": "vehicle", "id": [26, 27, 28]}``; predictions are
written back with the first).
The raw value ``ignore_index`` always means "ignore" as well. A label value that is neither a class id nor an
ignore value is an error (:class:`LabelValueError`) rather than silently ignored: it usually means the wrong label
files (e.g. ``*_color.png`` or ``*_instanceIds.png``) or the wrong spec.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping, Sequence

import cv2
import numpy as np


class LabelValueError(ValueError):
    """A label map holds values the class spec does not declare."""

    def __init__(self, path: str, values: Sequence[int], spec: "ClassSpec"):
        self.path, self.values = path, tuple(int(v) for v in values)
        shown = list(self.values[:20]) + (["..."] if len(self.values) > 20 else [])
        super().__init__(
            f"{path or '<label array>'}: undeclared label value(s) {shown} for class spec {spec.name!r}; "
            f"declared: {spec.describe_values()}. Check that these are the right label files for this spec "
            f"(e.g. Cityscapes needs *_gtFine_labelIds.png), or declare the values in the spec "
            f"(as class ids or in ignore_ids)")


def _compress(values: Sequence[int]) -> str:
    """[0, 1, 2, 3, 5, 9, 10] -> '0-3, 5, 9-10'."""
    vs = sorted(set(int(v) for v in values))
    parts, i = [], 0
    while i < len(vs):
        j = i
        while j + 1 < len(vs) and vs[j + 1] == vs[j] + 1:
            j += 1
        parts.append(str(vs[i]) if i == j else f"{vs[i]}-{vs[j]}")
        i = j + 1
    return ", ".join(parts)


@dataclasses.dataclass(frozen=True)
class ClassSpec:
    names: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...]
    ignore_index: int = 255
    ids: tuple[int, ...] | None = None
    ignore_ids: tuple[int, ...] = ()
    name: str = "custom"

    def __post_init__(self):
        n = self.name
        names = tuple(str(x) for x in self.names)
        object.__setattr__(self, "names", names)
        c = len(names)
        if c == 0:
            raise ValueError(f"class spec {n!r}: no classes")
        if len(set(names)) != c:
            dup = sorted({x for x in names if names.count(x) > 1})
            raise ValueError(f"class spec {n!r}: duplicate class name(s) {dup}")
        colors = []
        if len(self.colors) != c:
            raise ValueError(f"class spec {n!r}: {len(self.colors)} colours for {c} classes")
        for cname, col in zip(names, self.colors):
            try:
                rgb = tuple(col)
                ok = len(rgb) == 3 and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                                            and 0 <= v <= 255 for v in rgb)
            except TypeError:
                ok = False
            if not ok:
                raise ValueError(f"class spec {n!r}: class {cname!r} has colour {col!r}; "
                                 f"a colour is [r, g, b] with integers in 0..255")
            colors.append(tuple(int(v) for v in rgb))
        object.__setattr__(self, "colors", tuple(colors))
        ii = self.ignore_index
        if isinstance(ii, bool) or not isinstance(ii, (int, np.integer)) or not c <= ii <= 255:
            raise ValueError(f"class spec {n!r}: ignore_index {ii!r} must be an integer in [{c}, 255] (train-id "
                             f"maps are uint8 and 0..{c - 1} are the classes)")
        object.__setattr__(self, "ignore_index", int(ii))

        def ints(vals, what):
            out = []
            for v in vals:
                if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 0 <= v <= 255:
                    raise ValueError(f"class spec {n!r}: {what} {v!r} is not an integer in 0..255 "
                                     f"(label PNGs are read as 8-bit values)")
                out.append(int(v))
            return tuple(out)

        ign = ints(self.ignore_ids, "ignore id")
        if len(set(ign)) != len(ign):
            raise ValueError(f"class spec {n!r}: duplicate ignore ids {sorted(v for v in set(ign) if ign.count(v) > 1)}")
        object.__setattr__(self, "ignore_ids", ign)
        if self.ids is not None:
            if len(self.ids) != c:
                raise ValueError(f"class spec {n!r}: {len(self.ids)} class ids for {c} classes")
            # an entry is one raw value or several (raw classes merged into one train class, the first one is
            # the value to_raw_ids writes)
            groups = tuple(ints(v if isinstance(v, (tuple, list)) else (v,), "class id") for v in self.ids)
            if any(not g for g in groups):
                raise ValueError(f"class spec {n!r}: an empty id list (classes "
                                 f"{[names[i] for i, g in enumerate(groups) if not g]})")
            flat = [v for g in groups for v in g]
            if len(set(flat)) != len(flat):
                dup = sorted({v for v in flat if flat.count(v) > 1})
                raise ValueError(f"class spec {n!r}: duplicate class id(s) {dup} "
                                 f"(classes {[names[i] for i in range(c) if set(groups[i]) & set(dup)]})")
            object.__setattr__(self, "ids", tuple(g[0] if len(g) == 1 else g for g in groups))
        else:
            groups = tuple((i,) for i in range(c))
        owner = {v: i for i, g in enumerate(groups) for v in g}
        clash = sorted(set(owner) & (set(ign) | {self.ignore_index}))
        if clash:
            who = [names[owner[v]] for v in clash]
            raise ValueError(f"class spec {n!r}: label value(s) {clash} are both a class ({who}) and ignore "
                             f"(ignore_ids {list(ign)}, ignore_index {self.ignore_index})")

    def id_groups(self) -> tuple[tuple[int, ...], ...]:
        """The raw label values of each train id (one, or several merged into the class)."""
        if self.ids is None:
            return tuple((i,) for i in range(self.num_classes))
        return tuple(v if isinstance(v, tuple) else (v,) for v in self.ids)

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def raw_class_ids(self) -> tuple[int, ...]:
        """The label-file value of each train id."""
        return tuple(g[0] for g in self.id_groups())

    def describe_values(self) -> str:
        return (f"class ids {_compress([v for g in self.id_groups() for v in g])}, ignore "
                f"{_compress(set(self.ignore_ids) | {self.ignore_index})}")

    def lut(self) -> np.ndarray:
        """(256,) int32: raw label value -> train id, ``ignore_index`` for ignore values, -1 for undeclared."""
        t = np.full((256,), -1, np.int32)
        t[list(self.ignore_ids)] = self.ignore_index
        t[self.ignore_index] = self.ignore_index
        for i, g in enumerate(self.id_groups()):
            t[list(g)] = i
        return t

    def to_train_ids(self, raw: np.ndarray, path: str = "") -> np.ndarray:
        """Raw label map (H, W) (or (H, W, 1)) of integers -> (H, W) uint8 train ids (ignore = ``ignore_index``).

        :class:`LabelValueError` (naming ``path``) when it holds values the spec does not declare."""
        raw = np.asarray(raw)
        if raw.ndim == 3 and raw.shape[-1] == 1:
            raw = raw[..., 0]
        if raw.ndim != 2:
            raise ValueError(f"{path or '<label array>'}: a label map must be (H, W) single-channel, got shape "
                             f"{raw.shape}")
        if not (np.issubdtype(raw.dtype, np.integer) or raw.dtype == np.bool_):
            raise ValueError(f"{path or '<label array>'}: label map dtype {raw.dtype} is not integer")
        lut = self.lut()
        if raw.dtype != np.uint8:
            lo, hi = (int(raw.min()), int(raw.max())) if raw.size else (0, 0)
            if lo < 0 or hi > 255:
                bad = np.unique(raw[(raw < 0) | (raw > 255)])
                inside = np.unique(raw[(raw >= 0) & (raw <= 255)])
                bad = np.concatenate([bad, inside[lut[inside] < 0]])
                raise LabelValueError(path, sorted(bad.tolist()), self)
            raw = raw.astype(np.uint8)
        counts = np.bincount(raw.ravel(), minlength=256)
        undeclared = np.nonzero((counts > 0) & (lut < 0))[0]
        if undeclared.size:
            raise LabelValueError(path, undeclared.tolist(), self)
        out = cv2.LUT(raw, np.where(lut < 0, 0, lut).astype(np.uint8))
        return out.reshape(raw.shape)

    def to_raw_ids(self, train: np.ndarray) -> np.ndarray:
        """Train ids -> label-file values (uint8), e.g. for benchmark-server submission (Cityscapes wants
        ``labelIds`` images). Ignore becomes 0 ("unlabeled") for specs with ``ids``, else stays ``ignore_index``."""
        train = np.asarray(train)
        c = self.num_classes
        inv = np.full((256,), -1, np.int32)
        inv[:c] = self.raw_class_ids()
        inv[self.ignore_index] = 0 if self.ids is not None else self.ignore_index
        bad = (train < 0) | (train > 255)
        if not bad.any():
            bad = inv[train.astype(np.int64)] < 0
        if bad.any():
            raise ValueError(f"to_raw_ids: values {np.unique(train[bad])[:20].tolist()} are neither a train id "
                             f"(0..{c - 1}) nor ignore ({self.ignore_index})")
        return inv[train.astype(np.int64)].astype(np.uint8)

    def palette(self) -> np.ndarray:
        """(256, 3) uint8 RGB per train id; black for ignore and every other value."""
        p = np.zeros((256, 3), np.uint8)
        p[:self.num_classes] = np.asarray(self.colors, np.uint8)
        return p

    def colorize(self, train: np.ndarray) -> np.ndarray:
        """Train ids (H, W) -> (H, W, 3) uint8 RGB; ignore (and anything outside 0..C-1) is black."""
        train = np.asarray(train)
        idx = np.where((train >= 0) & (train < self.num_classes), train, 255).astype(np.int64)
        return self.palette()[idx]

    # ---- (de)serialisation -------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        classes = []
        for i, (nm, col) in enumerate(zip(self.names, self.colors)):
            d = {"name": nm, "color": list(col)}
            if self.ids is not None:
                d["id"] = list(self.ids[i]) if isinstance(self.ids[i], tuple) else self.ids[i]
            classes.append(d)
        return {"name": self.name, "classes": classes, "ignore_index": self.ignore_index,
                "ignore_ids": list(self.ignore_ids)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ClassSpec":
        known = {"name", "classes", "ignore_index", "ignore_ids"}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown class-spec field(s) {sorted(unknown)}; valid: {sorted(known)}")
        name = str(d.get("name", "custom"))
        classes = d.get("classes")
        if not isinstance(classes, Sequence) or isinstance(classes, (str, bytes)) or not classes:
            raise ValueError(f"class spec {name!r}: 'classes' must be a non-empty list of "
                             f"{{\"name\": ..., \"color\": [r, g, b], \"id\": ...}}")
        names, colors, ids = [], [], []
        for k, c in enumerate(classes):
            if not isinstance(c, Mapping):
                raise ValueError(f"class spec {name!r}: classes[{k}] is {c!r}, not an object")
            bad = set(c) - {"name", "color", "id"}
            if bad or "name" not in c or "color" not in c:
                raise ValueError(f"class spec {name!r}: classes[{k}] = {dict(c)!r}: needs 'name' and 'color' "
                                 f"(and optionally 'id'){'; unknown ' + str(sorted(bad)) if bad else ''}")
            names.append(c["name"])
            colors.append(c["color"])
            ids.append(tuple(c["id"]) if isinstance(c.get("id"), (list, tuple)) else c.get("id"))
        with_id = [i for i in ids if i is not None]
        if with_id and len(with_id) != len(ids):
            missing = [str(names[k]) for k, i in enumerate(ids) if i is None]
            raise ValueError(f"class spec {name!r}: 'id' must be given for all classes or for none; "
                             f"missing for {missing}")
        return cls(names=tuple(names), colors=tuple(colors),
                   ignore_index=d.get("ignore_index", 255), ids=tuple(ids) if with_id else None,
                   ignore_ids=tuple(d.get("ignore_ids", ())), name=name)

    @classmethod
    def from_json(cls, path: str) -> "ClassSpec":
        with open(path) as f:
            try:
                d = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: not valid JSON ({e})") from e
        try:
            return cls.from_dict(d)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from e


CITYSCAPES = ClassSpec(
    name="cityscapes",
    names=("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
           "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"),
    # cityscapesScripts helpers/labels.py colours of the 19 evaluated classes
    colors=((128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
            (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
            (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32)),
    ignore_index=255,
    ids=(7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33),
    # every other labelIds value (unlabeled, ego vehicle, ..., parking, rail track, guard rail, bridge, tunnel,
    # polegroup, caravan, trailer); license plate (-1) is not a uint8 value (255 = ignore_index covers it)
    ignore_ids=(0, 1, 2, 3, 4, 5, 6, 9, 10, 14, 15, 16, 18, 29, 30),
)

#: Class weights of the official HRNet-Semantic-Segmentation Cityscapes loss (train ids 0..18).
CITYSCAPES_CLASS_WEIGHTS = (0.8373, 0.918, 0.866, 1.0345, 1.0166, 0.9969, 0.9754, 1.0489, 0.8786, 1.0023, 0.9539,
                            0.9843, 1.1116, 0.9037, 1.0865, 1.0955, 1.0865, 1.1529, 1.0507)

#: Cityscapes' own categories (flat split into road and sidewalk): each class merges the raw ids of its
#: Cityscapes classes; "void" ids stay ignore. 8 classes, for coarse models and the offline seg_demo.
CITYSCAPES_CATEGORIES = ClassSpec(
    name="cityscapes_categories",
    names=("road", "sidewalk", "construction", "object", "nature", "sky", "human", "vehicle"),
    colors=((128, 64, 128), (244, 35, 232), (70, 70, 70), (153, 153, 153), (107, 142, 35), (70, 130, 180),
            (220, 20, 60), (0, 0, 142)),
    ignore_index=255,
    ids=(7, 8, (11, 12, 13), (17, 19, 20), (21, 22), 23, (24, 25), (26, 27, 28, 31, 32, 33)),
    ignore_ids=CITYSCAPES.ignore_ids,
)

BUILTIN_CLASS_SPECS = {"cityscapes": CITYSCAPES, "cityscapes_categories": CITYSCAPES_CATEGORIES}


def get_class_spec(spec: "str | os.PathLike | Mapping[str, Any] | ClassSpec") -> ClassSpec:
    """A spec from a built-in name ("cityscapes"), a path to a JSON file, a dict, or a spec."""
    if isinstance(spec, ClassSpec):
        return spec
    if isinstance(spec, Mapping):
        return ClassSpec.from_dict(spec)
    if isinstance(spec, (str, os.PathLike)):
        s = os.fspath(spec)
        if s.lower() in BUILTIN_CLASS_SPECS:
            return BUILTIN_CLASS_SPECS[s.lower()]
        if s.endswith(".json") or os.path.isfile(s):
            if not os.path.isfile(s):
                raise FileNotFoundError(f"class spec file {s} does not exist")
            return ClassSpec.from_json(s)
        raise KeyError(f"unknown class spec {s!r}; built in: {sorted(BUILTIN_CLASS_SPECS)}, or a path to a .json "
                       f"file ({{\"name\": ..., \"classes\": [{{\"name\": ..., \"color\": [r, g, b]}}, ...]}})")
    raise TypeError(f"cannot make a ClassSpec from {type(spec).__name__}")
