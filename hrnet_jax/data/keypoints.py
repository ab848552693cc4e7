"""Declarative keypoint dataset specification.

A :class:`KeypointSpec` holds everything that is dataset-specific in top-down pose estimation: keypoint names,
left/right flip pairs, the skeleton (for drawing and for the synthetic generator), per-keypoint OKS sigmas (for
OKS-NMS and COCOeval), per-joint loss weights and the "upper body" ids used by half-body augmentation.

COCO-17 and MPII-16 are built in (``COCO17``, ``MPII16``, or ``get_spec("coco")``); a custom dataset with any
number of keypoints is declared with a dict or a JSON file::

    {"name": "hand5", "keypoints": ["wrist", "thumb", "index", "middle", "pinky"],
     "flip_pairs": [], "skeleton": [[0, 1], [0, 2], [0, 3], [0, 4]],
     "sigmas": [0.05, 0.05, 0.05, 0.05, 0.05], "upper_body_ids": [0, 1, 2, 3, 4]}

Missing fields get defaults: no flip pairs, no skeleton, sigmas 0.05 (a mid-range COCO value — set real ones:
they are the per-keypoint annotation spread in units of object scale), joint weights 1, upper body = all.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping, Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class KeypointSpec:
    name: str
    keypoints: tuple[str, ...]
    flip_pairs: tuple[tuple[int, int], ...] = ()
    skeleton: tuple[tuple[int, int], ...] = ()
    sigmas: tuple[float, ...] = ()
    joint_weights: tuple[float, ...] = ()
    upper_body_ids: tuple[int, ...] = ()
    # Category id written to / read from COCO-format files (1 = person in COCO).
    category_id: int = 1

    def __post_init__(self):
        k = len(self.keypoints)
        if k == 0:
            raise ValueError("a KeypointSpec needs at least one keypoint")
        # Normalise containers to tuples (from_dict gives lists) and fill defaults.
        object.__setattr__(self, "keypoints", tuple(str(n) for n in self.keypoints))
        object.__setattr__(self, "flip_pairs", tuple((int(a), int(b)) for a, b in self.flip_pairs))
        object.__setattr__(self, "skeleton", tuple((int(a), int(b)) for a, b in self.skeleton))
        sig = tuple(float(s) for s in self.sigmas) or (0.05,) * k
        object.__setattr__(self, "sigmas", sig)
        jw = tuple(float(w) for w in self.joint_weights) or (1.0,) * k
        object.__setattr__(self, "joint_weights", jw)
        ub = tuple(int(i) for i in self.upper_body_ids) if self.upper_body_ids else tuple(range(k))
        object.__setattr__(self, "upper_body_ids", ub)
        if len(self.sigmas) != k:
            raise ValueError(f"{self.name}: {len(self.sigmas)} sigmas for {k} keypoints")
        if len(self.joint_weights) != k:
            raise ValueError(f"{self.name}: {len(self.joint_weights)} joint weights for {k} keypoints")
        seen = set()
        for a, b in self.flip_pairs:
            if not (0 <= a < k and 0 <= b < k) or a == b or a in seen or b in seen:
                raise ValueError(f"{self.name}: bad flip pair {(a, b)} for {k} keypoints")
            seen.update((a, b))
        for a, b in self.skeleton:
            if not (0 <= a < k and 0 <= b < k):
                raise ValueError(f"{self.name}: bad skeleton edge {(a, b)} for {k} keypoints")
        for i in self.upper_body_ids:
            if not 0 <= i < k:
                raise ValueError(f"{self.name}: bad upper-body id {i}")

    @property
    def num_keypoints(self) -> int:
        return len(self.keypoints)

    @property
    def lower_body_ids(self) -> tuple[int, ...]:
        up = set(self.upper_body_ids)
        return tuple(i for i in range(self.num_keypoints) if i not in up)

    def flip_permutation(self) -> np.ndarray:
        """perm such that ``flipped[..., perm]`` swaps every left/right pair (an involution)."""
        perm = np.arange(self.num_keypoints)
        for a, b in self.flip_pairs:
            perm[a], perm[b] = b, a
        return perm

    def sigmas_array(self) -> np.ndarray:
        return np.asarray(self.sigmas, dtype=np.float64)

    # ---- (de)serialisation -------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "KeypointSpec":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown KeypointSpec field(s) {sorted(unknown)}; valid: {sorted(known)}")
        return cls(**{k: v for k, v in d.items()})

    @classmethod
    def from_file(cls, path: str) -> "KeypointSpec":
        with open(path) as f:
            return cls.from_dict(json.load(f))

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        return {k: [list(x) if isinstance(x, tuple) else x for x in v] if isinstance(v, tuple) else v
                for k, v in d.items()}

    def coco_category(self) -> dict:
        """The COCO ``categories`` entry (1-based skeleton, as in person_keypoints_*.json)."""
        return {"id": self.category_id, "name": "person" if self.category_id == 1 else self.name,
                "supercategory": "person", "keypoints": list(self.keypoints),
                "skeleton": [[a + 1, b + 1] for a, b in self.skeleton]}


COCO17 = KeypointSpec(
    name="coco",
    keypoints=("nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
               "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
               "right_knee", "left_ankle", "right_ankle"),
    flip_pairs=((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16)),
    # COCO's own skeleton (person_keypoints_*.json, converted to 0-based).
    skeleton=((15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7), (6, 8), (7, 9),
              (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6)),
    sigmas=tuple(s / 10.0 for s in (.26, .25, .25, .35, .35, .79, .79, .72, .72, .62, .62, 1.07, 1.07, .87, .87,
                                    .89, .89)),
    joint_weights=(1., 1., 1., 1., 1., 1., 1., 1.2, 1.2, 1.5, 1.5, 1., 1., 1.2, 1.2, 1.5, 1.5),
    upper_body_ids=tuple(range(11)),
)

MPII16 = KeypointSpec(
    name="mpii",
    keypoints=("right_ankle", "right_knee", "right_hip", "left_hip", "left_knee", "left_ankle", "pelvis", "thorax",
               "upper_neck", "head_top", "right_wrist", "right_elbow", "right_shoulder", "left_shoulder",
               "left_elbow", "left_wrist"),
    flip_pairs=((0, 5), (1, 4), (2, 3), (10, 15), (11, 14), (12, 13)),
    skeleton=((0, 1), (1, 2), (2, 6), (6, 3), (3, 4), (4, 5), (6, 7), (7, 8), (8, 9), (10, 11), (11, 12), (12, 7),
              (7, 13), (13, 14), (14, 15)),
    # MPII is evaluated with PCKh, not OKS. These approximate per-joint sigmas are only used where an OKS is
    # needed (OKS-NMS, or COCOeval on an MPII-style custom set); not taken from an official source.
    sigmas=(.089, .083, .107, .107, .083, .089, .026, .026, .026, .026, .062, .072, .179, .179, .072, .062),
    joint_weights=(1.5, 1.2, 1., 1., 1.2, 1.5, 1., 1., 1., 1., 1.5, 1.2, 1., 1., 1.2, 1.5),
    upper_body_ids=(7, 8, 9, 10, 11, 12, 13, 14, 15),
)

BUILTIN_SPECS = {"coco": COCO17, "coco17": COCO17, "mpii": MPII16, "mpii16": MPII16}


def get_spec(spec: "str | Mapping[str, Any] | KeypointSpec") -> KeypointSpec:
    """A spec from a built-in name ("coco", "mpii"), a path to a JSON file, a dict, or a spec."""
    if isinstance(spec, KeypointSpec):
        return spec
    if isinstance(spec, Mapping):
        return KeypointSpec.from_dict(spec)
    if isinstance(spec, str):
        if spec.lower() in BUILTIN_SPECS:
            return BUILTIN_SPECS[spec.lower()]
        if spec.endswith(".json"):
            return KeypointSpec.from_file(spec)
        raise KeyError(f"unknown keypoint spec {spec!r}; built in: {sorted(BUILTIN_SPECS)}, or a .json file")
    raise TypeError(f"cannot make a KeypointSpec from {type(spec).__name__}")


def spec_from_coco_category(cat: Mapping[str, Any], sigmas: Sequence[float] = ()) -> KeypointSpec:
    """A spec (without flip pairs) from a COCO ``categories`` entry; flip pairs guessed from left_/right_ names."""
    names = list(cat["keypoints"])
    pairs = []
    for i, n in enumerate(names):
        for pre, other in (("left_", "right_"), ("l_", "r_")):
            if n.startswith(pre) and other + n[len(pre):] in names:
                pairs.append((i, names.index(other + n[len(pre):])))
    return KeypointSpec(name=str(cat.get("name", "custom")), keypoints=tuple(names), flip_pairs=tuple(pairs),
                        skeleton=tuple((a - 1, b - 1) for a, b in cat.get("skeleton", [])), sigmas=tuple(sigmas),
                        category_id=int(cat.get("id", 1)))
