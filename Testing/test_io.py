"""Tests of XRayToCTLib.io: geometry-exact reading and writing of CTs and radiographs
(io.volumes, io.dicom_read, io.dicom_write, io.radiographs; io.files in test_io_files.py)."""
from __future__ import annotations

import json
import math
import os
import re
import struct
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from PIL import Image
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import format_number_as_ds

from XRayToCTLib import io
from XRayToCTLib.constants import SYNTHETIC_LABEL
from XRayToCTLib.errors import AmbiguousSeries, InputError, NotHounsfield
from XRayToCTLib.io import dicom_write
from XRayToCTLib.geometry import Radiograph, Volume, default_biplanar, rotation_matrix

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
GE_TILT = SHARED_DATA / "head_ct" / "ge_hispeed_tilt"
CTHEAD = SHARED_DATA / "head_ct" / "slicer_ctheadaxial"

CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"
ENHANCED_CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"

ORIENTATIONS = {
    "oblique": rotation_matrix((20.0, 30.0, 10.0)),
    "ras_like": np.diag([-1.0, -1.0, 1.0]),
    # sagittal acquisition: rows run posterior, columns inferior, slices towards the right
    "sagittal": np.array([[0.0, 0.0, -1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]]),
    # i and j swapped: a left-handed frame (DICOM stores it with the slice order reversed)
    "left_handed": np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]),
}
SPACING = (0.8, 1.3, 2.2)
ORIGIN = (-31.7, 12.25, 104.5)


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared test data not found at {path} (a fresh clone has no ../shared/data)")
    return path


def make_volume(direction: np.ndarray, shape=(16, 20, 18), seed=0) -> Volume:
    """A small anisotropic volume with HU-like values (air included) and a unique value
    per voxel pattern, so that any index mix-up changes values."""
    rng = np.random.default_rng(seed)
    arr = rng.uniform(-1000.0, 2000.0, size=shape).astype(np.float32)
    arr[:, :3, :] = -1000.0  # an air band
    return Volume(arr, SPACING, ORIGIN, direction, {"note": "test volume", "patient": "none"})


def voxel_correspondence(a: Volume, b: Volume, atol_mm: float = 1e-4) -> tuple[np.ndarray, np.ndarray]:
    """For every voxel of ``b``, the voxel of ``a`` at the same physical position.

    Asserts that the two grids hold the same voxel centres (within ``atol_mm``) one to one,
    and returns (values of a, values of b) in corresponding order."""
    assert a.array.size == b.array.size
    kk, jj, ii = (x.reshape(-1) for x in np.indices(b.array.shape))
    pts_b = b.physical_points(np.stack([ii, jj, kk], axis=1).astype(float))
    idx_a = np.rint(a.continuous_index(pts_b))
    err = np.abs(a.physical_points(idx_a) - pts_b).max()
    assert err < atol_mm, f"voxel centres differ by {err} mm"
    idx_a = idx_a.astype(int)
    size = np.asarray(a.size)
    assert np.all(idx_a >= 0) and np.all(idx_a < size), "voxels outside the other grid"
    flat = np.ravel_multi_index((idx_a[:, 2], idx_a[:, 1], idx_a[:, 0]), a.array.shape)
    assert np.unique(flat).size == flat.size, "the voxel correspondence is not one to one"
    return a.array.reshape(-1)[flat], b.array[kk, jj, ii]


def save_dicom(ds: FileDataset, path: Path) -> None:
    if int(pydicom.__version__.split(".")[0]) >= 3:
        ds.save_as(str(path), enforce_file_format=True)
    else:  # pragma: no cover
        ds.is_little_endian, ds.is_implicit_VR = True, False
        ds.save_as(str(path), write_like_original=False)


def new_dataset(path: Path, sop_class: str) -> FileDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientName = "Test^Patient"
    ds.PatientID = "P123"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "F"
    ds.StudyInstanceUID = "1.2.3.4.5"
    ds.StudyDate = "20240101"
    ds.StudyDescription = "HEAD"
    return ds


def ds_list(values) -> list[str]:
    return [format_number_as_ds(float(v)) for v in values]


def write_ct_slice(path: Path, stored: np.ndarray, *, ipp, iop, pixel_spacing, series_uid,
                   instance, slope=1.0, intercept=-1024.0, description="test series",
                   frame_uid="1.2.3.4.6", **extra) -> Path:
    ds = new_dataset(path, CT_STORAGE)
    ds.Modality = "CT"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesDescription = description
    ds.FrameOfReferenceUID = frame_uid
    ds.InstanceNumber = str(instance)
    ds.ImagePositionPatient = ds_list(ipp)
    ds.ImageOrientationPatient = ds_list(iop)
    ds.PixelSpacing = ds_list(pixel_spacing)
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if stored.dtype.kind == "i" else 0
    ds.RescaleSlope = format_number_as_ds(float(slope))
    ds.RescaleIntercept = format_number_as_ds(float(intercept))
    for key, value in extra.items():
        setattr(ds, key, value)
    ds.PixelData = np.ascontiguousarray(stored.astype("<i2" if stored.dtype.kind == "i" else "<u2")).tobytes()
    save_dicom(ds, path)
    return path


