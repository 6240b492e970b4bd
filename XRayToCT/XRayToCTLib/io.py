"""Reading and writing CTs and radiographs with exact geometry (SimpleITK, pydicom).

Everything returned is a :class:`~XRayToCTLib.geometry.Volume` or
:class:`~XRayToCTLib.geometry.Radiograph` in LPS; bad input raises
:class:`~XRayToCTLib.errors.InputError` with one line naming the file and the problem.
Writers never leave a half-written file: they write to a temporary name and rename.

Public functions
----------------
* :func:`read_volume` -- a CT from NIfTI, NRRD, MetaImage or a DICOM series, in float32 HU.
* :func:`read_radiograph` -- a 2D image from DICOM, PNG/TIFF/JPEG, NRRD/NIfTI/MetaImage.
* :func:`write_volume`, :func:`write_radiograph`, :func:`write_dicom_series` -- atomic writers.
* :func:`is_dicom_file`, :func:`is_dicom_dir`, :func:`list_dicom_series` -- small helpers.
* :func:`looks_like_hu` -- the "is this a CT in Hounsfield units" plausibility test.

Design decisions
----------------
* **DICOM geometry is built here**, from every slice's ImagePositionPatient (IPP) and
  ImageOrientationPatient (IOP), not from a reader's guess. The slice normal is
  ``n = row x col`` of the (orthonormalised) IOP; slices are sorted by ``IPP . n``.
* A series is **regular** when its positions along ``n`` are evenly spaced and every IPP lies
  on the line through the first IPP along ``n`` (tolerance: 1 % of the slice gap / pixel
  size, at least 5 micrometres). Then the volume is the plain stack with direction
  ``[row, col, n]``.
* Otherwise (gantry tilt, uneven gaps, missing slices) the series is **resampled** onto an
  orthonormal grid with direction ``[row, col, n]``, the slices' in-plane pixel spacing,
  and a slice spacing equal to the **median** gap, adjusted so that the first and last
  output planes are exactly the first and last acquired planes (the grid covers the whole
  acquired span along ``n``; in-plane it covers the union of all slices' footprints, on
  the first slice's pixel lattice). Each output voxel is linearly interpolated along ``n``
  between the two acquired planes around it; in each plane the value is bilinearly
  interpolated at the voxel's own physical position (the plane's own IPP is used, which is
  what tilt changes). Voxels not surrounded by acquired data get the fill value (-1000 HU,
  air, for HU data; else the data minimum). The median gap was chosen over the smallest
  gap because one isolated thin gap (GE's 1.08 mm transition between a 4 mm and a 7 mm
  block) would otherwise inflate the volume several-fold without adding information.
  ``metadata["resampled_from_irregular_series"]`` records what was done.
* **"Not HU" heuristic** (:func:`looks_like_hu`): a head CT in Hounsfield units always has
  air around the head, so its 1st percentile is at or below -500 HU. Data whose 1st
  percentile is above -500 after the header's rescale (raw detector values 0..4095, values
  shifted by +1024, normalised 0..1 data, MR, Cormack units) are refused unless the caller
  gives ``rescale=(slope, intercept)`` (CLI ``--rescale SLOPE INTERCEPT``) or
  ``require_hu=False``. A user rescale replaces the header's RescaleSlope/Intercept and
  acts on the raw stored values (for NIfTI/NRRD/MetaImage: on the values as decoded).
  The check runs after a user rescale too, so a wrong rescale is caught.
* DICOM **PixelPaddingValue** pixels (e.g. GE's -1500 outside the reconstruction circle)
  are not data: they become the fill value (air).
* Radiographs keep "bone is bright": MONOCHROME1 DICOMs are inverted about their nominal
  range; ``metadata["photometric"]`` keeps the original interpretation.
"""
from __future__ import annotations

import dataclasses
import datetime
import gzip
import json
import math
import os
import re
import shutil
import struct
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import SimpleITK as sitk

from .errors import InputError
from .geometry import ProjectionGeometry, Radiograph, Volume
from .progress import ProgressCallback, report, scaled

# --------------------------------------------------------------------------------------
# constants
# --------------------------------------------------------------------------------------
VOLUME_EXTENSIONS = {".nii": "nifti", ".nii.gz": "nifti", ".nrrd": "nrrd", ".nhdr": "nrrd",
                     ".mha": "metaimage", ".mhd": "metaimage"}
"""File extensions :func:`read_volume` and :func:`write_volume` handle with SimpleITK."""
IMAGE_EXTENSIONS = {".png": "png", ".tif": "tiff", ".tiff": "tiff", ".jpg": "jpeg",
                    ".jpeg": "jpeg"}
"""Bitmap extensions :func:`read_radiograph` handles with Pillow."""
DICOM_EXTENSIONS = (".dcm", ".dicom", ".ima")

AIR_HU = -1000.0
HU_AIR_THRESHOLD = -500.0
"""A CT in HU has its 1st percentile at or below this (air); see :func:`looks_like_hu`."""
HU_PERCENTILE = 1.0

DICOM_CARRY_TAGS = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge",
    "PatientWeight", "PatientSize", "IssuerOfPatientID", "OtherPatientIDs", "EthnicGroup",
    "StudyInstanceUID", "StudyDate", "StudyTime", "StudyDescription", "StudyID",
    "AccessionNumber", "ReferringPhysicianName", "FrameOfReferenceUID",
    "PositionReferenceIndicator", "SpecificCharacterSet")
"""Patient, study and frame-of-reference tags a derived series carries over."""
DICOM_INFO_TAGS = DICOM_CARRY_TAGS + (
    "Modality", "Manufacturer", "ManufacturerModelName", "InstitutionName", "StationName",
    "SeriesInstanceUID", "SeriesDescription", "SeriesNumber", "SeriesDate", "SeriesTime",
    "BodyPartExamined", "PatientPosition", "ProtocolName", "ConvolutionKernel", "KVP",
    "GantryDetectorTilt", "SOPClassUID", "ImageType", "ViewPosition",
    "DistanceSourceToDetector", "DistanceSourceToPatient",
    "EstimatedRadiographicMagnificationFactor", "PhotometricInterpretation")
"""Tags copied (as strings) into ``metadata["dicom"]``."""

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"

_LUMA_601 = np.array([0.299, 0.587, 0.114])


# --------------------------------------------------------------------------------------
# SimpleITK <-> Volume (used by other modules; keep the signatures)
# --------------------------------------------------------------------------------------
def volume_to_sitk(volume: Volume) -> sitk.Image:
    """The SimpleITK image of a Volume (same voxels, spacing, origin, direction)."""
    img = sitk.GetImageFromArray(np.ascontiguousarray(volume.array))
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
# small helpers
# --------------------------------------------------------------------------------------
def _one_line(exc: BaseException | str, limit: int = 240) -> str:
    """A library's (often multi-line) error message as one short line."""
    text = str(exc)
    if "ERROR:" in text:  # ITK: "...hxx:77:\nITK ERROR: Image(0x...): the message"
        text = text.split("ERROR:", 1)[1]
        text = re.sub(r"^\s*\w+\(0x[0-9a-fA-F]+\):", "", text)
    text = " ".join(text.split())
    if not text:
        text = type(exc).__name__ if isinstance(exc, BaseException) else "unknown error"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _extension(path: Path) -> str:
    """Lower-case extension, with ``.nii.gz`` recognised as one."""
    name = path.name.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return path.suffix.lower()


def _require_exists(path: Path) -> None:
    if not path.exists():
        raise InputError(path, "no such file or folder")


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (Path, os.PathLike)):
        return os.fspath(value)
    if isinstance(value, (tuple, set)):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _jsonable(metadata: dict[str, Any]) -> dict[str, Any]:
    """The JSON-serialisable entries of a metadata dict (others are dropped)."""
    out = {}
    for key, value in metadata.items():
        try:
            json.dumps(value, default=_json_default)
        except (TypeError, ValueError):
            continue
        out[str(key)] = value
    return out


