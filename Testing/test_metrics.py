"""Tests of XRayToCTLib.metrics (equality with skimage, definitions, edge cases) and of
XRayToCTLib.hu (windows, the head mask's variants)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy import ndimage
from skimage.metrics import mean_squared_error, peak_signal_noise_ratio
from skimage.metrics import structural_similarity as sk_ssim

from XRayToCTLib import hu
from XRayToCTLib import metrics as M
from XRayToCTLib.constants import HEAD_THRESHOLD_HU
from XRayToCTLib.errors import InputError
from XRayToCTLib.geometry import Volume
from XRayToCTLib.io import read_volume

REPO = Path(__file__).resolve().parents[1]
CTHEAD = REPO.parent / "shared" / "data" / "head_ct" / "slicer_ctheadaxial"
SK = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False)


def sk(a, b, data_range=1.0, **kw):
    return sk_ssim(np.asarray(a, np.float64), np.asarray(b, np.float64), data_range=data_range,
                   **SK, **kw)


def pair(shape, seed=0, noise=0.2):
    rng = np.random.default_rng(seed)
    a = ndimage.gaussian_filter(rng.random(shape), 1.0)
    b = np.clip(a + noise * rng.standard_normal(shape), 0, 1)
    return a, b


@pytest.mark.parametrize("shape", [(32, 32, 32), (20, 27, 33), (11, 40, 12)])
def test_ssim_3d_equals_skimage(shape):
    a, b = pair(shape)
    assert abs(float(M.ssim(a, b, data_range=1.0)[0]) - sk(a, b)) < 1e-6


def test_ssim_2d_and_data_range_equal_skimage():
    a, b = pair((48, 37), seed=1)
    assert abs(float(M.ssim(a, b)[0]) - sk(a, b)) < 1e-6
    assert abs(float(M.ssim(a * 300, b * 300, data_range=300.0)[0]) - sk(a * 300, b * 300, 300.0)) < 1e-6
    # another sigma changes the window exactly as skimage does
    assert abs(float(M.ssim(a, b, sigma=1.0)[0]) - sk_ssim(a, b, data_range=1.0, gaussian_weights=True,
                                                            sigma=1.0, use_sample_covariance=False)) < 1e-6


def test_ssim_batched_matches_single_items():
    items = [pair((24, 24, 24), seed=s) for s in range(3)]
    x = torch.from_numpy(np.stack([a for a, _ in items])[:, None])
    y = torch.from_numpy(np.stack([b for _, b in items])[:, None])
    batch = M.ssim(x, y)
    assert batch.shape == (3,)
    for i, (a, b) in enumerate(items):
        assert abs(float(batch[i]) - sk(a, b)) < 1e-6


def test_ssim_slices_is_mean_of_per_slice_skimage():
    a, b = pair((14, 16, 18), seed=2)
    per_axis = [np.mean([sk(np.take(a, i, ax), np.take(b, i, ax)) for i in range(a.shape[ax])])
                for ax in range(3)]
    assert abs(float(M.ssim_slices(a, b)[0]) - np.mean(per_axis)) < 1e-6
    with pytest.raises(ValueError):
        M.ssim_slices(a[0], b[0])


def test_masked_ssim_is_mean_of_skimage_map_over_mask_interior():
    a, b = pair((24, 26, 28), seed=3)
    _, full = sk(a, b, full=True)
    mask = np.zeros(a.shape, bool)
    mask[3:20, 6:22, 2:27] = True
    crop = (slice(5, -5),) * 3
    expected = full[crop][mask[crop]].mean()
    assert abs(float(M.ssim(a, b, mask=mask)[0]) - expected) < 1e-6
    # an all-true mask is the whole-volume value
    assert float(M.ssim(a, b, mask=np.ones(a.shape, bool))[0]) == pytest.approx(float(M.ssim(a, b)[0]), abs=1e-12)


def test_window_too_large_is_refused():
    with pytest.raises(ValueError, match="window"):
        M.ssim(np.zeros((8, 30, 30)), np.zeros((8, 30, 30)))


def read_cthead(required: bool = True) -> Volume | None:
    """The shared head CT in HU; without ../shared/data (a fresh clone) the test is skipped,
    or None is returned when the CT is not ``required``."""
    if not CTHEAD.exists():
        if not required:
            return None
        pytest.skip(f"shared test data not found at {CTHEAD} (a fresh clone has no ../shared/data)")
    return read_volume(CTHEAD, rescale=(1.0, -1024.0))


def test_ssim_equals_skimage_on_real_head_ct():
    ct = read_cthead()
    gt = ct.array[20:60, 8:56, 8:56].astype(np.float64)  # [k, j, i], small
    pred = ndimage.gaussian_filter(gt, 1.2) + np.random.default_rng(0).normal(0, 30, gt.shape)
    for window in ("brain", "full", "bone"):
        lo, hi = M.window_range(window)
        g = np.clip((gt - lo) / (hi - lo), 0, 1)
        p = np.clip((pred - lo) / (hi - lo), 0, 1)
        ours = M.compute_metrics(pred, gt, window=window, region="whole",
                                 metrics=("ssim", "psnr", "mse"))
        assert abs(ours["ssim"] - sk(p, g)) < 1e-4
        # HU are held in float32 (1e-4 HU at 1000 HU): the error metrics agree to ~1e-6
        assert abs(ours["psnr"] - peak_signal_noise_ratio(g, p, data_range=1.0)) < 1e-4
        assert ours["mse"] == pytest.approx(mean_squared_error(g, p), rel=1e-5)


def test_psnr_mse_mae_cosine_definitions():
    rng = np.random.default_rng(4)
    a, b = rng.random((2, 10, 12, 14))
    assert abs(float(M.psnr(a, b, data_range=1.0)[0]) - peak_signal_noise_ratio(a, b, data_range=1.0)) < 1e-9
    assert abs(float(M.psnr(a, b, data_range=2.0)[0]) - float(M.psnr(a, b, data_range=1.0)[0])
               - 20 * math.log10(2)) < 1e-9
    assert float(M.psnr(a, a, data_range=1.0)[0]) == math.inf
    assert abs(float(M.mse(a, b)[0]) - ((a - b) ** 2).mean()) < 1e-12
    assert abs(float(M.mae(a, b)[0]) - np.abs(a - b).mean()) < 1e-12
    cos = (a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b)
    assert abs(float(M.cosine(a, b)[0]) - cos) < 1e-12
    mask = a > 0.5
    assert abs(float(M.mae(a, b, mask=mask)[0]) - np.abs(a - b)[mask].mean()) < 1e-12
    z = np.zeros_like(a)
    assert float(M.cosine(z, z)[0]) == 1.0 and float(M.cosine(z, a)[0]) == 0.0
    with pytest.raises(ValueError):
        M.psnr(a, b, data_range=0.0)


def head(shape=(40, 40, 40), inner_hu=35.0):
    """A hollow skull (1000 HU shell) with brain inside, a ventricle of CSF, air outside."""
    k, j, i = np.indices(shape)
    c = (np.asarray(shape) - 1) / 2
    r = np.sqrt(((k - c[0]) / 16) ** 2 + ((j - c[1]) / 14) ** 2 + ((i - c[2]) / 12) ** 2)
    hu = np.full(shape, -1000.0)
    hu[r < 1.0] = 1000.0
    hu[r < 0.85] = inner_hu
    hu[(r < 0.3)] = 5.0
    return hu


def test_head_mask_largest_component_with_holes_filled():
    hu = head()
    hu[1:3, 1:3, 1:3] = 500.0  # a separate blob: not the head
    cavity = (slice(18, 22),) * 3
    hu[cavity] = -1000.0  # an enclosed air pocket: filled
    m = M.head_mask(hu)
    assert m.dtype == bool and m.shape == hu.shape
    assert not m[1:3, 1:3, 1:3].any() and m[cavity].all() and not m[0, 0, 0]
    t = M.head_mask(torch.from_numpy(hu)[None, None])
    assert isinstance(t, torch.Tensor) and t.shape == (1, 1, *hu.shape)
    assert np.array_equal(t[0, 0].numpy(), m)
    assert np.array_equal(M.head_mask(Volume(hu)), m)


def reference_full_mask(a: np.ndarray, fill: bool) -> np.ndarray:
    """The evaluation's head mask as first written: > -500 HU, largest face-connected
    component, holes filled by scipy."""
    lab, _ = ndimage.label(a > HEAD_THRESHOLD_HU)
    counts = np.bincount(lab.ravel())
    counts[0] = 0
    m = lab == int(np.argmax(counts))
    return ndimage.binary_fill_holes(m) if fill else m


def reference_coarse_centroid(vol: Volume, threshold: float | None, spacing: float = 2.0):
    """The preprocessing's head centre as first written (SimpleITK): anti-aliased resampling
    to no finer than ``spacing`` mm, ``>= threshold`` (Otsu when None), a 1-voxel opening kept
    when not empty, the largest component; its centroid (LPS) and the mask's grid."""
    img = sitk.GetImageFromArray(np.asarray(vol.array, np.float32))
    img.SetSpacing(vol.spacing)
    img.SetOrigin(vol.origin)
    img.SetDirection(tuple(np.asarray(vol.direction, float).reshape(-1)))
    old = np.asarray(img.GetSpacing(), float)
    new = np.maximum(old, spacing)
    if not np.allclose(new, old, rtol=1e-6):
        ext = (np.asarray(img.GetSize(), float) - 1) * old
        size = np.floor(ext / new + 1e-6).astype(int) + 1
        d = np.asarray(img.GetDirection(), float).reshape(3, 3)
        origin = np.asarray(img.GetOrigin(), float) + d @ ((ext - (size - 1) * new) / 2)
        sig = np.sqrt((np.maximum(new / old, 1) ** 2 - 1) / 12) * old
        sm = sitk.DiscreteGaussian(img, [float(s * s) for s in sig], 64, 0.01, True)
        img = sitk.Resample(sm, [int(n) for n in size], sitk.Transform(), sitk.sitkLinear,
                            tuple(origin), tuple(new), img.GetDirection(),
                            float(np.min(vol.array)), sitk.sitkFloat32)
    if threshold is None:
        f = sitk.OtsuThresholdImageFilter()
        f.SetNumberOfHistogramBins(128)
        f.Execute(img)
        threshold = f.GetThreshold()
    mask = sitk.BinaryThreshold(img, float(threshold), 1e30, 1, 0)
    opened = sitk.BinaryMorphologicalOpening(mask, [1] * 3)
    if sitk.GetArrayViewFromImage(opened).any():
        mask = opened
    mask = sitk.RelabelComponent(sitk.ConnectedComponent(mask), sortByObjectSize=True) == 1
    kji = np.argwhere(sitk.GetArrayFromImage(mask) > 0).mean(axis=0)
    return np.asarray(img.TransformContinuousIndexToPhysicalPoint(kji[::-1].tolist())), img


