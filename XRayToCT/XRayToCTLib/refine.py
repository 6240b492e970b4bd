"""Test-time fitting: make an sCT explain its own radiographs.

A model's sCT is one forward pass; nothing in it forces its DRRs to match the views it was
made from (on a real head they differ by ~10 %). :func:`refine` fits the sCT to the views
through the differentiable :class:`~XRayToCTLib.drr.DRR`, with the sCT as the prior and a
deliberately small, well-posed set of unknowns (two views cannot determine a free 3D
volume, so a free voxel residual would only paint stripes along the rays):

1. **a per-tissue intensity correction** -- a piecewise-linear HU -> HU curve with knots at
   :data:`INTENSITY_KNOTS_HU` (air at -1000 HU is held fixed), applied to the prior's HU.
   It recalibrates soft tissue, fat, bone... as classes: the largest error of a model that
   has learned another scanner's or another population's intensities;
2. **an affine map** about the grid centre (scale, shear, rotation, translation): the head's
   size and place as the views show them;
3. optionally (off by default) **a smooth deformation** -- a displacement field on a coarse
   control lattice (:attr:`RefineSettings.control_mm` apart, trilinearly interpolated) --
   and **a small residual** -- an additive HU field on a coarse lattice
   (:attr:`RefineSettings.residual_mm`), inside the head only.

Why these defaults (measured on the held-out head invesalius_0051 with the fold model of
``benchmarks/real_heads.py`` -- after 16 and after 60 of its epochs -- refined with
``RefineSettings`` variants through ``Reconstructor.reconstruct_ct(ct, refine=...)`` and scored
in the full window inside the head, on the model's 2 mm canonical grid; ``evaluate`` on the
CT's own grid gives slightly different values, e.g. 0.640 -> 0.644 for the shipped defaults): adding the displacement field (6 mm SD at 32 mm) or the residual (30 HU SD at 16 mm)
*lowered* head SSIM (0.597 -> 0.535-0.600 for a 16-epoch model) although they fit the views
far better (view error 5 % against 10 %): two views leave a deformation free to move tissue
along the rays. Turn them on (``displacement_sd_mm``, ``residual_sd_hu`` above 0) only for a
poor prior (a phantom-trained model gained from them on one real head and lost on the other).
The views' noise is 10 %: an sCT at 2-4 mm reproduces a head's DRRs to ~10 % at best (the
model's own sCT: 10.4 %), and with 2 % the intensity curve chased that floor (0.618 -> 0.608
for the 60-epoch model), with 10 % it does no harm and helps a little (0.618 -> 0.629, MAE
159 -> 153 HU). The test-time fit is a calibration of a good prior, not a reconstruction.

Each unknown has a Gaussian prior (the ``*_sd`` settings: how far it may go at one
standard deviation; 0 switches it off) and is optimised in units of it; the data term is the squared error of the soft-attenuation DRRs in
units of :attr:`RefineSettings.noise` (a relative error of the views). With views in
absolute DRR units (the DRRs of a CT, or DRR files in Plastimatch units) the fit is
absolute, so it also fixes the HU calibration; for radiographs in arbitrary units
(``match="affine"``) each view's gain and offset are solved in closed form at every step,
so only the contrast pattern counts. Adam; the best state is kept, and the fit stops early
when the objective stops falling (:attr:`RefineSettings.patience`).

Space: the prior and the fitted sCT share the prior's grid (any grid; the model's canonical
grid in practice), and the view geometries are in that grid's frame.
"""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from .constants import AIR_HU, HEAD_THRESHOLD_HU, HU_CLIP
from .drr import DRR, view_stack
from .geometry import Grid, ProjectionGeometry, Volume
from .hu import coarsen
from .progress import ProgressCallback, report

__all__ = ["INTENSITY_KNOTS_HU", "UNKNOWNS", "MATCH_CHOICES", "RefineSettings", "SCTFit", "refine"]

