"""Tests of XRayToCTLib.augment: deterministic, geometry-keeping augmentation of HU CTs."""
from __future__ import annotations

import numpy as np
import pytest

from XRayToCTLib import augment
from XRayToCTLib.augment import augment_ct, augmentation_transform
from XRayToCTLib.geometry import Volume, rotation_matrix
from XRayToCTLib.preprocess import resample_to_grid

# an oblique, anisotropic grid (CT-like: thick slices), 3 markers at known LPS positions
DIRECTION = rotation_matrix((0.0, 0.0, 20.0))
SPACING = (2.0, 2.0, 4.0)
SIZE = (80, 80, 40)
MARKERS = np.array([[30.0, -20.0, 10.0], [-35.0, 10.0, -20.0], [5.0, 40.0, 30.0]])


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
    assert rec["seed"] == 7 and set(rec) >= {"pose", "elastic", "intensity", "noise"}
    assert a.metadata["augmentation"] == b.metadata["augmentation"]


def test_rigid_pose_is_physical_on_an_anisotropic_oblique_grid(head):
    out = augment_ct(head, 3, elastic=False, intensity=False, noise=False, strength=1.5)
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
    rigid_only = augment_ct(head, 11, elastic=False, intensity=False,
                            noise=False).metadata["augmentation"]
    assert full["pose"] == rigid_only["pose"]
    assert "elastic" not in rigid_only and "intensity" not in rigid_only
    _, rec = augmentation_transform(head, 11, rigid=False)
    assert rec["elastic"] == full["elastic"]


def test_elastic_is_smooth_and_bounded(head):
    tx, rec = augmentation_transform(head, 5, rigid=False, strength=1.0)
    el = rec["elastic"]
    assert 0.5 < el["rms_displacement_mm"] < el["max_displacement_mm"] < 5 * augment.ELASTIC_SD_MM
    # smooth: displacement differences between points 2 mm apart are tiny
    p = np.array([[10.0, 0.0, 5.0], [12.0, 0.0, 5.0], [10.0, 2.0, 5.0]])
    d = np.array([np.asarray(tx.TransformPoint(tuple(q))) - q for q in p])
    assert np.abs(d[1:] - d[0]).max() < 0.5
    out = augment_ct(head, 5, rigid=False, intensity=False, noise=False)
    changed = np.mean(np.abs(out.array - head.array) > 100)
    assert 0.001 < changed < 0.2  # edges moved, the bulk did not
    # the head keeps its volume within a few per cent
    assert abs((out.array > -500).sum() / (head.array > -500).sum() - 1.0) < 0.05


def test_intensity_and_noise_follow_their_record(head):
    out = augment_ct(head, 9, elastic=False, rigid=False, noise=False, strength=2.0)
    rec = out.metadata["augmentation"]["intensity"]
    assert abs(rec["scale"] - 1.0) <= 2 * augment.INTENSITY_SCALE
    assert abs(rec["shift_hu"]) <= 2 * augment.INTENSITY_SHIFT_HU
    np.testing.assert_allclose(out.array, head.array * rec["scale"] + rec["shift_hu"],
                               rtol=1e-5, atol=1e-3)
    noisy = augment_ct(head, 9, elastic=False, rigid=False, intensity=False)
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
