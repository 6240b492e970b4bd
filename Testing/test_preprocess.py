"""Tests of XRayToCTLib.preprocess (the seed-001 preprocessing protocol).

Small grids keep the file fast (registration runs on 2-3 mm grids). Tests that need the
shared real data (../shared/data next to the repository) skip when it is absent.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from XRayToCTLib import preprocess as pp
from XRayToCTLib import registration
from XRayToCTLib.errors import Cancelled, InputError
from XRayToCTLib.geometry import Volume, rotation_matrix
from XRayToCTLib.io import sitk_to_volume, volume_to_sitk

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
SEED_TEMPLATE = SHARED_DATA / "templates" / "rorden_scct" / "scct.nii"
# the seed's template; the copy that ships with the extension has the same voxels
TEMPLATE_FILE = SEED_TEMPLATE if SEED_TEMPLATE.is_file() else registration.SHIPPED_TEMPLATE
CTHEAD_DIR = SHARED_DATA / "head_ct" / "slicer_ctheadaxial"

needs_template = pytest.mark.skipif(not TEMPLATE_FILE.is_file(),
                                    reason=f"shared data absent: {TEMPLATE_FILE} (see ../shared/data)")
needs_cthead = pytest.mark.skipif(not (TEMPLATE_FILE.is_file() and CTHEAD_DIR.is_dir()),
                                  reason=f"shared data absent: {CTHEAD_DIR} or the template")


# ----------------------------------------------------------------------------------------
# a smooth synthetic head in HU, defined in physical space (so it can be sampled exactly on
# any grid, oblique or not): soft-edged ellipsoids painted in order
# ----------------------------------------------------------------------------------------
_LAYERS = [  # (centre LPS mm, semi-axes mm, HU)
    ((0, 10, -95), (42, 42, 45), 30.0),       # neck
    ((0, 0, 0), (72, 92, 98), 20.0),          # scalp and soft tissue
    ((0, 0, 2), (67, 87, 93), 900.0),         # skull
    ((0, 0, 4), (62, 82, 88), 35.0),          # brain
    ((0, -78, -40), (12, 14, 22), 25.0),      # nose (anterior = -y)
    ((-30, -66, -28), (13, 13, 12), 10.0),    # right eye
    ((30, -66, -28), (13, 13, 12), 10.0),     # left eye
    ((0, -55, -50), (16, 10, 12), -900.0),    # sinus air
    ((0, 22, -95), (9, 9, 45), 700.0),        # spine
    ((-9, -4, 18), (5, 22, 9), 5.0),          # ventricles
    ((9, -4, 18), (5, 22, 9), 5.0),
    ((0, 45, -45), (28, 18, 14), 45.0),       # cerebellum
]


def head_hu(points: np.ndarray, edge: float = 1.5) -> np.ndarray:
    p = np.asarray(points, float)
    v = np.full(len(p), -1000.0)
    for c, ax, hu in _LAYERS:
        q = (p - np.asarray(c, float)) / np.asarray(ax, float)
        rho = np.sqrt((q * q).sum(1))
        s = 1.0 / (1.0 + np.exp(np.clip((rho - 1.0) * min(ax) / edge, -50, 50)))
        v += s * (hu - v)
    return v


def grid_points(grid: pp.Grid) -> np.ndarray:
    k, j, i = np.meshgrid(*[np.arange(n) for n in grid.shape], indexing="ij")
    return grid.physical_points(np.stack([i.ravel(), j.ravel(), k.ravel()], 1).astype(float))


def phantom(grid: pp.Grid, rotation=None, translation=(0.0, 0.0, 0.0)) -> Volume:
    """The head moved by x -> R x + t, sampled on ``grid`` (value at x = head(R^T (x - t)))."""
    pts = grid_points(grid)
    if rotation is not None:
        pts = (pts - np.asarray(translation)) @ np.asarray(rotation)
    arr = head_hu(pts).reshape(grid.shape).astype(np.float32)
    return Volume(arr, grid.spacing, grid.origin, grid.direction.copy())


def rotated_direction(deg: float, axis=(1.0, 1.0, 0.3)) -> np.ndarray:
    """A proper rotation by ``deg`` about ``axis`` (Rodrigues)."""
    a = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    t = math.radians(deg)
    return np.eye(3) + math.sin(t) * k + (1 - math.cos(t)) * k @ k


def rotation_error_deg(r1: np.ndarray, r2: np.ndarray) -> float:
    c = (np.trace(r1.T @ r2) - 1.0) / 2.0
    return math.degrees(math.acos(min(1.0, max(-1.0, c))))


def head_sample_points(n: int = 400, seed: int = 1) -> np.ndarray:
    """Points inside the phantom's head (for target registration errors)."""
    rng = np.random.default_rng(seed)
    p = rng.uniform(-1, 1, (4 * n, 3))
    p = p[(p ** 2).sum(1) < 1][:n]
    return p * np.array([65.0, 85.0, 90.0])


