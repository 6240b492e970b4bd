"""CT volumes in files: :func:`read_volume` and :func:`write_volume`, SimpleITK conversion.

* :func:`read_volume` -- a CT from NIfTI, NRRD, MetaImage or a DICOM series
  (:mod:`~XRayToCTLib.io.dicom_read`), in float32 HU with its exact LPS geometry.
* :func:`write_volume` -- NIfTI, NRRD or MetaImage, atomically; NRRD/MetaImage headers keep
  the metadata (JSON, by the one policy of :func:`~XRayToCTLib.io.files.to_jsonable`).
* :func:`volume_to_sitk`, :func:`sitk_to_volume` -- SimpleITK images with the same geometry.
* :func:`read_sitk_image`, :func:`write_sitk_image`, :func:`volume_format`,
  :func:`store_metadata`, :func:`restore_metadata` -- what the radiograph reader and
  writer and the sCT writer share with these.

ITK reads some broken files without complaint (truncated NIfTI, zero or negative spacing,
which it flips): the headers are checked here first.
"""
from __future__ import annotations

import gzip
import json
import math
import os
import re
import struct
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..geometry import Volume
from ..progress import ProgressCallback, report
from .dicom_read import has_dicom_magic, read_dicom_series
from .files import (DICOM_EXTENSIONS, IMAGE_EXTENSIONS, VOLUME_EXTENSIONS, atomic_write, extension,
                    json_text, one_line, require_exists)
from .hu_check import looks_like_hu, not_hu_error


# --------------------------------------------------------------------------------------
# SimpleITK <-> Volume: the one conversion
# --------------------------------------------------------------------------------------
def volume_to_sitk(volume: Volume, dtype: Any = None) -> sitk.Image:
    """The SimpleITK image of a Volume (same voxels, spacing, origin, direction; no
    metadata), its values cast to ``dtype`` when given (``np.float32`` for ITK's filters and
    registration)."""
    img = sitk.GetImageFromArray(np.ascontiguousarray(volume.array, dtype=dtype))
    img.SetSpacing(volume.spacing)
    img.SetOrigin(volume.origin)
    img.SetDirection(tuple(float(x) for x in volume.direction.reshape(-1)))
    return img


def sitk_to_volume(image: sitk.Image, metadata: dict | None = None) -> Volume:
    """A Volume from a 3D SimpleITK image (geometry copied exactly)."""
    if image.GetDimension() != 3:
        raise ValueError(f"expected a 3D image, got {image.GetDimension()}D")
    return Volume(sitk.GetArrayFromImage(image), image.GetSpacing(), image.GetOrigin(),
                  np.asarray(image.GetDirection(), dtype=float).reshape(3, 3),
                  dict(metadata or {}))


# --------------------------------------------------------------------------------------
# metadata in NRRD / MetaImage headers
# --------------------------------------------------------------------------------------
_HEADER_KEY = re.compile(r"^[A-Za-z][A-Za-z0-9_.\-]{0,63}$")


def header_strings(metadata: dict[str, Any]) -> dict[str, str]:
    """Metadata entries that are simple one-line ASCII strings, safe as NRRD/MHA keys."""
    out = {}
    for key, value in metadata.items():
        if not isinstance(value, str) or not _HEADER_KEY.match(str(key)):
            continue
        if key.upper().startswith(("NRRD_", "ITK_")) or key.startswith("xraytoct_"):
            continue
        if "\n" in value or "\r" in value or not value.isascii() or len(value) > 1000:
            continue
        out[key] = value
    return out


def store_metadata(img: sitk.Image, metadata: dict[str, Any]) -> None:
    """Put ``metadata`` in an NRRD/MetaImage header: every simple one-line string as its own
    key (:func:`header_strings`) and the whole dict as JSON under ``xraytoct_metadata``
    (:func:`~XRayToCTLib.io.files.json_text`'s policy), which :func:`restore_metadata`
    reads back."""
    for key, value in header_strings(metadata).items():
        img.SetMetaData(key, value)
    img.SetMetaData("xraytoct_metadata", json_text(metadata))


def restore_metadata(img: sitk.Image, key: str = "xraytoct_metadata") -> dict[str, Any]:
    """The metadata dict :func:`store_metadata` stored as JSON under ``key`` ({} when absent
    or unreadable)."""
    if not img.HasMetaDataKey(key):
        return {}
    try:
        value = json.loads(img.GetMetaData(key))
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


