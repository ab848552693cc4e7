"""Classification sources of *encoded* images: a TFDS dataset (ArrayRecord, read without TensorFlow) or a plain
folder tree. Both are random-access: ``src.record(i) -> (encoded bytes, label, name)``; decoding and augmentation
happen in the pipeline's example function (grain worker processes), so a source only reads bytes.

TFDS: ``tfds.data_source(name, split=..., data_dir=..., decoders={"image": SkipDecoding()})`` over the
prepared ArrayRecord files (``imagenet2012``, the project's ``cls_demo``, any builder with an ``image`` and a
``label`` ClassLabel feature). Preparing ``imagenet2012`` needs ``ILSVRC2012_img_{train,val}.tar`` in
``<data_dir>/downloads/manual`` and ``file_format="array_record"`` (see README); reading never imports
TensorFlow. ``data_dir`` may be a ``gs://`` path.

Folder layout (``FolderSource``)::

    root/train/<class>/*.JPEG            one folder per class (ImageNet: the WordNet ids, n01440764 ...)
    root/val/<class>/*.JPEG              the same, or
    root/val/*.JPEG + root/val_labels.txt    lines "<file name> <class folder name or index>"
    root/synset_words.txt (optional)     lines "<class> <human-readable name>" (LOC_synset_mapping.txt works)

Classes are the sorted train folder names (the torchvision ``ImageFolder`` / TFDS ``imagenet2012`` order).
Paths go through ``etils.epath``, so ``gs://bucket/imagenet`` works wherever the gcsfs / TF-free backends do.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
from etils import epath

from hrnet_jax.data.ops.image import ImageReadError

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".webp")
NAME_FILES = ("synset_words.txt", "LOC_synset_mapping.txt", "class_names.txt")


def _read_names_file(path: epath.Path) -> dict[str, str]:
    """``{class: name}`` of a "<class> <name...>" file (ImageNet's ``synset_words.txt``)."""
    out = {}
    for line in path.read_text().splitlines():
        parts = line.strip().split(maxsplit=1)
        if parts:
            out[parts[0]] = parts[1] if len(parts) > 1 else parts[0]
    return out


def readable_names(classes: Sequence[str], search: Sequence[epath.Path] = ()) -> list[str]:
    """Human-readable names of ``classes`` (WordNet ids → "tench, Tinca tinca" ...): from a names file in
    ``search`` folders, else timm's ImageNet table when timm is installed, else the class strings themselves."""
    table: dict[str, str] = {}
    for folder in search:
        for fname in NAME_FILES:
            p = epath.Path(folder) / fname
            try:
                if p.exists():
                    table = _read_names_file(p)
                    break
            except Exception:  # an unreadable remote path: fall through
                continue
        if table:
            break
    if not table and classes and str(classes[0]).startswith("n") and str(classes[0])[1:].isdigit():
        try:
            import importlib.resources as res
            txt = (res.files("timm") / "data" / "_info" / "imagenet_synset_to_lemma.txt").read_text()
            for line in txt.splitlines():
                parts = line.split("\t", 1) if "\t" in line else line.split(maxsplit=1)
                if len(parts) == 2:
                    table[parts[0]] = parts[1]
        except Exception:
            table = {}
    return [table.get(str(c), str(c)) for c in classes]


class TfdsSource:
    """A split of a prepared TFDS classification dataset; images stay encoded (decoded by the pipeline).

    ``image_key`` / ``label_key`` name the features (``image`` / ``label`` for ``imagenet2012``)."""

    def __init__(self, name: str, split: str, data_dir: str | None = None, image_key: str = "image",
                 label_key: str = "label"):
        import tensorflow_datasets as tfds
        self.name, self.split, self.data_dir = name, split, data_dir
        self.image_key, self.label_key = image_key, label_key
        self._src = tfds.data_source(name, split=split, data_dir=data_dir,
                                     decoders={image_key: tfds.decode.SkipDecoding()})
        builder = tfds.builder(name, data_dir=data_dir)
        self.classes = list(builder.info.features[label_key].names)
        self.names = readable_names(self.classes, [epath.Path(builder.data_dir)] +
                                    ([epath.Path(data_dir)] if data_dir else []))

    def __len__(self) -> int:
        return len(self._src)

    def record(self, index: int) -> tuple[bytes, int, str]:
        ex = self._src[int(index)]
        return ex[self.image_key], int(ex[self.label_key]), f"{self.name}/{self.split}[{int(index)}]"


class FolderSource:
    """``root/<split>/<class>/*`` (or a flat ``root/<split>/`` with ``<split>_labels.txt``), see module doc."""

    def __init__(self, root: str, split: str, classes: Sequence[str] | None = None, labels_file: str = ""):
        self.root = epath.Path(root)
        self.split = split
        if classes is None:
            train = self.root / "train"
            if not train.is_dir():
                raise FileNotFoundError(f"{train} is not a folder: the folder source needs root/train/<class>/")
            classes = sorted(p.name for p in train.iterdir() if p.is_dir())
        self.classes = list(classes)
        index = {c: i for i, c in enumerate(self.classes)}
        folder = self.root / split
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder} is not a folder")
        items: list[tuple[str, int]] = []
        subdirs = sorted(p for p in folder.iterdir() if p.is_dir())
        if subdirs:
            for d in subdirs:
                if d.name not in index:
                    raise ValueError(f"{d} is not a class of {self.root / 'train'}")
                items += [(os.fspath(f), index[d.name]) for f in sorted(d.iterdir())
                          if f.suffix.lower() in IMAGE_EXTENSIONS]
        else:
            lf = epath.Path(labels_file) if labels_file else self.root / f"{split}_labels.txt"
            if not lf.exists():
                raise FileNotFoundError(f"{folder} has no class folders and there is no labels file {lf}")
            for n, line in enumerate(lf.read_text().splitlines()):
                parts = line.split()
                if not parts:
                    continue
                if len(parts) != 2:
                    raise ValueError(f"{lf}:{n + 1}: expected '<file> <class>', got {line!r}")
                fname, c = parts
                label = index[c] if c in index else int(c)
                items.append((os.fspath(folder / fname), label))
        if not items:
            raise FileNotFoundError(f"no images under {folder}")
        self.paths = [p for p, _ in items]
        self.labels = np.asarray([l for _, l in items], np.int32)
        self.names = readable_names(self.classes, [self.root])

    def __len__(self) -> int:
        return len(self.paths)

    def record(self, index: int) -> tuple[bytes, int, str]:
        path = self.paths[int(index)]
        try:
            data = epath.Path(path).read_bytes()
        except FileNotFoundError:
            raise ImageReadError("missing_image", path) from None
        except OSError as e:
            raise ImageReadError("corrupt_image", path, str(e)) from None
        return data, int(self.labels[int(index)]), path
