"""Files: the library's one atomic writer, its one JSON policy, and small shared helpers.

* :func:`atomic_write` -- every file the library writes goes through it (text, bytes, or a
  writer that wants a path, such as SimpleITK, safetensors or a DICOM series folder).
* :func:`to_jsonable` -- the one JSON sanitiser; :func:`json_text` and :func:`write_json`
  apply it. **Non-finite floats (inf, -inf, NaN) become JSON ``null``.**
* :func:`one_line`, :func:`extension`, :func:`require_exists` -- helpers the readers share.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import InputError

VOLUME_EXTENSIONS = {".nii": "nifti", ".nii.gz": "nifti", ".nrrd": "nrrd", ".nhdr": "nrrd",
                     ".mha": "metaimage", ".mhd": "metaimage"}
"""File extensions :func:`~XRayToCTLib.io.read_volume` and
:func:`~XRayToCTLib.io.write_volume` handle with SimpleITK."""
IMAGE_EXTENSIONS = {".png": "png", ".tif": "tiff", ".tiff": "tiff", ".jpg": "jpeg",
                    ".jpeg": "jpeg"}
"""Bitmap extensions :func:`~XRayToCTLib.io.read_radiograph` handles with Pillow."""
DICOM_EXTENSIONS = (".dcm", ".dicom", ".ima")
"""Extensions of files taken for DICOM even without the Part 10 preamble."""


# --------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------
def one_line(exc: BaseException | str, limit: int = 240) -> str:
    """A library's (often multi-line) error message as one short line."""
    text = str(exc)
    if "ERROR:" in text:  # ITK: "...hxx:77:\nITK ERROR: Image(0x...): the message"
        text = text.split("ERROR:", 1)[1]
        text = re.sub(r"^\s*\w+\(0x[0-9a-fA-F]+\):", "", text)
    text = " ".join(text.split())
    if not text:
        text = type(exc).__name__ if isinstance(exc, BaseException) else "unknown error"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def extension(path: str | os.PathLike) -> str:
    """Lower-case extension, with ``.nii.gz`` recognised as one."""
    name = Path(path).name.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return Path(name).suffix


def require_exists(path: Path) -> None:
    """:class:`InputError` unless ``path`` exists."""
    if not path.exists():
        raise InputError(path, "no such file or folder")


# --------------------------------------------------------------------------------------
# JSON: the one policy
# --------------------------------------------------------------------------------------
def to_jsonable(obj: Any) -> Any:
    """``obj`` as plain JSON data: the library's one JSON policy.

    * Non-finite floats -- ``inf``, ``-inf`` and ``NaN``, Python or numpy -- become ``None``
      (JSON ``null``): JSON has no such numbers (Python would write the non-standard
      ``Infinity``/``NaN``, which other readers refuse), and ``null`` reads as "no value".
    * numpy scalars become Python numbers and bools; numpy arrays nested lists.
    * dicts become dicts with string keys; lists, tuples, sets and frozensets lists (sets
      sorted where their items allow it, so the text is reproducible).
    * An object with a ``to_dict()`` method (ProjectionGeometry, a registration result...)
      becomes that dict; another dataclass the dict of its fields.
    * Paths become their text; anything else ``str(obj)``.
    """
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (set, frozenset)):
        try:
            obj = sorted(obj)
        except TypeError:
            obj = list(obj)
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, str) or obj is None:
        return obj
    if callable(getattr(obj, "to_dict", None)):
        return to_jsonable(obj.to_dict())
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return str(obj)


def json_text(obj: Any, *, indent: int | None = None, sort_keys: bool = False,
              ensure_ascii: bool = True) -> str:
    """``obj`` as JSON text after :func:`to_jsonable` (always valid, standard JSON)."""
    return json.dumps(to_jsonable(obj), indent=indent, sort_keys=sort_keys,
                      ensure_ascii=ensure_ascii, allow_nan=False)


# --------------------------------------------------------------------------------------
# the one atomic writer
# --------------------------------------------------------------------------------------
def _fsync_tree(path: Path) -> None:
    """Flush every file under ``path`` (or ``path`` itself) to disk."""
    files = ([path] if path.is_file() else
             [Path(d) / f for d, _, names in os.walk(path) for f in names])
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], *,
                 binary: bool = False, to_path: bool = False,
                 create_parent: bool = True) -> Path:
    """Write ``path`` atomically: readers see the old file or the whole new one, never a part.

    ``write`` fills a file of the same name inside a hidden temporary folder next to
    ``path`` (``.<name>.XXXX.tmp``):

    * by default ``write(fh)`` gets an open UTF-8 text file; with ``binary`` a binary one;
    * with ``to_path`` ``write(tmp_path)`` gets the path to write to itself (for writers
      that open files by name: SimpleITK, safetensors, a DICOM series folder). What it
      writes there -- the file, a header with detached data files, a folder -- is moved into
      place, the item named like ``path`` last. A folder replaces only an empty folder.

    Everything written is synced to disk before the rename; the files get the permissions
    of normally created ones. A failure (any exception, an interruption) leaves nothing
    behind and an existing ``path`` untouched.

    Args:
        create_parent: create a missing folder for ``path``; when false a missing folder is
            an :class:`InputError`.

    Returns ``path`` (as a Path).
    """
    path = Path(path)
    parent = path.parent
    if create_parent:
        parent.mkdir(parents=True, exist_ok=True)
    elif not parent.is_dir():
        raise InputError(path, f"the folder {parent} does not exist")
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent))
    try:
        target = tmpdir / path.name
        if to_path:
            write(target)
        elif binary:
            with open(target, "wb") as fh:
                write(fh)
        else:
            with open(target, "w", encoding="utf-8") as fh:
                write(fh)
        if not target.exists():
            raise OSError(f"{path}: the writer produced no {path.name}")
        produced = sorted(tmpdir.iterdir(), key=lambda p: p.name == path.name)
        for item in produced:
            _fsync_tree(item)
        for item in produced:  # detached data files first, the named item last
            dest = parent / item.name
            if item.is_dir() and dest.is_dir():
                dest.rmdir()  # only an empty folder is replaced
            os.replace(item, dest)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write a UTF-8 text file atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda fh: fh.write(text))


def write_json(path: str | os.PathLike, data: Any, *, indent: int | None = 2,
               sort_keys: bool = False, ensure_ascii: bool = True) -> Path:
    """Write ``data`` as JSON atomically, after :func:`to_jsonable` (non-finite floats
    become ``null``)."""
    return write_text(path, json_text(data, indent=indent, sort_keys=sort_keys,
                                      ensure_ascii=ensure_ascii) + "\n")
