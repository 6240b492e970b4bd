"""The skull base, face and neck of the phantom, placed by the named millimetres of
:mod:`.layout` (:class:`~.layout.FaceAndBase`) around the seed's :class:`~.anatomy.Anatomy`."""
from __future__ import annotations

import numpy as np
import torch

from .anatomy import Anatomy
from .fields import ellipsoid_sdf, tube_sdf
from .grid import PosedGrid
from .layout import FaceAndBase
from .painting import cells, ellipsoid, paint, tube
from .tissues import BONE, SOFT

NOT_BRAIN = SOFT + BONE + ("air",)


def paint_face_and_base(a: Anatomy, g: PosedGrid, lab: torch.Tensor) -> None:
    """Skull base, face, orbits, sinuses, mandible and the cervical spine, placed by the
    anatomy's layout (:attr:`Anatomy.layout`, which also shaped its outline)."""
    fb = a.layout
    lv = fb.levels
    fl = a.face_len
    zo = a.orbit_z                                             # orbit centre height
    zp = a.cz - lv.palate_below_centre * fl                    # hard palate
    zm = zp - lv.mandible_below_palate * fl                    # mandible body
    _sphenoid(a, g, lab, fb)
    _temporal_bones(a, g, lab, fb)
    _orbits(a, g, lab, fb, zo)
    _frontal_sinus(a, g, lab, fb)
    _maxillae(a, g, lab, fb, zo, zp)
    _nose_and_palate(a, g, lab, fb, zo, zp)
    _mandible_and_teeth(a, g, lab, fb, zp, zm)
    _neck(a, g, lab, fb, zo, zp)


def _sphenoid(a: Anatomy, g: PosedGrid, lab: torch.Tensor, fb: FaceAndBase) -> None:
    """Sphenoid body and sinus, clivus."""
    p = fb.sphenoid
    fm = a.foramen
    sph = np.array([0.0, a.cy - p.ahead_of_centre, a.cz - a.floor_mid + p.above_middle_floor])
    ellipsoid(g, lab, sph, p.half_axes, "cortical_bone", NOT_BRAIN, inner=p.cortex,
              inner_name="diploe")
    ellipsoid(g, lab, sph + p.sinus_offset, a.sphenoid_sinus, "air", BONE)
    tube(g, lab, [sph + p.clivus_top_offset, (0, fm[1] - p.clivus_bottom_ahead_of_foramen,
                                              fm[2] + p.clivus_bottom_above_foramen)],
         list(p.clivus_radii), "cortical_bone", NOT_BRAIN, inner=p.clivus_cortex, inner_name="diploe")


def _temporal_bones(a: Anatomy, g: PosedGrid, lab: torch.Tensor, fb: FaceAndBase) -> None:
    """Petrous bones, inner ear, mastoids, external auditory canals."""
    p = fb.temporal
    cy, cz = a.cy, a.cz
    zb = cz - a.floor_mid + p.petrous_base_above_middle_floor
    wp = a.half_width(cy + p.petrous_base_behind_centre, zb) - p.petrous_base_inside_skin
    zmc = cz - a.floor_mid - p.mastoid_below_middle_floor
    wm = a.half_width(cy + p.mastoid_behind_centre, zmc) - p.mastoid_inside_skin
    for s in (-1.0, 1.0):
        p0 = np.array([s * wp, cy + p.petrous_base_behind_centre, zb])
        p1 = np.array([s * p.petrous_apex_x, cy - p.petrous_apex_ahead_of_centre,
                       cz - a.floor_mid + p.petrous_apex_above_middle_floor])
        tube(g, lab, [p0, p1], list(p.petrous_radii), "petrous_bone", NOT_BRAIN,
             cond=lambda x, y, z, p0=p0, p1=p1: z < (p0[2] + p1[2]) / 2 + p.petrous_cut_above)
        w0, w1 = p.inner_ear_start, p.inner_ear_end
        tube(g, lab, [p0 * w0[0] + p1 * w0[1] + (0, 0, p.inner_ear_start_lift), p1 * w1[1] + p0 * w1[0]],
             [p.inner_ear_radius, p.inner_ear_radius], "csf", ("petrous_bone",))
        mc = np.array([s * wm, cy + p.mastoid_behind_centre, zmc])
        r = np.asarray(p.mastoid_half_axes)
        b = g.box(mc - (r + 1.0), mc + (r + 1.0))
        if b is not None:
            sl, x, y, z = b
            md = ellipsoid_sdf(x, y, z, mc, p.mastoid_half_axes)
            paint(lab, sl, md < 0, "cortical_bone", NOT_BRAIN)
            paint(lab, sl, (md < -p.mastoid_cortex)
                  & (cells(a.cells, x, y, z) > p.mastoid_cell_threshold - a.mastoid_pneum), "air",
                  ("cortical_bone",))
        tube(g, lab, [p0 + (s * p.canal_start_lateral, 0, -p.canal_below),
                      p0 + (s * p.canal_end_lateral, 0, -p.canal_below)], list(p.canal_radii), "air",
             NOT_BRAIN + ("petrous_bone",))


