"""A synthetic Cityscapes-format semantic segmentation dataset: procedurally drawn street scenes.

``generate_synthetic_seg_dataset(root, ...)`` writes, exactly in the Cityscapes layout::

    root/leftImg8bit/{train,val}/<city>/<city>_<seq:06d>_<frame:06d>_leftImg8bit.png      (RGB scene, 8-bit PNG)
    root/gtFine/{train,val}/<city>/<city>_<seq:06d>_<frame:06d>_gtFine_labelIds.png      (uint8, RAW label ids)
    root/gtFine/{train,val}/<city>/<city>_<seq:06d>_<frame:06d>_gtFine_color.png         (only if write_color)
    root/.hrnet_jax_synthetic.json                                                         (marker, see pose.py)

Label files hold the raw Cityscapes ``id`` (road 7, sidewalk 8, building 11, ..., bicycle 33), not train ids,
plus a few ignore ids (0 unlabeled, 1 ego vehicle: a car hood at the bottom of some images, 3 out of roi: a thin
image border in some images). Train and val use different city names, like Cityscapes (the style does not depend
on the city).

A scene is a pinhole view down a street: a ground plane (road with perspective-correct lane markings and
crosswalks, sidewalks with paving tiles and curbs, grass or dirt terrain strips) bounded on both sides by facade
planes split into segments along the street (buildings with floors of windows and shop fronts, low walls, fences,
hedges, with trees or set-back buildings behind), a cross facade where the street ends (or the street runs to the
horizon), and a sky with clouds above. Objects stand on the ground at a depth Z and are drawn in 3D perspective
(cars, buses and trucks as boxes with side, top and rear faces, windows, wheels, lights) or as 2D figures scaled
by ``f / Z`` (people, cyclists and motorcyclists with their bicycle / motorcycle, poles with traffic signs,
traffic lights and street lamps, trees), far to near, so nearer objects occlude farther ones. Each class has its
own per-image colour and texture (noise at three scales weighted per class, windows, tiles, leaves, bars) and the
whole image gets a random exposure, colour cast, haze and sensor noise: some images are dark, some bright.

Pure numpy + OpenCV drawing (no per-pixel Python loops); every image is a function of ``(seed, split, index)``.
The folder conventions (marker, refusal of foreign folders, regeneration on other parameters, reuse of a complete
folder) follow :mod:`hrnet_jax.data.synthetic.pose`.
"""
from __future__ import annotations

import os
import re
import zlib
from typing import Sequence

import cv2
import numpy as np

from hrnet_jax.data.synthetic.folder import (MARKER, SyntheticFolderError, open_folder, read_marker,
                                             write_marker)

__all__ = ["CITYSCAPES_LABELS", "SyntheticFolderError", "MARKER", "generate_synthetic_seg_dataset",
           "ensure_synthetic_seg_dataset", "render_scene", "colorize", "cityscapes_name"]

# Cityscapes labels: id -> (name, train id (255 = ignore), colour RGB).
CITYSCAPES_LABELS = {
    0: ("unlabeled", 255, (0, 0, 0)), 1: ("ego vehicle", 255, (0, 0, 0)),
    2: ("rectification border", 255, (0, 0, 0)), 3: ("out of roi", 255, (0, 0, 0)), 4: ("static", 255, (0, 0, 0)),
    5: ("dynamic", 255, (111, 74, 0)), 6: ("ground", 255, (81, 0, 81)), 7: ("road", 0, (128, 64, 128)),
    8: ("sidewalk", 1, (244, 35, 232)), 9: ("parking", 255, (250, 170, 160)), 10: ("rail track", 255, (230, 150, 140)),
    11: ("building", 2, (70, 70, 70)), 12: ("wall", 3, (102, 102, 156)), 13: ("fence", 4, (190, 153, 153)),
    14: ("guard rail", 255, (180, 165, 180)), 15: ("bridge", 255, (150, 100, 100)),
    16: ("tunnel", 255, (150, 120, 90)), 17: ("pole", 5, (153, 153, 153)), 18: ("polegroup", 255, (153, 153, 153)),
    19: ("traffic light", 6, (250, 170, 30)), 20: ("traffic sign", 7, (220, 220, 0)),
    21: ("vegetation", 8, (107, 142, 35)), 22: ("terrain", 9, (152, 251, 152)), 23: ("sky", 10, (70, 130, 180)),
    24: ("person", 11, (220, 20, 60)), 25: ("rider", 12, (255, 0, 0)), 26: ("car", 13, (0, 0, 142)),
    27: ("truck", 14, (0, 0, 70)), 28: ("bus", 15, (0, 60, 100)), 29: ("caravan", 255, (0, 0, 90)),
    30: ("trailer", 255, (0, 0, 110)), 31: ("train", 16, (0, 80, 100)), 32: ("motorcycle", 17, (0, 0, 230)),
    33: ("bicycle", 18, (119, 11, 32)),
}
UNLABELED, EGO, ROI = 0, 1, 3
ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, LIGHT, SIGN = 7, 8, 11, 12, 13, 17, 19, 20
VEG, TERRAIN, SKY, PERSON, RIDER, CAR, TRUCK, BUS, MOTO, BIKE = 21, 22, 23, 24, 25, 26, 27, 28, 32, 33

_COLOR_LUT = np.zeros((256, 3), np.uint8)
for _i, (_n, _t, _c) in CITYSCAPES_LABELS.items():
    _COLOR_LUT[_i] = _c

# Per-class texture amplitudes (relative brightness modulation) of fine (per pixel), mid (4 px) and coarse
# (16 px) noise.
_AMP = np.zeros((3, 256), np.float32)
for _cls, (_f, _m, _c) in {
        ROAD: (0.05, 0.02, 0.04), SIDEWALK: (0.05, 0.04, 0.05), BUILDING: (0.035, 0.02, 0.05),
        WALL: (0.07, 0.06, 0.06), FENCE: (0.04, 0.03, 0.03), POLE: (0.03, 0.0, 0.02), LIGHT: (0.03, 0.0, 0.0),
        SIGN: (0.02, 0.0, 0.0), VEG: (0.12, 0.28, 0.10), TERRAIN: (0.10, 0.10, 0.10), SKY: (0.006, 0.0, 0.0),
        PERSON: (0.04, 0.02, 0.0), RIDER: (0.04, 0.02, 0.0), CAR: (0.02, 0.0, 0.02), TRUCK: (0.025, 0.01, 0.03),
        BUS: (0.02, 0.0, 0.02), MOTO: (0.03, 0.0, 0.0), BIKE: (0.03, 0.0, 0.0), EGO: (0.01, 0.0, 0.02)}.items():
    _AMP[:, _cls] = (_f, _m, _c)

_TRAIN_CITIES = ("avonmark", "bellhaven", "corvale", "dunmere", "elstow", "fernlea", "glenholt", "harwick",
                 "islebury", "jarrow", "kelton", "lindmoor")
_VAL_CITIES = ("mistral", "norwood", "oakridge", "pemberly", "quarston", "ravensby", "stillwater", "thornbury",
               "umberfield", "valemont", "westerly", "yarrowby")
_FRAME = 19  # Cityscapes' annotated frame is the 20th of each snippet

_BUILDING_COLORS = np.array([(205, 185, 150), (150, 80, 60), (212, 210, 202), (140, 140, 146), (222, 200, 140),
                             (165, 182, 200), (210, 162, 150), (115, 88, 72), (185, 170, 160), (170, 120, 80)],
                            np.float32)
_SIDEWALK_COLORS = np.array([(150, 150, 152), (178, 162, 138), (160, 112, 102), (172, 166, 142), (130, 128, 135)],
                            np.float32)
_CAR_COLORS = np.array([(225, 225, 228), (165, 168, 172), (25, 25, 28), (70, 72, 78), (170, 25, 25),
                        (30, 60, 150), (20, 30, 70), (30, 90, 50), (210, 180, 40), (110, 70, 40), (120, 20, 30)],
                       np.float32)
