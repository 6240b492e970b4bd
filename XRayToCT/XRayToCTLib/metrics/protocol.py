"""The evaluation protocol: every metric in a stated window and region, for one pair or a batch.

:func:`batch_metrics` (a batch, one window and region), :func:`compute_metrics` (one pair),
:func:`evaluate_pair` (one pair, every window x region) and :func:`window_metrics` (several
regions of one window at once, the SSIM maps computed once), with the metric names
:data:`DEFAULT_METRICS` / :data:`ALL_METRICS` and the regions :data:`REGIONS`. The definitions
are in the package doc, :mod:`XRayToCTLib.metrics`.
"""
from __future__ import annotations

import math
import os
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ..constants import HEAD_THRESHOLD_HU
from ..errors import InputError
from ..geometry import Volume
from ..hu import head_mask, window_range
from .batch import ArrayLike, as_batch, crop, mask_of, region_mean
from .fsim import fsim
from .learned import lpips
from .ssim import check_window, gaussian_kernel, ssim_3d_and_axial, ssim_map_dims, ssim_slices_from
from .voxelwise import cosine_values, psnr_from_mse

__all__ = ["DEFAULT_METRICS", "ALL_METRICS", "REGIONS", "to_window", "window_metrics",
           "hu_tensor", "same_grid", "region_masks", "batch_metrics", "compute_metrics",
           "evaluate_pair", "check_finite"]

DEFAULT_METRICS = ("ssim", "psnr", "mse", "mae_hu", "cosine")
"""The metric set of :func:`compute_metrics` by default."""
ALL_METRICS = ("ssim", "ssim_slices", "psnr", "mse", "mae", "mae_hu", "cosine", "fsim",
               "lpips")
"""Names :func:`batch_metrics` knows (``fsim`` needs 2D inputs, ``lpips`` local weights)."""
REGIONS = ("head", "whole")
"""``head``: the ground truth's :func:`~XRayToCTLib.hu.head_mask`; ``whole``: every voxel."""


def to_window(hu: torch.Tensor, window: str | Sequence[float]) -> torch.Tensor:
    """HU clipped to the window and mapped linearly onto [0, 1] (data range 1)."""
    lo, hi = window_range(window)
    return (hu - lo).mul_(1.0 / (hi - lo)).clamp_(0.0, 1.0)


def check_finite(t: torch.Tensor, what: str) -> None:
    """InputError when ``t`` (the ``what``) has NaN or infinite values."""
    if math.isfinite(float(t.sum(dtype=torch.float64))):  # one fast pass; NaN/inf propagate
        return
    bad = ~torch.isfinite(t)
    if bool(bad.any()):
        raise InputError(None, f"the {what} has {int(bad.sum())} NaN or infinite voxels")


