"""Semantic-segmentation record sources: (image, label map) pairs addressed by index.

Every source has ``len(source)``, ``source.spec`` (the :class:`~hrnet_jax.data.classes.ClassSpec`),
``image_path(i)`` / ``label_path(i)`` (for messages and prediction files) and ``load(i) -> (image, label)``:
``image`` (H, W, 3) uint8 RGB and ``label`` (H, W) uint8 *train ids* (ignore = ``spec.ignore_index``).

* :func:`cityscapes_source` — the official Cityscapes folder layout (``leftImg8bit`` + ``gtFine``);
* :func:`folder_source` — any dataset as an image folder and a label-PNG folder with matching relative names;
* :class:`SegmentationSource` — an explicit list of (image path, label path) pairs;
* :class:`TfdsSegmentationSource` — a prepared TFDS dataset in ArrayRecord format (``tfds.data_source``; no
  TensorFlow needed), e.g. TFDS ``cityscapes/semantic_segmentation``.

Bad records raise :class:`~hrnet_jax.data.pipeline.SkipExample` with one of :data:`SEG_REASONS` (declare them
with ``reasons=SEG_REASONS`` in the pipeline builder): ``missing_image`` / ``corrupt_image`` (from
:func:`~hrnet_jax.data.ops.image.read_image_rgb`), ``missing_label`` (no label file), ``corrupt_label``
(unreadable, truncated, or not the image's size). A label value the spec does not declare raises
:class:`~hrnet_jax.data.classes.LabelValueError` instead: that is a wrong dataset/spec, not a bad record.

Label files are read with OpenCV ``IMREAD_UNCHANGED`` and must be single-channel (8- or 16-bit; Cityscapes
``*_labelIds.png`` are 8-bit); a colour label file (e.g. ``*_color.png``) is an error naming the file. Indexed
(palette) PNGs, as in PASCAL VOC, are read as their indices (with Pillow; OpenCV would expand the palette).
"""
from __future__ import annotations

import io
import logging
import os
from typing import Any, Sequence

import cv2
import numpy as np

from hrnet_jax.data.classes import CITYSCAPES, ClassSpec, get_class_spec
from hrnet_jax.data.ops.image import read_file_bytes, read_image_rgb
from hrnet_jax.data.pipeline import SkipExample

log = logging.getLogger(__name__)

#: the SkipExample reasons the segmentation sources raise
SEG_REASONS = ("missing_image", "corrupt_image", "missing_label", "corrupt_label")

_PNG_SIG = b"\x89PNG\r\n\x1a\n"


class LabelReadError(SkipExample, IOError):
    """A missing, unreadable, undecodable or truncated label file (reason ``missing_label`` / ``corrupt_label``)."""

    def __init__(self, reason: str, path: str, detail: str = ""):
        super().__init__(reason, f"{reason}: {path}" + (f" ({detail})" if detail else ""))
        self.path = path


def decode_label(data: bytes | np.ndarray, path: str = "<bytes>") -> np.ndarray:
    """Encoded label-image bytes -> (H, W) raw integer label values.

    :class:`LabelReadError` ``corrupt_label`` for undecodable or truncated data; ``ValueError`` for a label
    file with colour channels."""
    buf = np.frombuffer(data, np.uint8) if isinstance(data, (bytes, bytearray, memoryview)) else data
    if buf.size == 0:
        raise LabelReadError("corrupt_label", path, "empty file")
    head = buf[:32].tobytes()
    if head.startswith(_PNG_SIG):
        if buf[-64:].tobytes().find(b"IEND") < 0:
            raise LabelReadError("corrupt_label", path, "truncated PNG (no IEND chunk)")
        if len(head) > 25 and head[12:16] == b"IHDR" and head[25] == 3:  # colour type 3: indexed (palette)
            return _decode_palette_png(buf, path)
    lab = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if lab is None:
        raise LabelReadError("corrupt_label", path, "cannot decode")
    if lab.ndim == 3 and lab.shape[-1] == 1:
        lab = lab[..., 0]
    if lab.ndim != 2:
        raise ValueError(f"{path}: label file has {lab.shape[-1]} channels; label maps must be single-channel "
                         f"images of class values (for Cityscapes the *_gtFine_labelIds.png files, not "
                         f"*_color.png)")
    return lab


def _decode_palette_png(buf: np.ndarray, path: str) -> np.ndarray:
    from PIL import Image  # Pillow (a matplotlib dependency); only for indexed PNGs
    try:
        with Image.open(io.BytesIO(buf.tobytes())) as im:
            im.load()
            if im.mode != "P":
                raise ValueError(f"{path}: expected an indexed PNG, Pillow reads mode {im.mode}")
            return np.asarray(im, dtype=np.uint8)
    except (OSError, SyntaxError) as e:
        raise LabelReadError("corrupt_label", path, str(e)) from e


