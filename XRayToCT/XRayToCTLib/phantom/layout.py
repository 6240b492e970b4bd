"""The named millimetres of the face, the skull base and the neck (:class:`FaceAndBase`),
and of the deep brain (:class:`DeepBrain`).

Every structure is placed relative to landmarks of the seed's :class:`~.anatomy.Anatomy`
(canonical frame, LPS mm: +x left, +y posterior, +z superior):

* ``cy``, ``cz``: centre of the intracranial cavity (its y and z);
* ``yf``: front of the cavity (inner table of the frontal bone, :attr:`Anatomy.y_front`);
* ``floor_ant`` / ``floor_mid``: depth of the anterior / middle cranial fossa below ``cz``;
* the foramen magnum centre (:attr:`Anatomy.foramen`);
* the orbit level ``zo``, the hard palate ``zp`` and the mandible body ``zm``
  (:class:`Levels`);
* ``face_len``: the seed's face-length factor (vertical face distances are scaled by it
  where a field says so).

"Ahead" means towards -y (anterior), "behind" towards +y, "above" towards +z. The seed draws
the sizes of the sinuses, globes, face width and the fossa depths (:class:`Anatomy`); the
fields here are the fixed layout around them. :data:`FACE_AND_BASE` is the layout every
phantom uses; a changed copy (``dataclasses.replace``) can be passed as
``head_phantom(..., layout=)`` to vary it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

Pair = tuple[float, float]
Triple = tuple[float, float, float]


@dataclass(frozen=True)
class Levels:
    """Heights of the face (mm)."""

    orbit_below_anterior_floor: float = 18.0
    """Orbit centres: ``zo = cz - floor_ant - this``."""
    palate_below_centre: float = 80.0
    """Hard palate: ``zp = cz - this * face_len``."""
    mandible_below_palate: float = 30.0
    """Mandible body: ``zm = zp - this * face_len``."""


@dataclass(frozen=True)
class FaceOutline:
    """The soft-tissue outline of the face and neck, blended (smooth union) into the scalp
    grown from the cranium. ``ys`` = the front of the forehead's scalp (``yf`` - skull
    thickness - scalp thickness); the face width ``face_w`` is drawn per seed."""

    face_behind: float = 48.0
    """Face ellipsoid centre: ``y = ys + this``."""
    face_below: float = 62.0
    """Face ellipsoid centre: ``z = cz - this * face_len``."""
    face_half_depth: float = 50.0
    """Face ellipsoid half-axis along y (along x: ``face_w``)."""
    face_half_height: float = 52.0
    """Face ellipsoid half-axis along z (times ``face_len``)."""
    face_blend: float = 12.0
    nose_behind: float = 4.0
    """Nose ellipsoid centre: ``y = ys - this`` (ahead of the forehead)."""
    nose_below: float = 58.0
    """Nose ellipsoid centre: ``z = cz - this * face_len``."""
    nose_half_axes: Triple = (10.0, 16.0, 24.0)
    """Nose half-axes (the z one times ``face_len``)."""
    nose_blend: float = 6.0
    jaw_behind: float = 42.0
    """Jaw ellipsoid centre: ``y = ys + this``."""
    jaw_below: float = 112.0
    """Jaw ellipsoid centre: ``z = cz - this * face_len``."""
    jaw_width_fraction: float = 0.8
    """Jaw half-width as a fraction of ``face_w``."""
    jaw_half_depth: float = 40.0
    jaw_half_height: float = 24.0
    jaw_blend: float = 14.0
    neck_behind_centre: float = 20.0
    """Neck cylinder axis: ``y = cy + this`` (its radii are drawn per seed)."""
    neck_top_below_centre: float = 60.0
    """The neck cylinder ends at ``z = cz - this``, rounded by ``neck_top_blend``."""
    neck_top_blend: float = 10.0
    neck_blend: float = 18.0
    midface_behind: float = 30.0
    """Mid-face (orbits and cheek bones, the widest and most forward face) centre:
    ``y = ys + this``."""
    midface_below_orbit: float = 6.0
    """Mid-face centre: ``z = zo - this``."""
    midface_extra_width: float = 6.0
    """Mid-face half-width: ``face_w + this``."""
    midface_half_depth: float = 36.0
    midface_half_height: float = 30.0
    midface_blend: float = 10.0


@dataclass(frozen=True)
class Sphenoid:
    """Sphenoid body with its sinus, and the clivus down to the foramen magnum."""

    ahead_of_centre: float = 28.0
    """Body centre: ``y = cy - this``."""
    above_middle_floor: float = 6.0
    """Body centre: ``z = cz - floor_mid + this``."""
    half_axes: Triple = (20.0, 18.0, 16.0)
    cortex: float = 2.0
    """Cortical shell; diploe deeper."""
    sinus_offset: Triple = (0.0, -2.0, -2.0)
    """Sinus centre from the body centre (its half-axes are drawn per seed)."""
    clivus_top_offset: Triple = (0.0, 10.0, 8.0)
    """Upper end of the clivus from the body centre."""
    clivus_bottom_ahead_of_foramen: float = 16.0
    """Lower end of the clivus: ``y = foramen y - this``."""
    clivus_bottom_above_foramen: float = 1.0
    """Lower end of the clivus: ``z = foramen z + this``."""
    clivus_radii: Pair = (6.0, 5.0)
    """Clivus radius at its upper and lower end."""
    clivus_cortex: float = 1.6


@dataclass(frozen=True)
class TemporalBone:
    """Petrous ridge with the inner ear, mastoid and external auditory canal (each side)."""

    petrous_base_behind_centre: float = 14.0
    """Lateral end of the petrous ridge: ``y = cy + this``."""
    petrous_base_above_middle_floor: float = 2.0
    """Lateral end: ``z = cz - floor_mid + this``."""
    petrous_base_inside_skin: float = 20.0
    """Lateral end: ``|x|`` = the skin's half-width at that (y, z) minus this."""
    petrous_apex_x: float = 16.0
    """Apex (medial end): ``|x|``."""
    petrous_apex_ahead_of_centre: float = 6.0
    """Apex: ``y = cy - this``."""
    petrous_apex_above_middle_floor: float = 8.0
    """Apex: ``z = cz - floor_mid + this``."""
    petrous_radii: Pair = (10.0, 6.5)
    """Radius at the lateral end and at the apex."""
    petrous_cut_above: float = 8.0
    """Bone is kept below the mean height of both ends plus this (a ridge, not a tube)."""
    inner_ear_start: Pair = (0.55, 0.45)
    """Inner-ear canal start: weights of (lateral end, apex)."""
    inner_ear_start_lift: float = 1.0
    """... raised by this (z)."""
    inner_ear_end: Pair = (0.2, 0.8)
    """Inner-ear canal end: weights of (lateral end, apex)."""
    inner_ear_radius: float = 2.0
    mastoid_behind_centre: float = 26.0
    """Mastoid centre: ``y = cy + this``."""
    mastoid_below_middle_floor: float = 8.0
    """Mastoid centre: ``z = cz - floor_mid - this``."""
    mastoid_inside_skin: float = 15.0
    """Mastoid centre: ``|x|`` = the skin's half-width there minus this."""
    mastoid_half_axes: Triple = (13.0, 14.0, 18.0)
    mastoid_cortex: float = 1.5
    """Cortical shell; air cells deeper."""
    mastoid_cell_threshold: float = 0.6
    """Air where the cell field exceeds this minus the seed's pneumatisation."""
    canal_start_lateral: float = 2.0
    """External auditory canal: from the petrous lateral end moved out by this ..."""
    canal_end_lateral: float = 24.0
    """... to the lateral end moved out by this (through the skin) ..."""
    canal_below: float = 6.0
    """... both lowered by this."""
    canal_radii: Pair = (3.5, 4.0)


