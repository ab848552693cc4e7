"""A synthetic COCO-format object detection dataset: coloured shapes of six categories on cluttered backgrounds.

``generate_synthetic_det_dataset(root, ...)`` writes, in the COCO 2017 layout::

    root/annotations/instances_train2017.json, root/annotations/instances_val2017.json
    root/train2017/<id:012d>.jpg, root/val2017/<id:012d>.jpg
    root/.hrnet_jax_synthetic.json                                   (marker: data/synthetic/folder.py)

Categories (ids not contiguous, as in COCO, so the label ↔ category-id mapping is exercised): 1 disc, 2 square,
4 triangle, 5 bar, 7 ring, 9 cross. Objects vary in size (log-uniform side of ``min_size``..``max_size`` pixels)
and aspect (bars 3-6:1, either orientation; squares and triangles rotated), overlap (a new object may cover up to
a quarter of an earlier one), and are truncated at the image borders (at least half of a shape stays visible).
The background has low-frequency colour noise, grain and clutter that is not annotated: line segments, open
arcs, dots and scribbles. Every box is the tight box of the shape's full (un-occluded) mask inside the image,
``area`` its visible pixel count, ``iscrowd`` 0.

Pure numpy + OpenCV drawing; every image is a function of ``(seed, split, index)``. The folder rules (marker,
refusal of foreign folders, regeneration on other parameters, reuse of a complete folder) are
:mod:`hrnet_jax.data.synthetic.folder`'s.
"""
from __future__ import annotations

import json
import os
import re
import zlib
from typing import Sequence

import cv2
import numpy as np

from hrnet_jax.data.synthetic.folder import MARKER, SyntheticFolderError, open_folder, read_marker, write_marker

__all__ = ["CATEGORIES", "generate_synthetic_det_dataset", "ensure_synthetic_det_dataset", "render_image",
           "SyntheticFolderError"]

_GENERATOR = "hrnet_jax.data.synthetic.detection"
#: (category id, name)
CATEGORIES = ((1, "disc"), (2, "square"), (4, "triangle"), (5, "bar"), (7, "ring"), (9, "cross"))
_OWN_FILE = re.compile(r"^(annotations/instances_(train|val)2017\.json|(train|val)2017/\d{12}\.jpg)(\.tmp)?$")


