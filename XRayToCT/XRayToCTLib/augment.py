"""Random augmentation of real head CTs in HU: smooth elastic deformation, anisotropic scale,
rigid pose, slice thickness, coverage, intensity jitter and scanner noise, deterministic by
seed, geometry kept; and the removal of the patient support (couch, head holder).

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
  ``q`` takes the input at ``B(P^-1(q))`` (``P`` the pose, ``B`` the B-spline map; with the
  scale below, ``B(S^-1(P^-1(q)))``): the head is deformed in its own frame and then posed.
* **Anisotropic scale** -- factors ``f = 1 + U(-SCALE, SCALE) * strength`` per LPS axis about
  the same centre ``c``: after the elastic deformation, a point ``p`` of the head appears at
  ``c + diag(f) (p - c)``, and is then posed. The output at ``q`` takes the input at
  ``B(S^-1(P^-1(q)))``.
* The three spatial parts are applied in **one** linear interpolation (one SimpleITK resample
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
* **Slice thickness** (:func:`augment_scan`) -- with probability :data:`BLUR_PROBABILITY`, a
  Gaussian blur along LPS z (the grid axis nearest to it) of FWHM uniform in
  :data:`BLUR_FWHM_MM`: a thick-slice scan.
* **Coverage** (:func:`augment_scan`) -- with probability :data:`CROP_PROBABILITY`, everything
  below an axial level (LPS z) uniform in :data:`CROP_BELOW_CENTER_MM` below the head centre
  (lower neck to chin) is set to air: a scan that stops at C1 instead of the shoulders.
* **Patient support** (:func:`body_mask`, :func:`remove_support`, :func:`support_in_drrs`) --
  what is not the patient (the largest connected component above :data:`BODY_THRESHOLD_HU`,
  holes filled, dilated by :data:`BODY_DILATION_MM`) set to air; whether the augmented DRRs
  keep the support is drawn with probability :data:`SUPPORT_KEEP_PROBABILITY`.

Order in :func:`augment_ct` (and in :mod:`~XRayToCTLib.data`'s augmented copies): the spatial
parts (one resample), slice thickness, coverage, intensity, noise. Strength 0 switches every
part off; the probabilities and the blur and crop ranges do not scale with ``strength``.

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
from scipy import ndimage

from .constants import AIR_HU
from .errors import InputError
from .geometry import Volume, rotation_matrix
from .hu import head_center, head_mask
from .preprocess import resample_to_grid

__all__ = ["ROTATION_DEG", "TRANSLATION_MM", "ELASTIC_CONTROL_MM", "ELASTIC_SD_MM", "SCALE",
           "INTENSITY_SCALE", "INTENSITY_SHIFT_HU", "NOISE_SD_HU", "BLUR_PROBABILITY",
           "BLUR_FWHM_MM", "CROP_PROBABILITY", "CROP_BELOW_CENTER_MM", "BODY_THRESHOLD_HU",
           "BODY_DILATION_MM", "SUPPORT_KEEP_PROBABILITY", "augmentation_transform",
           "augment_scan", "augment_intensity", "augment_ct", "body_mask", "remove_support",
           "support_in_drrs"]

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
SCALE = 0.10
"""At ``strength=1``, the scale factor along each LPS axis is ``1 + U(-0.1, 0.1)``."""
BLUR_PROBABILITY = 0.5
"""Probability that a copy is blurred along z like a thick-slice scan."""
BLUR_FWHM_MM = (1.0, 5.0)
"""Range (mm) of the uniform full width at half maximum of that blur."""
CROP_PROBABILITY = 0.5
"""Probability that a copy's coverage is cut in the neck."""
CROP_BELOW_CENTER_MM = (60.0, 110.0)
"""Range (mm below the head centre, along LPS z) of the uniform level of that cut: about the
chin to the lower neck when the centre is the head template's head centroid."""
BODY_THRESHOLD_HU = -300.0
"""Soft-tissue threshold of the body mask (fat is about -100 HU; foam pads and blankets are
below it; the couch's carbon shell and the head holder above it, but apart from the body)."""
BODY_DILATION_MM = 5.0
"""The body mask is dilated by this much, so skin and its partial volume stay."""
BODY_COARSE_MM = 2.0
"""The body mask is found on a grid no finer than this (mm)."""
SUPPORT_KEEP_PROBABILITY = 0.5
"""Probability that an augmented copy's DRRs keep the patient support."""


