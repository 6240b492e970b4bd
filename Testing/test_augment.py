"""Tests of XRayToCTLib.augment: deterministic, geometry-keeping augmentation of HU CTs, and
the removal of the patient support."""
from __future__ import annotations

import numpy as np
import pytest

from XRayToCTLib import augment
from XRayToCTLib.augment import (augment_ct, augment_scan, augmentation_transform, body_mask,
                                  remove_support, support_in_drrs)
from XRayToCTLib.geometry import Grid, Volume, rotation_matrix
from XRayToCTLib.preprocess import resample_to_grid

# an oblique, anisotropic grid (CT-like: thick slices), 3 markers at known LPS positions
DIRECTION = rotation_matrix((0.0, 0.0, 20.0))
SPACING = (2.0, 2.0, 4.0)
SIZE = (80, 80, 40)
MARKERS = np.array([[30.0, -20.0, 10.0], [-35.0, 10.0, -20.0], [5.0, 40.0, 30.0]])
SPATIAL_ONLY = dict(blur=False, crop=False, intensity=False, noise=False)


@pytest.fixture(scope="module")
def head() -> Volume:
    """Air, a water ellipsoid 'head' centred at (0, 5, 0) mm, and three 6 mm bone spheres."""
    n = np.asarray(SIZE)
    sp = np.asarray(SPACING)
    origin = -DIRECTION @ (sp * (n - 1) / 2.0)
    vol = Volume(np.zeros(SIZE[::-1], np.float32), SPACING, origin, DIRECTION)
    kji = np.stack(np.meshgrid(*[np.arange(s) for s in SIZE[::-1]], indexing="ij"), -1)
    pts = vol.physical_points(kji[..., ::-1].reshape(-1, 3).astype(float)).reshape(*kji.shape)
    r = np.sqrt(((pts - (0.0, 5.0, 0.0)) / (60.0, 70.0, 55.0)) ** 2).sum(-1) ** 0.5
    arr = np.where(r < 1.0, 30.0, -1000.0).astype(np.float32)
    for m in MARKERS:
        arr[np.linalg.norm(pts - m, axis=-1) < 6.0] = 1500.0
    vol.array = arr
    vol.metadata = {"source": "synthetic"}
    return vol


def _marker_centroid(vol: Volume, near: np.ndarray, radius: float = 15.0) -> np.ndarray:
    kji = np.argwhere(vol.array > 700.0)
    pts = vol.physical_points(kji[:, ::-1].astype(float))
    w = vol.array[tuple(kji.T)]
    sel = np.linalg.norm(pts - near, axis=1) < radius
    assert sel.sum() > 3, f"no marker found near {near}"
    return (pts[sel] * w[sel, None]).sum(0) / w[sel].sum()


def test_deterministic_by_seed_and_geometry_kept(head):
    a = augment_ct(head, 7)
    b = augment_ct(head, 7)
    c = augment_ct(head, 8)
    np.testing.assert_array_equal(a.array, b.array)
    assert not np.allclose(a.array, c.array)
    assert a.array.dtype == np.float32 and a.array.shape == head.array.shape
    assert a.spacing == head.spacing and a.origin == head.origin
    np.testing.assert_array_equal(a.direction, head.direction)
    assert a.metadata["source"] == "synthetic"
    rec = a.metadata["augmentation"]
    assert rec["seed"] == 7 and set(rec) >= {"pose", "elastic", "scale", "resolution", "crop",
                                             "intensity", "noise"}
    assert a.metadata["augmentation"] == b.metadata["augmentation"]


def test_rigid_pose_is_physical_on_an_anisotropic_oblique_grid(head):
    out = augment_ct(head, 3, elastic=False, scale=False, strength=1.5, **SPATIAL_ONLY)
    pose = out.metadata["augmentation"]["pose"]
    r = rotation_matrix(pose["rotation_deg"])
    c, t = np.asarray(pose["center_mm"]), np.asarray(pose["translation_mm"])
    assert np.abs(pose["rotation_deg"]).max() > 2.0 and np.linalg.norm(t) > 3.0
    for m in MARKERS:
        expected = r @ (m - c) + c + t
        found = _marker_centroid(out, expected)
        # markers are 6 mm balls sampled with 4 mm slices: centroids good to ~1 mm
        assert np.linalg.norm(found - expected) < 1.2, (m, found, expected)
        # and they moved (the test is not passing on an identity)
        assert np.linalg.norm(found - m) > 2.0


def test_parts_draw_from_independent_streams(head):
    full = augment_ct(head, 11).metadata["augmentation"]
    rigid_only = augment_ct(head, 11, elastic=False, scale=False,
                            **SPATIAL_ONLY).metadata["augmentation"]
    assert full["pose"] == rigid_only["pose"]
    assert not {"elastic", "scale", "intensity", "crop", "resolution"} & set(rigid_only)
    _, rec = augmentation_transform(head, 11, rigid=False)
    assert rec["elastic"] == full["elastic"] and rec["scale"] == full["scale"]
    _, rec = augment_scan(head, 11, blur=False)
    assert rec["crop"] == full["crop"] and "resolution" not in rec


