"""The folder rules every synthetic-data generator follows.

A generator writes only into an absent or empty folder, or one it wrote before: its marker file (:data:`MARKER`,
JSON ``{"generator", "params", "complete", ...}``) says which generator, with which parameters, and whether the
dataset is complete. A folder holding anything else is refused with :class:`SyntheticFolderError` and left as it is.
"""
from __future__ import annotations

import json
import os

MARKER = ".hrnet_jax_synthetic.json"


class SyntheticFolderError(FileExistsError):
    """The target folder holds files this generator did not write: it is left untouched."""


def list_files(root: str) -> list[str]:
    """Every file under ``root``, as sorted '/'-separated relative paths."""
    out = []
    for d, _, names in os.walk(root):
        out += [os.path.relpath(os.path.join(d, n), root).replace(os.sep, "/") for n in names]
    return sorted(out)


def read_marker(root: str, generator: str) -> dict | None:
    """The marker of ``root`` when ``generator`` wrote it, else None."""
    try:
        with open(os.path.join(root, MARKER)) as f:
            m = json.load(f)
    except (OSError, ValueError):
        return None
    return m if isinstance(m, dict) and m.get("generator") == generator else None


def write_marker(root: str, generator: str, params: dict, complete: bool, **extra) -> None:
    """Writes the marker atomically (temporary file, then rename)."""
    tmp = os.path.join(root, MARKER + ".tmp")
    with open(tmp, "w") as f:
        json.dump(dict(generator=generator, params=params, complete=complete, **extra), f, indent=1)
    os.replace(tmp, os.path.join(root, MARKER))


def open_folder(root: str, what: str, marker: dict | None) -> list[str]:
    """Creates ``root`` if needed and returns its files; :class:`SyntheticFolderError` when ``root`` is a file,
    or holds files while ``marker`` (this generator's, from :func:`read_marker`) is None. ``what`` names the
    generator in the message."""
    if os.path.exists(root) and not os.path.isdir(root):
        raise SyntheticFolderError(f"{root} is a file, not a folder: point the synthetic data_root at a new or "
                                   f"empty folder")
    os.makedirs(root, exist_ok=True)
    files = list_files(root)
    if marker is None and files:
        raise SyntheticFolderError(
            f"{root} is not empty and was not written by the {what} generator (no {MARKER} of it); it only "
            f"writes into an absent or empty folder, so nothing was changed. Point data_root at a new or empty "
            f"folder for synthetic data, or turn synthetic off to use the dataset in {root}.")
    return files
