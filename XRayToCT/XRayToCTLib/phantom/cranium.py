"""The cranium and brain of the phantom: scalp, skull and brain painted slab by slab from
smooth fields evaluated on a coarse grid (:func:`coarse_fields`, :func:`base_labels`), then the
deep brain structures (:func:`paint_deep_brain`)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .anatomy import Anatomy
from .fields import eval_waves
from .grid import PosedGrid
from .layout import DEEP_BRAIN, DeepBrain
from .painting import crop, ellipsoid, paint, set_label, tube
from .tissues import BRAIN, LABELS


def coarse_fields(a: Anatomy, g: PosedGrid) -> torch.Tensor:
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
    n = eval_waves(a.sulc_waves, c[0] + rel[0] * scale, c[1] + rel[1] * scale, c[2] + rel[2] * scale)
    step = (g.f * g.step)[::-1]  # coarse spacing along k, j, i (mm)
    grads = np.gradient(n, *step) if min(n.shape) > 1 else [np.ones_like(n)]
    sulc = n / np.maximum(np.sqrt(sum(gr * gr for gr in grads)), 1e-3)
    fat = eval_waves(a.fat_waves, x, y, z)
    ch = [skin, cav, thick, np.clip(sulc, -30, 30), fat]
    return torch.from_numpy(np.stack(ch).astype(np.float32))


def base_labels(a: Anatomy, g: PosedGrid, coarse: torch.Tensor) -> torch.Tensor:
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
        sj, si = crop(skin < 0)
        if sj is None:
            continue
        o = lab[k0:k1, sj, si]  # a view: painting it paints the label map
        skin, cav, thick, sulc, fat = (t[:, sj, si] for t in (skin, cav, thick, sulc, fat))
        x, y, z = g.canonical(ii[..., si], jj[:, sj], kk)
        x, y, z = (t.expand(o.shape) for t in (x, y, z))
        inside = skin < 0
        # soft tissue: skin, subcutaneous fat, muscle (fat planes deeper in face and neck)
        set_label(o, inside, LABELS["muscle"])
        bone_out = cav - thick
        deep = -skin
        set_label(o, inside & (deep > a.skin_t) & ((deep < a.skin_t + 3.5) | (fat > 0.8))
             & ((bone_out > 1.0) | (z < a.cz - 40)), LABELS["fat"])
        set_label(o, inside & (deep <= a.skin_t), LABELS["skin"])
        # skull: outer table / diploe / inner table; a hole at the foramen magnum
        bone = (bone_out < 0) & (cav >= 0)
        if float(z.min()) < fm[2] + 12.0:
            bone &= ~(((x - fm[0]) ** 2 + (y - fm[1]) ** 2 < 14.0 ** 2) & (z < fm[2] + 12.0))
        set_label(o, bone, LABELS["diploe"])
        set_label(o, bone & ((-bone_out < tab) | (cav < tab) | (thick < 2.5 * tab)), LABELS["cortical_bone"])
        # sutures: coronal, sagittal, lambdoid (thin zig-zag fibrous gaps in the vault)
        tj, ti = crop(bone & (z > a.cz - 10))
        if tj is not None:
            xt, yt, zt = x[:, tj, ti], y[:, tj, ti], z[:, tj, ti]
            zig = 1.2 * torch.sin(xt * 1.3) + 0.8 * torch.sin(zt * 1.1 + 1.0)
            cor = (yt - (a.cy - 0.25 * a.ay) - 0.25 * (zt - a.cz) + zig).abs() < 0.6
            sag = ((xt + 1.2 * torch.sin(yt * 1.2)).abs() < 0.6) & (yt > a.cy - 0.25 * a.ay) \
                & (yt < a.cy + 0.55 * a.ay)
            lam = (yt - (a.cy + 0.55 * a.ay) + 0.45 * (zt - a.cz - 40) - 0.15 * xt.abs()
                   + 0.8 * torch.sin(zt * 1.4 + xt)).abs() < 0.6
            set_label(o[:, tj, ti], bone[:, tj, ti] & (zt > a.cz - 10) & (cor | sag | lam), LABELS["suture"])
        # intracranial contents
        bj, bi = crop(cav < 0)
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
        set_label(o, cer, LABELS["white_matter"])
        set_label(o, cer & (e < a.cortex_t), LABELS["grey_matter"])
        set_label(o, cer & (e < 0), LABELS["csf"])
        # cerebellum: grey folia around a white core
        cb = brain & post_fossa
        if bool(cb.any()):
            yc, zc = a.cy + 42.0, a.cz - 44.0
            r = torch.sqrt((x.abs() - 24.0) ** 2 + (y - yc) ** 2 * 0.8 + (z - zc) ** 2)
            fol = torch.sin(r * (2 * np.pi / 4.0) + a.folia_phase + 0.6 * sulc)
            set_label(o, cb, LABELS["grey_matter"])
            set_label(o, cb & (r < 11.0), LABELS["white_matter"])
            set_label(o, cb & (fol > 0.96) & (r > 9.0) & (depth < 10.0), LABELS["csf"])
            set_label(o, cb & (depth < 0.5 + 0.6 * a.csf_t), LABELS["csf"])
        # falx (midline, above the corpus callosum level) and tentorium
        falx = brain & (xm.abs() < a.falx_w / 2 + 0.2) & ((z > callosum) | (y > a.cy + 30)) & ~post_fossa
        set_label(o, falx, LABELS["dura"])
        set_label(o, brain & (tent.abs() < 0.7) & (y > a.cy + 8.0 + 0.1 * x.abs())
             & ((y - a.cy - 2.0) ** 2 + x * x * 0.6 > 24.0 ** 2), LABELS["dura"])
    return lab


def paint_deep_brain(a: Anatomy, g: PosedGrid, lab: torch.Tensor, p: DeepBrain = DEEP_BRAIN) -> None:
    """Basal ganglia, thalami, brain stem, cisterns, ventricles and calcifications
    (:class:`~.layout.DeepBrain`)."""
    c = a.center
    v = a.vent
    brain = BRAIN
    xo = p.ventricle_spread(v)
    vr = v ** p.ventricle_radius_exponent
    for s in (-1.0, 1.0):
        lc, cyz, tyz = p.lentiform_centre, p.caudate_centre_yz, p.thalamus_centre_yz
        ellipsoid(g, lab, c + (s * lc[0], lc[1], lc[2]), p.lentiform_half_axes, "deep_grey_matter", brain)
        ellipsoid(g, lab, c + (s * (xo + p.caudate_lateral_of_ventricle), cyz[0], cyz[1]),
                  p.caudate_half_axes, "deep_grey_matter", brain)
        ellipsoid(g, lab, c + (s * (p.thalamus_x + p.thalamus_x_per_scale * (v - 1.0)), tyz[0], tyz[1]),
                  p.thalamus_half_axes, "deep_grey_matter", brain)
        # insula (grey) with the Sylvian cistern lateral to it, and the fissure's stem
        b = g.box(c + (min(s * 30, s * a.ax), -34, -20), c + (max(s * 30, s * a.ax), 24, 14))
        if b is not None:
            sl, x, y, z = b
            x, y, z = x - c[0], y - c[1], z - c[2]
            xi = 0.42 * a.ax + 0.08 * y + 1.5 * torch.sin(z * 0.35 + y * 0.2)
            reg = (y > -26.0) & (y < 16.0) & (z > -16.0) & (z < 10.0)
            w = 0.7 + 1.6 * a.atrophy
            paint(lab, sl, reg & ((x.abs() - xi + 3.0).abs() < 3.0), "grey_matter", ("white_matter",))
            paint(lab, sl, reg & ((x.abs() - xi).abs() < w), "csf", ("grey_matter", "white_matter"))
            stem_ = (y > -30.0) & (y < -16.0) & ((z + 6.0 + 0.1 * (x.abs() - xi)).abs() < w) & (x.abs() > xi)
            paint(lab, sl, stem_, "csf", ("grey_matter", "white_matter"))
    # brain stem with the surrounding cisterns
    fm = a.foramen
    stem = [c + q for q in p.brain_stem_path] + [fm + p.brain_stem_end_from_foramen]
    tube(g, lab, stem, list(p.cistern_radii), "csf", brain)
    tube(g, lab, stem, list(p.brain_stem_radii), "brain_stem", brain)
    ellipsoid(g, lab, c + p.suprasellar_centre, p.suprasellar_half_axes, "csf", brain)
    ellipsoid(g, lab, c + p.quadrigeminal_centre, p.quadrigeminal_half_axes, "csf", brain)
    ellipsoid(g, lab, c + p.cisterna_magna_centre, p.cisterna_magna_half_axes, "csf", brain)
    # ventricles
    za, zb, zc = p.ventricle_z_squash
    zs = za - zb * min(v, zc)  # slit-like when normal, rounder when enlarged
    ys = [p.frontal_horn_y_per_scale * v, 0.0, 0.0, 0.0, p.occipital_horn_y_per_scale * v]
    for s in (-1.0, 1.0):
        pts = [c + (s * xo * fx, y + dy, z) for (fx, y, z), dy in zip(p.ventricle_path, ys)]
        rad = [r * vr for r in p.ventricle_radii]
        for seg in range(len(pts) - 1):
            tube(g, lab, pts[seg:seg + 2], rad[seg:seg + 2], "csf", brain, zscale=zs)
        bf, bx, by, bz = p.temporal_horn_bend
        tip = p.temporal_horn_tip
        tube(g, lab, [pts[3], c + (s * (xo * bf + bx), by, bz), c + (s * tip[0], tip[1], tip[2])],
             [r * vr for r in p.temporal_horn_radii], "csf", brain)
        if a.choroid_calc:
            ellipsoid(g, lab, pts[3], p.choroid_half_axes, "calcification", brain)
    grow = p.ventricle_width_per_scale * (v - 1.0)
    h3, h4 = p.third_ventricle_half_axes, p.fourth_ventricle_half_axes
    ellipsoid(g, lab, c + p.third_ventricle_centre, (h3[0] + grow, h3[1], h3[2]), "csf", brain)
    ellipsoid(g, lab, c + p.fourth_ventricle_centre, (h4[0] + grow, h4[1], h4[2]), "csf", brain)
    if a.pineal_calc:
        ellipsoid(g, lab, c + p.pineal_centre, (p.pineal_radius,) * 3, "calcification", brain)
    if a.falx_calc:
        ellipsoid(g, lab, c + p.falx_calcification_centre, p.falx_calcification_half_axes,
                  "calcification", brain)