# truth used by several tests: template points -> CT points, x -> R x + t
TRUE_ANGLES = (8.0, -5.0, 10.0)
TRUE_R = rotation_matrix(TRUE_ANGLES)
TRUE_T = np.array([12.0, -7.0, 5.0])


@pytest.fixture(scope="module")
def phantom_template() -> Volume:
    """The phantom in its canonical pose, 3 mm, as a 'template' in HU."""
    return phantom(pp.Grid.centered((0, 0, -20), 80, 3.0))


@pytest.fixture(scope="module")
def moved_ct() -> Volume:
    """The phantom moved by the true transform, on an anisotropic CT-like grid."""
    grid = pp.Grid.centered((5, -3, -15), (90, 90, 80), (2.7, 2.7, 3.0))
    return phantom(grid, TRUE_R, TRUE_T)


@pytest.fixture(scope="module")
def rorden_template() -> Volume:
    if not TEMPLATE_FILE.is_file():
        pytest.skip(f"shared data absent: {TEMPLATE_FILE}")
    return pp.load_template(TEMPLATE_FILE)


def read_cthead() -> Volume:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(CTHEAD_DIR)))
    img = sitk.Cast(reader.Execute(), sitk.sitkFloat32) - 1024.0  # stored 0..3926, no intercept
    return sitk_to_volume(img, {"source": str(CTHEAD_DIR)})


# ----------------------------------------------------------------------------------------
# windows and clipping
# ----------------------------------------------------------------------------------------
def test_window_mapping_is_exact_and_invertible():
    hu = np.array([-1000.0, 0.0, 20.0, 30.0, 40.0, 50.0, 60.0, 61.0, 3000.0])
    w = pp.apply_window(hu, "brain")
    np.testing.assert_allclose(w, [0, 0, 0, 0.25, 0.5, 0.75, 1, 1, 1], atol=1e-7)
    assert w.dtype == np.float32
    assert pp.WINDOWS["brain"] == (40.0, 40.0)
    assert pp.get_window("full") == (0.0, 2000.0)
    np.testing.assert_allclose(pp.apply_window(np.array([-1000.0, 0.0, 1000.0]), "full"), [0, 0.5, 1])
    lo, hi = pp.WINDOWS["bone"][0] - pp.WINDOWS["bone"][1] / 2, sum(pp.WINDOWS["bone"]) - pp.WINDOWS["bone"][1] / 2
    np.testing.assert_allclose(pp.apply_window(np.array([lo, hi]), "bone"), [0, 1])
    # inverse: exact inside the window
    inside = np.linspace(20, 60, 41)
    np.testing.assert_allclose(pp.window_to_hu(pp.apply_window(inside, (40, 40)), (40, 40)), inside, atol=1e-4)
    np.testing.assert_allclose(pp.window_to_hu(np.array([0.0, 0.5, 1.0]), "brain"), [20, 40, 60])
    # volumes keep geometry and record the window
    v = Volume(np.full((2, 3, 4), 50.0, np.float32), (1, 2, 3), (4, 5, 6))
    wv = pp.apply_window(v, "brain")
    assert isinstance(wv, Volume) and wv.spacing == v.spacing and wv.metadata["window"] == [40.0, 40.0]
    back = pp.window_to_hu(wv, "brain")
    np.testing.assert_allclose(back.array, 50.0, atol=1e-4)
    assert "window" not in back.metadata and back.metadata["units"] == "HU"
    with pytest.raises(ValueError):
        pp.get_window("lung-ish")
    with pytest.raises(ValueError):
        pp.get_window((40, 0))


