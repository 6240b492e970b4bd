"""Reading DICOM CT series: scanning a folder, decoding pixels, placing the slices in space.

Public functions: :func:`is_dicom_file`, :func:`is_dicom_dir`, :func:`list_dicom_series`,
:func:`read_dicom_series` (what :func:`~XRayToCTLib.io.read_volume` calls for DICOM) and
:func:`resample_stack`; :func:`decode_pixels`, :func:`dicom_info` and :func:`dicom_floats`
are shared with the radiograph reader.

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
* DICOM **PixelPaddingValue** pixels (e.g. GE's -1500 outside the reconstruction circle)
  are not data: they become the fill value (air).
* Values are checked to be Hounsfield units (:mod:`~XRayToCTLib.io.hu_check`).
"""
from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pydicom
import SimpleITK as sitk

from ..constants import AIR_HU
from ..errors import AmbiguousSeries, InputError
from ..geometry import Volume
from ..progress import ProgressCallback, report, scaled
from .files import DICOM_EXTENSIONS, one_line, require_exists
from .hu_check import looks_like_hu, not_hu_error

MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
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


# --------------------------------------------------------------------------------------
# DICOM: detection and series scanning
# --------------------------------------------------------------------------------------
def has_dicom_magic(path: Path) -> bool:
    """Whether the file has the DICOM Part 10 preamble (``DICM`` at byte 128)."""
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
    if has_dicom_magic(p):
        return True
    if p.suffix.lower() in DICOM_EXTENSIONS:
        try:
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


def dicom_floats(value: Any, n: int) -> np.ndarray | None:
    """``n`` finite floats from a DICOM multi-value, or None."""
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
            ps = dicom_floats(_item_get(groups, "PixelMeasuresSequence", "PixelSpacing") or [], 2)
            slope = _item_get(groups, "PixelValueTransformationSequence", "RescaleSlope")
            icpt = _item_get(groups, "PixelValueTransformationSequence", "RescaleIntercept")
            out.append(_Slice(
                path, f, dicom_floats(_item_get(groups, "PlanePositionSequence", "ImagePositionPatient") or [], 3),
                dicom_floats(_item_get(groups, "PlaneOrientationSequence", "ImageOrientationPatient") or [], 6),
                rows, cols, None if ps is None else (ps[0], ps[1]),
                float(slope if slope is not None else 1.0), float(icpt if icpt is not None else 0.0),
                f + 1, f"{sop}#{f}", ds))
        return out
    ps = dicom_floats(ds.get("PixelSpacing", []) or [], 2)
    return [_Slice(path, None if nframes == 1 else 0,
                   dicom_floats(ds.get("ImagePositionPatient", []) or [], 3),
                   dicom_floats(ds.get("ImageOrientationPatient", []) or [], 6),
                   rows, cols, None if ps is None else (ps[0], ps[1]),
                   float(ds.get("RescaleSlope", 1.0) or 1.0),
                   float(ds.get("RescaleIntercept", 0.0) or 0.0), inst, sop, ds)]


def _read_header(path: Path, *, strict: bool) -> Any | None:
    """pydicom header (no pixels) of an image file; None for a non-DICOM or non-image file
    when not ``strict``; InputError for an unreadable one when ``strict``."""
    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True, force=True)
    except Exception as exc:
        if strict:
            raise InputError(path, f"unreadable DICOM file: {one_line(exc)}") from None
        return None
    meta_sop = str(getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", ""))
    if meta_sop == MEDIA_STORAGE_DIRECTORY:
        return None
    if "Rows" not in ds or "Columns" not in ds:
        if strict and not ("SOPClassUID" in ds or has_dicom_magic(path)):
            raise InputError(path, "not a DICOM file")
        return None  # RTSTRUCT, SR, ...: not an image
    return ds


def _scan_series(folder: Path) -> dict[str, list[_Slice]]:
    """All image slices in ``folder`` grouped by SeriesInstanceUID."""
    series: dict[str, list[_Slice]] = {}
    for p in _candidate_files(folder):
        dicom_like = has_dicom_magic(p) or p.suffix.lower() in DICOM_EXTENSIONS
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
    require_exists(folder)
    if not folder.is_dir():
        folder = folder.parent
    out = []
    for uid, slices in _scan_series(folder).items():
        h = slices[0].header
        out.append({"uid": uid, "description": str(h.get("SeriesDescription", "") or ""),
                    "modality": str(h.get("Modality", "") or ""), "n_slices": len(slices)})
    return out


def dicom_info(ds: Any) -> dict[str, str]:
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
        raise AmbiguousSeries(folder, f"{len(series)} series in this folder: {listing}; "
                                      "choose one of them by its series UID")
    return next(iter(series.items()))


# --------------------------------------------------------------------------------------
# DICOM: pixel data
# --------------------------------------------------------------------------------------
def decode_pixels(path: Path) -> tuple[np.ndarray, Any]:
    """Stored pixel values of a DICOM file (frames first if multi-frame) and its dataset.

    pydicom decodes uncompressed and RLE data itself; compressed transfer syntaxes it has
    no plugin for are decoded with SimpleITK's GDCM (whose modality rescale is undone)."""
    try:
        ds = pydicom.dcmread(str(path), force=True)
    except Exception as exc:
        raise InputError(path, f"unreadable DICOM file: {one_line(exc)}") from None
    if not (has_dicom_magic(path) or "SOPClassUID" in ds or "Rows" in ds):
        raise InputError(path, "not a DICOM file")
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise InputError(path, "the DICOM file has no pixel data (truncated?)")
    try:
        return np.asarray(ds.pixel_array), ds
    except Exception as exc:
        first_error = one_line(exc)
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
            cache[s.path] = decode_pixels(s.path)[0]
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


def read_dicom_series(path: Path, rescale: tuple[float, float] | None = None,
                      series_uid: str | None = None, require_hu: bool = True,
                      progress: ProgressCallback | None = None) -> Volume:
    """The DICOM series at ``path`` (a folder, or one file of the series) as a float32
    Volume in HU; :func:`~XRayToCTLib.io.read_volume` documents the arguments. Irregular
    stacks are resampled (module docstring)."""
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

    info = dicom_info(slices[0].header)
    modality = info.get("Modality", "")
    stack_sample = np.stack([p.reshape(-1)[:: max(1, p.size // 20000)] for p in planes])
    hu_ok = looks_like_hu(stack_sample)
    if require_hu and not hu_ok:
        extra = f" (Modality {modality}: not a CT?)" if modality and modality != "CT" else ""
        raise not_hu_error(path, stack_sample, user_rescale=rescale is not None, extra=extra)
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