def _orbits(a: Anatomy, g: PosedGrid, lab: torch.Tensor, fb: FaceAndBase, zo: float) -> None:
    """Orbits: bony cone, fat, muscles, optic nerve, globe, lens."""
    p = fb.orbits
    yf = a.y_front
    for s in (-1.0, 1.0):
        xo = s * (p.x_fraction * a.ax + p.x_offset)
        gc = np.array([xo, yf - p.globe_ahead + a.globe_r, zo])
        b = g.box((xo - p.box_half_x, yf - p.box_ahead, zo - p.box_half_z),
                  (xo + p.box_half_x, yf + p.box_behind, zo + p.box_half_z))
        if b is not None:
            sl, x, y, z = b
            t = ((y - (yf - p.cone_start_ahead)) / p.cone_length).clamp(0, 1)
            cx = xo + (s * p.apex_x - xo) * t
            rad = p.rim_radius * (1 - t) + p.apex_radius * t
            d = torch.sqrt((x - cx) ** 2 + ((z - zo - p.apex_rise * t) * p.vertical_squash) ** 2) - rad
            inside_y = (y > yf - p.front) & (y < yf + p.back)
            paint(lab, sl, inside_y & (d < p.wall), "cortical_bone", SOFT + BONE)
            paint(lab, sl, inside_y & (d < 0), "fat", SOFT + BONE)
            paint(lab, sl, (y < yf - p.eyelid_ahead) & (d < 0), "skin", SOFT + BONE + ("fat",))  # eyelids
        tube(g, lab, [gc, (s * p.apex_x, yf + p.nerve_end_behind, zo + p.apex_rise)],
             list(p.nerve_radii), "optic_nerve", ("fat",))
        f = p.muscle_end_fraction
        for ang in (0.0, 0.5 * np.pi, np.pi, 1.5 * np.pi):
            mx, mz = np.cos(ang) * p.muscle_spread[0], np.sin(ang) * p.muscle_spread[1]
            tube(g, lab, [(xo + mx, gc[1] + p.muscle_start_behind_globe, zo + mz),
                          (s * p.apex_x + f * mx, yf + p.muscle_end_behind, zo + p.apex_rise + f * mz)],
                 list(p.muscle_radii), "muscle", ("fat",))
        # sclera (a fibrous shell, soft-tissue dense) around the vitreous
        ellipsoid(g, lab, gc, (a.globe_r,) * 3, "skin", SOFT + BONE + ("fat", "muscle", "optic_nerve"),
                  inner=p.sclera, inner_name="globe")
        ellipsoid(g, lab, gc + (0, -a.globe_r + p.lens_behind_front, 0), p.lens_half_axes, "lens",
                  ("globe",))


