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
edges sharp. One 256^3 head takes about 1 s of CPU time (one thread; torch is set to one
thread during the call and restored after) on the project's 2-core machine
(``benchmarks/phantom.py``).

Layout of the package: :mod:`.tissues` (HU ranges, labels), :mod:`.fields` (signed-distance
and random-field primitives), :mod:`.anatomy` (the seed's parameters, cavity and outline),
:mod:`.layout` (the named millimetres of the face, skull base, neck and deep brain),
:mod:`.grid` (the output grid and the pose), :mod:`.painting` (label painting),
:mod:`.cranium` (scalp, skull, brain), :mod:`.face` (skull base, face, neck),
:mod:`.findings` and :mod:`.acquisition` (HU, noise, blur, head holder).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np
import torch

from ..geometry import Grid, RigidTransform, Volume, rotation_matrix
from .acquisition import head_holder, to_hu
from .anatomy import Anatomy
from .cranium import base_labels, coarse_fields, paint_deep_brain
from .face import paint_face_and_base
from .findings import FINDING_ALIASES, FINDINGS, paint_findings, parse_findings, resolve_findings
from .grid import PosedGrid
from .layout import DEEP_BRAIN, FACE_AND_BASE, DeepBrain, FaceAndBase
from .tissues import LABELS, TISSUE_HU

__all__ = ["head_phantom", "pose_registration", "parse_findings", "FINDINGS", "FINDING_ALIASES",
           "TISSUE_HU", "LABELS", "POSE_RANGES", "FaceAndBase", "FACE_AND_BASE", "DeepBrain",
           "DEEP_BRAIN"]

POSE_RANGES: dict[str, tuple[float, float]] = {
    # the random pose (pose=True): uniform in these ranges
    "pitch_x_deg": (-12.0, 12.0), "roll_y_deg": (-6.0, 6.0), "yaw_z_deg": (-8.0, 8.0),
    "tx_mm": (-8.0, 8.0), "ty_mm": (-8.0, 8.0), "tz_mm": (-8.0, 8.0),
}
"""The random pose of ``head_phantom(..., pose=True)``: uniform in these ranges."""


def head_phantom(size: int | Sequence[int] = 256, spacing: float | Sequence[float] = 1.0,
                 seed: int = 0, *, findings: Sequence[str] | str | None = None,
                 ventricle_scale: float | None = None, noise_hu: float | None = None,
                 pose: bool = True, rotation_deg: Sequence[float] | None = None,
                 translation_mm: Sequence[float] | None = None, table: bool | None = None,
                 beam_hardening: bool | None = None,
                 layout: FaceAndBase | None = None,
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
        layout: the named millimetres of the face, skull base and neck
            (:class:`FaceAndBase`); ``None`` = :data:`FACE_AND_BASE`.
        return_labels: also return the tissue label map (uint8 Volume, codes in
            :data:`LABELS`, before blur and noise).

    Returns:
        a float32 :class:`Volume` in HU clipped to [-1024, 3071], with metadata ``source``,
        ``kind``, ``units``, ``synthetic``, ``seed``, ``findings``, ``findings_detail``
        (canonical-frame positions), ``ventricle_scale``, ``noise_hu``, ``pose``
        (``rotation_deg``, ``translation_mm``), ``table``, ``beam_hardening``, and
        ``layout`` (its fields) when a layout other than :data:`FACE_AND_BASE` is given.
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
    if layout is not None and not isinstance(layout, FaceAndBase):
        raise ValueError(f"layout must be a FaceAndBase, got {type(layout).__name__}")
    a = Anatomy(r_anat, ventricle_scale, FACE_AND_BASE if layout is None else layout)
    names = resolve_findings(findings, r_find)
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

    grid = Grid.centered((0.0, 0.0, 0.0), tuple(int(v) for v in n), tuple(float(v) for v in sp))
    g = PosedGrid(grid, rotation_matrix(rot_deg), trans)
    threads = torch.get_num_threads()
    try:
        # the work is done in cache-sized slabs and boxes, where thread start-up costs more
        # than it gains (on a busy machine two threads were 15x slower than one)
        torch.set_num_threads(1)
        with torch.no_grad():
            lab = base_labels(a, g, coarse_fields(a, g))
            paint_face_and_base(a, g, lab)
            paint_deep_brain(a, g, lab)
            detail = paint_findings(a, g, lab, names, r_find)
            if use_table:
                head_holder(g, lab, a)
            img = to_hu(a, g, lab, noise, use_bh, bh_strength, torch_seed)
    finally:
        torch.set_num_threads(threads)

    meta = {"source": f"phantom(seed={int(seed)})", "kind": "synthetic head phantom",
            "units": "HU", "synthetic": True, "seed": int(seed), "findings": names,
            "findings_detail": detail, "ventricle_scale": a.vent, "noise_hu": noise,
            "pose": {"rotation_deg": [float(v) for v in rot_deg],
                     "translation_mm": [float(v) for v in trans]},
            "table": use_table, "beam_hardening": use_bh}
    if a.layout != FACE_AND_BASE:
        meta["layout"] = dataclasses.asdict(a.layout)
    vol = grid.with_array(img, **meta)
    if return_labels:
        labels = {**meta, "kind": "phantom labels", "units": "label", "labels": dict(LABELS)}
        return vol, grid.with_array(lab.numpy(), **labels)
    return vol

def pose_registration(volume: Volume) -> RigidTransform:
    """The rigid transform canonical LPS points -> this phantom's LPS points, from its
    ``metadata["pose"]``: a :class:`~XRayToCTLib.geometry.RigidTransform` with parameters
    ``(radians(rx), radians(ry), radians(rz), tx, ty, tz)`` and centre (0, 0, 0).
    ``preprocess.to_canonical(volume, grid, transform=pose_registration(volume))`` undoes the
    pose without optimisation."""
    pose = (volume.metadata or {}).get("pose")
    if not isinstance(pose, dict) or "rotation_deg" not in pose or "translation_mm" not in pose:
        raise ValueError("the volume has no phantom pose in its metadata (metadata['pose'])")
    r = [math.radians(float(v)) for v in pose["rotation_deg"]]
    t = [float(v) for v in pose["translation_mm"]]
    return RigidTransform(tuple(r + t), (0.0, 0.0, 0.0),
                          {"method": "phantom pose (exact, from metadata)"})
