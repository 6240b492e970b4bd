"""Painting tissue labels into the phantom's uint8 label map (``[k, j, i]`` torch tensor):
masks, ellipsoids and tubes, each inside its own bounding box of the posed grid."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .fields import ellipsoid_sdf, tube_sdf
from .grid import PosedGrid
from .tissues import LABELS


def crop(mask: torch.Tensor) -> tuple[slice | None, slice | None]:
    """The (j, i) bounding slices of a boolean ``[k, j, i]`` mask; (None, None) if empty."""
    rows = mask.any(2).any(0)
    if not bool(rows.any()):
        return None, None
    cols = mask.any(1).any(0)
    r = torch.nonzero(rows).flatten()
    c = torch.nonzero(cols).flatten()
    return slice(int(r[0]), int(r[-1]) + 1), slice(int(c[0]), int(c[-1]) + 1)


def set_label(view: torch.Tensor, mask: torch.Tensor, code: int) -> None:
    """``view[mask] = code`` in place for uint8 labels (modular arithmetic: several times
    faster than ``masked_fill_`` on the CPU)."""
    view.add_(mask.to(torch.uint8).mul_(code - view))


_ALLOWED_CACHE: dict[tuple[str, ...], torch.Tensor] = {}


def paint(lab, box, mask, name: str, where: Sequence[str] | None = None) -> None:
    """Set ``lab[box] = LABELS[name]`` where ``mask`` (and the current label is in ``where``)."""
    view = lab[box]
    if where is not None:
        key = tuple(where)
        allowed = _ALLOWED_CACHE.get(key)
        if allowed is None:
            allowed = torch.zeros(256, dtype=torch.bool)
            allowed[[LABELS[w] for w in where]] = True
            _ALLOWED_CACHE[key] = allowed
        mask = mask & allowed.index_select(0, view.reshape(-1).int()).view(view.shape)
    set_label(view, mask, LABELS[name])


def paint_sdf(lab, sl, d, xyz, name: str, where, cond, inner: float | None,
              inner_name: str | None) -> None:
    """Paint where the signed distance ``d`` < 0 (and ``cond(x, y, z)``); with ``inner``,
    also paint ``inner_name`` where it is deeper than ``inner`` mm."""
    m = d < 0
    if cond is not None:
        m &= cond(*xyz)
    paint(lab, sl, m, name, where)
    if inner is not None:
        paint(lab, sl, m & (d < -inner), inner_name)


def ellipsoid(g: PosedGrid, lab, c, r, name: str, where=None, cond=None,
              inner: float | None = None, inner_name: str | None = None) -> None:
    """Paint an ellipsoid (centre ``c``, half-axes ``r``, canonical mm) inside its own box;
    ``inner``/``inner_name``: also paint the part deeper than ``inner`` mm."""
    c, r = np.asarray(c, float), np.asarray(r, float)
    b = g.box(c - r - 1.0, c + r + 1.0)
    if b is None:
        return
    sl, x, y, z = b
    d = ellipsoid_sdf(x, y, z, c, r)
    paint_sdf(lab, sl, d, (x, y, z), name, where, cond, inner, inner_name)


def tube(g: PosedGrid, lab, pts, radii, name: str, where=None, cond=None,
         inner: float | None = None, inner_name: str | None = None, zscale: float = 1.0) -> None:
    """Paint a tube along a polyline (radius varying linearly) inside its own box;
    ``zscale`` < 1 stretches its cross-section vertically by 1 / zscale."""
    p = np.asarray(pts, float)
    rmax = float(max(radii)) / min(zscale, 1.0) + 1.0
    b = g.box(p.min(0) - rmax, p.max(0) + rmax)
    if b is None:
        return
    sl, x, y, z = b
    if zscale != 1.0:
        d = tube_sdf(x, y, z * zscale, [(q[0], q[1], q[2] * zscale) for q in p], radii)
    else:
        d = tube_sdf(x, y, z, p, radii)
    paint_sdf(lab, sl, d, (x, y, z), name, where, cond, inner, inner_name)


def cells(plane_waves, x, y, z, scale: float = 1.0):
    """A honeycomb field from plane waves (air cells where it is above a threshold)."""
    k, ph, amp = plane_waves
    v = 0.0
    for (kx, ky, kz), p, ai in zip(k, ph, amp):
        v = v + ai * torch.cos((kx * x + ky * y + kz * z) * scale + p)
    return v