def read_label(path: str) -> np.ndarray:
    """Reads a label file to (H, W) raw values; :class:`LabelReadError` ``missing_label`` / ``corrupt_label``."""
    return decode_label(read_file_bytes(path, LabelReadError, "label"), path)


def _check_sizes(image: np.ndarray, label: np.ndarray, label_desc: str) -> None:
    if image.shape[:2] != label.shape[:2]:
        raise LabelReadError("corrupt_label", label_desc, f"label is {label.shape[0]}x{label.shape[1]}, image is "
                                                          f"{image.shape[0]}x{image.shape[1]} (H x W)")


class SegmentationSource:
    """Random access over (image file, label file) pairs; ``load(i)`` -> ((H, W, 3) uint8 RGB, (H, W) uint8 train
    ids)."""

    def __init__(self, pairs: Sequence[tuple[str, str]], spec: "ClassSpec | str | dict" = CITYSCAPES,
                 name: str = ""):
        self.pairs = tuple((str(a), str(b)) for a, b in pairs)
        self.spec = get_class_spec(spec)
        self.name = name or self.spec.name

    def __len__(self) -> int:
        return len(self.pairs)

    def __repr__(self) -> str:
        return f"SegmentationSource({self.name!r}, {len(self)} records, spec {self.spec.name!r})"

    def image_path(self, i: int) -> str:
        return self.pairs[i][0]

    def label_path(self, i: int) -> str:
        return self.pairs[i][1]

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        img_path, lab_path = self.pairs[i]
        image = read_image_rgb(img_path)
        raw = read_label(lab_path)
        _check_sizes(image, raw, lab_path)
        return image, self.spec.to_train_ids(raw, lab_path)

    def count_missing_labels(self) -> int:
        return sum(not os.path.isfile(b) for _, b in self.pairs)


def cityscapes_source(root: str, split: str, spec: "ClassSpec | str | dict" = CITYSCAPES) -> SegmentationSource:
    """The official Cityscapes layout::

        root/leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png
        root/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png

    Records sorted by (city, file name). An image without its label file is still listed (``load`` raises
    ``missing_label``; the count is logged). The ``test`` split's labels are all "unlabeled"/ignore."""
    img_dir = os.path.join(root, "leftImg8bit", split)
    lab_dir = os.path.join(root, "gtFine", split)
    suffix = "_leftImg8bit.png"
    pairs = []
    if os.path.isdir(img_dir):
        for city in sorted(os.listdir(img_dir)):
            cdir = os.path.join(img_dir, city)
            if not os.path.isdir(cdir):
                continue
            for f in sorted(os.listdir(cdir)):
                if f.endswith(suffix):
                    stem = f[:-len(suffix)]
                    pairs.append((os.path.join(cdir, f), os.path.join(lab_dir, city, stem + "_gtFine_labelIds.png")))
    if not pairs:
        raise FileNotFoundError(
            f"no Cityscapes images for split {split!r} under {root}; expected the official layout "
            f"{os.path.join(root, 'leftImg8bit', split, '<city>', '<city>_<seq>_<frame>_leftImg8bit.png')} with "
            f"labels {os.path.join(root, 'gtFine', split, '<city>', '<city>_<seq>_<frame>_gtFine_labelIds.png')} "
            f"(unzip leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip into {root})")
    src = SegmentationSource(pairs, spec, name=f"cityscapes/{split}")
    missing = src.count_missing_labels()
    if missing:
        log.warning("%s: %d of %d images have no label file under %s (they will be skipped as missing_label)",
                    src.name, missing, len(src), lab_dir)
    return src


def folder_source(images_dir: str, labels_dir: str, spec: "ClassSpec | str | dict",
                  image_exts: Sequence[str] = (".png", ".jpg", ".jpeg"), label_suffix: str = "",
                  label_ext: str = ".png") -> SegmentationSource:
    """Pairs every image ``images_dir/<rel>/<stem><ext>`` (recursive, ``ext`` in ``image_exts``, any case) with
    ``labels_dir/<rel>/<stem><label_suffix><label_ext>``. Sorted by relative path. Images without a label file are
    listed (``load`` raises ``missing_label``). When both folders are the same, the label files themselves are
    not taken as images (this needs a ``label_suffix`` or a ``label_ext`` that is not an image extension)."""
    exts = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in image_exts)
    lab_tail = label_suffix + label_ext
    same = os.path.realpath(images_dir) == os.path.realpath(labels_dir)
    if same and not label_suffix and label_ext.lower() in exts:
        raise ValueError(f"folder_source: images and labels are both in {images_dir} with extension {label_ext}; "
                         f"give a label_suffix (e.g. '_label') so they can be told apart")
    pairs = []
    for dirpath, dirnames, filenames in os.walk(images_dir):
        dirnames.sort()
        for f in sorted(filenames):
            stem, ext = os.path.splitext(f)
            if ext.lower() not in exts or (same and f.endswith(lab_tail)):
                continue
            rel = os.path.relpath(os.path.join(dirpath, stem), images_dir)
            pairs.append((rel, os.path.join(dirpath, f), os.path.join(labels_dir, rel + lab_tail)))
    if not pairs:
        raise FileNotFoundError(f"no images with extension {list(exts)} under {images_dir} (searched recursively)")
    pairs.sort()
    src = SegmentationSource([(a, b) for _, a, b in pairs], spec, name=os.path.basename(os.path.normpath(images_dir)))
    missing = src.count_missing_labels()
    if missing:
        log.warning("%s: %d of %d images have no label file %s (they will be skipped as missing_label)",
                    images_dir, missing, len(src), os.path.join(labels_dir, "<rel stem>" + lab_tail))
    return src