def _shape_mask(rng: np.random.Generator, kind: str, size: float, cx: float, cy: float, h: int, w: int
                ) -> np.ndarray:
    """The full mask (uint8 0/1, image-sized; parts outside the image are lost) of one shape."""
    m = np.zeros((h, w), np.uint8)
    s = float(size)
    ang = 0.0

    def rot(pts, a):
        c, si = np.cos(a), np.sin(a)
        p = np.asarray(pts, np.float64)
        return np.stack([cx + p[:, 0] * c - p[:, 1] * si, cy + p[:, 0] * si + p[:, 1] * c], 1)

    def poly(pts):
        cv2.fillPoly(m, [np.round(pts * 16).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)

    if kind == "disc":
        cv2.circle(m, (int(round(cx * 16)), int(round(cy * 16))), int(round(s / 2 * 16)), 1, -1, shift=4)
    elif kind == "ring":
        r = s / 2
        cv2.circle(m, (int(round(cx * 16)), int(round(cy * 16))), int(round(r * 16)), 1, -1, shift=4)
        cv2.circle(m, (int(round(cx * 16)), int(round(cy * 16))), int(round(r * rng.uniform(0.5, 0.7) * 16)), 0,
                   -1, shift=4)
    elif kind == "square":
        ang = rng.uniform(-0.35, 0.35)
        d = s / 2 / (abs(np.cos(ang)) + abs(np.sin(ang)))
        poly(rot([(-d, -d), (d, -d), (d, d), (-d, d)], ang))
    elif kind == "triangle":
        ang = rng.uniform(-np.pi, np.pi)
        r = s / 2
        poly(rot([(r * np.cos(t), r * np.sin(t)) for t in (0, 2 * np.pi / 3, 4 * np.pi / 3)], ang))
    elif kind == "bar":
        aspect = rng.uniform(3.0, 6.0)
        long, short = s / 2, s / 2 / aspect
        ang = rng.uniform(-0.15, 0.15) + (np.pi / 2 if rng.random() < 0.5 else 0.0)
        poly(rot([(-long, -short), (long, -short), (long, short), (-long, short)], ang))
    elif kind == "cross":
        a, t = s / 2, s / 2 * rng.uniform(0.28, 0.4)
        ang = rng.uniform(-0.3, 0.3)
        poly(rot([(-a, -t), (a, -t), (a, t), (-a, t)], ang))
        poly(rot([(-t, -a), (t, -a), (t, a), (-t, a)], ang))
    else:
        raise ValueError(kind)
    return m


def _full_area(kind: str, size: float) -> float:
    """Approximate area of the whole shape (to judge how much of it the image border cut off)."""
    s = size
    return {"disc": np.pi * s * s / 4, "ring": np.pi * s * s / 4 * 0.6, "square": s * s * 0.75,
            "triangle": 0.325 * s * s, "bar": s * s / 4.5, "cross": s * s * 0.55}[kind]


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    base = rng.uniform(40, 215, 3)
    low = cv2.resize(rng.normal(0, 28, (4, 4, 3)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    img = base[None, None] + low + rng.normal(0, rng.uniform(2, 9), (h, w, 3))
    img = np.clip(img, 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(3, 12))):  # clutter: not annotated
        col = tuple(float(v) for v in rng.uniform(0, 255, 3))
        kind = rng.integers(4)
        if kind == 0:
            p = rng.uniform(0, (w, h), (2, 2)).astype(np.int32)
            cv2.line(img, tuple(map(int, p[0])), tuple(map(int, p[1])), col, int(rng.integers(1, 4)), cv2.LINE_AA)
        elif kind == 1:
            c = tuple(int(v) for v in rng.uniform(0, (w, h)))
            ax = tuple(int(v) for v in rng.uniform(8, 40, 2))
            a0 = float(rng.uniform(0, 360))
            cv2.ellipse(img, c, ax, float(rng.uniform(0, 180)), a0, a0 + float(rng.uniform(60, 200)), col,
                        int(rng.integers(1, 3)), cv2.LINE_AA)
        elif kind == 2:
            for _ in range(int(rng.integers(3, 12))):
                c = tuple(int(v) for v in rng.uniform(0, (w, h)))
                cv2.circle(img, c, int(rng.integers(1, 4)), col, -1, cv2.LINE_AA)
        else:
            pts = np.cumsum(rng.normal(0, 8, (int(rng.integers(4, 9)), 2)), 0) + rng.uniform(0, (w, h))
            cv2.polylines(img, [pts.astype(np.int32)], False, col, int(rng.integers(1, 3)), cv2.LINE_AA)
    return img


def render_image(rng: np.random.Generator, h: int, w: int, *, min_objects: int = 2, max_objects: int = 7,
                 min_size: float = 14.0, max_size: float = 110.0) -> tuple[np.ndarray, list[dict]]:
    """One RGB image (h, w, 3) uint8 and its objects ``[{"category_id", "bbox" [x, y, w, h], "area"}]``."""
    img = _background(rng, h, w)
    names = [n for _, n in CATEGORIES]
    placed: list[tuple[int, str, np.ndarray]] = []
    target = int(rng.integers(min_objects, max_objects + 1))
    tries = 0
    while len(placed) < target and tries < 40 * target:
        tries += 1
        k = int(rng.integers(len(CATEGORIES)))
        size = float(np.exp(rng.uniform(np.log(min_size), np.log(max_size))))
        m = 0.25 * size
        cx, cy = rng.uniform(-m, w + m), rng.uniform(-m, h + m)
        mask = _shape_mask(rng, names[k], size, cx, cy, h, w).astype(bool)
        area = int(mask.sum())
        if area < 30 or area < 0.5 * _full_area(names[k], size):
            continue
        if any((mask & pm).sum() > 0.25 * min(area, pm.sum()) for _, _, pm in placed):
            continue
        placed.append((CATEGORIES[k][0], names[k], mask))
    vis_total = np.zeros((h, w), bool)
    objects = []
    for cat, _name, mask in placed:  # draw in order: later objects occlude earlier ones
        lum = img[mask].mean(axis=0)
        col = rng.uniform(0, 255, 3)
        for _ in range(8):  # keep the shape visible against what it covers
            if np.abs(col - lum).sum() > 120:
                break
            col = rng.uniform(0, 255, 3)
        shade = col[None] + rng.normal(0, 6, (int(mask.sum()), 3))
        img[mask] = np.clip(shade, 0, 255).astype(np.uint8)
        vis_total |= mask
        ys, xs = np.nonzero(mask)
        x1, y1, x2, y2 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
        objects.append(dict(category_id=int(cat), bbox=[float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
                            mask=mask))
    for i, o in enumerate(objects):  # visible area after the later objects were drawn
        later = np.zeros((h, w), bool)
        for p in objects[i + 1:]:
            later |= p["mask"]
        o["area"] = float((o.pop("mask") & ~later).sum())
    if rng.random() < 0.3:
        img = cv2.GaussianBlur(img, (3, 3), 0)
    return img, objects


def _params(num_train, num_val, image_size_hw, seed, min_objects, max_objects, min_size, max_size) -> dict:
    return dict(num_train=int(num_train), num_val=int(num_val), image_size_hw=[int(v) for v in image_size_hw],
                seed=int(seed), min_objects=int(min_objects), max_objects=int(max_objects),
                min_size=float(min_size), max_size=float(max_size), version=1)


def _expected_files(params: dict) -> list[str]:
    out = []
    for split in ("train", "val"):
        out.append(f"annotations/instances_{split}2017.json")
        out += [f"{split}2017/{i + 1:012d}.jpg" for i in range(params[f"num_{split}"])]
    return out


def _claim(root: str, params: dict) -> dict | None:
    """Makes ``root`` ours to write; returns the marker when it already holds this exact, complete dataset."""
    marker = read_marker(root, _GENERATOR) if os.path.isdir(root) else None
    files = open_folder(root, "synthetic detection", marker)
    if marker is None:
        write_marker(root, _GENERATOR, params, complete=False)
        return None
    if marker.get("params") == params and marker.get("complete"):
        present = set(files)
        if all(p in present for p in _expected_files(params)):
            return marker
    foreign = [f for f in files if f not in (MARKER, MARKER + ".tmp") and not _OWN_FILE.match(f)]
    if foreign:
        raise SyntheticFolderError(
            f"{root} holds a synthetic detection dataset of other parameters (or an incomplete one) and files the "
            f"generator did not write ({foreign[:3]}...); nothing was changed. Use a new or empty folder, or "
            f"remove the folder to regenerate.")
    write_marker(root, _GENERATOR, params, complete=False)
    for f in files:
        if f != MARKER:
            os.remove(os.path.join(root, f))
    return None


def _write_bytes(path: str, data: bytes) -> None:
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def generate_synthetic_det_dataset(root: str, num_train: int = 600, num_val: int = 100,
                                   image_size_hw: Sequence[int] = (256, 256), seed: int = 0, min_objects: int = 2,
                                   max_objects: int = 7, min_size: float = 14.0, max_size: float = 110.0) -> dict:
    """Writes the dataset (module docstring) into ``root``; returns ``{"root", "train_ann", "train_images",
    "val_ann", "val_images", "num_train", "num_val"}``. ``root`` must be absent, empty, or a folder this generator
    wrote; a complete folder of the same parameters is reused as it is, one of other parameters regenerated."""
    h, w = (int(v) for v in image_size_hw)
    if h < 32 or w < 32:
        raise ValueError(f"image_size_hw too small: {image_size_hw}")
    if not 1 <= min_objects <= max_objects:
        raise ValueError(f"need 1 <= min_objects <= max_objects, got {min_objects}, {max_objects}")
    params = _params(num_train, num_val, image_size_hw, seed, min_objects, max_objects, min_size, max_size)
    out = dict(root=root, num_train=int(num_train), num_val=int(num_val))
    for split in ("train", "val"):
        out[f"{split}_ann"] = os.path.join(root, "annotations", f"instances_{split}2017.json")
        out[f"{split}_images"] = os.path.join(root, f"{split}2017")
    if _claim(root, params) is not None:
        return out
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    for split, n in (("train", num_train), ("val", num_val)):
        os.makedirs(out[f"{split}_images"], exist_ok=True)
        images, anns = [], []
        for i in range(int(n)):
            rng = np.random.default_rng([int(seed), zlib.crc32(split.encode()), i])
            img, objs = render_image(rng, h, w, min_objects=min_objects, max_objects=max_objects,
                                     min_size=min_size, max_size=max_size)
            image_id = i + 1
            name = f"{image_id:012d}.jpg"
            ok, buf = cv2.imencode(".jpg", img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 92])
            if not ok:
                raise OSError(f"could not encode {name}")
            _write_bytes(os.path.join(out[f"{split}_images"], name), buf.tobytes())
            images.append(dict(id=image_id, file_name=name, height=h, width=w))
            for o in objs:
                anns.append(dict(id=len(anns) + 1, image_id=image_id, iscrowd=0, **o))
        data = dict(info=dict(description="hrnet_jax synthetic detection shapes", version="1"),
                    images=images, annotations=anns,
                    categories=[dict(id=c, name=nm, supercategory="shape") for c, nm in CATEGORIES])
        _write_bytes(out[f"{split}_ann"], json.dumps(data).encode())
    write_marker(root, _GENERATOR, params, complete=True)
    return out


def ensure_synthetic_det_dataset(root: str, **kwargs) -> dict:
    """:func:`generate_synthetic_det_dataset`, a no-op when ``root`` holds a complete one of the same parameters."""
    return generate_synthetic_det_dataset(root, **kwargs)
