"""The one geometry: Grid (index <-> LPS), Volume as a Grid plus an array, the canonical grid,
RigidTransform (ITK Euler3D ZYX), and the one LPS <-> RAS conversion; oblique and non-LPS
grids throughout."""
from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk

from XRayToCTLib.geometry import (Grid, ProjectionGeometry, RigidTransform, Volume, canonical_grid,
                                  rotation_matrix)
from XRayToCTLib.io import sitk_to_volume, volume_to_sitk

OBLIQUE = rotation_matrix((20.0, -15.0, 35.0))
RAS_AXES = np.diag([-1.0, -1.0, 1.0])


@pytest.mark.parametrize("direction", [np.eye(3), OBLIQUE, RAS_AXES])
def test_grid_index_to_lps_matches_simpleitk(direction):
    grid = Grid((7, 5, 4), (0.7, 1.3, 2.5), (10.0, -20.0, 30.0), direction)
    img = volume_to_sitk(grid.volume(0.0))
    ijk = np.array([[0, 0, 0], [6, 4, 3], [2.5, 1.25, 3.75]])
    for p in ijk:
        np.testing.assert_allclose(grid.physical_points(p[None])[0],
                                   img.TransformContinuousIndexToPhysicalPoint(p.tolist()), atol=1e-9)
    np.testing.assert_allclose(grid.continuous_index(grid.physical_points(ijk)), ijk, atol=1e-9)
    np.testing.assert_allclose(grid.lps_to_index() @ grid.index_to_lps(), np.eye(4), atol=1e-12)
    # voxel_points: flat [k, j, i] order, the same points
    k, j, i = np.unravel_index(np.arange(grid.shape[0] * grid.shape[1] * grid.shape[2]), grid.shape)
    np.testing.assert_allclose(grid.voxel_points(), grid.physical_points(np.stack([i, j, k], -1)),
                               atol=1e-9)
    np.testing.assert_allclose(grid.voxel_points(5, 9), grid.voxel_points()[5:9], atol=1e-12)


def test_a_volume_is_a_grid_plus_an_array():
    vol = Volume(np.zeros((4, 5, 6), np.float32), (1.0, 2.0, 3.0), (1.0, 2.0, 3.0), OBLIQUE, {"a": 1})
    assert isinstance(vol, Grid) and vol.size == (6, 5, 4) and vol.shape == (4, 5, 6)
    g = vol.grid
    assert type(g) is Grid and g.same_as(vol) and not hasattr(g, "array")
    back = g.with_array(np.ones(g.shape, np.float32), b=2)
    assert isinstance(back, Volume) and back.same_as(vol) and back.metadata == {"b": 2}
    with pytest.raises(ValueError):
        g.with_array(np.ones((2, 2, 2)))
    vol.array = np.zeros((2, 3, 4))  # the size follows the array
    assert vol.size == (4, 3, 2)
    with pytest.raises(ValueError):
        Volume(np.zeros((3, 3)))
    with pytest.raises(ValueError):
        Grid((2, 2, 2), (1.0, 0.0, 1.0))
    with pytest.raises(ValueError):
        Grid((2, 2, 2), 1.0, (0, 0, 0), np.ones((3, 3)))
    assert Grid.from_dict(vol.geometry_dict()).same_as(vol)
    moved = vol.translated((1.0, -2.0, 3.0), c=3)
    np.testing.assert_allclose(moved.center - vol.center, (1.0, -2.0, 3.0))
    assert moved.metadata["c"] == 3 and moved.array is vol.array


def test_lps_ras_conversion_round_trips_through_ijk_to_ras():
    vol = Volume(np.zeros((3, 4, 5)), (0.5, 0.6, 2.0), (-10.0, 20.0, 5.0), OBLIQUE)
    m = vol.ijk_to_ras()
    p = np.array([1.0, 2.0, 1.5, 1.0])
    lps = vol.index_to_lps() @ p
    np.testing.assert_allclose(m @ p, np.r_[-lps[0], -lps[1], lps[2], 1.0], atol=1e-12)
    back = Volume.from_ijk_to_ras(vol.array, m)
    assert back.same_as(vol, atol=1e-9)


