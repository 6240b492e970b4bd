"""Image-similarity metrics for sCT evaluation: exact, documented, batched, CPU or CUDA.

What is computed (every paper in the field computes "SSIM" and "PSNR" a little differently;
see ``../shared/seeds/README.md``; this module says exactly what it does):

* **Windows.** Every metric of :func:`compute_metrics`, :func:`evaluate_pair` and
  :func:`batch_metrics` is computed in a stated intensity window
  (:data:`~XRayToCTLib.preprocess.WINDOWS`: ``brain`` L40/W40 = [20, 60] HU, ``full`` L0/W2000 =
  [-1000, 1000] HU, ``bone`` L400/W1800): both volumes (in HU) are clipped to the window and
  mapped linearly onto [0, 1], so the data range is 1. SSIM is not shift-invariant, so this
  mapping is part of its definition.
* **Regions.** ``whole``: every voxel. ``head``: the voxels of :func:`head_mask` of the
  **ground truth** (> -500 HU, largest 3D connected component, enclosed holes filled).
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
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from .errors import InputError
from .geometry import Volume

__all__ = [
    "DEFAULT_METRICS", "ALL_METRICS", "REGIONS", "HEAD_THRESHOLD_HU", "ssim", "ssim_slices",
    "ssim_map", "psnr", "mse", "mae", "cosine", "fsim", "phase_congruency", "lpips", "fid",
    "frechet_distance", "head_mask", "to_window", "window_range", "compute_metrics",
    "evaluate_pair", "batch_metrics", "MetricUnavailable", "LPIPS_ENV", "FID_ENV",
]

ArrayLike = Union[np.ndarray, torch.Tensor, Volume]

DEFAULT_METRICS = ("ssim", "psnr", "mse", "mae_hu", "cosine")
"""The metric set of :func:`compute_metrics` by default."""
ALL_METRICS = ("ssim", "ssim_slices", "psnr", "mse", "mae", "mae_hu", "cosine", "fsim",
               "lpips")
"""Names :func:`batch_metrics` knows (``fsim`` needs 2D inputs, ``lpips`` local weights)."""
REGIONS = ("head", "whole")
HEAD_THRESHOLD_HU = -500.0
"""Ground-truth voxels above this (HU) seed the head mask."""
LPIPS_ENV = "XRAYTOCT_LPIPS_WEIGHTS"
FID_ENV = "XRAYTOCT_FID_WEIGHTS"


class MetricUnavailable(RuntimeError):
    """A metric that cannot be computed here (no local feature-network weights)."""


# ----------------------------------------------------------------------------------------
# input handling
# ----------------------------------------------------------------------------------------
def _as_batch(x: ArrayLike, name: str = "input", dtype: torch.dtype = torch.float64,
              device: torch.device | None = None) -> torch.Tensor:
    """``[B, 1, *spatial]`` tensor of ``dtype``: a 2D/3D array or Volume is a batch of one;
    4D/5D inputs must have one channel."""
    if isinstance(x, Volume):
        x = x.array
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
    if t.dim() in (2, 3):
        t = t[None, None]
    elif t.dim() in (4, 5):
        if t.shape[1] != 1:
            raise ValueError(f"{name}: expected [B, 1, ...] with one channel, got {tuple(t.shape)}")
    else:
        raise ValueError(f"{name}: expected a 2D or 3D image or a batch [B, 1, ...], "
                         f"got shape {tuple(t.shape)}")
    return t.to(device=device or t.device, dtype=dtype)


def _pair(x: ArrayLike, y: ArrayLike, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    a = _as_batch(x, "x", dtype)
    b = _as_batch(y, "y", dtype, a.device)
    if a.shape != b.shape:
        raise InputError(None, f"shape mismatch: {tuple(a.shape)} vs {tuple(b.shape)} "
                               "(resample onto one grid first)")
    return a, b


def _mask_of(mask: ArrayLike | None, ref: torch.Tensor) -> torch.Tensor | None:
    if mask is None:
        return None
    m = _as_batch(mask, "mask", torch.bool, ref.device)
    if m.shape[0] == 1 and ref.shape[0] > 1:
        m = m.expand(ref.shape[0], *m.shape[1:])
    if m.shape != ref.shape:
        raise InputError(None, f"mask shape {tuple(m.shape)} differs from the images' "
                               f"{tuple(ref.shape)}")
    return m


def _check_range(data_range: float) -> float:
    r = float(data_range)
    if not (r > 0 and math.isfinite(r)):
        raise ValueError(f"data_range must be a positive finite number, got {data_range!r}")
    return r


def _region_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over all but the batch dim, or over the mask's voxels (NaN for an empty mask)."""
    flat = values.flatten(1)
    if mask is None:
        return flat.sum(dim=1, dtype=torch.float64) / flat.shape[1]
    m = mask.flatten(1)
    return (flat * m).sum(dim=1, dtype=torch.float64) / m.sum(dim=1, dtype=torch.float64)


