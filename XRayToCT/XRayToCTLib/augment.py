"""Random augmentation of real head CTs in HU: smooth elastic deformation, rigid pose,
intensity jitter and scanner noise, deterministic by seed, geometry kept.

How each part is expressed (all in LPS millimetres, see :mod:`~XRayToCTLib.geometry`):

* **Rigid pose** -- a rotation ``R = rotation_matrix(rotation_deg)`` (about LPS x, then y,
  then z) about ``center_mm`` (the head centre) followed by ``translation_mm``: a point ``p``
  of the input head appears at ``R (p - c) + c + t`` in the output. It is defined in
  physical space, so it is correct on anisotropic and oblique grids.
* **Elastic deformation** -- a cubic B-spline displacement field (SimpleITK
  ``BSplineTransform``) over the input grid's physical extent, control points about
  :data:`ELASTIC_CONTROL_MM` apart, coefficients i.i.d. Gaussian with standard deviation
  ``ELASTIC_SD_MM * strength`` in mm along each LPS axis (smooth: C2 everywhere). Also
  physical, so an anisotropic grid is deformed like an isotropic one. The output at point
  ``q`` takes the input at ``B(P^-1(q))`` (``P`` the pose, ``B`` the B-spline map): the head
  is deformed in its own frame and then posed.
* Both spatial parts are applied in **one** linear interpolation (one SimpleITK resample
  through physical space onto the input grid; outside the input the value is air,
  -1000 HU), which is why they are not MONAI's voxel-space ``Rand3DElastic`` /
  ``RandAffine``: those work in voxel units (wrong on anisotropic CT grids), would add a
  second interpolation, and hold a dense displacement field (gigabytes for a 512^2 x 300 CT).
* **Intensity jitter** -- MONAI ``RandScaleIntensity`` (``v * (1 + f)``, ``f`` uniform in
  ``+-INTENSITY_SCALE * strength``: a contrast change about water, 0 HU) then
  ``RandShiftIntensity`` (``+ o`` HU, ``o`` uniform in ``+-INTENSITY_SHIFT_HU * strength``: a
  calibration offset).
* **Noise** -- MONAI ``RandGaussianNoise``: white Gaussian noise, standard deviation drawn
  uniformly in ``[0, NOISE_SD_HU * strength]`` HU, on every voxel (real scanners' noise is
  also present in air).

Each part draws from its own random stream, spawned from ``seed``
(``numpy.random.SeedSequence(seed).spawn``), so switching one part off leaves the others'
draws unchanged. What was drawn is recorded in ``metadata["augmentation"]``.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import SimpleITK as sitk
import torch
from monai.transforms import RandGaussianNoise, RandScaleIntensity, RandShiftIntensity

from .constants import AIR_HU
from .errors import InputError
from .geometry import Volume, rotation_matrix
from .hu import head_center
from .preprocess import resample_to_grid

__all__ = ["ROTATION_DEG", "TRANSLATION_MM", "ELASTIC_CONTROL_MM", "ELASTIC_SD_MM",
           "INTENSITY_SCALE", "INTENSITY_SHIFT_HU", "NOISE_SD_HU", "augmentation_transform",
           "augment_intensity", "augment_ct"]

ROTATION_DEG = (10.0, 5.0, 5.0)
"""At ``strength=1``, rotation angles are uniform in ``+-`` these (degrees) about LPS x
(pitch, nodding), y (roll) and z (yaw): clinical head positioning."""
TRANSLATION_MM = (8.0, 8.0, 8.0)
"""At ``strength=1``, translations are uniform in ``+-`` these (mm) along LPS x, y, z."""
ELASTIC_CONTROL_MM = 48.0
"""Approximate distance between B-spline control points (mm): the deformation's scale."""
ELASTIC_SD_MM = 4.0
"""At ``strength=1``, standard deviation of the B-spline coefficients (mm per axis)."""
INTENSITY_SCALE = 0.03
"""At ``strength=1``, the intensity scale factor is ``1 + U(-0.03, 0.03)``."""
INTENSITY_SHIFT_HU = 10.0
"""At ``strength=1``, the intensity offset is ``U(-10, 10)`` HU."""
NOISE_SD_HU = 6.0
"""At ``strength=1``, the noise standard deviation is ``U(0, 6)`` HU."""


