"""The seed-001 preprocessing protocol and the one road into and out of the canonical frame.

**The canonical frame** (:func:`~XRayToCTLib.geometry.canonical_grid`: a cube centred on the
LPS origin, identity direction) is where every model works and every dataset case lives.
:func:`to_canonical` is the only road into it, for dataset preparation and inference alike;
:func:`from_canonical` the only road out (an sCT back onto the CT's own grid). With
registration the canonical frame is the head template's frame translated so that the
template's head centre is the origin; without, the CT's own axes translated so that its
head centre is the origin.

The seed-001 protocol, one documented function per step:

1. rigid registration of each CT to a head CT template (Mattes mutual information, 6 degrees
   of freedom, 3-level Gaussian pyramid): :func:`~XRayToCTLib.registration.register_rigid`;
2. resampling to 1 x 1 x 1 mm: :func:`resample_to_grid`;
3. clipping to [-1000, 1000] HU: :func:`clip_hu`;
4. crop or pad to 256^3: :func:`crop_or_pad` (patient space) or :func:`template_grid` +
   :func:`to_template_space` (template space). Steps 1, 2 and 4 are combined so that the CT is
   interpolated **once**, through the registration transform, straight onto the output grid;
5. intensity windows (brain window L40/W40): :mod:`~XRayToCTLib.hu`;
6. targets at 128^3 over the same field of view: :func:`resample_to_size`;
7. everything in one call, in template space: :func:`preprocess_ct`, and back to the
   original CT grid: :func:`to_patient_space`.

Conventions (see :mod:`~XRayToCTLib.geometry`): all points are LPS millimetres. A transform
follows ITK's resampling convention: it maps points of the frame resampled *into* (canonical,
template) to points of the CT. Resampling the CT onto a canonical or template grid uses it as
it is; bringing a volume back onto the CT's grid uses its inverse. Input CTs are in HU.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence, Union

import numpy as np
import SimpleITK as sitk

from .constants import AIR_HU, HEAD_THRESHOLD_HU, HU_CLIP
from .geometry import Grid, RigidTransform, Volume, as_triple
from .io import sitk_to_volume, to_jsonable, volume_to_sitk
from .progress import ProgressCallback, report, scaled
from .hu import (WINDOWS, antialias_sigma, apply_window, get_window, head_center, head_mask,
                 smooth_image, window_to_hu)
from .registration import (TEMPLATE_ENV, RigidRegistration, as_registration, as_sitk_transform,
                           cormack_to_hu, default_template_path, grid_of,
                           hu_to_cormack, initial_alignment, load_template, register_rigid,
                           registration_metric, resolve_template)

__all__ = [
    "AIR_HU", "HEAD_THRESHOLD_HU", "DEFAULT_CLIP", "WINDOWS", "TEMPLATE_ENV", "Grid",
    "RigidRegistration", "PreprocessResult", "register_rigid", "initial_alignment",
    "registration_metric", "resample_to_grid", "clip_hu", "crop_or_pad", "template_grid",
    "to_template_space", "to_patient_space", "apply_window", "window_to_hu", "get_window",
    "resample_to_size", "preprocess_ct", "load_template", "default_template_path",
    "head_mask", "head_center", "cormack_to_hu", "hu_to_cormack", "to_canonical",
    "from_canonical",
]

DEFAULT_CLIP = HU_CLIP
"""The seed's intensity clip, HU."""

TransformLike = Union[RigidTransform, "PreprocessResult", sitk.Transform, dict, None]
GridLike = Union[Grid, sitk.Image, dict]