def write_simple_series(folder: Path, n=4, shape=(8, 10), series_uid=None, z0=0.0, dz=2.0,
                        description="test series", value=None) -> str:
    """A small regular axial series with air (stored 0 -> -1024 HU) and soft tissue."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    for s in range(n):
        stored = np.zeros(shape, np.uint16) if value is None else np.full(shape, value, np.uint16)
        stored[2:, 3:] = 1064
        write_ct_slice(folder / f"{series_uid[-6:]}_{s:03d}.dcm", stored,
                       ipp=(-5.0, -4.0, z0 + dz * s), iop=(1, 0, 0, 0, 1, 0),
                       pixel_spacing=(0.5, 0.5), series_uid=series_uid, instance=s + 1,
                       description=description)
    return series_uid


def one_line_error(excinfo, path) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg
    assert os.fspath(path) in msg, f"{msg!r} does not name {path}"
    return msg


# ======================================================================================
# round trips: file -> library -> file, on oblique and non-LPS orientations
# ======================================================================================
@pytest.mark.parametrize("orientation", sorted(ORIENTATIONS))
@pytest.mark.parametrize("ext", [".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd"])
def test_volume_file_round_trip(tmp_path, ext, orientation):
    vol = make_volume(ORIENTATIONS[orientation])
    path = tmp_path / f"ct{ext}"
    io.write_volume(vol, path)
    back = io.read_volume(path)
    assert back.array.dtype == np.float32
    assert back.array.shape == vol.array.shape
    np.testing.assert_allclose(back.direction, vol.direction, atol=1e-6)
    np.testing.assert_allclose(back.spacing, vol.spacing, rtol=1e-6)
    np.testing.assert_allclose(back.index_to_lps(), vol.index_to_lps(), atol=1e-5)
    va, vb = voxel_correspondence(vol, back)
    np.testing.assert_array_equal(va, vb)
    assert back.metadata["format"] == io.VOLUME_EXTENSIONS[ext]
    assert back.metadata["source"] == str(path)
    # and the file written back from the library is the same again
    path2 = tmp_path / f"again{ext}"
    io.write_volume(back, path2)
    again = io.read_volume(path2)
    np.testing.assert_array_equal(again.array, vol.array)
    np.testing.assert_allclose(again.index_to_lps(), vol.index_to_lps(), atol=1e-5)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp leftovers


@pytest.mark.parametrize("orientation", sorted(ORIENTATIONS))
def test_dicom_series_round_trip(tmp_path, orientation):
    vol = make_volume(ORIENTATIONS[orientation])
    vol.array[0, 5, 7] = 1234.4  # rounding must stay within 1 HU
    files = io.write_dicom_series(vol, tmp_path / "sct")
    assert len(files) == vol.array.shape[0] and all(f.is_file() for f in files)
    back = io.read_volume(tmp_path / "sct")
    assert "resampled_from_irregular_series" not in back.metadata
    assert np.allclose(back.direction.T @ back.direction, np.eye(3), atol=1e-9)
    va, vb = voxel_correspondence(vol, back, atol_mm=1e-4)
    assert np.abs(va - vb).max() <= 0.5 + 1e-3
    if np.linalg.det(vol.direction) > 0:  # right-handed: the same index order
        np.testing.assert_allclose(back.index_to_lps(), vol.index_to_lps(), atol=1e-4)
    else:  # left-handed: DICOM sorts along the slice normal, so k is reversed
        np.testing.assert_allclose(back.direction[:, 2], -vol.direction[:, 2], atol=1e-9)
    # reading one file of the series reads the whole series
    one = io.read_volume(files[3])
    np.testing.assert_array_equal(one.array, back.array)
    # an independent DICOM reader (GDCM, as in Slicer) sees the same geometry
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path / "sct")))
    gdcm = io.sitk_to_volume(sitk.Cast(reader.Execute(), sitk.sitkFloat32))
    va, vb = voxel_correspondence(vol, gdcm, atol_mm=1e-4)
    assert np.abs(va - vb).max() <= 0.5 + 1e-3


def test_dicom_series_tags(tmp_path):
    vol = make_volume(ORIENTATIONS["oblique"], shape=(4, 6, 5))
    files = io.write_dicom_series(vol, tmp_path / "anon")
    ds = [pydicom.dcmread(str(f)) for f in files]
    d = ds[0]
    assert d.SOPClassUID == CT_STORAGE and d.file_meta.MediaStorageSOPClassUID == CT_STORAGE
    assert list(d.ImageType)[:2] == ["DERIVED", "SECONDARY"] and "SYNTHETIC" in d.ImageType
    assert "not for diagnosis" in d.SeriesDescription and d.SeriesDescription == SYNTHETIC_LABEL
    assert SYNTHETIC_LABEL in d.DerivationDescription and d.ImageComments == SYNTHETIC_LABEL
    assert str(d.PatientName) == "Synthetic^Phantom"
    assert len({x.SOPInstanceUID for x in ds}) == len(ds)
    assert len({x.SeriesInstanceUID for x in ds}) == 1
    assert d.FrameOfReferenceUID and d.PixelRepresentation == 1 and d.BitsAllocated == 16
    assert float(d.SliceThickness) == pytest.approx(SPACING[2])
    assert float(d.SpacingBetweenSlices) == pytest.approx(SPACING[2])
    assert [float(x) for x in d.PixelSpacing] == pytest.approx([SPACING[1], SPACING[0]])
    assert "WindowCenter" in d and "WindowWidth" in d
    for k, x in enumerate(ds):
        expected = np.asarray(ORIGIN) + vol.direction[:, 2] * SPACING[2] * k
        np.testing.assert_allclose([float(v) for v in x.ImagePositionPatient], expected, atol=1e-6)

    # patient/study/frame carried over from a source read from DICOM
    src_dir = tmp_path / "src"
    write_simple_series(src_dir)
    source = io.read_volume(src_dir)
    assert source.metadata["dicom"]["PatientName"] == "Test^Patient"
    files = io.write_dicom_series(vol, tmp_path / "derived", source=source, synthetic=False,
                                  series_description="derived")
    d = pydicom.dcmread(str(files[0]))
    assert str(d.PatientName) == "Test^Patient" and d.PatientID == "P123"
    assert d.StudyInstanceUID == "1.2.3.4.5" and d.FrameOfReferenceUID == "1.2.3.4.6"
    assert d.SeriesInstanceUID != source.metadata["series_uid"]
    assert "SYNTHETIC" not in d.ImageType and d.SeriesDescription == "derived"

    # an existing empty folder is fine; a non-empty one is refused
    (tmp_path / "empty").mkdir()
    io.write_dicom_series(vol, tmp_path / "empty")
    with pytest.raises(InputError) as e:
        io.write_dicom_series(vol, tmp_path / "empty")
    one_line_error(e, tmp_path / "empty")


def test_dicom_wide_range_round_trip(tmp_path):
    vol = make_volume(np.eye(3), shape=(3, 6, 5))
    vol.array[1, 2, 2] = 45000.0  # wider than int16 with intercept 0: intercept moves
    io.write_dicom_series(vol, tmp_path / "wide")
    back = io.read_volume(tmp_path / "wide")
    va, vb = voxel_correspondence(vol, back)
    assert np.abs(va - vb).max() <= 0.5 + 1e-3


# ======================================================================================
# Slicer IJKToRAS
# ======================================================================================
@pytest.mark.parametrize("orientation", sorted(ORIENTATIONS))
def test_ijk_to_ras_round_trip(orientation):
    vol = make_volume(ORIENTATIONS[orientation])
    m = vol.ijk_to_ras()
    back = Volume.from_ijk_to_ras(vol.array, m)
    np.testing.assert_allclose(back.spacing, vol.spacing, rtol=1e-12)
    np.testing.assert_allclose(back.origin, vol.origin, atol=1e-12)
    np.testing.assert_allclose(back.direction, vol.direction, atol=1e-12)
    ijk = np.array([3.0, 4.0, 5.0, 1.0])
    lps = vol.index_to_lps() @ ijk
    ras = m @ ijk
    np.testing.assert_allclose(ras[:3], [-lps[0], -lps[1], lps[2]], atol=1e-12)


def test_nrrd_in_ras_space_matches_slicer_matrix(tmp_path):
    """A hand-written NRRD in RAS space: its header *is* Slicer's IJKToRAS matrix."""
    rot = rotation_matrix((10.0, -25.0, 40.0))
    spacing = np.array([0.7, 1.1, 2.5])
    dirs_ras = rot * spacing  # columns = RAS step of i, j, k
    origin_ras = np.array([12.5, -40.25, 7.0])
    size = (6, 5, 4)
    data = np.full(size[::-1], -1000, dtype=np.int16)
    data[1, 2, 3] = 500
    vecs = " ".join("(" + ",".join(repr(float(x)) for x in dirs_ras[:, a]) + ")" for a in range(3))
    header = ("NRRD0004\ntype: short\ndimension: 3\nspace: right-anterior-superior\n"
              f"sizes: {size[0]} {size[1]} {size[2]}\nspace directions: {vecs}\n"
              "kinds: domain domain domain\nendian: little\nencoding: raw\n"
              f"space origin: ({','.join(repr(float(x)) for x in origin_ras)})\n\n")
    path = tmp_path / "ras.nrrd"
    path.write_bytes(header.encode() + data.astype("<i2").tobytes())
    vol = io.read_volume(path)
    expected = np.eye(4)
    expected[:3, :3], expected[:3, 3] = dirs_ras, origin_ras
    np.testing.assert_allclose(vol.ijk_to_ras(), expected, atol=1e-9)
    assert vol.array[1, 2, 3] == 500
    lps = vol.physical_points(np.array([[3.0, 2.0, 1.0]]))[0]
    ras = dirs_ras @ [3.0, 2.0, 1.0] + origin_ras
    np.testing.assert_allclose(lps, [-ras[0], -ras[1], ras[2]], atol=1e-9)


