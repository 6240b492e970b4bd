"""Output intensity mappings: HU <-> the [0, 1] values a model predicts.

A mapping is piecewise linear between knots ``(hu_k, x_k)`` with increasing ``hu`` and
non-decreasing ``x``; HU outside the first/last knot are clipped. ``to_model`` and ``to_hu``
work on numpy arrays and torch tensors (differentiable almost everywhere).

* ``"brain"``: the seeds' window, level 40 HU, width 40 HU: [20, 60] HU -> [0, 1] linearly.
  Everything below 20 HU maps to 0 and above 60 HU to 1, so ``to_hu`` is only valid inside
  the window: 0 comes back as 20 HU (air, fat, CSF alike) and 1 as 60 HU (bone alike).
  The seeds' metrics live in this space; a brain-window sCT cannot be re-projected into a
  DRR with the right bone.
* ``"hu_compand"``: the full range [-1000, 1000] HU -> [0, 1], strictly increasing and so
  exactly invertible inside the range, steep where the brain is: knots
  (-1000, 0), (-150, 0.1), (-20, 0.2), (100, 0.75), (1000, 1). Between -20 and 100 HU the
  slope is 0.0046 per HU (white/grey matter, 8 HU apart, differ by 0.037: about a fifth of
  the brain window's contrast, against 0.004 for a linear map of the full range), and bone
  and air still keep their order, so the sCT can be converted back to HU and re-projected.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
import torch


@dataclasses.dataclass(frozen=True)
class PiecewiseLinearMapping:
    """HU <-> model intensity through linear pieces between knots (see module doc)."""

    name: str
    hu_knots: tuple[float, ...]
    x_knots: tuple[float, ...]
    description: str = ""

    def __post_init__(self) -> None:
        h, x = np.asarray(self.hu_knots, float), np.asarray(self.x_knots, float)
        if h.size < 2 or h.size != x.size or np.any(np.diff(h) <= 0) or np.any(np.diff(x) < 0):
            raise ValueError("knots must be >= 2 pairs with increasing HU and non-decreasing x")

    @property
    def hu_range(self) -> tuple[float, float]:
        """HU interval the mapping resolves (outside it values are clipped)."""
        return (self.hu_knots[0], self.hu_knots[-1])

    @property
    def invertible(self) -> bool:
        """True when ``to_hu(to_model(hu)) == hu`` for every HU inside :attr:`hu_range`."""
        return bool(np.all(np.diff(self.x_knots) > 0))

    def to_model(self, hu):
        """HU (numpy or torch) -> model intensity in [x_knots[0], x_knots[-1]]."""
        return _interp(hu, self.hu_knots, self.x_knots)

    def to_hu(self, x):
        """Model intensity (numpy or torch) -> HU; the exact inverse inside the mapping's
        range when :attr:`invertible` (``brain``: only inside the window)."""
        return _interp(x, self.x_knots, self.hu_knots)

    def to_dict(self) -> dict:
        return {"name": self.name, "hu_knots": list(self.hu_knots),
                "x_knots": list(self.x_knots), "description": self.description,
                "invertible": self.invertible}


def _interp(v, xp: Sequence[float], fp: Sequence[float]):
    if isinstance(v, torch.Tensor):
        dt = v.dtype if v.is_floating_point() else torch.float32
        v = v.to(dt)
        xs = torch.tensor(xp, dtype=dt, device=v.device)
        fs = torch.tensor(fp, dtype=dt, device=v.device)
        vc = v.clamp(xs[0], xs[-1])
        idx = torch.bucketize(vc, xs[1:-1], right=True)  # piece index 0..K-2
        x0, x1, f0, f1 = xs[idx], xs[idx + 1], fs[idx], fs[idx + 1]
        return f0 + (vc - x0) * ((f1 - f0) / (x1 - x0))
    arr = np.asarray(v, dtype=np.float32)
    return np.interp(arr, np.asarray(xp, np.float64), np.asarray(fp, np.float64)).astype(np.float32)


MAPPINGS: dict[str, PiecewiseLinearMapping] = {
    "brain": PiecewiseLinearMapping(
        "brain", (20.0, 60.0), (0.0, 1.0),
        "seed window L40/W40: [20, 60] HU -> [0, 1]; to_hu valid only inside the window"),
    "hu_compand": PiecewiseLinearMapping(
        "hu_compand", (-1000.0, -150.0, -20.0, 100.0, 1000.0), (0.0, 0.1, 0.2, 0.75, 1.0),
        "[-1000, 1000] HU -> [0, 1], piecewise linear, steep (0.0046/HU) in [-20, 100] HU; "
        "exactly invertible inside [-1000, 1000] HU"),
}


def get_mapping(name: str) -> PiecewiseLinearMapping:
    """The intensity mapping called ``name`` (``"brain"`` or ``"hu_compand"``)."""
    if name not in MAPPINGS:
        raise ValueError(f"unknown intensity mapping {name!r}; choose one of {sorted(MAPPINGS)}")
    return MAPPINGS[name]
