"""Realistic radiograph simulation (``XRayToCTLib.simulate``, ``xraytoct simulate``): the
physics limits, beam hardening, seeded noise, vendor processing and the files."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest

from XRayToCTLib import simulate as sm
from XRayToCTLib.cli import main
from XRayToCTLib.constants import MU_WATER_PER_MM
from XRayToCTLib.drr import DRR, biplanar_geometry
from XRayToCTLib.geometry import Volume
from XRayToCTLib.io import read_radiograph, write_volume
from XRayToCTLib.phantom import head_phantom

PLAIN = dict(scatter=0.0, focal_spot_mm=0.0, detector_blur_mm=0.0, dose_ugy=0.0,
             electronic_noise=0.0, processing="none", collimation_mm=0.0, marker=False)
"""Settings that leave only the attenuation: no scatter, blur, noise, processing, shutter."""


@pytest.fixture(scope="module")
def ct() -> Volume:
    return head_phantom(size=64, spacing=4.0, seed=0)


@pytest.fixture(scope="module")
def geoms(ct):
    return biplanar_geometry(ct, pixels=64)


def _object(img: np.ndarray, lo: float = 0.5) -> np.ndarray:
    return img > lo


# -- tabulated physics -------------------------------------------------------------------
def test_mass_attenuation_reproduces_the_table_and_interpolates_log_log():
    for material, values in sm.MASS_ATTENUATION.items():
        np.testing.assert_allclose(sm.mass_attenuation(material, sm.TABLE_ENERGIES_KEV), values,
                                   rtol=1e-12)
    # between 50 and 60 keV: a power law through the two tabulated points
    e = 55.0
    w50, w60 = sm.MASS_ATTENUATION["water"][5:7]
    expected = np.exp(np.log(w50) + np.log(e / 50) / np.log(60 / 50) * np.log(w60 / w50))
    assert sm.mass_attenuation("water", e) == pytest.approx(expected, rel=1e-12)
    assert w60 < sm.mass_attenuation("water", e) < w50
    with pytest.raises(ValueError):
        sm.mass_attenuation("water", 5.0)


def test_kramers_spectrum_filtration_hardens_and_dose_conversion_is_physical():
    soft, hard = sm.Spectrum.kramers(70, 0.5), sm.Spectrum.kramers(70, 5.0)
    assert soft.photons.sum() == pytest.approx(1.0) and soft.energies_kev.min() > 20
    assert soft.energies_kev.max() < 70
    assert hard.mean_energy_kev > soft.mean_energy_kev
    assert hard.half_value_layer_mm_al() > soft.half_value_layer_mm_al()
    # a 70 kVp, 2.5 mm Al beam: HVL of a few mm Al, ~1e4 photons / mm^2 / uGy (IEC 62220-1
    # gives 30174 for the much harder RQA5 beam)
    default = sm.Spectrum.kramers(70, 2.5)
    assert 1.5 < default.half_value_layer_mm_al() < 4.0
    assert 8e3 < default.photons_per_mm2_per_ugy() < 3.5e4


# -- the monochromatic limit -------------------------------------------------------------
def test_monochromatic_soft_tissue_is_the_drr_line_integral(ct, geoms):
    """One energy, no scatter/noise/processing: -ln(I/I0) is mu * path from the DRR (for
    soft tissue the DRR's HU line and the water model differ only by mu/rho(E) / 0.22)."""
    soft = Volume(np.minimum(ct.array, sm.SOFT_TISSUE_MAX_HU), ct.spacing, ct.origin, ct.direction)
    energy = 60.0
    sim = sm.simulate(soft, geoms, sm.SimulationSettings(energy_kev=energy, **PLAIN))
    drr = DRR(geoms).render(soft, device="cpu")
    ratio = sm.mass_attenuation("water", energy) / (MU_WATER_PER_MM * 10.0)
    for v in geoms:
        expected = drr[v].array.astype(np.float64) * 10.0 * ratio  # DRR units are /10
        np.testing.assert_allclose(sim[v].array, expected, rtol=1e-4, atol=1e-5)
        assert sim[v].geometry == geoms[v]
        assert sim[v].array.max() > 2.0  # a head, not an empty image


def test_monochromatic_with_bone_is_beer_lambert_through_the_drr(ct, geoms):
    """With bone: -ln(I/I0) equals 10 x the DRR of the HU volume whose Plastimatch
    attenuation is the model's mu(E) voxel by voxel."""
    energy = 50.0  # mu/rho_water(50) > 0.22: no soft voxel falls under the DRR's air threshold
    sim = sm.simulate(ct, geoms, sm.SimulationSettings(energy_kev=energy, **PLAIN))
    water, bone = sm.material_densities(ct.array.astype(np.float64))
    mu_per_mm = (sm.mass_attenuation("water", energy) * water
                 + sm.mass_attenuation("bone", energy) * bone) / 10.0
    hu_eq = np.where(mu_per_mm > 0, (mu_per_mm / MU_WATER_PER_MM - 1.0) * 1000.0, -1000.0)
    assert np.all(hu_eq[mu_per_mm > 0] > -800.0)
    drr = DRR(geoms).render(Volume(hu_eq.astype(np.float32), ct.spacing, ct.origin,
                                   ct.direction), device="cpu")
    for v in geoms:
        np.testing.assert_allclose(sim[v].array, drr[v].array * 10.0, rtol=2e-4, atol=1e-4)
    # bone counts: the bone-rich pixels attenuate more than water of the same mass would
    thick = sm.mass_thicknesses(ct, DRR(geoms))
    assert thick[1].max() > 1.0 and thick[0].max() > 10.0


# -- beam hardening ----------------------------------------------------------------------
def test_effective_attenuation_falls_with_thickness_and_kvp():
    t_cm = np.array([1.0, 5.0, 10.0, 20.0])
    spec = sm.Spectrum.kramers(70, 2.5)
    p = sm.polychromatic_transmission(spec, t_cm, np.zeros_like(t_cm))
    mu_eff = -np.log(p) / t_cm
    assert np.all(np.diff(mu_eff) < 0)  # the beam hardens with depth
    mono = sm.polychromatic_transmission(sm.Spectrum.monochromatic(50), t_cm, 0 * t_cm)
    np.testing.assert_allclose(-np.log(mono) / t_cm, sm.mass_attenuation("water", 50.0),
                               rtol=1e-12)  # no hardening in a monochromatic beam
    bone = sm.polychromatic_transmission(spec, 0 * t_cm, t_cm / 5)
    assert np.all(np.diff(-np.log(bone) / t_cm) < 0)
    hi = sm.polychromatic_transmission(sm.Spectrum.kramers(120, 2.5), t_cm, t_cm / 10)
    lo = sm.polychromatic_transmission(sm.Spectrum.kramers(60, 2.5), t_cm, t_cm / 10)
    assert np.all(hi > lo)


def test_higher_kvp_transmits_more_through_the_head(ct, geoms):
    plain = {k: v for k, v in PLAIN.items()}
    raw = {kvp: sm.simulate(ct, geoms, sm.SimulationSettings(kvp=kvp, **plain))
           for kvp in (60.0, 100.0)}
    for v in geoms:
        head = raw[60.0][v].array > 0.1
        assert float(raw[100.0][v].array[head].mean()) < 0.8 * float(raw[60.0][v].array[head].mean())


# -- noise ---------------------------------------------------------------------------------
def test_noise_is_seeded_and_its_variance_scales_with_dose(ct, geoms):
    base = dict(PLAIN, electronic_noise=0.0)
    clean = sm.simulate(ct, geoms, sm.SimulationSettings(**base))
    s1 = sm.SimulationSettings(**dict(base, dose_ugy=0.01, seed=3))
    a, b = sm.simulate(ct, geoms, s1), sm.simulate(ct, geoms, s1)
    c = sm.simulate(ct, geoms, sm.SimulationSettings(**dict(base, dose_ugy=0.01, seed=4)))
    for v in geoms:
        np.testing.assert_array_equal(a[v].array, b[v].array)
        assert not np.array_equal(a[v].array, c[v].array)
    hi = sm.simulate(ct, geoms, sm.SimulationSettings(**dict(base, dose_ugy=0.04, seed=3)))
    # -ln(I) has variance ~ 1 / (q0 P): four times the dose, a quarter of the variance;
    # pixels with enough quanta (P > 0.05) so that the log stays linear
    for v in geoms:
        ok = (clean[v].array > 0.1) & (clean[v].array < 3.0)
        var_lo = float(np.var((a[v].array - clean[v].array)[ok]))
        var_hi = float(np.var((hi[v].array - clean[v].array)[ok]))
        assert var_lo / var_hi == pytest.approx(4.0, rel=0.2)
    electronic = sm.simulate(ct, geoms, sm.SimulationSettings(**dict(base, dose_ugy=0.04, seed=3,
                                                                     electronic_noise=50.0)))
    v = "ap"
    ok = (clean[v].array > 0.1) & (clean[v].array < 3.0)
    assert np.var((electronic[v].array - clean[v].array)[ok]) > \
        np.var((hi[v].array - clean[v].array)[ok])


def test_scatter_lowers_the_contrast_and_blur_smooths(ct, geoms):
    clean = sm.simulate(ct, geoms, sm.SimulationSettings(**PLAIN))
    scat = sm.simulate(ct, geoms, sm.SimulationSettings(**dict(PLAIN, scatter=0.5)))
    blur = sm.simulate(ct, geoms, sm.SimulationSettings(**dict(PLAIN, detector_blur_mm=10.0)))
    for v in geoms:
        head = clean[v].array > 0.5
        # the scatter adds signal: less attenuation seen, the most under the most attenuation
        assert np.all(scat[v].array[head] < clean[v].array[head] + 1e-9)
        ratio = np.exp(-scat[v].array[head]) / np.exp(-clean[v].array[head]) - 1.0
        assert float(np.exp(-clean[v].array[head]).mean()) > 0
        assert 0.2 < float(np.mean(ratio * np.exp(-clean[v].array[head]))
                           / np.exp(-clean[v].array[head]).mean()) < 1.0
        assert np.abs(np.diff(blur[v].array, axis=1)).mean() < \
            np.abs(np.diff(clean[v].array, axis=1)).mean()


# -- processing --------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["dx", "cr"])
def test_processing_changes_the_image_but_keeps_the_geometry(ct, geoms, mode):
    raw = sm.simulate(ct, geoms, sm.SimulationSettings(processing="none", seed=1))
    out = sm.simulate(ct, geoms, sm.SimulationSettings(processing=mode, seed=1))
    for v, g in geoms.items():
        img = out[v].array
        assert out[v].geometry == g and out[v].pixel_spacing == g.pixel_spacing
        assert img.shape == raw[v].array.shape and img.min() >= 0.0 and img.max() <= 1.0
        field = sm.collimation_mask(g, 20.0)
        assert not field.all() and np.all(img[~field] == 1.0)  # the shutter
        assert np.isclose(img[field], 1.0).sum() > 4  # the saturated side marker
        inside = field & (raw[v].array > 0.5)
        corr = np.corrcoef(img[inside], raw[v].array[inside])[0, 1]
        assert 0.5 < corr < 0.999  # the same anatomy, bone bright, not the same values
    no_marker = sm.simulate(ct, geoms, sm.SimulationSettings(processing=mode, seed=1, marker=False))
    assert (np.isclose(no_marker["ap"].array, 1.0) & sm.collimation_mask(geoms["ap"], 20.0)).sum() \
        < (np.isclose(out["ap"].array, 1.0) & sm.collimation_mask(geoms["ap"], 20.0)).sum()


def test_bad_settings_are_refused():
    for bad in (dict(processing="film"), dict(kvp=10.0), dict(scatter=-1.0), dict(dqe=0.0),
                dict(energy_kev=500.0), dict(dose_ugy=float("nan"))):
        with pytest.raises(ValueError):
            sm.SimulationSettings(**bad)


# -- files ---------------------------------------------------------------------------------
def test_files_keep_the_geometry_and_dicom_dx_is_read_back(ct, geoms, tmp_path):
    settings = sm.SimulationSettings(seed=2)
    images = sm.simulate(ct, geoms, settings)
    written = sm.write_simulation(images, tmp_path, "head", settings)
    names = sorted(p.name for p in written)
    assert names == sorted(["head_ap_simulated.nrrd", "head_ap_simulated.dcm",
                            "head_lateral_simulated.nrrd", "head_lateral_simulated.dcm",
                            "head_simulated.json"])
    for v, position, orientation in (("ap", "AP", ["L", "F"]), ("lateral", "LL", ["A", "F"])):
        nrrd = read_radiograph(tmp_path / f"head_{v}_simulated.nrrd")
        assert nrrd.geometry == geoms[v]
        np.testing.assert_array_equal(nrrd.array, images[v].array)
        assert nrrd.metadata["description"] == sm.SIMULATED_LABEL
        ds = pydicom.dcmread(tmp_path / f"head_{v}_simulated.dcm")
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.1.1"  # DX, for presentation
        assert ds.Modality == "DX" and ds.PresentationIntentType == "FOR PRESENTATION"
        assert ds.BitsAllocated == 16 and ds.PhotometricInterpretation == "MONOCHROME2"
        assert ds.ViewPosition == position and list(ds.PatientOrientation) == orientation
        assert [float(x) for x in ds.ImagerPixelSpacing] == pytest.approx(geoms[v].pixel_spacing)
        assert float(ds.DistanceSourceToDetector) == geoms[v].sid
        assert "SIMULATED" in ds.ImageComments and "SIMULATED" in ds.SeriesDescription
        assert "SIMULATED" in list(ds.ImageType)
        dx = read_radiograph(tmp_path / f"head_{v}_simulated.dcm")
        assert dx.pixel_spacing == pytest.approx(geoms[v].pixel_spacing)
        assert dx.metadata["view"] == v
        np.testing.assert_allclose(dx.array, images[v].array, atol=1.0 / 65535)
    side = json.loads((tmp_path / "head_simulated.json").read_text())
    assert side["synthetic"] is True and side["settings"]["kvp"] == 70.0
    assert side["settings"]["spectrum"]["half_value_layer_mm_al"] > 0
    assert set(side["views"]) == {"ap", "lateral"}


def test_cr_and_raw_dicom(ct, geoms, tmp_path):
    for mode, sop, bits in (("cr", "1.2.840.10008.5.1.4.1.1.1", 12),
                            ("none", "1.2.840.10008.5.1.4.1.1.1.1.1", 16)):
        settings = sm.SimulationSettings(processing=mode, seed=0)
        images = sm.simulate(ct, geoms, settings)
        sm.write_simulation(images, tmp_path / mode, "h", settings)
        ds = pydicom.dcmread(tmp_path / mode / "h_ap_simulated.dcm")
        assert ds.SOPClassUID == sop and ds.BitsStored == bits
        back = read_radiograph(tmp_path / mode / "h_ap_simulated.dcm")
        span = float(np.ptp(images["ap"].array))
        np.testing.assert_allclose(back.array, images["ap"].array, atol=span / (2 ** bits - 1))


# -- the command ---------------------------------------------------------------------------
def run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_simulate_writes_the_files(tmp_path, capsys):
    path = tmp_path / "head.nii.gz"
    write_volume(head_phantom(size=48, spacing=5.0, seed=1), path)
    code, out, err = run(["simulate", path, "--out-dir", tmp_path / "sim", "--kvp", 80,
                          "--processing", "cr", "--seed", 5, "--pixels", 64], capsys)
    assert code == 0, err
    assert "SIMULATED" in out
    for v in ("ap", "lateral"):
        img = read_radiograph(tmp_path / "sim" / f"head_{v}_simulated.nrrd")
        assert img.array.shape == (64, 64) and img.geometry.view == v
        assert (tmp_path / "sim" / f"head_{v}_simulated.dcm").is_file()
    side = json.loads((tmp_path / "sim" / "head_simulated.json").read_text())
    assert side["settings"]["kvp"] == 80.0 and side["settings"]["processing"] == "cr"
    assert side["settings"]["seed"] == 5
    # the same seed gives the same images
    code, _, _ = run(["simulate", path, "--out-dir", tmp_path / "again", "--kvp", 80,
                      "--processing", "cr", "--seed", 5, "--pixels", 64], capsys)
    assert code == 0
    np.testing.assert_array_equal(
        read_radiograph(tmp_path / "again" / "head_ap_simulated.nrrd").array,
        read_radiograph(tmp_path / "sim" / "head_ap_simulated.nrrd").array)


@pytest.mark.parametrize("extra, expect", [
    (["--kvp", "300"], "kVp"),
    (["--scatter", "-1"], "scatter"),
    (["--collimation", "500"], "collimation"),
    (["--processing", "film"], "invalid choice"),
])
def test_cli_simulate_bad_input_is_one_line_exit_2(tmp_path, capsys, extra, expect):
    path = tmp_path / "head.nii.gz"
    write_volume(head_phantom(size=32, spacing=8.0, seed=1), path)
    code, _, err = run(["simulate", path, "--out-dir", tmp_path / "o", *extra], capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error:") and expect in err


def test_cli_simulate_missing_ct(tmp_path, capsys):
    code, _, err = run(["simulate", tmp_path / "none.nii.gz", "--out-dir", tmp_path / "o"],
                       capsys)
    assert code == 2 and err.count("\n") == 1 and "no such file" in err
    assert not (tmp_path / "o").exists()