INTENSITY_KNOTS_HU = (-1000.0, -700.0, -400.0, -100.0, 0.0, 40.0, 100.0, 300.0, 600.0, 1000.0)
"""Knots of the per-tissue intensity curve: air, lung-like/sinus air mixtures, fat, water,
brain, blood/muscle, cancellous and cortical bone. The curve is the identity outside
them (held at the end values' offsets)."""

UNKNOWNS = ("affine", "translation", "displacement", "intensity", "residual")
"""The fitted unknowns (:class:`SCTFit`'s parameters, each in units of its prior SD)."""

MATCH_CHOICES = ("auto", "absolute", "affine")
"""How the sCT's DRRs are compared with the views: ``"absolute"`` (the views are line
integrals in the DRR's units: the DRRs of a CT), ``"affine"`` (each view's gain and offset
are free: radiographs in unknown units), ``"auto"`` (absolute when the views say they are
DRR line integrals, else affine)."""


@dataclasses.dataclass
class RefineSettings:
    """The fit's settings (defaults: the shipped behaviour, see the module doc).

    Attributes:
        steps: most optimisation steps.
        patience: stop when the objective has not fallen by ``min_gain`` (relative) for this
            many steps.
        min_gain: relative fall of the objective that counts as progress.
        noise: the views' expected relative error (model error, scatter, resolution): the
            data term is ``mean((drr - view)^2) / (noise * mean|view|)^2``.
        control_mm: spacing of the deformation's control lattice (mm).
        residual_mm: spacing of the residual's lattice (mm).
        displacement_sd_mm: prior SD of each control point's displacement (mm).
        affine_sd: prior SD of the affine matrix's entries about the identity.
        translation_sd_mm: prior SD of the affine translation (mm).
        intensity_sd_hu: prior SD of each intensity knot's offset (HU).
        residual_sd_hu: prior SD of the residual (HU).
        lr: Adam's step size, in prior standard deviations per step (every unknown is
            optimised in units of its own SD, so one step size suits them all).
        match: see :data:`MATCH_CHOICES`.
        fit_spacing_mm: the fit runs on the prior coarsened to this voxel size (anti-aliased)
            when it is finer; the unknowns live in millimetres and HU, not voxels, so the
            fitted correction is then applied to the full-resolution prior.
    """

    steps: int = 120
    patience: int = 20
    min_gain: float = 1e-3
    noise: float = 0.1
    control_mm: float = 32.0
    residual_mm: float = 16.0
    displacement_sd_mm: float = 0.0
    affine_sd: float = 0.05
    translation_sd_mm: float = 10.0
    intensity_sd_hu: float = 80.0
    residual_sd_hu: float = 0.0
    lr: float = 0.05
    match: str = "auto"
    fit_spacing_mm: float = 4.0

    def __post_init__(self) -> None:
        if int(self.steps) != self.steps or self.steps < 0:
            raise ValueError(f"steps must be a non-negative integer, got {self.steps!r}")
        if self.match not in MATCH_CHOICES:
            raise ValueError(f"match must be one of {MATCH_CHOICES}, got {self.match!r}")
        for name in ("noise", "control_mm", "residual_mm", "fit_spacing_mm", "lr"):
            v = float(getattr(self, name))
            if not (v > 0 and math.isfinite(v)):
                raise ValueError(f"{name} must be a positive number, got {v!r}")
        for name in self.SD.values():
            v = float(getattr(self, name))
            if not (v >= 0 and math.isfinite(v)):
                raise ValueError(f"{name} must be 0 (off) or a positive number, got {v!r}")

    SD = {"affine": "affine_sd", "translation": "translation_sd_mm",
          "displacement": "displacement_sd_mm", "intensity": "intensity_sd_hu",
          "residual": "residual_sd_hu"}
    """Each unknown's prior-SD setting."""

    def active(self) -> tuple[str, ...]:
        """The unknowns that are fitted (prior SD above 0)."""
        return tuple(k for k in UNKNOWNS if getattr(self, self.SD[k]) > 0)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _lattice(grid: Grid, spacing_mm: float) -> tuple[int, int, int]:
    """Control points per axis (k, j, i order) covering ``grid`` about ``spacing_mm`` apart."""
    return tuple(max(2, int(round(f / spacing_mm)) + 1)  # type: ignore[return-value]
                 for f in reversed(grid.field_mm))


