"""A procedural head CT in HU, deterministic by seed: the training and test data of the project.

The head is built as a **label map** (:data:`LABELS`) in a *canonical frame* and turned into
HU by a per-seed value per tissue (drawn from :data:`TISSUE_HU`), scanner noise and a
partial-volume blur. The canonical frame is LPS millimetres with the head centred near the
origin, the face towards -y (anterior) and the vertex towards +z.

Anatomy (every size, shape and density varies with the seed):

* head outline grown from the intracranial cavity (dolicho- to brachycephalic, narrower
  forehead, occipital bulge, random low-order shape harmonics) plus face, nose, jaw and neck;
  skin, subcutaneous fat, temporalis muscle;
* skull: outer and inner cortical tables with diploe between, thickness varying over the
  vault (thin temporal squama, thick frontal and occipital bone), coronal/sagittal/lambdoid
  sutures, a skull base following the anterior, middle and posterior cranial fossae, dense
  petrous bones, mastoid air cells, foramen magnum, sphenoid body and clivus, orbits,
  maxillae, zygomatic arches, hard palate, mandible with teeth, cervical vertebrae (C1 ring,
  dens and C2 body, rounded bodies with arches and processes below), spinal canal and cord;
* air: frontal, sphenoid, ethmoid and maxillary sinuses, mastoid cells, nasal cavity with
  septum and turbinates, pharynx;
* orbits with fat, globes, lenses and optic nerves;
* brain: a folded cortex (grey ribbon around white matter, CSF in the sulci, which are the
  zero set of a band-limited random field made radial, narrowing with depth), interhemispheric and Sylvian fissures, caudate, lentiform
  nuclei and thalami, brain stem, cerebellum with folia, falx and tentorium, basal cisterns,
  lateral (normal to hydrocephalic, ``ventricle_scale``), third and fourth ventricles,
  choroid-plexus and pineal calcifications;
* findings (:data:`FINDINGS`): ventriculoperitoneal shunt (burr hole, radiopaque catheter,
  valve with metal parts), intraparenchymal (with oedema), subdural and epidural haemorrhage,
  calvarial fracture;
* acquisition: correlated scanner noise (``noise_hu`` = its standard deviation in
  homogeneous brain), partial-volume blur, optional beam-hardening (Hounsfield-bar) streak
  between the petrous bones, optional head holder and table;
* pose: a rigid rotation and translation of the head in the scanner frame (see
  :func:`head_phantom` and :func:`pose_registration`).

Speed: smooth fields (signed distances, thickness, the sulcal field) are evaluated on a
coarse grid (about 4 mm) *already in the scanner frame* and upsampled by trilinear
interpolation slab by slab, where they are thresholded at full resolution; small structures
are painted inside their bounding boxes. The pose therefore costs no resampling and keeps
edges sharp. One 256^3 head takes about 1.3 s of CPU time (one thread; torch is set to one
thread during the call and restored after) on the project's 2-core machine
(``benchmarks/phantom.py``).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .geometry import Volume, rotation_matrix

__all__ = ["head_phantom", "pose_registration", "parse_findings", "FINDINGS", "FINDING_ALIASES",
           "TISSUE_HU", "LABELS", "POSE_RANGES"]

FINDINGS: tuple[str, ...] = ("shunt", "intraparenchymal_hemorrhage", "subdural_hemorrhage",
                             "epidural_hemorrhage", "fracture")
"""Optional pathologies (CQ-500's, and the seed cohorts' shunts)."""

FINDING_ALIASES: dict[str, str] = {
    "ich": "intraparenchymal_hemorrhage", "iph": "intraparenchymal_hemorrhage",
    "hemorrhage": "intraparenchymal_hemorrhage", "sdh": "subdural_hemorrhage",
    "edh": "epidural_hemorrhage", "vp_shunt": "shunt",
}
"""Short names accepted for :data:`FINDINGS` (``xraytoct phantom --findings shunt,ich``)."""

TISSUE_HU: dict[str, tuple[float, float]] = {
    # name: (lo, hi) HU. Each phantom draws one value per tissue uniformly in its range; the
    # voxels of a tissue scatter around it by the scanner noise (and, for bone, its texture).
    "air": (-1000.0, -1000.0),
    "fat": (-110.0, -80.0),
    "skin": (20.0, 60.0),
    "muscle": (40.0, 60.0),
    "cortical_bone": (1300.0, 1900.0),
    "diploe": (450.0, 800.0),
    "petrous_bone": (1800.0, 2300.0),
    "cancellous_bone": (200.0, 400.0),      # vertebral bodies, mandible core
    "teeth": (2000.0, 2800.0),
    "suture": (80.0, 300.0),
    "grey_matter": (33.0, 42.0),
    "white_matter": (23.0, 31.0),
    "deep_grey_matter": (32.0, 40.0),       # caudate, lentiform nuclei, thalami
    "brain_stem": (28.0, 36.0),
    "csf": (0.0, 12.0),
    "dura": (45.0, 70.0),                   # falx, tentorium
    "calcification": (150.0, 400.0),        # choroid plexus, pineal
    "globe": (8.0, 22.0),                   # vitreous
    "lens": (100.0, 130.0),
    "optic_nerve": (25.0, 40.0),
    "mucosa": (20.0, 45.0),                 # turbinates, sinus lining
    "hemorrhage": (55.0, 85.0),             # acute blood
    "edema": (12.0, 22.0),
    "shunt_plastic": (250.0, 600.0),        # barium-impregnated silicone
    "shunt_metal": (2500.0, 3071.0),
    "holder": (150.0, 400.0),               # carbon-fibre head holder
    "foam": (-950.0, -850.0),
    "table": (100.0, 300.0),
}

LABELS: dict[str, int] = {name: code for code, name in enumerate(TISSUE_HU)}
"""Label codes of the map returned by ``head_phantom(..., return_labels=True)``."""

POSE_RANGES: dict[str, tuple[float, float]] = {
    # the random pose (pose=True): uniform in these ranges
    "pitch_x_deg": (-12.0, 12.0), "roll_y_deg": (-6.0, 6.0), "yaw_z_deg": (-8.0, 8.0),
    "tx_mm": (-8.0, 8.0), "ty_mm": (-8.0, 8.0), "tz_mm": (-8.0, 8.0),
}

_L = LABELS
_BRAIN = ("grey_matter", "white_matter", "deep_grey_matter", "brain_stem", "csf", "dura",
          "calcification")
_BONE = ("cortical_bone", "diploe", "petrous_bone", "suture", "cancellous_bone")
_SOFT = ("skin", "fat", "muscle", "mucosa")
_COARSE_MM = 4.0


# ----------------------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------------------
def _smin(a, b, k: float):
    """Smooth minimum (union of signed distances) with blending radius ``k`` mm."""
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b + (a - b) * h - k * h * (1.0 - h)


def _smax(a, b, k: float):
    return -_smin(-a, -b, k)


def _ellipsoid_sdf(x, y, z, c, r):
    """Approximate signed distance (mm, < 0 inside) to an axis-aligned ellipsoid; works on
    numpy arrays and torch tensors."""
    qx, qy, qz = (x - c[0]) / r[0], (y - c[1]) / r[1], (z - c[2]) / r[2]
    rho = (qx * qx + qy * qy + qz * qz) ** 0.5
    return (rho - 1.0) * min(r)


def _segment_dist(x, y, z, a, b):
    """Distance of points to segment a-b and the projection parameter h in [0, 1] (torch)."""
    a = np.asarray(a, float)
    ab = np.asarray(b, float) - a
    l2 = max(float(ab @ ab), 1e-9)
    px, py, pz = x - a[0], y - a[1], z - a[2]
    h = ((px * ab[0] + py * ab[1] + pz * ab[2]) / l2).clamp(0.0, 1.0)
    dx, dy, dz = px - h * ab[0], py - h * ab[1], pz - h * ab[2]
    return (dx * dx + dy * dy + dz * dz).sqrt(), h


def _tube_sdf(x, y, z, points, radii):
    """Signed distance to a tube along a polyline with a radius varying linearly (torch)."""
    out = None
    for (a, b), (ra, rb) in zip(zip(points[:-1], points[1:]), zip(radii[:-1], radii[1:])):
        d, h = _segment_dist(x, y, z, a, b)
        d = d - (ra + h * (rb - ra))
        out = d if out is None else torch.minimum(out, d)
    return out


def _waves(rng: np.random.Generator, n: int, wavelength: tuple[float, float], amp: float = 1.0):
    """Random plane waves ``(k (n,3) rad/mm, phase (n,), amplitude (n,))`` of a band-limited
    isotropic random field."""
    d = rng.normal(size=(n, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    lam = rng.uniform(*wavelength, size=n)
    k = d * (2 * np.pi / lam)[:, None]
    return k, rng.uniform(0, 2 * np.pi, n), amp * rng.uniform(0.5, 1.0, n) / math.sqrt(n / 2)


def _eval_waves(waves, x, y, z, grad: bool = False):
    """Sum of the plane waves at numpy points (float32 torch inside; numpy out), and its
    gradient when ``grad``."""
    k, ph, a = waves
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


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


# ----------------------------------------------------------------------------------------
# the anatomy of one seed (all in the canonical frame, mm)
# ----------------------------------------------------------------------------------------
class _Anatomy:
    """Random anatomical parameters of one head (canonical frame, mm, HU)."""

    def __init__(self, rng: np.random.Generator, ventricle_scale: float | None):
        u = lambda lo, hi: _u(rng, lo, hi)  # noqa: E731
        self.hu = {k: u(*v) for k, v in TISSUE_HU.items()}
        # intracranial cavity (inner table): centre and half-axes
        self.cy, self.cz = u(6.0, 14.0), u(22.0, 30.0)
        self.ay = u(78.0, 88.0)
        self.ax = self.ay * u(0.76, 0.92)          # internal cranial index
        self.az_up, self.az_dn = u(60.0, 70.0), u(58.0, 66.0)
        self.occ_bulge = u(0.0, 0.06)
        self.shape_waves = _waves(rng, 10, (3.0, 6.0), u(0.015, 0.03))  # on the unit sphere
        self.skull_t = u(5.0, 7.5)                  # mean vault thickness
        self.thick_waves = _waves(rng, 12, (60.0, 140.0), 1.2)
        self.scalp_t = u(4.0, 7.0)
        self.skin_t = u(1.5, 2.5)
        self.temporalis = u(5.0, 10.0)
        self.sulc_waves = _waves(rng, 40, (15.0, 22.0))
        self.fat_waves = _waves(rng, 16, (25.0, 50.0))
        self.atrophy = float(rng.beta(1.5, 3.0))    # 0 young .. 1 marked atrophy
        self.cortex_t = u(2.3, 3.2)
        self.sulc_depth = u(14.0, 20.0)
        self.csf_t = 0.5 + 1.8 * self.atrophy + u(0.0, 0.5)
        self.sulc_w = 0.25 + 1.1 * self.atrophy + u(0.0, 0.2)
        self.falx_w = u(0.6, 1.0)
        self.floor_ant, self.floor_mid, self.floor_post = u(12.0, 18.0), u(44.0, 52.0), u(55.0, 62.0)
        if ventricle_scale is None:
            ventricle_scale = u(0.8, 1.3) if rng.uniform() < 0.6 else u(1.3, 2.6)
        self.vent = float(ventricle_scale)
        self.face_w, self.face_len = u(52.0, 60.0), u(0.9, 1.1)
        self.neck_r = (u(50.0, 60.0), u(52.0, 62.0))
        self.frontal_sinus = (u(6.0, 22.0), u(4.0, 8.0), u(6.0, 15.0))
        self.sphenoid_sinus = (u(8.0, 14.0), u(8.0, 13.0), u(7.0, 11.0))
        self.maxillary = (u(13.0, 17.0), u(15.0, 19.0), u(14.0, 19.0))
        self.globe_r = u(11.0, 12.5)
        self.choroid_calc = rng.uniform() < 0.6
        self.pineal_calc = rng.uniform() < 0.5
        self.falx_calc = rng.uniform() < 0.2
        self.mastoid_pneum = u(0.1, 0.6)
        self.cells = _waves(rng, 6, (6.0, 9.0))
        self.folia_phase = u(0.0, 2 * np.pi)

    # derived landmarks -------------------------------------------------------------------
    @property
    def center(self) -> np.ndarray:
        return np.array([0.0, self.cy, self.cz])

    @property
    def y_front(self) -> float:
        """Front of the cavity (inner table of the frontal bone)."""
        return self.cy - self.ay

    @property
    def foramen(self) -> np.ndarray:
        """Centre of the foramen magnum."""
        return np.array([0.0, self.cy + 28.0, self.cz - self.floor_post + 4.0])

    def floor_z(self, x, y):
        """z of the cranial floor (anterior, middle and posterior fossae) at (x, y)."""
        cy, cz = self.cy, self.cz
        g = lambda u, v: np.exp(-(u * u + v * v))  # noqa: E731
        z = cz - self.floor_ant - 0.06 * np.maximum(y - (cy - 60), 0)  # anterior fossa slope
        z = z - (self.floor_mid - self.floor_ant) * g((np.abs(x) - 40.0) / 25.0, (y - (cy - 6.0)) / 21.0)
        z = z - (self.floor_post - self.floor_ant) * g(x / 50.0, (y - (cy + 40.0)) / 30.0)
        # orbital roofs dome up into the anterior fossa; the cribriform plate stays low
        z = z + 9.0 * g((np.abs(x) - 0.4 * self.ax) / 16.0, (y - (self.y_front + 22.0)) / 20.0)
        return z

    def cavity_sdf(self, x, y, z):
        """Signed distance (mm, approximate) to the inner table (numpy)."""
        yy = y - self.cy
        zz = z - self.cz
        ax = self.ax * (1.0 - 0.14 * np.clip(-yy / self.ay, 0, 1) ** 2)  # narrower forehead
        ay = self.ay * (1.0 + self.occ_bulge * np.clip(yy / self.ay, 0, 1))
        az = np.where(zz > 0, self.az_up, self.az_dn)
        qx, qy, qz = x / ax, yy / ay, zz / az
        rho = np.sqrt(qx * qx + qy * qy + qz * qz) + 1e-6
        h = _eval_waves(self.shape_waves, qx / rho, qy / rho, qz / rho)
        s = (rho - 1.0 - h) * 70.0
        return _smax(s, self.floor_z(x, y) - z, 8.0)

    def skin_sdf(self, x, y, z):
        """Signed distance to the skin (numpy)."""
        cav = self.cavity_sdf(x, y, z)
        return self.outline_sdf(x, y, z, cav, self.thickness(x, y, z))

    def half_width(self, y: float, z: float, skin: bool = True) -> float:
        """Lateral extent (mm, +x) of the skin (or of the cavity) at height z, depth y."""
        fn = self.skin_sdf if skin else self.cavity_sdf
        t = np.linspace(0.0, 150.0, 601)
        inside = fn(t, np.full_like(t, y), np.full_like(t, z)) < 0
        if not inside[0]:
            return 0.0
        return float(t[np.argmin(inside) - 1]) if not inside.all() else 150.0

    def thickness(self, x, y, z):
        """Vault thickness (mm): thin temporal squama, thick frontal/occipital and base."""
        c = self.center
        d = np.stack(np.broadcast_arrays(x - c[0], y - c[1], z - c[2]))
        n = d / (np.linalg.norm(d, axis=0) + 1e-6)
        t = self.skull_t + _eval_waves(self.thick_waves, x, y, z)
        t = t - 2.5 * np.exp(-((np.abs(n[0]) - 0.95) / 0.12) ** 2 - ((z - self.cz + 20) / 22.0) ** 2)
        t = t + 1.5 * np.clip(-n[1], 0, 1) ** 4 + 1.5 * np.clip(n[1], 0, 1) ** 4
        w = np.clip((self.cz - 5.0 - z) / 15.0, 0, 1)  # skull base: thinner plates
        t = t * (1 - w) + 3.5 * w
        # glabella: the frontal sinus region thickens the frontal bone
        gl = np.exp(-(x / 24.0) ** 2 - ((y - self.y_front) / 14.0) ** 2
                    - ((z - (self.cz - self.floor_ant + 8)) / 12.0) ** 2)
        t = t + (2.0 + 1.2 * self.frontal_sinus[1]) * gl
        return np.clip(t, 2.0, 18.0)

    def outline_sdf(self, x, y, z, cav, thick):
        """Signed distance to the skin: the cranium grown from the cavity, plus face and neck."""
        cy, cz = self.cy, self.cz
        scalp = self.scalp_t + self.temporalis * np.exp(
            -((np.abs(x) / self.ax - 0.9) / 0.25) ** 2 - ((z - cz + 18) / 25.0) ** 2
            - ((y - cy + 10) / 40.0) ** 2)
        s = cav - thick - scalp
        yf = self.y_front - self.skull_t - self.scalp_t
        fl = self.face_len
        face = _ellipsoid_sdf(x, y, z, (0, yf + 48, cz - 62 * fl), (self.face_w, 50, 52 * fl))
        nose = _ellipsoid_sdf(x, y, z, (0, yf - 4, cz - 58 * fl), (10, 16, 24 * fl))
        jaw = _ellipsoid_sdf(x, y, z, (0, yf + 42, cz - 112 * fl), (self.face_w * 0.8, 40, 24))
        nx, ny = self.neck_r
        neck = np.sqrt((x / nx) ** 2 + ((y - cy - 20) / ny) ** 2) * min(nx, ny) - min(nx, ny)
        neck = _smax(neck, z - (cz - 60), 10.0)
        zo = cz - self.floor_ant - 18.0  # orbits and cheek bones: the widest, most forward face
        midface = _ellipsoid_sdf(x, y, z, (0, yf + 30, zo - 6.0), (self.face_w + 6.0, 36, 30))
        s = _smin(s, face, 12.0)
        s = _smin(s, midface, 10.0)
        s = _smin(s, nose, 6.0)
        s = _smin(s, jaw, 14.0)
        return _smin(s, neck, 18.0)



# ----------------------------------------------------------------------------------------
# grids
# ----------------------------------------------------------------------------------------
class _Grid:
    """The output grid (scanner frame, identity direction) and the pose."""

    def __init__(self, size, spacing, rot: np.ndarray, trans: np.ndarray):
        self.n = np.broadcast_to(np.asarray(size, dtype=int), (3,)).copy()
        self.sp = np.broadcast_to(np.asarray(spacing, dtype=float), (3,)).copy()
        self.origin = -(self.n - 1) * self.sp / 2.0
        self.rot, self.trans = rot, trans
        # coarse factor per axis: coarse node m sits on fine index m * f
        self.f = np.maximum(1, np.round(_COARSE_MM / self.sp)).astype(int)
        self.m = (self.n - 2) // self.f + 2  # nodes, the last at or beyond the grid's end

    def canonical(self, ii, jj, kk):
        """Canonical (head-frame) coordinates of fine indices (broadcastable numpy/torch)."""
        r = self.rot.T  # p = R^T (X - t)
        xs = self.origin[0] + ii * self.sp[0] - self.trans[0]
        ys = self.origin[1] + jj * self.sp[1] - self.trans[1]
        zs = self.origin[2] + kk * self.sp[2] - self.trans[2]
        return tuple(r[a, 0] * xs + r[a, 1] * ys + r[a, 2] * zs for a in range(3))

    def box(self, lo, hi):
        """Index slices (k, j, i) of the scanner-frame bounding box of a canonical box, and
        the canonical coordinates (x, y, z) of its voxels as torch tensors; None if empty."""
        lo, hi = np.asarray(lo, float), np.asarray(hi, float)
        corners = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1])
                            for c in (lo[2], hi[2])])
        w = corners @ self.rot.T + self.trans
        i0 = np.maximum(np.floor((w.min(0) - self.origin) / self.sp).astype(int), 0)
        i1 = np.minimum(np.ceil((w.max(0) - self.origin) / self.sp).astype(int) + 1, self.n)
        if np.any(i1 <= i0):
            return None
        ii = torch.arange(i0[0], i1[0], dtype=torch.float32).view(1, 1, -1)
        jj = torch.arange(i0[1], i1[1], dtype=torch.float32).view(1, -1, 1)
        kk = torch.arange(i0[2], i1[2], dtype=torch.float32).view(-1, 1, 1)
        x, y, z = self.canonical(ii, jj, kk)
        sl = (slice(i0[2], i1[2]), slice(i0[1], i1[1]), slice(i0[0], i1[0]))
        return sl, x, y, z


# ----------------------------------------------------------------------------------------
# the label map
# ----------------------------------------------------------------------------------------
def _coarse_fields(a: _Anatomy, g: _Grid) -> torch.Tensor:
    """Smooth fields on the coarse grid, scanner frame: (channels, mk, mj, mi) float32, the
    channels being the signed distances (mm) to the skin and to the inner table, the vault
    thickness (mm), the signed distance to the nearest sulcus (mm) and a fat-plane field."""
    mi, mj, mk = g.m
    ii = (np.arange(mi) * g.f[0]).reshape(1, 1, -1).astype(float)
    jj = (np.arange(mj) * g.f[1]).reshape(1, -1, 1).astype(float)
    kk = (np.arange(mk) * g.f[2]).reshape(-1, 1, 1).astype(float)
    x, y, z = (np.broadcast_to(c, (mk, mj, mi)) for c in g.canonical(ii, jj, kk))
    cav = a.cavity_sdf(x, y, z)
    thick = a.thickness(x, y, z)
    skin = a.outline_sdf(x, y, z, cav, thick)
    # sulci run perpendicular to the brain surface: the random field is evaluated at the
    # points projected (mostly) onto a sphere about the cavity centre, so its zero set is made
    # of radial sheets; |n| / |grad n| (by finite differences) is the distance to a sulcus
    c = a.center
    rel = np.stack([x - c[0], y - c[1], z - c[2]])
    r = np.sqrt((rel ** 2).sum(0)) + 1e-3
    scale = (70.0 + 0.6 * (r - 70.0)) / r
    n = _eval_waves(a.sulc_waves, c[0] + rel[0] * scale, c[1] + rel[1] * scale, c[2] + rel[2] * scale)
    step = (g.f * g.sp)[::-1]  # coarse spacing along k, j, i (mm)
    grads = np.gradient(n, *step) if min(n.shape) > 1 else [np.ones_like(n)]
    sulc = n / np.maximum(np.sqrt(sum(gr * gr for gr in grads)), 1e-3)
    fat = _eval_waves(a.fat_waves, x, y, z)
    ch = [skin, cav, thick, np.clip(sulc, -30, 30), fat]
    return torch.from_numpy(np.stack(ch).astype(np.float32))


def _base_labels(a: _Anatomy, g: _Grid, coarse: torch.Tensor) -> torch.Tensor:
    """Skin, fat, muscle, skull, brain (folded cortex, cerebellum, falx, tentorium) slab by
    slab from the upsampled coarse fields: uint8 ``[k, j, i]``."""
    ni, nj, nk = (int(v) for v in g.n)
    fi, fj, fk = (int(v) for v in g.f)
    lab = torch.zeros((nk, nj, ni), dtype=torch.uint8)
    slab = 8
    fm = a.foramen
    tab = min(1.8, 0.3 * a.skull_t)
    nch = coarse.shape[0]
    planes: dict[int, torch.Tensor] = {}

    def plane(m: int) -> torch.Tensor:
        # one coarse k-plane upsampled bilinearly in (j, i), exact at the coarse nodes
        if m not in planes:
            for old in [q for q in planes if q < m - 1]:
                del planes[old]
            planes[m] = F.interpolate(coarse[:, m][None], size=((g.m[1] - 1) * fj + 1, (g.m[0] - 1) * fi + 1),
                                      mode="bilinear", align_corners=True)[0, :, :nj, :ni].contiguous()
        return planes[m]

    ii = torch.arange(ni, dtype=torch.float32).view(1, 1, -1)
    jj = torch.arange(nj, dtype=torch.float32).view(1, -1, 1)
    for k0 in range(0, nk, slab):
        k1 = min(nk, k0 + slab)
        up = torch.empty((k1 - k0, nch, nj, ni))
        for kk in range(k0, k1):
            m, w = kk // fk, (kk % fk) / fk
            if w == 0.0:
                up[kk - k0] = plane(m)
            else:
                torch.lerp(plane(m), plane(m + 1), w, out=up[kk - k0])
        skin, cav, thick, sulc, fat = up.unbind(1)
        kk = torch.arange(k0, k1, dtype=torch.float32).view(-1, 1, 1)
        sj, si = _crop(skin < 0)
        if sj is None:
            continue
        o = lab[k0:k1, sj, si]  # a view: painting it paints the label map
        skin, cav, thick, sulc, fat = (t[:, sj, si] for t in (skin, cav, thick, sulc, fat))
        x, y, z = g.canonical(ii[..., si], jj[:, sj], kk)
        x, y, z = (t.expand(o.shape) for t in (x, y, z))
        inside = skin < 0
        # soft tissue: skin, subcutaneous fat, muscle (fat planes deeper in face and neck)
        _set(o, inside, _L["muscle"])
        bone_out = cav - thick
        deep = -skin
        _set(o, inside & (deep > a.skin_t) & ((deep < a.skin_t + 3.5) | (fat > 0.8))
             & ((bone_out > 1.0) | (z < a.cz - 40)), _L["fat"])
        _set(o, inside & (deep <= a.skin_t), _L["skin"])
        # skull: outer table / diploe / inner table; a hole at the foramen magnum
        bone = (bone_out < 0) & (cav >= 0)
        if float(z.min()) < fm[2] + 12.0:
            bone &= ~(((x - fm[0]) ** 2 + (y - fm[1]) ** 2 < 14.0 ** 2) & (z < fm[2] + 12.0))
        _set(o, bone, _L["diploe"])
        _set(o, bone & ((-bone_out < tab) | (cav < tab) | (thick < 2.5 * tab)), _L["cortical_bone"])
        # sutures: coronal, sagittal, lambdoid (thin zig-zag fibrous gaps in the vault)
        tj, ti = _crop(bone & (z > a.cz - 10))
        if tj is not None:
            xt, yt, zt = x[:, tj, ti], y[:, tj, ti], z[:, tj, ti]
            zig = 1.2 * torch.sin(xt * 1.3) + 0.8 * torch.sin(zt * 1.1 + 1.0)
            cor = (yt - (a.cy - 0.25 * a.ay) - 0.25 * (zt - a.cz) + zig).abs() < 0.6
            sag = ((xt + 1.2 * torch.sin(yt * 1.2)).abs() < 0.6) & (yt > a.cy - 0.25 * a.ay) \
                & (yt < a.cy + 0.55 * a.ay)
            lam = (yt - (a.cy + 0.55 * a.ay) + 0.45 * (zt - a.cz - 40) - 0.15 * xt.abs()
                   + 0.8 * torch.sin(zt * 1.4 + xt)).abs() < 0.6
            _set(o[:, tj, ti], bone[:, tj, ti] & (zt > a.cz - 10) & (cor | sag | lam), _L["suture"])
        # intracranial contents
        bj, bi = _crop(cav < 0)
        if bj is None:
            continue
        o = o[:, bj, bi]
        x, y, z, cav, sulc = (t[:, bj, bi] for t in (x, y, z, cav, sulc))
        brain = cav < 0
        depth = -cav
        tent = z - (a.cz - 14.0 - 0.28 * (y - a.cy - 5.0).clamp(min=0) - 0.004 * x * x)
        post_fossa = (tent < 0) & (y > a.cy + 8.0 + 0.1 * x.abs())
        # cortex: effective depth below the nearest CSF (surface or sulcus); sulci reach
        # sulc_depth mm deep and end in a rounded fundus
        # CSF in a sulcus is widest at the surface and closes with depth
        taper = (1.3 - depth / (0.6 * a.sulc_depth)).clamp(0.1, 1.0)
        s = sulc.abs() - a.sulc_w * taper
        below = (depth - a.sulc_depth).clamp(min=0)
        s = torch.where(below > 0, torch.sqrt(s.clamp(min=0) ** 2 + below * below), s)
        e = torch.minimum(depth - a.csf_t, s)
        callosum = a.cz + 8.0 + 12.0 * (a.vent - 1.0) - 0.002 * (y - a.cy) ** 2
        xm = x  # the midline plane
        ihf = xm.abs() - (a.falx_w / 2 + 0.2 + 0.9 * a.atrophy)  # interhemispheric fissure
        e = torch.minimum(e, ihf + 99.0 * ((z <= callosum) & (y < a.cy + 30)))
        cer = brain & ~post_fossa
        _set(o, cer, _L["white_matter"])
        _set(o, cer & (e < a.cortex_t), _L["grey_matter"])
        _set(o, cer & (e < 0), _L["csf"])
        # cerebellum: grey folia around a white core
        cb = brain & post_fossa
        if bool(cb.any()):
            yc, zc = a.cy + 42.0, a.cz - 44.0
            r = torch.sqrt((x.abs() - 24.0) ** 2 + (y - yc) ** 2 * 0.8 + (z - zc) ** 2)
            fol = torch.sin(r * (2 * np.pi / 4.0) + a.folia_phase + 0.6 * sulc)
            _set(o, cb, _L["grey_matter"])
            _set(o, cb & (r < 11.0), _L["white_matter"])
            _set(o, cb & (fol > 0.96) & (r > 9.0) & (depth < 10.0), _L["csf"])
            _set(o, cb & (depth < 0.5 + 0.6 * a.csf_t), _L["csf"])
        # falx (midline, above the corpus callosum level) and tentorium
        falx = brain & (xm.abs() < a.falx_w / 2 + 0.2) & ((z > callosum) | (y > a.cy + 30)) & ~post_fossa
        _set(o, falx, _L["dura"])
        _set(o, brain & (tent.abs() < 0.7) & (y > a.cy + 8.0 + 0.1 * x.abs())
             & ((y - a.cy - 2.0) ** 2 + x * x * 0.6 > 24.0 ** 2), _L["dura"])
    return lab


def _crop(mask: torch.Tensor) -> tuple[slice | None, slice | None]:
    """The (j, i) bounding slices of a boolean ``[k, j, i]`` mask; (None, None) if empty."""
    rows = mask.any(2).any(0)
    if not bool(rows.any()):
        return None, None
    cols = mask.any(1).any(0)
    r = torch.nonzero(rows).flatten()
    c = torch.nonzero(cols).flatten()
    return slice(int(r[0]), int(r[-1]) + 1), slice(int(c[0]), int(c[-1]) + 1)


def _set(view: torch.Tensor, mask: torch.Tensor, code: int) -> None:
    """``view[mask] = code`` in place for uint8 labels (modular arithmetic: several times
    faster than ``masked_fill_`` on the CPU)."""
    view.add_(mask.to(torch.uint8).mul_(code - view))


_ALLOWED_CACHE: dict[tuple[str, ...], torch.Tensor] = {}


def _paint(lab, box, mask, name: str, where: Sequence[str] | None = None) -> None:
    """Set ``lab[box] = LABELS[name]`` where ``mask`` (and the current label is in ``where``)."""
    view = lab[box]
    if where is not None:
        key = tuple(where)
        allowed = _ALLOWED_CACHE.get(key)
        if allowed is None:
            allowed = torch.zeros(256, dtype=torch.bool)
            allowed[[_L[w] for w in where]] = True
            _ALLOWED_CACHE[key] = allowed
        mask = mask & allowed.index_select(0, view.reshape(-1).int()).view(view.shape)
    _set(view, mask, _L[name])


def _ell(g: "_Grid", lab, c, r, name: str, where=None, cond=None, inner: float | None = None,
         inner_name: str | None = None) -> None:
    """Paint an ellipsoid (centre ``c``, half-axes ``r``, canonical mm) inside its own box;
    ``inner``/``inner_name``: also paint the part deeper than ``inner`` mm."""
    c, r = np.asarray(c, float), np.asarray(r, float)
    b = g.box(c - r - 1.0, c + r + 1.0)
    if b is None:
        return
    sl, x, y, z = b
    d = _ellipsoid_sdf(x, y, z, c, r)
    _paint_sdf(lab, sl, d, (x, y, z), name, where, cond, inner, inner_name)


def _paint_sdf(lab, sl, d, xyz, name: str, where, cond, inner: float | None,
               inner_name: str | None) -> None:
    """Paint where the signed distance ``d`` < 0 (and ``cond(x, y, z)``); with ``inner``,
    also paint ``inner_name`` where it is deeper than ``inner`` mm."""
    m = d < 0
    if cond is not None:
        m &= cond(*xyz)
    _paint(lab, sl, m, name, where)
    if inner is not None:
        _paint(lab, sl, m & (d < -inner), inner_name)


def _tube(g: "_Grid", lab, pts, radii, name: str, where=None, cond=None,
          inner: float | None = None, inner_name: str | None = None, zscale: float = 1.0) -> None:
    """Paint a tube along a polyline (radius varying linearly) inside its own box."""
    p = np.asarray(pts, float)
    rmax = float(max(radii)) / min(zscale, 1.0) + 1.0
    b = g.box(p.min(0) - rmax, p.max(0) + rmax)
    if b is None:
        return
    sl, x, y, z = b
    if zscale != 1.0:
        d = _tube_sdf(x, y, z * zscale, [(q[0], q[1], q[2] * zscale) for q in p], radii)
    else:
        d = _tube_sdf(x, y, z, p, radii)
    _paint_sdf(lab, sl, d, (x, y, z), name, where, cond, inner, inner_name)


def _cells(a: _Anatomy, x, y, z, scale: float = 1.0):
    """A honeycomb field (air cells where it is above a threshold)."""
    k, ph, amp = a.cells
    v = 0.0
    for (kx, ky, kz), p, ai in zip(k, ph, amp):
        v = v + ai * torch.cos((kx * x + ky * y + kz * z) * scale + p)
    return v


def _paint_face_and_base(a: _Anatomy, g: _Grid, lab: torch.Tensor) -> None:
    """Skull base, face, orbits, sinuses, mandible and the cervical spine."""
    cy, cz, yf = a.cy, a.cz, a.y_front
    fm = a.foramen
    soft = _SOFT
    not_brain = _SOFT + _BONE + ("air",)
    fl = a.face_len
    zo = cz - a.floor_ant - 18.0                 # orbit centre height
    zp = cz - 80.0 * fl                          # hard palate
    zm = zp - 30.0 * fl                          # mandible body
    # --- sphenoid body and sinus, clivus ---------------------------------------------------
    sph = np.array([0.0, cy - 28.0, cz - a.floor_mid + 6.0])
    _ell(g, lab, sph, (20.0, 18.0, 16.0), "cortical_bone", not_brain, inner=2.0, inner_name="diploe")
    _ell(g, lab, sph + (0, -2.0, -2.0), a.sphenoid_sinus, "air", _BONE)
    _tube(g, lab, [sph + (0, 10.0, 8.0), (0, fm[1] - 16.0, fm[2] + 1.0)], [6.0, 5.0],
          "cortical_bone", not_brain, inner=1.6, inner_name="diploe")
    # --- petrous bones, inner ear, mastoids, external auditory canals ---------------------
    wp = a.half_width(cy + 14.0, cz - a.floor_mid + 2.0) - 20.0
    wm = a.half_width(cy + 26.0, cz - a.floor_mid - 8.0) - 15.0
    for s in (-1.0, 1.0):
        p0 = np.array([s * wp, cy + 14.0, cz - a.floor_mid + 2.0])
        p1 = np.array([s * 16.0, cy - 6.0, cz - a.floor_mid + 8.0])
        _tube(g, lab, [p0, p1], [10.0, 6.5], "petrous_bone", not_brain,
              cond=lambda x, y, z, p0=p0, p1=p1: z < (p0[2] + p1[2]) / 2 + 8.0)
        _tube(g, lab, [p0 * 0.55 + p1 * 0.45 + (0, 0, 1.0), p1 * 0.8 + p0 * 0.2], [2.0, 2.0],
              "csf", ("petrous_bone",))
        mc = np.array([s * wm, cy + 26.0, cz - a.floor_mid - 8.0])
        b = g.box(mc - (14, 15, 19), mc + (14, 15, 19))
        if b is not None:
            sl, x, y, z = b
            md = _ellipsoid_sdf(x, y, z, mc, (13.0, 14.0, 18.0))
            _paint(lab, sl, md < 0, "cortical_bone", not_brain)
            _paint(lab, sl, (md < -1.5) & (_cells(a, x, y, z) > 0.6 - a.mastoid_pneum), "air",
                   ("cortical_bone",))
        _tube(g, lab, [p0 + (s * 2.0, 0, -6.0), p0 + (s * 24.0, 0, -6.0)], [3.5, 4.0], "air",
              not_brain + ("petrous_bone",))
    # --- orbits: bony cone, fat, muscles, optic nerve, globe, lens -------------------------
    for s in (-1.0, 1.0):
        xo = s * (0.42 * a.ax + 4.0)
        gc = np.array([xo, yf - 9.0 + a.globe_r, zo])
        b = g.box((xo - 22, yf - 24, zo - 21), (xo + 22, yf + 44, zo + 21))
        if b is not None:
            sl, x, y, z = b
            t = ((y - (yf - 12.0)) / 52.0).clamp(0, 1)
            cx = xo + (s * 14.0 - xo) * t
            rad = 18.0 * (1 - t) + 3.0 * t
            d = torch.sqrt((x - cx) ** 2 + ((z - zo - 2 * t) * 1.1) ** 2) - rad
            inside_y = (y > yf - 22.0) & (y < yf + 42.0)
            _paint(lab, sl, inside_y & (d < 1.6), "cortical_bone", _SOFT + _BONE)
            _paint(lab, sl, inside_y & (d < 0), "fat", _SOFT + _BONE)
            _paint(lab, sl, (y < yf - 14.0) & (d < 0), "skin", _SOFT + _BONE + ("fat",))  # eyelids
        _tube(g, lab, [gc, (s * 14.0, yf + 48.0, zo + 2.0)], [2.3, 2.0], "optic_nerve", ("fat",))
        for ang in (0.0, 0.5 * np.pi, np.pi, 1.5 * np.pi):
            mx, mz = np.cos(ang) * 13.0, np.sin(ang) * 12.0
            _tube(g, lab, [(xo + mx, gc[1] + 2, zo + mz),
                           (s * 14.0 + 0.2 * mx, yf + 46.0, zo + 2 + 0.2 * mz)], [2.0, 1.2],
                  "muscle", ("fat",))
        # sclera (a 1 mm fibrous shell, soft-tissue dense) around the vitreous
        _ell(g, lab, gc, (a.globe_r,) * 3, "skin", _SOFT + _BONE + ("fat", "muscle", "optic_nerve"),
             inner=1.0, inner_name="globe")
        _ell(g, lab, gc + (0, -a.globe_r + 2.6, 0), (4.5, 2.0, 4.5), "lens", ("globe",))
    # --- frontal sinus in the thickened frontal bone ---------------------------------------
    fs = a.frontal_sinus
    zf = cz - a.floor_ant + 8.0
    yc = yf - 3.0 - a.skull_t / 2 - fs[1] / 2
    _ell(g, lab, (0.0, yc, zf), fs, "air", ("diploe", "cortical_bone", "suture"))
    # --- maxillae with sinuses, zygomatic arches --------------------------------------------
    ms = a.maxillary
    wz0 = a.half_width(yf + 30.0, zo - 16.0) - 7.0
    wz1 = a.half_width(cy + 2.0, cz - a.floor_mid - 2.0) - 7.0
    for s in (-1.0, 1.0):
        c = np.array([s * (ms[0] + 9.0), yf + 22.0, zp + ms[2] + 5.0])
        _ell(g, lab, c, np.asarray(ms) + 2.5, "cortical_bone", soft)
        _ell(g, lab, c, ms, "air", ("cortical_bone",))
        _ell(g, lab, c, ms, "mucosa", ("air",), cond=lambda x, y, z, c=c: z < c[2] - ms[2] + 2.5)
        _tube(g, lab, [(s * (a.ax * 0.62), yf + 8.0, zo - 14.0), (s * wz0, yf + 30.0, zo - 16.0),
                       (s * wz1, cy + 2.0, cz - a.floor_mid - 2.0)], [5.0, 3.5, 3.5],
              "cortical_bone", soft)
    # --- nasal cavity with septum and turbinates, ethmoid cells, hard palate ---------------
    nz0, nz1 = zp + 2.0, zo + 4.0
    b = g.box((-14, yf - 14, nz0 - 5), (14, yf + 60, nz1 + 5))
    if b is not None:
        sl, x, y, z = b
        nw = 4.0 + 8.0 * (1 - ((z - nz0) / (nz1 - nz0)).clamp(0, 1))
        nas = (x.abs() < nw) & (z > nz0) & (z < nz1 - 10) & (y > yf - 12.0) & (y < yf + 58.0)
        _paint(lab, sl, (x.abs() < nw + 1.2) & (z > nz0 - 1.5) & (z < nz1 - 8.8) & (y > yf - 6.0)
               & (y < yf + 58.0), "cortical_bone", soft)
        _paint(lab, sl, nas, "air")
        for tz, tw in ((zp + 10.0, 5.0), (zp + 22.0, 4.0)):
            _paint(lab, sl, ((x.abs() - (nw - 1.0)) ** 2 / tw ** 2 + (z - tz) ** 2 / 16.0 < 1) & nas,
                   "mucosa")
        _paint(lab, sl, nas & (x.abs() < 1.0), "mucosa")  # septum (cartilage)
        _paint(lab, sl, nas & (x.abs() < 0.8) & (z > (nz0 + nz1) / 2) & (y > yf + 10), "cortical_bone")
        eth = (x.abs() < 11.0) & (y > yf - 4.0) & (y < yf + 40.0) & (z > zo - 12.0) & (z < zo + 14.0)
        _paint(lab, sl, eth & (_cells(a, x, y, z, 1.3) > -0.2), "air", soft + ("cortical_bone",))
    b = g.box((-26, yf - 8, zp - 4), (26, yf + 50, zp + 4))
    if b is not None:
        sl, x, y, z = b
        _paint(lab, sl, ((z - zp).abs() < 3.0) & (x.abs() < 24.0) & (y > yf - 6.0), "cortical_bone",
               soft + ("air",))
    # --- mandible with teeth --------------------------------------------------------------
    mw = a.face_w * 0.78
    # a parabolic (U-shaped) body from angle to angle, and the rami up to the condyles
    arc = [(mw * 0.92 * t, yf - 4.0 + 56.0 * t * t, zm) for t in np.linspace(-1.0, 1.0, 9)]
    pts = [(-mw + 4, cy - 12.0, cz - a.floor_mid - 12.0), (-mw, cy - 20.0, zm + 6.0), *arc,
           (mw, cy - 20.0, zm + 6.0), (mw - 4, cy - 12.0, cz - a.floor_mid - 12.0)]
    rr = [4.0, 5.5] + [5.5 + 1.0 * (1 - abs(t)) for t in np.linspace(-1.0, 1.0, 9)] + [5.5, 4.0]
    for seg in range(len(pts) - 1):  # per segment: tight boxes; the body is tall and narrow
        body = 0 < seg < len(pts) - 2
        _tube(g, lab, pts[seg:seg + 2], rr[seg:seg + 2], "cortical_bone", soft + ("air",),
              inner=2.0, inner_name="cancellous_bone", zscale=0.45 if body else 1.0)
    # teeth: one crown-and-root capsule per tooth along the upper and lower dental arches
    for zt, up in ((zm + 10.0, 1.0), (zp - 5.0, -1.0)):
        for side in (-1.0, 1.0):
            for q in range(8):
                ang = (q + 0.5) / 8.0 * (np.pi / 2)
                tx, ty = side * mw * 0.8 * np.sin(ang), yf + 2.0 + 40.0 * (1 - np.cos(ang))
                _tube(g, lab, [(tx, ty, zt - up * 5.0), (tx, ty, zt + up * 6.0)],
                      [3.0 + 0.1 * q, 2.0], "teeth", soft + ("cortical_bone", "cancellous_bone", "air"))
    # --- pharynx, spinal canal, cervical vertebrae ------------------------------------------
    bottom = float(min(g.canonical(0, 0, 0)[2], -150.0)) - 60.0
    _tube(g, lab, [(0, yf + 56.0, zo - 20.0), (0, fm[1] - 44.0, zp - 6.0), (0, fm[1] - 42.0, bottom)],
          [5.0, 4.5, 4.0], "air", soft)
    yb = fm[1] - 24.0
    canal_pts = [fm + (0, 0, 8.0), fm + (0, -2.0, bottom - fm[2])]
    b = g.box((-25, fm[1] - 25, fm[2] - 20), (25, fm[1] + 25, fm[2] - 4))
    if b is not None:  # C1 ring
        sl, x, y, z = b
        cd = _tube_sdf(x, y, z, canal_pts, [13.0, 9.0])
        _paint(lab, sl, (cd > 0) & (cd < 6.0) & (z < fm[2] - 6) & (z > fm[2] - 18) & (y < fm[1] + 20),
               "cortical_bone", soft)
    _tube(g, lab, [(0, yb + 2.0, fm[2] - 4.0), (0, yb, fm[2] - 30.0)], [5.5, 7.5], "cortical_bone",
          soft + ("air",), inner=1.5, inner_name="cancellous_bone")      # dens and C2 body
    ztop = fm[2] - 30.0
    for v in range(8):
        z1 = ztop - v * 19.0
        z0 = z1 - 15.0
        if z1 < bottom:
            break
        b = g.box((-28, yb - 14, z0 - 10), (28, fm[1] + 42, z1 + 1))
        if b is None:
            continue
        sl, x, y, z = b
        # vertebral body: a rounded box (superellipsoid) with a cortical shell
        zc, hz = (z0 + z1) / 2, (z1 - z0) / 2
        q = ((x / 16.0) ** 2 + ((y - yb) / 12.0) ** 2) ** 2 + ((z - zc) / hz) ** 6
        _paint(lab, sl, q < 1.0, "cortical_bone", soft + ("air",))
        q = ((x / 14.6) ** 2 + ((y - yb) / 10.6) ** 2) ** 2 + ((z - zc) / (hz - 1.3)) ** 6
        _paint(lab, sl, q < 1.0, "cancellous_bone")
        # neural arch around the canal, tilted spinous and transverse processes
        cd = _tube_sdf(x, y, z, canal_pts, [13.0, 9.0])
        arch_ = (cd > 0) & (cd < 5.0) & ((z - zc).abs() < hz - 2.0) & (y > yb + 8)
        _paint(lab, sl, arch_, "cortical_bone", soft)
        spin = _tube_sdf(x, y, z, [(0.0, fm[1] + 12.0, zc), (0.0, fm[1] + 38.0 - 1.5 * v, zc - 9.0)],
                         [4.0, 3.0])
        _paint(lab, sl, spin < 0, "cortical_bone", soft)
        for sd in (-1.0, 1.0):
            tp = _tube_sdf(x, y, z, [(sd * 12.0, yb + 9.0, zc), (sd * 24.0, yb + 8.0, zc - 2.0)], [3.5, 2.5])
            _paint(lab, sl, tp < 0, "cortical_bone", soft)
    _tube(g, lab, canal_pts, [13.0, 9.0], "csf", soft + _BONE + ("air",),
          cond=lambda x, y, z: z < fm[2] + 6)
    _tube(g, lab, [fm + (0, -3.0, 12.0), fm + (0, -3.0, bottom - fm[2])], [7.0, 5.0], "white_matter",
          ("csf",), cond=lambda x, y, z: z < fm[2] + 6)


def _paint_deep_brain(a: _Anatomy, g: _Grid, lab: torch.Tensor) -> None:
    """Basal ganglia, thalami, brain stem, cisterns, ventricles and calcifications."""
    c = a.center
    v = a.vent
    brain = _BRAIN
    xo = 10.0 + 9.0 * (v - 1.0)
    vr = v ** 1.25  # radii grow faster than the spread: rounded horns in hydrocephalus
    for s in (-1.0, 1.0):
        _ell(g, lab, c + (s * 22.0, -2.0, 0.0), (6.5, 15.0, 10.0), "deep_grey_matter", brain)  # lentiform
        _ell(g, lab, c + (s * (xo + 6.0), -16.0, 12.0), (5.0, 9.0, 9.0), "deep_grey_matter", brain)  # caudate
        _ell(g, lab, c + (s * (8.0 + 2 * (v - 1)), 9.0, 3.0), (9.0, 14.0, 9.0), "deep_grey_matter", brain)
        # insula (grey) with the Sylvian cistern lateral to it, and the fissure's stem
        b = g.box(c + (min(s * 30, s * a.ax), -34, -20), c + (max(s * 30, s * a.ax), 24, 14))
        if b is not None:
            sl, x, y, z = b
            x, y, z = x - c[0], y - c[1], z - c[2]
            xi = 0.42 * a.ax + 0.08 * y + 1.5 * torch.sin(z * 0.35 + y * 0.2)
            reg = (y > -26.0) & (y < 16.0) & (z > -16.0) & (z < 10.0)
            w = 0.7 + 1.6 * a.atrophy
            _paint(lab, sl, reg & ((x.abs() - xi + 3.0).abs() < 3.0), "grey_matter", ("white_matter",))
            _paint(lab, sl, reg & ((x.abs() - xi).abs() < w), "csf", ("grey_matter", "white_matter"))
            stem_ = (y > -30.0) & (y < -16.0) & ((z + 6.0 + 0.1 * (x.abs() - xi)).abs() < w) & (x.abs() > xi)
            _paint(lab, sl, stem_, "csf", ("grey_matter", "white_matter"))
    # brain stem with the surrounding cisterns
    fm = a.foramen
    stem = [c + (0.0, 12.0, -14.0), c + (0.0, 8.0, -22.0), c + (0.0, 6.0, -34.0), c + (0.0, 14.0, -48.0),
            fm + (0.0, -3.0, 2.0)]
    _tube(g, lab, stem, [9.0, 13.0, 15.0, 11.0, 9.5], "csf", brain)
    _tube(g, lab, stem, [7.0, 11.0, 13.0, 9.0, 7.5], "brain_stem", brain)
    _ell(g, lab, c + (0.0, -16.0, -16.0), (14.0, 9.0, 6.0), "csf", brain)      # suprasellar
    _ell(g, lab, c + (0.0, 24.0, -4.0), (7.0, 7.0, 7.0), "csf", brain)         # quadrigeminal
    _ell(g, lab, c + (0.0, 48.0, -58.0), (12.0, 10.0, 8.0), "csf", brain)      # cisterna magna
    # ventricles
    zs = 1.2 - 0.15 * min(v, 2.0)  # slit-like when normal, rounder when enlarged
    for s in (-1.0, 1.0):
        pts = [c + (s * xo * 0.75, -34.0 - 3 * v, 12.0), c + (s * xo, -20.0, 17.0),
               c + (s * xo * 1.1, 4.0, 19.0), c + (s * xo * 1.55, 24.0, 11.0),
               c + (s * xo * 1.2, 44.0 + 4 * v, 6.0)]
        rad = [2.5 * vr, 4.5 * vr, 4.0 * vr, 6.5 * vr, 2.5 * vr]
        for seg in range(4):
            _tube(g, lab, pts[seg:seg + 2], rad[seg:seg + 2], "csf", brain, zscale=zs)
        _tube(g, lab, [pts[3], c + (s * (xo * 1.6 + 12.0), 14.0, -10.0), c + (s * 30.0, -6.0, -20.0)],
              [4.0 * vr, 2.5 * vr, 1.5 * vr], "csf", brain)
        if a.choroid_calc:
            _ell(g, lab, pts[3], (2.5, 3.0, 2.0), "calcification", brain)
    _ell(g, lab, c + (0.0, 4.0, -2.0), (1.2 + 2.0 * (v - 1.0), 13.0, 9.0), "csf", brain)    # third
    _ell(g, lab, c + (0.0, 20.0, -36.0), (4.0 + 2.0 * (v - 1.0), 3.5, 6.0), "csf", brain)   # fourth
    if a.pineal_calc:
        _ell(g, lab, c + (0.0, 20.0, 4.0), (2.5, 2.5, 2.5), "calcification", brain)
    if a.falx_calc:
        _ell(g, lab, c + (0.0, -10.0, 40.0), (1.2, 10.0, 4.0), "calcification", brain)


# ----------------------------------------------------------------------------------------
# findings
# ----------------------------------------------------------------------------------------
def _surface_point(a: _Anatomy, direction) -> np.ndarray:
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


def _paint_findings(a: _Anatomy, g: _Grid, lab: torch.Tensor, findings: Sequence[str],
                    rng: np.random.Generator) -> dict[str, Any]:
    detail: dict[str, Any] = {}
    brain = _BRAIN
    c = a.center
    for name in findings:
        side = float(rng.choice([-1.0, 1.0]))
        if name == "shunt":
            # right (or left) frontal or parietal burr hole -> frontal horn of a lateral ventricle
            frontal = rng.uniform() < 0.5
            d = (side * 0.45, -0.55, 0.7) if frontal else (side * 0.45, 0.55, 0.7)
            p_in = _surface_point(a, d)
            n = (p_in - c) / np.linalg.norm(p_in - c)
            xo = 10.0 + 9.0 * (a.vent - 1.0)
            tip = c + (side * xo, -20.0 if frontal else 24.0, 16.0)
            t_in = float(a.thickness(*(np.array([v]) for v in p_in))[0])
            outer = p_in + n * (t_in + 2.5)
            # the valve/reservoir lies on the skull, under the scalp, behind and below the hole
            d2 = np.array([side * 0.75, d[1] + 0.45, 0.35])
            p2 = _surface_point(a, d2)
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
                hole = _tube_sdf(x, y, z, [p_in - n * 2, outer + n * 2], [6.5, 6.5]) < 0
                _paint(lab, sl, hole, "skin", _BONE)
                mid = (outer + valve) / 2
                mid = c + (mid - c) * (np.linalg.norm(outer - c) + 1.0) / np.linalg.norm(mid - c)
                cath = _tube_sdf(x, y, z, [tip, p_in, outer, mid, valve], [1.3] * 5)
                _paint(lab, sl, cath < 0, "shunt_plastic")
                _paint(lab, sl, _tube_sdf(x, y, z, [tip, tip + 0.12 * (p_in - tip)], [1.4, 1.4]) < 0,
                       "shunt_metal")                                        # radiopaque tip marker
                # reservoir dome (plastic) with a metal valve mechanism, tangent to the skull
                tdir = np.cross(n2, (1.0, 0.0, 0.0))
                tdir = tdir / max(np.linalg.norm(tdir), 1e-6) * 9.0
                res = _tube_sdf(x, y, z, [valve - tdir, valve + tdir], [4.5, 4.5])
                _paint(lab, sl, res < 0, "shunt_plastic")
                _paint(lab, sl, res < -2.3, "shunt_metal")
            b = g.box(np.minimum(down[0], down[2]) - 5, np.maximum(down[0], down[2]) + 5)
            if b is not None:
                sl, x, y, z = b
                _paint(lab, sl, _tube_sdf(x, y, z, down, [1.3] * 3) < 0, "shunt_plastic", _SOFT)
            detail[name] = {"burr_hole": p_in.round(1).tolist(), "tip": np.round(tip, 1).tolist(),
                            "valve": valve.round(1).tolist()}
        elif name == "intraparenchymal_hemorrhage":
            p = c + (side * _u(rng, 15, 35), _u(rng, -30, 30), _u(rng, -5, 30))
            r = np.array([_u(rng, 8, 20), _u(rng, 8, 22), _u(rng, 8, 18)])
            b = g.box(p - r - 10, p + r + 10)
            if b is not None:
                sl, x, y, z = b
                wob = 1.0 + 0.12 * torch.sin(x * 0.5 + 1.0) * torch.sin(y * 0.45) * torch.sin(z * 0.55 + 2.0)
                sd = _ellipsoid_sdf(x, y, z, p, r) / wob
                _paint(lab, sl, sd < 6.0, "edema", ("white_matter", "grey_matter", "deep_grey_matter"))
                _paint(lab, sl, sd < 0, "hemorrhage", brain + ("edema",))
            detail[name] = {"center": p.round(1).tolist(), "radii": r.round(1).tolist()}
        elif name in ("subdural_hemorrhage", "epidural_hemorrhage"):
            # a collection under the inner table over one convexity
            d = np.array([side * 1.0, _u(rng, -0.5, 0.6), _u(rng, 0.0, 0.7)])
            p = _surface_point(a, d)
            sub = name == "subdural_hemorrhage"
            extent = _u(rng, 45, 70) if sub else _u(rng, 25, 40)
            thick = _u(rng, 4, 12) if sub else _u(rng, 10, 22)
            b = g.box(p - extent - 5, p + extent + 5)
            if b is not None:
                sl, x, y, z = b
                cav = torch.from_numpy(a.cavity_sdf(x.numpy().astype(np.float64),
                                                    y.numpy().astype(np.float64),
                                                    z.numpy().astype(np.float64)).astype(np.float32))
                rr = torch.sqrt((x - p[0]) ** 2 + (y - p[1]) ** 2 + (z - p[2]) ** 2) / extent
                prof = thick * ((1 - rr * rr).clamp(min=0) ** (0.25 if sub else 1.0))
                m = (cav < 0) & (-cav < prof)
                _paint(lab, sl, m, "hemorrhage", brain)
            detail[name] = {"center": p.round(1).tolist(), "extent_mm": round(extent, 1),
                            "thickness_mm": round(thick, 1)}
        elif name == "fracture":
            d = np.array([side * _u(rng, 0.3, 1.0), _u(rng, -0.8, 0.8), _u(rng, 0.2, 0.9)])
            p = _surface_point(a, d)
            n = (p - c) / np.linalg.norm(p - c)
            t = np.cross(n, rng.normal(size=3))
            t /= np.linalg.norm(t)
            length = _u(rng, 25, 60)
            b = g.box(p - length - 15, p + length + 15)
            if b is not None:
                sl, x, y, z = b
                # a plane through p containing n, with a jagged trace, limited in length
                pn = np.cross(n, t)
                dist = (x - p[0]) * pn[0] + (y - p[1]) * pn[1] + (z - p[2]) * pn[2]
                along = (x - p[0]) * t[0] + (y - p[1]) * t[1] + (z - p[2]) * t[2]
                dist = dist + 1.2 * torch.sin(along * 0.6) + 0.6 * torch.sin(along * 1.7 + 1.0)
                m = (dist.abs() < 0.8) & (along.abs() < length / 2)
                _paint(lab, sl, m, "skin", _BONE)
            detail[name] = {"center": p.round(1).tolist(), "length_mm": round(length, 1)}
    return detail


# ----------------------------------------------------------------------------------------
# acquisition
# ----------------------------------------------------------------------------------------
def _gauss_taps(sigma_vox: float) -> np.ndarray:
    r = max(1, int(math.ceil(2.0 * sigma_vox)))
    t = np.exp(-0.5 * (np.arange(-r, r + 1) / max(sigma_vox, 1e-6)) ** 2)
    return t / t.sum()


def _blur_axis_(vol: torch.Tensor, taps: np.ndarray, axis: int, chunk: int = 8) -> torch.Tensor:
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
            acc = _blur_slab(vol[k0:k1], taps, axis)
        out[k0:k1] = acc
    return out


def _blur_slab(src: torch.Tensor, taps: np.ndarray, axis: int) -> torch.Tensor:
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


def _head_holder(g: _Grid, lab: torch.Tensor, a: _Anatomy) -> None:
    """A carbon-fibre head holder (curved shell with a foam pad) and the table behind it, in the
    scanner frame (posterior = +y, the patient lies supine)."""
    # posterior-most skin point of the posed head, from the canonical outline
    back = a.center + (0.0, a.ay + a.skull_t + a.scalp_t + 2.0, 0.0)
    wb = g.rot @ back + g.trans
    cx, cy0 = float(wb[0]), float(wb[1]) - 105.0
    ii = torch.arange(g.n[0], dtype=torch.float32).view(1, -1) * g.sp[0] + g.origin[0]
    jj = torch.arange(g.n[1], dtype=torch.float32).view(-1, 1) * g.sp[1] + g.origin[1]
    r = torch.sqrt((ii - cx) ** 2 + (jj - cy0) ** 2)
    pad = (r > 110.0) & (r < 118.0) & (jj > cy0 + 70)
    shell = (r >= 118.0) & (r < 122.0) & (jj > cy0 + 30)
    table = (jj > cy0 + 128.0) & (jj < cy0 + 138.0) & ((ii - cx).abs() < 220)
    z = torch.arange(g.n[2], dtype=torch.float32) * g.sp[2] + g.origin[2]
    zmask = (z > float(wb[2]) - 140.0).view(-1, 1, 1)
    for k0 in range(0, lab.shape[0], 8):
        view = lab[k0:k0 + 8]
        air = (view == _L["air"]) & zmask[k0:k0 + 8]
        for m, name in ((pad, "foam"), (shell, "holder"), (table, "table")):
            _set(view, air & m[None], _L[name])


# ----------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------
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


def _resolve_findings(findings, rng: np.random.Generator) -> list[str]:
    parsed = parse_findings(findings)
    if parsed == "random":
        return [f for f in FINDINGS if rng.uniform() < 0.25]
    return list(parsed)


def head_phantom(size: int | Sequence[int] = 256, spacing: float | Sequence[float] = 1.0,
                 seed: int = 0, *, findings: Sequence[str] | str | None = None,
                 ventricle_scale: float | None = None, noise_hu: float | None = None,
                 pose: bool = True, rotation_deg: Sequence[float] | None = None,
                 translation_mm: Sequence[float] | None = None, table: bool | None = None,
                 beam_hardening: bool | None = None,
                 return_labels: bool = False) -> Volume | tuple[Volume, Volume]:
    """Generate a head CT in HU on a grid centred on the origin (LPS, identity direction).

    Args:
        size: voxels per axis (an int for a cube, or ``(i, j, k)``), each >= 2.
        spacing: mm per voxel (a float, or ``(i, j, k)``), each > 0.
        seed: random seed (int >= 0); the same arguments give the same array. The anatomy
            depends on the seed (and ``ventricle_scale``) only, not on findings, pose or
            acquisition options.
        findings: ``None``/``()`` for none, names from :data:`FINDINGS` (a sequence or a comma
            list), or ``"random"`` (each with probability 1/4, drawn from the seed).
        ventricle_scale: 1 = normal lateral ventricles, about 2-2.6 = marked hydrocephalus;
            ``None`` draws one from the seed (60 % normal 0.8-1.3, 40 % enlarged 1.3-2.6).
        noise_hu: standard deviation (HU) of the scanner noise in homogeneous brain (it is
            spatially correlated by the blur); ``None`` draws 3-6 HU from the seed; 0 = none.
        pose: ``True`` draws a random pose from the seed (:data:`POSE_RANGES`) unless
            ``rotation_deg``/``translation_mm`` are given; ``False`` = canonical pose.
        rotation_deg: ``(rx, ry, rz)`` degrees (pitch about x, roll about y, yaw about z).
        translation_mm: ``(tx, ty, tz)`` mm. A point ``p`` of the canonical head appears at
            the LPS point ``rotation_matrix(rotation_deg) @ p + translation``.
        table: add a head holder and table (scanner frame); ``None`` = drawn from the seed.
        beam_hardening: add a dark Hounsfield-bar streak between the petrous bones; ``None`` =
            drawn from the seed.
        return_labels: also return the tissue label map (uint8 Volume, codes in
            :data:`LABELS`, before blur and noise).

    Returns:
        a float32 :class:`Volume` in HU clipped to [-1024, 3071], with metadata ``source``,
        ``kind``, ``units``, ``synthetic``, ``seed``, ``findings``, ``findings_detail``
        (canonical-frame positions), ``ventricle_scale``, ``noise_hu``, ``pose``
        (``rotation_deg``, ``translation_mm``), ``table``, ``beam_hardening``.
    """
    n = np.broadcast_to(np.asarray(size), (3,))
    sp = np.broadcast_to(np.asarray(spacing, dtype=float), (3,))
    if not np.all(np.equal(np.mod(n, 1), 0)) or np.any(n < 2):
        raise ValueError(f"size must be integers >= 2, got {size!r}")
    if not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise ValueError(f"spacing must be positive, got {spacing!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    if ventricle_scale is not None and not (0.5 <= float(ventricle_scale) <= 3.5):
        raise ValueError(f"ventricle_scale must be in [0.5, 3.5], got {ventricle_scale!r}")
    if noise_hu is not None and not (0.0 <= float(noise_hu) <= 100.0):
        raise ValueError(f"noise_hu must be in [0, 100], got {noise_hu!r}")
    if not pose and (rotation_deg is not None or translation_mm is not None):
        raise ValueError("pose=False (canonical pose) conflicts with rotation_deg/translation_mm")

    ss = np.random.SeedSequence(int(seed))
    r_anat, r_find, r_pose, r_acq = (np.random.default_rng(s) for s in ss.spawn(4))
    a = _Anatomy(r_anat, ventricle_scale)
    names = _resolve_findings(findings, r_find)
    rot_deg = np.zeros(3)
    trans = np.zeros(3)
    if pose:
        pr = POSE_RANGES
        drawn_r = np.array([r_pose.uniform(*pr["pitch_x_deg"]), r_pose.uniform(*pr["roll_y_deg"]),
                            r_pose.uniform(*pr["yaw_z_deg"])])
        drawn_t = np.array([r_pose.uniform(*pr[k]) for k in ("tx_mm", "ty_mm", "tz_mm")])
        if rotation_deg is None and translation_mm is None:
            rot_deg, trans = drawn_r, drawn_t
        else:
            if rotation_deg is not None:
                rot_deg = np.asarray(rotation_deg, float).reshape(3)
            if translation_mm is not None:
                trans = np.asarray(translation_mm, float).reshape(3)
    if not (np.all(np.isfinite(rot_deg)) and np.all(np.isfinite(trans))):
        raise ValueError("rotation_deg and translation_mm must be finite")
    noise = float(r_acq.uniform(3.0, 6.0)) if noise_hu is None else float(noise_hu)
    use_table = bool(r_acq.uniform() < 0.5) if table is None else bool(table)
    use_bh = bool(r_acq.uniform() < 0.4) if beam_hardening is None else bool(beam_hardening)
    bh_strength = float(r_acq.uniform(15.0, 40.0))
    torch_seed = int(r_acq.integers(0, 2**62))

    g = _Grid(n.astype(int), sp, rotation_matrix(rot_deg), trans)
    threads = torch.get_num_threads()
    try:
        # the work is done in cache-sized slabs and boxes, where thread start-up costs more
        # than it gains (on a busy machine two threads were 15x slower than one)
        torch.set_num_threads(1)
        with torch.no_grad():
            lab = _base_labels(a, g, _coarse_fields(a, g))
            _paint_face_and_base(a, g, lab)
            _paint_deep_brain(a, g, lab)
            detail = _paint_findings(a, g, lab, names, r_find)
            if use_table:
                _head_holder(g, lab, a)
            img = _to_hu(a, g, lab, noise, use_bh, bh_strength, torch_seed)
    finally:
        torch.set_num_threads(threads)

    meta = {"source": f"phantom(seed={int(seed)})", "kind": "synthetic head phantom",
            "units": "HU", "synthetic": True, "seed": int(seed), "findings": names,
            "findings_detail": detail, "ventricle_scale": a.vent, "noise_hu": noise,
            "pose": {"rotation_deg": [float(v) for v in rot_deg],
                     "translation_mm": [float(v) for v in trans]},
            "table": use_table, "beam_hardening": use_bh}
    vol = Volume(img, tuple(g.sp), tuple(g.origin), np.eye(3), meta)
    if return_labels:
        return vol, Volume(lab.numpy(), tuple(g.sp), tuple(g.origin), np.eye(3),
                           {**meta, "kind": "phantom labels", "units": "label",
                            "labels": dict(LABELS)})
    return vol


def _to_hu(a: _Anatomy, g: _Grid, lab: torch.Tensor, noise: float, bh: bool,
           bh_strength: float, torch_seed: int) -> np.ndarray:
    """Labels -> HU: per-tissue values, bone texture, correlated noise, partial-volume blur."""
    lut = torch.tensor([a.hu[k] for k in TISSUE_HU], dtype=torch.float32)
    sig_vox = [max(0.8, 0.5 * float(s)) / float(s) for s in g.sp]  # scanner PSF, mm -> voxels
    taps = [_gauss_taps(s) for s in sig_vox]
    gain = float(np.prod([np.sqrt(np.sum(t * t)) for t in taps]))  # noise std after the blur
    tex = torch.zeros(len(TISSUE_HU), dtype=torch.float32)
    for k, v in (("diploe", 120.0), ("cancellous_bone", 80.0), ("cortical_bone", 60.0),
                 ("petrous_bone", 80.0), ("teeth", 80.0)):
        tex[_L[k]] = v / gain
    sigma = torch.full((len(TISSUE_HU),), noise / gain)
    sigma = torch.sqrt(sigma ** 2 + tex ** 2)
    sigma[_L["air"]] = sigma[_L["air"]] * 2.0  # air is noisier outside the head (no matter)
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
        img[k0:k0 + 8] = _blur_slab(_blur_slab(v, taps[0], 2), taps[1], 1)
    if bh:
        # Hounsfield bar: a dark band joining the petrous bones across the posterior fossa
        p = a.center + (0.0, 10.0, -a.floor_mid + 6.0)
        b = g.box(p - (70, 40, 12), p + (70, 40, 12))
        if b is not None:
            sl, x, y, z = b
            band = torch.exp(-((y - p[1]) / 9.0) ** 2 - ((z - p[2]) / 5.0) ** 2) * (x.abs() < 45)
            view = img[sl]
            inb = (lab[sl] != _L["air"])
            view.sub_(bh_strength * band * inb)
    img = _blur_axis_(img, taps[2], 0)
    return img.clamp_(-1024.0, 3071.0).numpy()


def pose_registration(volume: Volume):
    """The rigid transform canonical (template) LPS points -> this phantom's LPS points, from
    its ``metadata["pose"]``: a :class:`~XRayToCTLib.preprocess.RigidRegistration` with
    parameters ``(radians(rx), radians(ry), radians(rz), tx, ty, tz)`` and centre (0, 0, 0).
    ``preprocess.resample_to_grid(volume, canonical_grid, pose_registration(volume))`` undoes
    the pose without optimisation."""
    from .preprocess import RigidRegistration
    pose = (volume.metadata or {}).get("pose")
    if not isinstance(pose, dict) or "rotation_deg" not in pose or "translation_mm" not in pose:
        raise ValueError("the volume has no phantom pose in its metadata (metadata['pose'])")
    r = [math.radians(float(v)) for v in pose["rotation_deg"]]
    t = [float(v) for v in pose["translation_mm"]]
    return RigidRegistration(tuple(r + t), (0.0, 0.0, 0.0),
                             info={"method": "phantom pose (exact, from metadata)"})
