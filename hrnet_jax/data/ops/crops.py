"""ImageNet-style crops on the host: torchvision's ``RandomResizedCrop`` and ``Resize(short) + CenterCrop``.

The boxes follow torchvision exactly (``RandomResizedCrop.get_params``: 10 attempts of an area fraction in
``scale`` and a log-uniform aspect ratio in ``ratio``, then the centred fallback; ``CenterCrop``'s rounded
offsets; ``Resize(int)``'s short side with the long side truncated), and resampling is PIL's bilinear filter
(which widens its support when it shrinks, i.e. antialiases) — the official HRNet-Image-Classification
transforms, which run on PIL images.

The ``decode_*`` functions go from encoded bytes to the crop in one go. With ``draft=True`` a JPEG is decoded at
1/2, 1/4 or 1/8 scale in the DCT domain (libjpeg's scaled decoding, PIL ``Image.draft``) whenever the crop still
has at least the output size at that scale: the box is the same (computed on the full-size image), the result
differs from a full decode only by the filtering (a few grey levels), and decoding a large ImageNet photo for a
small crop is 2-4x cheaper. Evaluation defaults to ``draft=False`` (the reference transform exactly).

Bad bytes (empty, a JPEG without its end-of-image marker, anything PIL cannot decode) raise
:class:`~hrnet_jax.data.ops.image.ImageReadError` ``corrupt_image`` (a ``SkipExample``), which the pipeline
skips and counts.
"""
from __future__ import annotations

import io
import math
from typing import Sequence

import numpy as np
from PIL import Image

from hrnet_jax.data.ops.image import ImageReadError, jpeg_is_complete

Box = tuple[int, int, int, int]  # (top, left, height, width) in pixels of the full-size image

DEFAULT_SCALE = (0.08, 1.0)
DEFAULT_RATIO = (3.0 / 4.0, 4.0 / 3.0)


# ---------------------------------------------------------------------------------------------- boxes
def random_resized_crop_box(height: int, width: int, rng: np.random.Generator,
                            scale: Sequence[float] = DEFAULT_SCALE, ratio: Sequence[float] = DEFAULT_RATIO,
                            attempts: int = 10) -> Box:
    """torchvision ``RandomResizedCrop.get_params``: (top, left, h, w) of a crop covering a uniform fraction
    of the area in ``scale`` with a log-uniform aspect ratio (w / h) in ``ratio``; after ``attempts`` misses,
    the largest centred crop whose ratio is clamped to ``ratio``."""
    area = float(height * width)
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(attempts):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def short_side_size(height: int, width: int, short: int) -> tuple[int, int]:
    """torchvision ``Resize(short)``: (new_h, new_w) with the short side ``short`` and the long side
    ``int(short * long / short_side)`` (truncated)."""
    if height <= width:
        return short, int(short * width / height)
    return int(short * height / width), short


def center_crop_box(height: int, width: int, crop_h: int, crop_w: int) -> Box:
    """torchvision ``CenterCrop``: offsets ``int(round((size - crop) / 2))``."""
    if crop_h > height or crop_w > width:
        raise ValueError(f"centre crop {crop_h}x{crop_w} larger than the image {height}x{width}")
    return int(round((height - crop_h) / 2.0)), int(round((width - crop_w) / 2.0)), crop_h, crop_w


def eval_crop_box(height: int, width: int, resize: int, crop: int) -> tuple[float, float, float, float]:
    """The region of the *original* image that ``Resize(resize) + CenterCrop(crop)`` keeps, as (top, left, h, w)
    in original pixels (floats): resizing it straight to ``crop`` gives the same output as resizing the whole
    image and cropping, up to the filter's footprint at the box edges."""
    nh, nw = short_side_size(height, width, resize)
    top, left, _, _ = center_crop_box(nh, nw, crop, crop)
    sy, sx = height / nh, width / nw
    return top * sy, left * sx, crop * sy, crop * sx


# ---------------------------------------------------------------------------------------------- arrays
def _pil(img: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(img, dtype=np.uint8))


def resized_crop(img: np.ndarray, box: Box, size: int | tuple[int, int]) -> np.ndarray:
    """The crop ``box`` of ``img`` (H, W, 3 uint8) resized to ``size`` with PIL bilinear
    (torchvision ``F.resized_crop`` on a PIL image)."""
    out_h, out_w = (size, size) if isinstance(size, int) else size
    top, left, h, w = box
    return np.asarray(_pil(img).resize((out_w, out_h), Image.BILINEAR, box=(left, top, left + w, top + h)))


