"""Hounsfield-unit helpers shared by the whole library: intensity windows and the head mask.

* **Windows** (:data:`WINDOWS`, :func:`get_window`, :func:`window_range`, :func:`apply_window`,
  :func:`window_to_hu`): a window ``(level, width)`` maps ``[level - width/2, level + width/2]``
  HU linearly onto [0, 1].
* **The head mask** (:func:`head_mask`, :func:`head_center`): the voxels above a threshold
  (:data:`~XRayToCTLib.constants.HEAD_THRESHOLD_HU`), their largest connected component,
  and optionally a morphological opening first, enclosed holes filled after, and a coarser
  grid to compute it on. Its two uses are two settings of the one function:

  - the evaluation's ``head`` region (:mod:`~XRayToCTLib.metrics`): the defaults, full
    resolution, holes filled: ``head_mask(gt_hu)``;
  - the centre of the head used to place and align grids (:mod:`~XRayToCTLib.preprocess`):
    at 2 mm, after a 1-voxel opening, holes kept:
    ``head_mask(volume, threshold, coarse_mm=2.0, opening=1, fill_holes=False)``, whose
    centroid is :func:`head_center`.

Ground layer: numpy, scipy, SimpleITK and the other ground modules (:mod:`~XRayToCTLib.io`
for the one Volume <-> SimpleITK conversion) only. PyTorch
is not imported (a tensor given to :func:`head_mask` is recognised because whoever made it
has imported torch): the preprocessing works without it.
"""
from __future__ import annotations

import sys
from typing import Any, Sequence, Union

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from .constants import HEAD_THRESHOLD_HU
from .errors import InputError
from .geometry import Grid, Volume
from .io import sitk_to_volume, volume_to_sitk

__all__ = [
    "WINDOWS", "get_window", "window_range", "apply_window", "window_to_hu", "head_mask",
    "head_center", "coarsen", "otsu_threshold", "antialias_sigma", "smooth_image",
]

WINDOWS: dict[str, tuple[float, float]] = {
    # the seed's "brain parenchyma" window: level 40 HU, width 40 HU -> [20, 60] HU
    "brain": (40.0, 40.0),
    # the seed's clip range as a window: [-1000, 1000] HU
    "full": (0.0, 2000.0),
    # the common radiology bone window (W 1800 / L 400) -> [-500, 1300] HU. After the seed's
    # clip at 1000 HU the top of this window is not reached (1000 HU maps to 0.833).
    "bone": (400.0, 1800.0),
    # the common soft-tissue window (W 400 / L 40) -> [-160, 240] HU
    "soft_tissue": (40.0, 400.0),
}
"""Named intensity windows as ``(level, width)`` in HU; a window maps
``[level - width/2, level + width/2]`` linearly onto [0, 1]."""

ImageLike = Union[np.ndarray, Volume, sitk.Image, Any]
"""An ndarray, a torch tensor, a :class:`Volume` or a SimpleITK image."""


# ----------------------------------------------------------------------------------------
# windows
# ----------------------------------------------------------------------------------------
def get_window(window: str | Sequence[float]) -> tuple[float, float]:
    """``(level, width)`` of a named window (see :data:`WINDOWS`) or of a pair."""
    if isinstance(window, str):
        if window not in WINDOWS:
            raise ValueError(f"unknown window {window!r}; choose one of {sorted(WINDOWS)} "
                             "or give (level, width)")
        return WINDOWS[window]
    lw = np.asarray(window, dtype=float).reshape(-1)
    if lw.size != 2 or not np.all(np.isfinite(lw)) or lw[1] <= 0:
        raise ValueError(f"a window is (level, width) with width > 0, got {window!r}")
    return float(lw[0]), float(lw[1])


def window_range(window: str | Sequence[float]) -> tuple[float, float]:
    """``(lo, hi)`` HU of a named window (:data:`WINDOWS`) or of a ``(level, width)`` pair."""
    level, width = get_window(window)
    return level - width / 2.0, level + width / 2.0


def apply_window(volume_or_array: Volume | np.ndarray,
                 window: str | Sequence[float] = "brain") -> Volume | np.ndarray:
    """Map HU linearly onto [0, 1]: ``level - width/2 -> 0``, ``level + width/2 -> 1``, values
    outside clipped (L40/W40: 20 HU -> 0, 40 -> 0.5, 60 -> 1). float32; a Volume keeps its
    geometry and records the window in its metadata."""
    level, width = get_window(window)
    lo = level - width / 2.0
    arr = volume_or_array.array if isinstance(volume_or_array, Volume) else np.asarray(volume_or_array)
    out = np.clip((arr.astype(np.float64) - lo) / width, 0.0, 1.0).astype(np.float32)
    if isinstance(volume_or_array, Volume):
        return volume_or_array.with_array(out, window=[level, width], units="window [0, 1]")
    return out