def _streams(seed: int) -> dict[str, np.random.Generator]:
    """Independent generators for the four parts (fixed order: never reorder)."""
    names = ("rigid", "elastic", "intensity", "noise")
    return {n: np.random.default_rng(s) for n, s in
            zip(names, np.random.SeedSequence(int(seed)).spawn(len(names)))}


def _check(seed: int, strength: float) -> tuple[int, float]:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    s = float(strength)
    if not np.isfinite(s) or s < 0:
        raise ValueError(f"strength must be a finite number >= 0, got {strength!r}")
    return int(seed), s


def _head_center(volume: Volume) -> np.ndarray:
    try:
        return head_center(volume)
    except InputError:  # no voxel above the head threshold: rotate about the grid centre
        return volume.center


def augmentation_transform(volume: Volume, seed: int, *, elastic: bool = True,
                           rigid: bool = True, strength: float = 1.0,
                           center: Sequence[float] | None = None
                           ) -> tuple[sitk.Transform, dict[str, Any]]:
    """The spatial part of :func:`augment_ct` as a SimpleITK transform, and what was drawn.

    The transform maps **output** LPS points to **input** LPS points (ITK's resampling
    convention: ``preprocess.resample_to_grid(volume, volume, transform)`` applies it);
    it is the identity when both parts are off or ``strength`` is 0. ``center`` is the
    rotation centre (LPS mm; default: the head centre of ``volume``, the centroid of its
    voxels above -500 HU). Only the grid of ``volume`` (and, without ``center``, its head)
    is used.

    Returns ``(transform, record)``; ``record`` holds ``"pose"`` (``rotation_deg``,
    ``translation_mm``, ``center_mm``: a point ``p`` of the input appears at
    ``R (p - c) + c + t``) and ``"elastic"`` (``mesh_size``, ``coefficient_sd_mm``, and the
    measured ``max_displacement_mm`` / ``rms_displacement_mm`` over the grid's points).
    """
    seed, s = _check(seed, strength)
    rng = _streams(seed)
    record: dict[str, Any] = {}
    composite = sitk.CompositeTransform(3)
    if elastic and s > 0:
        # the B-spline domain is the grid's physical extent (voxel edges, from the outer
        # corner of voxel (0, 0, 0)), in its own frame
        extent = np.asarray(volume.field_mm)
        mesh = [max(1, int(round(e / ELASTIC_CONTROL_MM))) for e in extent]
        bs = sitk.BSplineTransform(3, 3)
        bs.SetTransformDomainOrigin(tuple(float(x) for x in volume.corners()[0]))
        bs.SetTransformDomainPhysicalDimensions(tuple(float(e) for e in extent))
        bs.SetTransformDomainDirection(tuple(float(x) for x in volume.direction.reshape(-1)))
        bs.SetTransformDomainMeshSize(mesh)
        sd = ELASTIC_SD_MM * s
        coeffs = rng["elastic"].normal(0.0, sd, size=len(bs.GetParameters()))
        bs.SetParameters(tuple(float(c) for c in coeffs))
        # measure the displacement it gives on a coarse lattice of the grid's points
        lattice = np.stack(np.meshgrid(*[np.linspace(0, n - 1, 12) for n in volume.size],
                                       indexing="ij"), -1).reshape(-1, 3)
        pts = volume.physical_points(lattice)
        disp = np.array([bs.TransformPoint(tuple(p)) for p in pts]) - pts
        norm = np.linalg.norm(disp, axis=1)
        record["elastic"] = {"mesh_size": mesh, "control_spacing_mm": (extent / mesh).tolist(),
                             "coefficient_sd_mm": sd, "order": 3,
                             "max_displacement_mm": float(norm.max()),
                             "rms_displacement_mm": float(np.sqrt(np.mean(norm ** 2)))}
        composite.AddTransform(bs)
    if rigid and s > 0:
        r = rng["rigid"]
        angles = [float(r.uniform(-a * s, a * s)) for a in ROTATION_DEG]
        shift = np.array([r.uniform(-t * s, t * s) for t in TRANSLATION_MM])
        c = _head_center(volume) if center is None else np.asarray(center, float).reshape(3)
        pose = sitk.Euler3DTransform()
        pose.SetComputeZYX(True)  # R = Rz Ry Rx, geometry.rotation_matrix's order
        pose.SetCenter(tuple(float(x) for x in c))
        pose.SetMatrix(tuple(float(x) for x in rotation_matrix(angles).reshape(-1)))
        pose.SetTranslation(tuple(float(x) for x in shift))
        record["pose"] = {"rotation_deg": angles, "translation_mm": shift.tolist(),
                          "center_mm": c.tolist(),
                          "convention": "input point p appears at R (p - c) + c + t, "
                                        "R = geometry.rotation_matrix(rotation_deg)"}
        # the resampling map needs output -> input: the inverse pose, applied first
        composite.AddTransform(pose.GetInverse())
    if composite.GetNumberOfTransforms() == 0:
        return sitk.Transform(3, sitk.sitkIdentity), record
    return composite, record