def random_resized_crop(img: np.ndarray, rng: np.random.Generator, size: int,
                        scale: Sequence[float] = DEFAULT_SCALE, ratio: Sequence[float] = DEFAULT_RATIO) -> np.ndarray:
    return resized_crop(img, random_resized_crop_box(img.shape[0], img.shape[1], rng, scale, ratio), size)


def resize_center_crop(img: np.ndarray, resize: int, crop: int) -> np.ndarray:
    """torchvision ``Resize(resize)`` (PIL bilinear) then ``CenterCrop(crop)``: the ImageNet eval transform."""
    nh, nw = short_side_size(img.shape[0], img.shape[1], resize)
    resized = np.asarray(_pil(img).resize((nw, nh), Image.BILINEAR))
    top, left, h, w = center_crop_box(nh, nw, crop, crop)
    return np.ascontiguousarray(resized[top:top + h, left:left + w])


# ---------------------------------------------------------------------------------------------- from bytes
def open_image(data: bytes, path: str = "<bytes>") -> Image.Image:
    """A lazily decoded PIL image of encoded bytes (header read only); ``corrupt_image`` on bad bytes."""
    buf = bytes(data) if not isinstance(data, bytes) else data
    if not buf:
        raise ImageReadError("corrupt_image", path, "empty")
    if buf[:2] == b"\xff\xd8" and not jpeg_is_complete(buf):
        raise ImageReadError("corrupt_image", path, "truncated JPEG (no end-of-image marker)")
    try:
        return Image.open(io.BytesIO(buf))
    except Exception as e:  # PIL raises UnidentifiedImageError / OSError / ValueError / SyntaxError
        raise ImageReadError("corrupt_image", path, f"cannot decode: {e}") from None


def _load_rgb(im: Image.Image, path: str) -> Image.Image:
    try:
        im.load()
        return im if im.mode == "RGB" else im.convert("RGB")
    except Exception as e:
        raise ImageReadError("corrupt_image", path, f"cannot decode: {e}") from None


def _draft(im: Image.Image, box: tuple[float, float, float, float], out_hw: tuple[int, int]):
    """Scaled JPEG decoding that keeps the crop ``box`` (top, left, h, w) at least ``out_hw``; returns the box in
    the reduced image's pixels."""
    w0, h0 = im.size
    top, left, h, w = box
    if im.format != "JPEG" or h <= 0 or w <= 0:
        return box
    want = (max(1, math.ceil(w0 * out_hw[1] / w)), max(1, math.ceil(h0 * out_hw[0] / h)))
    try:
        im.draft("RGB", want)
    except Exception:
        return box
    sx, sy = im.size[0] / w0, im.size[1] / h0
    return top * sy, left * sx, h * sy, w * sx


def decode_random_resized_crop(data: bytes, rng: np.random.Generator, size: int,
                               scale: Sequence[float] = DEFAULT_SCALE, ratio: Sequence[float] = DEFAULT_RATIO,
                               draft: bool = True, path: str = "<bytes>") -> np.ndarray:
    """Encoded image → ``RandomResizedCrop(size)`` (size, size, 3) uint8 RGB (the box drawn from the full-size
    image, as torchvision does)."""
    im = open_image(data, path)
    w0, h0 = im.size
    box = random_resized_crop_box(h0, w0, rng, scale, ratio)
    fbox = _draft(im, box, (size, size)) if draft else box
    im = _load_rgb(im, path)
    top, left, h, w = fbox
    return np.asarray(im.resize((size, size), Image.BILINEAR, box=(left, top, left + w, top + h)))


def decode_resize_center_crop(data: bytes, resize: int, crop: int, draft: bool = False,
                              path: str = "<bytes>") -> np.ndarray:
    """Encoded image → ``Resize(resize) + CenterCrop(crop)`` (crop, crop, 3) uint8 RGB. ``draft=False`` (default)
    is the reference transform exactly; ``draft=True`` decodes big JPEGs at a reduced scale first."""
    im = open_image(data, path)
    w0, h0 = im.size
    if draft:
        nh, nw = short_side_size(h0, w0, resize)
        try:
            if im.format == "JPEG":
                im.draft("RGB", (nw, nh))
        except Exception:
            pass
    im = _load_rgb(im, path)
    nh, nw = short_side_size(h0, w0, resize)
    resized = np.asarray(im.resize((nw, nh), Image.BILINEAR))
    top, left, h, w = center_crop_box(nh, nw, crop, crop)
    return np.ascontiguousarray(resized[top:top + h, left:left + w])


def decode_rgb(data: bytes, path: str = "<bytes>") -> np.ndarray:
    """Encoded image → (H, W, 3) uint8 RGB (PIL), ``corrupt_image`` on bad bytes."""
    return np.asarray(_load_rgb(open_image(data, path), path))