def window_to_hu(volume_or_array: Volume | np.ndarray,
                 window: str | Sequence[float] = "brain") -> Volume | np.ndarray:
    """The inverse of :func:`apply_window` (exact inside the window; 0 and 1 give its ends)."""
    level, width = get_window(window)
    arr = volume_or_array.array if isinstance(volume_or_array, Volume) else np.asarray(volume_or_array)
    out = (arr.astype(np.float64) * width + (level - width / 2.0)).astype(np.float32)
    if isinstance(volume_or_array, Volume):
        v = volume_or_array.with_array(out, units="HU")
        v.metadata.pop("window", None)
        return v
    return out


# ----------------------------------------------------------------------------------------
# coarsening
# ----------------------------------------------------------------------------------------
def _as_volume(image: Volume | sitk.Image) -> Volume:
    return image if isinstance(image, Volume) else sitk_to_volume(image)


def antialias_sigma(factor: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Gaussian sigma (mm) before downsampling by ``factor`` (per axis, >1 means coarser):
    the variance of a ``factor``-voxel box filter, ``sqrt((f^2 - 1) / 12)`` input voxels, so
    that smoothing + linear resampling blurs like block averaging; 0 where ``f <= 1``."""
    f = np.maximum(np.asarray(factor, float), 1.0)
    return np.sqrt((f * f - 1.0) / 12.0) * np.asarray(spacing, float)


def smooth_image(image: sitk.Image, sigma_mm: Sequence[float]) -> sitk.Image:
    """``image`` smoothed with a Gaussian of ``sigma_mm`` per axis (unchanged where 0)."""
    sig = np.asarray(sigma_mm, float)
    if not np.any(sig > 1e-6):
        return image
    return sitk.DiscreteGaussian(image, [float(s * s) for s in sig], 64, 0.01, True)


def coarsen(image: sitk.Image | Volume, spacing: float, default: float | None = None
            ) -> sitk.Image | Volume:
    """``image`` resampled in its own frame so that no axis is finer than ``spacing`` mm
    (coarser axes are kept), on a grid with the same centre. Anti-aliased: a Gaussian of the
    variance of a box filter of the downsampling factor (``sqrt((f^2 - 1) / 12)`` voxels),
    then linear interpolation, float32; outside the image ``default`` (the image's minimum
    when None). Returns the same kind as given (a Volume keeps no metadata); an image that is
    already coarse enough is returned as it is."""
    as_volume = isinstance(image, Volume)
    img = volume_to_sitk(image, np.float32) if as_volume else image
    if img.GetPixelID() != sitk.sitkFloat32:
        img = sitk.Cast(img, sitk.sitkFloat32)
    old = np.asarray(img.GetSpacing(), float)
    new = np.maximum(old, float(spacing))
    if np.allclose(new, old, rtol=1e-6):
        return image
    if default is None:
        default = float(np.min(sitk.GetArrayViewFromImage(img)))
    g = Grid(img.GetSize(), old, img.GetOrigin(),
             np.asarray(img.GetDirection(), float).reshape(3, 3)).coarsened(float(spacing))
    img = smooth_image(img, antialias_sigma(new / old, old))
    out = sitk.Resample(img, list(g.size), sitk.Transform(), sitk.sitkLinear, tuple(g.origin),
                        tuple(g.spacing), img.GetDirection(), float(default), sitk.sitkFloat32)
    return sitk_to_volume(out) if as_volume else out


# ----------------------------------------------------------------------------------------
# the head mask
# ----------------------------------------------------------------------------------------
def otsu_threshold(values: np.ndarray, bins: int = 128) -> float:
    """Otsu's threshold of ``values`` (ITK's, ``bins`` histogram bins): the air/tissue level
    of an image in any units."""
    f = sitk.OtsuThresholdImageFilter()
    f.SetNumberOfHistogramBins(int(bins))
    f.Execute(sitk.GetImageFromArray(np.ascontiguousarray(values, dtype=np.float32)))
    return float(f.GetThreshold())


def _largest_component(fg: np.ndarray) -> np.ndarray:
    """The largest face-connected component of ``fg`` (the first in raster order on a tie)."""
    lab, n = ndimage.label(fg)
    if n == 0:
        return fg
    counts = np.bincount(lab.ravel())
    counts[0] = 0
    return lab == int(np.argmax(counts))


def _fill_enclosed(mask: np.ndarray) -> np.ndarray:
    """``mask`` with its enclosed holes filled: the face-connected background components
    that do not touch the border (air spaces open to the outside stay out)."""
    bg, nb = ndimage.label(~mask)
    if nb:
        border = np.zeros(nb + 1, dtype=bool)
        for d in range(bg.ndim):
            for idx in (0, -1):
                border[np.unique(np.take(bg, idx, axis=d))] = True
        mask |= ~border[bg]
    return mask


def _open(fg: np.ndarray, radius: int) -> np.ndarray:
    """ITK's binary opening by a ball of ``radius`` voxels, kept only when something is left
    (it detaches thin things touching the head: table, blankets, tubes)."""
    img = sitk.GetImageFromArray(fg.astype(np.uint8))
    opened = sitk.GetArrayFromImage(sitk.BinaryMorphologicalOpening(img, [int(radius)] * fg.ndim))
    return opened.astype(bool) if opened.any() else fg


def _mask_array(hu: np.ndarray, threshold: float | None, fill_holes: bool,
                opening: int) -> np.ndarray:
    thr = otsu_threshold(hu) if threshold is None else float(threshold)
    mask = hu > thr
    if opening > 0:
        mask = _open(mask, opening)
    mask = _largest_component(mask)
    return _fill_enclosed(mask) if fill_holes else mask


def head_mask(image: ImageLike, threshold: float | None = HEAD_THRESHOLD_HU, *,
              fill_holes: bool = True, opening: int = 0, coarse_mm: float | None = None):
    """The head: ``image > threshold``, its largest connected component (face connectivity).

    Args:
        image: HU as an ndarray or a torch tensor (2D, 3D, or a batch ``[B, 1, ...]`` masked
            per item), a :class:`Volume` or a SimpleITK image.
        threshold: HU (default :data:`~XRayToCTLib.constants.HEAD_THRESHOLD_HU`, -500);
            None uses Otsu's threshold (:func:`otsu_threshold`), which finds the air/tissue
            level of an image in any units (a Cormack-unit template, say).
        fill_holes: fill the enclosed holes (background components not touching the border;
            air spaces open to the outside stay out).
        opening: radius in voxels of a binary opening (ITK's ball) applied before the
            largest component is taken, to detach thin things touching the head; 0: none.
        coarse_mm: compute the mask on a grid no finer than this (mm; :func:`coarsen`), for
            a Volume or SimpleITK image only.

    Returns:
        Without ``coarse_mm``: a bool mask of the input's shape, an ndarray (for an ndarray,
        a Volume or a SimpleITK image, indexed ``[k, j, i]``) or a tensor on the input's
        device. With ``coarse_mm`` the mask is on a new grid and comes with it: a uint8
        :class:`Volume` (metadata ``kind: head mask``).

    The evaluation's head region is the default, ``head_mask(gt_hu)``; the mask whose centroid
    places the preprocessing's grids is ``head_mask(volume, threshold, coarse_mm=2.0,
    opening=1, fill_holes=False)`` (see :func:`head_center`).
    """
    if coarse_mm is not None:
        if not isinstance(image, (Volume, sitk.Image)):
            raise ValueError("a coarse head mask needs the image's geometry: give a Volume "
                             "or a SimpleITK image")
        small = _as_volume(coarsen(image, coarse_mm))
        arr = np.asarray(small.array, dtype=np.float32)
        mask = _mask_array(arr, threshold, fill_holes, opening)
        return Volume(mask.astype(np.uint8), small.spacing, small.origin, small.direction,
                      {"kind": "head mask"})
    if isinstance(image, sitk.Image):
        image = sitk.GetArrayFromImage(image)
    arr = image.array if isinstance(image, Volume) else image
    torch = sys.modules.get("torch")  # a tensor exists only if torch has been imported
    is_t = torch is not None and isinstance(arr, torch.Tensor)
    a = arr.detach().cpu().numpy() if is_t else np.asarray(arr)
    if a.ndim in (4, 5):
        out = np.stack([_mask_array(a[i, 0], threshold, fill_holes, opening)[None]
                        for i in range(a.shape[0])])
    else:
        out = _mask_array(a, threshold, fill_holes, opening)
    return torch.from_numpy(out).to(arr.device) if is_t else out


def head_center(image: Volume | sitk.Image, threshold: float | None = HEAD_THRESHOLD_HU, *,
                coarse_mm: float | None = 2.0, opening: int = 1,
                fill_holes: bool = False) -> np.ndarray:
    """LPS centroid (mm) of :func:`head_mask` with the same arguments; by default the mask
    that places the preprocessing's grids (2 mm, 1-voxel opening, holes kept). Raises
    :class:`~XRayToCTLib.errors.InputError` when no voxel is above the threshold."""
    vol = _as_volume(image)
    mask = head_mask(vol, threshold, fill_holes=fill_holes, opening=opening, coarse_mm=coarse_mm)
    grid = mask if isinstance(mask, Volume) else vol
    kji = np.argwhere(np.asarray(mask.array if isinstance(mask, Volume) else mask) > 0)
    if kji.size == 0:
        raise InputError(None, "no head found: no voxel is above the head threshold "
                               "(is the CT in Hounsfield units?)")
    return grid.physical_points(kji[:, ::-1].mean(axis=0)[None])[0]
