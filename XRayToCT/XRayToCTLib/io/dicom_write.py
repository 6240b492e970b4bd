"""Writing a Volume as a DICOM CT Image Storage series: :func:`write_dicom_series`.

One explicit-VR little-endian file per k-slice, int16 with a rescale chosen so that the HU
round trip is within 0.5 HU; any orthonormal direction (oblique included) is kept. A
synthetic CT is labelled so (ImageType ``SYNTHETIC``, SeriesDescription, ImageComments and
DerivationDescription carry :data:`~XRayToCTLib.constants.SYNTHETIC_LABEL`). The series
appears all at once: it is written by :func:`~XRayToCTLib.io.files.atomic_write`.
"""
from __future__ import annotations

import datetime
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import generate_uid
from pydicom.valuerep import format_number_as_ds

from .. import __version__
from ..constants import SYNTHETIC_LABEL, SYNTHETIC_NOTE
from ..errors import InputError
from ..geometry import Volume
from ..progress import ProgressCallback, report
from .dicom_read import DICOM_CARRY_TAGS
from .files import atomic_write

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"


def _ds(value: float) -> str:
    """A number as a DICOM decimal string (at most 16 characters)."""
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
    derivation = f"{SYNTHETIC_LABEL}: {SYNTHETIC_NOTE}" if synthetic else "Derived by XRayToCT"
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
        "ImageComments": SYNTHETIC_LABEL if synthetic else "XRayToCT",
        "BurnedInAnnotation": "NO", "PatientPosition": "",
        "KVP": "", "AcquisitionNumber": "1",
        "SamplesPerPixel": 1, "PhotometricInterpretation": "MONOCHROME2",
        "BitsAllocated": 16, "BitsStored": 16, "HighBit": 15, "PixelRepresentation": 1,
        "WindowCenter": _ds(wc), "WindowWidth": _ds(ww),
        "RescaleType": "HU",
    })
    return attrs