class TfdsSegmentationSource:
    """A prepared TFDS dataset read with ``tfds.data_source`` (ArrayRecord; TensorFlow is not needed).

    The dataset must have been prepared with ``file_format="array_record"`` in ``data_dir`` (None: TFDS's
    default). ``image_key`` must decode to (H, W, 3) uint8 and ``label_key`` to (H, W) or (H, W, 1) integer raw
    label values, mapped with ``spec`` (TFDS ``cityscapes/semantic_segmentation`` stores raw labelIds, so the
    CITYSCAPES spec applies). Picklable (the reader is reopened in each worker process)."""

    def __init__(self, name: str, split: str, data_dir: str | None = None,
                 spec: "ClassSpec | str | dict" = CITYSCAPES, image_key: str = "image_left",
                 label_key: str = "segmentation_label", config: str | None = None):
        self.name, self.split, self.data_dir, self.config = name, split, data_dir, config
        self.spec = get_class_spec(spec)
        self.image_key, self.label_key = image_key, label_key
        self.full_name = f"{name}/{config}" if config else name
        self._ds = None
        ds = self._reader()
        self._len = len(ds)
        features = getattr(getattr(ds, "dataset_info", None), "features", None)
        if features is not None:
            keys = list(features.keys())
            for what, key in (("image_key", image_key), ("label_key", label_key)):
                if key not in keys:
                    raise KeyError(f"tfds:{self.full_name}: no feature {key!r} ({what}); features: {keys}")

    def _reader(self):
        if self._ds is None:
            import tensorflow_datasets as tfds
            try:
                builder = tfds.builder(self.full_name, data_dir=self.data_dir)
            except Exception as e:  # unknown name / config
                raise FileNotFoundError(f"tfds:{self.full_name} (data_dir {self.data_dir}): {e}") from e
            info = os.path.join(os.fspath(builder.data_path), "dataset_info.json")
            if not os.path.isfile(info):
                raise FileNotFoundError(
                    f"TFDS dataset {self.full_name} is not prepared in {builder.data_path} (no dataset_info.json); "
                    f"prepare it first with tfds.builder({self.full_name!r}, data_dir=..., "
                    f"file_format='array_record').download_and_prepare(...)")
            try:
                self._ds = builder.as_data_source(split=self.split)
            except NotImplementedError as e:
                raise ValueError(f"TFDS dataset {self.full_name} in {builder.data_path} is not in a random-access "
                                 f"format; prepare it with file_format='array_record' ({e})") from e
        return self._ds

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_ds"] = None
        return state

    def __len__(self) -> int:
        return self._len

    def __repr__(self) -> str:
        return f"TfdsSegmentationSource({self.full_name!r}, {self.split!r}, {len(self)} records)"

    def _desc(self, i: int, key: str | None = None) -> str:
        return f"tfds:{self.full_name}/{self.split}[{int(i)}]" + (f":{key}" if key else "")

    def image_path(self, i: int) -> str:
        return self._desc(i)

    def label_path(self, i: int) -> str:
        return self._desc(i, self.label_key)

    def record(self, i: int) -> dict:
        """The decoded TFDS example ``i`` (all features)."""
        return self._reader()[int(i)]

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        ex = self.record(i)
        image = np.asarray(ex[self.image_key])
        if image.ndim == 3 and image.shape[-1] == 1:
            image = np.repeat(image, 3, axis=-1)
        if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
            raise ValueError(f"{self._desc(i, self.image_key)}: expected an (H, W, 3) uint8 image, got "
                             f"{image.dtype} {image.shape}")
        raw = np.asarray(ex[self.label_key])
        if raw.ndim == 3 and raw.shape[-1] == 1:
            raw = raw[..., 0]
        if raw.ndim != 2:
            raise ValueError(f"{self.label_path(i)}: expected a single-channel label map, got shape {raw.shape}")
        _check_sizes(image, raw, self.label_path(i))
        return image, self.spec.to_train_ids(raw, self.label_path(i))
