"""Radiographs in files: :func:`read_radiograph` and :func:`write_radiograph`.

Conventions: bone is bright. DICOM values get the modality rescale; MONOCHROME1 images are
inverted about their nominal range (``metadata["photometric"]`` keeps the original
interpretation). Colour (RGB/RGBA) images are refused; a grey image stored as RGB (equal
channels, up to compression noise) is read as grey (alpha ignored). A file
written by :func:`write_radiograph` (NRRD, MetaImage) gets its ProjectionGeometry, pixel
spacing and metadata back from :func:`read_radiograph`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from PIL import Image, ImageOps
from scipy import ndimage

from ..errors import InputError
from ..geometry import ProjectionGeometry, Radiograph
from .dicom_read import decode_pixels, dicom_floats, dicom_info, has_dicom_magic
from .files import (DICOM_EXTENSIONS, IMAGE_EXTENSIONS, VOLUME_EXTENSIONS, extension, json_text,
                    one_line, require_exists)
from .volumes import (read_sitk_image, restore_metadata, store_metadata, volume_format,
                      write_sitk_image)

try:  # pydicom 3 moved it; pyproject still allows pydicom 2 (>=2.4)
    from pydicom.pixels import convert_color_space
except ImportError:  # pydicom 2
    from pydicom.pixel_data_handlers.util import convert_color_space

_LUMA_601 = np.array([0.299, 0.587, 0.114])


# --------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------
_COLOUR_SPREAD = 0.03
"""A pixel is coloured when its channels differ by more than this fraction of the image's
value range; JPEG compression of a grey image stays well below it."""


def _to_grey(rgb: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma of an ``(..., 3 or 4)`` array (alpha ignored)."""
    return (np.asarray(rgb[..., :3], dtype=np.float64) @ _LUMA_601).astype(np.float32)


def _grey_or_refuse(path: Path, rgb: np.ndarray) -> np.ndarray:
    """The grey image of an ``(..., 3 or 4)`` array whose colour channels are equal (a grey
    image stored as RGB/RGBA, up to compression noise in 1 % of its pixels); InputError for
    a colour image (a photograph, a screenshot): a radiograph is greyscale."""
    channels = np.asarray(rgb[..., :3], dtype=np.float64)
    spread = channels.max(axis=-1) - channels.min(axis=-1)
    value_range = float(channels.max() - channels.min()) if channels.size else 0.0
    if spread.size and float(np.percentile(spread, 99)) > _COLOUR_SPREAD * max(value_range, 1e-12):
        raise InputError(path, "a colour image (RGB), not a radiograph: radiographs are "
                               "greyscale (convert it to grey if it is one)")
    return _to_grey(rgb)


_VIEW_POSITIONS = {"AP": "ap", "PA": "pa", "LL": "lateral", "RL": "lateral_left",
                   "LATERAL": "lateral", "LAT": "lateral"}


def _read_radiograph_dicom(path: Path) -> tuple[np.ndarray, tuple[float, float] | None, dict]:
    arr, ds = decode_pixels(path)
    nframes = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if nframes > 1 or arr.ndim == 4 or (arr.ndim == 3 and samples == 1):
        raise InputError(path, f"a multi-frame DICOM ({nframes} frames): a volume or a cine "
                               f"loop, not one radiograph")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    meta: dict[str, Any] = {"photometric": photometric}
    if samples == 1:
        arr = _stored_bits(arr, ds)
        meta["bits_stored"] = int(ds.get("BitsStored", 0) or 0) or None
    if samples > 1:
        if photometric.startswith("YBR") and arr.ndim == 3:
            arr = convert_color_space(arr, photometric, "RGB")
        img = _grey_or_refuse(path, arr)
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
    meta["dicom"] = dicom_info(ds)
    for tag in ("DistanceSourceToDetector", "DistanceSourceToPatient",
                "EstimatedRadiographicMagnificationFactor"):
        if tag in ds:
            try:
                meta[tag] = float(ds[tag].value)
            except (TypeError, ValueError):
                pass
    magnification = dicom_magnification(meta)
    if magnification is not None:
        meta["magnification"] = magnification
    spacing = _detector_spacing(ds, magnification, meta)
    view = _VIEW_POSITIONS.get(str(ds.get("ViewPosition", "") or "").upper())
    if view:
        meta["view"] = view
    return img, spacing, meta