# ======================================================================================
# irregular DICOM series: synthetic gantry tilt and uneven gaps
# ======================================================================================
def write_tilted_series(folder: Path, func, tilt_deg: float, z_positions, shape=(22, 26),
                        pixel_spacing=(1.1, 0.9), base=(-11.0, -9.0, 0.0)) -> dict:
    """Axial slices of a gantry tilted by ``tilt_deg`` about x (GE style: the table moves
    along z, the slice plane is tilted), at the given table positions, sampling ``func``."""
    folder.mkdir(parents=True, exist_ok=True)
    th = math.radians(tilt_deg)
    r = np.array([1.0, 0.0, 0.0])
    c = np.array([0.0, math.cos(th), -math.sin(th)])
    rs, cs = pixel_spacing
    rows, cols = shape
    uid = generate_uid()
    ipps = []
    jj, ii = np.indices(shape)
    for s, z in enumerate(z_positions):
        ipp = np.asarray(base) + np.array([0.0, 0.0, z])
        pts = ipp + ii[..., None] * cs * r + jj[..., None] * rs * c
        hu = func(pts)
        stored = np.rint(hu + 1024.0).astype(np.uint16)
        write_ct_slice(folder / f"{s:02d}.dcm", stored, ipp=ipp, iop=np.concatenate([r, c]),
                       pixel_spacing=pixel_spacing, series_uid=uid, instance=s + 1,
                       GantryDetectorTilt=format_number_as_ds(tilt_deg))
        ipps.append(ipp)
    return {"r": r, "c": c, "n": np.cross(r, c), "ipps": np.array(ipps), "shape": shape,
            "pixel_spacing": pixel_spacing}


def inside_mask(vol: Volume, info: dict) -> np.ndarray:
    """Voxels whose position lies within the pixel-centre hull of both acquired planes
    around them (where interpolation needs no extrapolation)."""
    kk, jj, ii = (x.reshape(-1) for x in np.indices(vol.array.shape))
    pts = vol.physical_points(np.stack([ii, jj, kk], 1).astype(float))
    d = info["ipps"] @ info["n"]
    t = pts @ info["n"]
    s = np.clip(np.searchsorted(d, t, side="right") - 1, 0, len(d) - 2)
    rows, cols = info["shape"]
    rs, cs = info["pixel_spacing"]
    ok = (t >= d[0] - 1e-6) & (t <= d[-1] + 1e-6)
    for nb in (s, s + 1):
        rel = pts - info["ipps"][nb]
        x = rel @ info["r"] / cs
        y = rel @ info["c"] / rs
        ok &= (x >= -1e-6) & (x <= cols - 1 + 1e-6) & (y >= -1e-6) & (y <= rows - 1 + 1e-6)
    return ok.reshape(vol.array.shape)