def _write_slice(path: Path, attrs: dict[str, Any], pixels: np.ndarray, dtype: str = "<i2") -> None:
    """One DICOM file of ``attrs`` and ``pixels`` stored as ``dtype`` (explicit VR little
    endian): a CT slice, or a radiograph (``"<u2"``)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = attrs["SOPClassUID"]
    meta.MediaStorageSOPInstanceUID = attrs["SOPInstanceUID"]
    meta.TransferSyntaxUID = EXPLICIT_VR_LITTLE_ENDIAN
    meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    for key, value in attrs.items():
        setattr(ds, key, value)
    ds.PixelData = np.ascontiguousarray(pixels.astype(dtype)).tobytes()
    if int(pydicom.__version__.split(".")[0]) >= 3:
        ds.save_as(str(path), enforce_file_format=True)
    else:  # pragma: no cover - pydicom 2.x
        ds.is_little_endian, ds.is_implicit_VR = True, False
        ds.save_as(str(path), write_like_original=False)


def write_dicom_series(volume: Volume, folder: str | os.PathLike, *, source: Any = None,
                       series_description: str = SYNTHETIC_LABEL,
                       synthetic: bool = True,
                       progress: ProgressCallback | None = None) -> list[Path]:
    """Write a Volume as a DICOM CT Image Storage series, one file per k-slice.

    Args:
        volume: the CT in HU; any orthonormal direction (oblique included) is kept: each
            slice's ImageOrientationPatient is the i and j axes, its ImagePositionPatient
            the LPS position of its voxel (0, 0).
        folder: output folder; it must not exist or be empty. The series is written into
            a temporary folder beside it that is renamed to ``folder`` at the end.
        source: a Volume or Radiograph whose ``metadata["dicom"]`` gives the patient,
            study and frame-of-reference tags to carry over (pass it only when the volume
            is in that study's frame of reference); without one, anonymous placeholders
            (PatientName ``Synthetic^Phantom``) and new study/frame UIDs are used.
        series_description: SeriesDescription (64 characters at most).
        synthetic: label the images synthetic (ImageType ``DERIVED\\SECONDARY\\AXIAL\\SYNTHETIC``;
            DerivationDescription and ImageComments carry :data:`SYNTHETIC_LABEL`).

    Pixels are int16 with RescaleSlope 1 and a RescaleIntercept chosen so the values fit
    (HU round trip within 0.5 HU); only a range wider than 65535 HU needs a larger slope.
    Returns the paths of the written files, in slice order.
    """
    dest = Path(folder)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise InputError(dest, "the output folder exists and is not empty")
    if not dest.parent.is_dir():
        raise InputError(dest, f"the folder {dest.parent} does not exist")
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
    normal = np.cross(d[:, 0], d[:, 1])
    names = [f"slice_{k + 1:04d}.dcm" for k in range(array.shape[0])]
    ipps = volume.physical_points(np.stack([np.zeros(len(names)), np.zeros(len(names)),
                                            np.arange(len(names))], axis=1))  # voxels (0, 0, k)

    def write(tmp: Path) -> None:
        tmp.mkdir()
        for k, (name, ipp) in enumerate(zip(names, ipps)):
            stored = np.rint((array[k] - intercept) / slope)
            np.clip(stored, -32768, 32767, out=stored)
            attrs.update({"SOPInstanceUID": generate_uid(), "InstanceNumber": str(k + 1),
                          "ImagePositionPatient": [_ds(x) for x in ipp],
                          "SliceLocation": _ds(float(ipp @ normal))})
            _write_slice(tmp / name, attrs, stored.astype(np.int16))
            report(progress, (k + 1) / len(names), "writing DICOM slices")

    atomic_write(dest, write, to_path=True, create_parent=False)
    return [dest / n for n in names]


# --------------------------------------------------------------------------------------
# radiographs: DX / CR
# --------------------------------------------------------------------------------------
DX_PRESENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"
DX_PROCESSING_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1.1"
CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"

_LPS_LETTERS = (("L", "R"), ("P", "A"), ("H", "F"))


def patient_orientation(direction: np.ndarray) -> str:
    """DICOM PatientOrientation letters of an LPS direction (the major axes first, e.g.
    ``"L"``, ``"FP"`` for an oblique one; components under 0.25 are left out)."""
    d = np.asarray(direction, dtype=float)
    order = np.argsort(-np.abs(d))
    letters = [_LPS_LETTERS[a][0 if d[a] > 0 else 1] for a in order if abs(d[a]) >= 0.25]
    return "".join(letters)


def write_radiograph_dicom(radiograph: Any, path: str | os.PathLike, *, modality: str = "DX",
                           for_presentation: bool = True, view_position: str | None = None,
                           bits_stored: int | None = None, photometric: str = "MONOCHROME2",
                           description: str = "XRayToCT radiograph", comments: str | None = None,
                           kvp: float | None = None, burned_in_annotation: bool = False,
                           source: Any = None) -> Path:
    """Write a :class:`~XRayToCTLib.geometry.Radiograph` as one DICOM DX or CR file.

    Args:
        radiograph: bone bright; a presentation image in [0, 1] (``for_presentation``) is
            stored as ``round(x (2^bits - 1))``; any other range is mapped linearly onto the
            stored bits with RescaleSlope / RescaleIntercept.
        path: the ``.dcm`` file (written atomically).
        modality: ``"DX"`` (Digital X-Ray Image Storage, for presentation or for
            processing) or ``"CR"`` (Computed Radiography Image Storage).
        view_position: ViewPosition (``AP``, ``PA``, ``LL``, ``RL``).
        bits_stored: BitsStored (8..16) in 16 allocated bits; default 16 (DX), 12 (CR).
        photometric: ``MONOCHROME2`` (high = bright) or ``MONOCHROME1`` (stored inverted).
        description: SeriesDescription (64 characters at most) and ImageType's reason.
        comments: ImageComments (default: ``description``).
        kvp: KVP, when known.
        burned_in_annotation: BurnedInAnnotation YES (a marker in the pixels).
        source: a Volume or Radiograph whose ``metadata["dicom"]`` gives the patient and
            study tags to carry over.

    With a geometry, ImagerPixelSpacing is the detector pixel size, PixelSpacing the size
    at the isocentre (ImagerPixelSpacing / magnification, PixelSpacingCalibrationType
    GEOMETRY), with DistanceSourceToDetector (SID), DistanceSourceToPatient (SAD),
    EstimatedRadiographicMagnificationFactor and PatientOrientation (the LPS directions of
    the columns and rows). Returns the path.
    """
    p = Path(path)
    modality = modality.upper()
    if modality not in ("DX", "CR"):
        raise ValueError(f"modality must be DX or CR, got {modality!r}")
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(f"photometric must be MONOCHROME1 or MONOCHROME2, got {photometric!r}")
    bits = int(bits_stored or (16 if modality == "DX" else 12))
    if not 8 <= bits <= 16:
        raise ValueError(f"bits_stored must lie in 8..16, got {bits}")
    array = np.asarray(radiograph.array, dtype=np.float64)
    if array.ndim != 2 or not np.all(np.isfinite(array)):
        raise ValueError("a radiograph must be a finite 2D image to be written as DICOM")
    top = 2 ** bits - 1
    lo, hi = float(array.min()), float(array.max())
    if for_presentation and lo >= 0.0 and hi <= 1.0:
        slope, intercept = 1.0 / top, 0.0
    else:
        slope, intercept = max(hi - lo, 1e-12) / top, lo
    stored = np.clip(np.rint((array - intercept) / slope), 0, top)
    if photometric == "MONOCHROME1":
        stored = top - stored
    info: dict[str, Any] = {}
    if source is not None and isinstance(getattr(source, "metadata", None), dict):
        info = source.metadata.get("dicom") or {}
    vol_like = Volume(np.zeros((1, 1, 1), dtype=np.float32))
    attrs = _base_dataset(vol_like, info if isinstance(info, dict) else {}, description, False)
    sop = (CR_IMAGE_STORAGE if modality == "CR" else
           DX_PRESENTATION_STORAGE if for_presentation else DX_PROCESSING_STORAGE)
    for key in ("RescaleType", "SliceLocation", "FrameOfReferenceUID",
                "PositionReferenceIndicator"):
        attrs.pop(key, None)
    attrs.update({
        "SOPClassUID": sop, "SOPInstanceUID": generate_uid(), "Modality": modality,
        "ImageType": ["DERIVED", "SECONDARY", "SIMULATED"],
        "SeriesDescription": description[:64], "ImageComments": (comments or description)[:10240],
        "DerivationDescription": description[:1024],
        "BurnedInAnnotation": "YES" if burned_in_annotation else "NO",
        "KVP": "" if kvp is None else _ds(kvp), "InstanceNumber": "1",
        "BodyPartExamined": "HEAD", "ViewPosition": view_position or "",
        "Rows": int(array.shape[0]), "Columns": int(array.shape[1]),
        "PhotometricInterpretation": photometric,
        "BitsAllocated": 16, "BitsStored": bits, "HighBit": bits - 1, "PixelRepresentation": 0,
        "RescaleSlope": _ds(slope), "RescaleIntercept": _ds(intercept),
        "WindowCenter": _ds(intercept + slope * top / 2.0), "WindowWidth": _ds(slope * top),
        "PatientOrientation": "",
    })
    if modality == "DX":
        attrs.update({"PresentationIntentType": "FOR PRESENTATION" if for_presentation
                      else "FOR PROCESSING", "DetectorType": "SCINTILLATOR",
                      "PixelIntensityRelationship": "LOG",
                      "PixelIntensityRelationshipSign": 1})
    geom = getattr(radiograph, "geometry", None)
    spacing = radiograph.pixel_spacing
    if spacing is not None:
        attrs["ImagerPixelSpacing"] = [_ds(spacing[0]), _ds(spacing[1])]
    if geom is not None:
        mag = float(geom.magnification)
        attrs.update({
            "DistanceSourceToDetector": _ds(geom.sid), "DistanceSourceToPatient": _ds(geom.sad),
            "EstimatedRadiographicMagnificationFactor": _ds(mag),
            "PixelSpacing": [_ds(spacing[0] / mag), _ds(spacing[1] / mag)],
            "PixelSpacingCalibrationType": "GEOMETRY",
            "PixelSpacingCalibrationDescription": "ImagerPixelSpacing / (SID / SAD): the "
                                                  "isocentre plane",
            "PatientOrientation": [patient_orientation(geom.col_dir),
                                   patient_orientation(geom.row_dir)],
        })

    atomic_write(p, lambda tmp: _write_slice(tmp, attrs, stored, "<u2"), to_path=True, create_parent=False)
    return p
