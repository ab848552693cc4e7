"""``cls_demo``: a synthetic ImageNet-like classification dataset, written as a real TFDS dataset (ArrayRecord).

Ten classes of procedurally drawn objects — disc, cross, triangle, ring, square, star, stripes, crescent, arrow,
hexagon — one per image, at a random scale (25-45 % of the short side as radius), position, rotation and shading,
on backgrounds of muted two-colour gradients, noise and small clutter strokes. Each class has a typical hue
(±22° around centres 36° apart, overlapping its neighbours', whose shapes differ), as many ImageNet classes do: colour narrows a class
down quickly, the shape decides.
Images are JPEG-encoded (quality 90) at ImageNet-like sizes (240-400 px a side, any aspect in between), so the
demo goes through the same decode, ``RandomResizedCrop`` and resize-then-centre-crop path as ImageNet.

:class:`ClsDemo` is a ``tfds.core.GeneratorBasedBuilder`` (name ``cls_demo``) whose examples hold the image
*already encoded* (bytes), so ``download_and_prepare(file_format="array_record")`` runs without TensorFlow (TFDS
4.9.10 encodes only numpy images through TF), and ``tfds.data_source("cls_demo", data_dir=...)`` reads it back
without TensorFlow. :func:`ensure_cls_demo` prepares it into ``data_dir`` (``data/cls_demo`` in the experiment)
on first use; it writes only into an absent or empty folder or one it wrote before (marker
:data:`MARKER`), and regenerates a folder of its own whose parameters differ.
"""
from __future__ import annotations

import math
import os
import shutil

import cv2
import numpy as np

from hrnet_jax.data.synthetic.folder import (MARKER, SyntheticFolderError,  # noqa: F401 (re-exported)
                                             open_folder, read_marker, write_marker)

# ordered so that classes with neighbouring hues have very different shapes
CLASSES = ("disc", "cross", "triangle", "ring", "square", "star", "stripes", "crescent", "arrow", "hexagon")
_GENERATOR = "hrnet_jax.data.synthetic.classification"
DEFAULTS = dict(num_train=2000, num_val=500, min_side=240, max_side=400, seed=0)


# ---------------------------------------------------------------------------------------------- drawing
def _polygon(kind: str, rng: np.random.Generator) -> np.ndarray:
    """Unit-radius outline (N, 2) of a polygonal class, before rotation."""
    if kind == "square":
        return np.array([(-1, -1), (1, -1), (1, 1), (-1, 1)], np.float64) * 0.8
    if kind == "triangle":
        a = np.deg2rad([90, 210, 330])
        return np.stack([np.cos(a), np.sin(a)], 1)
    if kind == "hexagon":
        a = np.deg2rad(np.arange(6) * 60.0)
        return np.stack([np.cos(a), np.sin(a)], 1)
    if kind == "star":
        a = np.deg2rad(np.arange(10) * 36.0 - 90)
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.42)
        return np.stack([r * np.cos(a), r * np.sin(a)], 1)
    if kind == "cross":
        t = 0.3
        return np.array([(-t, -1), (t, -1), (t, -t), (1, -t), (1, t), (t, t), (t, 1), (-t, 1), (-t, t), (-1, t),
                         (-1, -t), (-t, -t)], np.float64)
    if kind == "arrow":
        return np.array([(-1, -0.25), (0.2, -0.25), (0.2, -0.65), (1, 0), (0.2, 0.65), (0.2, 0.25), (-1, 0.25)],
                        np.float64)
    raise ValueError(kind)


def _colour(rng: np.random.Generator, sat=(0.5, 1.0), val=(0.45, 1.0), hue=None) -> tuple[float, float, float]:
    h = rng.integers(0, 180) if hue is None else int(round(hue)) % 180
    hsv = np.uint8([[[h, int(255 * rng.uniform(*sat)), int(255 * rng.uniform(*val))]]])
    return tuple(float(v) for v in cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0])


_NOISE = None


def _noise_bank() -> np.ndarray:
    """Four fixed 512x512 unit-Gaussian fields; backgrounds take random windows of them (cheaper than drawing
    fresh noise for every image, and the same in every process)."""
    global _NOISE
    if _NOISE is None:
        _NOISE = np.random.default_rng(20240531).standard_normal((4, 512, 512), dtype=np.float32)
    return _NOISE