def test_tilted_uneven_series_is_resampled_in_physical_space(tmp_path):
    grad = np.array([0.6, -0.35, 0.72])
    z = [0.0, 2.0, 4.0, 7.5, 8.5, 12.0, 13.0, 16.0, 22.0]

    def ramp(p):  # -990..~1000 over the slab: linear, so interpolation must be exact
        return -990.0 + 1990.0 * ((p @ grad) + 16.0) / 42.0

    info = write_tilted_series(tmp_path / "tilt", ramp, 17.0, z)
    vol = io.read_volume(tmp_path / "tilt")
    # an orthonormal grid in the slice frame, not sheared along the table motion
    np.testing.assert_allclose(vol.direction.T @ vol.direction, np.eye(3), atol=1e-9)
    np.testing.assert_allclose(vol.direction, np.stack([info["r"], info["c"], info["n"]], 1), atol=1e-6)
    assert vol.spacing[:2] == pytest.approx((0.9, 1.1))
    rec = vol.metadata["resampled_from_irregular_series"]
    assert rec["n_slices"] == len(z)
    assert rec["tilt_deg"] == pytest.approx(17.0, abs=0.01)
    assert "tilt" in rec["reason"] and "uneven" in rec["reason"]
    np.testing.assert_allclose(rec["gaps"], np.diff(z) * math.cos(math.radians(17.0)), atol=1e-3)
    # the grid spans exactly the acquired positions along the normal
    d = info["ipps"] @ info["n"]
    assert (vol.size[2] - 1) * vol.spacing[2] == pytest.approx(d[-1] - d[0], abs=1e-6)
    assert np.asarray(vol.origin) @ info["n"] == pytest.approx(d[0], abs=1e-6)
    # values at physical points match the analytic function
    kk, jj, ii = np.indices(vol.array.shape)
    pts = vol.physical_points(np.stack([ii.ravel(), jj.ravel(), kk.ravel()], 1).astype(float))
    expected = ramp(pts).reshape(vol.array.shape)
    inside = inside_mask(vol, info)
    assert inside.mean() > 0.5
    err = np.abs(vol.array - expected)[inside]
    assert err.max() <= 0.6, f"max error {err.max()} HU inside the acquired slab"
    # voxels not surrounded by acquired data are air (the fill), never made-up values
    filled = vol.array == -1000.0
    assert not filled[inside].any()
    assert filled[~inside].mean() > 0.5


def test_tilted_sphere_keeps_its_place(tmp_path):
    centre = np.array([1.5, 2.0, 9.0])

    def sphere(p):
        return np.where(np.linalg.norm(p - centre, axis=-1) <= 6.0, 1000.0, -1000.0)

    z = np.concatenate([np.arange(0.0, 10.0, 1.0), np.arange(10.5, 22.0, 1.5)])
    write_tilted_series(tmp_path / "sphere", sphere, 25.0, z, shape=(28, 28),
                        pixel_spacing=(0.8, 0.8), base=(-10.0, -12.0, 0.0))
    vol = io.read_volume(tmp_path / "sphere")
    w = np.clip((vol.array + 1000.0) / 2000.0, 0, 1).ravel()
    kk, jj, ii = np.indices(vol.array.shape)
    pts = vol.physical_points(np.stack([ii.ravel(), jj.ravel(), kk.ravel()], 1).astype(float))
    centroid = (pts * w[:, None]).sum(0) / w.sum()
    np.testing.assert_allclose(centroid, centre, atol=0.5)
    # a reader that stacks the slices along the normal (ignoring tilt) misplaces it by mm
    assert vol.metadata["resampled_from_irregular_series"]["tilt_deg"] == pytest.approx(25.0, abs=0.01)


def test_uneven_gaps_without_tilt(tmp_path):
    z = [0.0, 2.0, 4.0, 8.0, 10.0]  # one missing slice
    grad = np.array([0.0, 0.0, 1.0])
    info = write_tilted_series(tmp_path / "gap", lambda p: -900.0 + 150.0 * (p @ grad), 0.0, z,
                               shape=(6, 7))
    vol = io.read_volume(tmp_path / "gap")
    rec = vol.metadata["resampled_from_irregular_series"]
    assert rec["tilt_deg"] == 0.0 and "uneven" in rec["reason"] and "tilt" not in rec["reason"]
    assert vol.array.shape == (6, 6, 7) and vol.spacing[2] == pytest.approx(2.0)
    np.testing.assert_allclose(vol.array[:, 0, 0], -900.0 + 150.0 * np.arange(0, 11, 2.0), atol=0.6)
    np.testing.assert_allclose(vol.direction, np.eye(3), atol=1e-12)
    assert inside_mask(vol, info).all()


def test_regular_series_is_not_resampled(tmp_path):
    write_simple_series(tmp_path / "reg", n=5, dz=1.25)
    vol = io.read_volume(tmp_path / "reg")
    assert "resampled_from_irregular_series" not in vol.metadata
    assert vol.spacing == pytest.approx((0.5, 0.5, 1.25)) and vol.origin == pytest.approx((-5, -4, 0))
    assert vol.array.min() == -1024.0 and vol.array.max() == 40.0
    assert vol.metadata["rescale"] == {"slope": 1.0, "intercept": -1024.0, "from": "header"}


