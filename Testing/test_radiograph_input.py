"""Radiograph input, hardened (issue 12 item 5): DICOM DX/CR of any size and pixel size,
with collimation borders, burned-in markers, MONOCHROME1, 12-16 bits and its own
magnification, brought to a model's detector in mm. The test bed is the simulated DX/CR
files of ``XRayToCTLib.simulate``, compared with the DRR at the model's geometry."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from monai.transforms import Resize
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from XRayToCTLib import inference
from XRayToCTLib import simulate as sm
from XRayToCTLib.drr import DRR, biplanar_geometry, normalize_views
from XRayToCTLib.errors import InputError
from XRayToCTLib.geometry import Radiograph
from XRayToCTLib.io import read_radiograph
from XRayToCTLib.io.dicom_write import write_radiograph_dicom
from XRayToCTLib.io.radiographs import burned_in_markers, clean_radiograph, collimated_field
from XRayToCTLib.phantom import head_phantom

PIXELS = 64


@pytest.fixture(scope="module")
def ct():
    return head_phantom(size=64, spacing=4.0, seed=0)


@pytest.fixture(scope="module")
def model(ct):
    """A model's detector: the default 400 mm detector, 64 pixels, SID / SAD 1.5."""
    return biplanar_geometry(ct, pixels=PIXELS)


@pytest.fixture(scope="module")
def drrs(ct, model):
    return DRR(model).render(ct, device="cpu")


def corr(a: np.ndarray, b: np.ndarray) -> float:
    """Correlation of two images after the models' normalisation."""
    x, y = (normalize_views(torch.as_tensor(np.asarray(i, np.float32))[None, None])[0, 0]
            .numpy().ravel() for i in (a, b))
    return float(np.corrcoef(x, y)[0, 1])


def simulated_dx(ct, tmp_path: Path, name: str, **geometry) -> dict[str, Path]:
    g = biplanar_geometry(ct, **geometry)
    settings = sm.SimulationSettings(seed=0)
    sm.write_simulation(sm.simulate(ct, g, settings), tmp_path / name, "head", settings)
    return {v: tmp_path / name / f"head_{v}_simulated.dcm" for v in g}


# -- onto the model's detector in mm -------------------------------------------------------
def test_a_larger_finer_detector_is_brought_to_the_model_detector_in_mm(ct, model, drrs, tmp_path):
    files = simulated_dx(ct, tmp_path, "big", pixels=300, detector_mm=480.0)
    for v, path in files.items():
        dx = read_radiograph(path)
        assert dx.array.shape == (300, 300) and dx.pixel_spacing == pytest.approx((1.6, 1.6))
        assert dx.metadata["pixel_spacing_source"] == "ImagerPixelSpacing"
        prepared = inference.prepare_view(dx, model[v])
        naive = np.asarray(Resize((PIXELS, PIXELS), mode="area")(dx.array[None]))[0]
        assert prepared.shape == (PIXELS, PIXELS)
        assert corr(prepared, drrs[v].array) > 0.95  # the same anatomy at the same size
        assert corr(naive, drrs[v].array) < 0.7  # resizing pixels is not enough


def test_the_image_magnification_is_corrected_and_the_border_and_marker_removed(
        ct, model, drrs, tmp_path):
    """A DX made at SID / SAD 1.2 (the model's: 1.5), collimated, with a side marker."""
    files = simulated_dx(ct, tmp_path, "mag", pixels=200, sad=1000.0, sid=1200.0,
                         detector_mm=300.0)
    for v, path in files.items():
        dx = read_radiograph(path)
        assert dx.metadata["magnification"] == pytest.approx(1.2)
        done: dict = {}
        prepared = inference.prepare_view(dx, model[v], record=done)
        assert done["magnification"]["spacing_scale"] == pytest.approx(1.25)
        assert done["pixel_spacing_used"] == pytest.approx([1.875, 1.875])
        assert done["cleaning"]["collimated"] and done["cleaning"]["marker_pixels"] > 0
        good = corr(prepared, drrs[v].array)
        assert good > 0.93
        no_mag = inference.prepare_view(Radiograph(dx.array, dx.pixel_spacing), model[v])
        no_clean = inference.prepare_view(dx, model[v], clean=False)
        assert corr(no_mag, drrs[v].array) < good - 0.1
        assert corr(no_clean, drrs[v].array) < good - 0.2


def test_pixel_spacing_calibrated_at_the_patient_is_taken_to_the_detector(ct, tmp_path):
    path = simulated_dx(ct, tmp_path, "ps", pixels=PIXELS)["ap"]
    ds = pydicom.dcmread(path)
    detector = [float(x) for x in ds.ImagerPixelSpacing]
    assert [float(x) for x in ds.PixelSpacing] == pytest.approx([d / 1.5 for d in detector])
    del ds.ImagerPixelSpacing
    ds.save_as(tmp_path / "ps_only.dcm")
    rad = read_radiograph(tmp_path / "ps_only.dcm")
    assert rad.pixel_spacing == pytest.approx(tuple(detector))
    assert rad.metadata["pixel_spacing_source"] == "PixelSpacing x magnification"
    del ds.PixelSpacingCalibrationType  # an older CR: PixelSpacing is the detector's
    ds.save_as(tmp_path / "ps_plain.dcm")
    rad = read_radiograph(tmp_path / "ps_plain.dcm")
    assert rad.pixel_spacing == pytest.approx(tuple(d / 1.5 for d in detector))
    assert rad.metadata["pixel_spacing_source"] == "PixelSpacing"