def _background(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    c0 = np.asarray(_colour(rng, (0.0, 0.45), (0.1, 0.7)), np.float32)
    c1 = np.asarray(_colour(rng, (0.0, 0.45), (0.1, 0.7)), np.float32)
    ang = rng.uniform(0, 2 * np.pi)
    gx = (np.cos(ang) * np.arange(w, dtype=np.float32) / w)[None, :]
    gy = (np.sin(ang) * np.arange(h, dtype=np.float32) / h)[:, None]
    t = gx + gy
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    img = c0 + t[..., None] * (c1 - c0)
    k, oy, ox = int(rng.integers(len(_noise_bank()))), int(rng.integers(0, 513 - h)), int(rng.integers(0, 513 - w))
    img += _noise_bank()[k, oy:oy + h, ox:ox + w, None] * np.float32(rng.uniform(3, 12))
    img = np.clip(img, 0, 255).astype(np.uint8)
    s = min(h, w)
    for _ in range(int(rng.integers(4, 12))):  # small clutter strokes, never shaped like a class
        col = _colour(rng, (0.0, 1.0), (0.2, 1.0))
        p = rng.integers(0, [w, h])
        q = p + rng.integers(-s // 8, s // 8 + 1, size=2)
        cv2.line(img, tuple(int(v) for v in p), tuple(int(v) for v in q), col, int(rng.integers(1, 4)), cv2.LINE_AA)
    return img


def _fill(img: np.ndarray, mask: np.ndarray, rng: np.random.Generator, hue: float) -> None:
    """Paints ``mask`` (uint8 0/255) with a saturated solid colour or a two-colour gradient around ``hue``."""
    c0 = np.asarray(_colour(rng, (0.6, 1.0), (0.6, 1.0), hue), np.float32)
    if rng.uniform() < 0.4:
        c1 = np.asarray(_colour(rng, (0.6, 1.0), (0.6, 1.0), hue + rng.uniform(-15, 15)), np.float32)
        ys, xs = np.nonzero(mask)
        ang = rng.uniform(0, 2 * np.pi)
        t = np.cos(ang) * xs + np.sin(ang) * ys
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        img[ys, xs] = np.clip(c0 + t[:, None] * (c1 - c0), 0, 255).astype(np.uint8)
    else:
        img[mask > 0] = c0.astype(np.uint8)


def draw_example(label: int, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """One (height, width, 3) uint8 RGB image of class ``label``."""
    kind = CLASSES[label]
    img = _background(height, width, rng)
    s = min(height, width)
    r = rng.uniform(0.25, 0.45) * s
    cx = rng.uniform(r, width - r)
    cy = rng.uniform(r, height - r)
    rot = rng.uniform(0, 2 * np.pi)
    stretch = rng.uniform(0.85, 1.15)
    mask = np.zeros((height, width), np.uint8)
    centre = (int(round(cx)), int(round(cy)))
    if kind == "disc":
        cv2.ellipse(mask, centre, (int(r * stretch), int(r / stretch)), math.degrees(rot), 0, 360, 255, -1,
                    cv2.LINE_AA)
    elif kind == "ring":
        th = max(2, int(r * rng.uniform(0.18, 0.3)))
        cv2.ellipse(mask, centre, (int(r * stretch - th / 2), int(r / stretch - th / 2)), math.degrees(rot), 0, 360,
                    255, th, cv2.LINE_AA)
    elif kind == "crescent":
        cv2.circle(mask, centre, int(r), 255, -1, cv2.LINE_AA)
        off = r * rng.uniform(0.35, 0.55)
        cut = (int(round(cx + off * math.cos(rot))), int(round(cy + off * math.sin(rot))))
        cv2.circle(mask, cut, int(r * 0.85), 0, -1, cv2.LINE_AA)
    elif kind == "stripes":
        n = int(rng.integers(3, 6))
        half = r * 0.85
        for k in range(n):
            y = -half + (2 * half) * (k + 0.5) / n
            pts = np.array([(-half, y - half / (2 * n)), (half, y - half / (2 * n)),
                            (half, y + half / (2 * n)), (-half, y + half / (2 * n))])
            c, sn = math.cos(rot), math.sin(rot)
            pts = pts @ np.array([[c, sn], [-sn, c]]) + (cx, cy)
            cv2.fillPoly(mask, [np.round(pts * 16).astype(np.int32)], 255, cv2.LINE_AA, shift=4)
    else:
        pts = _polygon(kind, rng) * r * np.array([stretch, 1 / stretch])
        c, sn = math.cos(rot), math.sin(rot)
        pts = pts @ np.array([[c, sn], [-sn, c]]) + (cx, cy)
        cv2.fillPoly(mask, [np.round(pts * 16).astype(np.int32)], 255, cv2.LINE_AA, shift=4)
    # each class has a typical hue (as many ImageNet classes do), spread +-22 deg (OpenCV hue units: +-11) around
    # centres 36 deg apart, so neighbouring classes overlap in colour and only the shape tells them apart
    _fill(img, mask, rng, hue=18.0 * label + rng.uniform(-11, 11))
    if rng.uniform() < 0.3:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.5, 1.5))
    return img


def example(split: str, index: int, seed: int = 0, min_side: int = 240, max_side: int = 400) -> dict:
    if max_side > 512:
        raise ValueError("max_side is at most 512")
    """``{"image": JPEG bytes, "label": int, "file_name": str}`` of ``index`` (deterministic per seed)."""
    rng = np.random.default_rng((seed, 0 if split == "train" else 1, index))
    label = index % len(CLASSES)  # balanced classes
    h, w = (int(v) for v in rng.integers(min_side, max_side + 1, size=2))
    img = draw_example(label, h, w, rng)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return {"image": buf.tobytes(), "label": label, "file_name": f"{split}_{index:06d}.jpg"}


# ---------------------------------------------------------------------------------------------- TFDS builder
def _builder_class():
    import tensorflow_datasets as tfds
    from etils import epath

    class ClsDemo(tfds.core.GeneratorBasedBuilder):
        """The synthetic ImageNet-like dataset (see module doc); splits ``train`` and ``validation``."""
        name = "cls_demo"
        VERSION = tfds.core.Version("1.0.0")
        RELEASE_NOTES = {"1.0.0": "ten procedural object classes, JPEG at 240-400 px"}
        # TFDS derives the builder's source path through importlib_resources for packaged modules (a backport
        # that is not always installed); the path is only used to look for a checksums file, which we have none of
        code_path = epath.Path(__file__)

        def __init__(self, *, num_train: int = DEFAULTS["num_train"], num_val: int = DEFAULTS["num_val"],
                     min_side: int = DEFAULTS["min_side"], max_side: int = DEFAULTS["max_side"],
                     seed: int = DEFAULTS["seed"], **kwargs):
            self._gen_params = dict(num_train=num_train, num_val=num_val, min_side=min_side, max_side=max_side,
                                    seed=seed)
            super().__init__(**kwargs)

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                description="Synthetic ImageNet-like classification (hrnet_jax cls_demo).",
                features=tfds.features.FeaturesDict({
                    "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
                    "label": tfds.features.ClassLabel(names=list(CLASSES)),
                    "file_name": tfds.features.Text(),
                }),
                supervised_keys=("image", "label"))

        def _split_generators(self, dl_manager):
            p = self._gen_params
            return {"train": self._generate_examples("train", p["num_train"]),
                    "validation": self._generate_examples("validation", p["num_val"])}

        def _generate_examples(self, split, n):
            p = self._gen_params
            for i in range(n):
                yield i, example(split, i, p["seed"], p["min_side"], p["max_side"])

    return ClsDemo