def test_hu_head_mask_variants_reproduce_both_former_masks():
    # the evaluation's variant (the default): full resolution, holes filled or (fill_holes=False) not
    hu_arr = head()
    hu_arr[18:22, 18:22, 18:22] = -1000.0  # an enclosed air pocket
    hu_arr[1:3, 1:3, 1:3] = 500.0  # a separate blob
    ct = read_cthead(required=False)  # the synthetic cases run without the shared data
    cts = [] if ct is None else [ct]
    for a in (hu_arr, *(c.array for c in cts)):
        assert np.array_equal(hu.head_mask(a), reference_full_mask(a, True))
        assert np.array_equal(hu.head_mask(a, fill_holes=False), reference_full_mask(a, False))
    assert M.head_mask is hu.head_mask
    assert not hu.head_mask(hu_arr, fill_holes=False)[18:22, 18:22, 18:22].any()
    # the preprocessing's variant: at 2 mm, a 1-voxel opening, holes kept; same centroid
    k, j, i = np.indices((60, 50, 40))
    blob = np.where(((k - 30) / 25) ** 2 + ((j - 24) / 20) ** 2 + ((i - 21) / 16) ** 2 < 1, 40.0, -1000.0)
    blob[:, 45:47, :] = 100.0  # a thin "table" touching the head: the opening removes it
    c, s = math.cos(0.3), math.sin(0.3)
    tilted = Volume(blob.astype(np.float32), (0.9, 1.1, 1.3), (10.0, -20.0, 5.0),
                    np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]))
    for vol, thr in [(v, t) for v in (*cts, tilted) for t in (-500.0, None)]:
        ref, ref_img = reference_coarse_centroid(vol, thr)
        assert np.abs(hu.head_center(vol, thr) - ref).max() < 0.01
        m = hu.head_mask(vol, thr, coarse_mm=2.0, opening=1, fill_holes=False)
        assert isinstance(m, Volume) and m.array.dtype == np.uint8
        assert m.array.shape == sitk.GetArrayViewFromImage(ref_img).shape
        np.testing.assert_allclose(m.spacing, ref_img.GetSpacing())
        np.testing.assert_allclose(m.origin, ref_img.GetOrigin(), atol=1e-9)
    with pytest.raises(InputError, match="no head"):
        hu.head_center(Volume(np.full((8, 8, 8), -1000.0, np.float32)))
    with pytest.raises(ValueError, match="geometry"):
        hu.head_mask(hu_arr, coarse_mm=2.0)


