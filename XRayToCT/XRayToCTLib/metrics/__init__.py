"""Image-similarity metrics for sCT evaluation: exact, documented, batched, CPU or CUDA.

What is computed (every paper in the field computes "SSIM" and "PSNR" a little differently;
see ``../shared/seeds/README.md``; this package says exactly what it does):

* **Windows.** Every metric of :func:`compute_metrics`, :func:`evaluate_pair` and
  :func:`batch_metrics` is computed in a stated intensity window
  (:data:`~XRayToCTLib.hu.WINDOWS`: ``brain`` L40/W40 = [20, 60] HU, ``full`` L0/W2000 =
  [-1000, 1000] HU, ``bone`` L400/W1800): both volumes (in HU) are clipped to the window and
  mapped linearly onto [0, 1], so the data range is 1. SSIM is not shift-invariant, so this
  mapping is part of its definition.
* **Regions.** ``whole``: every voxel. ``head``: the voxels of :func:`head_mask` of the
  **ground truth** (:func:`XRayToCTLib.hu.head_mask` with its defaults: > -500 HU, largest 3D
  connected component, enclosed holes filled).
* ``ssim``: 3D SSIM (Wang et al. 2004) with a Gaussian window (sigma 1.5 voxels, truncated at
  3.5 sigma: 11 taps), K1 0.01, K2 0.03, population (not sample) covariances; the mean of the
  SSIM map over the voxels at least 5 voxels from every border, exactly as
  ``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=...)`` computes it (the maps are computed in float32:
  the mean agrees with skimage's float64 to about 1e-7, asserted to 1e-6 in the tests). In a
  mask region it is the mean of the same map over the mask voxels in that interior (so an
  all-true mask gives the whole-volume value).
* ``ssim_slices``: the published convention of the X2CT-GAN code: the mean over the slices
  of the 2D SSIM of each slice, along each of the three axes in turn, averaged over the three
  axes; the 2D SSIM is skimage's (same window, border crop in-plane). In a mask region, each
  axis's value is the mean of its 2D SSIM maps over the mask voxels.
* ``psnr`` = ``10 log10(data_range^2 / mse)`` with the window's data range 1 (never an
  implied peak such as 4095); ``inf`` when the volumes are equal in the region.
* ``mse``, ``mae``: mean squared / absolute difference of the windowed [0, 1] values;
  ``mae_hu``: the mean absolute difference in HU of the window-clipped volumes (``mae`` times
  the window width: in the ``full`` window, the seed's clip at +-1000 HU).
* ``cosine``: cosine similarity of the flattened windowed volumes (region voxels only); 1 when
  both are all zero, 0 when only one is.
* ``fsim`` (2D only; seed 003): the feature similarity index of Zhang et al. 2011
  (:func:`fsim`). ``lpips`` (2D; 3D as the mean over the slices along the three axes) and
  ``fid`` need feature-network weights on disk: see :func:`lpips` and :func:`fid`.

HU are held in float32 (about 1e-4 HU of rounding at 1000 HU); means are accumulated in float64.

Shapes: the low-level functions (:func:`ssim`, :func:`psnr`, ...) take batches
``[B, 1, D, H, W]`` or ``[B, 1, H, W]`` (a plain 2D/3D array or a :class:`Volume` is a batch of
one) and return a tensor ``[B]`` in float64 (on the inputs' device). Intensities are used
as given: window them first (:func:`to_window`).

Edge cases: identical inputs give SSIM 1 and PSNR ``inf``; constant inputs are fine (SSIM of
two equal constants is 1); a NaN or infinite value in the prediction raises
:class:`~XRayToCTLib.errors.InputError`; a shape mismatch raises InputError (volumes on
different grids are resampled by :mod:`~XRayToCTLib.evaluation`, not here).

Modules: :mod:`.ssim` (SSIM, 3D and per slice), :mod:`.voxelwise` (MSE, MAE, PSNR, cosine),
:mod:`.fsim` (phase congruency, FSIM), :mod:`.learned` (LPIPS, FID: local weights only),
:mod:`.protocol` (windows x regions: :func:`batch_metrics`, :func:`compute_metrics`,
:func:`evaluate_pair`) and :mod:`.batch` (input handling). Everything public is importable from
this package.
"""
from __future__ import annotations

from ..constants import HEAD_THRESHOLD_HU
from ..hu import head_mask, window_range
from .batch import ArrayLike
from .fsim import fsim, phase_congruency
from .learned import (FID_ENV, LPIPS_ENV, LPIPSAlex, MetricUnavailable, fid, frechet_distance,
                      lpips)
from .protocol import (ALL_METRICS, DEFAULT_METRICS, REGIONS, batch_metrics, compute_metrics,
                       evaluate_pair, grids_match, hu_tensor, region_masks, same_grid, to_window,
                       window_metrics)
from .ssim import SSIM_DTYPE, gaussian_kernel, ssim, ssim_map, ssim_slices
from .voxelwise import cosine, mae, mse, psnr

__all__ = [
    "DEFAULT_METRICS", "ALL_METRICS", "REGIONS", "HEAD_THRESHOLD_HU", "ssim", "ssim_slices",
    "ssim_map", "psnr", "mse", "mae", "cosine", "fsim", "phase_congruency", "lpips", "fid",
    "frechet_distance", "head_mask", "to_window", "window_range", "compute_metrics",
    "evaluate_pair", "batch_metrics", "MetricUnavailable", "LPIPS_ENV", "FID_ENV",
    "window_metrics", "hu_tensor", "region_masks", "same_grid", "grids_match", "gaussian_kernel", "SSIM_DTYPE",
    "LPIPSAlex", "ArrayLike",
]