def _frontal_sinus(a: Anatomy, g: PosedGrid, lab: torch.Tensor, fb: FaceAndBase) -> None:
    """Frontal sinus in the thickened frontal bone."""
    p = fb.frontal_sinus
    fs = a.frontal_sinus
    zf = a.cz - a.floor_ant + p.above_anterior_floor
    yc = a.y_front - p.gap - a.skull_t / 2 - fs[1] / 2
    ellipsoid(g, lab, (0.0, yc, zf), fs, "air", ("diploe", "cortical_bone", "suture"))


def _maxillae(a: Anatomy, g: PosedGrid, lab: torch.Tensor, fb: FaceAndBase, zo: float,
              zp: float) -> None:
    """Maxillae with sinuses, zygomatic bones and arches."""
    p = fb.maxillae
    cy, cz, yf = a.cy, a.cz, a.y_front
    ms = a.maxillary
    body = (yf + p.zygoma_body_behind_face, zo - p.zygoma_body_below_orbit)
    root = (cy + p.arch_root_behind_centre, cz - a.floor_mid - p.arch_root_below_middle_floor)
    wz0 = a.half_width(*body) - p.zygoma_inside_skin
    wz1 = a.half_width(*root) - p.zygoma_inside_skin
    for s in (-1.0, 1.0):
        c = np.array([s * (ms[0] + p.midline_gap), yf + p.behind_face, zp + ms[2] + p.above_palate])
        ellipsoid(g, lab, c, np.asarray(ms) + p.wall, "cortical_bone", SOFT)
        ellipsoid(g, lab, c, ms, "air", ("cortical_bone",))
        ellipsoid(g, lab, c, ms, "mucosa", ("air",), cond=lambda x, y, z, c=c: z < c[2] - ms[2] + p.lining)
        tube(g, lab, [(s * (a.ax * p.zygoma_front_x_fraction), yf + p.zygoma_front_behind_face,
                       zo - p.zygoma_front_below_orbit), (s * wz0, *body), (s * wz1, *root)],
             list(p.zygoma_radii), "cortical_bone", SOFT)


def _nose_and_palate(a: Anatomy, g: PosedGrid, lab: torch.Tensor, fb: FaceAndBase, zo: float,
                     zp: float) -> None:
    """Nasal cavity with septum and turbinates, ethmoid cells, hard palate."""
    p = fb.nose
    yf = a.y_front
    soft = SOFT
    nz0, nz1 = zp + p.floor_above_palate, zo + p.roof_above_orbit
    b = g.box((-p.box_half_x, yf - p.box_ahead, nz0 - p.box_margin_z),
              (p.box_half_x, yf + p.box_behind, nz1 + p.box_margin_z))
    if b is not None:
        sl, x, y, z = b
        nw = p.half_width_top + p.half_width_gain * (1 - ((z - nz0) / (nz1 - nz0)).clamp(0, 1))
        nas = ((x.abs() < nw) & (z > nz0) & (z < nz1 - p.cavity_top_below_roof) & (y > yf - p.front)
               & (y < yf + p.back))
        paint(lab, sl, (x.abs() < nw + p.wall) & (z > nz0 - p.wall_below_floor)
              & (z < nz1 - p.wall_top_below_roof) & (y > yf - p.wall_front) & (y < yf + p.back),
              "cortical_bone", soft)
        paint(lab, sl, nas, "air")
        for height, tw in p.turbinates:
            tz = zp + height
            paint(lab, sl, ((x.abs() - (nw - p.turbinate_inset)) ** 2 / tw ** 2
                            + (z - tz) ** 2 / p.turbinate_half_height ** 2 < 1) & nas, "mucosa")
        paint(lab, sl, nas & (x.abs() < p.septum_half_width), "mucosa")  # septum (cartilage)
        paint(lab, sl, nas & (x.abs() < p.bony_septum_half_width) & (z > (nz0 + nz1) / 2)
              & (y > yf + p.bony_septum_behind), "cortical_bone")
        eth = ((x.abs() < p.ethmoid_half_width) & (y > yf - p.ethmoid_front) & (y < yf + p.ethmoid_back)
               & (z > zo - p.ethmoid_below) & (z < zo + p.ethmoid_above))
        paint(lab, sl, eth & (cells(a.cells, x, y, z, p.ethmoid_cell_scale) > p.ethmoid_cell_threshold),
              "air", soft + ("cortical_bone",))
    bx, bz = p.palate_half_width + 2.0, p.palate_half_thickness + 1.0  # the palate's box
    b = g.box((-bx, yf - (p.palate_front + 2.0), zp - bz), (bx, yf + p.palate_back, zp + bz))
    if b is not None:
        sl, x, y, z = b
        paint(lab, sl, ((z - zp).abs() < p.palate_half_thickness) & (x.abs() < p.palate_half_width)
              & (y > yf - p.palate_front), "cortical_bone", soft + ("air",))