def _stored_bits(arr: np.ndarray, ds: Any) -> np.ndarray:
    """Stored integer values limited to BitsStored (12-16-bit data in 16 allocated bits:
    the unused high bits masked off, signed values sign-extended)."""
    bits = int(ds.get("BitsStored", 0) or 0)
    if arr.dtype.kind not in "iu" or not 0 < bits < arr.dtype.itemsize * 8:
        return arr
    values = arr.astype(np.int64) & ((1 << bits) - 1)
    if int(ds.get("PixelRepresentation", 0) or 0) == 1:  # two's complement in BitsStored bits
        values = np.where(values >= (1 << (bits - 1)), values - (1 << bits), values)
    return values


def dicom_magnification(meta: dict[str, Any]) -> float | None:
    """The radiograph's magnification at the imaged object from its DICOM metadata:
    EstimatedRadiographicMagnificationFactor, else DistanceSourceToDetector /
    DistanceSourceToPatient; ``None`` when neither is there (or they are not > 1)."""
    emf = meta.get("EstimatedRadiographicMagnificationFactor")
    if emf is not None and 1.0 <= float(emf) < 10.0:
        return float(emf)
    sid, sod = meta.get("DistanceSourceToDetector"), meta.get("DistanceSourceToPatient")
    if sid and sod and 0 < float(sod) < float(sid):
        return float(sid) / float(sod)
    return None


def _detector_spacing(ds: Any, magnification: float | None, meta: dict[str, Any]
                      ) -> tuple[float, float] | None:
    """Pixel size at the detector plane: ImagerPixelSpacing when present; else PixelSpacing,
    which a DX/CR file calibrates at the patient when it names a PixelSpacingCalibrationType
    (then times the magnification, when known) and which is otherwise taken as the
    detector's (older CR files)."""
    imager = dicom_floats(ds.get("ImagerPixelSpacing", []) or [], 2)
    if imager is not None and min(imager) > 0:
        meta["pixel_spacing_source"] = "ImagerPixelSpacing"
        return (float(imager[0]), float(imager[1]))
    ps = dicom_floats(ds.get("PixelSpacing", []) or [], 2)
    if ps is None or min(ps) <= 0:
        return None
    calibrated = bool(str(ds.get("PixelSpacingCalibrationType", "") or "").strip())
    if calibrated and magnification is not None:
        meta["pixel_spacing_source"] = "PixelSpacing x magnification"
        return (float(ps[0]) * magnification, float(ps[1]) * magnification)
    meta["pixel_spacing_source"] = "PixelSpacing"
    if calibrated:
        meta["pixel_spacing_note"] = ("PixelSpacing is calibrated at the patient and no "
                                      "magnification is given: taken as the detector's")
    return (float(ps[0]), float(ps[1]))