def test_clip_hu_arrays_and_volumes():
    a = np.array([-3000, -1000, 0, 999, 1000, 4000], np.int16)
    c = pp.clip_hu(a)
    assert c.dtype == np.int16 and c.tolist() == [-1000, -1000, 0, 999, 1000, 1000]
    v = Volume(np.linspace(-2000, 2000, 24, dtype=np.float32).reshape(2, 3, 4))
    cv = pp.clip_hu(v, -100, 100)
    assert isinstance(cv, Volume) and cv.array.min() == -100 and cv.array.max() == 100
    assert cv.metadata["clip_hu"] == [-100.0, 100.0]
    with pytest.raises(ValueError):
        pp.clip_hu(a, 10, -10)


# ----------------------------------------------------------------------------------------
# grids
# ----------------------------------------------------------------------------------------
def test_template_grid_geometry(phantom_template):
    g = pp.template_grid(phantom_template)
    assert g.size == (256, 256, 256) and g.spacing == (1.0, 1.0, 1.0)
    np.testing.assert_array_equal(g.direction, np.eye(3))
    np.testing.assert_allclose(g.center, pp.head_center(phantom_template, None), atol=1e-6)
    np.testing.assert_allclose(g.corners().max(0) - g.corners().min(0), 256.0)
    small = pp.template_grid(phantom_template, 64, 4.0, center=(1, 2, 3))
    assert small.size == (64, 64, 64) and small.spacing == (4.0, 4.0, 4.0)
    np.testing.assert_allclose(small.center, (1, 2, 3), atol=1e-9)
    assert pp.Grid.from_dict(json.loads(json.dumps(small.geometry_dict()))).same_as(small)


@needs_template
def test_template_grid_on_rorden_template(rorden_template):
    g = pp.template_grid(rorden_template)
    assert g.size == (256, 256, 256) and g.spacing == (1.0, 1.0, 1.0)
    np.testing.assert_array_equal(g.direction, np.eye(3))
    c = g.center  # MNI head centre: on the midline, inside the brain case
    assert abs(c[0]) < 3 and -10 < c[1] < 40 and -20 < c[2] < 30


def test_crop_or_pad_exact_copy_and_padding():
    rng = np.random.default_rng(0)
    arr = rng.normal(0, 100, (70, 60, 50)).astype(np.float32)  # (k, j, i)
    v = Volume(arr, (1.0, 1.0, 1.0), (10.0, -20.0, 5.0))
    center = v.physical_points(np.array([[24.5, 29.5, 34.5]]))[0] + 0.3  # off the lattice
    out = pp.crop_or_pad(v, size=(40, 80, 64), spacing=1.0, center=center)
    assert out.size == (40, 80, 64) and out.spacing == (1.0, 1.0, 1.0)
    np.testing.assert_array_equal(out.direction, np.eye(3))
    assert np.all(np.abs(pp.Grid.of(out).center - center) <= 0.5 + 1e-9)  # snapped < 1/2 voxel
    # every output voxel sits on an input voxel: copied where inside, air (-1000) outside
    g = pp.Grid.of(out)
    ijk = np.rint(v.continuous_index(grid_points(g))).astype(int)
    np.testing.assert_allclose(v.continuous_index(grid_points(g)), ijk, atol=1e-6)
    inside = np.all((ijk >= 0) & (ijk < np.asarray(v.size)), axis=1)
    assert 0 < inside.sum() < len(inside)  # both cropped and padded
    got = out.array.reshape(-1)
    np.testing.assert_allclose(got[inside], arr[ijk[inside, 2], ijk[inside, 1], ijk[inside, 0]], atol=1e-3)
    assert np.all(got[~inside] == pp.AIR_HU)