def window_metrics(pred: torch.Tensor, gt: torch.Tensor, window: str | Sequence[float],
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
        check_window(x.shape, w.numel(), spatial)
        if "ssim_slices" in metrics and x.dim() == 5:
            smap, axial = ssim_3d_and_axial(x, y, w, c1, c2)
        else:
            smap = ssim_map_dims(x, y, w, c1, c2, spatial)
        for region, m in masks.items():
            out["ssim", region] = region_mean(smap, None if m is None else crop(m, pad, spatial)).double()
        del smap
    if "ssim_slices" in metrics:
        if x.dim() != 5:
            raise ValueError("ssim_slices needs 3D volumes")
        for region, v in ssim_slices_from(x, y, masks, w, c1, c2, axial).items():
            out["ssim_slices", region] = v
    diff = x - y
    for region, m in masks.items():
        if any(k in metrics for k in ("psnr", "mse", "mae", "mae_hu")):
            m_se = region_mean(diff * diff, m)
            m_ae = region_mean(diff.abs(), m)
            if "mse" in metrics:
                out["mse", region] = m_se
            if "psnr" in metrics:
                out["psnr", region] = psnr_from_mse(m_se, 1.0)
            if "mae" in metrics:
                out["mae", region] = m_ae
            if "mae_hu" in metrics:
                out["mae_hu", region] = m_ae * (hi - lo)
        if "cosine" in metrics:
            out["cosine", region] = cosine_values(x, y, m)
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


def hu_tensor(v: ArrayLike, what: str) -> torch.Tensor:
    """HU as float32 ``[B, 1, ...]`` (float32 holds HU exactly enough: 1e-4 HU at 1000 HU)."""
    t = as_batch(v, what, torch.float32)
    check_finite(t, what)
    return t


def grids_match(a: Volume, b: Volume) -> bool:
    """True when two volumes are on the same grid for scoring: same shape, spacing to 1e-5
    (relative), origin to 1e-3 mm, direction to 1e-5."""
    return (a.array.shape == b.array.shape and np.allclose(a.spacing, b.spacing, rtol=1e-5)
            and np.allclose(a.origin, b.origin, atol=1e-3)
            and np.allclose(a.direction, b.direction, atol=1e-5))


def same_grid(pred: ArrayLike, gt: ArrayLike) -> None:
    """InputError when two Volumes are on different grids (arrays carry no grid to check)."""
    if isinstance(pred, Volume) and isinstance(gt, Volume):
        if not grids_match(pred, gt):
            raise InputError(None, "the prediction and the ground truth are on different grids "
                                   "(resample onto the ground truth's grid first; "
                                   "XRayToCTLib.evaluation does)")


def region_masks(gt: torch.Tensor, regions: Sequence[str],
                 mask: ArrayLike | None = None) -> dict[str, torch.Tensor | None]:
    """``{region: mask}`` of the ground-truth batch ``gt`` (HU): None for ``whole``, the
    :func:`~XRayToCTLib.hu.head_mask` of ``gt`` (or the given ``mask``) for ``head``."""
    out: dict[str, torch.Tensor | None] = {}
    for r in regions:
        if r == "whole":
            out[r] = None
        elif r == "head":
            out[r] = mask_of(mask, gt) if mask is not None else head_mask(gt)
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
    replaces the head mask of the ground truth for region ``head``. See the package doc for
    the definitions; PSNR is ``inf`` for equal inputs."""
    p, g = hu_tensor(pred, "prediction"), hu_tensor(gt, "ground truth")
    if p.shape != g.shape:
        raise InputError(None, f"shape mismatch: prediction {tuple(p.shape)} vs ground truth "
                               f"{tuple(g.shape)}")
    vals = window_metrics(p, g, window, region_masks(g, [region], mask), list(metrics))
    return {m: vals[m, region] for m in metrics}


def compute_metrics(pred_hu: ArrayLike, gt_hu: ArrayLike, *, window: str | Sequence[float] = "brain",
                    region: str = "head", metrics: Sequence[str] = DEFAULT_METRICS
                    ) -> dict[str, float]:
    """Metrics of one prediction against its ground truth, both in HU on the same grid
    (ndarray, tensor or :class:`Volume`): ``{metric: value}``."""
    same_grid(pred_hu, gt_hu)
    return {k: float(v[0]) for k, v in batch_metrics(pred_hu, gt_hu, window=window,
                                                      region=region, metrics=metrics).items()}


def evaluate_pair(pred_hu: ArrayLike, gt_hu: ArrayLike, *,
                  windows: Sequence[str | Sequence[float]] = ("brain", "full"),
                  regions: Sequence[str] = ("head", "whole"),
                  metrics: Sequence[str] = DEFAULT_METRICS) -> list[dict[str, Any]]:
    """Every metric in every window and region for one pair (same grid, HU): rows
    ``{"metric", "window", "region", "value"}`` (``window`` is its name, or ``"L/W"``)."""
    same_grid(pred_hu, gt_hu)
    p, g = hu_tensor(pred_hu, "prediction"), hu_tensor(gt_hu, "ground truth")
    if p.shape != g.shape:
        raise InputError(None, f"shape mismatch: prediction {tuple(p.shape)} vs ground truth "
                               f"{tuple(g.shape)} (no geometry to resample with)")
    masks = region_masks(g, regions)
    rows = []
    for win in windows:
        name = win if isinstance(win, str) else "{:g}/{:g}".format(*win)
        vals = window_metrics(p, g, win, masks, list(metrics))
        for m in metrics:
            for r in regions:
                rows.append({"metric": m, "window": name, "region": r,
                             "value": float(vals[m, r][0])})
    return rows