def test_elastic_is_smooth_and_bounded(head):
    tx, rec = augmentation_transform(head, 5, rigid=False, scale=False, strength=1.0)
    el = rec["elastic"]
    assert 0.5 < el["rms_displacement_mm"] < el["max_displacement_mm"] < 5 * augment.ELASTIC_SD_MM
    # smooth: displacement differences between points 2 mm apart are tiny
    p = np.array([[10.0, 0.0, 5.0], [12.0, 0.0, 5.0], [10.0, 2.0, 5.0]])
    d = np.array([np.asarray(tx.TransformPoint(tuple(q))) - q for q in p])
    assert np.abs(d[1:] - d[0]).max() < 0.5
    out = augment_ct(head, 5, rigid=False, scale=False, **SPATIAL_ONLY)
    changed = np.mean(np.abs(out.array - head.array) > 100)
    assert 0.001 < changed < 0.2  # edges moved, the bulk did not
    # the head keeps its volume within a few per cent
    assert abs((out.array > -500).sum() / (head.array > -500).sum() - 1.0) < 0.05


def test_intensity_and_noise_follow_their_record(head):
    out = augment_ct(head, 9, elastic=False, rigid=False, scale=False, blur=False, crop=False,
                     noise=False, strength=2.0)
    rec = out.metadata["augmentation"]["intensity"]
    assert abs(rec["scale"] - 1.0) <= 2 * augment.INTENSITY_SCALE
    assert abs(rec["shift_hu"]) <= 2 * augment.INTENSITY_SHIFT_HU
    np.testing.assert_allclose(out.array, head.array * rec["scale"] + rec["shift_hu"],
                               rtol=1e-5, atol=1e-3)
    noisy = augment_ct(head, 9, elastic=False, rigid=False, scale=False, blur=False,
                       crop=False, intensity=False)
    sd = noisy.metadata["augmentation"]["noise"]["sd_hu"]
    assert 0 < sd <= augment.NOISE_SD_HU
    assert abs(float(np.std(noisy.array - head.array)) - sd) < 0.05 * sd + 1e-3


def test_strength_zero_is_the_input_and_arguments_are_validated(head):
    same = augment_ct(head, 1, strength=0.0)
    np.testing.assert_array_equal(same.array, head.array)
    tx, rec = augmentation_transform(head, 1, strength=0.0)
    assert rec == {}
    moved = resample_to_grid(head, head, tx)
    np.testing.assert_allclose(moved.array, head.array, atol=1e-3)
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="seed"):
            augment_ct(head, bad)
    with pytest.raises(ValueError, match="strength"):
        augment_ct(head, 1, strength=-0.5)


def test_anisotropic_scale_composes_with_the_pose_in_one_resample(head):
    out = augment_ct(head, 21, elastic=False, **SPATIAL_ONLY)
    rec = out.metadata["augmentation"]
    f = np.asarray(rec["scale"]["factors"])
    assert np.all(np.abs(f - 1.0) <= augment.SCALE) and np.abs(f - 1.0).max() > 0.03
    np.testing.assert_allclose(rec["scale"]["center_mm"], rec["pose"]["center_mm"])
    r = rotation_matrix(rec["pose"]["rotation_deg"])
    c, t = np.asarray(rec["pose"]["center_mm"]), np.asarray(rec["pose"]["translation_mm"])
    for m in MARKERS:
        expected = r @ (f * (m - c)) + c + t  # scaled about c, then posed
        found = _marker_centroid(out, expected)
        assert np.linalg.norm(found - expected) < 1.2, (m, found, expected)
    # one resample through the composed transform (not one per part)
    tx, spatial = augmentation_transform(head, 21, elastic=False)
    assert spatial["scale"] == rec["scale"]
    np.testing.assert_array_equal(out.array, resample_to_grid(head, head, tx).array)
    # the head's volume changes by the product of the factors
    ratio = (out.array > -500).sum() / (head.array > -500).sum()
    assert abs(ratio / np.prod(f) - 1.0) < 0.03, (ratio, np.prod(f))
    # scale only, about a given centre: a marker moves to c + f (m - c)
    c2 = np.array([0.0, 5.0, 0.0])
    only = augment_ct(head, 21, elastic=False, rigid=False, center=c2, **SPATIAL_ONLY)
    for m in MARKERS:
        expected = c2 + f * (m - c2)
        assert np.linalg.norm(_marker_centroid(only, expected) - expected) < 1.2