def test_crop_or_pad_centres_on_the_head(phantom_template):
    out = pp.crop_or_pad(phantom_template, size=64, spacing=4.0)
    assert out.size == (64, 64, 64) and out.spacing == (4.0, 4.0, 4.0)
    np.testing.assert_array_equal(out.direction, np.eye(3))
    c = pp.head_center(phantom_template)
    np.testing.assert_allclose(pp.Grid.of(out).center, c, atol=1e-6)  # 4 mm != 3 mm: no snap
    np.testing.assert_allclose(out.metadata["head_center"], c)
    # the head is inside and centred: its centroid in the output is the grid centre
    np.testing.assert_allclose(pp.head_center(out), c, atol=1.5)


def test_resample_to_size_keeps_field_of_view_and_mean():
    # 256^3 at 1 mm -> 128^3 at 2 mm (block averaging): same corners and centre, exact mean
    g = pp.Grid.centered((3.0, -7.0, 11.0), 256, 1.0, rotated_direction(25))
    x = np.linspace(-1, 1, 256, dtype=np.float32)
    arr = (np.sin(3 * x)[:, None, None] * np.cos(2 * x)[None, :, None] * 500
           + 80 * x[None, None, :] + 300.0).astype(np.float32)
    v = Volume(arr, g.spacing, g.origin, g.direction)
    out = pp.resample_to_size(v, 128)
    assert out.size == (128, 128, 128) and out.spacing == (2.0, 2.0, 2.0)
    np.testing.assert_allclose(out.direction, v.direction)
    np.testing.assert_allclose(out.center, v.center, atol=1e-9)
    np.testing.assert_allclose(out.corners(), v.corners(), atol=1e-9)
    assert out.metadata["resampled_from"]["method"] == "block"
    np.testing.assert_allclose(out.array.mean(dtype=np.float64), arr.mean(dtype=np.float64), rtol=1e-5)
    # non-integer factor (48 -> 32, Gaussian anti-aliasing + linear): same FOV, mean kept
    small = phantom(pp.Grid.centered((0, 0, -20), 48, 5.0))
    s2 = pp.resample_to_size(small, 32)
    assert s2.size == (32, 32, 32) and s2.spacing == (7.5, 7.5, 7.5)
    np.testing.assert_allclose(s2.center, small.center, atol=1e-9)
    np.testing.assert_allclose(s2.corners(), small.corners(), atol=1e-9)
    assert s2.metadata["resampled_from"]["method"] == "gaussian"
    m0, m1 = small.array.mean(dtype=np.float64), s2.array.mean(dtype=np.float64)
    assert abs(m1 - m0) < 0.01 * abs(m0)
    with pytest.raises(ValueError):
        pp.resample_to_size(small, 32, method="block")


def test_resample_to_grid_through_physical_space():
    # the same physical object on an LPS grid and a RAS-ordered grid agrees after resampling
    lps = pp.Grid.centered((0, 0, -20), 40, 6.0)
    ras = pp.Grid.centered((0, 0, -20), 40, 6.0, np.diag([-1.0, -1.0, 1.0]))
    v = phantom(ras)
    out = pp.resample_to_grid(v, lps)
    ref = phantom(lps)
    np.testing.assert_allclose(out.array, ref.array, atol=1e-2)
    lab = Volume((v.array > 0).astype(np.uint8), v.spacing, v.origin, v.direction)
    nn = pp.resample_to_grid(lab, lps, interpolator="nearest", default=0)
    assert nn.array.dtype == np.uint8
    np.testing.assert_array_equal(nn.array, (ref.array > 0).astype(np.uint8))
    with pytest.raises(ValueError):
        pp.resample_to_grid(v, lps, interpolator="cubic")