# --------------------------------------------------------------------------------------
# NIfTI / NRRD / MetaImage headers: checks ITK does not do
# --------------------------------------------------------------------------------------
_NIFTI_BYTES = {2: 1, 4: 2, 8: 4, 16: 4, 32: 8, 64: 8, 128: 3, 256: 1, 512: 2, 768: 4,
                1024: 8, 1280: 8, 1536: 16, 1792: 16, 2048: 32, 2304: 4}


def _check_nifti(path: Path) -> None:
    """Spacing and completeness of a NIfTI-1/2 file (ITK reads truncated ones silently)."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            head = f.read(544)
    except (OSError, EOFError) as exc:
        raise InputError(path, f"unreadable NIfTI file: {one_line(exc)}") from None
    if len(head) < 348:
        raise InputError(path, "truncated NIfTI file (shorter than its header)")
    for endian in "<>":
        size = struct.unpack_from(endian + "i", head, 0)[0]
        if size in (348, 540):
            break
    else:
        raise InputError(path, "not a NIfTI file (bad header size)")
    if size == 348:
        dims = struct.unpack_from(endian + "8h", head, 40)
        datatype = struct.unpack_from(endian + "h", head, 70)[0]
        pixdim = struct.unpack_from(endian + "8f", head, 76)
        vox_offset = struct.unpack_from(endian + "f", head, 108)[0]
    else:
        if len(head) < 540:
            raise InputError(path, "truncated NIfTI-2 file (shorter than its header)")
        datatype = struct.unpack_from(endian + "h", head, 12)[0]
        dims = struct.unpack_from(endian + "8q", head, 16)
        pixdim = struct.unpack_from(endian + "8d", head, 104)
        vox_offset = struct.unpack_from(endian + "q", head, 168)[0]
    ndim = int(dims[0])
    if not 1 <= ndim <= 7:
        raise InputError(path, f"bad NIfTI dimension count {ndim}")
    for axis in range(1, min(ndim, 3) + 1):
        if not (math.isfinite(pixdim[axis]) and pixdim[axis] > 0):
            raise InputError(path, f"zero or negative voxel spacing (pixdim[{axis}] = "
                                   f"{pixdim[axis]:g})")
    nbytes = _NIFTI_BYTES.get(int(datatype))
    if nbytes is None:
        return
    expected = int(vox_offset) + nbytes * int(np.prod([max(1, int(d)) for d in dims[1:ndim + 1]]))
    if opener is open:
        actual = path.stat().st_size
    else:
        actual = 0
        try:
            with gzip.open(path, "rb") as f:
                while True:
                    chunk = f.read(1 << 22)
                    if not chunk:
                        break
                    actual += len(chunk)
        except (OSError, EOFError) as exc:
            raise InputError(path, f"truncated or corrupt compressed NIfTI file: "
                                   f"{one_line(exc)}") from None
    if actual < expected:
        raise InputError(path, f"truncated NIfTI file ({actual} bytes of image data and "
                               f"header, {expected} expected)")


def _text_header(path: Path, stop: bytes) -> str:
    with open(path, "rb") as f:
        data = f.read(65536)
    end = data.find(stop)
    return data[: end if end >= 0 else len(data)].decode("latin-1")


def _check_text_header(path: Path, fmt: str) -> None:
    """Zero/negative spacing in a MetaImage or NRRD header (ITK flips negative ones)."""
    try:
        if fmt == "metaimage":
            text = _text_header(path, b"ElementDataFile")
            for key in ("ElementSpacing", "ElementSize"):
                m = re.search(rf"^\s*{key}\s*=\s*(.+)$", text, re.MULTILINE)
                if m and any(float(x) <= 0 for x in m.group(1).split()):
                    raise InputError(path, f"zero or negative voxel spacing ({key} = "
                                           f"{m.group(1).strip()})")
        else:
            text = _text_header(path, b"\n\n")
            m = re.search(r"^spacings:\s*(.+)$", text, re.MULTILINE)
            if m:
                vals = [float(x) for x in m.group(1).split() if x.lower() != "nan"]
                if any(v <= 0 for v in vals):
                    raise InputError(path, f"zero or negative voxel spacing (spacings: "
                                           f"{m.group(1).strip()})")
            m = re.search(r"^space directions:\s*(.+)$", text, re.MULTILINE)
            if m:
                for vec in re.findall(r"\(([^)]*)\)", m.group(1)):
                    if all(float(x) == 0 for x in vec.split(",")):
                        raise InputError(path, "zero voxel spacing (a zero vector in "
                                               "'space directions')")
    except ValueError:
        pass  # unparsable numbers: let ITK report it


def read_sitk_image(path: Path, fmt: str) -> sitk.Image:
    """A NIfTI/NRRD/MetaImage file (``fmt`` from :data:`VOLUME_EXTENSIONS`) read by
    SimpleITK after the header checks ITK does not do; InputError with one line on failure."""
    if fmt == "nifti":
        _check_nifti(path)
    else:
        _check_text_header(path, fmt)
    try:
        return sitk.ReadImage(str(path))
    except Exception as exc:
        msg = one_line(str(exc).replace(str(path), path.name))
        if "Unable to determine ImageIO reader" in msg:
            msg = "not a readable image of this type (truncated or corrupt?)"
        elif "No such file" in msg and extension(path) in (".mha", ".nrrd"):
            msg = "the image data could not be read (truncated or corrupt file?)"
        raise InputError(path, f"cannot read the {fmt} file: {msg}") from None


def _read_image_volume(path: Path, fmt: str, rescale: tuple[float, float] | None,
                       require_hu: bool) -> Volume:
    img = read_sitk_image(path, fmt)
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(path, f"a {img.GetNumberOfComponentsPerPixel()}-component (colour or "
                               f"vector) image, not a CT")
    if img.GetDimension() == 4 and img.GetSize()[3] == 1:
        img = sitk.Extract(img, list(img.GetSize()[:3]) + [0], [0, 0, 0, 0])
    if img.GetDimension() == 2:
        raise InputError(path, "a 2D image, not a CT volume (read it as a radiograph?)")
    if img.GetDimension() != 3:
        raise InputError(path, f"a {img.GetDimension()}D image, not a 3D CT volume")
    if min(img.GetSize()) < 2:
        raise InputError(path, f"a single slice (size {img.GetSize()}), not a CT volume")
    if min(img.GetSpacing()) <= 0:
        raise InputError(path, f"zero or negative voxel spacing {img.GetSpacing()}")
    array = sitk.GetArrayFromImage(img)
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        bad = int(np.count_nonzero(~np.isfinite(array)))
        raise InputError(path, f"{bad} voxels are NaN or infinite")
    array = array.astype(np.float32, copy=False)
    if rescale is not None:
        array = (array.astype(np.float64) * float(rescale[0]) + float(rescale[1])).astype(np.float32)
    hu_ok = looks_like_hu(array)
    if require_hu and not hu_ok:
        raise not_hu_error(path, array, user_rescale=rescale is not None)
    metadata = restore_metadata(img)
    metadata.update({"source": str(path), "format": fmt,
                     "units": "HU" if hu_ok else "stored values"})
    if rescale is not None:
        metadata["rescale"] = {"slope": float(rescale[0]), "intercept": float(rescale[1]),
                               "from": "user"}
    try:
        return Volume(array, img.GetSpacing(), img.GetOrigin(),
                      np.asarray(img.GetDirection(), dtype=float).reshape(3, 3), metadata)
    except ValueError as exc:
        raise InputError(path, f"unusable geometry: {one_line(exc)} (sheared or "
                               f"non-orthogonal axes? resample it first)") from None


# --------------------------------------------------------------------------------------
# read_volume
# --------------------------------------------------------------------------------------
def read_volume(path: str | os.PathLike, *, rescale: tuple[float, float] | None = None,
                series_uid: str | None = None, require_hu: bool = True,
                progress: ProgressCallback | None = None) -> Volume:
    """Read a CT as a float32 :class:`Volume` in HU, with its exact LPS geometry.

    Args:
        path: a NIfTI (``.nii``, ``.nii.gz``), NRRD (``.nrrd``, ``.nhdr``) or MetaImage
            (``.mha``, ``.mhd``) file, a folder holding a DICOM series, or one DICOM file
            of a series (its whole series is read).
        rescale: ``(slope, intercept)`` making HU from the raw stored values, replacing the
            DICOM header's RescaleSlope/Intercept (CLI ``--rescale SLOPE INTERCEPT``).
        series_uid: which series to read from a folder holding several.
        require_hu: refuse values that do not look like HU
            (:func:`~XRayToCTLib.io.hu_check.looks_like_hu`).
        progress: optional ``(fraction, message)`` callback.

    Irregular DICOM series (gantry tilt, uneven gaps) are resampled onto a regular grid
    (:mod:`~XRayToCTLib.io.dicom_read`); ``metadata["resampled_from_irregular_series"]`` says so.
    ``metadata`` holds ``source``, ``format``, ``units`` and, for DICOM, ``dicom`` (patient,
    study and series tags), ``series_uid``, ``rescale`` and ``window``.

    Raises:
        InputError: missing or unreadable file, unknown type, 2D image, NaN/Inf voxels,
            zero/negative spacing, several series without ``series_uid``, values not in HU.
    """
    p = Path(path)
    require_exists(p)
    if rescale is not None:
        try:
            rescale = (float(rescale[0]), float(rescale[1]))
        except (TypeError, ValueError, IndexError):
            raise InputError(p, f"rescale must be two numbers (SLOPE INTERCEPT), got {rescale!r}") from None
        if rescale[0] == 0 or not all(math.isfinite(x) for x in rescale):
            raise InputError(p, f"rescale slope must be non-zero and finite, got {rescale}")
    report(progress, 0.0, f"reading {p.name}")
    if p.is_dir():
        return read_dicom_series(p, rescale, series_uid, require_hu, progress)
    fmt = VOLUME_EXTENSIONS.get(extension(p))
    if fmt is not None:
        vol = _read_image_volume(p, fmt, rescale, require_hu)
        report(progress, 1.0, "done")
        return vol
    if extension(p) in DICOM_EXTENSIONS or has_dicom_magic(p):
        return read_dicom_series(p, rescale, series_uid, require_hu, progress)
    if extension(p) in IMAGE_EXTENSIONS:
        raise InputError(p, f"a 2D {IMAGE_EXTENSIONS[extension(p)].upper()} image, not a CT "
                            f"volume (read it as a radiograph?)")
    raise InputError(p, f"unknown file type {extension(p) or '(no extension)'!r}: expected "
                        f"{', '.join(VOLUME_EXTENSIONS)}, a DICOM file or a DICOM folder")


# --------------------------------------------------------------------------------------
# writers
# --------------------------------------------------------------------------------------
def volume_format(path: str | os.PathLike) -> str:
    """The format :func:`write_volume` writes for ``path``'s extension (InputError when it
    writes none)."""
    fmt = VOLUME_EXTENSIONS.get(extension(path))
    if fmt is None:
        raise InputError(Path(path), f"cannot write {extension(path) or '(no extension)'!r}: "
                               f"use one of {', '.join(VOLUME_EXTENSIONS)}")
    return fmt


def write_sitk_image(img: sitk.Image, path: str | os.PathLike, compress: bool = True) -> Path:
    """Write a SimpleITK image atomically (:func:`~XRayToCTLib.io.files.atomic_write`; the
    folder must exist). A writer failure is an ``OSError`` naming the file. Returns the path."""
    path = Path(path)

    def write(tmp: Path) -> None:
        sitk.WriteImage(img, str(tmp), bool(compress))
    try:
        return atomic_write(path, write, to_path=True, create_parent=False)
    except InputError:
        raise
    except Exception as exc:
        raise OSError(f"{path}: could not write: {one_line(exc)}") from exc


def write_volume(volume: Volume, path: str | os.PathLike, *, compress: bool = True) -> Path:
    """Write a Volume to NIfTI, NRRD or MetaImage (by extension), atomically.

    NRRD and MetaImage headers get every simple one-line string of ``volume.metadata`` as
    its own key, plus ``xraytoct_metadata`` (JSON of the metadata by
    :func:`~XRayToCTLib.io.files.to_jsonable`'s policy: non-finite numbers become null) which
    :func:`read_volume` restores. NIfTI keeps voxels and geometry only. Booleans are
    written as uint8; other dtypes as they are. Returns the path."""
    p = Path(path)
    fmt = volume_format(p)
    array = volume.array.astype(np.uint8) if volume.array.dtype == bool else volume.array
    img = volume_to_sitk(volume.with_array(array))
    if fmt != "nifti":
        store_metadata(img, volume.metadata)
    write_sitk_image(img, p, compress)
    return p
