"""The seed-001 preprocessing protocol, one documented function per step (Qt-free).

Protocol of ``seeds/001`` and the functions that implement it:

1. rigid registration of each CT to a head CT template (Mattes mutual information, 6 degrees
   of freedom, 3-level Gaussian pyramid): :func:`register_rigid`, which returns a
   :class:`RigidRegistration`;
2. resampling to 1 x 1 x 1 mm: :func:`resample_to_grid`;
3. clipping to [-1000, 1000] HU: :func:`clip_hu`;
4. crop or pad to 256^3: :func:`crop_or_pad` (patient space) or :func:`template_grid` +
   :func:`to_template_space` (template space). Steps 1, 2 and 4 are combined so that the CT is
   interpolated **once**, through the registration transform, straight onto the output grid;
5. intensity windows (brain window L40/W40): :data:`WINDOWS`, :func:`apply_window`,
   :func:`window_to_hu`;
6. targets at 128^3 over the same field of view: :func:`resample_to_size`;
7. everything in one call: :func:`preprocess_ct`, and back to the original CT grid:
   :func:`to_patient_space`;
8. the template: :func:`load_template`, :func:`default_template_path`.

Conventions (see :mod:`~XRayToCTLib.geometry`): all points are LPS millimetres. A
registration transform follows ITK's resampling convention: it maps points of the *fixed*
image (the template) to points of the *moving* image (the CT). Resampling the CT onto a
template-space grid uses it as it is; bringing a template-space volume (an sCT) back onto the
CT's grid uses its inverse (CT points -> template points). Input CTs are in Hounsfield units.
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np
import SimpleITK as sitk

from .errors import Cancelled, InputError
from .geometry import Grid, Volume, _triple
from .io import sitk_to_volume, to_jsonable, volume_to_sitk
from .progress import ProgressCallback, report, scaled

__all__ = [
    "AIR_HU", "HEAD_THRESHOLD_HU", "DEFAULT_CLIP", "WINDOWS", "TEMPLATE_ENV", "Grid",
    "RigidRegistration", "PreprocessResult", "register_rigid", "initial_alignment",
    "registration_metric", "resample_to_grid", "clip_hu", "crop_or_pad", "template_grid",
    "to_template_space", "to_patient_space", "apply_window", "window_to_hu", "get_window",
    "resample_to_size", "preprocess_ct", "load_template", "default_template_path",
    "head_mask", "head_center", "cormack_to_hu", "hu_to_cormack",
]

AIR_HU = -1000.0
"""Value of air, and the fill value of every resampling outside the CT."""

HEAD_THRESHOLD_HU = -500.0
"""A voxel above this (HU) belongs to the head (or to anything else that is not air)."""

DEFAULT_CLIP = (-1000.0, 1000.0)
"""The seed's intensity clip, HU."""

TEMPLATE_ENV = "XRAYTOCT_TEMPLATE"
"""Environment variable naming the head CT template file (see :func:`default_template_path`)."""

WINDOWS: dict[str, tuple[float, float]] = {
    # the seed's "brain parenchyma" window: level 40 HU, width 40 HU -> [20, 60] HU
    "brain": (40.0, 40.0),
    # the seed's clip range as a window: [-1000, 1000] HU
    "full": (0.0, 2000.0),
    # the common radiology bone window (W 1800 / L 400) -> [-500, 1300] HU. After the seed's
    # clip at 1000 HU the top of this window is not reached (1000 HU maps to 0.833).
    "bone": (400.0, 1800.0),
    # the common soft-tissue window (W 400 / L 40) -> [-160, 240] HU
    "soft_tissue": (40.0, 400.0),
}
"""Named intensity windows as ``(level, width)`` in HU; a window maps
``[level - width/2, level + width/2]`` linearly onto [0, 1]."""

TransformLike = Union["RigidRegistration", "PreprocessResult", sitk.Transform, dict, None]
GridLike = Union[Grid, sitk.Image, dict]

_INTERPOLATORS = {"linear": sitk.sitkLinear, "nearest": sitk.sitkNearestNeighbor,
                  "bspline": sitk.sitkBSpline}


# ----------------------------------------------------------------------------------------
# grids
# ----------------------------------------------------------------------------------------
# ----------------------------------------------------------------------------------------
# small SimpleITK helpers
# ----------------------------------------------------------------------------------------
def _grid(obj: GridLike) -> Grid:
    """The grid of a Grid / Volume, a SimpleITK image or a ``geometry_dict()``."""
    if isinstance(obj, sitk.Image):
        return Grid(obj.GetSize(), obj.GetSpacing(), obj.GetOrigin(),
                    np.asarray(obj.GetDirection(), dtype=float).reshape(3, 3))
    return Grid.of(obj)


def _float_image(volume: Volume) -> sitk.Image:
    """float32 SimpleITK image of a Volume (same geometry)."""
    arr = np.asarray(volume.array)
    if arr.dtype != np.float32:
        arr = arr.astype(np.float32)
    return volume_to_sitk(Volume(arr, volume.spacing, volume.origin, volume.direction))


