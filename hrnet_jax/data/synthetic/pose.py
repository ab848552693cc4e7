"""A synthetic COCO-format keypoint dataset: articulated stick figures on varied backgrounds.

``generate_synthetic_pose_dataset(root, spec=COCO17, ...)`` writes::

    root/images/{train,val}/<12-digit id>.jpg
    root/annotations/person_keypoints_{train,val}.json   (COCO keypoint format, category id = spec.category_id)
    root/annotations/person_detections_val.json          (COCO results format: jittered GT boxes + false
                                                          positives, with scores, to exercise the det-box path)
    root/spec.json                                       (the KeypointSpec)
    root/.hrnet_jax_synthetic.json                       (marker: generation parameters, complete flag)

It writes only into an absent or empty folder (or one it wrote before, see ``MARKER``): an existing user dataset
is never overwritten.

Each image has ``min_people`` (1)..``max_people`` figures. A figure is a template pose (a human template for COCO-17; for any other
spec, a left/right-symmetric random layout derived from the keypoint names, with flip pairs mirrored) that is
articulated along a kinematic tree (rotations of each limb relative to its parent), scaled, rotated and placed —
sometimes across the image border (truncation: joints outside the image are unlabelled, v = 0, x = y = 0).
Figures are drawn with a filled torso, thick limbs coloured by limb type and distinctive joint markers (one
colour/shape per joint type; left and right share it, so horizontal-flip augmentation stays consistent — left and
right are told apart by geometry, the figures face the viewer). Random occluders (and later figures) hide some
joints: those are labelled with v = 1 (occluded but labelled); visible ones v = 2. Backgrounds mix gradients,
noise and random shapes. ``bbox`` is the extent of the drawn figure (clipped); ``area`` is 0.55·w·h of the
unclipped figure box — a COCO-like silhouette proportion, because the pixel area of a stick figure would make OKS
far stricter than on people. Everything is deterministic per ``seed``.
"""
from __future__ import annotations

import json
import os
import re
import zlib
from collections import deque
from typing import Sequence

import cv2
import numpy as np

from hrnet_jax.data.keypoints import COCO17, KeypointSpec
from hrnet_jax.data.synthetic.folder import MARKER, SyntheticFolderError, open_folder, read_marker, write_marker

# Human template for COCO-17 in units of body height, x to the person's left (image right), y down.
_COCO_TEMPLATE = np.array([
    (0.0, -0.40), (0.025, -0.43), (-0.025, -0.43), (0.055, -0.41), (-0.055, -0.41),
    (0.12, -0.30), (-0.12, -0.30), (0.15, -0.13), (-0.15, -0.13), (0.17, 0.02), (-0.17, 0.02),
    (0.08, 0.02), (-0.08, 0.02), (0.09, 0.25), (-0.09, 0.25), (0.09, 0.47), (-0.09, 0.47)], np.float64)
_COCO_PARENTS = np.array([-1, -1, -1, -1, -1, -1, -1, 5, 6, 7, 8, -1, -1, 11, 12, 13, 14])
# (lo, hi) rotation (degrees) of the segment parent->joint relative to the parent's segment; right side mirrored.
_L = {7: (-130, 25), 9: (-90, 90), 13: (-35, 15), 15: (-30, 30)}
_COCO_RANGES = np.zeros((17, 2))
for _j, (_lo, _hi) in _L.items():
    _COCO_RANGES[_j] = (_lo, _hi)
    _COCO_RANGES[_j + 1] = (-_hi, -_lo)


def _spec_key(spec: KeypointSpec) -> bytes:
    return json.dumps(spec.to_dict(), sort_keys=True).encode()


