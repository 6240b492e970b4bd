"""The random anatomy of one seed: its parameters and the signed-distance fields of the
cranium and the head outline (canonical frame, LPS mm, head centred near the origin)."""
from __future__ import annotations

import numpy as np

from .fields import ellipsoid_sdf, eval_waves, smax, smin, uniform, waves
from .layout import FACE_AND_BASE, FaceAndBase
from .tissues import TISSUE_HU


class Anatomy:
    """Random anatomical parameters of one head (canonical frame, mm, HU), with the fixed
    ``layout`` of the face and skull base placed around them."""

    def __init__(self, rng: np.random.Generator, ventricle_scale: float | None,
                 layout: FaceAndBase = FACE_AND_BASE):
        u = lambda lo, hi: uniform(rng, lo, hi)  # noqa: E731
        self.layout = layout
        self.hu = {k: u(*v) for k, v in TISSUE_HU.items()}
        # intracranial cavity (inner table): centre and half-axes
        self.cy, self.cz = u(6.0, 14.0), u(22.0, 30.0)
        self.ay = u(78.0, 88.0)
        self.ax = self.ay * u(0.76, 0.92)          # internal cranial index
        self.az_up, self.az_dn = u(60.0, 70.0), u(58.0, 66.0)
        self.occ_bulge = u(0.0, 0.06)
        self.shape_waves = waves(rng, 10, (3.0, 6.0), u(0.015, 0.03))  # on the unit sphere
        self.skull_t = u(5.0, 7.5)                  # mean vault thickness
        self.thick_waves = waves(rng, 12, (60.0, 140.0), 1.2)
        self.scalp_t = u(4.0, 7.0)
        self.skin_t = u(1.5, 2.5)
        self.temporalis = u(5.0, 10.0)
        self.sulc_waves = waves(rng, 40, (15.0, 22.0))
        self.fat_waves = waves(rng, 16, (25.0, 50.0))
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
        self.cells = waves(rng, 6, (6.0, 9.0))
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

    @property
    def orbit_z(self) -> float:
        """Height of the orbit centres (:attr:`Levels.orbit_below_anterior_floor`)."""
        return self.cz - self.floor_ant - self.layout.levels.orbit_below_anterior_floor

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
        h = eval_waves(self.shape_waves, qx / rho, qy / rho, qz / rho)
        s = (rho - 1.0 - h) * 70.0
        return smax(s, self.floor_z(x, y) - z, 8.0)

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
        t = self.skull_t + eval_waves(self.thick_waves, x, y, z)
        t = t - 2.5 * np.exp(-((np.abs(n[0]) - 0.95) / 0.12) ** 2 - ((z - self.cz + 20) / 22.0) ** 2)
        t = t + 1.5 * np.clip(-n[1], 0, 1) ** 4 + 1.5 * np.clip(n[1], 0, 1) ** 4
        w = np.clip((self.cz - 5.0 - z) / 15.0, 0, 1)  # skull base: thinner plates
        t = t * (1 - w) + 3.5 * w
        # glabella: the frontal sinus region thickens the frontal bone
        gl = np.exp(-(x / 24.0) ** 2 - ((y - self.y_front) / 14.0) ** 2
                    - ((z - (self.cz - self.floor_ant + self.layout.frontal_sinus.above_anterior_floor))
                       / 12.0) ** 2)
        t = t + (2.0 + 1.2 * self.frontal_sinus[1]) * gl
        return np.clip(t, 2.0, 18.0)

    def outline_sdf(self, x, y, z, cav, thick):
        """Signed distance to the skin: the cranium grown from the cavity, plus face and neck
        (:class:`~.layout.FaceOutline`)."""
        cy, cz = self.cy, self.cz
        o = self.layout.outline
        scalp = self.scalp_t + self.temporalis * np.exp(
            -((np.abs(x) / self.ax - 0.9) / 0.25) ** 2 - ((z - cz + 18) / 25.0) ** 2
            - ((y - cy + 10) / 40.0) ** 2)
        s = cav - thick - scalp
        ys = self.y_front - self.skull_t - self.scalp_t
        fl = self.face_len
        face = ellipsoid_sdf(x, y, z, (0, ys + o.face_behind, cz - o.face_below * fl),
                             (self.face_w, o.face_half_depth, o.face_half_height * fl))
        nr = o.nose_half_axes
        nose = ellipsoid_sdf(x, y, z, (0, ys - o.nose_behind, cz - o.nose_below * fl),
                             (nr[0], nr[1], nr[2] * fl))
        jaw = ellipsoid_sdf(x, y, z, (0, ys + o.jaw_behind, cz - o.jaw_below * fl),
                            (self.face_w * o.jaw_width_fraction, o.jaw_half_depth, o.jaw_half_height))
        nx, ny = self.neck_r
        nr = min(nx, ny)
        neck = np.sqrt((x / nx) ** 2 + ((y - cy - o.neck_behind_centre) / ny) ** 2) * nr - nr
        neck = smax(neck, z - (cz - o.neck_top_below_centre), o.neck_top_blend)
        zo = self.orbit_z  # orbits and cheek bones: the widest, most forward face
        midface = ellipsoid_sdf(x, y, z, (0, ys + o.midface_behind, zo - o.midface_below_orbit),
                                (self.face_w + o.midface_extra_width, o.midface_half_depth,
                                 o.midface_half_height))
        s = smin(s, face, o.face_blend)
        s = smin(s, midface, o.midface_blend)
        s = smin(s, nose, o.nose_blend)
        s = smin(s, jaw, o.jaw_blend)
        return smin(s, neck, o.neck_blend)