def _antialias_sigma(factor: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Gaussian sigma (mm) before downsampling by ``factor`` (per axis, >1 means coarser):
    the variance of a ``factor``-voxel box filter, ``sqrt((f^2 - 1) / 12)`` input voxels, so
    that smoothing + linear resampling blurs like block averaging; 0 where ``f <= 1``."""
    f = np.maximum(np.asarray(factor, float), 1.0)
    return np.sqrt((f * f - 1.0) / 12.0) * np.asarray(spacing, float)


def _smooth(image: sitk.Image, sigma_mm: Sequence[float]) -> sitk.Image:
    sig = np.asarray(sigma_mm, float)
    if not np.any(sig > 1e-6):
        return image
    return sitk.DiscreteGaussian(image, [float(s * s) for s in sig], 64, 0.01, True)


def _coarsen(image: sitk.Image, spacing: float, default: float) -> sitk.Image:
    """Resample ``image`` in its own frame so that no axis is finer than ``spacing`` mm
    (anti-aliased; coarser axes are kept). The new grid has the same centre."""
    old = np.asarray(image.GetSpacing(), float)
    new = np.maximum(old, float(spacing))
    if np.allclose(new, old, rtol=1e-6):
        return image
    size = np.asarray(image.GetSize(), float)
    extent = (size - 1.0) * old
    new_size = np.floor(extent / new + 1e-6).astype(int) + 1
    d = np.asarray(image.GetDirection(), float).reshape(3, 3)
    shift = (extent - (new_size - 1) * new) / 2.0
    origin = np.asarray(image.GetOrigin(), float) + d @ shift
    smoothed = _smooth(image, _antialias_sigma(new / old, old))
    return sitk.Resample(smoothed, [int(n) for n in new_size], sitk.Transform(), sitk.sitkLinear,
                         tuple(origin), tuple(new), image.GetDirection(), float(default),
                         sitk.sitkFloat32)


def _image_min(image: sitk.Image) -> float:
    return float(np.min(sitk.GetArrayViewFromImage(image)))


def _otsu(image: sitk.Image) -> float:
    f = sitk.OtsuThresholdImageFilter()
    f.SetNumberOfHistogramBins(128)
    f.Execute(image)
    return float(f.GetThreshold())


def _mask_image(image: sitk.Image, threshold: float | None, opening: int = 1) -> sitk.Image:
    """Largest connected component of ``image > threshold`` after a small opening (which
    detaches thin things touching the head: table, blankets, tubes)."""
    thr = _otsu(image) if threshold is None else float(threshold)
    mask = sitk.BinaryThreshold(image, thr, 1e30, 1, 0)
    if opening > 0:
        opened = sitk.BinaryMorphologicalOpening(mask, [opening] * 3)
        if np.any(sitk.GetArrayViewFromImage(opened)):
            mask = opened
    cc = sitk.RelabelComponent(sitk.ConnectedComponent(mask), sortByObjectSize=True)
    return sitk.Cast(cc == 1, sitk.sitkUInt8)


def _mask_points(mask: sitk.Image) -> np.ndarray:
    """LPS positions of the voxels of a binary mask, ``(N, 3)``."""
    kji = np.argwhere(sitk.GetArrayViewFromImage(mask) > 0)
    if kji.size == 0:
        return np.zeros((0, 3))
    return _grid(mask).physical_points(kji[:, ::-1].astype(float))


def _mask_centroid(mask: sitk.Image) -> np.ndarray:
    kji = np.argwhere(sitk.GetArrayViewFromImage(mask) > 0)
    if kji.size == 0:
        raise InputError(None, "no head found: no voxel is above the head threshold "
                               "(is the CT in Hounsfield units?)")
    return _grid(mask).physical_points(kji[:, ::-1].mean(axis=0)[None])[0]


# ----------------------------------------------------------------------------------------
# head masks and centres
# ----------------------------------------------------------------------------------------
def head_mask(volume: Volume, threshold: float | None = HEAD_THRESHOLD_HU, *,
              spacing: float = 2.0) -> Volume:
    """A binary head mask (uint8 Volume) on a grid no finer than ``spacing`` mm.

    The mask is the largest connected component of ``volume > threshold`` after a
    1-voxel morphological opening. ``threshold=None`` uses Otsu's threshold, which finds the
    air/tissue level of an image in any units (the Cormack-unit template, say).
    """
    img = _float_image(volume)
    return sitk_to_volume(_mask_image(_coarsen(img, spacing, _image_min(img)), threshold),
                          {"kind": "head mask"})


def head_center(volume: Volume, threshold: float | None = HEAD_THRESHOLD_HU, *,
                spacing: float = 2.0) -> np.ndarray:
    """LPS centroid of :func:`head_mask` (the centre used to place output grids)."""
    img = _float_image(volume)
    return _mask_centroid(_mask_image(_coarsen(img, spacing, _image_min(img)), threshold))


# ----------------------------------------------------------------------------------------
# Cormack units (the Rorden template's intensities)
# ----------------------------------------------------------------------------------------
# Rorden et al. 2012: HU below -100 are shifted by +1000, the interesting range [-100, 100] HU
# is stretched tenfold, values above 100 HU are shifted again. Piecewise linear and monotone.
_HU_KNOTS = np.array([-1000.0, -100.0, 100.0, 10000.0])
_CORMACK_KNOTS = np.array([0.0, 900.0, 2900.0, 12800.0])


def hu_to_cormack(values: np.ndarray) -> np.ndarray:
    """Hounsfield units to Cormack units (values below -1000 HU clamp to 0)."""
    return np.interp(np.asarray(values, float), _HU_KNOTS, _CORMACK_KNOTS).astype(np.float32)


def cormack_to_hu(values: np.ndarray) -> np.ndarray:
    """Cormack units back to (approximate) Hounsfield units, the inverse of
    :func:`hu_to_cormack`. Handy to look at the Rorden template in HU; registration does not
    need it (mutual information is blind to monotone intensity maps)."""
    return np.interp(np.asarray(values, float), _CORMACK_KNOTS, _HU_KNOTS).astype(np.float32)


# ----------------------------------------------------------------------------------------
# transforms
# ----------------------------------------------------------------------------------------
def _euler(center: Sequence[float], parameters: Sequence[float]) -> sitk.Euler3DTransform:
    t = sitk.Euler3DTransform()
    t.SetComputeZYX(True)
    t.SetCenter([float(x) for x in center])
    t.SetParameters([float(x) for x in parameters])
    return t


@dataclasses.dataclass
class RigidRegistration:
    """A rigid (6-DOF) registration of a CT to a template.

    The transform maps **template (fixed) LPS points to CT (moving) LPS points**, ITK's
    resampling convention: ``resample_to_grid(ct, template_grid, registration)`` puts the CT in
    template space; its inverse takes template-space volumes back onto the CT
    (:func:`to_patient_space`).

    It is an ITK ``Euler3DTransform`` with ``ComputeZYX`` on:
    ``x -> R (x - center) + center + translation`` with ``R = Rz @ Ry @ Rx``, exactly
    :func:`~XRayToCTLib.geometry.rotation_matrix` of the angles in degrees.

    Args:
        parameters: ``(angle_x, angle_y, angle_z, tx, ty, tz)``, radians and mm.
        center: LPS centre of rotation (ITK's fixed parameters; the template head centre).
        metric_value: Mattes mutual information at the result (ITK sign: negative MI, lower is
            better), evaluated on every voxel of the registration's finest level.
        initial_metric_value: the same at the transform the optimiser started from.
        info: how it was obtained (initialisation search, per-level iterations, settings,
            timing).
    """

    parameters: tuple[float, float, float, float, float, float]
    center: tuple[float, float, float]
    metric_value: float = math.nan
    initial_metric_value: float = math.nan
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        p = np.asarray(self.parameters, dtype=float).reshape(-1)
        if p.size != 6 or not np.all(np.isfinite(p)):
            raise ValueError(f"a rigid transform needs 6 finite parameters, got {self.parameters}")
        self.parameters = tuple(float(x) for x in p)  # type: ignore[assignment]
        self.center = tuple(float(x) for x in np.asarray(self.center, float).reshape(3))  # type: ignore[assignment]

    # -- transforms ----------------------------------------------------------------------
    def sitk_transform(self) -> sitk.Euler3DTransform:
        """A new SimpleITK transform (template points -> CT points)."""
        return _euler(self.center, self.parameters)

    @property
    def transform(self) -> sitk.Euler3DTransform:
        return self.sitk_transform()

    def inverse_sitk_transform(self) -> sitk.Transform:
        """CT points -> template points."""
        return self.sitk_transform().GetInverse()

    @property
    def rotation(self) -> np.ndarray:
        """3x3 rotation matrix R."""
        return np.asarray(self.sitk_transform().GetMatrix(), float).reshape(3, 3)

    @property
    def angles_deg(self) -> tuple[float, float, float]:
        return tuple(math.degrees(a) for a in self.parameters[:3])  # type: ignore[return-value]

    @property
    def translation(self) -> np.ndarray:
        return np.asarray(self.parameters[3:], float)

    @property
    def rotation_angle_deg(self) -> float:
        """The total rotation angle (degrees) of R."""
        c = (np.trace(self.rotation) - 1.0) / 2.0
        return math.degrees(math.acos(min(1.0, max(-1.0, c))))

    def matrix(self) -> np.ndarray:
        """4x4 homogeneous matrix taking template LPS points to CT LPS points."""
        t = self.sitk_transform()
        m = np.eye(4)
        m[:3, :3] = np.asarray(t.GetMatrix(), float).reshape(3, 3)
        c = np.asarray(self.center)
        m[:3, 3] = c + self.translation - m[:3, :3] @ c
        return m

    def transform_points(self, points: np.ndarray) -> np.ndarray:
        """Template LPS points ``(N, 3)`` -> CT LPS points."""
        m = self.matrix()
        return np.asarray(points, float) @ m[:3, :3].T + m[:3, 3]

    def inverse_transform_points(self, points: np.ndarray) -> np.ndarray:
        """CT LPS points ``(N, 3)`` -> template LPS points."""
        m = np.linalg.inv(self.matrix())
        return np.asarray(points, float) @ m[:3, :3].T + m[:3, 3]

    # -- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly description; :meth:`from_dict` rebuilds the exact transform."""
        return {"type": "Euler3DTransform", "compute_zyx": True,
                "convention": "maps template (fixed) LPS points to CT (moving) LPS points "
                              "(ITK resampling convention): x -> R (x - center) + center + "
                              "translation, R = Rz Ry Rx; its inverse maps CT points to "
                              "template points",
                "parameters": list(self.parameters), "fixed_parameters": list(self.center),
                "center": list(self.center), "angles_deg": list(self.angles_deg),
                "translation_mm": self.translation.tolist(), "matrix": self.matrix().tolist(),
                "metric": "mattes_mutual_information",
                "metric_value": _json_float(self.metric_value),
                "initial_metric_value": _json_float(self.initial_metric_value),
                "info": to_jsonable(self.info)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RigidRegistration":
        if d.get("type", "Euler3DTransform") != "Euler3DTransform" or not d.get("compute_zyx", True):
            raise ValueError("only Euler3DTransform with ComputeZYX on is supported")
        center = d.get("fixed_parameters", d.get("center"))
        nan = math.nan
        return cls(tuple(d["parameters"]), tuple(center[:3]),
                   nan if d.get("metric_value") is None else float(d["metric_value"]),
                   nan if d.get("initial_metric_value") is None else float(d["initial_metric_value"]),
                   dict(d.get("info", {})))

    @classmethod
    def from_sitk(cls, transform: sitk.Transform, **kw: Any) -> "RigidRegistration":
        """From any SimpleITK rigid transform (Euler3D, VersorRigid3D, Similarity with scale
        1, a 3x3 orthonormal Affine): re-expressed as an Euler3D about the same centre."""
        t = _unwrap(transform)
        m = np.asarray(t.GetMatrix(), float).reshape(3, 3) if hasattr(t, "GetMatrix") else None
        if m is None or not np.allclose(m.T @ m, np.eye(3), atol=1e-5):
            raise ValueError(f"{t.GetName()} is not a rigid transform")
        center = np.asarray(t.GetCenter(), float) if hasattr(t, "GetCenter") else np.zeros(3)
        e = sitk.Euler3DTransform()
        e.SetComputeZYX(True)
        e.SetCenter(tuple(center))
        e.SetMatrix(tuple(m.reshape(-1)))
        e.SetTranslation(tuple(float(x) for x in t.GetTranslation()))
        return cls(tuple(e.GetParameters()), tuple(center), **kw)


def _unwrap(t: sitk.Transform) -> sitk.Transform:
    """The single transform inside a (composite) SimpleITK transform, downcast."""
    if t.GetName() == "CompositeTransform":
        ct = sitk.CompositeTransform(t)
        if ct.GetNumberOfTransforms() != 1:
            raise ValueError("expected a single rigid transform, got a composite of "
                             f"{ct.GetNumberOfTransforms()}")
        t = ct.GetNthTransform(0)
    return t.Downcast() if hasattr(t, "Downcast") else t


def _json_float(x: float) -> float | None:
    return None if x is None or not math.isfinite(float(x)) else float(x)


def _as_registration(obj: TransformLike) -> RigidRegistration:
    """A RigidRegistration from a RigidRegistration, its dict or a SimpleITK rigid transform."""
    if isinstance(obj, RigidRegistration):
        return obj
    if isinstance(obj, PreprocessResult) and obj.registration is not None:
        return obj.registration
    if isinstance(obj, dict):
        return RigidRegistration.from_dict(obj)
    if isinstance(obj, sitk.Transform):
        return RigidRegistration.from_sitk(obj)
    raise TypeError(f"cannot use a {type(obj).__name__} as a rigid registration")


def _as_transform(obj: TransformLike) -> sitk.Transform:
    """A SimpleITK transform (template -> CT points) from the many ways to hold one."""
    if obj is None:
        return sitk.Transform(3, sitk.sitkIdentity)
    if isinstance(obj, PreprocessResult):
        return _as_transform(obj.registration)
    if isinstance(obj, RigidRegistration):
        return obj.sitk_transform()
    if isinstance(obj, dict):
        return RigidRegistration.from_dict(obj).sitk_transform()
    if isinstance(obj, sitk.Transform):
        return obj
    raise TypeError(f"cannot use a {type(obj).__name__} as a transform")


# ----------------------------------------------------------------------------------------
# 1. rigid registration
# ----------------------------------------------------------------------------------------
def _metric_method(bins: int) -> sitk.ImageRegistrationMethod:
    r = sitk.ImageRegistrationMethod()
    r.SetMetricAsMattesMutualInformation(int(bins))
    r.SetMetricSamplingStrategy(r.NONE)
    r.SetInterpolator(sitk.sitkLinear)
    r.MetricUseFixedImageGradientFilterOff()  # metric values only: no gradient images
    r.MetricUseMovingImageGradientFilterOff()
    return r


def _evaluate(method: sitk.ImageRegistrationMethod, fixed: sitk.Image, moving: sitk.Image,
              transform: sitk.Transform) -> float:
    method.SetInitialTransform(transform, inPlace=False)
    try:
        return float(method.MetricEvaluate(fixed, moving))
    except RuntimeError:  # too few samples inside the moving image
        return math.inf


def registration_metric(template: Volume, moving: Volume, transform: TransformLike, *,
                        bins: int = 50, spacing: float = 2.0) -> float:
    """Mattes mutual information of ``moving`` seen through ``transform`` from ``template``
    (ITK sign: negative MI, lower is better), on every voxel of both images brought to no finer
    than ``spacing`` mm: deterministic, for comparing transforms. ``inf`` when (almost) no
    template voxel maps inside the moving image."""
    f = _float_image(template)
    m = _float_image(moving)
    f = _coarsen(f, spacing, _image_min(f))
    m = _coarsen(m, spacing, _image_min(m))
    return _evaluate(_metric_method(bins), f, m, _as_transform(transform))


def _overlap(points: np.ndarray, transform: sitk.Euler3DTransform, grid: Grid) -> float:
    """Fraction of template points that ``transform`` maps inside ``grid``."""
    if len(points) == 0:
        return 0.0
    m = np.asarray(transform.GetMatrix(), float).reshape(3, 3)
    c = np.asarray(transform.GetCenter(), float)
    p = (points - c) @ m.T + c + np.asarray(transform.GetTranslation(), float)
    idx = grid.continuous_index(p)
    hi = np.asarray(grid.size, float) - 1.0
    return float(np.mean(np.all((idx >= -0.5) & (idx <= hi + 0.5), axis=1)))


def initial_alignment(template: Volume | sitk.Image, moving: Volume | sitk.Image, *,
                      template_threshold: float | None = None,
                      moving_threshold: float | None = HEAD_THRESHOLD_HU,
                      spacing: float = 6.0, bins: int = 32,
                      shifts_mm: Sequence[float] = (-60, -45, -30, -15, 0, 15, 30, 45, 60),
                      ap_shifts_mm: Sequence[float] = (-20, 0, 20),
                      pitch_deg: Sequence[float] = (-30, -20, -10, 0, 10, 20, 30),
                      roll_deg: Sequence[float] = (-10, 0, 10),
                      yaw_deg: Sequence[float] = (-10, 0, 10),
                      min_overlap: float = 0.25) -> tuple[sitk.Euler3DTransform, dict]:
    """A robust starting transform (template -> moving) for :func:`register_rigid`.

    Works between any intensity units (HU CT, Cormack-unit template): each image is
    thresholded at its own head level (``moving_threshold``, default -500 HU; the template
    at Otsu's threshold), and the rest uses mutual information.

    1. both images are brought to ``spacing`` mm (anti-aliased) and their head masks'
       centroids computed; the transform rotates about the template head centroid and starts
       by mapping it onto the CT head centroid;
    2. translation search along the cranio-caudal axis (``shifts_mm``, for CTs that include
       the neck or only part of the head) and the antero-posterior axis (``ap_shifts_mm``);
    3. rotation search at the best translation: pitch (about the left-right axis, the usual
       head tilt and gantry tilt) x roll x yaw;
    4. a final local translation search (+-1 coarse voxel on each axis).

    Every candidate is scored with Mattes MI (``bins``) over the template's (dilated) head
    region; candidates where less than ``min_overlap`` of the template head falls inside the
    CT's field of view are rejected (mutual information favours tiny overlaps). The search
    assumes that the CT's LPS axes roughly agree with the template's, as DICOM patient
    coordinates do; heads rotated more than ~35 degrees from the template are out of reach.

    Returns the transform and a dict describing the search.
    """
    f_img = template if isinstance(template, sitk.Image) else _float_image(template)
    m_img = moving if isinstance(moving, sitk.Image) else _float_image(moving)
    f_img = sitk.Cast(f_img, sitk.sitkFloat32)
    m_img = sitk.Cast(m_img, sitk.sitkFloat32)
    f_c = _coarsen(f_img, spacing, _image_min(f_img))
    m_c = _coarsen(m_img, spacing, _image_min(m_img))
    f_mask = _mask_image(f_c, template_threshold)
    m_mask = _mask_image(m_c, moving_threshold)
    c_f = _mask_centroid(f_mask)
    c_m = _mask_centroid(m_mask)
    f_points = _mask_points(f_mask)
    m_grid = _grid(m_img)

    method = _metric_method(bins)
    region = sitk.BinaryDilate(f_mask, [2] * 3)
    method.SetMetricFixedMask(region)

    evaluations = 0

    def score(params: Sequence[float]) -> float:
        nonlocal evaluations
        t = _euler(c_f, params)
        if _overlap(f_points, t, m_grid) < min_overlap:
            return math.inf
        evaluations += 1
        return _evaluate(method, f_c, m_c, t)

    t0 = c_m - c_f
    centroid_params = [0.0, 0.0, 0.0, *t0]
    centroid_score = score(centroid_params)

    best, best_score = list(centroid_params), centroid_score
    # 2. translations along z (S-I) and y (A-P)
    for dz in shifts_mm:
        for dy in ap_shifts_mm:
            p = [0.0, 0.0, 0.0, t0[0], t0[1] + dy, t0[2] + dz]
            s = score(p)
            if s < best_score:
                best, best_score = p, s
    # 3. rotations about the template head centre
    trans = list(best[3:])
    for ax in pitch_deg:
        for ay in roll_deg:
            for az in yaw_deg:
                p = [math.radians(ax), math.radians(ay), math.radians(az), *trans]
                s = score(p)
                if s < best_score:
                    best, best_score = p, s
    # 4. local translation refinement
    angles, trans = list(best[:3]), np.asarray(best[3:])
    for dx in (-spacing, 0.0, spacing):
        for dy in (-spacing, 0.0, spacing):
            for dz in (-spacing, 0.0, spacing):
                p = [*angles, *(trans + (dx, dy, dz))]
                s = score(p)
                if s < best_score:
                    best, best_score = p, s
    if not math.isfinite(best_score):
        raise InputError(None, "registration failed: the CT and the template do not overlap "
                               "at any starting position (is the CT a head CT in HU?)")
    info = {"method": "head-mask centroids + grid search on Mattes MI",
            "template_head_center": c_f.tolist(), "moving_head_center": c_m.tolist(),
            "centroid_parameters": [float(x) for x in centroid_params],
            "centroid_metric": centroid_score, "parameters": [float(x) for x in best],
            "metric": best_score, "evaluations": evaluations, "spacing": spacing}
    return _euler(c_f, best), info


def register_rigid(moving: Volume, template: Volume, *,
                   levels: Sequence[int] = (4, 2, 1),
                   smoothing: Sequence[float] = (2.0, 1.0, 0.0),
                   bins: int = 50,
                   sampling: float | Sequence[float] = (0.5, 0.25, 0.2),
                   iterations: int = 300,
                   learning_rate: float = 2.0,
                   min_step: float = 0.01,
                   relaxation: float = 0.8,
                   registration_spacing: float = 2.0,
                   moving_threshold: float | None = HEAD_THRESHOLD_HU,
                   template_threshold: float | None = None,
                   initial: TransformLike = None,
                   search: bool = True,
                   seed: int | None = 0,
                   threads: int | None = None,
                   progress: ProgressCallback | None = None) -> RigidRegistration:
    """Rigidly register a CT (``moving``, HU) to a head CT template (``template``, any units).

    The seed-001 method: Mattes mutual information (``bins`` histogram bins), a 6-DOF
    ``Euler3DTransform`` about the template head centroid, a 3-level Gaussian pyramid
    (``levels`` shrink factors, ``smoothing`` sigmas in voxels of the registration grid), a
    regular-step gradient descent with parameter scales from physical shifts (``learning_rate``
    and ``min_step`` are in mm of the largest voxel displacement; the step shrinks by
    ``relaxation`` each time the gradient turns back; at most ``iterations`` per level).

    Both images are first brought (anti-aliased, in their own frames) to no finer than
    ``registration_spacing`` mm (the Rorden template's 2 mm): a 0.5 mm clinical CT does not
    make the registration slower, and the pyramid runs at 8, 4 and 2 mm.

    ``sampling`` is the fraction of template voxels used per iteration, one value per level
    or one for all. Samples lie on a regular grid with a random jitter (ITK's REGULAR
    strategy: on the partial-field-of-view CTHead series it gave results 3x less spread over
    seeds than RANDOM). With a fixed ``seed`` results are repeatable; ``seed=None`` draws new
    jitter on every run. ``threads`` limits ITK's threads (``None``: ITK's default).

    The starting transform is ``initial`` if given, else :func:`initial_alignment` (or the
    head-centroid alignment alone when ``search`` is False).

    Returns a :class:`RigidRegistration` (template points -> CT points). Raises
    :class:`~XRayToCTLib.errors.Cancelled` when ``progress`` says stop.
    """
    start = time.perf_counter()
    levels = [int(x) for x in levels]
    smoothing = [float(x) for x in smoothing]
    if len(smoothing) != len(levels) or not levels or min(levels) < 1:
        raise ValueError("levels and smoothing need the same (non-zero) number of entries")
    samp = [float(sampling)] * len(levels) if np.ndim(sampling) == 0 else [float(s) for s in sampling]
    if len(samp) != len(levels) or not all(0 < s <= 1 for s in samp):
        raise ValueError("sampling must be in (0, 1], one value or one per level")
    report(progress, 0.0, "registration: preparing images")

    fixed = _float_image(template)
    mov = _float_image(moving)
    fixed = _coarsen(fixed, registration_spacing, _image_min(fixed))
    mov = _coarsen(mov, registration_spacing, _image_min(mov))

    # -- start ---------------------------------------------------------------------------
    init_info: dict[str, Any]
    if initial is not None:
        init_t = _as_registration(initial).sitk_transform()
        init_info = {"method": "given"}
    elif search:
        report(progress, 0.02, "registration: initial alignment search")
        init_t, init_info = initial_alignment(fixed, mov, template_threshold=template_threshold,
                                              moving_threshold=moving_threshold)
    else:
        c_f = _mask_centroid(_mask_image(_coarsen(fixed, 6.0, _image_min(fixed)), template_threshold))
        c_m = _mask_centroid(_mask_image(_coarsen(mov, 6.0, _image_min(mov)), moving_threshold))
        init_t = _euler(c_f, [0, 0, 0, *(c_m - c_f)])
        init_info = {"method": "head-mask centroids"}
    report(progress, 0.1, "registration: optimising")

    # -- optimisation --------------------------------------------------------------------
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(int(bins))
    reg.SetMetricSamplingStrategy(reg.REGULAR)
    # SimpleITK reads seed 0 as "seed from the wall clock": shift by one; None is that clock
    reg.SetMetricSamplingPercentagePerLevel(samp, sitk.sitkWallClock if seed is None else int(seed) + 1)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=float(learning_rate),
                                                 minStep=float(min_step),
                                                 numberOfIterations=int(iterations),
                                                 relaxationFactor=float(relaxation),
                                                 gradientMagnitudeTolerance=1e-8)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel(levels)
    reg.SetSmoothingSigmasPerLevel([s * registration_spacing for s in smoothing])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    if threads is not None:
        reg.SetNumberOfThreads(int(threads))
    transform = sitk.Euler3DTransform(init_t)
    reg.SetInitialTransform(transform, inPlace=True)

    state: dict[str, Any] = {"cancelled": False, "levels": []}
    sub = scaled(progress, 0.1, 0.95)

    def on_iteration() -> None:
        level = reg.GetCurrentLevel()
        it = reg.GetOptimizerIteration()
        while len(state["levels"]) <= level:
            state["levels"].append({"iterations": 0, "metric": None})
        state["levels"][level] = {"iterations": it + 1, "metric": reg.GetMetricValue()}
        if state["cancelled"]:
            reg.StopRegistration()
            return
        try:
            report(sub, (level + min(1.0, (it + 1) / iterations)) / len(levels),
                   f"registration: level {level + 1}/{len(levels)}, iteration {it + 1}")
        except Cancelled:
            state["cancelled"] = True
            reg.StopRegistration()

    reg.AddCommand(sitk.sitkIterationEvent, on_iteration)
    reg.Execute(fixed, mov)
    if state["cancelled"]:
        raise Cancelled("registration cancelled")
    stop = reg.GetOptimizerStopConditionDescription()

    # -- deterministic metric before / after ---------------------------------------------
    report(progress, 0.96, "registration: evaluating")
    method = _metric_method(bins)
    final_params = tuple(transform.GetParameters())
    center = tuple(transform.GetCenter())
    result = RigidRegistration(final_params, center,
                               _evaluate(method, fixed, mov, _euler(center, final_params)),
                               _evaluate(method, fixed, mov, init_t))
    result.info = {"init": init_info, "levels": state["levels"], "stop_condition": stop,
                   "elapsed_s": time.perf_counter() - start,
                   "settings": {"levels": levels, "smoothing_voxels": smoothing, "bins": bins,
                                "sampling": samp, "iterations": iterations,
                                "learning_rate": learning_rate, "min_step": min_step,
                                "relaxation": relaxation,
                                "registration_spacing": registration_spacing, "seed": seed,
                                "optimizer": "RegularStepGradientDescent",
                                "metric": "MattesMutualInformation"}}
    report(progress, 1.0, "registration: done")
    return result


# ----------------------------------------------------------------------------------------
# 2. resampling
# ----------------------------------------------------------------------------------------
def resample_to_grid(volume: Volume, reference_grid: GridLike, transform: TransformLike = None,
                     interpolator: str = "linear", default: float = AIR_HU) -> Volume:
    """Resample ``volume`` onto ``reference_grid`` through physical (LPS) space.

    ``transform`` maps points of the output grid to points of ``volume`` (ITK's convention:
    for a CT and a template-space grid, the registration as it is); ``None`` is the identity.
    ``interpolator`` is ``"linear"`` (float32 output), ``"bspline"`` (float32) or
    ``"nearest"`` (keeps the dtype; for labels). Outside ``volume`` the value is ``default``.
    """
    if interpolator not in _INTERPOLATORS:
        raise ValueError(f"unknown interpolator {interpolator!r}; choose one of {sorted(_INTERPOLATORS)}")
    g = _grid(reference_grid)
    if interpolator == "nearest":
        arr = volume.array if volume.array.dtype != bool else volume.array.astype(np.uint8)
        img = volume_to_sitk(Volume(arr, volume.spacing, volume.origin, volume.direction))
        pixel = img.GetPixelID()
    else:
        img = _float_image(volume)
        pixel = sitk.sitkFloat32
    out = sitk.Resample(img, list(g.size), _as_transform(transform), _INTERPOLATORS[interpolator],
                        tuple(g.origin), tuple(g.spacing),
                        tuple(float(x) for x in g.direction.reshape(-1)), float(default), pixel)
    return sitk_to_volume(out, dict(volume.metadata))


# ----------------------------------------------------------------------------------------
# 3. clipping
# ----------------------------------------------------------------------------------------
def clip_hu(volume: Volume | np.ndarray, lo: float = DEFAULT_CLIP[0],
            hi: float = DEFAULT_CLIP[1]) -> Volume | np.ndarray:
    """Values clipped to ``[lo, hi]`` HU (a Volume gives a Volume, an array an array; the
    dtype is kept)."""
    if lo > hi:
        raise ValueError(f"clip range must have lo <= hi, got ({lo}, {hi})")
    if isinstance(volume, Volume):
        return volume.with_array(np.clip(volume.array, lo, hi).astype(volume.array.dtype, copy=False),
                                 clip_hu=[float(lo), float(hi)])
    arr = np.asarray(volume)
    return np.clip(arr, lo, hi).astype(arr.dtype, copy=False)


# ----------------------------------------------------------------------------------------
# 4. crop or pad, template grid
# ----------------------------------------------------------------------------------------
def crop_or_pad(volume: Volume, size: int | Sequence[int] = 256,
                spacing: float | Sequence[float] = 1.0, center: Sequence[float] | None = None, *,
                threshold: float | None = HEAD_THRESHOLD_HU, interpolator: str = "linear",
                default: float = AIR_HU, snap: bool = True) -> Volume:
    """The volume on a ``size`` voxel grid of ``spacing`` mm, identity direction (LPS axes),
    centred on ``center`` (default: :func:`head_center`, the centroid of the head mask at
    ``threshold`` HU). Outside the input it is ``default`` (air).

    This is protocol steps 2 + 4 in patient space (no registration). Oblique or non-LPS
    inputs are resampled through physical space. With ``snap`` and an input that already has
    identity direction and the requested spacing, the grid is shifted by less than half a
    voxel onto the input's lattice so that cropping and padding copy voxels without
    interpolation.
    """
    c = head_center(volume, threshold) if center is None else np.asarray(_triple(center, "center"), float)
    grid = Grid.centered(c, size, spacing)
    if snap and np.allclose(volume.direction, np.eye(3), atol=1e-6) \
            and np.allclose(volume.spacing, grid.spacing, rtol=1e-6):
        sp = np.asarray(grid.spacing)
        offset = (np.asarray(grid.origin) - np.asarray(volume.origin)) / sp
        origin = np.asarray(volume.origin) + np.round(offset) * sp
        grid = Grid(grid.size, grid.spacing, tuple(origin), np.eye(3))
    out = resample_to_grid(volume, grid, None, interpolator, default)
    out.metadata.update({"space": "patient", "head_center": [float(x) for x in c]})
    return out


def template_grid(template: Volume, size: int | Sequence[int] = 256,
                  spacing: float | Sequence[float] = 1.0, center: Sequence[float] | None = None, *,
                  threshold: float | None = None) -> Grid:
    """The output grid in template space: ``size`` voxels of ``spacing`` mm, identity
    direction, centred on the template's head centroid (Otsu head mask; ``center`` overrides).

    With the Rorden template (MNI space, cut just below the skull base) the head centroid is
    about LPS (0, 20, 0) mm, near the centre of the brain case: the 256 mm box spans
    z = -128..+128 mm, some 40 mm of air above the vertex and the face and upper neck below.
    """
    c = head_center(template, threshold) if center is None else np.asarray(_triple(center, "center"), float)
    return Grid.centered(c, size, spacing)


def to_template_space(ct: Volume, grid: GridLike, transform: TransformLike, *,
                      clip: tuple[float, float] | None = DEFAULT_CLIP,
                      interpolator: str = "linear", default: float = AIR_HU) -> Volume:
    """Steps 1 + 2 + 3 + 4 in one interpolation: the CT resampled through the registration
    ``transform`` (template points -> CT points) onto the template-space ``grid``, then
    clipped to ``clip`` HU (``None``: no clip)."""
    out = resample_to_grid(ct, grid, transform, interpolator, default)
    if clip is not None:
        out = clip_hu(out, *clip)
    out.metadata.update({"space": "template", "units": "HU"})
    return out


def to_patient_space(sct: Volume, result_or_transform: TransformLike = None,
                     ct_grid: GridLike | None = None, *, interpolator: str = "linear",
                     default: float = AIR_HU) -> Volume:
    """Put a template-space volume (a 128^3 or 256^3 sCT, say) back onto the original CT grid.

    ``result_or_transform`` is a :class:`PreprocessResult`, a :class:`RigidRegistration`, its
    ``to_dict()``, a SimpleITK transform (template -> CT points) or ``None`` (identity: the
    volume was preprocessed without registration). The volume is resampled through the
    **inverse** transform (each CT grid point is mapped to template space and looked up
    there). ``ct_grid`` is the CT (Volume), its Grid or ``geometry_dict()``; with a
    PreprocessResult it defaults to the grid of the CT that was preprocessed.

    Values are resampled as they are: convert windowed values back to HU first
    (:func:`window_to_hu`). Outside the volume the value is ``default`` (air).
    """
    if ct_grid is None:
        if not isinstance(result_or_transform, PreprocessResult):
            raise ValueError("ct_grid is needed unless a PreprocessResult is given")
        ct_grid = result_or_transform.source_grid
    tx = _as_transform(result_or_transform)
    out = resample_to_grid(sct, ct_grid, tx.GetInverse(), interpolator, default)
    out.metadata.update({"space": "patient"})
    return out


# ----------------------------------------------------------------------------------------
# 5. windows
# ----------------------------------------------------------------------------------------
def get_window(window: str | Sequence[float]) -> tuple[float, float]:
    """``(level, width)`` of a named window (see :data:`WINDOWS`) or of a pair."""
    if isinstance(window, str):
        if window not in WINDOWS:
            raise ValueError(f"unknown window {window!r}; choose one of {sorted(WINDOWS)} "
                             "or give (level, width)")
        return WINDOWS[window]
    lw = np.asarray(window, dtype=float).reshape(-1)
    if lw.size != 2 or not np.all(np.isfinite(lw)) or lw[1] <= 0:
        raise ValueError(f"a window is (level, width) with width > 0, got {window!r}")
    return float(lw[0]), float(lw[1])


def apply_window(volume_or_array: Volume | np.ndarray,
                 window: str | Sequence[float] = "brain") -> Volume | np.ndarray:
    """Map HU linearly onto [0, 1]: ``level - width/2 -> 0``, ``level + width/2 -> 1``, values
    outside clipped (L40/W40: 20 HU -> 0, 40 -> 0.5, 60 -> 1). float32; a Volume keeps its
    geometry and records the window in its metadata."""
    level, width = get_window(window)
    lo = level - width / 2.0
    arr = volume_or_array.array if isinstance(volume_or_array, Volume) else np.asarray(volume_or_array)
    out = np.clip((arr.astype(np.float64) - lo) / width, 0.0, 1.0).astype(np.float32)
    if isinstance(volume_or_array, Volume):
        return volume_or_array.with_array(out, window=[level, width], units="window [0, 1]")
    return out


def window_to_hu(volume_or_array: Volume | np.ndarray,
                 window: str | Sequence[float] = "brain") -> Volume | np.ndarray:
    """The inverse of :func:`apply_window` (exact inside the window; 0 and 1 give its ends)."""
    level, width = get_window(window)
    arr = volume_or_array.array if isinstance(volume_or_array, Volume) else np.asarray(volume_or_array)
    out = (arr.astype(np.float64) * width + (level - width / 2.0)).astype(np.float32)
    if isinstance(volume_or_array, Volume):
        v = volume_or_array.with_array(out, units="HU")
        v.metadata.pop("window", None)
        return v
    return out


# ----------------------------------------------------------------------------------------
# 6. targets at 128^3
# ----------------------------------------------------------------------------------------
def resample_to_size(volume: Volume, size: int | Sequence[int] = 128, *,
                     method: str = "auto", default: float | None = None) -> Volume:
    """The volume on ``size`` voxels covering the same field of view (same outer corners and
    centre, same direction; spacing scaled by ``old_size / size``: 256 at 1 mm -> 128 at 2 mm).

    Anti-aliasing: ``method="block"`` averages ``f x f x f`` blocks (integer factors only: the
    mean is preserved exactly, and this is what ``"auto"`` picks when every factor is an
    integer); ``"gaussian"`` smooths with a Gaussian of the same variance as the ``f``-voxel
    block (sigma = sqrt((f^2 - 1) / 12) input voxels) and resamples linearly (any factor;
    upsampling is linear without smoothing). float32 output.
    """
    n_old = np.asarray(volume.size, float)
    n_new = np.asarray(_triple(size, "size"), float)
    if np.any(n_new < 1) or np.any(n_new != np.round(n_new)):
        raise ValueError(f"size must be positive integers, got {size!r}")
    factor = n_old / n_new
    sp_old = np.asarray(volume.spacing)
    sp_new = sp_old * factor
    d = volume.direction
    origin = np.asarray(volume.origin) + d @ (sp_old * (factor - 1.0) / 2.0)
    integer = bool(np.all(np.abs(factor - np.round(factor)) < 1e-9) and np.all(factor >= 1))
    if method == "auto":
        method = "block" if integer else "gaussian"
    if method == "block":
        if not integer:
            raise ValueError(f"block averaging needs integer factors, got {factor.tolist()}")
        fi, fj, fk = (int(round(f)) for f in factor)
        ni, nj, nk = (int(n) for n in n_new)
        a = volume.array.astype(np.float32, copy=False).reshape(nk, fk, nj, fj, ni, fi)
        arr = a.mean(axis=(1, 3, 5), dtype=np.float64).astype(np.float32)
        out = Volume(arr, tuple(sp_new), tuple(origin), d.copy(), dict(volume.metadata))
    elif method == "gaussian":
        img = _smooth(_float_image(volume), _antialias_sigma(factor, sp_old))
        fill = float(np.min(volume.array)) if default is None else float(default)
        out = sitk_to_volume(sitk.Resample(img, [int(n) for n in n_new], sitk.Transform(),
                                           sitk.sitkLinear, tuple(origin), tuple(sp_new),
                                           tuple(d.reshape(-1)), fill, sitk.sitkFloat32),
                             dict(volume.metadata))
    else:
        raise ValueError(f"unknown method {method!r}; choose 'auto', 'block' or 'gaussian'")
    out.metadata["resampled_from"] = {"size": list(volume.size), "spacing": list(volume.spacing),
                                      "method": method}
    return out


# ----------------------------------------------------------------------------------------
# 8. the template
# ----------------------------------------------------------------------------------------
def _repo_root() -> Path | None:
    """The folder holding pyproject.toml above this file (None in an installed package)."""
    for parent in Path(__file__).resolve().parents:
        if (parent / "pyproject.toml").is_file():
            return parent
    return None


def default_template_path() -> Path | None:
    """Where the head CT template is, in this order: the ``XRAYTOCT_TEMPLATE`` environment
    variable if set (returned even when the file is missing, so that the error names it);
    ``<repo>/../shared/data/templates/rorden_scct/scct.nii`` if it exists (``<repo>`` is the
    folder holding pyproject.toml); else None."""
    env = os.environ.get(TEMPLATE_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    root = _repo_root()
    if root is not None:
        p = root.parent / "shared" / "data" / "templates" / "rorden_scct" / "scct.nii"
        if p.is_file():
            return p
    return None


def load_template(path: str | os.PathLike) -> Volume:
    """Read a head CT template (any 3D format SimpleITK reads, or a DICOM series folder) as a
    float32 Volume in LPS. Units are whatever the file holds (the Rorden template is in
    Cormack units: fine for mutual information)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise InputError(p, "template file not found")
    try:
        if p.is_dir():
            reader = sitk.ImageSeriesReader()
            files = reader.GetGDCMSeriesFileNames(str(p))
            if not files:
                raise InputError(p, "no DICOM series in this folder")
            reader.SetFileNames(files)
            img = reader.Execute()
        else:
            img = sitk.ReadImage(str(p))
    except RuntimeError as exc:
        raise InputError(p, f"cannot read the template: {str(exc).strip().splitlines()[-1]}") from None
    if img.GetDimension() != 3 or img.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(p, f"a template must be a 3D scalar image, got {img.GetDimension()}D "
                            f"with {img.GetNumberOfComponentsPerPixel()} components")
    vol = sitk_to_volume(sitk.Cast(img, sitk.sitkFloat32), {"source": str(p), "kind": "template"})
    if not np.any(np.isfinite(vol.array)) or float(np.nanmax(vol.array)) <= float(np.nanmin(vol.array)):
        raise InputError(p, "the template is empty (constant intensity)")
    return vol


def _resolve_template(template: Volume | str | os.PathLike | None, needed: bool) -> Volume | None:
    if isinstance(template, Volume):
        return template
    if template is None:
        template = default_template_path()
        if template is None:
            if needed:
                raise InputError(None, "registration to a head CT template was requested but no "
                                       "template is available: pass --template FILE or "
                                       f"--no-register (or set {TEMPLATE_ENV})")
            return None
    return load_template(template)


# ----------------------------------------------------------------------------------------
# 7. the whole protocol
# ----------------------------------------------------------------------------------------
@dataclasses.dataclass
class PreprocessResult:
    """What :func:`preprocess_ct` returns.

    Attributes:
        volume: the clipped HU volume on ``grid`` (256^3 at 1 mm by default).
        target: ``volume`` resampled to the target size (128^3), in HU or, when a window was
            asked for, windowed to [0, 1] (``target.metadata["units"]`` says which); or None.
        registration: the CT -> template registration (None without registration).
        grid: the output grid (template space with registration, patient LPS space without).
        source_grid: the grid of the input CT (for :func:`to_patient_space`).
        space: ``"template"`` or ``"patient"``.
        window: the target's ``(level, width)`` or None.
        clip: the HU clip range or None.
    """

    volume: Volume
    target: Volume | None
    registration: RigidRegistration | None
    grid: Grid
    source_grid: Grid
    space: str
    window: tuple[float, float] | None = None
    clip: tuple[float, float] | None = DEFAULT_CLIP
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def transform(self) -> sitk.Transform:
        """Template points -> CT points (identity without registration)."""
        return _as_transform(self.registration)

    def to_dict(self) -> dict[str, Any]:
        """Everything but the voxels, JSON-friendly (enough to redo or undo the geometry)."""
        return to_jsonable({
            "space": self.space, "grid": self.grid.geometry_dict(),
            "source_grid": self.source_grid.geometry_dict(),
            "registration": None if self.registration is None else self.registration.to_dict(),
            "clip": None if self.clip is None else list(self.clip),
            "target": None if self.target is None else {
                **self.target.geometry_dict(), "units": self.target.metadata.get("units", "HU"),
                "window": None if self.window is None else list(self.window)},
            "info": self.info})


def preprocess_ct(ct: Volume, template: Volume | str | os.PathLike | None = None, *,
                  register: bool = True, size: int | Sequence[int] = 256,
                  spacing: float | Sequence[float] = 1.0,
                  clip: tuple[float, float] | None = DEFAULT_CLIP,
                  target_size: int | Sequence[int] | None = 128,
                  window: str | Sequence[float] | None = None,
                  center: Sequence[float] | None = None,
                  transform: TransformLike = None, grid: GridLike | None = None,
                  registration_options: dict[str, Any] | None = None,
                  progress: ProgressCallback | None = None) -> PreprocessResult:
    """The seed-001 preprocessing of one CT (in HU).

    With ``register`` (the default): rigid registration to ``template`` (a Volume or a file;
    ``None`` uses :func:`default_template_path`), then the CT is resampled once through the
    transform onto :func:`template_grid` (``size`` voxels of ``spacing`` mm, identity
    direction, centred on the template head or on ``center`` in template space) and clipped
    to ``clip`` HU. A stored ``transform`` (a :class:`RigidRegistration` or its dict) skips the
    optimisation; a ``grid`` replaces the template grid (then no template is needed when a
    transform is given). ``registration_options`` go to :func:`register_rigid`.

    Without ``register``: :func:`crop_or_pad` in patient space (LPS axes, centred on the CT
    head or on ``center``) and the clip; no template is needed.

    The target is the volume at ``target_size`` (:func:`resample_to_size`), windowed to
    [0, 1] with ``window`` (a name of :data:`WINDOWS` or ``(level, width)``) if given.

    Raises :class:`~XRayToCTLib.errors.InputError` when registration is asked for without a
    template ("pass --template FILE or --no-register").
    """
    report(progress, 0.0, "preprocessing")
    source_grid = _grid(ct)
    registration: RigidRegistration | None = None
    info: dict[str, Any] = {}
    if register:
        if transform is not None:
            registration = _as_registration(transform)
        tmpl = None
        if grid is None or registration is None:
            tmpl = _resolve_template(template, needed=True)
            info["template"] = tmpl.metadata.get("source") if tmpl is not None else None
        if registration is None:
            registration = register_rigid(ct, tmpl, progress=scaled(progress, 0.0, 0.7),
                                          **dict(registration_options or {}))
        out_grid = _grid(grid) if grid is not None else template_grid(tmpl, size, spacing, center)
        report(progress, 0.7, "resampling onto the template grid")
        volume = to_template_space(ct, out_grid, registration, clip=clip)
        space = "template"
    else:
        if grid is not None:
            out_grid = _grid(grid)
            volume = resample_to_grid(ct, out_grid)
        else:
            report(progress, 0.3, "cropping / padding")
            volume = crop_or_pad(ct, size, spacing, center)
            out_grid = _grid(volume)
        if clip is not None:
            volume = clip_hu(volume, *clip)
        volume.metadata.update({"space": "patient", "units": "HU"})
        space = "patient"
    volume.metadata.pop("resampled_from", None)
    report(progress, 0.9, "target")
    target = None
    win = None
    if target_size is not None:
        target = resample_to_size(volume, target_size)
        target.metadata.update({"space": space, "units": "HU"})
        if window is not None:
            win = get_window(window)
            target = apply_window(target, win)
    report(progress, 1.0, "preprocessing done")
    return PreprocessResult(volume, target, registration, out_grid, source_grid, space, win,
                            None if clip is None else (float(clip[0]), float(clip[1])), info)