def _seed_where(test, n: int = 200) -> int:
    return next(s for s in range(n) if test(s))


@pytest.mark.parametrize("direction", [np.eye(3), rotation_matrix((90.0, 0.0, 0.0))],
                         ids=["axial", "z-along-j"])
def test_thick_slice_blur_is_along_z_with_the_recorded_width(direction):
    """A single bright voxel spreads along LPS z only, with the recorded Gaussian's variance,
    whichever grid axis is z."""
    spacing = tuple(0.5 if abs(direction[2, a]) > 0.9 else 2.0 for a in range(3))
    grid = Grid.centered((0.0, 0.0, 0.0), tuple(61 if s == 0.5 else 9 for s in spacing),
                         spacing, direction)
    vol = grid.volume(0.0)
    centre_kji = tuple(n // 2 for n in vol.array.shape)
    vol.array[centre_kji] = 1000.0
    seed = _seed_where(lambda s: augment_scan(vol, s, crop=False)[1]["resolution"]["applied"])
    out, rec = augment_scan(vol, seed, crop=False)
    res = rec["resolution"]
    assert res["applied"] and augment.BLUR_FWHM_MM[0] <= res["fwhm_mm"] <= augment.BLUR_FWHM_MM[1]
    assert res["sigma_mm"] == pytest.approx(res["fwhm_mm"] / 2.3548, rel=1e-3)
    kji = np.argwhere(out.array > 1e-3)
    pts = grid.physical_points(kji[:, ::-1].astype(float))
    assert np.abs(pts[:, :2]).max() < 1e-6  # stays on the z line through the voxel
    w = out.array[tuple(kji.T)]
    assert w.sum() == pytest.approx(1000.0, rel=1e-4)
    var = float((w * pts[:, 2] ** 2).sum() / w.sum())
    assert var == pytest.approx(res["sigma_mm"] ** 2, rel=0.1), (var, res)
    again, rec2 = augment_scan(vol, seed, crop=False)
    np.testing.assert_array_equal(again.array, out.array)
    assert rec2 == rec
    off = _seed_where(lambda s: not augment_scan(vol, s, crop=False)[1]["resolution"]["applied"])
    same, rec3 = augment_scan(vol, off, crop=False)
    assert same is vol and set(rec3["resolution"]) == {"applied", "axis"}


def test_coverage_crop_sets_air_below_the_recorded_level(head):
    centre = np.array([0.0, 5.0, 40.0])  # a level within the synthetic head
    seed = _seed_where(lambda s: augment_scan(head, s, blur=False, center=centre)[1]["crop"]["applied"])
    out, rec = augment_scan(head, seed, blur=False, center=centre)
    crop = rec["crop"]
    lo, hi = augment.CROP_BELOW_CENTER_MM
    assert lo <= crop["below_center_mm"] <= hi
    assert crop["z_mm"] == pytest.approx(centre[2] - crop["below_center_mm"])
    kji = np.stack(np.meshgrid(*[np.arange(s) for s in head.array.shape], indexing="ij"), -1)
    z = head.physical_points(kji[..., ::-1].reshape(-1, 3).astype(float))[:, 2]
    z = z.reshape(head.array.shape)
    below = z < crop["z_mm"]
    assert below.any() and (head.array[below] > -500).any()  # it did cut some head
    assert np.all(out.array[below] == -1000.0)
    np.testing.assert_array_equal(out.array[~below], head.array[~below])


def test_scan_and_support_draws_are_seeded_coin_flips():
    vol = Grid.centered((0.0, 0.0, 0.0), (4, 4, 4), (2.0, 2.0, 2.0)).volume(0.0)
    seeds = range(400)
    recs = [augment_scan(vol, s, center=(0.0, 0.0, 0.0))[1] for s in seeds]
    blur = np.array([r["resolution"]["applied"] for r in recs])
    crop = np.array([r["crop"]["applied"] for r in recs])
    keep = np.array([support_in_drrs(s) for s in seeds])
    for flips, p in ((blur, augment.BLUR_PROBABILITY), (crop, augment.CROP_PROBABILITY),
                     (keep, augment.SUPPORT_KEEP_PROBABILITY)):
        assert abs(flips.mean() - p) < 0.08
    assert abs((blur & crop).mean() - 0.25) < 0.07 and abs((crop & keep).mean() - 0.25) < 0.07
    assert [support_in_drrs(s) for s in seeds] == keep.tolist()
    fwhm = [r["resolution"]["fwhm_mm"] for r in recs if r["resolution"]["applied"]]
    assert min(fwhm) < 1.5 and max(fwhm) > 4.5
    assert augment_scan(vol, 3, strength=0.0) == (vol, {})


# ----------------------------------------------------------------------------------------
# the patient support
# ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def supported_head():
    """A head on a couch, in a 3 mm canonical-like grid (LPS: +y posterior, +z superior): an
    ellipsoid head (skin/brain 30 HU, skull 1000 HU) with an enclosed air sinus and an open
    'nasal cavity' holding a 1-voxel tissue 'septum'; behind it a 15 mm couch slab (100 HU), a
    foam pad (-850 HU) between them, and a 3 mm 'head holder' plate (200 HU) from the couch
    to the side of the head."""
    grid = Grid.centered((0.0, 0.0, 0.0), (80, 80, 64), (3.0, 3.0, 3.0))
    vol = grid.volume(-1000.0)
    kji = np.stack(np.meshgrid(*[np.arange(s) for s in grid.shape], indexing="ij"), -1)
    p = grid.physical_points(kji[..., ::-1].reshape(-1, 3).astype(float)).reshape(*kji.shape)
    x, y, z = p[..., 0], p[..., 1], p[..., 2]
    r = np.sqrt((x / 70.0) ** 2 + (y / 90.0) ** 2 + (z / 80.0) ** 2)
    a = vol.array
    a[r < 1.0] = 30.0
    a[(r > 0.9) & (r < 0.97)] = 1000.0
    sinus = (x - 25.0) ** 2 + (y + 20.0) ** 2 + (z - 20.0) ** 2 < 12.0 ** 2
    cavity = (x ** 2 + (y + 50.0) ** 2 + z ** 2 < 20.0 ** 2) | (
        (x ** 2 + z ** 2 < 8.0 ** 2) & (y < -50.0))  # open to the front
    a[sinus | cavity] = -1000.0
    septum = cavity & (np.abs(x - 1.5) < 1.0) & (y > -62.0) & (y < -38.0) & (np.abs(z) < 12.0)
    a[septum] = 30.0
    couch = (y >= 96.0) & (y <= 111.0)
    foam = (r >= 1.0) & (y > 60.0) & (y < 96.0) & (np.abs(x) < 60.0)
    holder = (np.abs(x - 70.5) < 1.0) & (y > 0.0) & (y < 96.0) & (np.abs(z) < 20.0) & (r >= 1.0)
    a[foam] = -850.0
    a[couch] = 100.0
    a[holder] = 200.0
    return vol, {"r": r, "y": y, "sinus": sinus, "septum": septum, "couch": couch,
                 "holder": holder, "foam": foam}


def test_body_mask_keeps_the_head_and_drops_the_couch(supported_head):
    vol, parts = supported_head
    assert parts["septum"].sum() > 10 and parts["holder"].sum() > 50
    mask = body_mask(vol)
    assert mask.shape == vol.array.shape and mask.dtype == bool
    assert mask[parts["r"] < 1.0].all()  # the head, its sinus, the cavity and the septum
    # skin plus the dilation: everything just outside the head is kept
    assert mask[(parts["r"] >= 1.0) & (parts["r"] < 1.03)].mean() > 0.99
    # the couch, the holder away from the head (the dilation is 5 mm) and the foam
    assert not mask[parts["couch"]].any()
    far_holder = parts["holder"] & (parts["y"] > 45.0)
    assert far_holder.sum() > 30 and not mask[far_holder].any()
    far_foam = parts["foam"] & (parts["r"] > 1.1)
    assert far_foam.sum() > 1000 and not mask[far_foam].any()
    out, rec = remove_support(vol, mask)
    np.testing.assert_array_equal(out.array[mask], vol.array[mask])
    assert np.all(out.array[~mask] == -1000.0) and out.array.dtype == np.float32
    couch_ml = parts["couch"].sum() * 27.0 / 1000.0
    assert couch_ml < rec["removed_ml"] < couch_ml + (parts["holder"].sum() * 27.0 / 1000.0) + 1
    assert rec["dilation_mm"] == augment.BODY_DILATION_MM
    again, _ = remove_support(vol)  # the mask by default
    np.testing.assert_array_equal(again.array, out.array)
    with pytest.raises(augment.InputError, match="no body"):
        body_mask(vol.with_array(np.full(vol.array.shape, -1000.0, np.float32)))


def test_body_mask_on_a_fine_grid_is_found_coarse(supported_head):
    """On a grid finer than 2 mm the mask is computed at 2 mm and brought back."""
    vol, parts = supported_head
    rs = resample_to_grid
    fine_grid = Grid.centered((0.0, 0.0, 0.0), (160, 160, 128), (1.5, 1.5, 1.5))
    fine = rs(vol, fine_grid, None, "nearest")
    mask = body_mask(fine)
    near = rs(vol.with_array(parts["couch"].astype(np.uint8)), fine_grid, None, "nearest")
    head = rs(vol.with_array((parts["r"] < 0.98).astype(np.uint8)), fine_grid, None, "nearest")
    assert not mask[near.array > 0].any() and mask[head.array > 0].all()