_CLOTHES = np.array([(40, 40, 45), (200, 200, 195), (60, 70, 120), (150, 40, 40), (70, 100, 60), (180, 150, 100),
                     (110, 60, 120), (30, 50, 90), (210, 120, 40), (120, 120, 125), (90, 60, 40)], np.float32)
_SKIN = np.array([(235, 195, 165), (200, 150, 110), (140, 95, 65), (90, 60, 40), (225, 180, 150)], np.float32)


def _jit(rng, col, amount=12.0):
    return np.clip(np.asarray(col, np.float32) + rng.uniform(-amount, amount, 3).astype(np.float32), 0, 255)


def _pick(rng, table, amount=12.0):
    return _jit(rng, table[int(rng.integers(len(table)))], amount)


def _tup(col):
    return tuple(float(v) for v in col)


class _Ctx:
    """Camera (focal f px, horizon y_h, vanishing point x_v, camera height hc m) and the two canvases."""

    def __init__(self, img, lab, f, x_v, y_h, hc):
        self.img, self.lab, self.f, self.x_v, self.y_h, self.hc = img, lab, f, x_v, y_h, hc

    def project(self, pts):
        """(N, 3) world points (X right, Y up from the ground, Z forward) -> (N, 2) pixel coordinates."""
        pts = np.asarray(pts, np.float64)
        z = np.maximum(pts[:, 2], 0.1)
        return np.stack([self.x_v + self.f * pts[:, 0] / z, self.y_h + self.f * (self.hc - pts[:, 1]) / z], -1)

    @staticmethod
    def _fix(pts):
        return np.round(np.asarray(pts) * 16).astype(np.int32).reshape(-1, 1, 2)

    def poly2d(self, pts, cls, col, label=True):
        p = self._fix(pts)
        cv2.fillPoly(self.img, [p], _tup(col), cv2.LINE_8, 4)
        if label:
            cv2.fillPoly(self.lab, [p], int(cls), cv2.LINE_8, 4)

    def poly3d(self, pts, cls, col, label=True):
        self.poly2d(self.project(pts), cls, col, label)

    def line2d(self, p0, p1, thick, cls, col):
        a = tuple(int(v) for v in np.round(np.asarray(p0) * 16))
        b = tuple(int(v) for v in np.round(np.asarray(p1) * 16))
        t = max(1, int(round(thick)))
        cv2.line(self.img, a, b, _tup(col), t, cv2.LINE_8, 4)
        cv2.line(self.lab, a, b, int(cls), t, cv2.LINE_8, 4)

    def disk2d(self, c, r, cls, col, thick=-1):
        cc = tuple(int(v) for v in np.round(np.asarray(c) * 16))
        rr = max(16, int(round(r * 16)))
        t = -1 if thick < 0 else max(1, int(round(thick)))
        cv2.circle(self.img, cc, rr, _tup(col), t, cv2.LINE_8, 4)
        cv2.circle(self.lab, cc, rr, int(cls), t, cv2.LINE_8, 4)

    def ellipse2d(self, c, axes, angle, cls, col, label=True):
        cc = tuple(int(v) for v in np.round(np.asarray(c) * 16))
        ax = tuple(max(16, int(round(a * 16))) for a in axes)
        cv2.ellipse(self.img, cc, ax, float(angle), 0, 360, _tup(col), -1, cv2.LINE_8, 4)
        if label:
            cv2.ellipse(self.lab, cc, ax, float(angle), 0, 360, int(cls), -1, cv2.LINE_8, 4)


class _Figure:
    """A 2D figure standing at ground point (X, Z): local (u right, v up) metres -> pixels, scale f / Z."""

    def __init__(self, ctx: _Ctx, x, z):
        self.ctx = ctx
        self.s = ctx.f / z
        self.x0, self.y0 = ctx.project([(x, 0.0, z)])[0]

    def p(self, u, v):
        return np.array([self.x0 + self.s * u, self.y0 - self.s * v])

    def poly(self, uv, cls, col):
        self.ctx.poly2d(np.array([self.p(u, v) for u, v in uv]), cls, col)

    def line(self, a, b, thick_m, cls, col):
        self.ctx.line2d(self.p(*a), self.p(*b), max(1.0, thick_m * self.s), cls, col)

    def disk(self, c, r_m, cls, col, thick_m=None):
        self.ctx.disk2d(self.p(*c), r_m * self.s, cls, col, -1 if thick_m is None else max(1.0, thick_m * self.s))