# ----------------------------------------------------------------------------------------
# registration
# ----------------------------------------------------------------------------------------
def _check_recovery(reg: pp.RigidRegistration, rot_tol=1.5, tre_tol=2.5):
    pts = head_sample_points()
    tre = np.linalg.norm(reg.transform_points(pts) - (pts @ TRUE_R.T + TRUE_T), axis=1)
    rot = rotation_error_deg(reg.rotation, TRUE_R)
    trans = np.linalg.norm(reg.transform_points(np.zeros((1, 3)))[0] - TRUE_T)
    assert rot < rot_tol, f"rotation error {rot:.2f} deg"
    assert trans < 2.0, f"translation error {trans:.2f} mm"
    assert tre.max() < tre_tol, f"TRE mean {tre.mean():.2f} max {tre.max():.2f} mm"
    return rot, tre


def test_registration_recovers_known_rigid_transform(phantom_template, moved_ct):
    reg = pp.register_rigid(moved_ct, phantom_template, template_threshold=pp.HEAD_THRESHOLD_HU)
    _check_recovery(reg)
    assert reg.metric_value < reg.initial_metric_value
    assert reg.info["init"]["method"].startswith("head-mask")
    # deterministic: the same seed gives the same transform
    again = pp.register_rigid(moved_ct, phantom_template, template_threshold=pp.HEAD_THRESHOLD_HU)
    np.testing.assert_allclose(again.parameters, reg.parameters, atol=1e-6)
    # JSON round trip rebuilds the exact transform
    d = json.loads(json.dumps(reg.to_dict()))
    back = pp.RigidRegistration.from_dict(d)
    np.testing.assert_allclose(back.matrix(), reg.matrix(), atol=1e-12)
    pts = head_sample_points(20)
    st = back.sitk_transform()
    np.testing.assert_allclose([st.TransformPoint(tuple(p)) for p in pts], reg.transform_points(pts), atol=1e-9)
    np.testing.assert_allclose(reg.inverse_transform_points(reg.transform_points(pts)), pts, atol=1e-9)
    np.testing.assert_allclose(d["angles_deg"], np.degrees(reg.parameters[:3]))
    np.testing.assert_allclose(reg.rotation, rotation_matrix(d["angles_deg"]), atol=1e-12)
    aff = sitk.AffineTransform(3)
    aff.SetCenter(st.GetCenter())
    aff.SetMatrix(st.GetMatrix())
    aff.SetTranslation(st.GetTranslation())
    np.testing.assert_allclose(pp.RigidRegistration.from_sitk(aff).matrix(), reg.matrix(), atol=1e-9)


@needs_template
def test_registration_hu_volume_to_cormack_template(rorden_template):
    # the template converted to HU and moved by a known transform, on its own LPS grid
    hu = rorden_template.with_array(pp.cormack_to_hu(rorden_template.array))
    grid = pp.Grid.centered((4.0, 15.0, 10.0), (80, 84, 72), 3.0)
    ct = pp.resample_to_grid(hu, grid, sitk.AffineTransform(tuple(TRUE_R.T.reshape(-1)),
                                                            tuple(-TRUE_R.T @ TRUE_T)))
    reg = pp.register_rigid(ct, rorden_template)
    pts = head_sample_points()
    pts = pts[(pts[:, 2] > -60) & (pts[:, 2] < 80)] * 0.9 + (0, 18, 15)  # inside the template head
    tre = np.linalg.norm(reg.transform_points(pts) - (pts @ TRUE_R.T + TRUE_T), axis=1)
    assert rotation_error_deg(reg.rotation, TRUE_R) < 1.5
    assert tre.max() < 2.0, f"TRE mean {tre.mean():.2f} max {tre.max():.2f} mm"
    # mutual information improved over the head-centroid start and over the search's start
    centroid_only = reg.info["init"]["centroid_parameters"]
    start = pp.RigidRegistration(centroid_only, reg.center)
    assert reg.metric_value < reg.initial_metric_value
    assert pp.registration_metric(rorden_template, ct, reg) < pp.registration_metric(rorden_template, ct, start)
    # the two heads' centroids coincide after registration
    c_ct = pp.head_center(ct)  # -500 HU, and the same level in Cormack units
    c_t = pp.head_center(rorden_template, float(pp.hu_to_cormack(-500.0)))
    assert np.linalg.norm(reg.inverse_transform_points(c_ct[None])[0] - c_t) < 5.0


