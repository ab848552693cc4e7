"""Reading images (RGB uint8) and the ImageNet pixel statistics (0-255 units).

:func:`read_image_rgb` decodes with OpenCV (colour, EXIF orientation ignored as in the official HRNet code) and
raises :class:`ImageReadError` (a :class:`~hrnet_jax.data.pipeline.SkipExample`) with ``reason``
``"missing_image"`` (no such file) or ``"corrupt_image"`` (empty, unreadable, undecodable, or a JPEG cut short).
The installed OpenCV returns None for a truncated JPEG or PNG; some builds decode a truncated JPEG into a partly
grey image with only a warning, so the JPEG end-of-image marker is checked as well.
"""
from __future__ import annotations

import os

import cv2
import numpy as np

from hrnet_jax.data.pipeline import SkipExample

#: ImageNet per-channel mean / std of RGB pixels in 0-255 units (= 255 x (0.485, 0.456, 0.406) / (0.229, ...)).
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)

_JPEG_SOI, _JPEG_EOI, _JPEG_SOS = b"\xff\xd8", b"\xff\xd9", b"\xff\xda"


class ImageReadError(SkipExample, IOError):
    """A missing, unreadable, undecodable or truncated image file."""

    def __init__(self, reason: str, path: str, detail: str = ""):
        super().__init__(reason, f"{reason}: {path}" + (f" ({detail})" if detail else ""))
        self.path = path


def jpeg_is_complete(data: bytes | np.ndarray) -> bool:
    """False for a JPEG whose last scan has no end-of-image marker after it (a file cut short).

    Entropy-coded data never holds ``FF D9`` (0xFF is byte-stuffed), so the marker after the last start-of-scan
    is the end of the image; bytes after it (camera trailers, padding) are allowed.
    """
    b = data.tobytes() if isinstance(data, np.ndarray) else bytes(data)
    sos = b.rfind(_JPEG_SOS)
    return sos >= 0 and b.find(_JPEG_EOI, sos + 2) >= 0


def decode_image_rgb(data: bytes | np.ndarray, path: str = "<bytes>") -> np.ndarray:
    """Encoded image bytes -> (H, W, 3) uint8 RGB, or :class:`ImageReadError` ``corrupt_image``."""
    buf = np.frombuffer(data, np.uint8) if isinstance(data, (bytes, bytearray, memoryview)) else data
    if buf.size == 0:
        raise ImageReadError("corrupt_image", path, "empty file")
    if buf[:2].tobytes() == _JPEG_SOI and not jpeg_is_complete(buf):
        raise ImageReadError("corrupt_image", path, "truncated JPEG (no end-of-image marker)")
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if img is None:
        raise ImageReadError("corrupt_image", path, "cannot decode")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_file_bytes(path: str, error=ImageReadError, kind: str = "image") -> np.ndarray:
    """A file's bytes as uint8; ``error(f"missing_{kind}" | f"corrupt_{kind}", path, detail)`` when it is absent or
    unreadable (``error`` a :class:`~hrnet_jax.data.pipeline.SkipExample` class: the record is skipped and counted)."""
    if not os.path.isfile(path):
        raise error(f"missing_{kind}", path)
    try:
        return np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise error(f"corrupt_{kind}", path, str(e)) from e


def read_image_rgb(path: str) -> np.ndarray:
    """Reads and decodes an image file to (H, W, 3) uint8 RGB; :class:`ImageReadError` on failure."""
    return decode_image_rgb(read_file_bytes(path), path)


def normalize_image(img: np.ndarray, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """HWC RGB (0-255) -> float32 ``(x - mean) / std`` (host-side reference; training normalises on device)."""
    return ((np.asarray(img, np.float32) - np.asarray(mean, np.float32)) / np.asarray(std, np.float32))