def _mandible_and_teeth(a: Anatomy, g: PosedGrid, lab: torch.Tensor, fb: FaceAndBase, zp: float,
                        zm: float) -> None:
    """Mandible with teeth."""
    p = fb.mandible
    cy, cz, yf = a.cy, a.cz, a.y_front
    soft = SOFT
    mw = a.face_w * p.width_fraction
    # a parabolic (U-shaped) body from angle to angle, and the rami up to the condyles
    ts = np.linspace(-1.0, 1.0, p.arc_points)
    arc = [(mw * p.arc_width_fraction * t, yf - p.chin_ahead + p.arc_depth * t * t, zm) for t in ts]
    zc = cz - a.floor_mid - p.condyle_below_middle_floor
    pts = [(-mw + p.condyle_inset, cy - p.condyle_ahead_of_centre, zc),
           (-mw, cy - p.angle_ahead_of_centre, zm + p.angle_above_body), *arc,
           (mw, cy - p.angle_ahead_of_centre, zm + p.angle_above_body),
           (mw - p.condyle_inset, cy - p.condyle_ahead_of_centre, zc)]
    rr = ([p.condyle_radius, p.body_radius] + [p.body_radius + p.chin_extra_radius * (1 - abs(t)) for t in ts]
          + [p.body_radius, p.condyle_radius])
    for seg in range(len(pts) - 1):  # per segment: tight boxes; the body is tall and narrow
        body = 0 < seg < len(pts) - 2
        tube(g, lab, pts[seg:seg + 2], rr[seg:seg + 2], "cortical_bone", soft + ("air",),
             inner=p.cortex, inner_name="cancellous_bone", zscale=p.body_z_scale if body else 1.0)
    # teeth: one crown-and-root capsule per tooth along the upper and lower dental arches
    n = p.teeth_per_quadrant
    for zt, up in ((zm + p.lower_teeth_above_body, 1.0), (zp - p.upper_teeth_below_palate, -1.0)):
        for side in (-1.0, 1.0):
            for q in range(n):
                ang = (q + 0.5) / n * (np.pi / 2)
                tx = side * mw * p.dental_arch_width_fraction * np.sin(ang)
                ty = yf + p.dental_arch_front_behind_face + p.dental_arch_depth * (1 - np.cos(ang))
                tube(g, lab, [(tx, ty, zt - up * p.tooth_root_length),
                              (tx, ty, zt + up * p.tooth_crown_length)],
                     [p.tooth_root_radius + p.tooth_radius_step * q, p.tooth_crown_radius], "teeth",
                     soft + ("cortical_bone", "cancellous_bone", "air"))