def test_enhanced_multiframe_ct(tmp_path):
    path = tmp_path / "enhanced.dcm"
    ds = new_dataset(path, ENHANCED_CT_STORAGE)
    ds.Modality = "CT"
    ds.SeriesInstanceUID = generate_uid()
    ds.Rows, ds.Columns, ds.NumberOfFrames = 6, 5, 4
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit, ds.PixelRepresentation = 15, 1
    shared = Dataset()
    po, pm, pv = Dataset(), Dataset(), Dataset()
    po.ImageOrientationPatient = ds_list([0, 1, 0, 0, 0, -1])
    pm.PixelSpacing = ds_list([0.7, 0.6])
    pm.SliceThickness = "3"
    pv.RescaleSlope, pv.RescaleIntercept, pv.RescaleType = "1", "-1024", "HU"
    shared.PlaneOrientationSequence = DicomSequence([po])
    shared.PixelMeasuresSequence = DicomSequence([pm])
    shared.PixelValueTransformationSequence = DicomSequence([pv])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    frames = []
    for f in (2, 0, 3, 1):  # frames stored out of order
        item, pp = Dataset(), Dataset()
        pp.ImagePositionPatient = ds_list([-3.0 * f, 10.0, 20.0])  # normal is -x
        item.PlanePositionSequence = DicomSequence([pp])
        frames.append(item)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(frames)
    pixels = np.zeros((4, 6, 5), np.int16)
    for n, f in enumerate((2, 0, 3, 1)):
        pixels[n] = 100 * f
    pixels[:, 0, :] = 0  # stored 0 -> -1024 HU: air
    ds.PixelData = pixels.astype("<i2").tobytes()
    save_dicom(ds, path)
    vol = io.read_volume(path)
    assert vol.array.shape == (4, 6, 5)
    np.testing.assert_allclose(vol.direction, [[0, 0, -1], [1, 0, 0], [0, -1, 0]], atol=1e-12)
    assert vol.spacing == pytest.approx((0.6, 0.7, 3.0))
    assert vol.origin == pytest.approx((0.0, 10.0, 20.0))
    np.testing.assert_array_equal(vol.array[:, 3, 3], [-1024, -924, -824, -724])


# ======================================================================================
# real data
# ======================================================================================
def test_real_ge_tilted_series():
    folder = need(GE_TILT)
    vol = io.read_volume(folder)
    np.testing.assert_allclose(vol.direction.T @ vol.direction, np.eye(3), atol=1e-9)
    rec = vol.metadata["resampled_from_irregular_series"]
    assert rec["n_slices"] == 28
    assert min(rec["gaps"]) == pytest.approx(1.08, abs=0.01)
    assert max(rec["gaps"]) == pytest.approx(7.0, abs=0.01)
    assert rec["tilt_deg"] == pytest.approx(18.5, abs=0.05)
    assert vol.metadata["dicom"]["Modality"] == "CT" and vol.metadata["units"] == "HU"
    # HU: air around -1000 (GE's -1500 padding is not data), bone above 300
    assert abs(float(np.percentile(vol.array, 5)) + 1000.0) < 30.0
    assert vol.array.min() >= -1100
    assert int((vol.array > 300).sum()) > 10000
    # the extent along the slice normal is the span of the slice positions
    ds = [pydicom.dcmread(str(f), stop_before_pixels=True) for f in sorted(folder.glob("*.dcm"))]
    iop = np.array([float(x) for x in ds[0].ImageOrientationPatient])
    normal = np.cross(iop[:3], iop[3:])
    normal /= np.linalg.norm(normal)
    d = np.array([np.array([float(x) for x in x.ImagePositionPatient]) @ normal for x in ds])
    np.testing.assert_allclose(vol.direction[:, 2], normal, atol=1e-6)
    assert (vol.size[2] - 1) * vol.spacing[2] == pytest.approx(d.max() - d.min(), abs=1e-3)
    assert np.asarray(vol.origin) @ normal == pytest.approx(d.min(), abs=1e-3)
    # the first acquired slice is the first output plane, at its own physical place
    first = min(ds, key=lambda x: np.array([float(v) for v in x.ImagePositionPatient]) @ normal)
    full = pydicom.dcmread(first.filename)
    raw = full.pixel_array.astype(np.float64) * float(full.RescaleSlope) + float(full.RescaleIntercept)
    ipp = np.array([float(x) for x in full.ImagePositionPatient])
    start = np.rint(vol.continuous_index(ipp[None])[0]).astype(int)
    assert start[2] == 0
    np.testing.assert_allclose(vol.physical_points(start[None].astype(float))[0], ipp, atol=1e-4)
    block = vol.array[0, start[1]:start[1] + raw.shape[0], start[0]:start[0] + raw.shape[1]]
    data = raw != float(full.PixelPaddingValue)
    np.testing.assert_allclose(block[data], raw[data], atol=1e-3)


def test_real_cthead_needs_rescale():
    folder = need(CTHEAD)
    with pytest.raises(InputError) as e:
        io.read_volume(folder)
    msg = one_line_error(e, folder)
    assert "rescale" in msg and "Hounsfield" in msg and "--" not in msg  # the CLI adds its option
    vol = io.read_volume(folder, rescale=(1, -1024))
    assert vol.array.shape == (93, 64, 64)
    assert vol.spacing == pytest.approx((3.2, 3.2, 1.5))
    np.testing.assert_allclose(vol.direction, np.eye(3))
    assert vol.array.min() == -1024.0 and vol.array.max() == 3926 - 1024
    assert vol.metadata["rescale"]["from"] == "user"
    assert "resampled_from_irregular_series" not in vol.metadata
    raw = io.read_volume(folder, require_hu=False)
    assert raw.array.min() == 0 and raw.array.max() == 3926
    assert raw.metadata["units"] == "stored values"


def test_not_hu_nifti_refused_and_rescaled(tmp_path):
    vol = make_volume(np.eye(3), shape=(4, 5, 6))
    shifted = vol.with_array(vol.array + 1024.0)
    path = tmp_path / "shifted.nrrd"
    io.write_volume(shifted, path)
    with pytest.raises(InputError) as e:
        io.read_volume(path)
    assert isinstance(e.value, NotHounsfield) and "rescale" in one_line_error(e, path)
    back = io.read_volume(path, rescale=(1, -1024))
    np.testing.assert_allclose(back.array, vol.array, atol=1e-3)
    with pytest.raises(InputError) as e:
        io.read_volume(path, rescale=(1, 0))  # a wrong rescale is caught too
    assert "after the given rescale" in one_line_error(e, path)


