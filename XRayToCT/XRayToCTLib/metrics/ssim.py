"""SSIM: the Gaussian-window 3D SSIM and the per-slice (2D) convention, batched, CPU or CUDA.

The definitions (skimage's, exactly) are in the package doc, :mod:`XRayToCTLib.metrics`.
"""
from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import torch

from .batch import ArrayLike, check_range, crop, mask_of, pair, region_mean

__all__ = ["SSIM_DTYPE", "gaussian_kernel", "ssim_map", "ssim", "ssim_slices", "ssim_map_dims",
           "ssim_3d_and_axial", "ssim_slices_from", "check_window"]


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


def ssim_map_dims(a: torch.Tensor, b: torch.Tensor, w: torch.Tensor, c1: float, c2: float,
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


def check_window(shape: Sequence[int], taps: int, dims: Iterable[int]) -> None:
    """ValueError when the window does not fit in the image along one of ``dims``."""
    for d in dims:
        if shape[d] < taps:
            raise ValueError(f"the SSIM window ({taps} voxels) exceeds the image extent "
                             f"{tuple(shape[2:])}")


def ssim_map(x: ArrayLike, y: ArrayLike, *, data_range: float = 1.0, sigma: float = 1.5,
             k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    """The SSIM map ``[B, 1, *spatial]`` over the interior (each spatial dim cropped by the
    window radius, 5 voxels for sigma 1.5), as skimage averages it."""
    a, b = pair(x, y)
    r = check_range(data_range)
    w = gaussian_kernel(sigma, dtype=a.dtype).to(a.device)
    spatial = list(range(2, a.dim()))
    check_window(a.shape, w.numel(), spatial)
    return ssim_map_dims(a, b, w, (k1 * r) ** 2, (k2 * r) ** 2, spatial).double()


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
    a, b = pair(x, y)
    s = ssim_map(a, b, data_range=data_range, sigma=sigma, k1=k1, k2=k2)
    m = mask_of(mask, a)
    pad = (gaussian_kernel(sigma).numel() - 1) // 2
    return region_mean(s, None if m is None else crop(m, pad, range(2, m.dim())))


def ssim_3d_and_axial(a: torch.Tensor, b: torch.Tensor, w: torch.Tensor, c1: float, c2: float,
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


def ssim_slices_from(a: torch.Tensor, b: torch.Tensor, masks: Mapping[str, torch.Tensor | None],
                     w: torch.Tensor, c1: float, c2: float,
                     axial: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Per-slice SSIM for each region: ``{region: Tensor[B]}`` (the 2D maps are shared;
    ``axial``: the maps of the slices along dim 2 when already computed)."""
    pad = (w.numel() - 1) // 2
    per_axis: dict[str, list[torch.Tensor]] = {r: [] for r in masks}
    for axis in (2, 3, 4):
        inplane = [d for d in (2, 3, 4) if d != axis]
        check_window(a.shape, w.numel(), inplane)
        s = axial if (axis == 2 and axial is not None) else ssim_map_dims(a, b, w, c1, c2, inplane)
        for region, m in masks.items():
            per_axis[region].append(region_mean(s, None if m is None else crop(m, pad, inplane)))
    return {r: torch.stack(v).mean(0).double() for r, v in per_axis.items()}


def ssim_slices(x: ArrayLike, y: ArrayLike, *, data_range: float = 1.0, sigma: float = 1.5,
                k1: float = 0.01, k2: float = 0.03, mask: ArrayLike | None = None) -> torch.Tensor:
    """The published per-slice convention, ``[B]``: for each of the three axes, the mean of
    the 2D SSIM (skimage's, see :func:`ssim`) of every slice along that axis; then the mean
    over the three axes. 3D inputs only."""
    a, b = pair(x, y)
    if a.dim() != 5:
        raise ValueError(f"ssim_slices needs 3D volumes [B, 1, D, H, W], got {tuple(a.shape)}")
    r = check_range(data_range)
    w = gaussian_kernel(sigma, dtype=a.dtype).to(a.device)
    return ssim_slices_from(a, b, {"r": mask_of(mask, a)}, w, (k1 * r) ** 2, (k2 * r) ** 2)["r"]