def _neck(a: Anatomy, g: PosedGrid, lab: torch.Tensor, fb: FaceAndBase, zo: float, zp: float) -> None:
    """Pharynx, spinal canal and cord, cervical vertebrae."""
    p = fb.neck
    yf = a.y_front
    fm = a.foramen
    soft = SOFT
    bottom = float(min(g.canonical(0, 0, 0)[2], p.min_bottom)) - p.bottom_extension
    tube(g, lab, [(0, yf + p.nasopharynx_behind_face, zo - p.nasopharynx_below_orbit),
                  (0, fm[1] - p.oropharynx_ahead_of_foramen, zp - p.oropharynx_below_palate),
                  (0, fm[1] - p.hypopharynx_ahead_of_foramen, bottom)], list(p.pharynx_radii), "air", soft)
    yb = fm[1] - p.vertebra_ahead_of_foramen
    canal_pts = [fm + (0, 0, p.canal_top_above_foramen), fm + (0, -p.canal_bottom_shift, bottom - fm[2])]
    canal_r = list(p.canal_radii)
    b = g.box((-p.c1_box_half_x, fm[1] - p.c1_box_half_y, fm[2] - p.c1_box_below[0]),
              (p.c1_box_half_x, fm[1] + p.c1_box_half_y, fm[2] - p.c1_box_below[1]))
    if b is not None:  # C1 ring
        sl, x, y, z = b
        cd = tube_sdf(x, y, z, canal_pts, canal_r)
        paint(lab, sl, (cd > 0) & (cd < p.c1_thickness) & (z < fm[2] - p.c1_below[1])
              & (z > fm[2] - p.c1_below[0]) & (y < fm[1] + p.c1_behind), "cortical_bone", soft)
    dt = p.dens_top
    tube(g, lab, [(dt[0], yb + dt[1], fm[2] - dt[2]), (0, yb, fm[2] - p.dens_bottom_below)],
         list(p.dens_radii), "cortical_bone", soft + ("air",), inner=p.dens_cortex,
         inner_name="cancellous_bone")      # dens and C2 body
    ztop = fm[2] - p.first_top_below_foramen
    bx, by = p.body_half_axes
    cbx, cby = p.cancellous_half_axes
    for v in range(p.vertebrae):
        z1 = ztop - v * p.pitch
        z0 = z1 - p.body_height
        if z1 < bottom:
            break
        b = g.box((-p.box_half_x, yb - p.box_ahead_of_body, z0 - p.box_margin_z[0]),
                  (p.box_half_x, fm[1] + p.box_behind_foramen, z1 + p.box_margin_z[1]))
        if b is None:
            continue
        sl, x, y, z = b
        # vertebral body: a rounded box (superellipsoid) with a cortical shell
        zc, hz = (z0 + z1) / 2, (z1 - z0) / 2
        q = ((x / bx) ** 2 + ((y - yb) / by) ** 2) ** 2 + ((z - zc) / hz) ** 6
        paint(lab, sl, q < 1.0, "cortical_bone", soft + ("air",))
        q = ((x / cbx) ** 2 + ((y - yb) / cby) ** 2) ** 2 + ((z - zc) / (hz - p.end_plate)) ** 6
        paint(lab, sl, q < 1.0, "cancellous_bone")
        # neural arch around the canal, tilted spinous and transverse processes
        cd = tube_sdf(x, y, z, canal_pts, canal_r)
        arch_ = (cd > 0) & (cd < p.arch_thickness) & ((z - zc).abs() < hz - p.arch_inset) \
            & (y > yb + p.arch_behind_body)
        paint(lab, sl, arch_, "cortical_bone", soft)
        spin = tube_sdf(x, y, z, [(0.0, fm[1] + p.spinous_start_behind_foramen, zc),
                                  (0.0, fm[1] + p.spinous_end_behind_foramen - p.spinous_shortening * v,
                                   zc - p.spinous_drop)], list(p.spinous_radii))
        paint(lab, sl, spin < 0, "cortical_bone", soft)
        ts, te = p.transverse_start, p.transverse_end
        for sd in (-1.0, 1.0):
            tp = tube_sdf(x, y, z, [(sd * ts[0], yb + ts[1], zc), (sd * te[0], yb + te[1], zc + te[2])],
                          list(p.transverse_radii))
            paint(lab, sl, tp < 0, "cortical_bone", soft)
    zcut = fm[2] + p.csf_top_above_foramen
    tube(g, lab, canal_pts, canal_r, "csf", soft + BONE + ("air",), cond=lambda x, y, z: z < zcut)
    ct = p.cord_top
    tube(g, lab, [fm + ct, fm + (ct[0], ct[1], bottom - fm[2])], list(p.cord_radii), "white_matter",
         ("csf",), cond=lambda x, y, z: z < zcut)