def test_hu_windows():
    assert hu.window_range("brain") == (20.0, 60.0) == M.window_range("brain")
    assert hu.get_window((40, 400)) == (40.0, 400.0) == hu.WINDOWS["soft_tissue"]
    np.testing.assert_allclose(hu.apply_window(np.array([-1000.0, 0.0, 1000.0]), "full"), [0, 0.5, 1])
    np.testing.assert_allclose(hu.window_to_hu(np.array([0.0, 0.5, 1.0]), "brain"), [20, 40, 60])
    with pytest.raises(ValueError, match="unknown window"):
        hu.get_window("lung-ish")


def test_compute_metrics_identical_constant_and_windowing():
    gt = head()
    same = M.compute_metrics(gt, gt, window="brain", region="head",
                             metrics=("ssim", "ssim_slices", "psnr", "mse", "mae_hu", "cosine"))
    assert same["ssim"] == pytest.approx(1.0) and same["ssim_slices"] == pytest.approx(1.0)
    assert same["psnr"] == math.inf and same["mse"] == 0 and same["mae_hu"] == 0
    assert same["cosine"] == pytest.approx(1.0)
    const = np.full_like(gt, 40.0)
    r = M.compute_metrics(const, const, window="full", region="whole")
    assert r["ssim"] == pytest.approx(1.0) and r["psnr"] == math.inf
    # MAE in HU of the window-clipped values: +100 HU everywhere -> 40 HU in the brain window
    # where gt is at 35 (clipped at 60), and at most 100 in the full window
    shifted = gt + 100.0
    brain = M.compute_metrics(shifted, gt, window="brain", region="whole", metrics=("mae_hu",))
    full = M.compute_metrics(shifted, gt, window="full", region="whole", metrics=("mae_hu",))
    lo, hi = M.window_range("brain")
    expected = np.abs(np.clip(shifted, lo, hi) - np.clip(gt, lo, hi)).mean()
    assert brain["mae_hu"] == pytest.approx(expected)
    assert full["mae_hu"] == pytest.approx(np.abs(np.clip(shifted, -1000, 1000) - np.clip(gt, -1000, 1000)).mean())


