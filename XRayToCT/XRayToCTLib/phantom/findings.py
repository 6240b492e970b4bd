"""Optional pathologies of the phantom: their names, parsing, and painting."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from .anatomy import Anatomy
from .fields import ellipsoid_sdf, tube_sdf, uniform
from .grid import PosedGrid
from .layout import DEEP_BRAIN
from .painting import paint
from .tissues import BONE, BRAIN, SOFT

FINDINGS: tuple[str, ...] = ("shunt", "intraparenchymal_hemorrhage", "subdural_hemorrhage",
                             "epidural_hemorrhage", "fracture")
"""Optional pathologies (CQ-500's, and the seed cohorts' shunts)."""

FINDING_ALIASES: dict[str, str] = {
    "ich": "intraparenchymal_hemorrhage", "iph": "intraparenchymal_hemorrhage",
    "hemorrhage": "intraparenchymal_hemorrhage", "sdh": "subdural_hemorrhage",
    "edh": "epidural_hemorrhage", "vp_shunt": "shunt",
}
"""Short names accepted for :data:`FINDINGS` (``xraytoct phantom --findings shunt,ich``)."""


def parse_findings(findings: Sequence[str] | str | None) -> list[str] | str:
    """Validate findings: ``None``/``""``/``"none"`` -> ``[]``; ``"random"`` stays
    ``"random"``; a comma list or a sequence of names from :data:`FINDINGS` (or
    :data:`FINDING_ALIASES`) -> the canonical names in :data:`FINDINGS` order, without
    repeats. Raises ValueError naming an unknown finding."""
    if findings is None:
        return []
    if isinstance(findings, str):
        if findings.strip().lower() == "random":
            return "random"
        if findings.strip().lower() in ("", "none"):
            return []
        findings = findings.split(",")
    names = set()
    for f in findings:
        key = str(f).strip().lower().replace("-", "_")
        key = FINDING_ALIASES.get(key, key)
        if key not in FINDINGS:
            raise ValueError(f"unknown finding {str(f).strip()!r}; choose from {', '.join(FINDINGS)} "
                             f"(or {', '.join(FINDING_ALIASES)}), or 'random'")
        names.add(key)
    return [f for f in FINDINGS if f in names]


def resolve_findings(findings, rng: np.random.Generator) -> list[str]:
    """:func:`parse_findings`, with ``"random"`` drawn from ``rng`` (each finding with
    probability 1/4)."""
    parsed = parse_findings(findings)
    if parsed == "random":
        return [f for f in FINDINGS if rng.uniform() < 0.25]
    return list(parsed)


def surface_point(a: Anatomy, direction) -> np.ndarray:
    """Point of the inner table in a direction from the cavity centre (bisection)."""
    d = np.asarray(direction, float)
    d /= np.linalg.norm(d)
    lo, hi = 0.0, 150.0
    for _ in range(30):
        mid = (lo + hi) / 2
        p = a.center + mid * d
        if a.cavity_sdf(*(np.array([v]) for v in p))[0] < 0:
            lo = mid
        else:
            hi = mid
    return a.center + lo * d


def paint_findings(a: Anatomy, g: PosedGrid, lab: torch.Tensor, findings: Sequence[str],
                   rng: np.random.Generator) -> dict[str, Any]:
    """Paint each finding (drawing its side, position and size from ``rng``); returns
    ``findings_detail``: canonical-frame positions and sizes per finding."""
    detail: dict[str, Any] = {}
    brain = BRAIN
    c = a.center
    for name in findings:
        side = float(rng.choice([-1.0, 1.0]))
        if name == "shunt":
            # right (or left) frontal or parietal burr hole -> frontal horn of a lateral ventricle
            frontal = rng.uniform() < 0.5
            d = (side * 0.45, -0.55, 0.7) if frontal else (side * 0.45, 0.55, 0.7)
            p_in = surface_point(a, d)
            n = (p_in - c) / np.linalg.norm(p_in - c)
            xo = DEEP_BRAIN.ventricle_spread(a.vent)  # the lateral ventricles' bodies
            tip = c + (side * xo, -20.0 if frontal else 24.0, 16.0)
            t_in = float(a.thickness(*(np.array([v]) for v in p_in))[0])
            outer = p_in + n * (t_in + 2.5)
            # the valve/reservoir lies on the skull, under the scalp, behind and below the hole
            d2 = np.array([side * 0.75, d[1] + 0.45, 0.35])
            p2 = surface_point(a, d2)
            n2 = (p2 - c) / np.linalg.norm(p2 - c)
            valve = p2 + n2 * (float(a.thickness(*(np.array([v]) for v in p2))[0]) + 3.0)
            # distal catheter: down behind the ear and along the neck, under the skin
            ear = np.array([side * (a.half_width(a.cy + 30.0, a.cz - 40.0) - 6.0), a.cy + 30.0, a.cz - 40.0])
            neck = np.array([side * (a.neck_r[0] - 8.0), a.cy + 10.0, -200.0])
            down = [valve, ear, neck]
            lo = np.minimum.reduce([tip, outer, valve]) - 25
            hi = np.maximum.reduce([tip, outer, valve]) + 25
            b = g.box(lo, hi)
            if b is not None:
                sl, x, y, z = b
                hole = tube_sdf(x, y, z, [p_in - n * 2, outer + n * 2], [6.5, 6.5]) < 0
                paint(lab, sl, hole, "skin", BONE)
                mid = (outer + valve) / 2
                mid = c + (mid - c) * (np.linalg.norm(outer - c) + 1.0) / np.linalg.norm(mid - c)
                cath = tube_sdf(x, y, z, [tip, p_in, outer, mid, valve], [1.3] * 5)
                paint(lab, sl, cath < 0, "shunt_plastic")
                paint(lab, sl, tube_sdf(x, y, z, [tip, tip + 0.12 * (p_in - tip)], [1.4, 1.4]) < 0,
                       "shunt_metal")                                        # radiopaque tip marker
                # reservoir dome (plastic) with a metal valve mechanism, tangent to the skull
                tdir = np.cross(n2, (1.0, 0.0, 0.0))
                tdir = tdir / max(np.linalg.norm(tdir), 1e-6) * 9.0
                res = tube_sdf(x, y, z, [valve - tdir, valve + tdir], [4.5, 4.5])
                paint(lab, sl, res < 0, "shunt_plastic")
                paint(lab, sl, res < -2.3, "shunt_metal")
            b = g.box(np.minimum(down[0], down[2]) - 5, np.maximum(down[0], down[2]) + 5)
            if b is not None:
                sl, x, y, z = b
                paint(lab, sl, tube_sdf(x, y, z, down, [1.3] * 3) < 0, "shunt_plastic", SOFT)
            detail[name] = {"burr_hole": p_in.round(1).tolist(), "tip": np.round(tip, 1).tolist(),
                            "valve": valve.round(1).tolist()}
        elif name == "intraparenchymal_hemorrhage":
            p = c + (side * uniform(rng, 15, 35), uniform(rng, -30, 30), uniform(rng, -5, 30))
            r = np.array([uniform(rng, 8, 20), uniform(rng, 8, 22), uniform(rng, 8, 18)])
            b = g.box(p - r - 10, p + r + 10)
            if b is not None:
                sl, x, y, z = b
                wob = 1.0 + 0.12 * torch.sin(x * 0.5 + 1.0) * torch.sin(y * 0.45) * torch.sin(z * 0.55 + 2.0)
                sd = ellipsoid_sdf(x, y, z, p, r) / wob
                paint(lab, sl, sd < 6.0, "edema", ("white_matter", "grey_matter", "deep_grey_matter"))
                paint(lab, sl, sd < 0, "hemorrhage", brain + ("edema",))
            detail[name] = {"center": p.round(1).tolist(), "radii": r.round(1).tolist()}
        elif name in ("subdural_hemorrhage", "epidural_hemorrhage"):
            # a collection under the inner table over one convexity
            d = np.array([side * 1.0, uniform(rng, -0.5, 0.6), uniform(rng, 0.0, 0.7)])
            p = surface_point(a, d)
            sub = name == "subdural_hemorrhage"
            extent = uniform(rng, 45, 70) if sub else uniform(rng, 25, 40)
            thick = uniform(rng, 4, 12) if sub else uniform(rng, 10, 22)
            b = g.box(p - extent - 5, p + extent + 5)
            if b is not None:
                sl, x, y, z = b
                cav = torch.from_numpy(a.cavity_sdf(x.numpy().astype(np.float64),
                                                    y.numpy().astype(np.float64),
                                                    z.numpy().astype(np.float64)).astype(np.float32))
                rr = torch.sqrt((x - p[0]) ** 2 + (y - p[1]) ** 2 + (z - p[2]) ** 2) / extent
                prof = thick * ((1 - rr * rr).clamp(min=0) ** (0.25 if sub else 1.0))
                m = (cav < 0) & (-cav < prof)
                paint(lab, sl, m, "hemorrhage", brain)
            detail[name] = {"center": p.round(1).tolist(), "extent_mm": round(extent, 1),
                            "thickness_mm": round(thick, 1)}
        elif name == "fracture":
            d = np.array([side * uniform(rng, 0.3, 1.0), uniform(rng, -0.8, 0.8), uniform(rng, 0.2, 0.9)])
            p = surface_point(a, d)
            n = (p - c) / np.linalg.norm(p - c)
            t = np.cross(n, rng.normal(size=3))
            t /= np.linalg.norm(t)
            length = uniform(rng, 25, 60)
            b = g.box(p - length - 15, p + length + 15)
            if b is not None:
                sl, x, y, z = b
                # a plane through p containing n, with a jagged trace, limited in length
                pn = np.cross(n, t)
                dist = (x - p[0]) * pn[0] + (y - p[1]) * pn[1] + (z - p[2]) * pn[2]
                along = (x - p[0]) * t[0] + (y - p[1]) * t[1] + (z - p[2]) * t[2]
                dist = dist + 1.2 * torch.sin(along * 0.6) + 0.6 * torch.sin(along * 1.7 + 1.0)
                m = (dist.abs() < 0.8) & (along.abs() < length / 2)
                paint(lab, sl, m, "skin", BONE)
            detail[name] = {"center": p.round(1).tolist(), "length_mm": round(length, 1)}
    return detail