# ======================================================================================
# bad input
# ======================================================================================
def test_missing_and_unknown(tmp_path):
    for reader in (io.read_volume, io.read_radiograph):
        missing = tmp_path / "nope.nii.gz"
        with pytest.raises(InputError) as e:
            reader(missing)
        assert "no such file" in one_line_error(e, missing)
        odd = tmp_path / "notes.xyz"
        odd.write_text("hello")
        with pytest.raises(InputError) as e:
            reader(odd)
        assert "unknown file type" in one_line_error(e, odd)
    for name in ("garbage.nii", "garbage.nii.gz", "garbage.nrrd", "garbage.mha", "garbage.dcm",
                 "garbage.png"):
        path = tmp_path / name
        path.write_bytes(bytes(range(256)) * 3)
        for reader in (io.read_volume, io.read_radiograph):
            with pytest.raises(InputError) as e:
                reader(path)
            one_line_error(e, path)


@pytest.mark.parametrize("ext", [".nii", ".nii.gz", ".nrrd", ".mha"])
def test_truncated_volume_files(tmp_path, ext):
    path = tmp_path / f"ct{ext}"
    io.write_volume(make_volume(np.eye(3)), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 40])
    with pytest.raises(InputError) as e:
        io.read_volume(path)
    one_line_error(e, path)


def test_2d_image_nan_and_sheared(tmp_path):
    flat = tmp_path / "flat.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.full((8, 9), -1000, np.float32)), str(flat))
    with pytest.raises(InputError) as e:
        io.read_volume(flat)
    assert "2D" in one_line_error(e, flat)
    single = tmp_path / "single.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.full((1, 8, 9), -1000, np.float32)), str(single))
    with pytest.raises(InputError) as e:
        io.read_volume(single)
    assert "single slice" in one_line_error(e, single)
    arr = make_volume(np.eye(3)).array
    arr[2, 3, 4] = np.nan
    arr[1, 1, 1] = np.inf
    bad = tmp_path / "nan.mha"
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(bad))
    with pytest.raises(InputError) as e:
        io.read_volume(bad)
    assert "2 voxels are NaN or infinite" in one_line_error(e, bad)


def _patch_header(path: Path, pattern: bytes, replacement: bytes) -> None:
    data = path.read_bytes()
    new = re.sub(pattern, replacement, data, count=1)
    assert new != data
    path.write_bytes(new)


@pytest.mark.parametrize("case", ["mha_zero", "mha_negative", "nrrd_zero", "nrrd_negative",
                                  "nii_zero", "nii_negative"])
def test_zero_or_negative_spacing(tmp_path, case):
    vol = make_volume(np.eye(3), shape=(4, 5, 6))
    if case.startswith("mha"):
        path = tmp_path / "ct.mha"
        io.write_volume(vol, path, compress=False)
        value = b"0" if case.endswith("zero") else b"-1.3"
        _patch_header(path, rb"ElementSpacing = \S+", b"ElementSpacing = " + value)
    elif case.startswith("nrrd"):
        path = tmp_path / "ct.nhdr"
        header = ("NRRD0004\ntype: float\ndimension: 3\nsizes: 6 5 4\n"
                  f"spacings: {'0' if case.endswith('zero') else '-0.8'} 1.3 2.2\n"
                  "endian: little\nencoding: raw\ndata file: ct.raw\n\n")
        path.write_text(header)
        (tmp_path / "ct.raw").write_bytes(vol.array.astype("<f4").tobytes())
    else:
        path = tmp_path / "ct.nii"
        io.write_volume(vol, path)
        data = bytearray(path.read_bytes())
        struct.pack_into("<f", data, 80, 0.0 if case.endswith("zero") else -0.8)
        path.write_bytes(bytes(data))
    with pytest.raises(InputError) as e:
        io.read_volume(path)
    assert "spacing" in one_line_error(e, path)


def test_dicom_folder_problems(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError) as e:
        io.read_volume(empty)
    assert "empty" in one_line_error(e, empty)

    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "readme.txt").write_text("not dicom")
    (junk / "NOEXT").write_bytes(b"\x00" * 300)
    with pytest.raises(InputError) as e:
        io.read_volume(junk)
    assert "no DICOM" in one_line_error(e, junk)
    assert not io.is_dicom_dir(junk) and not io.is_dicom_dir(empty)

    many = tmp_path / "many"
    a = write_simple_series(many, n=3, description="HEAD 5mm")
    b = write_simple_series(many, n=5, description="BONE")
    assert io.is_dicom_dir(many)
    with pytest.raises(InputError) as e:
        io.read_volume(many)
    msg = one_line_error(e, many)
    assert a in msg and b in msg and "HEAD 5mm" in msg and "5 slices" in msg
    assert isinstance(e.value, AmbiguousSeries) and "series UID" in msg and "--" not in msg
    assert io.read_volume(many, series_uid=b).array.shape[0] == 5
    one_file = sorted(many.glob(f"{a[-6:]}_*.dcm"))[0]
    assert io.read_volume(one_file).array.shape[0] == 3
    assert {s["uid"]: s["n_slices"] for s in io.list_dicom_series(many)} == {a: 3, b: 5}
    with pytest.raises(InputError) as e:
        io.read_volume(many, series_uid="1.2.3.999")
    assert "no series 1.2.3.999" in one_line_error(e, many)

    single = tmp_path / "single"
    write_simple_series(single, n=1)
    with pytest.raises(InputError) as e:
        io.read_volume(single)
    assert "single 2D image" in str(e.value) and str(single) in str(e.value)

    dup = tmp_path / "dup"
    uid = write_simple_series(dup, n=3)
    write_simple_series(dup, n=1, series_uid=uid, z0=2.0)  # another slice at z = 2
    with pytest.raises(InputError) as e:
        io.read_volume(dup)
    assert "share a position" in one_line_error(e, dup)