def _read_radiograph_bitmap(path: Path, fmt: str) -> tuple[np.ndarray, None, dict]:
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
        raise InputError(path, f"unreadable {fmt.upper()} image: {one_line(exc)}") from None
    if arr.ndim == 3:
        if arr.shape[2] in (3, 4):
            arr = _grey_or_refuse(path, arr)
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
    img = read_sitk_image(path, fmt)
    if img.GetDimension() not in (2, 3):
        raise InputError(path, f"a {img.GetDimension()}D image, not a radiograph")
    array = sitk.GetArrayFromImage(img)
    spacing = list(img.GetSpacing())[::-1]  # array axis order
    if img.GetNumberOfComponentsPerPixel() in (3, 4):
        array = _grey_or_refuse(path, array)
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
            The view the file itself says (its header, ViewPosition or stored geometry) is
            kept in ``metadata["view_in_file"]``.

    Conventions: bone is bright. DICOM values get the modality rescale; MONOCHROME1 images
    are inverted about their nominal range (``metadata["photometric"]`` keeps the original
    interpretation). A colour (RGB/RGBA) image is refused; a grey one stored as RGB (equal
    channels) is read as grey (alpha ignored).
    Pixel spacing: DICOM ImagerPixelSpacing (detector plane), else PixelSpacing; NRRD etc.
    from the header; bitmaps have none (``None``; their dpi, if any, is in metadata).
    A file written by :func:`write_radiograph` gets its ProjectionGeometry and metadata back.

    Raises:
        InputError: missing/unreadable/truncated file, unknown type, a 3D volume or a
            multi-frame/multi-page image, a colour image, NaN values.
    """
    p = Path(path)
    require_exists(p)
    if p.is_dir():
        raise InputError(p, "a folder, not a radiograph file")
    ext = extension(p)
    geometry = None
    if ext in VOLUME_EXTENSIONS:
        array, spacing, meta, img = _read_radiograph_sitk(p, VOLUME_EXTENSIONS[ext])
        meta.update(restore_metadata(img))
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
                raise InputError(p, f"bad xraytoct_geometry in the header: {one_line(exc)}") from None
            if tuple(array.shape) != geometry.pixels:
                raise InputError(p, f"image shape {array.shape} differs from the stored "
                                    f"geometry's detector {geometry.pixels}")
    elif ext in IMAGE_EXTENSIONS:
        fmt = IMAGE_EXTENSIONS[ext]
        array, spacing, meta = _read_radiograph_bitmap(p, fmt)
    elif ext in DICOM_EXTENSIONS or has_dicom_magic(p):
        fmt = "dicom"
        array, spacing, meta = _read_radiograph_dicom(p)
    else:
        raise InputError(p, f"unknown file type {ext or '(no extension)'!r}: expected DICOM, "
                            f"{', '.join(IMAGE_EXTENSIONS)} or {', '.join(VOLUME_EXTENSIONS)}")
    if array.ndim != 2 or min(array.shape) < 2:
        raise InputError(p, f"not a 2D image (shape {array.shape})")
    meta.update({"source": str(p), "format": fmt})
    stated = meta.get("view") or (geometry.view if geometry is not None else None)
    if stated:  # the caller decides what to do with a contradiction
        meta["view_in_file"] = stated
    if view is not None:
        meta["view"] = view
    try:
        return Radiograph(array, spacing, geometry, meta)
    except ValueError as exc:
        raise InputError(p, one_line(exc)) from None


# --------------------------------------------------------------------------------------
# cleaning: collimation borders and burned-in markers
# --------------------------------------------------------------------------------------
EDGE_CONSTANT = 0.01
"""An edge row or column is part of a collimation border (shutter) when its values span at
most this fraction of the image's range (a constant band)."""
SHUTTER_CONTRAST = 0.05
"""A border band is a shutter to remove when it is brighter than the field's air level by
more than this fraction of the range."""
MARKER_MAX_AREA = 0.01
"""A burned-in marker covers at most this fraction of the field (a side letter, a text)."""
MARKER_SATURATION = 0.02
"""Marker pixels lie within this fraction of the range from the image's maximum."""
MARKER_MIN_PIXELS = 8
"""A burned-in marker has at least this many pixels at the image's maximum (a side letter
of 2 cm on a 3 mm detector pixel grid has about 15)."""
MARKER_CONTRAST = 0.6
"""A marker stands out: the median of the ring around it lies below this fraction of the
range (dense bone clipped by a look-up table lies inside bright bone and is kept)."""


def collimated_field(array: np.ndarray, *, tolerance: float = EDGE_CONSTANT
                     ) -> tuple[int, int, int, int]:
    """The exposed field ``(row0, row1, col0, col1)`` (half-open) inside constant bands at
    the image's edges (collimator shutters; a black or white border). The whole image when
    there is none."""
    a = np.asarray(array, dtype=np.float64)
    span = float(a.max() - a.min())
    if span <= 0:
        return 0, a.shape[0], 0, a.shape[1]
    tol = tolerance * span
    r0, r1, c0, c1 = 0, a.shape[0], 0, a.shape[1]

    def flat(v: np.ndarray) -> bool:
        return float(v.max() - v.min()) <= tol

    changed = True
    while changed and r1 - r0 > 2 and c1 - c0 > 2:
        changed = False
        for side in range(4):
            line = (a[r0, c0:c1], a[r1 - 1, c0:c1], a[r0:r1, c0], a[r0:r1, c1 - 1])[side]
            if flat(line) and (r1 - r0 > 2 and c1 - c0 > 2):
                if side == 0:
                    r0 += 1
                elif side == 1:
                    r1 -= 1
                elif side == 2:
                    c0 += 1
                else:
                    c1 -= 1
                changed = True
    return r0, r1, c0, c1


