"""Signed-distance and random-field primitives of the phantom (numpy and torch, mm)."""
from __future__ import annotations

import math

import numpy as np
import torch


def smin(a, b, k: float):
    """Smooth minimum (union of signed distances) with blending radius ``k`` mm."""
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b + (a - b) * h - k * h * (1.0 - h)


def smax(a, b, k: float):
    """Smooth maximum (intersection of signed distances) with blending radius ``k`` mm."""
    return -smin(-a, -b, k)


def ellipsoid_sdf(x, y, z, c, r):
    """Approximate signed distance (mm, < 0 inside) to an axis-aligned ellipsoid; works on
    numpy arrays and torch tensors."""
    qx, qy, qz = (x - c[0]) / r[0], (y - c[1]) / r[1], (z - c[2]) / r[2]
    rho = (qx * qx + qy * qy + qz * qz) ** 0.5
    return (rho - 1.0) * min(r)


def segment_dist(x, y, z, a, b):
    """Distance of points to segment a-b and the projection parameter h in [0, 1] (torch)."""
    a = np.asarray(a, float)
    ab = np.asarray(b, float) - a
    l2 = max(float(ab @ ab), 1e-9)
    px, py, pz = x - a[0], y - a[1], z - a[2]
    h = ((px * ab[0] + py * ab[1] + pz * ab[2]) / l2).clamp(0.0, 1.0)
    dx, dy, dz = px - h * ab[0], py - h * ab[1], pz - h * ab[2]
    return (dx * dx + dy * dy + dz * dz).sqrt(), h


def tube_sdf(x, y, z, points, radii):
    """Signed distance to a tube along a polyline with a radius varying linearly (torch)."""
    out = None
    for (a, b), (ra, rb) in zip(zip(points[:-1], points[1:]), zip(radii[:-1], radii[1:])):
        d, h = segment_dist(x, y, z, a, b)
        d = d - (ra + h * (rb - ra))
        out = d if out is None else torch.minimum(out, d)
    return out


def waves(rng: np.random.Generator, n: int, wavelength: tuple[float, float], amp: float = 1.0):
    """Random plane waves ``(k (n,3) rad/mm, phase (n,), amplitude (n,))`` of a band-limited
    isotropic random field."""
    d = rng.normal(size=(n, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    lam = rng.uniform(*wavelength, size=n)
    k = d * (2 * np.pi / lam)[:, None]
    return k, rng.uniform(0, 2 * np.pi, n), amp * rng.uniform(0.5, 1.0, n) / math.sqrt(n / 2)


def eval_waves(plane_waves, x, y, z, grad: bool = False):
    """Sum of the plane waves at numpy points (float32 torch inside; numpy out), and its
    gradient when ``grad``."""
    k, ph, a = plane_waves
    shape = np.broadcast(x, y, z).shape
    x, y, z = (torch.from_numpy(np.ascontiguousarray(np.broadcast_to(v, shape), dtype=np.float32))
               for v in (x, y, z))
    val = torch.zeros(shape)
    gx, gy, gz = (torch.zeros(shape) for _ in range(3)) if grad else (None, None, None)
    for (kx, ky, kz), p, ai in zip(k, ph, a):
        arg = x * float(kx) + y * float(ky) + z * float(kz) + float(p)
        val.add_(torch.cos(arg), alpha=float(ai))
        if grad:
            sn = torch.sin(arg).mul_(-float(ai))
            gx.add_(sn, alpha=float(kx))
            gy.add_(sn, alpha=float(ky))
            gz.add_(sn, alpha=float(kz))
    if grad:
        return val.numpy(), gx.numpy(), gy.numpy(), gz.numpy()
    return val.numpy()


def uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    """One uniform draw in ``[lo, hi)`` as a Python float."""
    return float(rng.uniform(lo, hi))