class SCTFit(torch.nn.Module):
    """The fitted sCT as a function of its unknowns (see the module doc).

    Args:
        prior: the prior sCT in HU, ``[D, H, W]`` on ``grid``.
        grid: its grid.
        settings: the unknowns' lattices and priors.
    """

    def __init__(self, prior: torch.Tensor, grid: Grid, settings: RefineSettings):
        super().__init__()
        self.grid, self.settings = grid, settings
        dt = prior.dtype
        self.register_buffer("prior", prior.detach().clone())
        self.register_buffer("knots", torch.tensor(INTENSITY_KNOTS_HU, dtype=dt))
        seg, t = self._segments(self.prior)
        self.register_buffer("prior_seg", seg)
        self.register_buffer("prior_t", t)
        # voxel centres in LPS mm (from the grid: the one index <-> mm conversion) and the
        # LPS -> normalised grid_sample coordinate map
        d, h, w = grid.shape
        i2l = torch.as_tensor(grid.index_to_lps(), dtype=dt)
        l2i = torch.as_tensor(grid.lps_to_index(), dtype=dt)
        kk, jj, ii = torch.meshgrid(torch.arange(d, dtype=dt), torch.arange(h, dtype=dt),
                                    torch.arange(w, dtype=dt), indexing="ij")
        idx = torch.stack([ii, jj, kk], -1)  # [D, H, W, (i, j, k)]
        self.register_buffer("points", idx @ i2l[:3, :3].T + i2l[:3, 3])
        self.register_buffer("l2i", l2i)
        self.register_buffer("extent", torch.tensor([w - 1, h - 1, d - 1], dtype=dt).clamp(min=1))
        self.register_buffer("center", torch.as_tensor(grid.center, dtype=dt))
        # the unknowns, each in units of its prior SD (the physical value is SD x parameter)
        self.affine = torch.nn.Parameter(torch.zeros(3, 3, dtype=dt))
        self.translation = torch.nn.Parameter(torch.zeros(3, dtype=dt))
        self.displacement = torch.nn.Parameter(torch.zeros(1, 3, *_lattice(grid, settings.control_mm),
                                                           dtype=dt))
        self.intensity = torch.nn.Parameter(torch.zeros(len(INTENSITY_KNOTS_HU) - 1, dtype=dt))
        self.residual = torch.nn.Parameter(torch.zeros(1, 1, *_lattice(grid, settings.residual_mm),
                                                       dtype=dt))

    def _segments(self, hu: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each value's knot interval and its position in it (``seg``, ``t`` in [0, 1])."""
        x = hu.clamp(self.knots[0], self.knots[-1])
        seg = torch.bucketize(x, self.knots[1:-1])
        x0, x1 = self.knots[seg], self.knots[seg + 1]
        return seg, (x - x0) / (x1 - x0)

    def curve(self, hu: torch.Tensor, segments: tuple[torch.Tensor, torch.Tensor] | None = None
              ) -> torch.Tensor:
        """The intensity correction: HU -> HU, piecewise linear through the knots (air's knot
        fixed), constant offset beyond the last knot. ``segments``: :meth:`_segments` of
        ``hu`` when known (the prior's are computed once)."""
        offsets = torch.cat([self.intensity.new_zeros(1),
                             self.intensity * self.settings.intensity_sd_hu])
        seg, t = self._segments(hu) if segments is None else segments
        return hu + offsets[seg] * (1 - t) + offsets[seg + 1] * t

    def _dense(self, lattice: torch.Tensor) -> torch.Tensor:
        return F.interpolate(lattice, size=tuple(self.grid.shape), mode="trilinear",
                             align_corners=True)[0]

    def forward(self) -> torch.Tensor:
        """The fitted sCT in HU, ``[D, H, W]``."""
        corrected = self.curve(self.prior, (self.prior_seg, self.prior_t))
        # output point p takes the corrected prior at q = (I + A)(p - c) + c + t + u(p)
        p = self.points - self.center
        s = self.settings
        q = (p + p @ (self.affine * s.affine_sd).T + self.center
             + self.translation * s.translation_sd_mm)
        if s.displacement_sd_mm > 0:
            q = q + self._dense(self.displacement * s.displacement_sd_mm).permute(1, 2, 3, 0)
        idx = q @ self.l2i[:3, :3].T + self.l2i[:3, 3]
        coords = idx / self.extent * 2 - 1
        warped = F.grid_sample((corrected - AIR_HU)[None, None], coords[None], mode="bilinear",
                               padding_mode="zeros", align_corners=True)[0, 0] + AIR_HU
        if s.residual_sd_hu <= 0:
            return warped
        inside = torch.sigmoid((warped - HEAD_THRESHOLD_HU) / 50.0)
        return warped + inside * self._dense(self.residual * s.residual_sd_hu)[0]

    def penalty(self) -> torch.Tensor:
        """The unknowns' negative log prior (sum of squared standardised values, averaged per
        unknown group)."""
        return sum(getattr(self, k).pow(2).mean() for k in self.settings.active())

    def summary(self) -> dict[str, Any]:
        """What the fit changed, in readable units."""
        with torch.no_grad():
            s = self.settings
            u = self.displacement.detach() * s.displacement_sd_mm
            return {"affine_max_abs": float(self.affine.abs().max() * s.affine_sd),
                    "translation_mm": [round(float(v) * s.translation_sd_mm, 2)
                                       for v in self.translation],
                    "displacement_max_mm": float(u.norm(dim=1).max()),
                    "displacement_rms_mm": float(u.norm(dim=1).pow(2).mean().sqrt()),
                    "intensity_knots_hu": list(INTENSITY_KNOTS_HU),
                    "intensity_offsets_hu": [0.0] + [round(float(v) * s.intensity_sd_hu, 1)
                                                     for v in self.intensity],
                    "residual_rms_hu": float(self.residual.detach().pow(2).mean().sqrt()
                                             * s.residual_sd_hu)}


def _view_match(drrs: torch.Tensor, views: torch.Tensor, affine: bool) -> torch.Tensor:
    """``drrs`` mapped onto ``views``' units: unchanged, or by each view's least-squares gain
    and offset (closed form, differentiable)."""
    if not affine:
        return drrs
    x = drrs.flatten(2)
    y = views.flatten(2)
    xm, ym = x.mean(-1, keepdim=True), y.mean(-1, keepdim=True)
    cov = ((x - xm) * (y - ym)).mean(-1, keepdim=True)
    var = (x - xm).pow(2).mean(-1, keepdim=True).clamp(min=1e-12)
    gain = cov / var
    return ((x - xm) * gain + ym).reshape(drrs.shape)


def _is_absolute(views: Any) -> bool:
    """True when every view says it holds DRR line integrals (a DRR's metadata ``units``)."""
    if not isinstance(views, Mapping):
        return False
    for img in views.values():
        units = str(getattr(img, "metadata", {}).get("units", ""))
        if "line integral" not in units:
            return False
    return True


def refine(prior: Volume, views: Mapping[str, Any], geometries: Mapping[str, ProjectionGeometry],
           settings: RefineSettings | None = None, *, steps: int | None = None,
           device: str | torch.device = "cpu",
           progress: ProgressCallback | None = None) -> tuple[Volume, dict[str, Any]]:
    """Fit the sCT ``prior`` to the radiographs ``views``; return the fitted sCT and a record.

    Args:
        prior: the sCT (HU) the fit starts from and is held near; its grid is kept.
        views: view name -> Radiograph or 2D array on the detectors of ``geometries`` (raw:
            line integrals for DRRs, any units for radiographs; bone bright).
        geometries: view name -> geometry, in the prior's frame.
        settings: see :class:`RefineSettings`.
        steps: overrides ``settings.steps``.
        device: where to fit.
        progress: ``(fraction, message)`` callback; returning False cancels.

    Returns:
        ``(sct, record)``: the fitted sCT (same grid and metadata as the prior, plus
        ``refined``), and the record (settings, match mode, steps run, the objective and the
        views' relative error before and after, seconds, :meth:`SCTFit.summary`).
    """
    s = dataclasses.replace(settings or RefineSettings(),
                            **({} if steps is None else {"steps": steps}))
    names = list(geometries)
    missing = [v for v in names if v not in views]
    if missing:
        raise ValueError(f"no image for view(s) {missing}")
    affine = {"absolute": False, "affine": True}.get(s.match, not _is_absolute(views))
    t0 = time.perf_counter()
    dev = torch.device(device)
    coarse = coarsen(prior, s.fit_spacing_mm, default=AIR_HU)
    grid = Grid.of(coarse)
    target = view_stack({v: views[v] for v in names}, names).to(dev, torch.float32)
    drr = DRR({v: geometries[v] for v in names}, grid, attenuation="soft").to(dev)

    def as_tensor(v: Volume) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(v.array, dtype=np.float32), device=dev)

    fit = SCTFit(as_tensor(coarse), grid, s).to(dev)
    scale = (s.noise * target.abs().mean()).clamp(min=1e-12)

    def objective() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        vol = fit()
        proj = _view_match(drr(vol[None]), target, affine)
        data = ((proj - target) / scale).pow(2).mean()
        return data + fit.penalty(), data, proj

    if not s.active():
        raise ValueError("nothing to fit: every prior SD is 0")
    opt = torch.optim.Adam([getattr(fit, k) for k in s.active()], lr=float(s.lr))
    with torch.no_grad():
        start_obj, start_data, proj0 = objective()
    rel0 = float((proj0 - target).abs().mean() / target.abs().mean())

    def unknowns() -> dict[str, torch.Tensor]:  # a snapshot of the parameters, not the buffers
        return {k: p.detach().clone() for k, p in fit.named_parameters()}

    # best: (objective, the unknowns it was computed at, how many Adam steps they had taken)
    best = (float(start_obj), unknowns(), 0)
    since, ran = 0, 0
    for step in range(1, int(s.steps) + 1):
        opt.zero_grad(set_to_none=True)
        obj, _, _ = objective()
        value = float(obj.detach())
        if value < best[0] * (1 - s.min_gain):
            best, since = (value, unknowns(), step - 1), 0
        else:
            since += 1
        obj.backward()
        opt.step()
        ran = step
        report(progress, step / max(1, s.steps), f"refining: step {step}, objective {value:.4g}")
        if since >= s.patience:
            break
    fit.load_state_dict(best[1], strict=False)
    hu = as_tensor(prior)
    with torch.no_grad():
        obj, data, proj = objective()
        full = fit
        if coarse is not prior:  # the same unknowns on the full-resolution prior
            full = SCTFit(hu, Grid.of(prior), s).to(dev)
            full.load_state_dict(best[1], strict=False)
        out = full().clamp(HU_CLIP[0], max(HU_CLIP[1], float(hu.max()))).cpu().numpy()
    rel1 = float((proj - target).abs().mean() / target.abs().mean())
    record = {"method": "test-time fit of the sCT to its views through the differentiable DRR "
                        f"(unknowns: {', '.join(s.active())}; Gaussian priors; Adam; best "
                        "state kept)",
              "settings": s.to_dict(), "match": "affine" if affine else "absolute",
              "steps_run": ran, "best_step": best[2],
              "fit_grid": grid.geometry_dict(),
              "objective": {"before": float(start_obj), "after": float(obj)},
              "data_term": {"before": float(start_data), "after": float(data)},
              "view_error": {"before": rel0, "after": rel1,
                             "definition": "mean |DRR(sCT) - view| / mean |view| over the views "
                                           "(after the view match)"},
              "time_s": round(time.perf_counter() - t0, 3), **fit.summary()}
    sct = prior.with_array(out.astype(np.float32))
    sct.metadata = {**prior.metadata, "refined": True}
    return sct, record