_CLS = None


def builder_class():
    """The ``cls_demo`` TFDS builder class (defined, and registered with TFDS, on first call)."""
    global _CLS
    if _CLS is None:
        _CLS = _builder_class()
    return _CLS


def ensure_cls_demo(data_dir: str, quiet: bool = False, **params) -> str:
    """Prepares ``cls_demo`` into ``data_dir`` (TFDS layout ``data_dir/cls_demo/1.0.0/``) unless a complete copy of
    the same parameters is there; returns ``data_dir``. Refuses (changes nothing) a non-empty folder it did not
    write."""
    import tensorflow_datasets as tfds
    p = {**DEFAULTS, **{k: int(v) for k, v in params.items()}}
    unknown = set(p) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown cls_demo parameter(s) {sorted(unknown)}; valid: {sorted(DEFAULTS)}")
    marker = read_marker(data_dir, _GENERATOR) if os.path.isdir(data_dir) else None
    if marker is not None:
        if marker.get("params") == p and marker.get("complete"):
            return data_dir
        for name in os.listdir(data_dir):  # ours, other parameters or unfinished: start again
            if name in ("cls_demo", "downloads"):
                shutil.rmtree(os.path.join(data_dir, name), ignore_errors=True)
    open_folder(data_dir, "cls_demo", marker)
    write_marker(data_dir, _GENERATOR, p, complete=False)
    if not quiet:
        print(f"cls_demo: generating {p['num_train']} + {p['num_val']} synthetic JPEG images as a TFDS dataset "
              f"in {data_dir} (once)", flush=True)
    builder = builder_class()(data_dir=data_dir, file_format="array_record", **p)
    import logging
    absl_level = logging.getLogger("absl").level
    logging.getLogger("absl").setLevel(logging.WARNING)
    try:
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(verify_ssl=False))
    finally:
        logging.getLogger("absl").setLevel(absl_level)
    write_marker(data_dir, _GENERATOR, p, complete=True)
    return data_dir