@dataclass(frozen=True)
class Orbits:
    """Bony orbit (a cone from the rim back to the apex), its fat, the extra-ocular muscles,
    optic nerve, globe and lens (each side; centre height ``zo``)."""

    x_fraction: float = 0.42
    """Orbit axis: ``|x| = x_fraction * cavity half-width + x_offset``."""
    x_offset: float = 4.0
    globe_ahead: float = 9.0
    """Front of the globe: ``y = yf - this`` (the globe radius is drawn per seed)."""
    box_half_x: float = 22.0
    """Painting box around the orbit: ``|x - axis| <`` this, ..."""
    box_ahead: float = 24.0
    """... ``yf - box_ahead < y < yf + box_behind``, ..."""
    box_behind: float = 44.0
    box_half_z: float = 21.0
    """... ``|z - zo| <`` this."""
    cone_start_ahead: float = 12.0
    """The cone parameter ``t`` runs from 0 at ``y = yf - this`` ..."""
    cone_length: float = 52.0
    """... to 1 this far behind."""
    apex_x: float = 14.0
    """``|x|`` of the orbital apex (where the cone, nerve and muscles converge)."""
    rim_radius: float = 18.0
    """Cone radius at ``t = 0`` ..."""
    apex_radius: float = 3.0
    """... and at ``t = 1``."""
    apex_rise: float = 2.0
    """The cone axis, nerve and muscles rise by this (z) towards the apex."""
    vertical_squash: float = 1.1
    """The cone's cross-section is this much narrower vertically."""
    front: float = 22.0
    """Bone and fat only for ``yf - front < y < yf + back``."""
    back: float = 42.0
    wall: float = 1.6
    """Thickness of the bony orbital wall."""
    eyelid_ahead: float = 14.0
    """Soft tissue (eyelids) ahead of ``y = yf - this`` inside the cone."""
    nerve_end_behind: float = 48.0
    """Optic nerve: from the globe centre to ``y = yf + this`` at the apex."""
    nerve_radii: Pair = (2.3, 2.0)
    muscle_spread: Pair = (13.0, 12.0)
    """Four rectus muscles around the globe at these (x, z) offsets ..."""
    muscle_start_behind_globe: float = 2.0
    """... from ``y = globe centre + this`` ..."""
    muscle_end_behind: float = 46.0
    """... to ``y = yf + this`` near the apex, ..."""
    muscle_end_fraction: float = 0.2
    """... where their offsets have shrunk to this fraction."""
    muscle_radii: Pair = (2.0, 1.2)
    sclera: float = 1.0
    """Fibrous (soft-tissue dense) shell of the globe."""
    lens_behind_front: float = 2.6
    """Lens centre: ``y`` = front of the globe + this."""
    lens_half_axes: Triple = (4.5, 2.0, 4.5)


