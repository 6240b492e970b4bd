"""Voxel-wise error metrics: MSE, MAE, PSNR and cosine similarity (batched, ``[B]``)."""
from __future__ import annotations

import math

import torch

from .batch import ArrayLike, check_range, mask_of, pair, region_mean

__all__ = ["mse", "mae", "psnr", "psnr_from_mse", "cosine", "cosine_values"]


def mse(x: ArrayLike, y: ArrayLike, *, mask: ArrayLike | None = None) -> torch.Tensor:
    """Mean squared difference per batch item (over the mask's voxels when given), ``[B]``."""
    a, b = pair(x, y)
    return region_mean((a - b) ** 2, mask_of(mask, a))


def mae(x: ArrayLike, y: ArrayLike, *, mask: ArrayLike | None = None) -> torch.Tensor:
    """Mean absolute difference per batch item (in the inputs' units), ``[B]``."""
    a, b = pair(x, y)
    return region_mean((a - b).abs(), mask_of(mask, a))


def psnr_from_mse(m: torch.Tensor, data_range: float) -> torch.Tensor:
    """PSNR in dB from the MSE, ``inf`` where the MSE is 0."""
    out = 10.0 * torch.log10(data_range ** 2 / m)
    return torch.where(m == 0, torch.full_like(m, math.inf), out)


def psnr(x: ArrayLike, y: ArrayLike, *, data_range: float,
         mask: ArrayLike | None = None) -> torch.Tensor:
    """``10 log10(data_range^2 / MSE)`` in dB per batch item, ``[B]``; ``inf`` when equal.
    ``data_range`` is required: it is the range of the data (1 for windowed values), never an
    implied peak."""
    return psnr_from_mse(mse(x, y, mask=mask), check_range(data_range))


def cosine_values(a: torch.Tensor, b: torch.Tensor, m: torch.Tensor | None) -> torch.Tensor:
    """:func:`cosine` of two batches (mask voxels only when ``m`` is given)."""
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
    a, b = pair(x, y)
    return cosine_values(a, b, mask_of(mask, a))