def augment_intensity(volume: Volume, seed: int, *, intensity: bool = True, noise: bool = True,
                      strength: float = 1.0) -> tuple[Volume, dict[str, Any]]:
    """Intensity jitter and noise (MONAI ``RandScaleIntensity``, ``RandShiftIntensity``,
    ``RandGaussianNoise``, seeded with ``set_random_state``) on a HU volume; the same grid.
    Returns the new volume (float32) and the record of what was drawn."""
    seed, s = _check(seed, strength)
    rng = _streams(seed)
    record: dict[str, Any] = {}
    img = torch.from_numpy(np.ascontiguousarray(volume.array, dtype=np.float32))[None]
    if intensity and s > 0:
        scale = RandScaleIntensity(factors=INTENSITY_SCALE * s, prob=1.0)
        shift = RandShiftIntensity(offsets=INTENSITY_SHIFT_HU * s, prob=1.0)
        scale.set_random_state(seed=int(rng["intensity"].integers(2 ** 31)))
        shift.set_random_state(seed=int(rng["intensity"].integers(2 ** 31)))
        img = shift(scale(img))
        record["intensity"] = {"scale": 1.0 + float(scale.factor),
                               "shift_hu": float(shift._offset),
                               "convention": "v -> v * scale + shift_hu"}
    if noise and s > 0:
        gn = RandGaussianNoise(prob=1.0, mean=0.0, std=NOISE_SD_HU * s, sample_std=True,
                               dtype=np.float32)
        gn.set_random_state(seed=int(rng["noise"].integers(2 ** 31)))
        img = gn(img)
        record["noise"] = {"sd_hu": float(np.std(gn.noise)) if gn.noise is not None else 0.0}
    arr = np.asarray(torch.as_tensor(img).numpy()[0], dtype=np.float32)
    return volume.with_array(arr), record


def augment_ct(volume: Volume, seed: int, *, elastic: bool = True, rigid: bool = True,
               intensity: bool = True, noise: bool = True, strength: float = 1.0,
               center: Sequence[float] | None = None) -> Volume:
    """A randomly augmented copy of a head CT in HU, on the same grid (size, spacing,
    origin, direction unchanged), deterministic by ``seed`` (a non-negative integer).

    ``strength`` scales every random range (0: the input, resampled nowhere; 1: the
    documented defaults; see the module docstring for the parts, their units and order).
    The spatial parts (:func:`augmentation_transform`) are one linear resample through
    physical space (air, -1000 HU, comes in at the borders); intensity and noise follow
    (:func:`augment_intensity`). Values are not clipped. ``metadata["augmentation"]``
    records the seed, strength and every drawn parameter. float32 output.
    """
    seed, s = _check(seed, strength)
    tx, record = augmentation_transform(volume, seed, elastic=elastic, rigid=rigid,
                                        strength=s, center=center)
    out = resample_to_grid(volume, volume, tx, "linear", AIR_HU) if record else volume
    out, irecord = augment_intensity(out, seed, intensity=intensity, noise=noise, strength=s)
    aug = {"seed": seed, "strength": s,
           "parts": {"elastic": elastic, "rigid": rigid, "intensity": intensity, "noise": noise},
           **record, **irecord}
    out.metadata = {**volume.metadata, "augmentation": aug}
    return out