def to_jsonable(obj: Any) -> Any:
    """``obj`` as plain JSON types: numpy scalars and arrays become numbers and lists,
    non-finite floats ``None``, a ProjectionGeometry its dict, paths and anything else text."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, (np.integer, int)):
        return int(obj)
    if isinstance(obj, str) or obj is None:
        return obj
    if isinstance(obj, ProjectionGeometry):
        return obj.to_dict()
    return os.fspath(obj) if isinstance(obj, os.PathLike) else str(obj)


_HEADER_KEY = re.compile(r"^[A-Za-z][A-Za-z0-9_.\-]{0,63}$")


def _header_strings(metadata: dict[str, Any]) -> dict[str, str]:
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


# --------------------------------------------------------------------------------------
# the HU plausibility test
# --------------------------------------------------------------------------------------
def _sample(array: np.ndarray, max_values: int = 2_000_000) -> np.ndarray:
    flat = np.asarray(array).reshape(-1)
    step = max(1, flat.size // max_values)
    sample = flat[::step]
    return sample[np.isfinite(sample)] if sample.dtype.kind == "f" else sample


def hu_percentile(array: np.ndarray) -> float:
    """The :data:`HU_PERCENTILE` percentile of the finite values (on a subsample)."""
    sample = _sample(array)
    if sample.size == 0:
        return float("nan")
    return float(np.percentile(sample, HU_PERCENTILE))


def looks_like_hu(array: np.ndarray) -> bool:
    """Whether a head CT looks like it is in Hounsfield units.

    The test: the 1st percentile of the values is at or below -500 (a head CT always has
    air, -1000 HU, around the head or in the sinuses). Raw detector values (0..4095), HU
    shifted by +1024, normalised data, MR and other modalities fail it."""
    p = hu_percentile(array)
    return bool(math.isfinite(p) and p <= HU_AIR_THRESHOLD)


def _not_hu_error(path: Path, array: np.ndarray, *, user_rescale: bool, extra: str = "") -> InputError:
    sample = _sample(array)
    lo, hi = (float(sample.min()), float(sample.max())) if sample.size else (math.nan, math.nan)
    p = hu_percentile(array)
    stats = f"1st percentile {p:.4g}, range {lo:.4g}..{hi:.4g}"
    if user_rescale:
        return InputError(path, f"values after the given rescale still do not look like HU "
                                f"({stats}: no air below {HU_AIR_THRESHOLD:.0f} HU){extra}; "
                                f"check --rescale SLOPE INTERCEPT, or use require_hu=False")
    return InputError(path, f"values do not look like Hounsfield units ({stats}: no air below "
                            f"{HU_AIR_THRESHOLD:.0f} HU) and the header has no rescale that "
                            f"fixes it{extra}; pass the rescale to HU, e.g. --rescale 1 -1024 "
                            f"(rescale=(1, -1024)) for values stored as HU+1024, or "
                            f"require_hu=False to keep the stored values")


# --------------------------------------------------------------------------------------
# atomic writing
# --------------------------------------------------------------------------------------
def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` inside a hidden temporary folder next to ``path`` (same
    name, so writers pick the format from the extension and detached data files keep
    their names), then move the results into place, the file named ``path`` last."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(path, f"the folder {parent} does not exist")
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent))
    try:
        write(tmpdir / path.name)
        produced = sorted(tmpdir.iterdir(), key=lambda p: p.name == path.name)
        if not any(p.name == path.name for p in produced):
            raise OSError(f"the writer produced no {path.name}")
        for item in produced:  # detached data files first, the header last
            os.replace(item, parent / item.name)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], *,
                 binary: bool = False) -> Path:
    """Write one file atomically: ``write(fh)`` fills a temporary file in the same folder
    (text, or bytes with ``binary``), which is flushed, synced, given the permissions of a
    normally created file and renamed onto ``path``. A failure leaves no partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # mkstemp makes 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write a text file atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda fh: fh.write(text))


def write_json(path: str | os.PathLike, data: Any, *, indent: int = 2) -> Path:
    """Write JSON atomically (values JSON cannot hold are written with ``str``)."""
    return write_text(path, json.dumps(data, indent=indent, default=str) + "\n")


