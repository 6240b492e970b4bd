"""The test-time fit (refine.py): it moves an sCT towards what its views show, keeps it when
they already agree, handles views in unknown units, and keeps the prior's grid."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from XRayToCTLib import phantom
from XRayToCTLib.drr import DRR, biplanar_geometry
from XRayToCTLib.geometry import Grid, canonical_grid
from XRayToCTLib.hu import coarsen
from XRayToCTLib.refine import INTENSITY_KNOTS_HU, RefineSettings, SCTFit, refine

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def head():
    """A small phantom head on the 32^3 canonical grid (8 mm voxels, 256 mm field)."""
    g = canonical_grid(32)
    vol = phantom.head_phantom(32, g.spacing[0], seed=3, pose=False, findings=None, noise_hu=0.0)
    return g.with_array(vol.array.astype(np.float32))


def _views(volume, grid: Grid, pixels: int = 32):
    geoms = biplanar_geometry(grid, pixels=pixels)
    drr = DRR(geoms)
    return drr.render(volume, device="cpu"), geoms


def _mae_head(a, b, truth):
    m = truth.array > -500
    return float(np.abs(a.array[m] - b.array[m]).mean())


def test_the_curve_is_the_identity_at_rest_and_moves_tissue_classes(head):
    fit = SCTFit(torch.from_numpy(head.array), Grid.of(head), RefineSettings(fit_spacing_mm=8))
    hu = torch.tensor(INTENSITY_KNOTS_HU + (-1200.0, 1800.0))
    assert torch.allclose(fit.curve(hu), hu)
    with torch.no_grad():
        # +50 HU at the knot at 40 HU (index 5; air's knot is fixed; units of the prior SD)
        fit.intensity[4] = 50.0 / fit.settings.intensity_sd_hu
    out = fit.curve(torch.tensor([-1000.0, 40.0, 70.0, 1000.0]))
    assert out.tolist() == pytest.approx([-1000.0, 90.0, 95.0, 1000.0])  # 70: half of 50
    assert torch.allclose(fit(), fit.curve(torch.from_numpy(head.array)), atol=1e-3)
    # the defaults fit the intensity curve and the affine map; the deformation field and the
    # residual (ill-posed from two views, see the module doc) are off until given an SD
    assert RefineSettings().active() == ("affine", "translation", "intensity")
    assert "displacement" in RefineSettings(displacement_sd_mm=4.0).active()
    with pytest.raises(ValueError, match="residual_sd_hu"):
        RefineSettings(residual_sd_hu=-1.0)


def test_a_prior_that_explains_its_views_is_kept(head):
    views, geoms = _views(head, head)
    out, rec = refine(head, views, geoms, RefineSettings(steps=15, fit_spacing_mm=8))
    assert rec["match"] == "absolute"  # DRRs say they are line integrals
    assert rec["view_error"]["before"] < 0.02
    assert _mae_head(out, head, head) < 5.0
    assert out.same_as(head) and out.metadata["refined"] is True


def test_the_fit_recovers_a_miscalibrated_and_shifted_head(head):
    # truth: the head 6 mm further left and its soft tissue 60 HU denser
    arr = head.array.copy()
    soft = (arr > -200) & (arr < 200)
    arr[soft] += 60.0
    truth = head.with_array(np.roll(arr, 1, axis=2))  # one 8 mm voxel along x (LPS left)
    views, geoms = _views(truth, head)
    out, rec = refine(head, views, geoms, RefineSettings(steps=120, fit_spacing_mm=8, noise=0.02))
    assert rec["view_error"]["after"] < 0.5 * rec["view_error"]["before"]
    assert _mae_head(out, truth, truth) < 0.8 * _mae_head(head, truth, truth)
    assert rec["steps_run"] <= 120 and rec["time_s"] > 0


def test_views_in_unknown_units_are_matched_up_to_gain_and_offset(head):
    truth = head.with_array(np.roll(head.array, 1, axis=2))  # 8 mm along x (LPS left)
    views, geoms = _views(truth, head)
    raw = {v: 3.0 * r.array + 7.0 for v, r in views.items()}  # arrays: no units known
    out, rec = refine(head, raw, geoms, RefineSettings(steps=80, fit_spacing_mm=8, noise=0.02))
    assert rec["match"] == "affine"
    assert rec["view_error"]["after"] < 0.6 * rec["view_error"]["before"]
    assert _mae_head(out, truth, truth) < 0.8 * _mae_head(head, truth, truth)
    assert abs(rec["translation_mm"][0] + 8.0) < 4.0, rec["translation_mm"]  # q = p + t
    with pytest.raises(ValueError, match="match"):
        RefineSettings(match="relative")


def test_a_fine_prior_is_fitted_coarse_and_corrected_at_full_resolution(head):
    fine = canonical_grid(64)
    vol = phantom.head_phantom(64, fine.spacing[0], seed=3, pose=False, findings=None,
                               noise_hu=0.0)
    prior = fine.with_array(vol.array.astype(np.float32))
    arr = prior.array.copy()
    arr[(arr > -200) & (arr < 200)] += 60.0
    truth = prior.with_array(arr)
    # views as detailed as the 8 mm fit grid can explain (finer ones would ask the coarse fit
    # for detail it cannot hold): the truth's DRRs at 8 mm on 16 pixels
    views, geoms = _views(coarsen(truth, 8.0, default=-1000.0), canonical_grid(32), pixels=16)
    out, rec = refine(prior, views, geoms, RefineSettings(steps=40, fit_spacing_mm=8, noise=0.02))
    assert out.same_as(prior) and out.array.shape == (64, 64, 64)
    assert rec["fit_grid"]["size"] == [32, 32, 32]
    assert rec["view_error"]["after"] < 0.5 * rec["view_error"]["before"]
    # the correction found on the coarse grid reaches the full-resolution soft tissue
    soft = (prior.array > -200) & (prior.array < 200)
    gain = float(out.array[soft].mean() - prior.array[soft].mean())
    assert 15.0 < gain < 90.0, gain