@dataclass(frozen=True)
class FrontalSinus:
    """Frontal sinus in the thickened frontal bone (its half-axes are drawn per seed)."""

    above_anterior_floor: float = 8.0
    """Centre: ``z = cz - floor_ant + this``."""
    gap: float = 3.0
    """Centre: ``y = yf - gap - skull_t / 2 - (sinus half-depth) / 2``."""


@dataclass(frozen=True)
class Maxillae:
    """Maxillary bones with their sinuses (half-axes drawn per seed), and the zygomatic bones
    and arches (each side)."""

    midline_gap: float = 9.0
    """Sinus centre: ``|x|`` = its half-width + this."""
    behind_face: float = 22.0
    """Sinus centre: ``y = yf + this``."""
    above_palate: float = 5.0
    """Sinus centre: ``z`` = palate + its half-height + this."""
    wall: float = 2.5
    """Bony wall around the sinus."""
    lining: float = 2.5
    """Mucosa on the sinus floor, this thick."""
    zygoma_front_x_fraction: float = 0.62
    """Zygoma: starts at ``|x|`` = this times the cavity half-width, ..."""
    zygoma_front_behind_face: float = 8.0
    """... ``y = yf + this``, ..."""
    zygoma_front_below_orbit: float = 14.0
    """... ``z = zo - this``; ..."""
    zygoma_body_behind_face: float = 30.0
    """... runs through the cheek at ``y = yf + this``, ..."""
    zygoma_body_below_orbit: float = 16.0
    """... ``z = zo - this``, ..."""
    arch_root_behind_centre: float = 2.0
    """... and along the arch to ``y = cy + this``, ..."""
    arch_root_below_middle_floor: float = 2.0
    """... ``z = cz - floor_mid - this``."""
    zygoma_inside_skin: float = 7.0
    """Cheek and arch points lie this far inside the skin."""
    zygoma_radii: Triple = (5.0, 3.5, 3.5)


