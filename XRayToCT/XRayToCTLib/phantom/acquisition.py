"""The acquisition of the phantom: labels -> HU, bone texture, correlated scanner noise,
partial-volume blur, the beam-hardening (Hounsfield-bar) streak and the head holder."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .anatomy import Anatomy
from .grid import PosedGrid
from .painting import set_label
from .tissues import LABELS, TISSUE_HU

HU_RANGE = (-1024.0, 3071.0)
"""The output is clipped to this range (a 12-bit CT's)."""

BONE_TEXTURE_HU: dict[str, float] = {"diploe": 120.0, "cancellous_bone": 80.0,
                                     "cortical_bone": 60.0, "petrous_bone": 80.0, "teeth": 80.0}
"""Standard deviation (HU, after the blur) of the texture of each bony tissue."""


@dataclass(frozen=True)
class HeadHolder:
    """A carbon-fibre head holder (a cylindrical shell about the scanner's z axis with a foam
    pad inside) and the table behind it, placed from the posterior-most point of the posed
    head ``b`` (mm; +y posterior)."""

    gap_behind_skull: float = 2.0
    """``b`` = cavity centre + (0, cavity half-length + skull + scalp + this, 0)."""
    axis_ahead: float = 105.0
    """The shell's axis: ``y = b_y - this`` (and ``x = b_x``)."""
    pad_radii: tuple[float, float] = (110.0, 118.0)
    """Foam pad: between these radii, ..."""
    pad_behind_axis: float = 70.0
    """... behind ``y = axis + this``."""
    shell_radii: tuple[float, float] = (118.0, 122.0)
    """Shell: between these radii, ..."""
    shell_behind_axis: float = 30.0
    """... behind ``y = axis + this``."""
    table_behind_axis: tuple[float, float] = (128.0, 138.0)
    """Table top: ``axis + lo < y < axis + hi``, ..."""
    table_half_width: float = 220.0
    """... ``|x - b_x| <`` this."""
    below_head: float = 140.0
    """Everything ends at ``z = b_z - this`` (the shoulders are off the holder)."""


@dataclass(frozen=True)
class HounsfieldBar:
    """The beam-hardening streak: a dark band joining the petrous bones across the posterior
    fossa (inside the head only)."""

    behind_centre: float = 10.0
    """Band centre: ``y = cy + this``, ..."""
    above_middle_floor: float = 6.0
    """... ``z = cz - floor_mid + this``."""
    box_half_axes: tuple[float, float, float] = (70.0, 40.0, 12.0)
    widths: tuple[float, float] = (9.0, 5.0)
    """Gaussian widths (1/e, mm) along y and z."""
    half_length: float = 45.0
    """``|x| <`` this."""


HEAD_HOLDER = HeadHolder()
HOUNSFIELD_BAR = HounsfieldBar()


def gauss_taps(sigma_vox: float) -> np.ndarray:
    """Normalised Gaussian filter taps (standard deviation in voxels, radius 2 sigma)."""
    r = max(1, int(math.ceil(2.0 * sigma_vox)))
    t = np.exp(-0.5 * (np.arange(-r, r + 1) / max(sigma_vox, 1e-6)) ** 2)
    return t / t.sum()


def blur_axis_(vol: torch.Tensor, taps: np.ndarray, axis: int, chunk: int = 8) -> torch.Tensor:
    """Separable blur along one axis of a [k, j, i] tensor (edge values replicated), chunked
    along k for cache efficiency; returns a new tensor."""
    r = len(taps) // 2
    out = torch.empty_like(vol)
    nk = vol.shape[0]
    for k0 in range(0, nk, chunk):
        k1 = min(nk, k0 + chunk)
        if axis == 0:
            def rows(o: int) -> torch.Tensor:
                if k0 + o >= 0 and k1 + o <= nk:
                    return vol[k0 + o:k1 + o]  # a view, no copy
                return vol[torch.arange(k0 + o, k1 + o).clamp(0, nk - 1)]
            acc = vol[k0:k1] * float(taps[r])
            for o, w in enumerate(taps):
                if o != r:
                    acc.add_(rows(o - r), alpha=float(w))
        else:
            acc = blur_slab(vol[k0:k1], taps, axis)
        out[k0:k1] = acc
    return out


def blur_slab(src: torch.Tensor, taps: np.ndarray, axis: int) -> torch.Tensor:
    """Blur a ``[k, j, i]`` slab along axis 1 (j) or 2 (i), edge values replicated."""
    r = len(taps) // 2
    pad = [0, 0, 0, 0]
    pad[(2 - axis) * 2:(2 - axis) * 2 + 2] = [r, r]
    p = F.pad(src[None], pad, mode="replicate")[0]
    n = src.shape[axis]
    acc = p.narrow(axis, r, n) * float(taps[r])
    for o, w in enumerate(taps):
        if o != r:
            acc.add_(p.narrow(axis, o, n), alpha=float(w))
    return acc


def head_holder(g: PosedGrid, lab: torch.Tensor, a: Anatomy, h: HeadHolder = HEAD_HOLDER) -> None:
    """A carbon-fibre head holder (curved shell with a foam pad) and the table behind it, in the
    scanner frame (posterior = +y, the patient lies supine), painted over air."""
    # posterior-most skin point of the posed head, from the canonical outline
    back = a.center + (0.0, a.ay + a.skull_t + a.scalp_t + h.gap_behind_skull, 0.0)
    wb = g.to_scanner(back)
    cx, cy0 = float(wb[0]), float(wb[1]) - h.axis_ahead
    ii = g.scanner(0, torch.arange(g.n[0], dtype=torch.float32).view(1, -1))
    jj = g.scanner(1, torch.arange(g.n[1], dtype=torch.float32).view(-1, 1))
    r = torch.sqrt((ii - cx) ** 2 + (jj - cy0) ** 2)
    pad = (r > h.pad_radii[0]) & (r < h.pad_radii[1]) & (jj > cy0 + h.pad_behind_axis)
    shell = (r >= h.shell_radii[0]) & (r < h.shell_radii[1]) & (jj > cy0 + h.shell_behind_axis)
    table = ((jj > cy0 + h.table_behind_axis[0]) & (jj < cy0 + h.table_behind_axis[1])
             & ((ii - cx).abs() < h.table_half_width))
    z = g.scanner(2, torch.arange(g.n[2], dtype=torch.float32))
    zmask = (z > float(wb[2]) - h.below_head).view(-1, 1, 1)
    for k0 in range(0, lab.shape[0], 8):
        view = lab[k0:k0 + 8]
        air = (view == LABELS["air"]) & zmask[k0:k0 + 8]
        for m, name in ((pad, "foam"), (shell, "holder"), (table, "table")):
            set_label(view, air & m[None], LABELS[name])


def to_hu(a: Anatomy, g: PosedGrid, lab: torch.Tensor, noise: float, bh: bool,
          bh_strength: float, torch_seed: int, bar: HounsfieldBar = HOUNSFIELD_BAR) -> np.ndarray:
    """Labels -> HU: per-tissue values, bone texture, correlated noise (``noise`` HU in
    homogeneous tissue after the blur), partial-volume blur, and with ``bh`` the Hounsfield
    bar ``bh_strength`` HU deep."""
    lut = torch.tensor([a.hu[k] for k in TISSUE_HU], dtype=torch.float32)
    sig_vox = [max(0.8, 0.5 * float(s)) / float(s) for s in g.step]  # scanner PSF, mm -> voxels
    taps = [gauss_taps(s) for s in sig_vox]
    gain = float(np.prod([np.sqrt(np.sum(t * t)) for t in taps]))  # noise std after the blur
    tex = torch.zeros(len(TISSUE_HU), dtype=torch.float32)
    for k, v in BONE_TEXTURE_HU.items():
        tex[LABELS[k]] = v / gain
    sigma = torch.full((len(TISSUE_HU),), noise / gain)
    sigma = torch.sqrt(sigma ** 2 + tex ** 2)
    sigma[LABELS["air"]] = sigma[LABELS["air"]] * 2.0  # air is noisier outside the head (no matter)
    gen = torch.Generator().manual_seed(torch_seed)
    img = torch.empty(lab.shape, dtype=torch.float32)
    nk = lab.shape[0]
    for k0 in range(0, nk, 8):
        lk = lab[k0:k0 + 8]
        idx = lk.reshape(-1).int()
        v = lut.index_select(0, idx).view(lk.shape)
        if noise > 0:
            v.addcmul_(torch.randn(v.shape, generator=gen), sigma.index_select(0, idx).view(lk.shape))
        # in-plane partial-volume blur while the slab is in cache (along k below)
        img[k0:k0 + 8] = blur_slab(blur_slab(v, taps[0], 2), taps[1], 1)
    if bh:
        # Hounsfield bar: a dark band joining the petrous bones across the posterior fossa
        p = a.center + (0.0, bar.behind_centre, -a.floor_mid + bar.above_middle_floor)
        b = g.box(p - bar.box_half_axes, p + bar.box_half_axes)
        if b is not None:
            sl, x, y, z = b
            wy, wz = bar.widths
            band = (torch.exp(-((y - p[1]) / wy) ** 2 - ((z - p[2]) / wz) ** 2)
                    * (x.abs() < bar.half_length))
            view = img[sl]
            inb = (lab[sl] != LABELS["air"])
            view.sub_(bh_strength * band * inb)
    img = blur_axis_(img, taps[2], 0)
    return img.clamp_(*HU_RANGE).numpy()

