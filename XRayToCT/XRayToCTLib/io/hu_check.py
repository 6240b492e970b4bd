"""The "is this a CT in Hounsfield units" plausibility test, shared by every CT reader.

A head CT in Hounsfield units always has air around the head, so its 1st percentile is at
or below :data:`~XRayToCTLib.constants.HEAD_THRESHOLD_HU` (-500 HU). Data whose 1st
percentile is above it after the header's rescale (raw detector values 0..4095, values
shifted by +1024, normalised 0..1 data, MR, Cormack units) are refused unless the caller
gives ``rescale=(slope, intercept)`` or ``require_hu=False``. A user rescale replaces the
header's RescaleSlope/Intercept and acts on the raw stored values (for NIfTI/NRRD/MetaImage:
on the values as decoded). The check runs after a user rescale too, so a wrong rescale is
caught.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..constants import HEAD_THRESHOLD_HU
from ..errors import NotHounsfield

HU_PERCENTILE = 1.0
"""The percentile :func:`looks_like_hu` tests against -500 HU."""


def _sample(array: np.ndarray, max_values: int = 2_000_000) -> np.ndarray:
    flat = np.asarray(array).reshape(-1)
    step = max(1, flat.size // max_values)
    sample = flat[::step]
    return sample[np.isfinite(sample)] if sample.dtype.kind == "f" else sample


def hu_percentile(array: np.ndarray) -> float:
    """The :data:`HU_PERCENTILE` percentile of the finite values (on a subsample)."""
    sample = _sample(array)
    if sample.size == 0:
        return float("nan")
    return float(np.percentile(sample, HU_PERCENTILE))


def looks_like_hu(array: np.ndarray) -> bool:
    """Whether a head CT looks like it is in Hounsfield units.

    The test: the 1st percentile of the values is at or below -500 (a head CT always has
    air, -1000 HU, around the head or in the sinuses). Raw detector values (0..4095), HU
    shifted by +1024, normalised data, MR and other modalities fail it."""
    p = hu_percentile(array)
    return bool(math.isfinite(p) and p <= HEAD_THRESHOLD_HU)


def not_hu_error(path: Path, array: np.ndarray, *, user_rescale: bool, extra: str = "") -> NotHounsfield:
    """The one-line error for values that fail :func:`looks_like_hu`."""
    sample = _sample(array)
    lo, hi = (float(sample.min()), float(sample.max())) if sample.size else (math.nan, math.nan)
    p = hu_percentile(array)
    stats = f"1st percentile {p:.4g}, range {lo:.4g}..{hi:.4g}"
    if user_rescale:
        return NotHounsfield(path, f"values after the given rescale still do not look like "
                                   f"Hounsfield units ({stats}: no air below "
                                   f"{HEAD_THRESHOLD_HU:.0f} HU){extra}; check the rescale "
                                   f"slope and intercept")
    return NotHounsfield(path, f"values do not look like Hounsfield units ({stats}: no air below "
                               f"{HEAD_THRESHOLD_HU:.0f} HU) and the header has no rescale that "
                               f"fixes it{extra}; give the rescale to HU (slope 1, intercept "
                               f"-1024 for values stored as HU+1024) or keep the stored values")