def test_region_head_differs_from_whole_and_uses_the_mask():
    gt = head()
    pred = gt + np.random.default_rng(0).normal(0, 20, gt.shape) * (gt > -500)  # errors in the head
    h = M.compute_metrics(pred, gt, window="full", region="head", metrics=("mae_hu", "ssim"))
    w = M.compute_metrics(pred, gt, window="full", region="whole", metrics=("mae_hu", "ssim"))
    m = M.head_mask(gt)
    lo, hi = -1000, 1000
    d = np.abs(np.clip(pred, lo, hi) - np.clip(gt, lo, hi))
    assert h["mae_hu"] == pytest.approx(d[m].mean(), abs=1e-3)
    assert w["mae_hu"] == pytest.approx(d.mean(), abs=1e-3)
    assert h["ssim"] < w["ssim"]  # the air background inflates whole-volume SSIM


def test_errors_nan_shape_grid():
    gt = head((24, 24, 24))
    bad = gt.copy()
    bad[3, 4, 5] = np.nan
    with pytest.raises(InputError, match="NaN"):
        M.compute_metrics(bad, gt)
    with pytest.raises(InputError, match="shape mismatch"):
        M.compute_metrics(gt[:-1], gt)
    with pytest.raises(InputError, match="different grids"):
        M.compute_metrics(Volume(gt, origin=(1, 0, 0)), Volume(gt))
    with pytest.raises(ValueError, match="unknown metrics"):
        M.compute_metrics(gt, gt, metrics=("nope",))