def burned_in_markers(array: np.ndarray, field: tuple[int, int, int, int] | None = None
                      ) -> np.ndarray:
    """Bool mask of burned-in markers: small saturated blobs (within
    :data:`MARKER_SATURATION` of the range from the image's maximum, at least
    :data:`MARKER_MIN_PIXELS` and half of them at the maximum itself) of at most
    :data:`MARKER_MAX_AREA` of the field, standing out from their surroundings (the ring
    around a blob has its median below :data:`MARKER_CONTRAST` of the range), inside
    ``field``; grown by one pixel to take the blurred rim."""
    a = np.asarray(array, dtype=np.float64)
    r0, r1, c0, c1 = field or (0, a.shape[0], 0, a.shape[1])
    inner = a[r0:r1, c0:c1]
    lo, hi = float(inner.min()), float(inner.max())
    out = np.zeros(a.shape, dtype=bool)
    if hi <= lo:
        return out
    saturated = inner >= hi - MARKER_SATURATION * (hi - lo)
    at_max = inner >= hi - 1e-6 * (hi - lo)
    labels, n = ndimage.label(saturated, structure=np.ones((3, 3)))
    if n == 0:
        return out
    sizes = np.bincount(labels.ravel())
    keep = np.zeros(inner.shape, dtype=bool)
    for k in range(1, n + 1):
        if not MARKER_MIN_PIXELS <= sizes[k] <= MARKER_MAX_AREA * inner.size:
            continue
        blob = labels == k
        flat = int((blob & at_max).sum())
        if flat < MARKER_MIN_PIXELS or flat < 0.5 * sizes[k]:
            continue  # burned-in pixels sit at the maximum itself: a plateau, not a peak
        ring = ndimage.binary_dilation(blob, iterations=2) & ~saturated
        if ring.any() and float(np.median(inner[ring])) < lo + MARKER_CONTRAST * (hi - lo):
            keep |= blob
    out[r0:r1, c0:c1] = ndimage.binary_dilation(keep) if keep.any() else keep
    return out


def clean_radiograph(array: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """A bone-bright radiograph without its collimation border and burned-in markers, and
    what was done: a border (:func:`collimated_field`) brighter than the field's air level
    (its 1st percentile) by more than :data:`SHUTTER_CONTRAST` of the range becomes that level (what lies outside the field is unknown, and a
    DRR shows air there; a dark border is left as it is), and
    each marker (:func:`burned_in_markers`) takes the value of the nearest pixel outside it.
    An image with neither is returned unchanged."""
    a = np.asarray(array, dtype=np.float32)
    r0, r1, c0, c1 = collimated_field(a)
    info: dict[str, Any] = {"field": [r0, r1, c0, c1], "collimated": False, "marker_pixels": 0}
    out = a.copy()
    markers = burned_in_markers(a, (r0, r1, c0, c1))
    if markers.any():
        _, (ri, ci) = ndimage.distance_transform_edt(markers, return_indices=True)
        out = out[ri, ci]
        info["marker_pixels"] = int(markers.sum())
    outside = np.ones(a.shape, dtype=bool)
    outside[r0:r1, c0:c1] = False
    air = float(np.percentile(out[r0:r1, c0:c1], 1.0))
    # a bright (unexposed) border becomes air; a dark one (air already, a black shutter,
    # the faint edge of a DRR) is left as it is
    bright = outside & (out > air + SHUTTER_CONTRAST * float(a.max() - a.min()))
    if bright.any():
        out[bright] = air
        info.update(collimated=True, air_level=air)
    return out, info


# --------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------
def write_radiograph(radiograph: Radiograph, path: str | os.PathLike, *,
                     compress: bool = True) -> Path:
    """Write a Radiograph as a 2D NRRD (or MetaImage / NIfTI), atomically.

    Spacing is ``(column, row)`` pixel spacing (1, 1 when unknown). NRRD and MetaImage get
    the keys ``xraytoct_geometry`` (JSON of ``geometry.to_dict()``), ``xraytoct_metadata``
    (JSON) and ``xraytoct_pixel_spacing``, which :func:`read_radiograph` restores; NIfTI
    keeps pixels and spacing only. Returns the path."""
    p = Path(path)
    fmt = volume_format(p)
    img = sitk.GetImageFromArray(np.ascontiguousarray(
        radiograph.array.astype(np.uint8) if radiograph.array.dtype == bool else radiograph.array))
    ps = radiograph.pixel_spacing
    img.SetSpacing((ps[1], ps[0]) if ps is not None else (1.0, 1.0))
    if fmt != "nifti":
        store_metadata(img, radiograph.metadata)
        img.SetMetaData("xraytoct_pixel_spacing", json_text(ps))
        if radiograph.geometry is not None:
            img.SetMetaData("xraytoct_geometry", json_text(radiograph.geometry.to_dict()))
    write_sitk_image(img, p, compress)
    return p