@needs_cthead
def test_cthead_to_rorden_template_is_sane(rorden_template):
    ct = read_cthead()
    t0 = time.perf_counter()
    reg = pp.register_rigid(ct, rorden_template)
    elapsed = time.perf_counter() - t0
    assert elapsed < 40, f"registration took {elapsed:.1f} s"
    # CTHead covers neck to orbit roofs: about the lower third of the template overlaps
    assert reg.rotation_angle_deg < 20
    assert reg.metric_value < reg.initial_metric_value
    start = pp.RigidRegistration(reg.info["init"]["centroid_parameters"], reg.center)
    assert pp.registration_metric(rorden_template, ct, reg) < pp.registration_metric(rorden_template, ct, start)
    # the template's mid-sagittal plane lands on the CT head's left-right centre
    mid = np.array([[0.0, y, z] for y in (-40.0, 0.0, 40.0) for z in (-50.0, -30.0)])
    ct_center_x = pp.head_center(ct)[0]
    assert np.all(np.abs(reg.transform_points(mid)[:, 0] - ct_center_x) < 6.0)
    # the skull base found in a visually checked registration (sphenoid sinus over the
    # template's, petrous ridges aligned): template (0, 18, -40) -> CT (98, 109, 122) mm
    np.testing.assert_allclose(reg.transform_points([[0.0, 18.0, -40.0]])[0], (98.0, 109.0, 122.0), atol=6.0)


def test_registration_progress_and_cancel(phantom_template, moved_ct):
    seen = []

    def stop_soon(fraction, message):
        seen.append((fraction, message))
        return len(seen) < 5

    with pytest.raises(Cancelled):
        pp.register_rigid(moved_ct, phantom_template, template_threshold=pp.HEAD_THRESHOLD_HU,
                          progress=stop_soon)
    assert all(0.0 <= f <= 1.0 for f, _ in seen)


# ----------------------------------------------------------------------------------------
# orientation independence and the round trip
# ----------------------------------------------------------------------------------------
def _three_orientations():
    center, size, spacing = (4.0, -6.0, -12.0), (84, 84, 84), 3.0
    lps = pp.Grid.centered(center, size, spacing)
    oblique = pp.Grid.centered(center, size, spacing, rotated_direction(25))
    # RAS-ordered axes, and voxel centres off the LPS grid's lattice (interpolation differs)
    ras = pp.Grid.centered(np.add(center, (1.3, -0.7, 0.4)), size, spacing, np.diag([-1.0, -1.0, 1.0]))
    return {name: phantom(g, TRUE_R, TRUE_T) for name, g in
            (("lps", lps), ("oblique", oblique), ("ras", ras))}