def test_canonical_grid_is_centred_on_the_origin():
    g = canonical_grid(64, 256.0)
    assert g.size == (64, 64, 64) and g.spacing == (4.0, 4.0, 4.0)
    np.testing.assert_allclose(g.center, 0.0, atol=1e-12)
    np.testing.assert_allclose(g.direction, np.eye(3))
    assert g.field_mm == (256.0, 256.0, 256.0)
    with pytest.raises(ValueError):
        canonical_grid(0)
    with pytest.raises(ValueError):
        canonical_grid(8, -1.0)


def test_resized_keeps_the_field_and_coarsened_keeps_the_centre():
    g = Grid.centered((3.0, -4.0, 5.0), (64, 32, 16), (1.0, 2.0, 4.0), OBLIQUE)
    half = g.resized((32, 16, 8))
    np.testing.assert_allclose(np.sort(half.corners(), axis=0), np.sort(g.corners(), axis=0), atol=1e-9)
    assert half.spacing == (2.0, 4.0, 8.0)
    c = g.coarsened(3.0)
    np.testing.assert_allclose(c.center, g.center, atol=1e-9)
    assert c.spacing == (3.0, 3.0, 4.0) and c.size[2] == 16


def test_rigid_transform_is_itk_euler3d_zyx_and_inverts():
    t = RigidTransform((0.1, -0.2, 0.3, 5.0, -6.0, 7.0), (10.0, 20.0, -30.0))
    e = sitk.Euler3DTransform()
    e.SetComputeZYX(True)
    e.SetCenter(t.center)
    e.SetParameters(t.parameters)
    pts = np.array([[1.0, 2.0, 3.0], [-40.0, 15.0, 60.0]])
    np.testing.assert_allclose(t.transform_points(pts), [e.TransformPoint(p.tolist()) for p in pts],
                               atol=1e-9)
    np.testing.assert_allclose(t.inverse_transform_points(t.transform_points(pts)), pts, atol=1e-9)
    np.testing.assert_allclose(t.rotation, rotation_matrix(t.angles_deg), atol=1e-12)
    # the same map about another centre, from its matrix; and after a translation
    again = RigidTransform.from_matrix(t.matrix(), (1.0, 1.0, 1.0))
    np.testing.assert_allclose(again.matrix(), t.matrix(), atol=1e-9)
    shifted = t.after_translation((3.0, -1.0, 2.0), note="x")
    np.testing.assert_allclose(shifted.transform_points(pts), t.transform_points(pts + (3.0, -1.0, 2.0)),
                               atol=1e-9)
    assert shifted.info["note"] == "x"
    assert RigidTransform.from_dict(t.to_dict()).parameters == t.parameters
    assert math.isclose(RigidTransform.translation_by((1, 2, 3)).rotation_angle_deg, 0.0)


def test_moved_geometry_sends_the_rays_through_the_moved_points():
    t = RigidTransform((0.2, 0.1, -0.3, 4.0, 5.0, -6.0), (0.0, 0.0, 0.0))
    g = ProjectionGeometry.preset("lateral", pixels=(16, 16))
    moved = t.moved_geometry(g)
    pts = np.array([[10.0, -20.0, 30.0], [0.0, 15.0, -5.0]])
    np.testing.assert_allclose(moved.project(t.transform_points(pts)), g.project(pts), atol=1e-9)


def test_grids_of_simpleitk_images_agree():
    img = sitk.Image(5, 6, 7, sitk.sitkFloat32)
    img.SetSpacing((0.5, 0.75, 2.0))
    img.SetOrigin((1.0, 2.0, 3.0))
    img.SetDirection(tuple(OBLIQUE.reshape(-1)))
    vol = sitk_to_volume(img)
    assert vol.size == img.GetSize()
    np.testing.assert_allclose(vol.physical_points(np.array([[4.0, 5.0, 6.0]]))[0],
                               img.TransformIndexToPhysicalPoint((4, 5, 6)), atol=1e-9)