# ----------------------------------------------------------------------------------------
# SSIM
# ----------------------------------------------------------------------------------------
def gaussian_kernel(sigma: float = 1.5, truncate: float = 3.5,
                    dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The 1D Gaussian of ``scipy.ndimage.gaussian_filter``: radius ``int(truncate*sigma+0.5)``
    (11 taps for sigma 1.5), normalised to sum 1."""
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    r = int(truncate * sigma + 0.5)
    x = torch.arange(-r, r + 1, dtype=torch.float64)
    w = torch.exp(-0.5 * (x / sigma) ** 2)
    return (w / w.sum()).to(dtype)


def _filter_valid(t: torch.Tensor, w: torch.Tensor, dims: Iterable[int]) -> torch.Tensor:
    """Separable correlation with the symmetric 1D kernel ``w`` along ``dims``, keeping only
    the positions where the kernel fits ("valid": each filtered dim shrinks by len(w) - 1).
    A sum of shifted slices: on CPU several times faster than conv1d/conv3d."""
    n_taps = w.numel()
    weights = [float(v) for v in w]
    for d in dims:
        n = t.shape[d] - n_taps + 1
        out = t.narrow(d, 0, n) * weights[0]
        for k in range(1, n_taps):
            out.add_(t.narrow(d, k, n), alpha=weights[k])
        t = out
    return t


_TOEPLITZ: dict[tuple, torch.Tensor] = {}


def _toeplitz(n: int, w: torch.Tensor) -> torch.Tensor:
    """``[n, n - len(w) + 1]`` matrix ``T`` with ``x @ T`` = the valid correlation of the rows
    of ``x`` with ``w`` (cached per size, kernel, dtype and device)."""
    key = (n, tuple(float(v) for v in w), w.dtype, str(w.device))
    if key not in _TOEPLITZ:
        k = w.numel()
        t = torch.zeros(n, n - k + 1, dtype=w.dtype, device=w.device)
        for j in range(n - k + 1):
            t[j:j + k, j] = w
        if len(_TOEPLITZ) > 64:
            _TOEPLITZ.clear()
        _TOEPLITZ[key] = t
    return _TOEPLITZ[key]


def _filter_valid_mm(t: torch.Tensor, w: torch.Tensor, d: int) -> torch.Tensor:
    """:func:`_filter_valid` along one dim as a banded matrix product (BLAS: on a CPU about
    twice as fast as the shifted sums when the data is in cache)."""
    tm = _toeplitz(t.shape[d], w)
    if d == t.dim() - 1:
        return t @ tm
    if d == t.dim() - 2:
        return tm.t() @ t
    return (t.movedim(d, -1) @ tm).movedim(-1, d)


def _crop(t: torch.Tensor, pad: int, dims: Iterable[int]) -> torch.Tensor:
    for d in dims:
        t = t.narrow(d, pad, t.shape[d] - 2 * pad)
    return t


def _ssim_from_moments(mom: torch.Tensor, c1: float, c2: float) -> torch.Tensor:
    ux, uy, uxx, uyy, uxy = mom.unbind(0)
    vx = uxx - ux * ux
    vy = uyy - uy * uy
    vxy = uxy - ux * uy
    num = (2 * ux * uy + c1) * (2 * vxy + c2)
    den = (ux * ux + uy * uy + c1) * (vx + vy + c2)
    return num / den


def _moments(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.stack([x, y, x * x, y * y, x * y])


SSIM_DTYPE = torch.float32
"""The SSIM maps are computed in float32 (the mean differs from skimage's float64 by
< 1e-6 on [0, 1] data: see Testing/test_metrics.py); every result is returned as float64."""


def _ssim_map_dims(a: torch.Tensor, b: torch.Tensor, w: torch.Tensor, c1: float, c2: float,
                   filt_dims: Sequence[int], slab: int = 8) -> torch.Tensor:
    """SSIM map of ``a``, ``b`` ``[B, 1, *spatial]`` with the window filtered (valid) along
    the spatial ``filt_dims`` only, so those dims are cropped by the window radius.

    Computed in slabs along the first spatial dim (with a halo of ``len(w) - 1`` when that
    dim is filtered: it is filtered first, by shifted sums, the others by banded matrix
    products) so that the five moment maps of a slab stay in the CPU's cache: several times
    faster than filtering whole volumes, same results."""
    taps = w.numel()
    spatial = list(range(2, a.dim()))
    cd = spatial[0]  # contiguous slabs along the slowest dim
    halo = taps - 1 if cd in filt_dims else 0
    n_out = a.shape[cd] - halo
    a, b = a.to(SSIM_DTYPE), b.to(SSIM_DTYPE)
    w = w.to(device=a.device, dtype=SSIM_DTYPE)
    if a.device.type != "cpu":
        slab = n_out  # on a GPU, one pass is fastest
    maps = []
    for s in range(0, n_out, slab):
        m = min(slab, n_out - s)
        pa, pb = a.narrow(cd, s, m + halo), b.narrow(cd, s, m + halo)
        mom = _moments(pa, pb)
        if halo:  # the slab dim first (shifted sums: it shrinks the slab), then BLAS
            mom = _filter_valid(mom, w, [cd + 1])
        for d in filt_dims:
            if not (halo and d == cd):
                mom = _filter_valid_mm(mom, w, d + 1)
        maps.append(_ssim_from_moments(mom, c1, c2))
    return torch.cat(maps, dim=cd) if len(maps) > 1 else maps[0]


def _check_window(shape: Sequence[int], taps: int, dims: Iterable[int]) -> None:
    for d in dims:
        if shape[d] < taps:
            raise ValueError(f"the SSIM window ({taps} voxels) exceeds the image extent "
                             f"{tuple(shape[2:])}")


def ssim_map(x: ArrayLike, y: ArrayLike, *, data_range: float = 1.0, sigma: float = 1.5,
             k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    """The SSIM map ``[B, 1, *spatial]`` over the interior (each spatial dim cropped by the
    window radius, 5 voxels for sigma 1.5), as skimage averages it."""
    a, b = _pair(x, y)
    r = _check_range(data_range)
    w = gaussian_kernel(sigma, dtype=a.dtype).to(a.device)
    spatial = list(range(2, a.dim()))
    _check_window(a.shape, w.numel(), spatial)
    return _ssim_map_dims(a, b, w, (k1 * r) ** 2, (k2 * r) ** 2, spatial).double()


def ssim(x: ArrayLike, y: ArrayLike, *, data_range: float = 1.0, sigma: float = 1.5,
         k1: float = 0.01, k2: float = 0.03, mask: ArrayLike | None = None) -> torch.Tensor:
    """Mean SSIM per batch item, ``[B]`` (2D or 3D Gaussian-window SSIM; see module doc).

    Args:
        x, y: images ``[B, 1, D, H, W]`` / ``[B, 1, H, W]`` (or one 2D/3D array or Volume).
        data_range: the intensity range of the data (1 for windowed values). Required
            conceptually: never guessed from the dtype or the values.
        sigma: Gaussian window standard deviation in voxels (window ``2*int(3.5*sigma+0.5)+1``).
        k1, k2: the SSIM constants (``C1 = (k1*data_range)^2``, ``C2 = (k2*data_range)^2``).
        mask: optional boolean region ``[B or 1, 1, ...]``: the map is averaged over the mask's
            voxels inside the border crop (NaN when none is there).
    """
    s = ssim_map(x, y, data_range=data_range, sigma=sigma, k1=k1, k2=k2)
    m = _mask_of(mask, _as_batch(x, "x"))
    pad = (gaussian_kernel(sigma).numel() - 1) // 2
    return _region_mean(s, None if m is None else _crop(m, pad, range(2, m.dim())))


def _ssim_3d_and_axial(a: torch.Tensor, b: torch.Tensor, w: torch.Tensor, c1: float, c2: float,
                       slab: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """The 3D SSIM map and the 2D SSIM maps of the slices along dim 2 of ``[B, 1, D, H, W]``,
    sharing the in-plane filtering (the 3D map filters the in-plane moments along D)."""
    taps = w.numel()
    a, b = a.to(SSIM_DTYPE), b.to(SSIM_DTYPE)
    w = w.to(device=a.device, dtype=SSIM_DTYPE)
    depth = a.shape[2]
    if a.device.type != "cpu":
        slab = depth
    inplane, maps2d = [], []
    for s in range(0, depth, slab):
        m = min(slab, depth - s)
        mom = _moments(a.narrow(2, s, m), b.narrow(2, s, m))
        mom = _filter_valid_mm(_filter_valid_mm(mom, w, 5), w, 4)
        inplane.append(mom)
        maps2d.append(_ssim_from_moments(mom, c1, c2))
    f_hw = torch.cat(inplane, dim=3)
    del inplane
    maps3d = []
    n_out = depth - taps + 1
    for s in range(0, n_out, slab):
        m = min(slab, n_out - s)
        maps3d.append(_ssim_from_moments(_filter_valid(f_hw.narrow(3, s, m + taps - 1), w, [3]),
                                         c1, c2))
    return torch.cat(maps3d, dim=2), torch.cat(maps2d, dim=2)


def _ssim_slices_from(a: torch.Tensor, b: torch.Tensor, masks: Mapping[str, torch.Tensor | None],
                      w: torch.Tensor, c1: float, c2: float,
                      axial: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Per-slice SSIM for each region: ``{region: Tensor[B]}`` (the 2D maps are shared;
    ``axial``: the maps of the slices along dim 2 when already computed)."""
    pad = (w.numel() - 1) // 2
    per_axis: dict[str, list[torch.Tensor]] = {r: [] for r in masks}
    for axis in (2, 3, 4):
        inplane = [d for d in (2, 3, 4) if d != axis]
        _check_window(a.shape, w.numel(), inplane)
        s = axial if (axis == 2 and axial is not None) else _ssim_map_dims(a, b, w, c1, c2, inplane)
        for region, m in masks.items():
            per_axis[region].append(_region_mean(s, None if m is None else _crop(m, pad, inplane)))
    return {r: torch.stack(v).mean(0).double() for r, v in per_axis.items()}


def ssim_slices(x: ArrayLike, y: ArrayLike, *, data_range: float = 1.0, sigma: float = 1.5,
                k1: float = 0.01, k2: float = 0.03, mask: ArrayLike | None = None) -> torch.Tensor:
    """The published per-slice convention, ``[B]``: for each of the three axes, the mean of
    the 2D SSIM (skimage's, see :func:`ssim`) of every slice along that axis; then the mean
    over the three axes. 3D inputs only."""
    a, b = _pair(x, y)
    if a.dim() != 5:
        raise ValueError(f"ssim_slices needs 3D volumes [B, 1, D, H, W], got {tuple(a.shape)}")
    r = _check_range(data_range)
    w = gaussian_kernel(sigma, dtype=a.dtype).to(a.device)
    return _ssim_slices_from(a, b, {"r": _mask_of(mask, a)}, w, (k1 * r) ** 2, (k2 * r) ** 2)["r"]


# ----------------------------------------------------------------------------------------
# PSNR, MSE, MAE, cosine
# ----------------------------------------------------------------------------------------
def mse(x: ArrayLike, y: ArrayLike, *, mask: ArrayLike | None = None) -> torch.Tensor:
    """Mean squared difference per batch item (over the mask's voxels when given), ``[B]``."""
    a, b = _pair(x, y)
    return _region_mean((a - b) ** 2, _mask_of(mask, a))


def mae(x: ArrayLike, y: ArrayLike, *, mask: ArrayLike | None = None) -> torch.Tensor:
    """Mean absolute difference per batch item (in the inputs' units), ``[B]``."""
    a, b = _pair(x, y)
    return _region_mean((a - b).abs(), _mask_of(mask, a))


def _psnr_from_mse(m: torch.Tensor, data_range: float) -> torch.Tensor:
    out = 10.0 * torch.log10(data_range ** 2 / m)
    return torch.where(m == 0, torch.full_like(m, math.inf), out)


def psnr(x: ArrayLike, y: ArrayLike, *, data_range: float,
         mask: ArrayLike | None = None) -> torch.Tensor:
    """``10 log10(data_range^2 / MSE)`` in dB per batch item, ``[B]``; ``inf`` when equal.
    ``data_range`` is required: it is the range of the data (1 for windowed values), never an
    implied peak."""
    return _psnr_from_mse(mse(x, y, mask=mask), _check_range(data_range))


def _cosine_values(a: torch.Tensor, b: torch.Tensor, m: torch.Tensor | None) -> torch.Tensor:
    fa, fb = a.flatten(1), b.flatten(1)
    if m is not None:
        mf = m.flatten(1)
        fa, fb = fa * mf, fb * mf
    dot = (fa * fb).sum(1, dtype=torch.float64)  # float64 accumulation
    na = (fa * fa).sum(1, dtype=torch.float64).sqrt()
    nb = (fb * fb).sum(1, dtype=torch.float64).sqrt()
    out = dot / (na * nb)
    both_zero = (na == 0) & (nb == 0)
    one_zero = (na == 0) ^ (nb == 0)
    out = torch.where(both_zero, torch.ones_like(out), out)
    return torch.where(one_zero, torch.zeros_like(out), out)


def cosine(x: ArrayLike, y: ArrayLike, *, mask: ArrayLike | None = None) -> torch.Tensor:
    """Cosine similarity of the flattened images (mask voxels only), ``[B]``: 1 when both are
    all zero, 0 when only one is."""
    a, b = _pair(x, y)
    return _cosine_values(a, b, _mask_of(mask, a))


# ----------------------------------------------------------------------------------------
# FSIM (Zhang, Zhang, Mou, Zhang 2011), following the authors' FeatureSIM.m / phasecong2.m
# ----------------------------------------------------------------------------------------
def _freq_grid(rows: int, cols: int, dtype, device):
    def rng(n: int) -> torch.Tensor:
        if n % 2:
            return torch.arange(-(n - 1) / 2, (n - 1) / 2 + 1, dtype=dtype, device=device) / max(n - 1, 1)
        return torch.arange(-n / 2, n / 2, dtype=dtype, device=device) / n
    y, x = torch.meshgrid(rng(rows), rng(cols), indexing="ij")
    radius = torch.fft.ifftshift(torch.sqrt(x * x + y * y))
    theta = torch.fft.ifftshift(torch.atan2(-y, x))
    return radius, theta


def phase_congruency(image: torch.Tensor, *, nscale: int = 4, norient: int = 4,
                     min_wavelength: float = 6.0, mult: float = 2.0, sigma_onf: float = 0.55,
                     d_theta_on_sigma: float = 1.2, k: float = 2.0,
                     epsilon: float = 1e-4) -> torch.Tensor:
    """Kovesi's phase congruency as FSIM's ``phasecong2.m`` computes it (log-Gabor filters,
    ``nscale`` scales x ``norient`` orientations, noise compensation), for ``[B, 1, H, W]``
    images; returns ``[B, 1, H, W]`` in [0, 1]."""
    im = image[:, 0]
    b, rows, cols = im.shape
    dt, dev = im.dtype, im.device
    radius, theta = _freq_grid(rows, cols, dt, dev)
    radius[0, 0] = 1.0
    sin_t, cos_t = torch.sin(theta), torch.cos(theta)
    lowpass = 1.0 / (1.0 + (radius / 0.45) ** (2 * 15))
    log_gabor = []
    for s in range(nscale):
        fo = 1.0 / (min_wavelength * mult ** s)
        g = torch.exp(-(torch.log(radius / fo)) ** 2 / (2 * math.log(sigma_onf) ** 2)) * lowpass
        g[0, 0] = 0.0
        log_gabor.append(g)
    theta_sigma = math.pi / norient / d_theta_on_sigma
    fft = torch.fft.fft2(im)
    energy_all = torch.zeros_like(im)
    an_all = torch.zeros_like(im)
    for o in range(norient):
        angle = o * math.pi / norient
        ds = sin_t * math.cos(angle) - cos_t * math.sin(angle)
        dc = cos_t * math.cos(angle) + sin_t * math.sin(angle)
        spread = torch.exp(-torch.atan2(ds, dc).abs() ** 2 / (2 * theta_sigma ** 2))
        sum_e = torch.zeros_like(im)
        sum_o = torch.zeros_like(im)
        sum_an = torch.zeros_like(im)
        eo, ifft_filters = [], []
        for s in range(nscale):
            filt = log_gabor[s] * spread
            ifft_filters.append(torch.fft.ifft2(filt).real * math.sqrt(rows * cols))
            resp = torch.fft.ifft2(fft * filt)
            eo.append(resp)
            sum_an = sum_an + resp.abs()
            sum_e = sum_e + resp.real
            sum_o = sum_o + resp.imag
            if s == 0:
                em_n = float((filt ** 2).sum())
        x_energy = torch.sqrt(sum_e ** 2 + sum_o ** 2) + epsilon
        mean_e, mean_o = sum_e / x_energy, sum_o / x_energy
        energy = torch.zeros_like(im)
        for resp in eo:
            e, od = resp.real, resp.imag
            energy = energy + e * mean_e + od * mean_o - (e * mean_o - od * mean_e).abs()
        median_e2n = torch.quantile((eo[0].abs() ** 2).reshape(b, -1), 0.5, dim=1)
        mean_e2n = -median_e2n / math.log(0.5)
        noise_power = mean_e2n / em_n  # [B]
        est_sum_an2 = sum(f ** 2 for f in ifft_filters).sum()
        est_sum_aiaj = sum(ifft_filters[i] * ifft_filters[j] for i in range(nscale - 1)
                           for j in range(i + 1, nscale)).sum()
        est_noise_energy2 = 2 * noise_power * est_sum_an2 + 4 * noise_power * est_sum_aiaj
        tau = torch.sqrt(est_noise_energy2 / 2)
        t = (tau * math.sqrt(math.pi / 2) + k * torch.sqrt((2 - math.pi / 2) * tau ** 2)) / 1.7
        energy_all = energy_all + torch.clamp(energy - t[:, None, None], min=0.0)
        an_all = an_all + sum_an
    return (energy_all / an_all)[:, None]


_SCHARR_X = torch.tensor([[3.0, 0.0, -3.0], [10.0, 0.0, -10.0], [3.0, 0.0, -3.0]]) / 16.0


def fsim(x: ArrayLike, y: ArrayLike, *, data_range: float = 1.0) -> torch.Tensor:
    """FSIM of grey 2D images ``[B, 1, H, W]`` (x the reference), ``[B]``, as the authors'
    ``FeatureSIM.m`` defines it: images scaled to 0..255 (``255 / data_range``), averaged and
    subsampled by ``F = max(1, round(min(H, W) / 256))``; phase congruency PC
    (:func:`phase_congruency`) and Scharr gradient magnitude G (zero padding);
    ``S = (2 PC1 PC2 + 0.85)/(PC1^2 + PC2^2 + 0.85) * (2 G1 G2 + 160)/(G1^2 + G2^2 + 160)``;
    FSIM = sum(S * PCm) / sum(PCm) with ``PCm = max(PC1, PC2)``. 1 for identical images."""
    a, b = _pair(x, y)
    if a.dim() != 4:
        raise ValueError(f"fsim takes 2D images [B, 1, H, W], got {tuple(a.shape)}")
    scale = 255.0 / _check_range(data_range)
    a, b = a * scale, b * scale
    f = max(1, round(min(a.shape[-2:]) / 256))
    if f > 1:
        lo, hi = f - 1 - f // 2, f // 2
        box = torch.ones(1, 1, f, f, dtype=a.dtype, device=a.device) / f ** 2
        a = F.conv2d(F.pad(a, (lo, hi, lo, hi)), box)[..., ::f, ::f]
        b = F.conv2d(F.pad(b, (lo, hi, lo, hi)), box)[..., ::f, ::f]
    pc1, pc2 = phase_congruency(a), phase_congruency(b)
    kx = _SCHARR_X.to(a.dtype).to(a.device)[None, None]
    ky = kx.transpose(-1, -2)

    def grad(im: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(F.conv2d(im, kx, padding=1) ** 2 + F.conv2d(im, ky, padding=1) ** 2)

    g1, g2 = grad(a), grad(b)
    s_pc = (2 * pc1 * pc2 + 0.85) / (pc1 ** 2 + pc2 ** 2 + 0.85)
    s_g = (2 * g1 * g2 + 160.0) / (g1 ** 2 + g2 ** 2 + 160.0)
    pcm = torch.maximum(pc1, pc2)
    return (s_pc * s_g * pcm).flatten(1).sum(1) / pcm.flatten(1).sum(1)


# ----------------------------------------------------------------------------------------
# LPIPS and FID: only with local weights (never downloaded)
# ----------------------------------------------------------------------------------------
def _weights_path(weights: str | os.PathLike | None, env: str, what: str) -> Path:
    p = weights if weights is not None else os.environ.get(env)
    if not p:
        raise MetricUnavailable(f"{what} unavailable: no local weights (pass a weights file or "
                                f"set {env}; nothing is downloaded)")
    path = Path(p)
    if not path.is_file():
        raise MetricUnavailable(f"{what} unavailable: no local weights: {path} is not a file")
    return path


def _load_state(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a plain tensor file (``weights_only=True``)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise InputError(path, f"not a weights file: {err}") from err
    if not isinstance(state, dict):
        raise InputError(path, "not a state dict of tensors")
    return state


class _LPIPSAlex(torch.nn.Module):
    """LPIPS v0.1 with the AlexNet backbone (Zhang et al. 2018): scaling layer, the 5 ReLU
    outputs of AlexNet's features, unit-normalised across channels, squared differences
    weighted by the learned 1x1 "lin" layers, spatially averaged and summed."""

    CHANNELS = (64, 192, 384, 256, 256)
    TAPS = (1, 4, 7, 9, 11)

    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU())
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in self.CHANNELS)
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))

    def load(self, state: Mapping[str, torch.Tensor]) -> None:
        """Accepts torchvision AlexNet names (``features.N.*``) or the ``lpips`` package's
        (``net.sliceK.N.*``), plus ``linK.model.1.weight`` / ``lins.K.weight``."""
        import re
        mapped = {}
        for key, val in state.items():
            m = re.fullmatch(r"(?:net\.slice\d\.|features\.)(\d+)\.(weight|bias)", key)
            if m:
                mapped[f"features.{m[1]}.{m[2]}"] = val
                continue
            m = re.fullmatch(r"lin(\d)\.model\.1\.weight|lins\.(\d)\.weight", key)
            if m:
                mapped[f"lins.{m[1] or m[2]}.weight"] = val
        missing = [k for k in self.state_dict() if k not in mapped and k not in ("shift", "scale")]
        if missing:
            raise MetricUnavailable(f"LPIPS unavailable: the weights file lacks {missing[:3]}")
        self.load_state_dict(mapped, strict=False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        total = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        hx, hy = (x - self.shift) / self.scale, (y - self.shift) / self.scale
        for i, layer in enumerate(self.features):
            hx, hy = layer(hx), layer(hy)
            if i in self.TAPS:
                k = self.TAPS.index(i)
                nx = hx / (hx.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
                ny = hy / (hy.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
                total = total + self.lins[k]((nx - ny) ** 2).mean(dim=(1, 2, 3))
        return total


_LPIPS_CACHE: dict[tuple[str, str], _LPIPSAlex] = {}


def lpips(x: ArrayLike, y: ArrayLike, *, weights: str | os.PathLike | None = None,
          data_range: float = 1.0, chunk: int = 64) -> torch.Tensor:
    """LPIPS (AlexNet, v0.1) of grey images in [0, data_range], ``[B]`` (lower is closer).

    2D inputs ``[B, 1, H, W]``: one value per image. 3D inputs ``[B, 1, D, H, W]``: the mean
    over every slice along each of the three axes. The grey value is repeated on the three
    colour channels and mapped to [-1, 1]. Needs a local weights file (``weights`` or the
    environment variable ``XRAYTOCT_LPIPS_WEIGHTS``; ``.safetensors`` or a tensor file read
    with ``weights_only=True``) holding AlexNet's ``features`` and LPIPS's ``lin`` layers;
    without one it raises :class:`MetricUnavailable` (nothing is downloaded)."""
    path = _weights_path(weights, LPIPS_ENV, "LPIPS")
    a, b = _pair(x, y, torch.float32)
    key = (str(path.resolve()), str(a.device))
    if key not in _LPIPS_CACHE:
        net = _LPIPSAlex()
        net.load(_load_state(path))
        _LPIPS_CACHE[key] = net.eval().to(a.device)
    net = _LPIPS_CACHE[key]
    r = _check_range(data_range)

    def run(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:  # [N, 1, H, W]
        outs = []
        with torch.no_grad():
            for s in range(0, p.shape[0], chunk):
                pp = (p[s:s + chunk] / r * 2 - 1).expand(-1, 3, -1, -1)
                qq = (q[s:s + chunk] / r * 2 - 1).expand(-1, 3, -1, -1)
                outs.append(net(pp, qq))
        return torch.cat(outs)

    if a.dim() == 4:
        return run(a, b).double()
    per_axis = []
    for axis in (2, 3, 4):
        sa = a.movedim(axis, 1).flatten(0, 1)
        sb = b.movedim(axis, 1).flatten(0, 1)
        per_axis.append(run(sa, sb).view(a.shape[0], -1).mean(1))
    return torch.stack(per_axis).mean(0).double()


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets ``[N, C]``:
    ``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))`` (the formula of FID)."""
    import scipy.linalg
    fa = np.asarray(features_a, dtype=np.float64)
    fb = np.asarray(features_b, dtype=np.float64)
    if fa.ndim != 2 or fb.ndim != 2 or fa.shape[1] != fb.shape[1] or min(len(fa), len(fb)) < 2:
        raise ValueError(f"need two feature sets [N >= 2, C] with equal C, got {fa.shape}, {fb.shape}")
    mu_a, mu_b = fa.mean(0), fb.mean(0)
    sa, sb = np.atleast_2d(np.cov(fa, rowvar=False)), np.atleast_2d(np.cov(fb, rowvar=False))
    import warnings
    with warnings.catch_warnings():  # few samples: singular covariances are expected
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        covmean = scipy.linalg.sqrtm(sa @ sb)
    if not np.all(np.isfinite(covmean)):
        eps = 1e-6 * np.eye(sa.shape[0])
        covmean = scipy.linalg.sqrtm((sa + eps) @ (sb + eps))
    covmean = np.real(covmean)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(sa) + np.trace(sb) - 2 * np.trace(covmean))


def fid(images_a: ArrayLike, images_b: ArrayLike, *, weights: str | os.PathLike | None = None,
        data_range: float = 1.0) -> float:
    """FID between two sets of grey 2D images ``[N, 1, H, W]`` in [0, data_range].

    The Fréchet distance (:func:`frechet_distance`) of feature-network activations. The
    feature network is the LPIPS AlexNet backbone (global-average-pooled last ReLU, 256
    features) loaded from local weights (``weights`` or ``XRAYTOCT_FID_WEIGHTS``); this is
    **not** the Inception-v3 FID of the literature, so its values are comparable only with
    each other. Without weights: :class:`MetricUnavailable` (nothing is downloaded)."""
    path = _weights_path(weights, FID_ENV, "FID")
    a = _as_batch(images_a, "images_a", torch.float32)
    b = _as_batch(images_b, "images_b", torch.float32)
    if a.dim() != 4 or b.dim() != 4:
        raise ValueError("fid takes two batches of 2D images [N, 1, H, W]")
    net = _LPIPSAlex()
    state = _load_state(path)
    net.features.load_state_dict({k.split(".", 1)[1]: v for k, v in state.items()
                                  if k.startswith("features.")}, strict=True)
    r = _check_range(data_range)
    with torch.no_grad():
        feats = [net.features(((t / r * 2 - 1).expand(-1, 3, -1, -1) - net.shift) / net.scale
                              ).mean(dim=(2, 3)).numpy() for t in (a, b)]
    return frechet_distance(*feats)


# ----------------------------------------------------------------------------------------
# head mask and windows
# ----------------------------------------------------------------------------------------
def _head_mask_np(hu: np.ndarray, threshold: float) -> np.ndarray:
    from scipy import ndimage
    fg = hu > threshold
    lab, n = ndimage.label(fg)
    if n == 0:
        return fg
    counts = np.bincount(lab.ravel())
    counts[0] = 0
    mask = lab == int(np.argmax(counts))
    # fill enclosed holes: background components that do not touch the border
    bg, nb = ndimage.label(~mask)
    if nb:
        border = np.zeros(nb + 1, dtype=bool)
        for d in range(bg.ndim):
            for idx in (0, -1):
                border[np.unique(np.take(bg, idx, axis=d))] = True
        mask |= ~border[bg]
    return mask


def head_mask(gt_hu: ArrayLike, *, threshold: float = HEAD_THRESHOLD_HU) -> np.ndarray | torch.Tensor:
    """The evaluation's head region: ``gt_hu > threshold`` (-500 HU), its largest connected
    component (face connectivity), with enclosed holes filled (background components not
    touching the border; air spaces open to the outside stay out). Same shape as the input:
    a bool ndarray for an ndarray or a Volume, a bool tensor (same device) for a tensor;
    batches ``[B, 1, ...]`` are masked per item."""
    arr = gt_hu.array if isinstance(gt_hu, Volume) else gt_hu
    is_t = isinstance(arr, torch.Tensor)
    a = arr.detach().cpu().numpy() if is_t else np.asarray(arr)
    if a.ndim in (4, 5):
        out = np.stack([_head_mask_np(a[i, 0], threshold)[None] for i in range(a.shape[0])])
    else:
        out = _head_mask_np(a, threshold)
    return torch.from_numpy(out).to(arr.device) if is_t else out


def window_range(window: str | Sequence[float]) -> tuple[float, float]:
    """``(lo, hi)`` HU of a named window (:data:`~XRayToCTLib.preprocess.WINDOWS`) or of a
    ``(level, width)`` pair."""
    from .preprocess import get_window
    level, width = get_window(window)
    return level - width / 2.0, level + width / 2.0


def to_window(hu: torch.Tensor, window: str | Sequence[float]) -> torch.Tensor:
    """HU clipped to the window and mapped linearly onto [0, 1] (data range 1)."""
    lo, hi = window_range(window)
    return (hu - lo).mul_(1.0 / (hi - lo)).clamp_(0.0, 1.0)


# ----------------------------------------------------------------------------------------
# the evaluation's metric sets
# ----------------------------------------------------------------------------------------
def _check_finite(t: torch.Tensor, what: str) -> None:
    if math.isfinite(float(t.sum(dtype=torch.float64))):  # one fast pass; NaN/inf propagate
        return
    bad = ~torch.isfinite(t)
    if bool(bad.any()):
        raise InputError(None, f"the {what} has {int(bad.sum())} NaN or infinite voxels")


def _window_metrics(pred: torch.Tensor, gt: torch.Tensor, window: str | Sequence[float],
                    masks: Mapping[str, torch.Tensor | None], metrics: Sequence[str],
                    lpips_weights: str | os.PathLike | None = None
                    ) -> dict[tuple[str, str], torch.Tensor]:
    """All ``metrics`` in one window for several regions at once (the SSIM maps are computed
    once per window). Returns ``{(metric, region): Tensor[B]}``."""
    unknown = [m for m in metrics if m not in ALL_METRICS]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; choose from {list(ALL_METRICS)}")
    lo, hi = window_range(window)
    x, y = to_window(pred, window), to_window(gt, window)
    out: dict[tuple[str, str], torch.Tensor] = {}
    w = gaussian_kernel(dtype=x.dtype).to(x.device)
    pad = (w.numel() - 1) // 2
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    spatial = list(range(2, x.dim()))
    axial = None
    if "ssim" in metrics:
        _check_window(x.shape, w.numel(), spatial)
        if "ssim_slices" in metrics and x.dim() == 5:
            smap, axial = _ssim_3d_and_axial(x, y, w, c1, c2)
        else:
            smap = _ssim_map_dims(x, y, w, c1, c2, spatial)
        for region, m in masks.items():
            out["ssim", region] = _region_mean(smap, None if m is None else _crop(m, pad, spatial)).double()
        del smap
    if "ssim_slices" in metrics:
        if x.dim() != 5:
            raise ValueError("ssim_slices needs 3D volumes")
        for region, v in _ssim_slices_from(x, y, masks, w, c1, c2, axial).items():
            out["ssim_slices", region] = v
    diff = x - y
    for region, m in masks.items():
        if any(k in metrics for k in ("psnr", "mse", "mae", "mae_hu")):
            m_se = _region_mean(diff * diff, m)
            m_ae = _region_mean(diff.abs(), m)
            if "mse" in metrics:
                out["mse", region] = m_se
            if "psnr" in metrics:
                out["psnr", region] = _psnr_from_mse(m_se, 1.0)
            if "mae" in metrics:
                out["mae", region] = m_ae
            if "mae_hu" in metrics:
                out["mae_hu", region] = m_ae * (hi - lo)
        if "cosine" in metrics:
            out["cosine", region] = _cosine_values(x, y, m)
        if "fsim" in metrics:
            if x.dim() != 4:
                raise ValueError("fsim is defined for 2D images only")
            if m is not None:
                raise ValueError("fsim is a whole-image metric: use region 'whole'")
            out["fsim", region] = fsim(x, y)
        if "lpips" in metrics:
            if m is not None:
                raise ValueError("lpips is a whole-image metric: use region 'whole'")
            out["lpips", region] = lpips(x, y, weights=lpips_weights)
    return out


def _hu_tensor(v: ArrayLike, what: str) -> torch.Tensor:
    """HU as float32 ``[B, 1, ...]`` (float32 holds HU exactly enough: 1e-4 HU at 1000 HU)."""
    t = _as_batch(v, what, torch.float32)
    _check_finite(t, what)
    return t


def _same_grid(pred: ArrayLike, gt: ArrayLike) -> None:
    if isinstance(pred, Volume) and isinstance(gt, Volume):
        same = (pred.array.shape == gt.array.shape
                and np.allclose(pred.spacing, gt.spacing, rtol=1e-5)
                and np.allclose(pred.origin, gt.origin, atol=1e-3)
                and np.allclose(pred.direction, gt.direction, atol=1e-5))
        if not same:
            raise InputError(None, "the prediction and the ground truth are on different grids "
                                   "(resample onto the ground truth's grid first; "
                                   "XRayToCTLib.evaluation does)")


def _masks_for(gt: torch.Tensor, regions: Sequence[str],
               mask: ArrayLike | None = None) -> dict[str, torch.Tensor | None]:
    out: dict[str, torch.Tensor | None] = {}
    for r in regions:
        if r == "whole":
            out[r] = None
        elif r == "head":
            out[r] = _mask_of(mask, gt) if mask is not None else head_mask(gt)
            if not bool(out[r].flatten(1).any(1).all()):
                raise InputError(None, "the ground truth has no head (no voxel above "
                                       f"{HEAD_THRESHOLD_HU:g} HU): use region 'whole'")
        else:
            raise ValueError(f"unknown region {r!r}; choose from {list(REGIONS)}")
    return out


def batch_metrics(pred: ArrayLike, gt: ArrayLike, *, window: str | Sequence[float] = "brain",
                  region: str = "head", metrics: Sequence[str] = DEFAULT_METRICS,
                  mask: ArrayLike | None = None) -> dict[str, torch.Tensor]:
    """Metrics of a batch of HU volumes ``[B, 1, D, H, W]`` (or 2D ``[B, 1, H, W]``) in one
    window and region: ``{metric: Tensor[B]}`` (float64, on the inputs' device). ``mask``
    replaces the head mask of the ground truth for region ``head``. See the module doc for
    the definitions; PSNR is ``inf`` for equal inputs."""
    p, g = _hu_tensor(pred, "prediction"), _hu_tensor(gt, "ground truth")
    if p.shape != g.shape:
        raise InputError(None, f"shape mismatch: prediction {tuple(p.shape)} vs ground truth "
                               f"{tuple(g.shape)}")
    vals = _window_metrics(p, g, window, _masks_for(g, [region], mask), list(metrics))
    return {m: vals[m, region] for m in metrics}


def compute_metrics(pred_hu: ArrayLike, gt_hu: ArrayLike, *, window: str | Sequence[float] = "brain",
                    region: str = "head", metrics: Sequence[str] = DEFAULT_METRICS
                    ) -> dict[str, float]:
    """Metrics of one prediction against its ground truth, both in HU on the same grid
    (ndarray, tensor or :class:`Volume`): ``{metric: value}``."""
    _same_grid(pred_hu, gt_hu)
    return {k: float(v[0]) for k, v in batch_metrics(pred_hu, gt_hu, window=window,
                                                      region=region, metrics=metrics).items()}


def evaluate_pair(pred_hu: ArrayLike, gt_hu: ArrayLike, *,
                  windows: Sequence[str | Sequence[float]] = ("brain", "full"),
                  regions: Sequence[str] = ("head", "whole"),
                  metrics: Sequence[str] = DEFAULT_METRICS) -> list[dict[str, Any]]:
    """Every metric in every window and region for one pair (same grid, HU): rows
    ``{"metric", "window", "region", "value"}`` (``window`` is its name, or ``"L/W"``)."""
    _same_grid(pred_hu, gt_hu)
    p, g = _hu_tensor(pred_hu, "prediction"), _hu_tensor(gt_hu, "ground truth")
    if p.shape != g.shape:
        raise InputError(None, f"shape mismatch: prediction {tuple(p.shape)} vs ground truth "
                               f"{tuple(g.shape)} (no geometry to resample with)")
    masks = _masks_for(g, regions)
    rows = []
    for win in windows:
        name = win if isinstance(win, str) else "{:g}/{:g}".format(*win)
        vals = _window_metrics(p, g, win, masks, list(metrics))
        for m in metrics:
            for r in regions:
                rows.append({"metric": m, "window": name, "region": r,
                             "value": float(vals[m, r][0])})
    return rows