def test_evaluate_pair_rows_and_batch_metrics():
    gt = head((32, 32, 32))
    pred = gt + np.random.default_rng(1).normal(0, 30, gt.shape)
    rows = M.evaluate_pair(pred, gt, windows=("brain", "full"), regions=("head", "whole"))
    assert len(rows) == 2 * 2 * len(M.DEFAULT_METRICS)
    assert set(rows[0]) == {"metric", "window", "region", "value"}
    one = M.compute_metrics(pred, gt, window="full", region="head")
    for r in rows:
        if r["window"] == "full" and r["region"] == "head":
            assert r["value"] == pytest.approx(one[r["metric"]], rel=1e-12)
    b = M.batch_metrics(torch.from_numpy(np.stack([pred, gt])[:, None]),
                        torch.from_numpy(np.stack([gt, gt])[:, None]), window="full", region="head")
    assert b["ssim"].shape == (2,) and float(b["ssim"][0]) == pytest.approx(one["ssim"])
    assert float(b["psnr"][1]) == math.inf


def test_fsim_properties():
    rng = np.random.default_rng(5)
    a = ndimage.gaussian_filter(rng.random((64, 64)), 2.0)
    a = (a - a.min()) / np.ptp(a)
    mild = np.clip(a + 0.02 * rng.standard_normal(a.shape), 0, 1)
    strong = np.clip(a + 0.2 * rng.standard_normal(a.shape), 0, 1)
    same = float(M.fsim(a, a)[0])
    f_mild, f_strong = float(M.fsim(a, mild)[0]), float(M.fsim(a, strong)[0])
    assert same == pytest.approx(1.0, abs=1e-12)
    assert 1.0 > f_mild > f_strong > 0.0
    assert float(M.fsim(strong, a)[0]) == pytest.approx(f_strong, abs=1e-12)
    pc = M.phase_congruency(torch.from_numpy(a)[None, None] * 255)
    assert pc.shape == (1, 1, 64, 64) and float(pc.min()) >= 0 and float(pc.max()) <= 1
    with pytest.raises(ValueError):
        M.fsim(np.zeros((8, 8, 8)), np.zeros((8, 8, 8)))