@dataclass(frozen=True)
class Nose:
    """Nasal cavity with septum and turbinates, ethmoid cells and the hard palate."""

    floor_above_palate: float = 2.0
    """Nasal floor: ``nz0 = zp + this``."""
    roof_above_orbit: float = 4.0
    """Reference roof: ``nz1 = zo + this``."""
    cavity_top_below_roof: float = 10.0
    """The air cavity ends at ``nz1 - this`` ..."""
    wall_top_below_roof: float = 8.8
    """... and its bony wall at ``nz1 - this``."""
    wall_below_floor: float = 1.5
    """The bony wall reaches ``nz0 - this``."""
    wall: float = 1.2
    """Thickness of the lateral bony wall."""
    half_width_top: float = 4.0
    """Cavity half-width at the roof ..."""
    half_width_gain: float = 8.0
    """... plus this at the floor (a triangle in coronal section)."""
    front: float = 12.0
    """The air cavity: ``yf - front < y < yf + back``; ..."""
    back: float = 58.0
    wall_front: float = 6.0
    """... the bony wall from ``y = yf - this``."""
    box_ahead: float = 14.0
    """Painting box: ``|x| < box_half_x``, ``yf - box_ahead < y < yf + box_behind``, z from
    the floor to the roof widened by ``box_margin_z``."""
    box_behind: float = 60.0
    box_half_x: float = 14.0
    box_margin_z: float = 5.0
    turbinates: tuple[Pair, ...] = ((10.0, 5.0), (22.0, 4.0))
    """(height above the palate, lateral extent) of the inferior and middle turbinates."""
    turbinate_half_height: float = 4.0
    turbinate_inset: float = 1.0
    """Turbinates hang from the lateral wall, centred this far inside it."""
    septum_half_width: float = 1.0
    """Cartilaginous septum (mucosa-dense)."""
    bony_septum_half_width: float = 0.8
    bony_septum_behind: float = 10.0
    """The bony septum (upper half) starts at ``y = yf + this``."""
    ethmoid_half_width: float = 11.0
    ethmoid_front: float = 4.0
    """Ethmoid cells: ``yf - front < y < yf + back``, ``zo - below < z < zo + above``."""
    ethmoid_back: float = 40.0
    ethmoid_below: float = 12.0
    ethmoid_above: float = 14.0
    ethmoid_cell_scale: float = 1.3
    """Cell field frequency factor (smaller cells than the mastoid's) ..."""
    ethmoid_cell_threshold: float = -0.2
    """... air above this."""
    palate_half_thickness: float = 3.0
    palate_half_width: float = 24.0
    palate_front: float = 6.0
    """The palate starts at ``y = yf - this`` ..."""
    palate_back: float = 50.0
    """... and its painting box ends at ``y = yf + this``."""