def _streams(seed: int) -> dict[str, np.random.Generator]:
    """Independent generators, one per part. The order is fixed (never reorder; append new
    parts at the end: ``SeedSequence.spawn`` children do not depend on how many are made, so
    older parts keep their draws)."""
    names = ("rigid", "elastic", "intensity", "noise", "scale", "resolution", "crop", "support")
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
                           rigid: bool = True, scale: bool = True, strength: float = 1.0,
                           center: Sequence[float] | None = None
                           ) -> tuple[sitk.Transform, dict[str, Any]]:
    """The spatial part of :func:`augment_ct` as a SimpleITK transform, and what was drawn.

    The transform maps **output** LPS points to **input** LPS points (ITK's resampling
    convention: ``preprocess.resample_to_grid(volume, volume, transform)`` applies it);
    it is the identity when every part is off or ``strength`` is 0. ``center`` is the
    rotation and scaling centre (LPS mm; default: the head centre of ``volume``, the
    centroid of its voxels above -500 HU). Only the grid of ``volume`` (and, without
    ``center``, its head) is used.

    Returns ``(transform, record)``; ``record`` holds ``"pose"`` (``rotation_deg``,
    ``translation_mm``, ``center_mm``: a point ``p`` of the input appears at
    ``R (p - c) + c + t``), ``"scale"`` (``factors`` per LPS axis and ``center_mm``) and
    ``"elastic"`` (``mesh_size``, ``coefficient_sd_mm``, and the measured
    ``max_displacement_mm`` / ``rms_displacement_mm`` over the grid's points). The output at
    ``q`` takes the input at ``B(S^-1(P^-1(q)))``.
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
    c = None
    if (rigid or scale) and s > 0:
        c = _head_center(volume) if center is None else np.asarray(center, float).reshape(3)
    if scale and s > 0:
        factors = [1.0 + float(rng["scale"].uniform(-SCALE * s, SCALE * s)) for _ in range(3)]
        sc = sitk.ScaleTransform(3, factors)
        sc.SetCenter(tuple(float(x) for x in c))
        record["scale"] = {"factors": factors, "center_mm": c.tolist(),
                           "convention": "after the elastic deformation, a point p appears at "
                                         "c + diag(factors) (p - c), then the pose"}
        composite.AddTransform(sc.GetInverse())  # output -> input: applied after P^-1
    if rigid and s > 0:
        r = rng["rigid"]
        angles = [float(r.uniform(-a * s, a * s)) for a in ROTATION_DEG]
        shift = np.array([r.uniform(-t * s, t * s) for t in TRANSLATION_MM])
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


def _z_axis(volume: Volume) -> tuple[int, np.ndarray]:
    """The grid axis (0, 1, 2 = i, j, k) nearest to LPS z, and the LPS z step (mm) of one
    voxel along each grid axis."""
    corner = volume.physical_points(np.zeros((1, 3)))[0]
    steps = volume.physical_points(np.eye(3)) - corner  # one voxel along i, j, k
    return int(np.argmax(np.abs(steps[:, 2]))), steps[:, 2]


def augment_scan(volume: Volume, seed: int, *, blur: bool = True, crop: bool = True,
                 strength: float = 1.0, center: Sequence[float] | None = None
                 ) -> tuple[Volume, dict[str, Any]]:
    """How the scan was made: slice thickness (with probability :data:`BLUR_PROBABILITY`, a
    Gaussian blur along the grid axis nearest LPS z, FWHM uniform in :data:`BLUR_FWHM_MM`)
    then coverage (with probability :data:`CROP_PROBABILITY`, every voxel whose centre lies
    below ``z = center_z - d``, ``d`` uniform in :data:`CROP_BELOW_CENTER_MM`, set to air).

    ``center``: the head centre (LPS mm; default :func:`hu.head_center` of ``volume``).
    Both draws are made whatever the outcome (each part has its own stream), so turning one
    part off leaves the other's unchanged; ``strength`` 0 turns both off. Returns the volume
    (float32, same grid; the input itself when nothing applies) and the record:
    ``"resolution"`` (``applied``, ``fwhm_mm``, ``sigma_mm``, ``axis``) and ``"crop"``
    (``applied``, ``z_mm``: the level in LPS, ``below_center_mm``)."""
    seed, s = _check(seed, strength)
    rng = _streams(seed)
    record: dict[str, Any] = {}
    arr = None
    if blur and s > 0:
        apply = bool(rng["resolution"].uniform() < BLUR_PROBABILITY)
        fwhm = float(rng["resolution"].uniform(*BLUR_FWHM_MM))
        axis, _ = _z_axis(volume)
        rec: dict[str, Any] = {"applied": apply, "axis": "LPS z"}
        if apply:
            sigma = fwhm / (2.0 * np.sqrt(2.0 * np.log(2.0)))
            arr = ndimage.gaussian_filter1d(np.asarray(volume.array, dtype=np.float32),
                                            sigma / volume.spacing[axis], axis=2 - axis,
                                            mode="nearest", truncate=4.0)
            rec.update(fwhm_mm=fwhm, sigma_mm=float(sigma))
        record["resolution"] = rec
    if crop and s > 0:
        apply = bool(rng["crop"].uniform() < CROP_PROBABILITY)
        below = float(rng["crop"].uniform(*CROP_BELOW_CENTER_MM))
        rec = {"applied": apply}
        if apply:
            c = _head_center(volume) if center is None else np.asarray(center, float).reshape(3)
            level = float(c[2] - below)
            _, dz = _z_axis(volume)
            z0 = volume.physical_points(np.zeros((1, 3)))[0, 2]
            nk, nj, ni = volume.array.shape
            z = (z0 + dz[0] * np.arange(ni)[None, None, :] + dz[1] * np.arange(nj)[None, :, None]
                 + dz[2] * np.arange(nk)[:, None, None])
            arr = np.array(volume.array, dtype=np.float32) if arr is None else arr
            arr[z < level] = AIR_HU
            rec.update(z_mm=level, below_center_mm=below, center_mm=c.tolist(),
                       convention="voxels with LPS z < z_mm are air")
        record["crop"] = rec
    return (volume if arr is None else volume.with_array(arr)), record


def body_mask(volume: Volume, *, threshold: float = BODY_THRESHOLD_HU,
              dilation_mm: float = BODY_DILATION_MM,
              coarse_mm: float | None = BODY_COARSE_MM) -> np.ndarray:
    """The patient: :func:`hu.head_mask` of ``volume`` (HU) at ``threshold`` (the largest
    connected component after a 1-voxel opening, which detaches thin contacts) on a grid no
    finer than ``coarse_mm``; its holes filled in 3D and in every axial, coronal and sagittal
    slice (the opening also cuts thin plates such as the nasal septum, which the slice-wise
    fill of the nasal cavity brings back); dilated by ``dilation_mm`` (Euclidean, in mm) and
    brought back onto the grid of ``volume``. A bool array ``[k, j, i]``. Everything outside
    it -- couch, head holder, thermoplastic mask, cushions, tubes -- is patient support."""
    coarse = head_mask(volume, threshold, fill_holes=True, opening=1,
                       coarse_mm=coarse_mm if coarse_mm else min(volume.spacing))
    inside = np.asarray(coarse.array) > 0
    if not inside.any():
        raise InputError(None, "no body found: no voxel is above the soft-tissue threshold "
                               "(is the CT in Hounsfield units?)")
    filled = inside.copy()
    for axis in range(3):
        for idx in range(inside.shape[axis]):
            sl = [slice(None)] * 3
            sl[axis] = idx
            filled[tuple(sl)] |= ndimage.binary_fill_holes(inside[tuple(sl)])
    inside = filled
    if dilation_mm > 0:
        dist = ndimage.distance_transform_edt(~inside, sampling=tuple(coarse.spacing)[::-1])
        inside = dist <= float(dilation_mm)
    grown = coarse.with_array(inside.astype(np.float32))
    back = resample_to_grid(grown, volume, None, "linear", 0.0)
    return np.asarray(back.array) >= 0.5


def remove_support(volume: Volume, mask: np.ndarray | None = None) -> tuple[Volume, dict[str, Any]]:
    """``volume`` with everything outside the body (``mask``, default :func:`body_mask`) set
    to air (-1000 HU), and a record: the threshold and dilation, and ``removed_ml``, the
    volume (mL) above -500 HU that was removed."""
    inside = body_mask(volume) if mask is None else np.asarray(mask, dtype=bool)
    if inside.shape != volume.array.shape:
        raise ValueError(f"mask shape {inside.shape} is not the volume's {volume.array.shape}")
    arr = np.where(inside, volume.array, np.float32(AIR_HU)).astype(np.float32)
    removed = int(np.count_nonzero((volume.array > -500.0) & ~inside))
    record = {"threshold_hu": BODY_THRESHOLD_HU, "dilation_mm": BODY_DILATION_MM,
              "removed_ml": removed * float(np.prod(volume.spacing)) / 1000.0}
    return volume.with_array(arr), record


def support_in_drrs(seed: int) -> bool:
    """Whether an augmented copy's DRRs keep the patient support (probability
    :data:`SUPPORT_KEEP_PROBABILITY`, from the seed's own stream)."""
    seed, _ = _check(seed, 1.0)
    return bool(_streams(seed)["support"].uniform() < SUPPORT_KEEP_PROBABILITY)