def test_lpips_and_fid_unavailable_without_weights(monkeypatch):
    monkeypatch.delenv(M.LPIPS_ENV, raising=False)
    monkeypatch.delenv(M.FID_ENV, raising=False)
    a = np.zeros((1, 1, 64, 64))
    with pytest.raises(M.MetricUnavailable, match="unavailable: no local weights"):
        M.lpips(a, a)
    with pytest.raises(M.MetricUnavailable, match="unavailable: no local weights"):
        M.fid(a, a)


def test_lpips_and_fid_with_local_weights(tmp_path, monkeypatch):
    from safetensors.torch import save_file
    torch.manual_seed(0)
    net = M.LPIPSAlex()
    for lin in net.lins:  # LPIPS's lin weights are non-negative
        lin.weight.data.abs_()
    state = {k: v.contiguous() for k, v in net.state_dict().items() if k not in ("shift", "scale")}
    path = tmp_path / "lpips_alex.safetensors"
    save_file(state, str(path))
    monkeypatch.setenv(M.LPIPS_ENV, str(path))
    rng = np.random.default_rng(0)
    a = ndimage.gaussian_filter(rng.random((2, 1, 64, 64)), (0, 0, 2, 2))
    b = np.clip(a + 0.3 * rng.standard_normal(a.shape), 0, 1)
    same = M.lpips(a, a)
    diff = M.lpips(a, b)
    assert same.shape == (2,) and torch.allclose(same, torch.zeros(2, dtype=same.dtype), atol=1e-6)
    assert bool((diff > 0).all())
    assert torch.allclose(M.lpips(b, a), diff, rtol=1e-5)
    va = ndimage.gaussian_filter(rng.random((32, 32, 32)), 1.5)
    vb = np.clip(va + 0.3 * rng.standard_normal(va.shape), 0, 1)
    assert float(M.lpips(va, va, weights=path)[0]) == pytest.approx(0.0, abs=1e-6)
    assert float(M.lpips(va, vb, weights=path)[0]) > 0
    imgs = rng.random((6, 1, 64, 64))
    assert M.fid(imgs, imgs, weights=path) == pytest.approx(0.0, abs=1e-6)
    assert M.fid(imgs, np.clip(imgs + 0.5, 0, 1), weights=path) > 0


def test_frechet_distance_of_known_gaussians():
    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, (20000, 2))
    b = rng.normal(3, 2, (20000, 2))
    # |mu|^2 = 2*9; tr = 2*(1 + 4 - 2*2) = 2
    assert M.frechet_distance(a, b) == pytest.approx(20.0, rel=0.03)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here")
def test_cuda_matches_cpu():
    a, b = pair((32, 32, 32))
    x = torch.from_numpy(a)[None, None]
    y = torch.from_numpy(b)[None, None]
    assert float(M.ssim(x.cuda(), y.cuda())[0]) == pytest.approx(float(M.ssim(x, y)[0]), abs=1e-9)
    gt = torch.from_numpy(head((32, 32, 32)))[None, None]
    pr = gt + 20 * torch.randn_like(gt)
    c = M.batch_metrics(pr.cuda(), gt.cuda(), window="full", region="head")
    h = M.batch_metrics(pr, gt, window="full", region="head")
    for k in h:
        assert c[k].device.type == "cuda"
        assert float(c[k][0]) == pytest.approx(float(h[k][0]), rel=1e-9)


def test_shared_3d_and_per_slice_path_equals_separate_functions():
    gt = head((34, 30, 32))
    pred = gt + np.random.default_rng(2).normal(0, 40, gt.shape)
    both = M.compute_metrics(pred, gt, window="full", region="head", metrics=("ssim", "ssim_slices"))
    p = M.to_window(torch.from_numpy(pred.astype(np.float32)), "full")  # as compute_metrics does
    g = M.to_window(torch.from_numpy(gt.astype(np.float32)), "full")
    m = M.head_mask(gt)
    assert both["ssim"] == pytest.approx(float(M.ssim(p, g, mask=m)[0]), abs=1e-6)
    assert both["ssim_slices"] == pytest.approx(float(M.ssim_slices(p, g, mask=m)[0]), abs=1e-6)