def figure_model(spec: KeypointSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(template (K, 2), parents (K,), angle ranges (K, 2) degrees) for a spec."""
    if spec.keypoints == COCO17.keypoints:
        return _COCO_TEMPLATE.copy(), _COCO_PARENTS.copy(), _COCO_RANGES.copy()
    k = spec.num_keypoints
    rng = np.random.default_rng(zlib.crc32(_spec_key(spec)))
    partner = {a: b for a, b in spec.flip_pairs} | {b: a for a, b in spec.flip_pairs}
    tmpl = np.zeros((k, 2))
    ys = np.linspace(-0.45, 0.45, k) if k > 1 else np.zeros(1)
    ys = rng.permutation(ys)
    for j in range(k):
        if j in partner and partner[j] < j:
            continue
        tmpl[j] = (0.0, ys[j])
        if j in partner:
            x = rng.uniform(0.08, 0.25)
            tmpl[j, 0] = x
            tmpl[partner[j]] = (-x, ys[j] + rng.uniform(-0.02, 0.02))
    if k > 1 and np.allclose(tmpl[:, 0], 0):      # no pairs: spread unpaired joints sideways a little
        tmpl[:, 0] = rng.uniform(-0.2, 0.2, size=k)
    parents = -np.ones(k, np.int64)
    adj = {j: [] for j in range(k)}
    for a, b in spec.skeleton:
        adj[a].append(b)
        adj[b].append(a)
    seen = {0}
    q = deque([0])
    while q:
        u = q.popleft()
        for v in adj[u]:
            if v not in seen:
                seen.add(v)
                parents[v] = u
                q.append(v)
    ranges = np.tile(np.array([-35.0, 35.0]), (k, 1))
    for a, b in spec.flip_pairs:  # mirrored ranges keep the figure symmetric in distribution
        ranges[b] = (-ranges[a, 1], -ranges[a, 0])
    return tmpl, parents, ranges


def _topo_order(parents: np.ndarray) -> list[int]:
    order, done = [], set()

    def visit(j):
        if j in done:
            return
        if parents[j] >= 0:
            visit(int(parents[j]))
        done.add(j)
        order.append(j)
    for j in range(len(parents)):
        visit(j)
    return order


def articulate(template, parents, ranges, rng: np.random.Generator) -> np.ndarray:
    """Random pose: each segment rotated relative to its parent's (accumulated down the tree)."""
    k = len(template)
    ang = np.zeros(k)
    pos = template.copy()
    for j in _topo_order(parents):
        p = int(parents[j])
        if p < 0:
            continue
        ang[j] = ang[p] + np.deg2rad(rng.uniform(ranges[j, 0], ranges[j, 1]))
        c, s = np.cos(ang[j]), np.sin(ang[j])
        d = template[j] - template[p]
        pos[j] = pos[p] + (d[0] * c - d[1] * s, d[0] * s + d[1] * c)
    return pos


def _palette(n: int, seed: int, sat=(170, 255), val=(170, 255)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    hues = (np.arange(n) * (180.0 / max(n, 1)) + rng.uniform(0, 180)) % 180
    hsv = np.stack([hues, rng.uniform(*sat, n), rng.uniform(*val, n)], -1).astype(np.uint8)[None]
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0].astype(np.int64)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    a, b = rng.uniform(-1, 1, 2)
    t = (a * xx / w + b * yy / h)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    img = (c0[None, None] * (1 - t[..., None]) + c1[None, None] * t[..., None])
    img += rng.normal(0, rng.uniform(2, 25), size=(h, w, 3))
    img = np.clip(img, 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(2, 12))):
        col = tuple(int(v) for v in rng.uniform(0, 255, 3) * rng.uniform(0.4, 0.9))
        kind = rng.integers(3)
        p1 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        if kind == 0:
            p2 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            cv2.rectangle(img, p1, p2, col, -1)
        elif kind == 1:
            cv2.circle(img, p1, int(rng.integers(5, max(6, w // 4))), col, -1)
        else:
            p2 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            cv2.line(img, p1, p2, col, int(rng.integers(1, 4)))
    return img


class _Renderer:
    def __init__(self, spec: KeypointSpec):
        self.spec = spec
        perm = spec.flip_permutation()
        sym = np.minimum(np.arange(spec.num_keypoints), perm)
        types = sorted(set(int(s) for s in sym))
        jcol = _palette(len(types), 7)
        self.joint_color = {j: jcol[types.index(int(sym[j]))] for j in range(spec.num_keypoints)}
        self.joint_shape = {j: types.index(int(sym[j])) % 3 for j in range(spec.num_keypoints)}
        ekeys = sorted(set(tuple(sorted((int(sym[a]), int(sym[b])))) for a, b in spec.skeleton))
        ecol = _palette(max(len(ekeys), 1), 11, val=(120, 230))
        self.edge_color = [ecol[ekeys.index(tuple(sorted((int(sym[a]), int(sym[b])))))] for a, b in spec.skeleton]
        self.is_coco = spec.keypoints == COCO17.keypoints

    def draw(self, img, owner, mask, idx, pts, height, rng):
        """Draws one figure into img; marks its pixels in ``owner`` (= idx) and ``mask`` (1)."""
        jitter = rng.uniform(0.8, 1.15)
        thick = max(2, int(round(height * rng.uniform(0.035, 0.05))))
        rad = max(2, int(round(height * 0.028)))
        ip = np.round(pts).astype(np.int32)
        layers = []
        if self.is_coco:
            torso = ip[[5, 6, 12, 11]]
            col = tuple(int(v) for v in np.clip(rng.uniform(60, 200, 3), 0, 255))
            layers.append(("poly", torso, col))
            head_c = pts[[0, 1, 2, 3, 4]].mean(0)
            head_r = max(3, int(round(height * 0.075)))
            layers.append(("circle", (int(round(head_c[0])), int(round(head_c[1]))), head_r,
                           tuple(int(v) for v in rng.uniform(80, 230, 3))))
        for e, (a, b) in enumerate(self.spec.skeleton):
            col = tuple(int(v) for v in np.clip(self.edge_color[e] * jitter, 0, 255))
            layers.append(("line", tuple(ip[a]), tuple(ip[b]), col, thick))
        for j in range(len(ip)):
            layers.append(("joint", j))
        for layer in layers:
            for canvas, val in ((img, None), (owner, idx), (mask, 1)):
                kind = layer[0]
                if kind == "poly":
                    cv2.fillPoly(canvas, [layer[1].reshape(-1, 1, 2)], layer[2] if val is None else int(val))
                elif kind == "circle":
                    cv2.circle(canvas, layer[1], layer[2], layer[3] if val is None else int(val), -1)
                elif kind == "line":
                    cv2.line(canvas, layer[1], layer[2], layer[3] if val is None else int(val), layer[4])
                else:
                    j = layer[1]
                    c = tuple(int(v) for v in self.joint_color[j]) if val is None else int(val)
                    p = tuple(ip[j])
                    shape = self.joint_shape[j]
                    if val is None:
                        cv2.circle(img, p, rad + 1, (0, 0, 0), -1)
                    if shape == 0:
                        cv2.circle(canvas, p, rad, c, -1)
                    elif shape == 1:
                        cv2.rectangle(canvas, (p[0] - rad, p[1] - rad), (p[0] + rad, p[1] + rad), c, -1)
                    else:
                        tri = np.array([(p[0], p[1] - rad - 1), (p[0] - rad - 1, p[1] + rad), (p[0] + rad + 1,
                                                                                                 p[1] + rad)])
                        cv2.fillPoly(canvas, [tri.reshape(-1, 1, 2).astype(np.int32)], c)


def _make_image(rng, spec, model, renderer, h, w, max_people, height_range, min_people=1):
    tmpl, parents, ranges = model
    img = _background(rng, h, w)
    owner = np.full((h, w), -1, np.int32)
    n = int(rng.integers(min_people, max_people + 1))
    people = []
    for i in range(n):
        height = rng.uniform(*height_range) * h
        pose = articulate(tmpl, parents, ranges, rng)
        pose[:, 0] *= rng.uniform(0.8, 1.2)
        rot = np.deg2rad(np.clip(rng.normal(0, 12), -35, 35))
        c, s = np.cos(rot), np.sin(rot)
        pose = pose @ np.array([[c, s], [-s, c]]) * height
        if rng.random() < 0.15:   # truncated at the border
            ctr = np.array([rng.choice([rng.uniform(-0.05, 0.1), rng.uniform(0.9, 1.05)]) * w,
                            rng.uniform(0.2, 0.8) * h])
        else:
            lo = pose.min(0)
            hi = pose.max(0)
            span = hi - lo
            ctr = np.array([rng.uniform(-lo[0], max(-lo[0] + 1, w - hi[0])) if span[0] < w else w / 2,
                            rng.uniform(-lo[1], max(-lo[1] + 1, h - hi[1])) if span[1] < h else h / 2])
        pts = pose + ctr
        mask = np.zeros((h, w), np.uint8)
        renderer.draw(img, owner, mask, i, pts, height, rng)
        if rng.random() < 0.3:  # an occluder over part of this figure
            lo, hi = pts.min(0), pts.max(0)
            oc = rng.uniform(lo, hi)
            half = rng.uniform(0.1, 0.3, 2) * height
            p1 = tuple(int(v) for v in oc - half)
            p2 = tuple(int(v) for v in oc + half)
            col = tuple(int(v) for v in rng.uniform(0, 255, 3) * 0.7)
            if rng.random() < 0.5:
                cv2.rectangle(img, p1, p2, col, -1)
                cv2.rectangle(owner, p1, p2, -2, -1)
            else:
                axes = tuple(int(v) for v in half)
                cv2.ellipse(img, tuple(int(v) for v in oc), axes, float(rng.uniform(0, 180)), 0, 360, col, -1)
                cv2.ellipse(owner, tuple(int(v) for v in oc), axes, float(rng.uniform(0, 180)), 0, 360, -2, -1)
        ys, xs = np.nonzero(mask)
        fig_lo = pts.min(0) - height * 0.04
        fig_hi = pts.max(0) + height * 0.04
        people.append(dict(pts=pts, height=height, xs=xs, ys=ys, fig_box=(fig_lo, fig_hi)))
    anns = []
    for i, p in enumerate(people):
        pts = p["pts"]
        kps = []
        for j in range(spec.num_keypoints):
            x, y = pts[j]
            if not (0 <= x <= w - 1 and 0 <= y <= h - 1):
                kps += [0, 0, 0]
                continue
            v = 2 if owner[int(round(y)), int(round(x))] == i else 1
            kps += [round(float(x), 2), round(float(y), 2), v]
        if len(p["xs"]) == 0:
            continue
        x0, y0 = float(p["xs"].min()), float(p["ys"].min())
        x1, y1 = float(p["xs"].max()), float(p["ys"].max())
        lo, hi = p["fig_box"]
        area = 0.55 * float(hi[0] - lo[0]) * float(hi[1] - lo[1])
        anns.append(dict(bbox=[x0, y0, x1 - x0 + 1, y1 - y0 + 1], area=round(area, 2), keypoints=kps,
                         num_keypoints=int(sum(1 for t in kps[2::3] if t > 0))))
    return img, anns


def generate_split(root: str, split: str, num_images: int, spec: KeypointSpec, image_size_hw=(256, 256),
                   max_people: int = 3, height_range=(0.3, 0.9), seed: int = 0, first_id: int = 1,
                   jpeg_quality: int = 92, min_people: int = 1) -> dict:
    h, w = int(image_size_hw[0]), int(image_size_hw[1])
    img_dir = os.path.join(root, "images", split)
    os.makedirs(img_dir, exist_ok=True)
    model = figure_model(spec)
    renderer = _Renderer(spec)
    images, annotations = [], []
    ann_id = first_id * 10
    for n in range(num_images):
        rng = np.random.default_rng([seed, zlib.crc32(split.encode()), n])
        img, anns = _make_image(rng, spec, model, renderer, h, w, max_people, height_range, min_people)
        image_id = first_id + n
        fname = f"{image_id:012d}.jpg"
        cv2.imwrite(os.path.join(img_dir, fname), img, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
        images.append(dict(id=image_id, file_name=fname, width=w, height=h))
        for a in anns:
            ann_id += 1
            annotations.append(dict(id=ann_id, image_id=image_id, category_id=spec.category_id, iscrowd=0, **a))
    return dict(info=dict(description=f"synthetic pose {split} ({spec.name})", seed=seed), licenses=[],
                images=images, annotations=annotations, categories=[spec.coco_category()])


def jittered_detections(coco: dict, seed: int = 0, category_id: int = 1, fp_per_image: float = 0.3) -> list[dict]:
    """Detector-style boxes: every GT box jittered (shift ~5%, size ~8%) with a score, plus false positives."""
    rng = np.random.default_rng([seed, 99])
    sizes = {im["id"]: (im["width"], im["height"]) for im in coco["images"]}
    dets = []
    for a in coco["annotations"]:
        x, y, w, h = a["bbox"]
        x += rng.normal(0, 0.05) * w
        y += rng.normal(0, 0.05) * h
        w *= float(np.exp(rng.normal(0, 0.08)))
        h *= float(np.exp(rng.normal(0, 0.08)))
        dets.append(dict(image_id=a["image_id"], category_id=category_id,
                         bbox=[round(float(v), 2) for v in (x, y, w, h)], score=round(float(rng.uniform(0.5, 1)), 4)))
    for im_id, (iw, ih) in sizes.items():
        if rng.random() < fp_per_image:
            bw, bh = rng.uniform(0.1, 0.4) * iw, rng.uniform(0.2, 0.6) * ih
            dets.append(dict(image_id=im_id, category_id=category_id,
                             bbox=[round(float(v), 2) for v in (rng.uniform(0, iw - bw), rng.uniform(0, ih - bh), bw,
                                                                bh)],
                             score=round(float(rng.uniform(0.0, 0.4)), 4)))
    return dets


_GENERATOR = "hrnet_jax.data.synthetic.pose"
_OWN_FILE = re.compile(r"^(spec\.json|DONE\.json|annotations/person_(keypoints_(train|val)|detections_val)\.json|"
                       r"images/(train|val)/\d{12}\.jpg)$")


def _params(spec: KeypointSpec, num_train, num_val, image_size_hw, max_people, height_range, seed,
            min_people=1) -> dict:
    p = dict(spec=spec.to_dict(), num_train=int(num_train), num_val=int(num_val),
             image_size_hw=[int(v) for v in image_size_hw], max_people=int(max_people),
             height_range=[float(v) for v in height_range], seed=int(seed))
    if int(min_people) != 1:   # only when set, so folders written before the field existed still match
        p["min_people"] = int(min_people)
    return json.loads(json.dumps(p))


def _paths(root: str) -> dict:
    ann = os.path.join(root, "annotations")
    return dict(root=root, train_ann=os.path.join(ann, "person_keypoints_train.json"),
                val_ann=os.path.join(ann, "person_keypoints_val.json"),
                train_images=os.path.join(root, "images", "train"), val_images=os.path.join(root, "images", "val"),
                val_det=os.path.join(ann, "person_detections_val.json"))


def _read_marker(root: str) -> dict | None:
    m = read_marker(root, _GENERATOR)
    if m is not None:
        return m
    try:  # a folder of the earlier generator version, marked complete by DONE.json (its parameters)
        with open(os.path.join(root, "DONE.json")) as f:
            done = json.load(f)
    except (OSError, ValueError):
        return None
    if isinstance(done, dict) and set(done) == {"spec", "num_train", "num_val", "image_size_hw", "max_people",
                                                "height_range", "seed"}:
        return dict(generator=_GENERATOR, params=done, complete=True, counts={})
    return None


def _claim(root: str, params: dict) -> dict | None:
    """Makes ``root`` ours to write; returns the marker when it already holds this exact, complete dataset."""
    marker = _read_marker(root) if os.path.isdir(root) else None
    files = open_folder(root, "synthetic pose", marker)
    if marker is not None:
        foreign = [f for f in files if f not in (MARKER, MARKER + ".tmp") and not _OWN_FILE.match(f)]
        if marker.get("params") == params and marker.get("complete"):
            paths = _paths(root)
            if all(os.path.isfile(paths[k]) for k in ("train_ann", "val_ann", "val_det")):
                return marker
        if foreign:
            raise SyntheticFolderError(
                f"{root} holds a synthetic pose dataset of other parameters (or an incomplete one) and files the "
                f"generator did not write ({foreign[:3]}...); nothing was changed. Use a new or empty folder, or "
                f"remove the folder to regenerate.")
        for f in files:  # only our own files: regenerate from scratch
            if f != MARKER:
                os.remove(os.path.join(root, f))
    write_marker(root, _GENERATOR, params, complete=False, counts={})
    return None


def generate_synthetic_pose_dataset(root: str, spec: KeypointSpec = COCO17, num_train: int = 500, num_val: int = 100,
                                    image_size_hw: Sequence[int] = (256, 256), max_people: int = 3,
                                    height_range: Sequence[float] = (0.3, 0.9), seed: int = 0,
                                    min_people: int = 1) -> dict:
    """Writes the dataset (see module docstring) into ``root`` and returns the paths and counts.

    ``root`` must be absent, empty, or a folder this generator wrote (marked by :data:`MARKER`, which holds the
    generation parameters); a complete folder of the same parameters is reused as it is. Any other folder is
    refused with :class:`SyntheticFolderError` and left untouched.
    """
    if not 1 <= int(min_people) <= int(max_people):
        raise ValueError(f"need 1 <= min_people <= max_people, got {min_people} and {max_people}")
    params = _params(spec, num_train, num_val, image_size_hw, max_people, height_range, seed, min_people)
    marker = _claim(root, params)
    out = _paths(root)
    if marker is not None:
        out.update(marker.get("counts", {}))
        return out
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    counts = {}
    for split, n, first in (("train", num_train, 1), ("val", num_val, 500000)):
        coco = generate_split(root, split, n, spec, image_size_hw, max_people, tuple(height_range), seed, first,
                              min_people=min_people)
        with open(out[f"{split}_ann"], "w") as f:
            json.dump(coco, f)
        counts[f"num_{split}_instances"] = len(coco["annotations"])
        if split == "val":
            with open(out["val_det"], "w") as f:
                json.dump(jittered_detections(coco, seed, spec.category_id), f)
    with open(os.path.join(root, "spec.json"), "w") as f:
        json.dump(spec.to_dict(), f, indent=1)
    write_marker(root, _GENERATOR, params, complete=True, counts=counts)
    out.update(counts)
    return out


def ensure_synthetic_pose_dataset(root: str, spec: KeypointSpec = COCO17, **kwargs) -> dict:
    """:func:`generate_synthetic_pose_dataset` (which reuses a complete folder of the same parameters)."""
    return generate_synthetic_pose_dataset(root, spec, **kwargs)
