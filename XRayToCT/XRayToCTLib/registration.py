"""Rigid registration of a head CT to a head CT template (seed-001 step 1), and the template.

* :func:`register_rigid`: Mattes mutual information, 6 degrees of freedom, a 3-level
  Gaussian pyramid, after a coarse :func:`initial_alignment` search; it returns a
  :class:`RigidRegistration` (a :class:`~XRayToCTLib.geometry.RigidTransform` with metric
  values) that maps template (fixed) LPS points to CT (moving) LPS points, ITK's resampling
  convention.
* the template: :func:`default_template_path`, :func:`load_template`,
  :func:`resolve_template`; Cormack units (:func:`hu_to_cormack`, :func:`cormack_to_hu`).

SimpleITK lives here and in :mod:`~XRayToCTLib.preprocess`; the transforms themselves are
numpy objects of :mod:`~XRayToCTLib.geometry`.
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

from .constants import HEAD_THRESHOLD_HU, TEMPLATE_ENV
from .errors import Cancelled, InputError, TemplateUnavailable
from .geometry import Grid, RigidTransform, Volume
from .hu import coarsen, head_center, head_mask
from .io import sitk_to_volume, to_jsonable, volume_to_sitk
from .progress import ProgressCallback, report, scaled

__all__ = [
    "TEMPLATE_ENV", "RigidRegistration", "register_rigid", "initial_alignment",
    "registration_metric", "as_registration", "as_sitk_transform", "grid_of",
    "hu_to_cormack", "cormack_to_hu", "default_template_path", "load_template",
    "resolve_template", "SHIPPED_TEMPLATE",
]


TransformLike = Union[RigidTransform, sitk.Transform, dict, None, Any]
GridLike = Union[Grid, sitk.Image, dict]

# ----------------------------------------------------------------------------------------
# small SimpleITK helpers
# ----------------------------------------------------------------------------------------
def grid_of(obj: GridLike) -> Grid:
    """The grid of a Grid / Volume, a SimpleITK image or a ``geometry_dict()``."""
    if isinstance(obj, sitk.Image):
        return Grid(obj.GetSize(), obj.GetSpacing(), obj.GetOrigin(),
                    np.asarray(obj.GetDirection(), dtype=float).reshape(3, 3))
    return Grid.of(obj)


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
class RigidRegistration(RigidTransform):
    """A rigid (6-DOF) registration of a CT to a template: a
    :class:`~XRayToCTLib.geometry.RigidTransform` (template / fixed LPS points -> CT / moving
    LPS points, ITK's resampling convention) with the registration's metric values.

    Args:
        parameters: ``(angle_x, angle_y, angle_z, tx, ty, tz)``, radians and mm.
        center: LPS centre of rotation (ITK's fixed parameters; the template head centre).
        info: how it was obtained (initialisation search, per-level iterations, settings,
            timing).
        metric_value: Mattes mutual information at the result (ITK sign: negative MI, lower is
            better), evaluated on every voxel of the registration's finest level.
        initial_metric_value: the same at the transform the optimiser started from.
    """

    metric_value: float = math.nan
    initial_metric_value: float = math.nan

    # -- SimpleITK ------------------------------------------------------------------------
    def sitk_transform(self) -> sitk.Euler3DTransform:
        """A new SimpleITK transform (template points -> CT points)."""
        return _euler(self.center, self.parameters)

    def inverse_sitk_transform(self) -> sitk.Transform:
        """CT points -> template points."""
        return self.sitk_transform().GetInverse()

    # -- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly description; :meth:`from_dict` rebuilds the exact transform."""
        return to_jsonable({**super().to_dict(), "metric": "mattes_mutual_information",
                            "metric_value": self.metric_value,
                            "initial_metric_value": self.initial_metric_value})

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RigidRegistration":
        base = RigidTransform.from_dict(d)
        nan = math.nan
        return cls(base.parameters, base.center, base.info,
                   nan if d.get("metric_value") is None else float(d["metric_value"]),
                   nan if d.get("initial_metric_value") is None else float(d["initial_metric_value"]))

    @classmethod
    def from_transform(cls, transform: RigidTransform) -> "RigidRegistration":
        """A RigidTransform (for instance a known pose) as a registration without metric."""
        if isinstance(transform, RigidRegistration):
            return transform
        return cls(transform.parameters, transform.center, dict(transform.info))

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


def as_registration(obj: TransformLike) -> RigidRegistration:
    """A RigidRegistration from a RigidRegistration / RigidTransform, its dict or a SimpleITK
    rigid transform."""
    if isinstance(obj, RigidTransform):
        return RigidRegistration.from_transform(obj)
    if isinstance(obj, dict):
        return RigidRegistration.from_dict(obj)
    if isinstance(obj, sitk.Transform):
        return RigidRegistration.from_sitk(obj)
    raise TypeError(f"cannot use a {type(obj).__name__} as a rigid registration")


def as_sitk_transform(obj: TransformLike) -> sitk.Transform:
    """A SimpleITK transform (fixed -> moving points) from the ways to hold one: ``None``
    (identity), a RigidTransform / RigidRegistration, its dict, a SimpleITK transform, or
    anything with a ``registration`` attribute (a :class:`~XRayToCTLib.preprocess.PreprocessResult`)."""
    if obj is None:
        return sitk.Transform(3, sitk.sitkIdentity)
    if hasattr(obj, "registration") and not isinstance(obj, (dict, sitk.Transform)):
        return as_sitk_transform(obj.registration)
    if isinstance(obj, RigidTransform):
        return _euler(obj.center, obj.parameters)
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
    f = volume_to_sitk(template, np.float32)
    m = volume_to_sitk(moving, np.float32)
    f = coarsen(f, spacing)
    m = coarsen(m, spacing)
    return _evaluate(_metric_method(bins), f, m, as_sitk_transform(transform))


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
    f_img = template if isinstance(template, sitk.Image) else volume_to_sitk(template, np.float32)
    m_img = moving if isinstance(moving, sitk.Image) else volume_to_sitk(moving, np.float32)
    f_img = sitk.Cast(f_img, sitk.sitkFloat32)
    m_img = sitk.Cast(m_img, sitk.sitkFloat32)
    f_c = coarsen(f_img, spacing)
    m_c = coarsen(m_img, spacing)
    c_f = head_center(f_c, template_threshold, coarse_mm=None)
    c_m = head_center(m_c, moving_threshold, coarse_mm=None)
    f_mask = head_mask(f_c, template_threshold, opening=1, fill_holes=False)
    f_points = grid_of(f_c).physical_points(np.argwhere(f_mask)[:, ::-1].astype(float))
    m_grid = grid_of(m_img)

    method = _metric_method(bins)
    mask_img = sitk.GetImageFromArray(f_mask.astype(np.uint8))
    mask_img.CopyInformation(f_c)
    region = sitk.BinaryDilate(mask_img, [2] * 3)
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

    fixed = volume_to_sitk(template, np.float32)
    mov = volume_to_sitk(moving, np.float32)
    fixed = coarsen(fixed, registration_spacing)
    mov = coarsen(mov, registration_spacing)

    # -- start ---------------------------------------------------------------------------
    init_info: dict[str, Any]
    if initial is not None:
        init_t = as_registration(initial).sitk_transform()
        init_info = {"method": "given"}
    elif search:
        report(progress, 0.02, "registration: initial alignment search")
        init_t, init_info = initial_alignment(fixed, mov, template_threshold=template_threshold,
                                              moving_threshold=moving_threshold)
    else:
        c_f = head_center(fixed, template_threshold, coarse_mm=6.0)
        c_m = head_center(mov, moving_threshold, coarse_mm=6.0)
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
    result = RigidRegistration(final_params, center, {},
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
# 8. the template
# ----------------------------------------------------------------------------------------
SHIPPED_TEMPLATE = (Path(__file__).resolve().parents[1] / "Resources" / "Templates"
                    / "rorden_scct" / "scct.nii.gz")
"""The Rorden head CT template that ships with the extension (BSD 2-Clause, licence beside it)."""


def default_template_path() -> Path | None:
    """Where the head CT template is: the ``XRAYTOCT_TEMPLATE`` environment variable if set
    (returned even when the file is missing, so that the error names it), else the template
    that ships with the extension (:data:`SHIPPED_TEMPLATE`) if it is there, else None."""
    env = os.environ.get(TEMPLATE_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    return SHIPPED_TEMPLATE if SHIPPED_TEMPLATE.is_file() else None


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


def resolve_template(template: Volume | str | os.PathLike | None, needed: bool) -> Volume | None:
    """The template as a Volume: ``template`` itself, the file it names, or the default
    (:func:`default_template_path`); ``None`` when there is none and it is not ``needed``.

    Raises:
        InputError: the template is needed and none is available, or its file is unusable.
    """
    if isinstance(template, Volume):
        return template
    if template is None:
        template = default_template_path()
        if template is None:
            if needed:
                raise TemplateUnavailable("registration to a head CT template was requested but "
                                          "no template is available (none was given, none ships "
                                          f"with this installation and {TEMPLATE_ENV} is not set)")
            return None
    return load_template(template)