@dataclass(frozen=True)
class Mandible:
    """Mandible (U-shaped body, rami to the condyles) and the teeth of both arches."""

    width_fraction: float = 0.78
    """Half-width between the angles: ``mw = face_w * this``."""
    arc_width_fraction: float = 0.92
    """The body is a parabola ``x = mw * this * t``, ``y = yf - chin_ahead + arc_depth t^2``."""
    chin_ahead: float = 4.0
    arc_depth: float = 56.0
    arc_points: int = 9
    condyle_inset: float = 4.0
    """Condyles: ``|x| = mw - this``, ..."""
    condyle_ahead_of_centre: float = 12.0
    """... ``y = cy - this``, ..."""
    condyle_below_middle_floor: float = 12.0
    """... ``z = cz - floor_mid - this``."""
    angle_ahead_of_centre: float = 20.0
    """Angles: ``|x| = mw``, ``y = cy - this``, ..."""
    angle_above_body: float = 6.0
    """... ``z = zm + this``."""
    condyle_radius: float = 4.0
    body_radius: float = 5.5
    """Radius at the angles and along the body ..."""
    chin_extra_radius: float = 1.0
    """... growing by this towards the chin."""
    cortex: float = 2.0
    """Cortical shell; cancellous bone deeper."""
    body_z_scale: float = 0.45
    """The body's cross-section is stretched vertically by 1 / this."""
    lower_teeth_above_body: float = 10.0
    """Row level of the lower teeth: ``zm + this``; ..."""
    upper_teeth_below_palate: float = 5.0
    """... of the upper teeth: ``zp - this``."""
    teeth_per_quadrant: int = 8
    dental_arch_width_fraction: float = 0.8
    """Dental arch: ``x = ±mw * this * sin(a)``, ..."""
    dental_arch_front_behind_face: float = 2.0
    """... ``y = yf + this + dental_arch_depth * (1 - cos(a))``."""
    dental_arch_depth: float = 40.0
    tooth_root_length: float = 5.0
    """Each tooth: a capsule from the row level this far into the jaw ..."""
    tooth_crown_length: float = 6.0
    """... to this far out of it."""
    tooth_root_radius: float = 3.0
    """Radius at the jaw end (plus ``tooth_radius_step`` per tooth from the midline) ..."""
    tooth_radius_step: float = 0.1
    tooth_crown_radius: float = 2.0
    """... and at the free end."""


@dataclass(frozen=True)
class Neck:
    """Pharynx, cervical spine (C1 ring, dens and C2, lower vertebrae), spinal canal and
    cord; distances from the foramen magnum centre ``fm`` unless said otherwise."""

    min_bottom: float = -150.0
    """The neck structures run down to the grid's bottom or this z (canonical), ..."""
    bottom_extension: float = 60.0
    """... extended by this."""
    nasopharynx_behind_face: float = 56.0
    """Pharynx: from ``(0, yf + this, zo - nasopharynx_below_orbit)``, ..."""
    nasopharynx_below_orbit: float = 20.0
    oropharynx_ahead_of_foramen: float = 44.0
    """... through ``(0, fm_y - this, zp - oropharynx_below_palate)`` ..."""
    oropharynx_below_palate: float = 6.0
    hypopharynx_ahead_of_foramen: float = 42.0
    """... down to ``(0, fm_y - this, bottom)``."""
    pharynx_radii: Triple = (5.0, 4.5, 4.0)
    vertebra_ahead_of_foramen: float = 24.0
    """Vertebral bodies: ``y = yb = fm_y - this``."""
    canal_top_above_foramen: float = 8.0
    """Spinal canal: from ``fm + (0, 0, this)`` ..."""
    canal_bottom_shift: float = 2.0
    """... to the bottom, moving this much forward (-y)."""
    canal_radii: Pair = (13.0, 9.0)
    """Canal radius at the top and the bottom (the arches are grown around it)."""
    c1_box_half_x: float = 25.0
    c1_box_half_y: float = 25.0
    c1_box_below: Pair = (20.0, 4.0)
    """C1 painting box: ``fm_z - 20 < z < fm_z - 4``."""
    c1_thickness: float = 6.0
    """C1 ring: this thick around the canal, ..."""
    c1_below: Pair = (18.0, 6.0)
    """... ``fm_z - 18 < z < fm_z - 6``, ..."""
    c1_behind: float = 20.0
    """... ``y < fm_y + this``."""
    dens_top: Triple = (0.0, 2.0, 4.0)
    """Dens tip: ``(x, yb + y, fm_z - z)`` ..."""
    dens_bottom_below: float = 30.0
    """... down to ``(0, yb, fm_z - this)`` (the C2 body)."""
    dens_radii: Pair = (5.5, 7.5)
    dens_cortex: float = 1.5
    vertebrae: int = 8
    """Vertebral bodies below C2 (at most; those below the bottom are left out), ..."""
    first_top_below_foramen: float = 30.0
    """... the first with its top at ``fm_z - this``, ..."""
    pitch: float = 19.0
    """... one every this (mm) ..."""
    body_height: float = 15.0
    """... this tall."""
    box_half_x: float = 28.0
    box_ahead_of_body: float = 14.0
    """Painting box per vertebra: ``yb - this < y < fm_y + box_behind_foramen``, ..."""
    box_behind_foramen: float = 42.0
    box_margin_z: Pair = (10.0, 1.0)
    """... ``z0 - 10 < z < z1 + 1`` (the spinous process points down)."""
    body_half_axes: Pair = (16.0, 12.0)
    """Body (rounded box) half-axes in x and y; ..."""
    cancellous_half_axes: Pair = (14.6, 10.6)
    """... its cancellous core, ..."""
    end_plate: float = 1.3
    """... the cortical end plates."""
    arch_thickness: float = 5.0
    """Neural arch: this thick around the canal, ..."""
    arch_inset: float = 2.0
    """... shorter than the body by this (z), ..."""
    arch_behind_body: float = 8.0
    """... behind ``y = yb + this``."""
    spinous_start_behind_foramen: float = 12.0
    """Spinous process: from ``(0, fm_y + this, zc)`` ..."""
    spinous_end_behind_foramen: float = 38.0
    """... to ``(0, fm_y + this - spinous_shortening * v, zc - spinous_drop)``."""
    spinous_shortening: float = 1.5
    spinous_drop: float = 9.0
    spinous_radii: Pair = (4.0, 3.0)
    transverse_start: Pair = (12.0, 9.0)
    """Transverse processes: from ``(±x, yb + y, zc)`` ..."""
    transverse_end: Triple = (24.0, 8.0, -2.0)
    """... to ``(±x, yb + y, zc + z)``."""
    transverse_radii: Pair = (3.5, 2.5)
    csf_top_above_foramen: float = 6.0
    """Canal CSF and cord are painted below ``z = fm_z + this``."""
    cord_top: Triple = (0.0, -3.0, 12.0)
    """Cord: from ``fm + this`` down the canal ..."""
    cord_radii: Pair = (7.0, 5.0)


