"""Input handling shared by the metrics: batches ``[B, 1, *spatial]``, masks, region means."""
from __future__ import annotations

import math
from typing import Iterable, Union

import numpy as np
import torch

from ..errors import InputError
from ..geometry import Volume

__all__ = ["ArrayLike", "as_batch", "pair", "mask_of", "check_range", "region_mean", "crop"]

ArrayLike = Union[np.ndarray, torch.Tensor, Volume]


def as_batch(x: ArrayLike, name: str = "input", dtype: torch.dtype = torch.float64,
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


def pair(x: ArrayLike, y: ArrayLike, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """Both images as batches of ``dtype`` on ``x``'s device; InputError when their shapes
    differ."""
    a = as_batch(x, "x", dtype)
    b = as_batch(y, "y", dtype, a.device)
    if a.shape != b.shape:
        raise InputError(None, f"shape mismatch: {tuple(a.shape)} vs {tuple(b.shape)} "
                               "(resample onto one grid first)")
    return a, b


def mask_of(mask: ArrayLike | None, ref: torch.Tensor) -> torch.Tensor | None:
    """A boolean mask batch shaped like ``ref`` (a single mask is broadcast over the batch)."""
    if mask is None:
        return None
    m = as_batch(mask, "mask", torch.bool, ref.device)
    if m.shape[0] == 1 and ref.shape[0] > 1:
        m = m.expand(ref.shape[0], *m.shape[1:])
    if m.shape != ref.shape:
        raise InputError(None, f"mask shape {tuple(m.shape)} differs from the images' "
                               f"{tuple(ref.shape)}")
    return m


def check_range(data_range: float) -> float:
    """``data_range`` as a float; ValueError unless positive and finite."""
    r = float(data_range)
    if not (r > 0 and math.isfinite(r)):
        raise ValueError(f"data_range must be a positive finite number, got {data_range!r}")
    return r


def region_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over all but the batch dim, or over the mask's voxels (NaN for an empty mask)."""
    flat = values.flatten(1)
    if mask is None:
        return flat.sum(dim=1, dtype=torch.float64) / flat.shape[1]
    m = mask.flatten(1)
    return (flat * m).sum(dim=1, dtype=torch.float64) / m.sum(dim=1, dtype=torch.float64)


def crop(t: torch.Tensor, pad: int, dims: Iterable[int]) -> torch.Tensor:
    """``t`` without ``pad`` voxels at both ends of each of ``dims``."""
    for d in dims:
        t = t.narrow(d, pad, t.shape[d] - 2 * pad)
    return t