def test_truncated_dicom_slice(tmp_path):
    folder = tmp_path / "trunc"
    write_simple_series(folder, n=4, shape=(16, 16))
    victim = sorted(folder.iterdir())[2]
    data = victim.read_bytes()
    victim.write_bytes(data[:-100])
    with pytest.raises(InputError) as e:
        io.read_volume(folder)
    one_line_error(e, victim)


# ======================================================================================
# atomic writes
# ======================================================================================
def test_failed_volume_write_leaves_nothing(tmp_path, monkeypatch):
    vol = make_volume(np.eye(3), shape=(4, 5, 6))
    target = tmp_path / "out.nrrd"
    io.write_volume(vol, target)
    before = target.read_bytes()

    def broken(image, path, *args, **kwargs):
        Path(path).write_bytes(b"NRRD0004\npartial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(sitk, "WriteImage", broken)
    with pytest.raises(OSError):
        io.write_volume(vol.with_array(vol.array + 1), target)
    assert target.read_bytes() == before  # the old file is untouched
    with pytest.raises(OSError):
        io.write_volume(vol, tmp_path / "new.nii.gz")
    with pytest.raises(OSError):
        io.write_radiograph(Radiograph(np.zeros((4, 5), np.float32)), tmp_path / "new_xr.nrrd")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.nrrd"]


def test_failed_dicom_write_leaves_nothing(tmp_path, monkeypatch):
    vol = make_volume(np.eye(3), shape=(5, 6, 7))
    real = dicom_write._write_slice
    calls = []

    def broken(path, attrs, pixels):
        calls.append(path)
        real(path, attrs, pixels)
        if len(calls) == 3:
            raise KeyboardInterrupt  # an interruption half-way

    monkeypatch.setattr(dicom_write, "_write_slice", broken)
    with pytest.raises(KeyboardInterrupt):
        io.write_dicom_series(vol, tmp_path / "sct")
    assert list(tmp_path.iterdir()) == []


def test_volume_metadata_in_header(tmp_path):
    vol = make_volume(np.eye(3), shape=(4, 5, 6))
    vol.metadata.update({"synthetic": "true", "model": "unet v1", "score": 0.5,
                         "dicom": {"PatientID": "P9"}, "multi": "a\nb"})
    path = tmp_path / "meta.nrrd"
    io.write_volume(vol, path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    assert reader.GetMetaData("synthetic") == "true" and reader.GetMetaData("model") == "unet v1"
    assert not reader.HasMetaDataKey("multi")
    back = io.read_volume(path)
    assert back.metadata["dicom"] == {"PatientID": "P9"} and back.metadata["score"] == 0.5
    assert back.metadata["multi"] == "a\nb" and back.metadata["source"] == str(path)
    with pytest.raises(InputError):
        io.write_volume(vol, tmp_path / "meta.vtk")


# ======================================================================================
# radiographs
# ======================================================================================
def test_colour_image_refused_grey_stored_as_rgb_read_as_grey(tmp_path):
    rgb = np.zeros((4, 6, 3), np.uint8)
    rgb[0, 0] = (255, 0, 0)
    rgb[1, 1] = (0, 255, 0)
    rgb[2, 2] = (0, 0, 255)
    rgb[3, 3] = (10, 200, 30)
    path = tmp_path / "xr.png"
    Image.fromarray(rgb, "RGB").save(path)
    with pytest.raises(InputError) as e:
        io.read_radiograph(path, view="ap")
    assert "colour" in one_line_error(e, path)
    rgba = np.dstack([rgb, np.full((4, 6), 128, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "xra.png")
    with pytest.raises(InputError):
        io.read_radiograph(tmp_path / "xra.png")
    grey = np.random.default_rng(3).integers(0, 255, (4, 6), dtype=np.uint8)
    Image.fromarray(np.dstack([grey] * 3), "RGB").save(path)
    xr = io.read_radiograph(path, view="ap")
    assert xr.array.shape == (4, 6) and xr.array.dtype == np.float32
    np.testing.assert_allclose(xr.array, grey, atol=1e-3)
    assert xr.pixel_spacing is None and xr.metadata["view"] == "ap"
    Image.fromarray(np.dstack([grey] * 3 + [np.full((4, 6), 128, np.uint8)]), "RGBA").save(
        tmp_path / "xra.png")
    np.testing.assert_allclose(io.read_radiograph(tmp_path / "xra.png").array, grey, atol=1e-3)
    # a smooth grey image as an RGB JPEG: compression noise is not colour
    yy, xx = np.mgrid[0:64, 0:64]
    smooth = (128 + 100 * np.sin(xx / 9.0) * np.cos(yy / 7.0)).astype(np.uint8)
    Image.fromarray(np.dstack([smooth] * 3), "RGB").save(tmp_path / "g.jpg", quality=85)
    assert np.abs(io.read_radiograph(tmp_path / "g.jpg").array - smooth).mean() < 3


@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_16bit_bitmaps(tmp_path, ext):
    arr = (np.arange(5 * 7, dtype=np.uint32).reshape(5, 7) * 1800).astype(np.uint16)
    path = tmp_path / f"xr{ext}"
    Image.fromarray(arr).save(path)
    xr = io.read_radiograph(path)
    np.testing.assert_array_equal(xr.array, arr.astype(np.float32))
    assert xr.array.max() > 255


def test_truncated_png_and_multipage_tiff(tmp_path):
    arr = np.random.default_rng(1).integers(0, 255, (64, 64), dtype=np.uint8)
    path = tmp_path / "xr.png"
    Image.fromarray(arr).save(path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(InputError) as e:
        io.read_radiograph(path)
    one_line_error(e, path)
    tif = tmp_path / "stack.tif"
    frames = [Image.fromarray(arr), Image.fromarray(arr)]
    frames[0].save(tif, save_all=True, append_images=frames[1:])
    with pytest.raises(InputError) as e:
        io.read_radiograph(tif)
    assert "2-page" in one_line_error(e, tif)


def write_dx(path: Path, stored: np.ndarray, photometric="MONOCHROME2", frames=1) -> Path:
    ds = new_dataset(path, DX_STORAGE)
    ds.Modality = "DX"
    ds.SeriesInstanceUID = generate_uid()
    ds.ViewPosition = "LL"
    ds.ImagerPixelSpacing = ds_list([0.139, 0.148])
    ds.PixelSpacing = ds_list([0.1, 0.1])  # calibrated: not the detector spacing
    ds.DistanceSourceToDetector = "1500"
    ds.Rows, ds.Columns = stored.shape[-2:]
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.ascontiguousarray(stored.astype("<u2")).tobytes()
    save_dicom(ds, path)
    return path


def test_dicom_dx(tmp_path):
    stored = np.arange(12 * 10, dtype=np.uint16).reshape(12, 10) * 30
    xr = io.read_radiograph(write_dx(tmp_path / "dx.dcm", stored))
    assert xr.pixel_spacing == pytest.approx((0.139, 0.148))
    assert xr.metadata["pixel_spacing_source"] == "ImagerPixelSpacing"
    assert xr.metadata["view"] == "lateral" and xr.metadata["photometric"] == "MONOCHROME2"
    assert xr.metadata["dicom"]["PatientName"] == "Test^Patient"
    assert xr.metadata["DistanceSourceToDetector"] == 1500.0
    np.testing.assert_array_equal(xr.array, stored.astype(np.float32))
    inv = io.read_radiograph(write_dx(tmp_path / "dx1.dcm", stored, "MONOCHROME1"), view="ap")
    np.testing.assert_array_equal(inv.array, 4095.0 - stored)  # bone stays bright
    assert inv.metadata["photometric"] == "MONOCHROME1" and inv.metadata["view"] == "ap"
    cut = write_dx(tmp_path / "cut.dcm", stored)
    cut.write_bytes(cut.read_bytes()[:-50])
    with pytest.raises(InputError) as e:
        io.read_radiograph(cut)
    one_line_error(e, cut)
    multi = write_dx(tmp_path / "cine.dcm", np.stack([stored, stored]), frames=2)
    with pytest.raises(InputError) as e:
        io.read_radiograph(multi)
    assert "multi-frame" in one_line_error(e, multi)


def test_ct_slice_as_radiograph():
    path = need(CTHEAD) / "CTHead1.dcm"
    xr = io.read_radiograph(path)
    assert xr.array.shape == (64, 64) and xr.pixel_spacing == pytest.approx((3.2, 3.2))


@pytest.mark.parametrize("ext", [".nrrd", ".mha"])
def test_radiograph_round_trip_with_geometry(tmp_path, ext):
    geo = default_biplanar(isocenter=(1.0, -2.0, 30.0), pixels=24)["lateral"]
    geo = geo.with_pixels(24, 32)
    rng = np.random.default_rng(3)
    xr = Radiograph(rng.random((24, 32), dtype=np.float32), geometry=geo,
                    metadata={"view": "lateral", "kind": "drr", "sid": 1500.0})
    path = tmp_path / f"drr{ext}"
    io.write_radiograph(xr, path)
    back = io.read_radiograph(path)
    assert back.geometry == geo
    assert back.pixel_spacing == pytest.approx(geo.pixel_spacing)
    np.testing.assert_array_equal(back.array, xr.array)
    assert back.metadata["kind"] == "drr" and back.metadata["sid"] == 1500.0
    if ext == ".nrrd":
        header = path.read_bytes().split(b"\n\n", 1)[0].decode()
        assert "xraytoct_geometry:=" in header and "xraytoct_metadata:=" in header
        assert json.loads(header.split("xraytoct_geometry:=")[1].split("\n")[0])["view"] == "lateral"
    plain = Radiograph(np.ones((5, 6), np.float32), pixel_spacing=(0.2, 0.3))
    io.write_radiograph(plain, tmp_path / f"plain{ext}")
    again = io.read_radiograph(tmp_path / f"plain{ext}")
    assert again.pixel_spacing == pytest.approx((0.2, 0.3)) and again.geometry is None
    nosp = Radiograph(np.ones((5, 6), np.float32))
    io.write_radiograph(nosp, tmp_path / f"nosp{ext}")
    assert io.read_radiograph(tmp_path / f"nosp{ext}").pixel_spacing is None


def test_radiograph_from_volume_files(tmp_path):
    vol3d = tmp_path / "vol.nrrd"
    io.write_volume(make_volume(np.eye(3), shape=(4, 5, 6)), vol3d)
    with pytest.raises(InputError) as e:
        io.read_radiograph(vol3d)
    assert "3D volume" in one_line_error(e, vol3d)
    img = sitk.GetImageFromArray(np.arange(30, dtype=np.float32).reshape(1, 5, 6))
    img.SetSpacing((0.4, 0.5, 3.0))
    one = tmp_path / "one.nii.gz"
    sitk.WriteImage(img, str(one))
    xr = io.read_radiograph(one)
    assert xr.array.shape == (5, 6) and xr.pixel_spacing == pytest.approx((0.5, 0.4))
    img2 = sitk.GetImageFromArray(np.arange(30, dtype=np.float32).reshape(5, 6))
    img2.SetSpacing((0.4, 0.5))
    sitk.WriteImage(img2, str(tmp_path / "two.mha"))
    xr2 = io.read_radiograph(tmp_path / "two.mha")
    np.testing.assert_array_equal(xr2.array, np.arange(30).reshape(5, 6))
    assert xr2.pixel_spacing == pytest.approx((0.5, 0.4))
    # NIfTI keeps pixels and spacing (not the projection geometry)
    io.write_radiograph(Radiograph(xr2.array, pixel_spacing=(0.5, 0.4)), tmp_path / "xr.nii.gz")
    xr3 = io.read_radiograph(tmp_path / "xr.nii.gz")
    np.testing.assert_array_equal(xr3.array, xr2.array)
    assert xr3.pixel_spacing == pytest.approx((0.5, 0.4))