# --------------------------------------------------------------------------------------
# DICOM: detection and series scanning
# --------------------------------------------------------------------------------------
def _has_dicom_magic(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def is_dicom_file(path: str | os.PathLike) -> bool:
    """True for a file with the DICOM Part 10 preamble, or a ``.dcm``/``.dicom``/``.ima``
    file that pydicom can parse."""
    p = Path(path)
    if not p.is_file():
        return False
    if _has_dicom_magic(p):
        return True
    if p.suffix.lower() in DICOM_EXTENSIONS:
        try:
            import pydicom
            ds = pydicom.dcmread(str(p), stop_before_pixels=True, force=True)
            return "SOPClassUID" in ds or "Rows" in ds
        except Exception:
            return False
    return False


def _candidate_files(folder: Path) -> list[Path]:
    return [p for p in sorted(folder.iterdir())
            if p.is_file() and not p.name.startswith(".") and p.name.upper() != "DICOMDIR"]


def is_dicom_dir(path: str | os.PathLike) -> bool:
    """True for a folder holding at least one DICOM file (not searched recursively)."""
    p = Path(path)
    return p.is_dir() and any(is_dicom_file(f) for f in _candidate_files(p))


@dataclasses.dataclass
class _Slice:
    """One 2D image of a series: a single-frame file, or one frame of a multi-frame file."""

    path: Path
    frame: int | None
    ipp: np.ndarray | None
    iop: np.ndarray | None
    rows: int
    cols: int
    pixel_spacing: tuple[float, float] | None  # (row spacing, column spacing)
    slope: float
    intercept: float
    instance: int
    sop_uid: str
    header: Any  # the pydicom Dataset without pixels


def _floats(value: Any, n: int) -> np.ndarray | None:
    try:
        arr = np.asarray([float(v) for v in value], dtype=float)
    except (TypeError, ValueError):
        return None
    return arr if arr.size == n and np.all(np.isfinite(arr)) else None


def _item_get(items: Sequence[Any], seq: str, attr: str) -> Any:
    """First value of ``items[i].seq[0].attr`` over the functional-group items."""
    for item in items:
        if item is not None and seq in item and len(item[seq].value):
            sub = item[seq].value[0]
            if attr in sub:
                return sub[attr].value
    return None


def _slices_of(ds: Any, path: Path) -> list[_Slice]:
    """The 2D images in one DICOM file (enhanced multi-frame files have several)."""
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    sop = str(ds.get("SOPInstanceUID", path.name))
    inst = int(ds.get("InstanceNumber", 0) or 0)
    nframes = int(ds.get("NumberOfFrames", 1) or 1)
    if nframes > 1 and "PerFrameFunctionalGroupsSequence" in ds:
        shared = ds.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in ds else None
        out = []
        for f, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
            groups = (item, shared)
            ps = _floats(_item_get(groups, "PixelMeasuresSequence", "PixelSpacing") or [], 2)
            slope = _item_get(groups, "PixelValueTransformationSequence", "RescaleSlope")
            icpt = _item_get(groups, "PixelValueTransformationSequence", "RescaleIntercept")
            out.append(_Slice(
                path, f, _floats(_item_get(groups, "PlanePositionSequence", "ImagePositionPatient") or [], 3),
                _floats(_item_get(groups, "PlaneOrientationSequence", "ImageOrientationPatient") or [], 6),
                rows, cols, None if ps is None else (ps[0], ps[1]),
                float(slope if slope is not None else 1.0), float(icpt if icpt is not None else 0.0),
                f + 1, f"{sop}#{f}", ds))
        return out
    ps = _floats(ds.get("PixelSpacing", []) or [], 2)
    return [_Slice(path, None if nframes == 1 else 0,
                   _floats(ds.get("ImagePositionPatient", []) or [], 3),
                   _floats(ds.get("ImageOrientationPatient", []) or [], 6),
                   rows, cols, None if ps is None else (ps[0], ps[1]),
                   float(ds.get("RescaleSlope", 1.0) or 1.0),
                   float(ds.get("RescaleIntercept", 0.0) or 0.0), inst, sop, ds)]


def _read_header(path: Path, *, strict: bool) -> Any | None:
    """pydicom header (no pixels) of an image file; None for a non-DICOM or non-image file
    when not ``strict``; InputError for an unreadable one when ``strict``."""
    import pydicom
    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True, force=True)
    except Exception as exc:
        if strict:
            raise InputError(path, f"unreadable DICOM file: {_one_line(exc)}") from None
        return None
    meta_sop = str(getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", ""))
    if meta_sop == MEDIA_STORAGE_DIRECTORY:
        return None
    if "Rows" not in ds or "Columns" not in ds:
        if strict and not ("SOPClassUID" in ds or _has_dicom_magic(path)):
            raise InputError(path, "not a DICOM file")
        return None  # RTSTRUCT, SR, ...: not an image
    return ds


def _scan_series(folder: Path) -> dict[str, list[_Slice]]:
    """All image slices in ``folder`` grouped by SeriesInstanceUID."""
    series: dict[str, list[_Slice]] = {}
    for p in _candidate_files(folder):
        dicom_like = _has_dicom_magic(p) or p.suffix.lower() in DICOM_EXTENSIONS
        if not dicom_like and p.suffix:
            continue
        ds = _read_header(p, strict=dicom_like)
        if ds is None:
            continue
        series.setdefault(str(ds.get("SeriesInstanceUID", "")), []).extend(_slices_of(ds, p))
    return series


def _series_line(uid: str, slices: list[_Slice]) -> str:
    desc = str(slices[0].header.get("SeriesDescription", "") or "").strip() or "no description"
    mod = str(slices[0].header.get("Modality", "") or "?")
    return f"{uid or '(no SeriesInstanceUID)'} ({mod}, {desc!r}, {len(slices)} slices)"


def list_dicom_series(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The image series in a DICOM folder: ``[{uid, description, modality, n_slices}]``."""
    folder = Path(path)
    _require_exists(folder)
    if not folder.is_dir():
        folder = folder.parent
    out = []
    for uid, slices in _scan_series(folder).items():
        h = slices[0].header
        out.append({"uid": uid, "description": str(h.get("SeriesDescription", "") or ""),
                    "modality": str(h.get("Modality", "") or ""), "n_slices": len(slices)})
    return out


def _dicom_info(ds: Any) -> dict[str, str]:
    """Patient/study/series tags of a header as JSON-friendly strings."""
    info = {}
    for tag in DICOM_INFO_TAGS:
        if tag in ds and ds[tag].value not in (None, ""):
            value = ds[tag].value
            if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
                value = "\\".join(str(v) for v in value)
            info[tag] = str(value)
    return info


def _select_series(path: Path, series_uid: str | None) -> tuple[str, list[_Slice]]:
    """The slices of the series asked for (by folder + uid, or by one of its files)."""
    if path.is_dir():
        folder, own_uid = path, None
    else:
        ds = _read_header(path, strict=True)
        if ds is None:
            raise InputError(path, "a DICOM file without an image (no Rows/Columns)")
        folder, own_uid = path.parent, str(ds.get("SeriesInstanceUID", ""))
        if series_uid is not None and series_uid != own_uid:
            raise InputError(path, f"this file belongs to series {own_uid}, not to the "
                                   f"requested series {series_uid}")
    series = _scan_series(folder)
    if not series:
        if not _candidate_files(folder):
            raise InputError(folder, "the folder is empty: expected a DICOM series")
        raise InputError(folder, "no DICOM image files in this folder (not searched "
                                 "recursively): expected a DICOM series")
    wanted = own_uid if own_uid is not None else series_uid
    if wanted is not None:
        if wanted not in series:
            listing = "; ".join(_series_line(u, s) for u, s in series.items())
            raise InputError(folder, f"no series {wanted} here; the folder holds: {listing}")
        return wanted, series[wanted]
    if len(series) > 1:
        listing = "; ".join(_series_line(u, s) for u, s in
                            sorted(series.items(), key=lambda kv: -len(kv[1])))
        raise InputError(folder, f"{len(series)} series in this folder: {listing}; choose one "
                                 f"with series_uid=UID (command line: --series UID)")
    return next(iter(series.items()))


# --------------------------------------------------------------------------------------
# DICOM: pixel data
# --------------------------------------------------------------------------------------
def _decode_pixels(path: Path) -> tuple[np.ndarray, Any]:
    """Stored pixel values of a DICOM file (frames first if multi-frame) and its dataset.

    pydicom decodes uncompressed and RLE data itself; compressed transfer syntaxes it has
    no plugin for are decoded with SimpleITK's GDCM (whose modality rescale is undone)."""
    import pydicom
    try:
        ds = pydicom.dcmread(str(path), force=True)
    except Exception as exc:
        raise InputError(path, f"unreadable DICOM file: {_one_line(exc)}") from None
    if not (_has_dicom_magic(path) or "SOPClassUID" in ds or "Rows" in ds):
        raise InputError(path, "not a DICOM file")
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise InputError(path, "the DICOM file has no pixel data (truncated?)")
    try:
        return np.asarray(ds.pixel_array), ds
    except Exception as exc:
        first_error = _one_line(exc)
    ts = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
    if ts in ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", ""):
        raise InputError(path, f"cannot decode the pixel data (truncated file?): {first_error}")
    try:
        img = sitk.ReadImage(str(path))
        arr = sitk.GetArrayFromImage(img).astype(np.float64)
    except Exception:
        raise InputError(path, f"cannot decode the pixel data (transfer syntax {ts}; "
                               f"truncated or unsupported compression): {first_error}") from None
    if img.GetNumberOfComponentsPerPixel() == 1:
        slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
        intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
        arr = np.rint((arr - intercept) / slope)
    if int(ds.get("NumberOfFrames", 1) or 1) == 1 and arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    return arr, ds


def _load_slice_pixels(slices: list[_Slice], progress: ProgressCallback | None,
                       start: float, stop: float) -> list[np.ndarray]:
    """Stored pixels of every slice, each file decoded once."""
    cache: dict[Path, np.ndarray] = {}
    out = []
    for n, s in enumerate(slices):
        if s.path not in cache:
            if s.frame is None:
                cache.clear()  # single-frame files are read once each: keep memory low
            cache[s.path] = _decode_pixels(s.path)[0]
        arr = cache[s.path]
        if s.frame is not None and not (arr.ndim == 3 and arr.shape[0] > s.frame and
                                        arr.shape[1:] == (s.rows, s.cols)):
            raise InputError(s.path, f"frame {s.frame} missing or of the wrong shape in the "
                                     f"pixel data {arr.shape} (truncated file?)")
        img = arr[s.frame] if s.frame is not None else arr
        if img.shape != (s.rows, s.cols):
            raise InputError(s.path, f"pixel data of shape {img.shape} where the header says "
                                     f"{s.rows}x{s.cols} (a colour image, or truncated file?)")
        out.append(img)
        report(progress, start + (stop - start) * (n + 1) / len(slices), "reading DICOM slices")
    return out


# --------------------------------------------------------------------------------------
# DICOM: geometry of a stack of slices
# --------------------------------------------------------------------------------------
def _frame_from_iop(iop: np.ndarray) -> np.ndarray:
    """Orthonormal 3x3 ``[row, col, normal]`` (columns) from a 6-value IOP."""
    r = iop[:3] / np.linalg.norm(iop[:3])
    c = iop[3:] - r * float(r @ iop[3:])
    c = c / np.linalg.norm(c)
    return np.stack([r, c, np.cross(r, c)], axis=1)


@dataclasses.dataclass
class _StackGeometry:
    frame: np.ndarray          # columns: row dir, col dir, normal
    pixel_spacing: tuple[float, float]  # (row spacing, column spacing)
    positions: np.ndarray      # (N,) IPP . normal, ascending
    offsets: np.ndarray        # (N, 2) in-plane offsets (along row dir, col dir) from slice 0
    gaps: np.ndarray           # (N-1,)
    tilts_deg: np.ndarray      # (N-1,) angle between the stacking step and the normal
    regular: bool
    reason: str


def _stack_geometry(slices: list[_Slice], source: Path) -> tuple[list[_Slice], _StackGeometry]:
    """Sort the slices along their normal and decide whether they form a regular grid."""
    for s in slices:
        if s.ipp is None or s.iop is None:
            raise InputError(s.path, "no valid ImagePositionPatient/ImageOrientationPatient: "
                                     "the slices cannot be placed in space")
        if s.pixel_spacing is None or min(s.pixel_spacing) <= 0:
            raise InputError(s.path, f"missing or non-positive PixelSpacing {s.pixel_spacing}")
        if min(np.linalg.norm(s.iop[:3]), np.linalg.norm(s.iop[3:])) < 1e-6:
            raise InputError(s.path, "ImageOrientationPatient has a zero vector")
    ref = slices[0]
    frame = _frame_from_iop(ref.iop)
    for s in slices[1:]:
        f = _frame_from_iop(s.iop)
        if not np.allclose(f, frame, atol=1e-3):
            raise InputError(source, "the slices have different ImageOrientationPatient "
                                     "(a localizer or several stacks in one series); "
                                     "separate them into their own series")
        if (s.rows, s.cols) != (ref.rows, ref.cols):
            raise InputError(source, f"the slices have different sizes ({ref.rows}x{ref.cols} "
                                     f"and {s.rows}x{s.cols}); separate them into their own series")
        if not np.allclose(s.pixel_spacing, ref.pixel_spacing, rtol=1e-4, atol=1e-5):
            raise InputError(source, f"the slices have different PixelSpacing "
                                     f"({ref.pixel_spacing} and {s.pixel_spacing})")
    normal = frame[:, 2]
    order = sorted(range(len(slices)), key=lambda n: (float(slices[n].ipp @ normal),
                                                      slices[n].instance))
    slices = [slices[n] for n in order]
    ipps = np.stack([s.ipp for s in slices])
    pos = ipps @ normal
    gaps = np.diff(pos)
    dup = np.nonzero(gaps < 1e-3)[0]
    if dup.size:
        a, b = slices[dup[0]], slices[dup[0] + 1]
        raise InputError(source, f"{dup.size + 1} slices share a position (e.g. {a.path.name} "
                                 f"and {b.path.name} at {pos[dup[0]]:.3f} mm along the normal): "
                                 f"several acquisitions or phases in one series; separate them")
    rel = ipps - ipps[0]
    offsets = np.stack([rel @ frame[:, 0], rel @ frame[:, 1]], axis=1)
    steps = np.linalg.norm(np.diff(offsets, axis=0), axis=1)
    tilts = np.degrees(np.arctan2(steps, gaps))
    step = (pos[-1] - pos[0]) / (len(pos) - 1)
    tol_pos = max(0.005, 0.01 * step)
    tol_plane = max(0.005, 0.01 * min(ref.pixel_spacing))
    uneven = float(np.max(np.abs(pos - pos[0] - step * np.arange(len(pos))))) > tol_pos
    tilted = float(np.max(np.linalg.norm(offsets, axis=1))) > tol_plane
    reasons = []
    if tilted:
        reasons.append(f"gantry tilt (slice positions off the slice normal, up to "
                       f"{float(tilts.max()):.2f} deg)")
    if uneven:
        reasons.append(f"uneven slice gaps ({float(gaps.min()):.3f}..{float(gaps.max()):.3f} mm)")
    return slices, _StackGeometry(frame, ref.pixel_spacing, pos, offsets, gaps, tilts,
                                  not reasons, " and ".join(reasons))


# --------------------------------------------------------------------------------------
# resampling an irregular stack
# --------------------------------------------------------------------------------------
def _axis_weights(coords: np.ndarray, n: int):
    """Linear-interpolation indices/weights along one axis; valid within half a pixel."""
    valid = (coords >= -0.5 - 1e-6) & (coords <= n - 0.5 + 1e-6)
    c = np.clip(coords, 0.0, n - 1.0)
    i0 = np.floor(c).astype(np.intp)
    i1 = np.minimum(i0 + 1, n - 1)
    f = (c - i0).astype(np.float32)
    f[f < 1e-6] = 0.0
    return i0, i1, f, valid


def _sample_plane(img: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Bilinear samples of ``img`` at rows ``ys`` x columns ``xs`` (a separable grid of
    continuous pixel indices); NaN outside the image (beyond half a pixel from its edge).
    A zero weight never lets a NaN neighbour in."""
    x0, x1, fx, vx = _axis_weights(xs, img.shape[1])
    y0, y1, fy, vy = _axis_weights(ys, img.shape[0])
    tmp = img[:, x0] * (1.0 - fx)
    mx = fx > 0
    if mx.any():
        tmp[:, mx] += img[:, x1[mx]] * fx[mx]
    out = tmp[y0] * (1.0 - fy)[:, None]
    my = fy > 0
    if my.any():
        out[my] += tmp[y1[my]] * fy[my][:, None]
    out[~vy, :] = np.nan
    out[:, ~vx] = np.nan
    return out


def resample_stack(planes: Sequence[np.ndarray], ipps: np.ndarray, frame: np.ndarray,
                   pixel_spacing: tuple[float, float], slice_spacing: float | None = None,
                   progress: ProgressCallback | None = None) -> tuple[np.ndarray, tuple, tuple]:
    """Resample parallel planes at arbitrary positions onto a regular orthonormal grid.

    Args:
        planes: N float arrays ``[row, col]`` (NaN = no data), all of one shape.
        ipps: ``(N, 3)`` LPS position of each plane's pixel (0, 0), sorted along the normal.
        frame: 3x3, columns = row direction, column direction, normal (orthonormal).
        pixel_spacing: ``(row spacing, column spacing)`` of the planes.
        slice_spacing: output spacing along the normal; default the median gap, adjusted so
            the first and last output planes coincide with the first and last input planes.

    Returns ``(array [k, j, i] with NaN where no data, spacing (i, j, k), origin)``; the
    direction is ``frame``. See the module docstring for the method."""
    ipps = np.asarray(ipps, dtype=float)
    rs, cs = pixel_spacing
    rows, cols = planes[0].shape
    pos = ipps @ frame[:, 2]
    rel = ipps - ipps[0]
    u = rel @ frame[:, 0] / cs  # in-plane offsets of each plane, in output pixels
    v = rel @ frame[:, 1] / rs
    i_min, i_max = math.floor(u.min() + 1e-6), math.ceil(u.max() - 1e-6) + cols - 1
    j_min, j_max = math.floor(v.min() + 1e-6), math.ceil(v.max() - 1e-6) + rows - 1
    span = float(pos[-1] - pos[0])
    step = float(np.median(np.diff(pos))) if slice_spacing is None else float(slice_spacing)
    nk = max(2, int(round(span / step)) + 1)
    dk = span / (nk - 1)
    out = np.empty((nk, j_max - j_min + 1, i_max - i_min + 1), dtype=np.float32)
    xs_base = np.arange(i_min, i_max + 1, dtype=float)
    ys_base = np.arange(j_min, j_max + 1, dtype=float)
    cache: dict[int, np.ndarray] = {}

    def plane_at(s: int) -> np.ndarray:
        if s not in cache:
            if len(cache) > 2:
                cache.pop(min(cache))
            cache[s] = _sample_plane(np.asarray(planes[s], dtype=np.float32),
                                     ys_base - v[s], xs_base - u[s])
        return cache[s]

    for k in range(nk):
        t = pos[0] + k * dk
        s = int(np.clip(np.searchsorted(pos, t, side="right") - 1, 0, len(pos) - 2))
        w = float(np.clip((t - pos[s]) / (pos[s + 1] - pos[s]), 0.0, 1.0))
        if w < 1e-6:
            out[k] = plane_at(s)
        elif w > 1.0 - 1e-6:
            out[k] = plane_at(s + 1)
        else:
            out[k] = (1.0 - w) * plane_at(s) + w * plane_at(s + 1)
        report(progress, (k + 1) / nk, "resampling an irregular series")
    origin = ipps[0] + frame[:, 0] * (i_min * cs) + frame[:, 1] * (j_min * rs)
    return out, (cs, rs, dk), tuple(float(x) for x in origin)


# --------------------------------------------------------------------------------------
# DICOM series -> Volume
# --------------------------------------------------------------------------------------
def _padding_mask(raw: np.ndarray, ds: Any) -> np.ndarray | None:
    if "PixelPaddingValue" not in ds:
        return None
    try:
        a = float(ds.PixelPaddingValue)
        b = float(ds.get("PixelPaddingRangeLimit", a))
    except (TypeError, ValueError):
        return None
    lo, hi = min(a, b), max(a, b)
    mask = (raw >= lo) & (raw <= hi)
    return mask if mask.any() else None


def _read_dicom_series(path: Path, rescale: tuple[float, float] | None, series_uid: str | None,
                       require_hu: bool, progress: ProgressCallback | None) -> Volume:
    uid, slices = _select_series(path, series_uid)
    skipped = [s for s in slices if "LOCALIZER" in str(s.header.get("ImageType", "")).upper()]
    slices = [s for s in slices if s not in skipped]
    unique = {s.sop_uid: s for s in slices}  # the same file copied twice
    slices = list(unique.values())
    if len(slices) < 2:
        where = slices[0].path if slices else path
        raise InputError(where, "a single 2D image, not a CT volume (a series needs at least "
                                "2 slices; read it as a radiograph instead?)")
    samples = int(slices[0].header.get("SamplesPerPixel", 1) or 1)
    if samples != 1:
        raise InputError(slices[0].path, f"a colour image ({samples} samples per pixel), not a CT")
    slices, geo = _stack_geometry(slices, path)
    report(progress, 0.02, "reading DICOM slices")
    raw = _load_slice_pixels(slices, progress, 0.02, 0.6 if not geo.regular else 0.95)

    planes = []
    n_padding = 0
    for s, r in zip(slices, raw):
        r = np.asarray(r)
        if r.dtype.kind == "f" and not np.all(np.isfinite(r)):
            raise InputError(s.path, "the slice holds NaN or infinite values")
        slope, intercept = (rescale if rescale is not None else (s.slope, s.intercept))
        hu = (r.astype(np.float64) * float(slope) + float(intercept)).astype(np.float32)
        pad = _padding_mask(r, s.header)
        if pad is not None:
            hu[pad] = np.nan
            n_padding += int(pad.sum())
        planes.append(hu)

    info = _dicom_info(slices[0].header)
    modality = info.get("Modality", "")
    stack_sample = np.stack([p.reshape(-1)[:: max(1, p.size // 20000)] for p in planes])
    hu_ok = looks_like_hu(stack_sample)
    if require_hu and not hu_ok:
        extra = f" (Modality {modality}: not a CT?)" if modality and modality != "CT" else ""
        raise _not_hu_error(path, stack_sample, user_rescale=rescale is not None, extra=extra)
    fill = AIR_HU if hu_ok else float(np.nanmin(stack_sample))

    metadata: dict[str, Any] = {
        "source": str(path), "format": "dicom", "series_uid": uid, "n_slices": len(slices),
        "dicom": info, "units": "HU" if hu_ok else "stored values",
        "rescale": ({"slope": float(rescale[0]), "intercept": float(rescale[1]), "from": "user"}
                    if rescale is not None else
                    {"slope": slices[0].slope, "intercept": slices[0].intercept, "from": "header"}),
    }
    if skipped:
        metadata["skipped_localizers"] = len(skipped)
    if n_padding:
        metadata["padding_voxels_set_to_fill"] = n_padding
    window = _window_of(slices[0].header)
    if window is not None:
        metadata["window"] = window

    ipps = np.stack([s.ipp for s in slices])
    rs, cs = geo.pixel_spacing
    if geo.regular:
        array = np.stack(planes)
        spacing = (cs, rs, float((geo.positions[-1] - geo.positions[0]) / (len(slices) - 1)))
        origin = tuple(float(x) for x in ipps[0])
    else:
        array, spacing, origin = resample_stack(planes, ipps, geo.frame, geo.pixel_spacing,
                                                progress=scaled(progress, 0.6, 0.98))
        metadata["resampled_from_irregular_series"] = {
            "reason": geo.reason, "n_slices": len(slices),
            "gaps": [round(float(g), 4) for g in geo.gaps],
            "tilt_deg": round(float(geo.tilts_deg.max()), 4),
            "tilt_deg_per_gap": [round(float(t), 4) for t in geo.tilts_deg],
            "slice_spacing": float(spacing[2]),
            "slice_spacing_rule": "median gap, adjusted to span first..last slice exactly",
            "method": "linear along the slice normal between the two neighbouring slices, "
                      "bilinear in-plane at each slice's own physical position",
            "fill_value": fill,
            "gantry_detector_tilt_tag": info.get("GantryDetectorTilt"),
        }
    np.nan_to_num(array, copy=False, nan=fill)
    report(progress, 1.0, "done")
    return Volume(array.astype(np.float32, copy=False), spacing, origin, geo.frame, metadata)


def _window_of(ds: Any) -> tuple[float, float] | None:
    try:
        c, w = ds.get("WindowCenter"), ds.get("WindowWidth")
        if c is None or w is None:
            return None
        c = float(c[0] if isinstance(c, Sequence) and not isinstance(c, str) else c)
        w = float(w[0] if isinstance(w, Sequence) and not isinstance(w, str) else w)
        return (c, w) if w > 0 else None
    except (TypeError, ValueError, IndexError):
        return None


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
        raise InputError(path, f"unreadable NIfTI file: {_one_line(exc)}") from None
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
                                   f"{_one_line(exc)}") from None
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


def _read_sitk(path: Path, fmt: str) -> sitk.Image:
    if fmt == "nifti":
        _check_nifti(path)
    else:
        _check_text_header(path, fmt)
    try:
        return sitk.ReadImage(str(path))
    except Exception as exc:
        msg = _one_line(str(exc).replace(str(path), path.name))
        if "Unable to determine ImageIO reader" in msg:
            msg = "not a readable image of this type (truncated or corrupt?)"
        elif "No such file" in msg and _extension(path) in (".mha", ".nrrd"):
            msg = "the image data could not be read (truncated or corrupt file?)"
        raise InputError(path, f"cannot read the {fmt} file: {msg}") from None


def _restore_metadata(img: sitk.Image, key: str = "xraytoct_metadata") -> dict[str, Any]:
    if not img.HasMetaDataKey(key):
        return {}
    try:
        value = json.loads(img.GetMetaData(key))
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _read_image_volume(path: Path, fmt: str, rescale: tuple[float, float] | None,
                       require_hu: bool) -> Volume:
    img = _read_sitk(path, fmt)
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
        raise _not_hu_error(path, array, user_rescale=rescale is not None)
    metadata = _restore_metadata(img)
    metadata.update({"source": str(path), "format": fmt,
                     "units": "HU" if hu_ok else "stored values"})
    if rescale is not None:
        metadata["rescale"] = {"slope": float(rescale[0]), "intercept": float(rescale[1]),
                               "from": "user"}
    try:
        return Volume(array, img.GetSpacing(), img.GetOrigin(),
                      np.asarray(img.GetDirection(), dtype=float).reshape(3, 3), metadata)
    except ValueError as exc:
        raise InputError(path, f"unusable geometry: {_one_line(exc)} (sheared or "
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
        require_hu: refuse values that do not look like HU (see :func:`looks_like_hu`).
        progress: optional ``(fraction, message)`` callback.

    Irregular DICOM series (gantry tilt, uneven gaps) are resampled onto a regular grid
    (module docstring); ``metadata["resampled_from_irregular_series"]`` says so.
    ``metadata`` holds ``source``, ``format``, ``units`` and, for DICOM, ``dicom`` (patient,
    study and series tags), ``series_uid``, ``rescale`` and ``window``.

    Raises:
        InputError: missing or unreadable file, unknown type, 2D image, NaN/Inf voxels,
            zero/negative spacing, several series without ``series_uid``, values not in HU.
    """
    p = Path(path)
    _require_exists(p)
    if rescale is not None:
        try:
            rescale = (float(rescale[0]), float(rescale[1]))
        except (TypeError, ValueError, IndexError):
            raise InputError(p, f"rescale must be two numbers (SLOPE INTERCEPT), got {rescale!r}") from None
        if rescale[0] == 0 or not all(math.isfinite(x) for x in rescale):
            raise InputError(p, f"rescale slope must be non-zero and finite, got {rescale}")
    report(progress, 0.0, f"reading {p.name}")
    if p.is_dir():
        return _read_dicom_series(p, rescale, series_uid, require_hu, progress)
    fmt = VOLUME_EXTENSIONS.get(_extension(p))
    if fmt is not None:
        vol = _read_image_volume(p, fmt, rescale, require_hu)
        report(progress, 1.0, "done")
        return vol
    if _extension(p) in DICOM_EXTENSIONS or _has_dicom_magic(p):
        return _read_dicom_series(p, rescale, series_uid, require_hu, progress)
    if _extension(p) in IMAGE_EXTENSIONS:
        raise InputError(p, f"a 2D {IMAGE_EXTENSIONS[_extension(p)].upper()} image, not a CT "
                            f"volume (read it as a radiograph?)")
    raise InputError(p, f"unknown file type {_extension(p) or '(no extension)'!r}: expected "
                        f"{', '.join(VOLUME_EXTENSIONS)}, a DICOM file or a DICOM folder")


# --------------------------------------------------------------------------------------
# radiographs
# --------------------------------------------------------------------------------------
def _to_grey(rgb: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma of an ``(..., 3 or 4)`` array (alpha ignored)."""
    return (np.asarray(rgb[..., :3], dtype=np.float64) @ _LUMA_601).astype(np.float32)


_VIEW_POSITIONS = {"AP": "ap", "PA": "pa", "LL": "lateral", "RL": "lateral_left",
                   "LATERAL": "lateral", "LAT": "lateral"}


def _read_radiograph_dicom(path: Path) -> tuple[np.ndarray, tuple[float, float] | None, dict]:
    arr, ds = _decode_pixels(path)
    nframes = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if nframes > 1 or arr.ndim == 4 or (arr.ndim == 3 and samples == 1):
        raise InputError(path, f"a multi-frame DICOM ({nframes} frames): a volume or a cine "
                               f"loop, not one radiograph")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    meta: dict[str, Any] = {"photometric": photometric}
    if samples > 1:
        if photometric.startswith("YBR") and arr.ndim == 3:
            try:
                from pydicom.pixels import convert_color_space
            except ImportError:  # pydicom 2
                from pydicom.pixel_data_handlers.util import convert_color_space
            arr = convert_color_space(arr, photometric, "RGB")
        img = _to_grey(arr)
    else:
        slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
        intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
        img = (arr.astype(np.float64) * slope + intercept)
        if photometric == "MONOCHROME1":
            bits = int(ds.get("BitsStored", 16) or 16)
            signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
            lo, hi = ((-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1))
            nominal = sorted((lo * slope + intercept, hi * slope + intercept))
            img = nominal[0] + nominal[1] - img
            meta["inverted"] = True
        img = img.astype(np.float32)
    spacing = None
    for tag in ("ImagerPixelSpacing", "PixelSpacing"):
        ps = _floats(ds.get(tag, []) or [], 2)
        if ps is not None and min(ps) > 0:
            spacing = (float(ps[0]), float(ps[1]))
            meta["pixel_spacing_source"] = tag
            break
    meta["dicom"] = _dicom_info(ds)
    for tag in ("DistanceSourceToDetector", "DistanceSourceToPatient",
                "EstimatedRadiographicMagnificationFactor"):
        if tag in ds:
            try:
                meta[tag] = float(ds[tag].value)
            except (TypeError, ValueError):
                pass
    view = _VIEW_POSITIONS.get(str(ds.get("ViewPosition", "") or "").upper())
    if view:
        meta["view"] = view
    return img, spacing, meta


def _read_radiograph_bitmap(path: Path, fmt: str) -> tuple[np.ndarray, None, dict]:
    from PIL import Image, ImageOps
    try:
        with Image.open(path) as im:
            frames = getattr(im, "n_frames", 1)
            if frames > 1:
                raise InputError(path, f"a {frames}-page image (a stack), not one radiograph")
            im.load()
            im = ImageOps.exif_transpose(im) or im
            mode = im.mode
            meta: dict[str, Any] = {"mode": mode}
            if "dpi" in im.info:
                meta["dpi"] = [float(x) for x in im.info["dpi"]]
            if mode == "P" or mode == "PA":
                im = im.convert("RGBA")
            elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
                im = im.convert("RGB")
            arr = np.asarray(im)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(path, f"unreadable {fmt.upper()} image: {_one_line(exc)}") from None
    if arr.ndim == 3:
        if arr.shape[2] in (3, 4):
            arr = _to_grey(arr)
            meta["converted_to_grey"] = "ITU-R BT.601 luma"
        elif arr.shape[2] in (1, 2):  # L or LA
            arr = arr[..., 0]
        else:
            raise InputError(path, f"unsupported image with {arr.shape[2]} channels")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    meta["stored_dtype"] = str(arr.dtype)
    return arr.astype(np.float32), None, meta


def _read_radiograph_sitk(path: Path, fmt: str) -> tuple[np.ndarray, tuple[float, float], dict, sitk.Image]:
    img = _read_sitk(path, fmt)
    if img.GetDimension() not in (2, 3):
        raise InputError(path, f"a {img.GetDimension()}D image, not a radiograph")
    array = sitk.GetArrayFromImage(img)
    spacing = list(img.GetSpacing())[::-1]  # array axis order
    if img.GetNumberOfComponentsPerPixel() in (3, 4):
        array = _to_grey(array)
    elif img.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(path, f"a {img.GetNumberOfComponentsPerPixel()}-component image, "
                               f"not a radiograph")
    if array.ndim == 3:
        keep = [a for a in range(3) if array.shape[a] != 1]
        if len(keep) != 2:
            raise InputError(path, f"a 3D volume of size {img.GetSize()}, not a radiograph "
                                   f"(a radiograph is one 2D image)")
        array = array.reshape([array.shape[a] for a in keep])
        spacing = [spacing[a] for a in keep]
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        raise InputError(path, "the image holds NaN or infinite values")
    return array.astype(np.float32), (float(spacing[0]), float(spacing[1])), {}, img


def read_radiograph(path: str | os.PathLike, *, view: str | None = None) -> Radiograph:
    """Read one radiograph as a float32 :class:`Radiograph`.

    Args:
        path: DICOM (DX, CR, RF, secondary capture, or any single-frame 2D DICOM), PNG,
            TIFF, JPEG, or a 2D NRRD/NIfTI/MetaImage (a 3D one with a single slice too).
        view: ``"ap"``, ``"lateral"``...; stored in ``metadata["view"]`` (DICOM files
            otherwise get it from ViewPosition: AP, PA, LL -> lateral, RL -> lateral_left).

    Conventions: bone is bright. DICOM values get the modality rescale; MONOCHROME1 images
    are inverted about their nominal range (``metadata["photometric"]`` keeps the original
    interpretation). Colour images become grey with ITU-R BT.601 luma (alpha ignored).
    Pixel spacing: DICOM ImagerPixelSpacing (detector plane), else PixelSpacing; NRRD etc.
    from the header; bitmaps have none (``None``; their dpi, if any, is in metadata).
    A file written by :func:`write_radiograph` gets its ProjectionGeometry and metadata back.

    Raises:
        InputError: missing/unreadable/truncated file, unknown type, a 3D volume or a
            multi-frame/multi-page image, NaN values.
    """
    p = Path(path)
    _require_exists(p)
    if p.is_dir():
        raise InputError(p, "a folder, not a radiograph file")
    ext = _extension(p)
    geometry = None
    if ext in VOLUME_EXTENSIONS:
        array, spacing, meta, img = _read_radiograph_sitk(p, VOLUME_EXTENSIONS[ext])
        meta.update(_restore_metadata(img))
        fmt = VOLUME_EXTENSIONS[ext]
        if img.HasMetaDataKey("xraytoct_pixel_spacing"):
            try:
                ps = json.loads(img.GetMetaData("xraytoct_pixel_spacing"))
                spacing = None if ps is None else (float(ps[0]), float(ps[1]))
            except (ValueError, TypeError, IndexError):
                pass
        if img.HasMetaDataKey("xraytoct_geometry"):
            try:
                geometry = ProjectionGeometry.from_dict(json.loads(img.GetMetaData("xraytoct_geometry")))
            except (ValueError, TypeError) as exc:
                raise InputError(p, f"bad xraytoct_geometry in the header: {_one_line(exc)}") from None
            if tuple(array.shape) != geometry.pixels:
                raise InputError(p, f"image shape {array.shape} differs from the stored "
                                    f"geometry's detector {geometry.pixels}")
    elif ext in IMAGE_EXTENSIONS:
        fmt = IMAGE_EXTENSIONS[ext]
        array, spacing, meta = _read_radiograph_bitmap(p, fmt)
    elif ext in DICOM_EXTENSIONS or _has_dicom_magic(p):
        fmt = "dicom"
        array, spacing, meta = _read_radiograph_dicom(p)
    else:
        raise InputError(p, f"unknown file type {ext or '(no extension)'!r}: expected DICOM, "
                            f"{', '.join(IMAGE_EXTENSIONS)} or {', '.join(VOLUME_EXTENSIONS)}")
    if array.ndim != 2 or min(array.shape) < 2:
        raise InputError(p, f"not a 2D image (shape {array.shape})")
    meta.update({"source": str(p), "format": fmt})
    if view is not None:
        meta["view"] = view
    try:
        return Radiograph(array, spacing, geometry, meta)
    except ValueError as exc:
        raise InputError(p, _one_line(exc)) from None


# --------------------------------------------------------------------------------------
# writers
# --------------------------------------------------------------------------------------
def _volume_format(path: Path) -> str:
    fmt = VOLUME_EXTENSIONS.get(_extension(path))
    if fmt is None:
        raise InputError(path, f"cannot write {_extension(path) or '(no extension)'!r}: "
                               f"use one of {', '.join(VOLUME_EXTENSIONS)}")
    return fmt


def _write_sitk(img: sitk.Image, path: Path, compress: bool) -> None:
    def write(tmp: Path) -> None:
        sitk.WriteImage(img, str(tmp), bool(compress))
    try:
        _atomic_write(path, write)
    except InputError:
        raise
    except Exception as exc:
        raise OSError(f"{path}: could not write: {_one_line(exc)}") from exc


def write_volume(volume: Volume, path: str | os.PathLike, *, compress: bool = True) -> Path:
    """Write a Volume to NIfTI, NRRD or MetaImage (by extension), atomically.

    NRRD and MetaImage headers get every simple one-line string of ``volume.metadata`` as
    its own key, plus ``xraytoct_metadata`` (JSON of all JSON-able metadata) which
    :func:`read_volume` restores. NIfTI keeps voxels and geometry only. Booleans are
    written as uint8; other dtypes as they are. Returns the path."""
    p = Path(path)
    fmt = _volume_format(p)
    array = volume.array.astype(np.uint8) if volume.array.dtype == bool else volume.array
    img = volume_to_sitk(dataclasses.replace(volume, array=array, metadata={}))
    if fmt != "nifti":
        for key, value in _header_strings(volume.metadata).items():
            img.SetMetaData(key, value)
        img.SetMetaData("xraytoct_metadata",
                        json.dumps(_jsonable(volume.metadata), default=_json_default))
    _write_sitk(img, p, compress)
    return p


def write_radiograph(radiograph: Radiograph, path: str | os.PathLike, *,
                     compress: bool = True) -> Path:
    """Write a Radiograph as a 2D NRRD (or MetaImage / NIfTI), atomically.

    Spacing is ``(column, row)`` pixel spacing (1, 1 when unknown). NRRD and MetaImage get
    the keys ``xraytoct_geometry`` (JSON of ``geometry.to_dict()``), ``xraytoct_metadata``
    (JSON) and ``xraytoct_pixel_spacing``, which :func:`read_radiograph` restores; NIfTI
    keeps pixels and spacing only. Returns the path."""
    p = Path(path)
    fmt = _volume_format(p)
    img = sitk.GetImageFromArray(np.ascontiguousarray(
        radiograph.array.astype(np.uint8) if radiograph.array.dtype == bool else radiograph.array))
    ps = radiograph.pixel_spacing
    img.SetSpacing((ps[1], ps[0]) if ps is not None else (1.0, 1.0))
    if fmt != "nifti":
        for key, value in _header_strings(radiograph.metadata).items():
            img.SetMetaData(key, value)
        img.SetMetaData("xraytoct_metadata",
                        json.dumps(_jsonable(radiograph.metadata), default=_json_default))
        img.SetMetaData("xraytoct_pixel_spacing", json.dumps(None if ps is None else list(ps)))
        if radiograph.geometry is not None:
            img.SetMetaData("xraytoct_geometry",
                            json.dumps(radiograph.geometry.to_dict(), default=_json_default))
    _write_sitk(img, p, compress)
    return p


# --------------------------------------------------------------------------------------
# DICOM series writer
# --------------------------------------------------------------------------------------
def _ds(value: float) -> str:
    """A number as a DICOM decimal string (at most 16 characters)."""
    from pydicom.valuerep import format_number_as_ds
    v = float(value)
    if abs(v) < 1e-12:
        v = 0.0
    return format_number_as_ds(v)


def _int16_rescale(array: np.ndarray) -> tuple[float, float]:
    """(slope, intercept) so that round((hu - intercept) / slope) fits int16; slope 1
    (errors <= 0.5 HU) whenever the range allows."""
    lo, hi = float(array.min()), float(array.max())
    if -32768 <= math.floor(lo) and math.ceil(hi) <= 32767:
        return 1.0, 0.0
    if math.ceil(hi) - math.floor(lo) <= 65535:
        return 1.0, float(math.floor(lo) + 32768)
    slope = (hi - lo) / 65535.0
    return slope, lo + 32768.0 * slope


def _base_dataset(volume: Volume, source_info: dict[str, Any], series_description: str,
                  synthetic: bool) -> dict[str, Any]:
    """Attributes shared by every slice of the new series."""
    from pydicom.uid import generate_uid
    from . import __version__
    now = datetime.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    attrs: dict[str, Any] = {
        "SpecificCharacterSet": "ISO_IR 192",
        "PatientName": "Synthetic^Phantom", "PatientID": "XRAYTOCT-SYNTHETIC",
        "PatientBirthDate": "", "PatientSex": "O",
        "StudyInstanceUID": generate_uid(), "StudyDate": date, "StudyTime": time,
        "StudyID": "1", "AccessionNumber": "", "ReferringPhysicianName": "",
        "StudyDescription": "XRayToCT",
        "FrameOfReferenceUID": generate_uid(), "PositionReferenceIndicator": "",
    }
    for tag in DICOM_CARRY_TAGS:
        if tag == "SpecificCharacterSet":
            continue
        if source_info.get(tag) not in (None, ""):
            attrs[tag] = str(source_info[tag])
    image_type = ["DERIVED", "SECONDARY", "AXIAL"] + (["SYNTHETIC"] if synthetic else [])
    derivation = ("Synthetic CT (sCT) computed by XRayToCT from radiographs; not an acquired "
                  "CT; not for diagnosis" if synthetic else "Derived by XRayToCT")
    window = volume.metadata.get("window") if isinstance(volume.metadata, dict) else None
    try:
        wc, ww = (float(window[0]), float(window[1])) if window else (40.0, 400.0)
    except (TypeError, ValueError, IndexError):
        wc, ww = 40.0, 400.0
    attrs.update({
        "SOPClassUID": CT_IMAGE_STORAGE, "Modality": "CT",
        "ImageType": image_type, "SeriesInstanceUID": generate_uid(),
        "SeriesNumber": "1001", "SeriesDescription": series_description[:64],
        "SeriesDate": date, "SeriesTime": time, "ContentDate": date, "ContentTime": time,
        "InstanceCreationDate": date, "InstanceCreationTime": time,
        "Manufacturer": "XRayToCT", "ManufacturerModelName": "XRayToCT",
        "SoftwareVersions": str(__version__),
        "DerivationDescription": derivation[:1024],
        "ImageComments": ("SYNTHETIC CT - NOT FOR DIAGNOSIS" if synthetic else "XRayToCT"),
        "BurnedInAnnotation": "NO", "PatientPosition": "",
        "KVP": "", "AcquisitionNumber": "1",
        "SamplesPerPixel": 1, "PhotometricInterpretation": "MONOCHROME2",
        "BitsAllocated": 16, "BitsStored": 16, "HighBit": 15, "PixelRepresentation": 1,
        "WindowCenter": _ds(wc), "WindowWidth": _ds(ww),
        "RescaleType": "HU",
    })
    return attrs


def _write_slice(path: Path, attrs: dict[str, Any], pixels: np.ndarray) -> None:
    """One CT Image Storage file (explicit VR little endian)."""
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = attrs["SOPClassUID"]
    meta.MediaStorageSOPInstanceUID = attrs["SOPInstanceUID"]
    meta.TransferSyntaxUID = EXPLICIT_VR_LITTLE_ENDIAN
    meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    for key, value in attrs.items():
        setattr(ds, key, value)
    ds.PixelData = np.ascontiguousarray(pixels.astype("<i2")).tobytes()
    if int(pydicom.__version__.split(".")[0]) >= 3:
        ds.save_as(str(path), enforce_file_format=True)
    else:  # pragma: no cover - pydicom 2.x
        ds.is_little_endian, ds.is_implicit_VR = True, False
        ds.save_as(str(path), write_like_original=False)


def write_dicom_series(volume: Volume, folder: str | os.PathLike, *, source: Any = None,
                       series_description: str = "XRayToCT synthetic CT (sCT) - not for diagnosis",
                       synthetic: bool = True,
                       progress: ProgressCallback | None = None) -> list[Path]:
    """Write a Volume as a DICOM CT Image Storage series, one file per k-slice.

    Args:
        volume: the CT in HU; any orthonormal direction (oblique included) is kept: each
            slice's ImageOrientationPatient is the i and j axes, its ImagePositionPatient
            the LPS position of its voxel (0, 0).
        folder: output folder; it must not exist or be empty. The series is written into
            a temporary sibling folder that is renamed to ``folder`` at the end.
        source: a Volume or Radiograph whose ``metadata["dicom"]`` gives the patient,
            study and frame-of-reference tags to carry over (pass it only when the volume
            is in that study's frame of reference); without one, anonymous placeholders
            (PatientName ``Synthetic^Phantom``) and new study/frame UIDs are used.
        series_description: SeriesDescription (64 characters at most).
        synthetic: label the images synthetic (ImageType ``DERIVED\\SECONDARY\\AXIAL\\SYNTHETIC``,
            DerivationDescription, ImageComments).

    Pixels are int16 with RescaleSlope 1 and a RescaleIntercept chosen so the values fit
    (HU round trip within 0.5 HU); only a range wider than 65535 HU needs a larger slope.
    Returns the paths of the written files, in slice order.
    """
    dest = Path(folder)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise InputError(dest, "the output folder exists and is not empty")
    parent = dest.parent if str(dest.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(dest, f"the folder {parent} does not exist")
    array = np.asarray(volume.array, dtype=np.float64)
    if not np.all(np.isfinite(array)):
        raise ValueError("the volume holds NaN or infinite values; cannot write DICOM")
    info = {}
    if source is not None and isinstance(getattr(source, "metadata", None), dict):
        info = source.metadata.get("dicom") or {}
    attrs = _base_dataset(volume, info if isinstance(info, dict) else {},
                          series_description, synthetic)
    slope, intercept = _int16_rescale(array)
    d = volume.direction
    sx, sy, sz = volume.spacing
    attrs.update({
        "Rows": int(array.shape[1]), "Columns": int(array.shape[2]),
        "PixelSpacing": [_ds(sy), _ds(sx)],
        "ImageOrientationPatient": [_ds(x) for x in np.concatenate([d[:, 0], d[:, 1]])],
        "SliceThickness": _ds(sz), "SpacingBetweenSlices": _ds(sz),
        "RescaleSlope": _ds(slope), "RescaleIntercept": _ds(intercept),
    })
    from pydicom.uid import generate_uid
    normal = np.cross(d[:, 0], d[:, 1])
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=parent))
    names = []
    try:
        nk = array.shape[0]
        for k in range(nk):
            ipp = np.asarray(volume.origin) + d[:, 2] * (sz * k)
            stored = np.rint((array[k] - intercept) / slope)
            np.clip(stored, -32768, 32767, out=stored)
            attrs.update({"SOPInstanceUID": generate_uid(), "InstanceNumber": str(k + 1),
                          "ImagePositionPatient": [_ds(x) for x in ipp],
                          "SliceLocation": _ds(float(ipp @ normal))})
            name = f"slice_{k + 1:04d}.dcm"
            _write_slice(tmp / name, attrs, stored.astype(np.int16))
            names.append(name)
            report(progress, (k + 1) / nk, "writing DICOM slices")
        if dest.exists():
            dest.rmdir()
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return [dest / n for n in names]