@dataclass(frozen=True)
class FaceAndBase:
    """The layout of the face, skull base and neck (mm); see the module docstring for the
    landmarks the fields are measured from."""

    levels: Levels = field(default_factory=Levels)
    outline: FaceOutline = field(default_factory=FaceOutline)
    sphenoid: Sphenoid = field(default_factory=Sphenoid)
    temporal: TemporalBone = field(default_factory=TemporalBone)
    orbits: Orbits = field(default_factory=Orbits)
    frontal_sinus: FrontalSinus = field(default_factory=FrontalSinus)
    maxillae: Maxillae = field(default_factory=Maxillae)
    nose: Nose = field(default_factory=Nose)
    mandible: Mandible = field(default_factory=Mandible)
    neck: Neck = field(default_factory=Neck)


FACE_AND_BASE = FaceAndBase()
"""The layout every phantom uses."""


@dataclass(frozen=True)
class DeepBrain:
    """Deep brain structures: offsets ``(x, y, z)`` (mm) from the cavity centre, ``x``
    mirrored to both sides for paired structures; ``v`` is the seed's ``ventricle_scale``."""

    lentiform_centre: Triple = (22.0, -2.0, 0.0)
    lentiform_half_axes: Triple = (6.5, 15.0, 10.0)
    caudate_lateral_of_ventricle: float = 6.0
    """Caudate head: ``x`` = the ventricles' spread (:meth:`ventricle_spread`) + this, ..."""
    caudate_centre_yz: Pair = (-16.0, 12.0)
    """... ``(y, z)`` this."""
    caudate_half_axes: Triple = (5.0, 9.0, 9.0)
    thalamus_x: float = 8.0
    """Thalamus: ``x = thalamus_x + thalamus_x_per_scale * (v - 1)``, ..."""
    thalamus_x_per_scale: float = 2.0
    thalamus_centre_yz: Pair = (9.0, 3.0)
    """... ``(y, z)`` this."""
    thalamus_half_axes: Triple = (9.0, 14.0, 9.0)
    brain_stem_path: tuple[Triple, ...] = ((0.0, 12.0, -14.0), (0.0, 8.0, -22.0), (0.0, 6.0, -34.0),
                                           (0.0, 14.0, -48.0))
    """Midbrain, pons and medulla down to ..."""
    brain_stem_end_from_foramen: Triple = (0.0, -3.0, 2.0)
    """... this offset from the foramen magnum centre."""
    brain_stem_radii: tuple[float, ...] = (7.0, 11.0, 13.0, 9.0, 7.5)
    cistern_radii: tuple[float, ...] = (9.0, 13.0, 15.0, 11.0, 9.5)
    """The CSF sleeve around the brain stem (the perimesencephalic and prepontine cisterns)."""
    suprasellar_centre: Triple = (0.0, -16.0, -16.0)
    suprasellar_half_axes: Triple = (14.0, 9.0, 6.0)
    quadrigeminal_centre: Triple = (0.0, 24.0, -4.0)
    quadrigeminal_half_axes: Triple = (7.0, 7.0, 7.0)
    cisterna_magna_centre: Triple = (0.0, 48.0, -58.0)
    cisterna_magna_half_axes: Triple = (12.0, 10.0, 8.0)
    ventricle_x: float = 10.0
    """Spread of the lateral ventricles from the midline at ``v = 1`` ..."""
    ventricle_x_per_scale: float = 9.0
    """... growing by this per unit of ``v - 1``."""
    ventricle_radius_exponent: float = 1.25
    """Ventricle radii scale with ``v ** this`` (faster than the spread: rounded horns in
    hydrocephalus)."""
    ventricle_path: tuple[Triple, ...] = ((0.75, -34.0, 12.0), (1.0, -20.0, 17.0), (1.1, 4.0, 19.0),
                                          (1.55, 24.0, 11.0), (1.2, 44.0, 6.0))
    """Lateral ventricle from the frontal horn to the occipital horn: ``(x as a fraction of
    the spread, y, z)``; ..."""
    frontal_horn_y_per_scale: float = -3.0
    """... the frontal horn tip moves forward by this per unit of ``v`` ..."""
    occipital_horn_y_per_scale: float = 4.0
    """... and the occipital horn tip back by this."""
    ventricle_radii: tuple[float, ...] = (2.5, 4.5, 4.0, 6.5, 2.5)
    """Radii along the path (times ``v ** ventricle_radius_exponent``)."""
    ventricle_z_squash: tuple[float, float, float] = (1.2, 0.15, 2.0)
    """``(a, b, c)``: the body's cross-section is squashed vertically by ``a - b * min(v, c)``
    (slit-like when normal, rounder when enlarged)."""
    temporal_horn_bend: tuple[float, float, float, float] = (1.6, 12.0, 14.0, -10.0)
    """Temporal horn: from the trigone (4th path point) through ``x = spread * a + b``,
    ``(y, z) = (c, d)`` ..."""
    temporal_horn_tip: Triple = (30.0, -6.0, -20.0)
    """... to this tip."""
    temporal_horn_radii: Triple = (4.0, 2.5, 1.5)
    """Radii (times ``v ** ventricle_radius_exponent``)."""
    choroid_half_axes: Triple = (2.5, 3.0, 2.0)
    """Choroid-plexus calcification at the trigone (when the seed has one)."""
    third_ventricle_centre: Triple = (0.0, 4.0, -2.0)
    third_ventricle_half_axes: Triple = (1.2, 13.0, 9.0)
    """Half-axes at ``v = 1``; the width grows by ``ventricle_width_per_scale * (v - 1)``."""
    fourth_ventricle_centre: Triple = (0.0, 20.0, -36.0)
    fourth_ventricle_half_axes: Triple = (4.0, 3.5, 6.0)
    ventricle_width_per_scale: float = 2.0
    pineal_centre: Triple = (0.0, 20.0, 4.0)
    pineal_radius: float = 2.5
    falx_calcification_centre: Triple = (0.0, -10.0, 40.0)
    falx_calcification_half_axes: Triple = (1.2, 10.0, 4.0)

    def ventricle_spread(self, v: float) -> float:
        """Distance (mm) of the lateral ventricles' bodies from the midline."""
        return self.ventricle_x + self.ventricle_x_per_scale * (v - 1.0)


DEEP_BRAIN = DeepBrain()
"""The deep-brain layout every phantom uses."""