# -- MONOCHROME1, bits ---------------------------------------------------------------------
@pytest.mark.parametrize("bits", [12, 14, 16])
def test_monochrome1_and_12_to_16_bits_read_bone_bright(ct, model, tmp_path, bits):
    img = sm.simulate(ct, model, sm.SimulationSettings(seed=1))["ap"]
    m2 = read_radiograph(write_radiograph_dicom(img, tmp_path / "m2.dcm", bits_stored=bits))
    m1 = read_radiograph(write_radiograph_dicom(img, tmp_path / "m1.dcm", bits_stored=bits,
                                                photometric="MONOCHROME1"))
    assert m1.metadata["photometric"] == "MONOCHROME1" and m1.metadata["inverted"]
    assert m1.metadata["bits_stored"] == bits
    step = 1.0 / (2 ** bits - 1)
    np.testing.assert_allclose(m1.array, img.array, atol=step)
    np.testing.assert_allclose(m2.array, img.array, atol=step)
    if bits < 16:  # garbage (an overlay) in the unused high bits is masked off
        ds = pydicom.dcmread(tmp_path / "m1.dcm")
        raw = np.frombuffer(ds.PixelData, dtype="<u2").copy() | np.uint16(1 << 15)
        ds.PixelData = raw.tobytes()
        ds.save_as(tmp_path / "m1_overlay.dcm")
        np.testing.assert_allclose(read_radiograph(tmp_path / "m1_overlay.dcm").array,
                                   img.array, atol=step)


# -- collimation and markers -------------------------------------------------------------
def test_clean_radiograph_finds_the_shutter_and_the_marker(ct, model):
    dx = sm.simulate(ct, model, sm.SimulationSettings(seed=0))["ap"].array
    plain = sm.simulate(ct, model, sm.SimulationSettings(seed=0, marker=False))["ap"].array
    field = sm.collimation_mask(model["ap"], 20.0)
    r0, r1, c0, c1 = collimated_field(dx)
    rows, cols = np.nonzero(field)
    assert r0 >= rows.min() and r1 <= rows.max() + 1 and c0 >= cols.min() and c1 <= cols.max() + 1
    markers = burned_in_markers(dx, (r0, r1, c0, c1))
    burned = (dx != plain)
    assert markers.any() and np.all(markers[burned])  # every burned pixel found
    assert markers.sum() < 4 * burned.sum()
    cleaned, info = clean_radiograph(dx)
    assert info["collimated"] and info["marker_pixels"] == int(markers.sum())
    assert np.all(cleaned[~field] == pytest.approx(info["air_level"]))
    assert cleaned[burned].max() < 0.5  # the letter lies in air: it is dark now
    # dense bone clipped by the look-up table is not a marker
    assert not (markers & (dx == 1.0) & field & ~burned).any()


def test_a_drr_is_left_unchanged(drrs):
    for rad in drrs.values():
        cleaned, info = clean_radiograph(rad.array)
        np.testing.assert_array_equal(cleaned, rad.array)
        assert not info["collimated"] and info["marker_pixels"] == 0


def test_a_black_shutter_is_kept_and_a_white_one_becomes_air():
    rng = np.random.default_rng(0)
    img = rng.random((40, 50)).astype(np.float32) + 1.0
    white = np.pad(img, 5, constant_values=3.0)
    black = np.pad(img, 5, constant_values=0.0)
    out_w, info_w = clean_radiograph(white)
    out_b, info_b = clean_radiograph(black)
    assert collimated_field(white) == (5, 45, 5, 55)
    assert info_w["collimated"] and np.all(out_w[:5] == pytest.approx(np.percentile(img, 1)))
    assert not info_b["collimated"]
    np.testing.assert_array_equal(out_b, black)


# -- RGB DICOM -----------------------------------------------------------------------------
def _rgb_dicom(path: Path, rgb: np.ndarray) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"  # secondary capture
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "OT"
    ds.Rows, ds.Columns = rgb.shape[:2]
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.ascontiguousarray(rgb, dtype=np.uint8).tobytes()
    ds.save_as(str(path), enforce_file_format=True)
    return path


def test_rgb_dicom_grey_is_read_and_colour_refused(tmp_path):
    grey = (np.arange(30 * 40).reshape(30, 40) % 251).astype(np.uint8)
    rad = read_radiograph(_rgb_dicom(tmp_path / "grey.dcm", np.dstack([grey] * 3)))
    np.testing.assert_allclose(rad.array, grey, atol=0.01)
    colour = np.dstack([grey, grey[::-1], np.zeros_like(grey)])
    with pytest.raises(InputError, match="colour"):
        read_radiograph(_rgb_dicom(tmp_path / "colour.dcm", colour))