def test_oblique_and_non_lps_inputs_give_the_same_result(phantom_template):
    cts = _three_orientations()
    opts = {"size": 64, "spacing": 4.0, "target_size": 32}
    # patient space (no registration): same grid, same voxels
    plain = {k: pp.preprocess_ct(v, register=False, **opts) for k, v in cts.items()}
    ref = plain["lps"]
    inside = ref.volume.array > -500
    for k in ("oblique", "ras"):
        r = plain[k]
        assert r.space == "patient" and r.registration is None
        np.testing.assert_allclose(r.grid.origin, ref.grid.origin, atol=0.5)
        np.testing.assert_array_equal(r.grid.direction, np.eye(3))
        mae = np.abs(r.volume.array - ref.volume.array)[inside].mean()
        assert mae < 15.0, f"{k}: MAE {mae:.1f} HU"
    # template space (registered): same transform (in physical terms), same voxels
    reg = {k: pp.preprocess_ct(v, phantom_template, registration_options={
        "template_threshold": pp.HEAD_THRESHOLD_HU}, **opts) for k, v in cts.items()}
    ref = reg["lps"]
    assert ref.grid.same_as(pp.template_grid(phantom_template, 64, 4.0))
    _check_recovery(ref.registration)
    pts = head_sample_points()
    inside = ref.volume.array > -500
    for k in ("oblique", "ras"):
        r = reg[k]
        assert r.space == "template" and r.grid.same_as(ref.grid)
        d = np.linalg.norm(r.registration.transform_points(pts) - ref.registration.transform_points(pts), axis=1)
        assert d.max() < 1.0, f"{k}: transforms differ by up to {d.max():.2f} mm"
        mae = np.abs(r.volume.array - ref.volume.array)[inside].mean()
        assert mae < 15.0, f"{k}: MAE {mae:.1f} HU"
        assert r.target.size == (32, 32, 32) and r.target.spacing == (8.0, 8.0, 8.0)


def test_to_patient_space_round_trip(phantom_template):
    # an oblique CT at 2 mm; preprocessed at 1 mm onto a 192^3 template grid and put back
    grid = pp.Grid.centered((4.0, -6.0, -12.0), (100, 110, 100), 2.0, rotated_direction(25))
    ct = phantom(grid, TRUE_R, TRUE_T)
    res = pp.preprocess_ct(ct, phantom_template, size=192, spacing=1.0, target_size=96,
                           window="brain",
                           registration_options={"template_threshold": pp.HEAD_THRESHOLD_HU})
    assert res.volume.size == (192, 192, 192) and res.volume.array.dtype == np.float32
    assert res.volume.array.min() >= -1000 and res.volume.array.max() <= 1000
    assert res.target.metadata["units"] == "window [0, 1]" and res.window == (40.0, 40.0)
    assert 0.0 <= res.target.array.min() and res.target.array.max() <= 1.0
    json.dumps(res.to_dict())  # everything but voxels is JSON
    back = pp.to_patient_space(res.volume, res)
    assert pp.Grid.of(back).same_as(ct)
    head = (ct.array > -500) & (back.array > -1000 + 1e-3)  # inside the head and the 192 mm box
    assert head.sum() > 0.8 * (ct.array > -500).sum()
    mae = np.abs(np.clip(ct.array, -1000, 1000) - back.array)[head].mean()
    assert mae < 30.0, f"round trip MAE {mae:.1f} HU"
    # the 96^3 target (2 mm) through a stored transform (JSON) and an explicit CT grid
    stored = json.loads(json.dumps(res.registration.to_dict()))
    back2 = pp.to_patient_space(pp.window_to_hu(res.target, "brain"), stored, ct)
    brain = (np.abs(ct.array - 35.0) < 1.0) & head
    mae2 = np.abs(np.clip(ct.array, 20, 60) - back2.array)[brain].mean()
    assert mae2 < 5.0, f"brain-window round trip MAE {mae2:.1f} HU"
    # without registration the round trip is the identity mapping
    plain = pp.preprocess_ct(ct, register=False, size=160, spacing=1.5, target_size=None)
    assert plain.target is None
    back3 = pp.to_patient_space(plain.volume, plain)
    head3 = (ct.array > -500) & (back3.array > -1000 + 1e-3)
    assert np.abs(ct.array - back3.array)[head3].mean() < 30.0