# ---- background: sky, ground plane, facades ------------------------------------------------------------------------
def _smooth1d(rng, n, cells, amp):
    k = max(2, n // cells)
    v = rng.normal(0, amp, k + 2)
    return np.interp(np.linspace(0, k + 1, n), np.arange(k + 2), v).astype(np.float32)


def _facade_segments(rng, z_far, allow):
    """Segments along the street: (z0, type, h1, h2, colour, floor height, window spacing, ground floor height)."""
    segs = []
    z = 0.0
    near_low = rng.random() < 0.3  # a wall or fence right next to the camera
    while z < min(z_far, 400.0):
        length = rng.uniform(8, 26)
        r = rng.random()
        if near_low and not segs:
            r = allow["building"] + rng.uniform(0, allow["wall"] + allow["fence"])
        if r < allow["building"]:
            kind = "building"
            h1 = rng.uniform(7, 20)
            h2 = h1
        elif r < allow["building"] + allow["wall"]:
            kind = "wall"
            length = rng.uniform(14, 32)
            h1 = rng.uniform(1.2, 2.6)
            h2 = rng.uniform(4, 10) if rng.random() < 0.7 else h1
        elif r < allow["building"] + allow["wall"] + allow["fence"]:
            kind = "fence"
            length = rng.uniform(14, 32)
            h1 = rng.uniform(1.3, 2.4)
            h2 = rng.uniform(4, 10) if rng.random() < 0.7 else h1
        else:
            kind = "veg"
            h1 = rng.uniform(2.5, 8)
            h2 = h1
        segs.append(dict(z0=z, kind=kind, h1=h1, h2=h2, col=_pick(rng, _BUILDING_COLORS, 18),
                         fh=rng.uniform(2.9, 3.8), sp=rng.uniform(2.4, 4.0), gf=rng.uniform(3.2, 4.6),
                         glass=_jit(rng, (rng.uniform(40, 110),) * 3, 15) * np.array([0.85, 0.95, 1.1], np.float32),
                         shop=rng.random() < 0.6, wx=rng.uniform(0.35, 0.6), wy=rng.uniform(0.4, 0.6)))
        z += length
    return segs


def _windows(hy, along, fh, sp, gf, top, wx, wy):
    """Window mask and a per-window pseudo-random value in [0, 1) from facade coordinates (metres)."""
    fy = hy / fh
    fx = along / sp
    fyr, fxr = fy - np.floor(fy), fx - np.floor(fx)
    m = (hy > gf) & (hy < top - 0.8) & (np.abs(fyr - 0.5) < wy / 2) & (np.abs(fxr - 0.5) < wx / 2)
    cell = (np.floor(fy) * 7919 + np.floor(fx) * 104729) % 97
    return m, cell / 97.0


def _background(rng, h, w, ctx: _Ctx, style) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    f, x_v, y_h, hc = ctx.f, ctx.x_v, ctx.y_h, ctx.hc
    img, lab = ctx.img, ctx.lab
    Y = (np.arange(h, dtype=np.float32) + 0.5)[:, None]
    X = (np.arange(w, dtype=np.float32) + 0.5)[None, :]
    depth = np.full((h, w), np.inf, np.float32)

    below = Y > y_h + 0.25
    g0 = int(min(h, np.count_nonzero(~below[:, 0])))  # first ground row: everything below is ground or facade
    # sky: vertical gradient, clouds from coarse noise
    t = np.clip((y_h - Y[:g0]) / max(y_h, 1.0), 0, 1)
    if style["overcast"]:
        zen = _jit(rng, (175, 182, 195), 20)
        hor = _jit(rng, (215, 218, 222), 12)
    else:
        zen = _jit(rng, (85, 140, 215), 20)
        hor = _jit(rng, (200, 215, 235), 12)
    sky = hor[None, None] * (1 - t[..., None]) + zen[None, None] * t[..., None]
    cloud = cv2.resize(rng.standard_normal((max(2, h // 24), max(2, w // 24))).astype(np.float32), (w, h),
                       interpolation=cv2.INTER_CUBIC)[:g0]
    cover = rng.uniform(0.0, 1.2)
    cw = np.clip(cloud * 0.8 + cover - 0.8, 0, 1)[..., None] * rng.uniform(0.5, 0.9)
    sky = sky * (1 - cw) + np.float32(235) * cw
    img[:g0] = sky
    lab[:g0] = SKY
    horizon_col = hor

    # street geometry (metres)
    rl, rr = rng.uniform(2.5, 6.0), rng.uniform(2.5, 6.0)
    sides = {}
    for s in ("L", "R"):
        sw = rng.uniform(2.0, 5.0)
        tr = rng.random()
        terr = rng.uniform(1.5, 4.0) if tr < 0.45 else 0.0
        inner = tr < 0.15  # grass verge between road and sidewalk
        sides[s] = dict(sw=sw, terr=terr, inner=inner)
    z_far = np.inf if rng.random() < 0.3 else rng.uniform(60, 160)

    # ---- far cross facade (the street ends at z_far)
    dy = np.maximum(Y - y_h, 0.25)
    zg = (f * hc / dy).astype(np.float32)  # (h, 1) ground depth per row
    lat = ((X - x_v) * hc / dy).astype(np.float32)  # (h, w) ground lateral position
    if np.isfinite(z_far):
        hf = rng.uniform(8, 24)
        top = y_h - f * (hf - hc) / z_far
        rows = (Y[:, 0] >= top) & ~(below[:, 0] & (zg[:, 0] < z_far))
        fc = _pick(rng, _BUILDING_COLORS, 18)
        if rows.any():
            a, b = int(np.argmax(rows)), int(h - np.argmax(rows[::-1]))  # a contiguous band of rows
            img[a:b] = fc
            lab[a:b] = BUILDING
            depth[a:b] = z_far
            hy = hc - (Y[a:b] - y_h) * z_far / f
            along = (X - x_v) * z_far / f
            win, v = _windows(hy, along, 3.3, 3.2, 3.5, hf, 0.5, 0.5)
            img[a:b][win] = (fc * 0.35)[None] * (0.7 + 0.6 * v[win])[:, None]

    # ---- ground
    lw = rl + sides["L"]["sw"] + sides["L"]["terr"]
    rw = rr + sides["R"]["sw"] + sides["R"]["terr"]
    hg = h - g0
    lat = lat[g0:]
    gm = np.broadcast_to(zg[g0:] < z_far, (hg, w))
    road_col = _jit(rng, (rng.uniform(70, 115),) * 3, 6) * np.array([1.0, 1.0, rng.uniform(0.97, 1.1)], np.float32)
    sw_col = _pick(rng, _SIDEWALK_COLORS, 14)
    grass = rng.random() < 0.75
    terr_col = _jit(rng, (128, 158, 72) if grass else (150, 125, 92), 16)
    # lateral profile: class per lateral interval
    edges = []
    for s, sgn in (("L", -1), ("R", 1)):
        sd = sides[s]
        r0 = rl if s == "L" else rr
        parts = ([("terrain", sd["terr"]), ("sidewalk", sd["sw"])] if sd["inner"] else
                 [("sidewalk", sd["sw"]), ("terrain", sd["terr"])])
        pos = r0
        for name, width in parts:
            if width <= 0:
                continue
            edges.append((sgn * pos, sgn * (pos + width), name))
            pos += width
    gl = np.full((hg, w), ROAD, np.uint8)
    gcol = np.empty((hg, w, 3), np.float32)
    gcol[:] = road_col
    for a, b, name in edges:
        lo, hi = min(a, b), max(a, b)
        m = (lat >= lo) & (lat < hi)
        cls = SIDEWALK if name == "sidewalk" else TERRAIN
        gl[m] = cls
        gcol[m] = sw_col if cls == SIDEWALK else terr_col
    # sidewalk tiles and curbs
    tile = rng.uniform(0.4, 0.8)
    zz = np.broadcast_to(zg[g0:], (hg, w))
    sm = gl == SIDEWALK
    zr = zg[g0:]
    tl = (np.abs(lat / tile - np.round(lat / tile)) < 0.06) | (np.abs(zr / tile - np.round(zr / tile)) < 0.06)
    tl &= sm & (zr < 40)
    gcol[tl] *= 0.8
    for s, sgn, r0 in (("L", -1, rl), ("R", 1, rr)):
        curb = (np.abs(lat - sgn * (r0 + (sides[s]["terr"] if sides[s]["inner"] else 0.0) + 0.1)) < 0.12) & sm
        gcol[curb] = np.clip(sw_col * 1.25, 0, 255)
    # lane markings (road class)
    width = rl + rr
    nl = max(1, int(round(width / 3.2)))
    mark_col = _jit(rng, (225, 225, 220), 10) if rng.random() < 0.85 else _jit(rng, (225, 195, 60), 10)
    road = gl == ROAD
    dash = rng.uniform(2.5, 4.0)
    period = dash * rng.uniform(1.8, 3.0)
    ph = rng.uniform(0, period)
    marks = np.zeros((hg, w), bool)
    dash_rows = np.mod(zg[g0:] + ph, period) < dash
    for k in range(1, nl):
        xm = -rl + k * width / nl
        marks |= (np.abs(lat - xm) < 0.07) & dash_rows
    if rng.random() < 0.6:
        for xm in (-rl + 0.35, rr - 0.35):
            marks |= np.abs(lat - xm) < 0.06
    if rng.random() < 0.3:  # zebra crossing
        zc = rng.uniform(9, 25)
        zrows = (zg[g0:] > zc) & (zg[g0:] < zc + rng.uniform(3, 5))
        marks |= zrows & (np.mod(lat, 1.0) < 0.5)
    marks &= road
    gcol[marks] = mark_col
    if rng.random() < 0.5:  # darker patch repairs on the road
        patch = cv2.resize(rng.standard_normal((max(2, h // 16), max(2, w // 16))).astype(np.float32), (w, h))[g0:]
        pm = road & (patch > 1.0) & ~marks
        gcol[pm] *= 0.85
    k = g0 + int(np.count_nonzero(~gm[:, 0]))  # rows beyond z_far (near the horizon) belong to the far facade
    img[k:] = gcol[k - g0:]
    lab[k:] = gl[k - g0:]
    depth[k:] = zz[k - g0:]

    # ---- side facades
    cols = np.arange(w, dtype=np.float32) + 0.5
    allow = dict(building=rng.uniform(0.5, 0.9), wall=0.1, fence=0.08)
    veg_col = _jit(rng, (62, 105, 42), 14)
    for s, sgn, xf in (("L", -1, lw), ("R", 1, rw)):
        segs = _facade_segments(rng, z_far, allow)
        shade = rng.uniform(0.75, 1.1)
        behind_veg_s = np.array([rng.random() < 0.75 for _ in segs])
        bump = _smooth1d(rng, w, 10, 0.8)
        wall_col = _jit(rng, (150, 148, 140), 20)
        fence_col = _jit(rng, [(55, 58, 60), (45, 85, 55), (140, 100, 62)][int(rng.integers(3))], 10)
        fence_bg = veg_col * 0.45 if rng.random() < 0.5 else road_col * 0.6
        c0, c1 = (0, min(w, int(np.ceil(x_v)))) if s == "L" else (max(0, int(np.floor(x_v))), w)
        if c1 <= c0:
            continue
        d = sgn * (cols[c0:c1] - x_v)
        valid = d > 0.5
        zc = np.where(valid, f * xf / np.maximum(d, 0.5), 1e6).astype(np.float32)
        bounds = np.array([sg["z0"] for sg in segs], np.float32)
        seg = np.clip(np.searchsorted(bounds, zc, side="right") - 1, 0, len(segs) - 1)
        valid &= zc < min(z_far, bounds[-1] + 26)
        if not valid.any():
            continue
        pick = lambda key: np.array([sg[key] for sg in segs], np.float32)[seg]  # noqa: E731
        h1, h2 = pick("h1"), pick("h2")
        h2 = np.where(h2 > h1 + 0.5, h2 + bump[c0:c1], h1)
        kind = np.array([sg["kind"] for sg in segs])[seg]
        base = y_h + hc * d / xf
        top1 = y_h - (h1 - hc) * d / xf
        top2 = np.minimum(y_h - (h2 - hc) * d / xf, top1)
        r0 = int(np.clip(np.floor(top2[valid].min()), 0, h))
        r1 = int(np.clip(np.ceil(base[valid].max()), 0, h))
        if r1 <= r0:
            continue
        im, lb, dp = img[r0:r1, c0:c1], lab[r0:r1, c0:c1], depth[r0:r1, c0:c1]
        hh, ww = r1 - r0, c1 - c0
        Ys = Y[r0:r1]
        m1 = valid[None] & (Ys >= top1[None]) & (Ys < base[None])
        m2 = valid[None] & (Ys >= top2[None]) & (Ys < top1[None])
        hy = hc - (Ys - y_h) * zc[None] / f
        zfull = np.broadcast_to(zc[None], (hh, ww))
        # upper layer (behind low walls / fences): vegetation or a set-back building
        behind_veg = behind_veg_s[seg]
        mv = m2 & behind_veg[None]
        mb = m2 & ~behind_veg[None]
        im[mv] = veg_col * 0.9
        lb[mv] = VEG
        segcol = np.stack([sg["col"] for sg in segs])[seg] * shade
        full = np.broadcast_to(segcol[None], (hh, ww, 3))
        im[mb] = full[mb] * 0.9
        lb[mb] = BUILDING
        dp[m2] = zfull[m2] + 5
        # lower layer
        kb = (kind == "building")[None] & m1
        kw = (kind == "wall")[None] & m1
        kf = (kind == "fence")[None] & m1
        kv = (kind == "veg")[None] & m1
        im[kb] = full[kb]
        lb[kb] = BUILDING
        gf = pick("gf")[None]
        win, v = _windows(hy, zc[None], pick("fh")[None], pick("sp")[None], gf, h1[None], pick("wx")[None],
                          pick("wy")[None])
        win &= kb
        glass = np.stack([sg["glass"] for sg in segs])[seg]
        gfull = np.broadcast_to(glass[None], (hh, ww, 3))
        im[win] = gfull[win] * (0.6 + 0.8 * v[win])[:, None]
        shopseg = np.array([sg["shop"] for sg in segs])[seg][None]
        shop = kb & shopseg & (hy > 0.3) & (hy < gf - 0.6) & (np.mod(zc[None], 5.0) < 3.6)
        im[shop] = gfull[shop] * 0.55
        band = kb & (np.abs(hy - gf + 0.3) < 0.25)
        im[band] = full[band] * 0.7
        if kw.any():
            im[kw] = wall_col
            joints = kw & ((np.mod(hy, 0.5) < 0.05) | (np.mod(zc[None], 2.0) < 0.08))
            im[joints] = wall_col * 0.75
            lb[kw] = WALL
        if kf.any():
            im[kf] = fence_bg
            bars = kf & ((np.mod(zc[None], 0.5) < 0.12) | (np.abs(hy - h1[None] + 0.1) < 0.08) |
                         (np.abs(hy - 0.3) < 0.06))
            im[bars] = fence_col
            lb[kf] = FENCE
        im[kv] = veg_col
        lb[kv] = VEG
        dp[m1] = zfull[m1]
    return depth, horizon_col, dict(rl=rl, rr=rr, sides=sides, lw=lw, rw=rw, z_far=z_far)


# ---- objects --------------------------------------------------------------------------------------------------------
def _box(ctx, xc, z, wd, ht, ln, y0=0.0):
    """The faces of an axis-aligned box that the camera sees, back to front: (name, (4, 3) world corners)."""
    x0, x1 = xc - wd / 2, xc + wd / 2
    faces = []
    if ht + y0 < ctx.hc:
        faces.append(("top", [(x0, y0 + ht, z), (x1, y0 + ht, z), (x1, y0 + ht, z + ln), (x0, y0 + ht, z + ln)]))
    if x0 > 0:
        faces.append(("side", [(x0, y0, z), (x0, y0, z + ln), (x0, y0 + ht, z + ln), (x0, y0 + ht, z)]))
    elif x1 < 0:
        faces.append(("side", [(x1, y0, z), (x1, y0, z + ln), (x1, y0 + ht, z + ln), (x1, y0 + ht, z)]))
    faces.append(("rear", [(x0, y0, z), (x1, y0, z), (x1, y0 + ht, z), (x0, y0 + ht, z)]))
    return faces


def _wheel3d(ctx, xs, zc, r, cls, col, n=14):
    a = np.linspace(0, 2 * np.pi, n, endpoint=False)
    pts = np.stack([np.full(n, xs), r + r * np.sin(a), zc + r * np.cos(a)], -1)
    ctx.poly3d(pts, cls, col)


def _shadow(ctx, xc, z, wd, ln):
    x0, x1 = xc - wd * 0.6, xc + wd * 0.6
    pts = [(x0, 0, z - 0.3), (x1, 0, z - 0.3), (x1, 0, z + ln), (x0, 0, z + ln)]
    p = ctx._fix(ctx.project(pts))
    mask = np.zeros(ctx.lab.shape, np.uint8)
    cv2.fillPoly(mask, [p], 1, cv2.LINE_8, 4)
    ys, xs = np.nonzero(mask)
    ctx.img[ys, xs] *= 0.55


def _vehicle(ctx, rng, xc, z, kind):
    if kind == "car":
        wd, ht, ln = rng.uniform(1.65, 1.95), rng.uniform(1.35, 1.75), rng.uniform(3.9, 4.8)
        col, cls = _pick(rng, _CAR_COLORS, 10), CAR
    elif kind == "bus":
        wd, ht, ln = 2.55, rng.uniform(3.0, 3.3), rng.uniform(11, 13)
        col, cls = _jit(rng, [(230, 200, 40), (200, 40, 40), (40, 90, 170), (235, 235, 230), (40, 140, 80)][
            int(rng.integers(5))], 10), BUS
    else:
        wd, ht, ln = 2.5, rng.uniform(3.2, 3.8), rng.uniform(7, 10)
        col, cls = _jit(rng, [(225, 225, 220), (190, 190, 185), (160, 60, 40), (60, 80, 120)][int(rng.integers(4))],
                        10), TRUCK
    _shadow(ctx, xc, z, wd, ln)
    glass = _jit(rng, (45, 55, 70), 12)
    dark = np.array([22, 22, 24], np.float32)
    side_x = xc - wd / 2 if xc - wd / 2 > 0 else (xc + wd / 2 if xc + wd / 2 < 0 else None)
    if kind == "car":
        hb = ht * 0.55
        for name, face in _box(ctx, xc, z, wd, hb - 0.25, ln, 0.25):
            ctx.poly3d(face, cls, col * (1.1 if name == "top" else (0.8 if name == "side" else 1.0)))
            if name == "side":  # wheels on the visible side
                for zw in (z + 0.8, z + ln - 0.8):
                    _wheel3d(ctx, side_x, zw, 0.33, cls, dark)
        cz, cl = z + ln * 0.22, ln * 0.55
        for name, face in _box(ctx, xc, cz, wd * 0.86, ht - hb, cl, hb):
            c = col * 1.1 if name == "top" else glass
            ctx.poly3d(face, cls, c)
        # rear bumper, wheels under the body, lights, plate
        ctx.poly3d([(xc - wd / 2, 0.0, z + 0.1), (xc + wd / 2, 0.0, z + 0.1), (xc + wd / 2, 0.3, z + 0.1),
                    (xc - wd / 2, 0.3, z + 0.1)], cls, dark)
        ctx.poly3d([(xc - wd / 2, 0.25, z), (xc + wd / 2, 0.25, z), (xc + wd / 2, 0.42, z), (xc - wd / 2, 0.42, z)],
                   cls, col * 0.55)
        for sx in (-1, 1):
            x0 = xc + sx * (wd / 2 - 0.05)
            x1 = xc + sx * (wd / 2 - 0.35)
            ctx.poly3d([(x0, hb - 0.25, z), (x1, hb - 0.25, z), (x1, hb - 0.08, z), (x0, hb - 0.08, z)], cls,
                       (200, 30, 30) if rng.random() < 0.8 else (235, 200, 180))
        ctx.poly3d([(xc - 0.26, 0.5, z), (xc + 0.26, 0.5, z), (xc + 0.26, 0.62, z), (xc - 0.26, 0.62, z)], cls,
                   (220, 220, 215))
    else:
        for name, face in _box(ctx, xc, z, wd, ht - 0.45, ln, 0.45):
            ctx.poly3d(face, cls, col * (1.08 if name == "top" else (0.85 if name == "side" else 1.0)))
            if name == "side":
                if kind == "bus":  # window band along the side
                    zs = np.arange(z + 1.8, z + ln - 0.5, 1.6)
                    for z0 in zs:
                        ctx.poly3d([(side_x, 1.45, z0), (side_x, 1.45, z0 + 1.35), (side_x, 2.6, z0 + 1.35),
                                    (side_x, 2.6, z0)], cls, glass)
                    ctx.poly3d([(side_x, 0.6, z + 0.2), (side_x, 0.6, z + 1.2), (side_x, 2.6, z + 1.2),
                                (side_x, 2.6, z + 0.2)], cls, glass * 0.8)
                else:  # logo stripe on the cargo box
                    ctx.poly3d([(side_x, 1.4, z + 1), (side_x, 1.4, z + ln - 1), (side_x, 1.9, z + ln - 1),
                                (side_x, 1.9, z + 1)], cls, _jit(rng, (rng.uniform(0, 255),) * 3, 80))
                for zw in (z + 1.5, z + ln - 2.2) + ((z + ln - 3.5,) if kind == "truck" else ()):
                    _wheel3d(ctx, side_x, zw, 0.5, cls, dark)
        x0, x1 = xc - wd / 2 + 0.1, xc + wd / 2 - 0.1
        ctx.poly3d([(x0, 0.0, z + 0.2), (x1, 0.0, z + 0.2), (x1, 0.45, z + 0.2), (x0, 0.45, z + 0.2)], cls, dark)
        if kind == "bus":
            ctx.poly3d([(xc - wd / 2 + 0.2, 1.5, z), (xc + wd / 2 - 0.2, 1.5, z), (xc + wd / 2 - 0.2, ht - 0.35, z),
                        (xc - wd / 2 + 0.2, ht - 0.35, z)], cls, glass)
            ctx.poly3d([(xc - 0.8, ht - 0.32, z), (xc + 0.8, ht - 0.32, z), (xc + 0.8, ht - 0.08, z),
                        (xc - 0.8, ht - 0.08, z)], cls, (240, 170, 40))
        else:  # cargo doors
            ctx.poly3d([(xc - 0.02, 0.5, z), (xc + 0.02, 0.5, z), (xc + 0.02, ht - 0.1, z), (xc - 0.02, ht - 0.1, z)],
                       cls, col * 0.6)
        for sx in (-1, 1):
            x0 = xc + sx * (wd / 2 - 0.05)
            x1 = xc + sx * (wd / 2 - 0.3)
            ctx.poly3d([(x0, 0.55, z), (x1, 0.55, z), (x1, 0.8, z), (x0, 0.8, z)], cls, (210, 30, 30))
    return cls


def _person(ctx, rng, x, z, cls=PERSON):
    fig = _Figure(ctx, x, z)
    hp = rng.uniform(1.6, 1.9)
    skin, shirt, pants = _pick(rng, _SKIN, 8), _pick(rng, _CLOTHES, 15), _pick(rng, _CLOTHES, 15) * 0.7
    hair = _jit(rng, (40, 30, 25), 15)
    st = rng.uniform(-0.22, 0.22) * hp
    sway = rng.uniform(-0.1, 0.1) * hp
    leg = 0.09 * hp
    for sgn in (-1, 1):  # legs, feet
        ctx.line2d(fig.p(sgn * 0.05 * hp, 0.5 * hp), fig.p(sgn * st / 2 + sgn * 0.04 * hp, 0.04 * hp),
                   leg * fig.s, cls, pants)
        fig.disk((sgn * st / 2 + sgn * 0.04 * hp, 0.03 * hp), 0.05 * hp, cls, (30, 28, 26))
    fig.poly([(-0.13 * hp, 0.8 * hp), (0.13 * hp, 0.8 * hp), (0.1 * hp, 0.47 * hp), (-0.1 * hp, 0.47 * hp)], cls,
             shirt)
    for sgn in (-1, 1):  # arms
        a, b = (sgn * 0.13 * hp, 0.78 * hp), (sgn * 0.16 * hp + sgn * sway * 0.5 * sgn, 0.48 * hp)
        fig.line(a, b, 0.065 * hp, cls, shirt * 0.9)
        fig.disk(b, 0.035 * hp, cls, skin)
    if rng.random() < 0.3:  # bag
        bx = rng.choice([-1, 1]) * 0.15 * hp
        fig.poly([(bx - 0.06 * hp, 0.62 * hp), (bx + 0.06 * hp, 0.62 * hp), (bx + 0.06 * hp, 0.45 * hp),
                  (bx - 0.06 * hp, 0.45 * hp)], cls, _pick(rng, _CLOTHES, 15))
    fig.line((0, 0.8 * hp), (0, 0.86 * hp), 0.06 * hp, cls, skin)
    fig.disk((0, 0.92 * hp), 0.075 * hp, cls, skin)
    fig.poly([(-0.075 * hp, 0.93 * hp), (0.075 * hp, 0.93 * hp), (0.06 * hp, 0.995 * hp), (-0.06 * hp, 0.995 * hp)],
             cls, hair)


def _cyclist(ctx, rng, x, z, moto):
    fig = _Figure(ctx, x, z)
    d = rng.choice([-1.0, 1.0])
    r = 0.33 if moto else 0.34
    wb = 1.4 if moto else 1.05
    vcls = MOTO if moto else BIKE
    frame = _pick(rng, _CAR_COLORS if moto else _CLOTHES, 15)
    tyre = np.array([20, 20, 22], np.float32)
    back, front = (-d * wb / 2, r), (d * wb / 2, r)
    for c in (back, front):
        fig.disk(c, r, vcls, tyre * 1.5 if not moto else tyre)
        fig.disk(c, r * (0.55 if moto else 0.75), vcls, (110, 110, 115) if not moto else (90, 90, 95))
        fig.disk(c, r * 0.15, vcls, (160, 160, 165))
    hp = rng.uniform(1.6, 1.85)
    skin, shirt, pants = _pick(rng, _SKIN, 8), _pick(rng, _CLOTHES, 15), _pick(rng, _CLOTHES, 15) * 0.7
    if moto:
        fig.poly([(-d * 0.55, 0.45), (d * 0.45, 0.45), (d * 0.55, 0.85), (d * 0.1, 0.95), (-d * 0.6, 0.85)],
                 vcls, frame)
        fig.poly([(-d * 0.2, 0.25), (d * 0.25, 0.25), (d * 0.25, 0.5), (-d * 0.2, 0.5)], vcls, (70, 70, 75))
        fig.line(front, (d * 0.55, 1.05), 0.07, vcls, (90, 90, 95))
        seat, hand, lean = (-d * 0.25, 0.95), (d * 0.5, 1.08), 0.25
    else:
        bb = (0.0, r)
        seat, hand = (-d * 0.2, r + 0.62), (d * 0.42, r + 0.68)
        for a, b in ((back, bb), (bb, seat), (seat, back), (bb, (d * 0.38, r + 0.55)), (seat, (d * 0.38, r + 0.55)),
                     ((d * 0.38, r + 0.55), front), (hand, (d * 0.38, r + 0.55))):
            fig.line(a, b, 0.05, vcls, frame)
        lean = 0.45
    # the rider
    torso_len, head_r = 0.32 * hp, 0.075 * hp
    sh = (seat[0] + d * lean * torso_len, seat[1] + np.sqrt(max(torso_len ** 2 - (lean * torso_len) ** 2, 0.01)))
    knee = (seat[0] + d * 0.28, seat[1] - 0.1)
    foot = (0.0 + d * 0.05, r + 0.05) if not moto else (d * 0.05, 0.4)
    fig.line(seat, knee, 0.09 * hp, RIDER, pants)
    fig.line(knee, foot, 0.08 * hp, RIDER, pants)
    perp = np.array([-(sh[1] - seat[1]), sh[0] - seat[0]]) / torso_len * 0.1 * hp
    fig.poly([(seat[0] - perp[0] * 0.8, seat[1] - perp[1] * 0.8), (seat[0] + perp[0] * 0.8, seat[1] + perp[1] * 0.8),
              (sh[0] + perp[0], sh[1] + perp[1]), (sh[0] - perp[0], sh[1] - perp[1])], RIDER, shirt)
    fig.line(sh, hand, 0.06 * hp, RIDER, shirt * 0.9)
    head = (sh[0] + d * 0.05, sh[1] + 0.13 * hp)
    fig.disk(head, head_r, RIDER, skin)
    if moto or rng.random() < 0.5:  # helmet
        fig.poly([(head[0] - head_r * 1.15, head[1]), (head[0] + head_r * 1.15, head[1]),
                  (head[0] + head_r * 0.8, head[1] + head_r * 1.2), (head[0] - head_r * 0.8, head[1] + head_r * 1.2)],
                 RIDER, _pick(rng, _CAR_COLORS, 10))


def _parked_bike(ctx, rng, x, z):
    fig = _Figure(ctx, x, z)
    d = rng.choice([-1.0, 1.0])
    r, wb = 0.34, 1.05
    frame = _pick(rng, _CLOTHES, 15)
    back, front = (-d * wb / 2, r), (d * wb / 2, r)
    for c in (back, front):
        fig.disk(c, r, BIKE, (30, 30, 32))
        fig.disk(c, r * 0.75, BIKE, (110, 110, 115))
    bb, seat = (0.0, r), (-d * 0.2, r + 0.62)
    for a, b in ((back, bb), (bb, seat), (seat, back), (bb, (d * 0.38, r + 0.55)), ((d * 0.38, r + 0.55), front),
                 ((d * 0.38, r + 0.55), (d * 0.42, r + 0.7))):
        fig.line(a, b, 0.05, BIKE, frame)


def _pole(ctx, rng, x, z, attach):
    fig = _Figure(ctx, x, z)
    hgt = rng.uniform(3.2, 4.2) if attach in ("sign", "light") else rng.uniform(6, 8.5)
    wd = rng.uniform(0.14, 0.2)
    col = _jit(rng, [(120, 122, 125), (50, 60, 55), (35, 35, 38), (150, 150, 150)][int(rng.integers(4))], 10)
    fig.poly([(-wd, 0), (wd, 0), (wd, hgt), (-wd, hgt)], POLE, col)
    fig.poly([(-wd * 0.3, 0), (wd * 0.2, 0), (wd * 0.2, hgt), (-wd * 0.3, hgt)], POLE, np.clip(col * 1.4 + 20, 0, 255))
    side = -1.0 if x > 0 else 1.0  # arms point towards the road
    if attach == "lamp":
        arm = rng.uniform(1.2, 2.2)
        fig.line((0, hgt), (side * arm, hgt + 0.3), 0.12, POLE, col)
        fig.poly([(side * arm - 0.35, hgt + 0.15), (side * arm + 0.35, hgt + 0.15), (side * arm + 0.25, hgt - 0.05),
                  (side * arm - 0.25, hgt - 0.05)], POLE, col * 0.8)
    elif attach == "sign":
        n = 1 if rng.random() < 0.7 else 2
        for k in range(n):
            cy = hgt - 0.45 - k * 0.95
            kind = int(rng.integers(5))
            sz = rng.uniform(0.45, 0.6)
            if kind == 0:  # prohibition: red ring, white disk
                fig.disk((0, cy), sz, SIGN, (200, 25, 30))
                fig.disk((0, cy), sz * 0.72, SIGN, (240, 240, 240))
            elif kind == 1:  # mandatory: blue disk, white arrow
                fig.disk((0, cy), sz, SIGN, (25, 70, 180))
                fig.poly([(-0.08, cy - sz * 0.6), (0.08, cy - sz * 0.6), (0.08, cy + 0.1), (-0.08, cy + 0.1)], SIGN,
                         (240, 240, 240))
                fig.poly([(-0.25, cy + 0.1), (0.25, cy + 0.1), (0, cy + sz * 0.65)], SIGN, (240, 240, 240))
            elif kind == 2:  # warning triangle
                fig.poly([(-sz * 1.1, cy - sz * 0.75), (sz * 1.1, cy - sz * 0.75), (0, cy + sz * 1.05)], SIGN,
                         (210, 30, 30))
                fig.poly([(-sz * 0.72, cy - sz * 0.52), (sz * 0.72, cy - sz * 0.52), (0, cy + sz * 0.62)], SIGN,
                         (240, 240, 235))
            elif kind == 3:  # information: blue rectangle with white bars
                fig.poly([(-sz, cy - sz * 0.8), (sz, cy - sz * 0.8), (sz, cy + sz * 0.8), (-sz, cy + sz * 0.8)], SIGN,
                         (30, 80, 170))
                fig.poly([(-sz * 0.6, cy - 0.06), (sz * 0.6, cy - 0.06), (sz * 0.6, cy + 0.06), (-sz * 0.6, cy + 0.06)],
                         SIGN, (240, 240, 240))
            else:  # priority diamond
                fig.poly([(0, cy - sz * 1.1), (sz * 1.1, cy), (0, cy + sz * 1.1), (-sz * 1.1, cy)], SIGN,
                         (240, 240, 240))
                fig.poly([(0, cy - sz * 0.75), (sz * 0.75, cy), (0, cy + sz * 0.75), (-sz * 0.75, cy)], SIGN,
                         (235, 190, 30))
    elif attach == "light":
        n = 1 if rng.random() < 0.6 else 2
        housing = _jit(rng, [(30, 30, 32), (40, 50, 40), (90, 80, 30)][int(rng.integers(3))], 8)
        lit = int(rng.integers(3))
        for k in range(n):
            cx = 0.0 if k == 0 else side * rng.uniform(1.5, 2.5)
            if k == 1:
                fig.line((0, hgt - 0.1), (cx, hgt - 0.1), 0.1, POLE, col)
            top = hgt + 0.35 if k == 0 else hgt - 0.1
            fig.poly([(cx - 0.3, top), (cx + 0.3, top), (cx + 0.3, top - 1.3), (cx - 0.3, top - 1.3)], LIGHT,
                     housing)
            for j, lc in enumerate(((230, 40, 30), (240, 190, 30), (40, 220, 90))):
                on = j == lit
                fig.disk((cx, top - 0.25 - j * 0.4), 0.15, LIGHT, lc if on else np.array(lc, np.float32) * 0.25)


def _tree(ctx, rng, x, z):
    fig = _Figure(ctx, x, z)
    trunk_h = rng.uniform(1.8, 3.0)
    crown = rng.uniform(1.4, 3.0)
    tc = _jit(rng, (85, 65, 45), 12)
    fig.poly([(-0.14, 0), (0.14, 0), (0.1, trunk_h + crown * 0.5), (-0.1, trunk_h + crown * 0.5)], VEG, tc)
    base = _jit(rng, (58, 100, 40), 15)
    cy = trunk_h + crown
    for _ in range(int(rng.integers(6, 12))):
        u = rng.normal(0, crown * 0.35)
        v = cy + rng.normal(0, crown * 0.3)
        ax = (rng.uniform(0.4, 0.75) * crown * fig.s, rng.uniform(0.35, 0.6) * crown * fig.s)
        ctx.ellipse2d(fig.p(u, v), ax, rng.uniform(0, 180), VEG, base * rng.uniform(0.7, 1.2))


def _place_objects(rng, ctx, h, w, geo, style):
    """Objects on the ground as (Z, draw callable); drawn far to near."""
    rl, rr, sides = geo["rl"], geo["rr"], geo["sides"]
    z_near = ctx.f * ctx.hc / (h - ctx.y_h) + 0.8
    zmax = min(geo["z_far"] - 5, 70.0)
    objs, taken = [], []

    def free(x0, x1, z0, z1):
        for a0, a1, b0, b1 in taken:
            if x0 < a1 and a0 < x1 and z0 < b1 and b0 < z1:
                return False
        taken.append((x0, x1, z0, z1))
        return True

    def sidewalk_band(s):
        sd = sides[s]
        r0 = rl if s == "L" else rr
        lo = r0 + (sd["terr"] if sd["inner"] else 0.0)
        return lo, lo + sd["sw"]

    width = rl + rr
    nl = max(1, int(round(width / 3.2)))
    lanes = [-rl + (k + 0.5) * width / nl for k in range(nl)]
    # moving vehicles in lanes
    for _ in range(int(rng.integers(1, 5))):
        xc = float(rng.choice(lanes)) + rng.normal(0, 0.2)
        z = rng.uniform(z_near + 1.5, zmax)
        r = rng.random()
        kind = "bus" if r < style["p_bus"] else ("truck" if r < style["p_bus"] + style["p_truck"] else "car")
        ln = 12 if kind == "bus" else (9 if kind == "truck" else 4.5)
        if free(xc - 1.3, xc + 1.3, z, z + ln):
            objs.append((z, lambda xc=xc, z=z, kind=kind: _vehicle(ctx, rng, xc, z, kind)))
    # parked cars along the curbs
    for s, sgn, r0 in (("L", -1, rl), ("R", 1, rr)):
        if rng.random() < 0.6:
            z = rng.uniform(z_near - 2, z_near + 8)
            for _ in range(int(rng.integers(1, 6))):
                xc = sgn * (r0 - 1.1)
                if free(xc - 1.0, xc + 1.0, z, z + 4.6):
                    objs.append((z, lambda xc=xc, z=z: _vehicle(ctx, rng, xc, z, "car")))
                z += rng.uniform(5.0, 9.0)
    # pedestrians on the sidewalks (and some crossing)
    for _ in range(int(rng.integers(1, 7))):
        s = "L" if rng.random() < 0.5 else "R"
        lo, hi = sidewalk_band(s)
        sgn = -1 if s == "L" else 1
        x = sgn * rng.uniform(lo + 0.3, max(lo + 0.35, hi - 0.3))
        z = rng.uniform(z_near, min(zmax, 30.0))
        if rng.random() < 0.15:
            x = rng.uniform(-rl + 0.5, rr - 0.5)
        if free(x - 0.3, x + 0.3, z - 0.3, z + 0.3):
            objs.append((z, lambda x=x, z=z: _person(ctx, rng, x, z)))
            if rng.random() < 0.3 and free(x + 0.35, x + 0.95, z - 0.3, z + 0.3):  # a companion
                objs.append((z + 0.01, lambda x=x + 0.65, z=z: _person(ctx, rng, x, z)))
    # riders
    if rng.random() < style["p_rider"]:
        for _ in range(int(rng.integers(1, 3))):
            moto = rng.random() < 0.35
            s = rng.choice([-1, 1])
            x = s * (rl if s < 0 else rr) - s * rng.uniform(0.6, 1.2)
            z = rng.uniform(z_near + 0.5, min(zmax, 18.0))
            if free(x - 0.5, x + 0.5, z - 0.9, z + 0.9):
                objs.append((z, lambda x=x, z=z, moto=moto: _cyclist(ctx, rng, x, z, moto)))
    if rng.random() < 0.25:
        s = "L" if rng.random() < 0.5 else "R"
        lo, hi = sidewalk_band(s)
        x = (-1 if s == "L" else 1) * (hi - 0.4)
        z = rng.uniform(z_near, min(zmax, 18.0))
        if free(x - 0.3, x + 0.3, z - 0.7, z + 0.7):
            objs.append((z, lambda x=x, z=z: _parked_bike(ctx, rng, x, z)))
    # poles near the curb with signs, lights or lamps
    for _ in range(int(rng.integers(2, 6))):
        s = "L" if rng.random() < 0.5 else "R"
        lo, _hi = sidewalk_band(s)
        x = (-1 if s == "L" else 1) * (lo + rng.uniform(0.35, 0.7))
        z = rng.uniform(z_near + 1, min(zmax, 32.0))
        r = rng.random()
        attach = "sign" if r < 0.45 else ("light" if r < 0.75 else "lamp")
        if free(x - 0.25, x + 0.25, z - 0.25, z + 0.25):
            objs.append((z, lambda x=x, z=z, a=attach: _pole(ctx, rng, x, z, a)))
    # trees on terrain strips or the outer sidewalk
    for s, sgn in (("L", -1), ("R", 1)):
        sd = sides[s]
        if rng.random() < style["p_trees"]:
            lo, hi = sidewalk_band(s)
            if sd["terr"] > 0:
                r0 = rl if s == "L" else rr
                tlo = r0 if sd["inner"] else hi
                tx = tlo + sd["terr"] / 2
            else:
                tx = hi - 0.6
            z = rng.uniform(z_near, z_near + 10)
            while z < zmax:
                if free(sgn * tx - 0.3, sgn * tx + 0.3, z - 0.3, z + 0.3):
                    objs.append((z, lambda x=sgn * tx, z=z: _tree(ctx, rng, x, z)))
                z += rng.uniform(7, 16)
    objs.sort(key=lambda o: -o[0])
    return objs


def render_scene(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """One street scene: (RGB uint8 (h, w, 3), raw Cityscapes label ids uint8 (h, w))."""
    f = rng.uniform(0.75, 0.95) * w
    y_h = rng.uniform(0.36, 0.48) * h
    x_v = w / 2 + rng.uniform(-0.1, 0.1) * w
    hc = rng.uniform(1.3, 1.7)
    img = np.zeros((h, w, 3), np.float32)
    lab = np.zeros((h, w), np.uint8)
    ctx = _Ctx(img, lab, f, x_v, y_h, hc)
    style = dict(overcast=rng.random() < 0.35, p_bus=rng.uniform(0.0, 0.25), p_truck=rng.uniform(0.0, 0.2),
                 p_rider=0.6, p_trees=rng.uniform(0.3, 0.9))
    depth, hor, geo = _background(rng, h, w, ctx, style)
    # atmospheric haze on the background
    zh = rng.uniform(150, 450)
    haze = 0.8 - 0.8 * np.exp(np.minimum(depth, 1e4) * np.float32(-1.0 / zh))
    haze[lab == SKY] = 0
    img -= (img - hor[None, None]) * haze[..., None]
    for _z, draw in _place_objects(rng, ctx, h, w, geo, style):
        draw()
    if rng.random() < 0.3:  # ego vehicle hood
        cy = h + rng.uniform(0.0, 0.06) * h
        ax = (rng.uniform(0.55, 0.8) * w, rng.uniform(0.09, 0.15) * h)
        hood = _jit(rng, _CAR_COLORS[int(rng.integers(len(_CAR_COLORS)))], 10) * 0.6
        ctx.ellipse2d((x_v + rng.uniform(-0.05, 0.05) * w, cy), ax, 0.0, EGO, hood)
        ctx.ellipse2d((x_v, cy - ax[1] * 0.6), (ax[0] * 0.3, ax[1] * 0.12), 0.0, EGO, np.clip(hood * 1.8 + 40, 0, 255),
                      label=False)
    # texture: per-class noise at three scales
    nf = rng.standard_normal((h, w), np.float32)
    nm = cv2.resize(rng.standard_normal((max(2, h // 4), max(2, w // 4)), np.float32), (w, h),
                    interpolation=cv2.INTER_LINEAR)
    nm *= 1.0 / max(float(nm.std()), 1e-3)
    nc = cv2.resize(rng.standard_normal((max(2, h // 16), max(2, w // 16)), np.float32), (w, h),
                    interpolation=cv2.INTER_CUBIC)
    nc *= 1.0 / max(float(nc.std()), 1e-3)
    mod = 1.0 + _AMP[0][lab] * nf + _AMP[1][lab] * nm + _AMP[2][lab] * nc
    # exposure, colour cast, gamma, sensor noise
    gain = np.float32(np.exp(rng.normal(0, 0.3)))
    cast = rng.uniform(0.92, 1.08, 3).astype(np.float32)
    mod *= gain
    img *= mod[..., None]
    img *= cast
    img += rng.standard_normal((h, w, 1), np.float32) * np.float32(rng.uniform(1.0, 4.0)) + np.float32(0.5)
    np.clip(img, 0, 255, out=img)
    out = img.astype(np.uint8)
    gamma = rng.uniform(0.85, 1.2)
    if abs(gamma - 1) > 0.02:
        out = cv2.LUT(out, np.round(np.linspace(0, 1, 256) ** gamma * 255).astype(np.uint8))
    if rng.random() < 0.25:  # an out-of-roi border
        b = max(1, int(round(h * 0.012)))
        lab[-b:] = ROI
        lab[:, :b] = ROI
        lab[:, -b:] = ROI
    return out, lab


def colorize(label: np.ndarray) -> np.ndarray:
    """Raw label ids (H, W) -> Cityscapes colour image (H, W, 3) RGB."""
    return _COLOR_LUT[label]


# ---- the dataset on disk --------------------------------------------------------------------------------------------
_GENERATOR = "hrnet_jax.data.synthetic.segmentation"
_OWN_FILE = re.compile(r"^(leftImg8bit/(train|val)/[a-z]+/[a-z]+_\d{6}_\d{6}_leftImg8bit\.png|"
                       r"gtFine/(train|val)/[a-z]+/[a-z]+_\d{6}_\d{6}_gtFine_(labelIds|color)\.png)(\.tmp)?$")


def _cities(split: str, n: int) -> tuple[str, ...]:
    names = _TRAIN_CITIES if split == "train" else _VAL_CITIES
    if not 1 <= n <= len(names):
        raise ValueError(f"num_cities must be in 1..{len(names)}, got {n}")
    return names[:n]


def cityscapes_name(split: str, index: int, num_cities: int) -> tuple[str, str]:
    """(city, file stem '<city>_<seq:06d>_<frame:06d>') of image ``index`` of ``split``."""
    cities = _cities(split, num_cities)
    city = cities[index % len(cities)]
    return city, f"{city}_{index // len(cities):06d}_{_FRAME:06d}"


def _expected_files(params: dict) -> list[str]:
    out = []
    for split in ("train", "val"):
        for i in range(params[f"num_{split}"]):
            city, stem = cityscapes_name(split, i, params["num_cities"])
            out.append(f"leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png")
            out.append(f"gtFine/{split}/{city}/{stem}_gtFine_labelIds.png")
            if params["write_color"]:
                out.append(f"gtFine/{split}/{city}/{stem}_gtFine_color.png")
    return out


def _claim(root: str, params: dict) -> dict | None:
    """Makes ``root`` ours to write; returns the marker when it already holds this exact, complete dataset."""
    marker = read_marker(root, _GENERATOR) if os.path.isdir(root) else None
    files = open_folder(root, "synthetic segmentation", marker)
    if marker is None:
        write_marker(root, _GENERATOR, params, complete=False, info={})
        return None
    if marker.get("params") == params and marker.get("complete"):
        present = set(files)
        if all(p in present for p in _expected_files(params)):
            return marker
    foreign = [f for f in files if f not in (MARKER, MARKER + ".tmp") and not _OWN_FILE.match(f)]
    if foreign:
        raise SyntheticFolderError(
            f"{root} holds a synthetic segmentation dataset of other parameters (or an incomplete one) and files "
            f"the generator did not write ({foreign[:3]}...); nothing was changed. Use a new or empty folder, or "
            f"remove the folder to regenerate.")
    write_marker(root, _GENERATOR, params, complete=False, info={})
    for f in files:  # only our own files: regenerate from scratch
        if f != MARKER:
            os.remove(os.path.join(root, f))
    for sub in ("leftImg8bit", "gtFine"):  # drop emptied city folders
        for d, _dirs, _names in sorted(os.walk(os.path.join(root, sub)), key=lambda t: -len(t[0])):
            if not os.listdir(d):
                os.rmdir(d)
    return None


def _write_png(path: str, arr: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", arr)
    if not ok:
        raise OSError(f"could not encode {path}")
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(buf.tobytes())
    os.replace(tmp, path)


def _params(num_train, num_val, image_size_hw, seed, num_cities, write_color) -> dict:
    return dict(num_train=int(num_train), num_val=int(num_val), image_size_hw=[int(v) for v in image_size_hw],
                seed=int(seed), num_cities=int(num_cities), write_color=bool(write_color), version=1)


def generate_synthetic_seg_dataset(root: str, num_train: int = 300, num_val: int = 60,
                                   image_size_hw: Sequence[int] = (256, 512), seed: int = 0, num_cities: int = 3,
                                   write_color: bool = False) -> dict:
    """Writes the dataset (see module docstring) into ``root``.

    Returns ``{"root", "train", "val", "classes"}``: the image counts and the names of the Cityscapes train
    classes that occur (in train-id order). ``root`` must be absent, empty, or a folder this generator wrote
    (marked by :data:`MARKER`, which holds the generation parameters); a complete folder of the same parameters is
    reused as it is, one of other parameters is regenerated. Any other folder is refused with
    :class:`SyntheticFolderError` and left untouched.
    """
    h, w = (int(v) for v in image_size_hw)
    if h < 16 or w < 16:
        raise ValueError(f"image_size_hw too small: {image_size_hw}")
    _cities("train", num_cities)
    params = _params(num_train, num_val, image_size_hw, seed, num_cities, write_color)
    marker = _claim(root, params)
    if marker is not None:
        return dict(root=root, train=int(num_train), val=int(num_val), classes=list(marker["info"]["classes"]))
    seen = np.zeros(256, bool)
    for split, n in (("train", num_train), ("val", num_val)):
        for i in range(n):
            rng = np.random.default_rng([int(seed), zlib.crc32(split.encode()), i])
            img, lab = render_scene(rng, h, w)
            seen[np.unique(lab)] = True
            city, stem = cityscapes_name(split, i, num_cities)
            idir = os.path.join(root, "leftImg8bit", split, city)
            gdir = os.path.join(root, "gtFine", split, city)
            os.makedirs(idir, exist_ok=True)
            os.makedirs(gdir, exist_ok=True)
            _write_png(os.path.join(idir, f"{stem}_leftImg8bit.png"), img[..., ::-1])
            _write_png(os.path.join(gdir, f"{stem}_gtFine_labelIds.png"), lab)
            if write_color:
                _write_png(os.path.join(gdir, f"{stem}_gtFine_color.png"), colorize(lab)[..., ::-1])
    present = sorted((t, name) for i, (name, t, _c) in CITYSCAPES_LABELS.items() if t != 255 and seen[i])
    classes = [name for _t, name in present]
    write_marker(root, _GENERATOR, params, complete=True, info=dict(classes=classes))
    return dict(root=root, train=int(num_train), val=int(num_val), classes=classes)


def ensure_synthetic_seg_dataset(root: str, **kwargs) -> dict:
    """:func:`generate_synthetic_seg_dataset`, a no-op when ``root`` holds a complete one of the same parameters."""
    return generate_synthetic_seg_dataset(root, **kwargs)