_INTERPOLATORS = {"linear": sitk.sitkLinear, "nearest": sitk.sitkNearestNeighbor,
                  "bspline": sitk.sitkBSpline}


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
    g = grid_of(reference_grid)
    if interpolator == "nearest":
        arr = volume.array if volume.array.dtype != bool else volume.array.astype(np.uint8)
        img = volume_to_sitk(Volume(arr, volume.spacing, volume.origin, volume.direction))
        pixel = img.GetPixelID()
    else:
        img = volume_to_sitk(volume, np.float32)
        pixel = sitk.sitkFloat32
    out = sitk.Resample(img, list(g.size), as_sitk_transform(transform), _INTERPOLATORS[interpolator],
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


def _lattice_shift(volume: Volume, grid: Grid) -> np.ndarray:
    """The shift (< half a voxel per axis, mm) that puts ``grid``'s voxel centres on
    ``volume``'s when both have identity direction and the same spacing (so that resampling
    copies voxels without interpolation); zero otherwise."""
    if not (np.allclose(volume.direction, np.eye(3), atol=1e-6)
            and np.allclose(grid.direction, np.eye(3), atol=1e-6)
            and np.allclose(volume.spacing, grid.spacing, rtol=1e-6)):
        return np.zeros(3)
    sp = np.asarray(grid.spacing)
    offset = (np.asarray(grid.origin) - np.asarray(volume.origin)) / sp
    return (np.round(offset) - offset) * sp


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
    c = head_center(volume, threshold) if center is None else np.asarray(as_triple(center, "center"), float)
    grid = Grid.centered(c, size, spacing)
    if snap:
        grid = grid.translated(_lattice_shift(volume, grid))
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
    c = head_center(template, threshold) if center is None else np.asarray(as_triple(center, "center"), float)
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
    return from_canonical(sct, result_or_transform, ct_grid, interpolator=interpolator,
                          default=default)


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
    g = volume.grid.resized(size)
    n_new = np.asarray(g.size, float)
    factor = np.asarray(volume.size, float) / n_new
    sp_old = np.asarray(volume.spacing)
    sp_new, origin, d = g.spacing, g.origin, g.direction
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
        out = g.with_array(arr, **volume.metadata)
    elif method == "gaussian":
        img = smooth_image(volume_to_sitk(volume, np.float32), antialias_sigma(factor, sp_old))
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
# the canonical frame: the one road in and the one road out
# ----------------------------------------------------------------------------------------
def canonical_transform(ct: Volume, grid: Grid, *, register: bool = True,
                        template: Volume | str | os.PathLike | None = None,
                        registration_options: dict[str, Any] | None = None,
                        progress: ProgressCallback | None = None) -> RigidRegistration:
    """The transform taking canonical LPS points to ``ct``'s LPS points (ITK's resampling
    convention), as :func:`to_canonical` finds it when none is given.

    With ``register``: :func:`~XRayToCTLib.registration.register_rigid` of the CT to the
    template (``None``: the default template), preceded by the translation that puts the
    template's head centre (its Otsu head mask's centroid) at the canonical origin. Without:
    the translation that puts the CT's head centre (above -500 HU) at the origin, moved by less
    than half a voxel so that the canonical grid's voxel centres fall on the CT's when the CT
    is axis-aligned with ``grid``'s spacing (no interpolation then).

    Raises:
        InputError: registration without an available template, or no head in the CT.
    """
    if register:
        tmpl = resolve_template(template, needed=True)
        reg = register_rigid(ct, tmpl, progress=progress, **dict(registration_options or {}))
        centre = head_center(tmpl, None)
        return reg.after_translation(centre, canonical_offset_mm=centre.tolist(),
                                     template=tmpl.metadata.get("source"),
                                     method="rigid registration to the head CT template")
    centre = head_center(ct)
    centre = centre + _lattice_shift(ct, grid.translated(centre))
    return RigidRegistration.from_transform(RigidTransform.translation_by(
        centre, canonical_offset_mm=centre.tolist(), method="head centroid (no registration)"))


def to_canonical(ct: Volume, grid: Grid, *, register: bool = True,
                 template: Volume | str | os.PathLike | None = None,
                 transform: RigidTransform | dict | None = None,
                 warp: sitk.Transform | None = None,
                 clip: tuple[float, float] | None = DEFAULT_CLIP,
                 registration_options: dict[str, Any] | None = None,
                 progress: ProgressCallback | None = None) -> tuple[Volume, RigidRegistration]:
    """The CT in the canonical frame: the only road in, for dataset preparation and inference.

    Args:
        ct: a CT in HU (any grid, direction, orientation).
        grid: the canonical grid to resample onto (:func:`~XRayToCTLib.geometry.canonical_grid`
            of the model or dataset; any grid in the canonical frame works).
        register: find the transform by registration to the head template (else by the head
            centre); see :func:`canonical_transform`. Ignored when ``transform`` is given.
        template: the template (Volume or file; ``None``: the default template).
        transform: a known canonical -> CT transform (a stored registration, a phantom's
            pose); skips the search.
        warp: a SimpleITK transform applied in the canonical frame first (an augmentation):
            canonical point ``q`` takes the CT at ``transform(warp(q))``.
        clip: HU clip range (``None``: no clip).
        registration_options: passed to :func:`~XRayToCTLib.registration.register_rigid`.
        progress: ``(fraction, message)`` callback.

    Returns:
        ``(volume, transform)``: the CT resampled **once** onto ``grid`` (float32 HU, air
        outside the CT, clipped), and the canonical -> CT transform (a
        :class:`~XRayToCTLib.registration.RigidRegistration`; :func:`from_canonical` inverts it).
    """
    report(progress, 0.0, "into the canonical frame")
    if transform is not None:
        tx = as_registration(transform)
    else:
        tx = canonical_transform(ct, grid, register=register, template=template,
                                 registration_options=registration_options,
                                 progress=scaled(progress, 0.0, 0.8))
    report(progress, 0.8, "resampling onto the canonical grid")
    rigid = tx.sitk_transform()
    through = rigid if warp is None else sitk.CompositeTransform([rigid, warp])  # rigid(warp(q))
    volume = resample_to_grid(ct, grid, through)
    if clip is not None:
        volume = clip_hu(volume, *clip)
    volume.metadata.pop("resampled_from", None)
    volume.metadata.update({"space": "canonical", "units": "HU"})
    report(progress, 1.0, "in the canonical frame")
    return volume, tx


def from_canonical(volume: Volume, transform: TransformLike, onto: GridLike, *,
                   interpolator: str = "linear", default: float = AIR_HU) -> Volume:
    """A canonical-frame volume (an sCT) on the grid of ``onto`` (the CT, or its Grid): the
    only road out. Each point of ``onto`` is mapped through the inverse of ``transform``
    (:func:`to_canonical`'s; any form :func:`~XRayToCTLib.registration.as_sitk_transform`
    takes) and looked up in ``volume``; outside it the value is ``default``."""
    out = resample_to_grid(volume, onto, as_sitk_transform(transform).GetInverse(),
                           interpolator, default)
    out.metadata.update({"space": "patient"})
    return out


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
        return as_sitk_transform(self.registration)

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
    template.
    """
    report(progress, 0.0, "preprocessing")
    source_grid = grid_of(ct)
    registration: RigidRegistration | None = None
    info: dict[str, Any] = {}
    if register:
        if transform is not None:
            registration = as_registration(transform)
        tmpl = None
        if grid is None or registration is None:
            tmpl = resolve_template(template, needed=True)
            info["template"] = tmpl.metadata.get("source") if tmpl is not None else None
        if registration is None:
            registration = register_rigid(ct, tmpl, progress=scaled(progress, 0.0, 0.7),
                                          **dict(registration_options or {}))
        out_grid = grid_of(grid) if grid is not None else template_grid(tmpl, size, spacing, center)
        report(progress, 0.7, "resampling onto the template grid")
        volume = to_template_space(ct, out_grid, registration, clip=clip)
        space = "template"
    else:
        if grid is not None:
            out_grid = grid_of(grid)
            volume = resample_to_grid(ct, out_grid)
        else:
            report(progress, 0.3, "cropping / padding")
            volume = crop_or_pad(ct, size, spacing, center)
            out_grid = grid_of(volume)
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