def test_stored_transform_skips_registration(phantom_template, moved_ct):
    reg = pp.RigidRegistration(tuple(np.radians(TRUE_ANGLES)) + tuple(TRUE_T), (0.0, 0.0, 0.0))
    grid = pp.Grid.centered((0, 0, -20), 48, 5.0)
    res = pp.preprocess_ct(moved_ct, None, transform=reg.to_dict(), grid=grid, target_size=None)
    assert res.registration is not None and res.grid.same_as(grid)
    ref = phantom(grid)
    inside = ref.array > -500
    assert np.abs(res.volume.array - np.clip(ref.array, -1000, 1000))[inside].mean() < 20.0


# ----------------------------------------------------------------------------------------
# the template
# ----------------------------------------------------------------------------------------
def test_missing_template_is_a_clear_error(monkeypatch, moved_ct):
    monkeypatch.delenv(pp.TEMPLATE_ENV, raising=False)
    monkeypatch.setattr(registration, "SHIPPED_TEMPLATE", Path("/nonexistent/scct.nii.gz"))
    assert pp.default_template_path() is None
    with pytest.raises(InputError, match="no template is available") as err:
        pp.preprocess_ct(moved_ct)
    assert "--" not in str(err.value)  # the library names no CLI flag
    # no registration, no template needed
    res = pp.preprocess_ct(moved_ct, register=False, size=32, spacing=8.0, target_size=16)
    assert res.volume.size == (32, 32, 32) and res.target.size == (16, 16, 16)


def test_default_template_path_and_loading(monkeypatch, tmp_path, phantom_template):
    f = tmp_path / "tmpl.nii.gz"
    sitk.WriteImage(volume_to_sitk(phantom_template), str(f))
    monkeypatch.setenv(pp.TEMPLATE_ENV, str(f))
    assert pp.default_template_path() == f
    t = pp.load_template(pp.default_template_path())
    assert pp.Grid.of(t).same_as(phantom_template) and t.array.dtype == np.float32
    # a missing file named by the environment gives an error naming it
    monkeypatch.setenv(pp.TEMPLATE_ENV, str(tmp_path / "nope.nii"))
    with pytest.raises(InputError, match="nope.nii"):
        pp.preprocess_ct(phantom_template)
    with pytest.raises(InputError, match="not found"):
        pp.load_template(tmp_path / "missing.nii")
    flat = tmp_path / "flat.nii"
    sitk.WriteImage(sitk.Image(4, 4, 4, sitk.sitkFloat32), str(flat))
    with pytest.raises(InputError, match="empty"):
        pp.load_template(flat)
    two_d = tmp_path / "slice.nii"
    sitk.WriteImage(sitk.Image(4, 4, sitk.sitkFloat32), str(two_d))
    with pytest.raises(InputError, match="3D"):
        pp.load_template(two_d)
    monkeypatch.delenv(pp.TEMPLATE_ENV)
    # without the variable: the Rorden template that ships in Resources/, the same voxels as
    # the seed's template
    assert pp.default_template_path() == registration.SHIPPED_TEMPLATE
    shipped = pp.load_template(pp.default_template_path())
    assert shipped.size == (91, 109, 91) and np.allclose(shipped.spacing, 2.0)
    assert (registration.SHIPPED_TEMPLATE.parent / "LICENSE").is_file()
    if SEED_TEMPLATE.is_file():
        original = pp.load_template(SEED_TEMPLATE)
        assert np.array_equal(shipped.array, original.array) and shipped.same_as(original)


def test_cormack_units_round_trip():
    hu = np.array([-1000.0, -500.0, -100.0, 0.0, 40.0, 100.0, 1000.0])
    c = pp.hu_to_cormack(hu)
    np.testing.assert_allclose(c, [0, 500, 900, 1900, 2300, 2900, 3800])
    np.testing.assert_allclose(pp.cormack_to_hu(c), hu, atol=1e-3)