def augment_ct(volume: Volume, seed: int, *, elastic: bool = True, rigid: bool = True,
               scale: bool = True, blur: bool = True, crop: bool = True,
               intensity: bool = True, noise: bool = True, strength: float = 1.0,
               center: Sequence[float] | None = None) -> Volume:
    """A randomly augmented copy of a head CT in HU, on the same grid (size, spacing,
    origin, direction unchanged), deterministic by ``seed`` (a non-negative integer).

    ``strength`` scales every random range (0: the input, resampled nowhere; 1: the
    documented defaults; see the module docstring for the parts, their units and order).
    The spatial parts (:func:`augmentation_transform`) are one linear resample through
    physical space (air, -1000 HU, comes in at the borders); slice thickness and coverage
    (:func:`augment_scan`), then intensity and noise (:func:`augment_intensity`) follow.
    Values are not clipped. ``metadata["augmentation"]`` records the seed, strength and
    every drawn parameter. float32 output. The patient support is left as it is
    (:func:`remove_support` removes it).
    """
    seed, s = _check(seed, strength)
    c = None if center is None else np.asarray(center, float).reshape(3)
    if c is None and (rigid or scale or crop) and s > 0:
        c = _head_center(volume)  # of the input: the scan parts use it too
    tx, record = augmentation_transform(volume, seed, elastic=elastic, rigid=rigid,
                                        scale=scale, strength=s, center=c)
    out = resample_to_grid(volume, volume, tx, "linear", AIR_HU) if record else volume
    out, srecord = augment_scan(out, seed, blur=blur, crop=crop, strength=s, center=c)
    out, irecord = augment_intensity(out, seed, intensity=intensity, noise=noise, strength=s)
    aug = {"seed": seed, "strength": s,
           "parts": {"elastic": elastic, "rigid": rigid, "scale": scale, "blur": blur,
                     "crop": crop, "intensity": intensity, "noise": noise},
           **record, **srecord, **irecord}
    out.metadata = {**volume.metadata, "augmentation": aug}
    return out
