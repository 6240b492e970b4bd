"""Inference: radiographs (or a CT's DRRs) in, a synthetic CT (sCT) out, placed and scored.

The chain (see ``ARCHITECTURE.md``, "data flow of the main job"):

* **one request** (:func:`reconstruct`, :meth:`Reconstructor.reconstruct`): a CT *or*
  radiographs, and the registration policy (``register="auto"``: register to the head
  template when one is available, else place the head by its centre and say so). The CLI and
  the Slicer module both call it, so their choices and errors are the same.
* **from a CT** (:meth:`Reconstructor.reconstruct_ct`): the CT enters the model's canonical
  frame through :func:`~XRayToCTLib.preprocess.to_canonical` (exactly as dataset cases do)
  on a grid of ``drr_spacing`` mm (the spacing the model's training DRRs were rendered at)
  covering the model's field of view; the run's one :class:`~XRayToCTLib.drr.DRR` renders its
  DRRs at the model's geometry; the model runs; its output is converted to HU (the model's
  intensity mapping) and leaves the canonical frame through
  :func:`~XRayToCTLib.preprocess.from_canonical` onto the CT's own grid, so that it overlays
  the CT.
* **from radiographs** (:meth:`Reconstructor.reconstruct_views`): each image is brought to
  the model's detector (:func:`prepare_view`) and input convention
  (``models.normalize_views``); the sCT is returned on the canonical grid (template space
  translated to the origin), with its geometry.

Input convention for radiographs (documented assumptions):

* the image is **bone-bright and line-integral-like** (the log of the transmitted intensity,
  as a DRR): DICOM ``MONOCHROME1`` images are inverted by
  :func:`~XRayToCTLib.io.read_radiograph`; pass ``invert=True`` (``--invert``) for other
  images where bone is dark;
* a **collimation border** (a constant band at the edges, brighter than air) becomes air and
  **burned-in markers** (small saturated blobs such as side letters) take their
  surroundings' values (:func:`~XRayToCTLib.io.radiographs.clean_radiograph`);
* the image is **centred on the central ray**. With a pixel spacing (DICOM
  ImagerPixelSpacing / PixelSpacing, an NRRD header, a DRR's geometry) it is cropped or
  padded about its centre to the model's physical detector size (mm at the detector plane;
  scaled by the model's over the image's magnification when the image states its own:
  DICOM EstimatedRadiographicMagnificationFactor or SID / SOD, a stored geometry), then
  resized to the model's ``P x P`` pixels; without one (PNG, JPEG) pixels are taken as
  square and the image's longer side as spanning the whole detector (the shorter side is
  padded about the centre), then it is resized. Padding uses the image's minimum (air).

Every sCT carries a **projection-consistency score** (:meth:`~XRayToCTLib.drr.DRR.consistency`): the
sCT's DRRs at the model's geometry against the input views, both normalised with
``models.normalize_views``; SSIM and PSNR per view. It needs no ground truth: a low score
says the sCT does not explain its own inputs.

An sCT is synthetic everywhere it goes: ``metadata["synthetic"] = True`` and
``metadata["description"] = constants.SYNTHETIC_LABEL``; written files carry the
label (NIfTI ``descrip``, NRRD/MHA header, DICOM ImageType ``SYNTHETIC``, the JSON sidecar).
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

import numpy as np
import torch
from monai.transforms import Resize, ResizeWithPadOrCrop

from . import io as xio
from . import preprocess as pp
from .constants import AIR_HU, SYNTHETIC_LABEL
from .drr import DRR, normalize_views, resolve_device, view_stack
from .errors import InputError, XRayToCTError
from .geometry import (Grid, ProjectionGeometry, Radiograph, RigidTransform, Volume,
                       canonical_grid, field_of_view_mask)
from .harmonize import Harmonizer
from .hu import head_mask
from .io.radiographs import clean_radiograph
from .models import get_mapping, load_model
from .models.pix2pix import is_translation
from .progress import ProgressCallback, report, scaled
from .refine import RefineSettings, refine as fit_to_views
from .registration import resolve_template

__all__ = [
    "ReconstructionResult", "Reconstructor", "reconstruct", "prepare_view",
    "run_with_cpu_fallback", "sidecar_path", "check_output_path", "write_result",
    "REGISTER_CHOICES", "refine_settings", "uncertainty_summary", "uncertainty_path",
    "UNCERTAINTY_LABEL", "UNCERTAINTY_HIGH_HU",
]

UNCERTAINTY_LABEL = "SYNTHETIC sCT uncertainty: voxel SD in HU - not for diagnosis"
"""The label of an sCT's uncertainty map (NIfTI ``descrip``, NRRD/MHA header, metadata)."""
UNCERTAINTY_HIGH_HU = 100.0
"""The spread (voxel SD, HU) above which a head voxel counts as uncertain in the summary."""

REGISTER_CHOICES = ("auto", True, False)
"""``register`` of :func:`reconstruct`: ``"auto"`` registers a CT to the head template when
one is available (else places it by its head centre, with a warning in ``info["warnings"]``),
``True`` requires the template, ``False`` never registers."""

T = TypeVar("T")

RefineLike = Any
"""``refine`` of the reconstruct methods: ``None``/``False``/``0`` (no fit), ``True`` (the
default :class:`~XRayToCTLib.refine.RefineSettings`), a number of steps, or settings."""


def refine_settings(refine: RefineLike) -> RefineSettings | None:
    """The test-time fit's settings for a ``refine`` argument (see :data:`RefineLike`), or
    None for no fit."""
    if refine is None or refine is False:
        return None
    if isinstance(refine, RefineSettings):
        return refine if refine.steps > 0 else None
    if refine is True:
        return RefineSettings()
    if isinstance(refine, (int, np.integer)) and not isinstance(refine, bool):
        if refine < 0:
            raise InputError(None, f"refinement steps must be 0 or more, got {refine}")
        return RefineSettings(steps=int(refine)) if refine > 0 else None
    raise ValueError(f"refine must be None, a bool, a number of steps or RefineSettings, "
                     f"got {refine!r}")

_OOM = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


# ----------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------
def run_with_cpu_fallback(fn: Callable[[torch.device], T], device: torch.device | str,
                          what: str = "the reconstruction") -> tuple[T, torch.device]:
    """Run ``fn(device)``; if it runs out of CUDA memory, warn and run ``fn(cpu)`` instead.

    Returns ``(result, device_used)``. An out-of-memory error on the CPU is not caught."""
    dev = torch.device(device)
    try:
        return fn(dev), dev
    except _OOM as err:
        if dev.type != "cuda":
            raise
        msg = str(err).strip().splitlines()[0] if str(err).strip() else "out of memory"
        warnings.warn(f"CUDA ran out of memory during {what} ({msg}); falling back to the CPU",
                      RuntimeWarning, stacklevel=2)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        cpu = torch.device("cpu")
        return fn(cpu), cpu


def _label_synthetic(volume: Volume, **metadata: Any) -> Volume:
    volume.metadata.update({"synthetic": True, "description": SYNTHETIC_LABEL,
                            "modality": "CT", "units": "HU",
                            **metadata})
    return volume


def _source_name(image: Any) -> str | None:
    if isinstance(image, Radiograph):
        src = image.metadata.get("source")
        return str(src) if src else None
    return None


# ----------------------------------------------------------------------------------------
# radiographs -> model input
# ----------------------------------------------------------------------------------------
def prepare_view(image: Radiograph | np.ndarray, geometry: ProjectionGeometry, *,
                 invert: bool = False, clean: bool = True,
                 record: dict[str, Any] | None = None) -> np.ndarray:
    """Bring one radiograph onto a model's detector: ``float32 [rows, cols]`` in the image's
    own units (normalisation is ``models.normalize_views``' job).

    Args:
        image: a :class:`Radiograph` (its ``pixel_spacing``, mm at the detector, is used when
            known) or a 2D array (no spacing).
        geometry: the model's view geometry (``pixels`` and ``detector_size`` in mm).
        invert: flip the intensities about their range (``max + min - value``) for images in
            which bone is dark. MONOCHROME1 DICOM is already inverted by the reader.
        clean: remove a collimation border and burned-in markers first
            (:func:`~XRayToCTLib.io.radiographs.clean_radiograph`: a bright shutter band
            becomes air, a saturated side letter takes its surroundings' values).
        record: a dict that receives what was done (cleaning, the spacing used, the
            magnification correction).

    With a pixel spacing (mm at the detector: DICOM ImagerPixelSpacing, or a calibrated
    PixelSpacing times the magnification), the image is cropped or padded about its centre
    to the detector's physical size, then resized to ``geometry.pixels`` (area averaging
    when shrinking, as detector binning does; bilinear when enlarging). When the image's
    own magnification is known (DICOM EstimatedRadiographicMagnificationFactor or
    SID / SOD, or a stored geometry) and differs from the model's (``sid / sad``), the
    spacing is scaled by ``model / image`` magnification first, so that the anatomy has the
    size in mm the model's detector would record. Without a spacing,
    pixels are square and the image's longer side spans the detector (the shorter side is
    padded about the centre). Padding is the image's minimum (air in a bone-bright image).

    Raises:
        InputError: not 2D, fewer than 2 pixels a side, or NaN / infinite values.
    """
    src = _source_name(image)
    arr = np.asarray(image.array if isinstance(image, Radiograph) else image, dtype=np.float32)
    if arr.ndim != 2 or min(arr.shape) < 2:
        raise InputError(src, f"a radiograph must be a 2D image, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise InputError(src, "the radiograph holds NaN or infinite values")
    lo, hi = float(arr.min()), float(arr.max())
    if invert:
        arr = (hi + lo) - arr
    notes: dict[str, Any] = {}
    if clean:
        arr, notes["cleaning"] = clean_radiograph(arr)
    rows, cols = geometry.pixels
    det_h, det_w = geometry.detector_size
    spacing = image.pixel_spacing if isinstance(image, Radiograph) else None
    magnification = _image_magnification(image)
    if spacing is not None and magnification is not None \
            and abs(magnification / geometry.magnification - 1.0) > 0.005:
        scale = geometry.magnification / magnification
        notes["magnification"] = {"image": magnification, "model": geometry.magnification,
                                   "spacing_scale": scale}
        spacing = (spacing[0] * scale, spacing[1] * scale)
    notes["pixel_spacing_used"] = None if spacing is None else [float(x) for x in spacing]
    if record is not None:
        record.update(notes)
    if spacing is not None:
        target = (max(2, int(round(det_h / spacing[0]))), max(2, int(round(det_w / spacing[1]))))
    else:  # square pixels; the longer side spans the detector
        aspect = det_h / det_w
        h, w = arr.shape
        target = (max(h, int(round(w * aspect))), max(w, int(round(h / aspect))))
    if target != arr.shape:
        arr = np.asarray(ResizeWithPadOrCrop(target, mode="constant",
                                             value=float(arr.min()))(arr[None]))[0]
    if tuple(arr.shape) != (rows, cols):
        # shrinking: area averaging (detector binning, exact for integer factors); else bilinear
        mode = "area" if rows <= arr.shape[0] and cols <= arr.shape[1] else "bilinear"
        arr = np.asarray(Resize((rows, cols), mode=mode)(arr[None]))[0]
    return np.ascontiguousarray(arr, dtype=np.float32)


def _image_magnification(image: Radiograph | np.ndarray) -> float | None:
    """A radiograph's own magnification: its stored geometry's ``sid / sad``, else the
    DICOM reader's ``metadata["magnification"]``; None when unknown."""
    if not isinstance(image, Radiograph):
        return None
    if image.geometry is not None:
        return float(image.geometry.magnification)
    m = image.metadata.get("magnification")
    return float(m) if m else None


_VIEW_FAMILY = {"ap": "frontal", "pa": "frontal", "lateral": "lateral",
                "lateral_left": "lateral"}
"""Views that are the same kind of projection: a contradiction across kinds is refused."""
SYMMETRY_MARGIN = 0.03
"""How much less left-right symmetric than the lateral image the AP image must be for
:func:`_views_look_swapped` to warn (phantom DRRs: AP 0.94-1.0, lateral 0.86-0.91)."""


def mirror_symmetry(image: np.ndarray, max_shift: float = 0.25) -> float:
    """Left-right symmetry of a radiograph: the best correlation of the normalised image
    with its mirror image, over mirror axes within ``max_shift`` of the width from the centre
    (a head need not be centred). About 1 for an AP head, clearly less for a lateral one."""
    a = np.asarray(image, dtype=np.float64)
    a = (a - a.mean()) / (a.std() + 1e-12)
    mirror, width, best = a[:, ::-1], a.shape[1], -1.0
    for s in range(-int(width * max_shift), int(width * max_shift) + 1):
        x = a[:, max(s, 0): width + min(s, 0)]
        y = mirror[:, max(-s, 0): width - max(s, 0)]
        x, y = x - x.mean(), y - y.mean()
        denom = float(np.sqrt((x * x).sum() * (y * y).sum()))
        if denom > 0:
            best = max(best, float((x * y).sum()) / denom)
    return best


def _views_look_swapped(given: Mapping[str, Any], prepared: Mapping[str, Radiograph]
                        ) -> str | None:
    """A warning when no file says its view and the image given as AP is clearly less
    left-right symmetric than the one given as lateral (AP and lateral look swapped)."""
    if not {"ap", "lateral"} <= set(prepared):
        return None
    if all(isinstance(given[v], Radiograph) and given[v].metadata.get("view_in_file")
           for v in ("ap", "lateral")):
        return None  # the files say their views (checked by the caller)
    ap, lateral = (mirror_symmetry(prepared[v].array) for v in ("ap", "lateral"))
    if ap < lateral - SYMMETRY_MARGIN:
        return (f"the image given as ap is less left-right symmetric than the one given as "
                f"lateral (mirror correlation {ap:.2f} vs {lateral:.2f}): are the views swapped?")
    return None


# ----------------------------------------------------------------------------------------
# results
# ----------------------------------------------------------------------------------------
@dataclasses.dataclass
class ReconstructionResult:
    """What a reconstruction returns.

    Attributes:
        sct: the sCT in HU: on the input CT's own grid (patient space) for a CT input; on the
            canonical grid (template space translated to the origin) for radiographs.
            ``metadata["synthetic"]`` is True.
        sct_model_space: the sCT in HU on the model's canonical grid (``S^3`` voxels of
            ``output_spacing`` mm, centred at the LPS origin, identity direction).
        drrs: the images the model saw, per view, before normalisation: the CT's DRRs, or
            the prepared radiographs. Their ``geometry`` is the model's view geometry in the
            sCT's frame: in the CT's LPS space for a CT input (the model geometry moved
            through the canonical -> CT transform, :meth:`RigidTransform.moved_geometry`), the
            canonical frame for radiographs.
        consistency: :meth:`~XRayToCTLib.drr.DRR.consistency`'s scores.
        info: provenance (model, sha256, device, timings, inputs, geometry, transform).
        reprojections: the sCT's DRRs at the model geometry, normalised like the inputs
            (geometry in the same frame as ``drrs``).
        uncertainty: with several samples (a diffusion model, ``samples`` >= 2), the voxel
            standard deviation across them in HU, on ``sct``'s grid (labelled synthetic:
            :data:`UNCERTAINTY_LABEL`); else None.
        uncertainty_model_space: the same on the canonical grid.
    """

    sct: Volume
    sct_model_space: Volume
    drrs: dict[str, Radiograph]
    consistency: dict[str, Any]
    info: dict[str, Any]
    reprojections: dict[str, Radiograph] = dataclasses.field(default_factory=dict)
    uncertainty: Volume | None = None
    uncertainty_model_space: Volume | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly summary (no voxels): what the ``.json`` sidecar holds."""
        return xio.to_jsonable({**self.info, "synthetic": True, "description": SYNTHETIC_LABEL,
                          "consistency": self.consistency,
                          "sct_geometry": self.sct.geometry_dict(),
                          "sct_model_space_geometry": self.sct_model_space.geometry_dict()})

    def to_json(self) -> str:
        """:meth:`to_dict` as JSON text."""
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False)


# ----------------------------------------------------------------------------------------
# the reconstructor
# ----------------------------------------------------------------------------------------
class Reconstructor:
    """A loaded model, ready to reconstruct.

    Args:
        model: a catalog name, a ``.safetensors`` package path, or an ``nn.Module`` with a
            ``.spec`` (the ``ModelSpec``; for tests and embedding).
        device: ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda"``. On CUDA
            out-of-memory the work falls back to the CPU with a warning
            (:func:`run_with_cpu_fallback`) and stays there.
        harmonize: a harmoniser (a 2D translation model: catalog name, package or module,
            :class:`~XRayToCTLib.harmonize.Harmonizer`) that translates each radiograph into
            the DRR domain after it is brought onto the model's detector; recorded in the
            result's ``info["harmonize"]``. Radiographs only (a CT's own DRRs need none).

    Raises:
        InputError: unknown model name, missing or corrupt package (sha256 mismatch).
    """

    def __init__(self, model: str | os.PathLike | torch.nn.Module, device: str | torch.device = "auto",
                 *, drr_spacing: float | None = None,
                 harmonize: str | os.PathLike | torch.nn.Module | None = None):
        self.device = resolve_device(device)
        self.package: dict[str, Any] = {}
        if isinstance(model, torch.nn.Module):
            self.model = model
            self.package = {"name": getattr(model.spec, "name", type(model).__name__),
                            "file": None, "sha256": None}
        else:
            self.model, self.package = _load(model)
        if not hasattr(self.model, "spec"):
            raise XRayToCTError(f"model {model!r} has no spec")
        if is_translation(self.model):
            raise InputError(None if isinstance(model, torch.nn.Module) else os.fspath(model),
                             f"is a 2D translation model ({self.model.spec.input_domain} -> "
                             f"{self.model.spec.target_domain}, a harmoniser), not a "
                             f"reconstruction model: use it to harmonise radiographs")
        self.harmonizer = None if harmonize is None else Harmonizer(harmonize, self.device)
        """The harmoniser applied to each radiograph before the model, or None."""
        self.model.eval()
        self.spec = self.model.spec
        self.label = (self.spec.name if isinstance(model, torch.nn.Module)
                      else Path(model).stem if str(model).endswith(".safetensors") else str(model))
        """The model as the user named it (catalog name or file stem): the method's name in
        results (``<label>+refine`` after a test-time fit)."""
        self.mapping = get_mapping(self.spec.intensity)
        self.grid = self.spec.grid()
        self.drr = DRR({v: self.spec.projection(v) for v in self.spec.views})
        """The run's one DRR object: the CT's DRRs and the sCT's reprojections."""
        trained = ((self.package.get("training_data") or {}).get("settings") or {}).get("drr_spacing")
        self.drr_spacing = float(drr_spacing or trained or 1.0)
        """Voxel size (mm) of the canonical volume a CT's DRRs are rendered from: the
        spacing the model's training DRRs were rendered at when its package records it."""

    # -- the model ---------------------------------------------------------------------
    def _forward_on(self, device: torch.device, x: torch.Tensor) -> torch.Tensor:
        """The model on ``device``: ``x [1, V, P, P]`` normalised -> ``[S, S, S]`` model
        intensity on the CPU."""
        self.model.to(device)
        with torch.no_grad():
            y = self.model(x.to(device))
        return y.float().cpu()[0, 0]

    def _run(self, raw: torch.Tensor, progress: ProgressCallback | None) -> tuple[Volume, torch.Tensor]:
        """Normalise the ``[1, V, P, P]`` views, run the model, convert to HU; the sCT on the
        canonical grid and the normalised views."""
        names = list(self.spec.views)
        if raw.shape[1] != len(names):
            raise InputError(None, f"model {self.label!r} takes {len(names)} view(s) "
                                   f"({', '.join(names)}); got {raw.shape[1]}")
        x = normalize_views(raw).float()
        report(progress, 0.0, f"running {self.spec.name} on {self.device.type}")
        y, self.device = run_with_cpu_fallback(lambda d: self._forward_on(d, x), self.device,
                                               f"{self.spec.name} inference")
        expect = self.grid.shape
        if tuple(y.shape) != expect:
            raise XRayToCTError(f"model {self.spec.name!r} returned {tuple(y.shape)} voxels, its "
                                f"spec says {expect}")
        hu = torch.as_tensor(self.mapping.to_hu(y)).float().numpy()
        vol = Volume(hu.astype(np.float32), self.grid.spacing, self.grid.origin,
                     self.grid.direction.copy(), {"space": "canonical"})
        report(progress, 1.0, "model done")
        return _label_synthetic(vol, model=self.spec.name), x

    def _consistency(self, sct: Volume, x: torch.Tensor) -> tuple[dict, dict[str, Radiograph]]:
        names = list(self.spec.views)
        (scores, rep), self.device = run_with_cpu_fallback(
            lambda d: self.drr.to(d).consistency(sct, x, return_reprojections=True),
            self.device, "the projection-consistency check")
        images = {v: Radiograph(rep[i], None, self.spec.projection(v),
                                {"view": v, "kind": "sCT reprojection",
                                 "units": "models.normalize_views"})
                  for i, v in enumerate(names)}
        return scores, images

    def _refine(self, sct: Volume, x: torch.Tensor, raw: Mapping[str, Radiograph],
                settings: RefineSettings | None, info: dict[str, Any], scores: dict,
                reproj: dict[str, Radiograph], timings: dict[str, float],
                progress: ProgressCallback | None) -> tuple[Volume, dict, dict[str, Radiograph]]:
        """The test-time fit (:func:`~XRayToCTLib.refine.refine`) of the canonical sCT to the
        raw views, when asked; the fitted sCT, its consistency and reprojections. ``info``
        gets the fit's record and the consistency before it."""
        if settings is None:
            return sct, scores, reproj
        t = time.perf_counter()
        geoms = {v: self.spec.projection(v) for v in self.spec.views}
        (fitted, record), self.device = run_with_cpu_fallback(
            lambda d: fit_to_views(sct, raw, geoms, settings, device=d, progress=progress),
            self.device, "the test-time fit")
        _label_synthetic(fitted, model=self.spec.name, method=f"{self.label}+refine")
        timings["refine"] = time.perf_counter() - t
        new_scores, new_reproj = self._consistency(fitted, x)
        info["refine"] = record
        info["consistency_before_refine"] = scores
        info["method"] = f"{self.label}+refine"
        return fitted, new_scores, new_reproj

    def _predict(self, raw: torch.Tensor, fit_views: Mapping[str, Radiograph],
                 settings: RefineSettings | None, samples: int | None, seed: int | None,
                 timings: dict[str, float], info: dict[str, Any],
                 progress: ProgressCallback | None, span: tuple[float, float, float]
                 ) -> tuple[Volume, Volume | None, dict, dict[str, Radiograph]]:
        """The canonical sCT of the raw ``[1, V, P, P]`` views, fitted to ``fit_views`` when
        asked: ``(sct, spread or None, consistency, reprojections)``. A model that samples
        (``sample``: the diffusion model) draws ``samples`` (default 1) from ``seed`` (default
        0), each fitted on its own, and returns their mean and (from 2 samples) their voxel
        SD; ``info`` gets the sampler, the uncertainty summary and the fit's record.
        ``span``: progress at the model's start, its end and the fit's end."""
        a, b, c = span
        n = _check_samples(self.model, self.label, samples)
        if n is None:
            t = time.perf_counter()
            sct, x = self._run(raw, scaled(progress, a, b))
            timings["model"] = time.perf_counter() - t
            t = time.perf_counter()
            report(progress, b, "projection consistency")
            scores, reproj = self._consistency(sct, x)
            timings["consistency"] = time.perf_counter() - t
            sct, scores, reproj = self._refine(sct, x, fit_views, settings, info, scores,
                                               reproj, timings, scaled(progress, b, c))
            return sct, None, scores, reproj
        seed = 0 if seed is None else int(seed)
        t = time.perf_counter()
        draws, x = self._run_samples(raw, n, seed, scaled(progress, a, b))
        timings["model"] = time.perf_counter() - t
        records: list[dict[str, Any]] = []
        if settings is not None:
            t = time.perf_counter()
            info["consistency_before_refine"] = self._consistency(_mean_volume(draws), x)[0]
            geoms = {v: self.spec.projection(v) for v in self.spec.views}
            for i, d in enumerate(draws):
                part = scaled(progress, b + (c - b) * i / n, b + (c - b) * (i + 1) / n)
                (draws[i], rec), self.device = run_with_cpu_fallback(
                    lambda dev: fit_to_views(d, fit_views, geoms, settings, device=dev,
                                             progress=part), self.device, "the test-time fit")
                records.append(rec)
            timings["refine"] = time.perf_counter() - t
            info["refine"] = {**records[0], "samples_fitted": n, "per_sample": records}
            info["method"] = f"{self.label}+refine"
        sct = _mean_volume(draws)
        method = info.get("method", self.label)
        _label_synthetic(sct, model=self.spec.name, method=method, samples=n,
                         statistic="mean of the samples" if n > 1 else "one sample")
        sd = None
        if n > 1:
            sd_arr = np.std(np.stack([d.array for d in draws]), axis=0, ddof=1)
            sd = Volume(sd_arr.astype(np.float32), sct.spacing, sct.origin, sct.direction.copy(),
                        {"synthetic": True, "description": UNCERTAINTY_LABEL,
                         "units": "HU (standard deviation)", "quantity": "uncertainty",
                         "model": self.spec.name, "method": method, "samples": n,
                         "space": "canonical"})
        t = time.perf_counter()
        report(progress, c, "projection consistency")
        scores, reproj = self._consistency(sct, x)
        timings["consistency"] = time.perf_counter() - t
        info["sampler"] = {**self.model.sampler_settings(), "samples": n, "seed": seed,
                           "statistic": "mean" if n > 1 else "the one sample"}
        if sd is not None:
            info["uncertainty"] = uncertainty_summary(sct.array, sd.array)
        return sct, sd, scores, reproj

    def _run_samples(self, raw: torch.Tensor, n: int, seed: int,
                     progress: ProgressCallback | None) -> tuple[list[Volume], torch.Tensor]:
        """``n`` samples (canonical HU volumes) of the normalised views from a CPU
        ``torch.Generator`` seeded with ``seed`` (the same samples on any device)."""
        names = list(self.spec.views)
        if raw.shape[1] != len(names):
            raise InputError(None, f"model {self.label!r} takes {len(names)} view(s) "
                                   f"({', '.join(names)}); got {raw.shape[1]}")
        x = normalize_views(raw).float()

        def draw(dev: torch.device) -> list[torch.Tensor]:
            gen = torch.Generator().manual_seed(seed)  # again on a CPU fallback: same draws
            self.model.to(dev)
            out = []
            for i in range(n):
                report(progress, i / n, f"sample {i + 1}/{n} ({self.spec.name} on {dev.type})")
                with torch.no_grad():
                    out.append(self.model.sample(x.to(dev), 1, generator=gen)[0, 0, 0]
                               .float().cpu())
            return out
        ys, self.device = run_with_cpu_fallback(draw, self.device, f"{self.spec.name} sampling")
        vols = []
        for y in ys:
            if tuple(y.shape) != self.grid.shape:
                raise XRayToCTError(f"model {self.spec.name!r} returned {tuple(y.shape)} voxels, "
                                    f"its spec says {self.grid.shape}")
            hu = torch.as_tensor(self.mapping.to_hu(y)).float().numpy()
            vols.append(Volume(hu, self.grid.spacing, self.grid.origin,
                               self.grid.direction.copy(), {"space": "canonical"}))
        report(progress, 1.0, "samples done")
        return vols, x

    def _info(self, kind: str, t0: float, timings: dict[str, float]) -> dict[str, Any]:
        return {"synthetic": True, "description": SYNTHETIC_LABEL,
                "model": {**self.package, "name": self.spec.name, "views": list(self.spec.views),
                          "image_size": self.spec.image_size, "output_size": self.spec.output_size,
                          "output_spacing": self.spec.output_spacing,
                          "intensity": self.spec.intensity},
                "method": self.label,
                "input_kind": kind, "device": self.device.type,
                "time_s": round(time.perf_counter() - t0, 3),
                "timings_s": {k: round(v, 3) for k, v in timings.items()},
                "geometry": {"canonical_grid": self.grid.geometry_dict(),
                             "views": {v: self.spec.projection(v).to_dict() for v in self.spec.views},
                             "convention": "canonical grid = S^3 voxels of output_spacing mm "
                                           "centred at the LPS origin, identity direction; view "
                                           "geometries in that frame"},
                "torch": torch.__version__}

    # -- radiographs -----------------------------------------------------------------
    def reconstruct_views(self, views: Mapping[str, Radiograph | np.ndarray],
                          progress: ProgressCallback | None = None, *,
                          invert: bool = False, refine: RefineLike = None,
                          samples: int | None = None, seed: int | None = None
                          ) -> ReconstructionResult:
        """An sCT from radiographs, one per view of the model (``spec.views``).

        Args:
            views: view name (``"ap"``, ``"lateral"``) -> Radiograph or 2D array. Bone must
                be bright (see the module doc; ``invert`` flips them).
            progress: ``(fraction, message)`` callback; returning False cancels
                (:class:`~XRayToCTLib.errors.Cancelled`).
            invert: invert every image (bone dark -> bone bright).
            refine: fit the sCT to the radiographs afterwards (:data:`RefineLike`;
                :mod:`~XRayToCTLib.refine`). Images whose metadata say they are DRR line
                integrals are matched in absolute units, others up to a gain and offset per view.
            samples, seed: a diffusion model's samples and their seed (see :meth:`reconstruct`).

        Returns:
            a :class:`ReconstructionResult` whose ``sct`` is on the canonical grid.

        Raises:
            InputError: the views do not match the model's, or an image is unusable.
        """
        t0 = time.perf_counter()
        timings: dict[str, float] = {}
        names = list(self.spec.views)
        given = list(views)
        if sorted(given) != sorted(names):
            raise InputError(None, f"model {self.label!r} takes {len(names)} view(s) "
                                   f"({', '.join(names)}); got {len(given)} "
                                   f"({', '.join(given) or 'none'})")
        report(progress, 0.0, "preparing the radiographs")
        prepared: dict[str, Radiograph] = {}
        inputs: dict[str, Any] = {}
        warn: list[str] = []
        settings = refine_settings(refine)
        for v in names:
            img, geom = views[v], self.spec.projection(v)
            done: dict[str, Any] = {}
            arr = prepare_view(img, geom, invert=invert, record=done)
            meta = dict(img.metadata) if isinstance(img, Radiograph) else {}
            inputs[v] = {"source": meta.get("source"), "shape": list(np.shape(
                img.array if isinstance(img, Radiograph) else img)),
                "pixel_spacing": None if not isinstance(img, Radiograph) or img.pixel_spacing is None
                else list(img.pixel_spacing), "inverted": bool(invert or meta.get("inverted")),
                **done}
            stated = meta.get("view_in_file") or meta.get("view")
            if stated and _VIEW_FAMILY.get(stated, stated) != _VIEW_FAMILY.get(v, v):
                raise InputError(meta.get("source"), f"given as the {v} view, but the file "
                                                     f"says it is {stated}: views swapped?")
            if stated and stated != v:  # the same kind of view (PA given as AP, say)
                warn.append(f"the image given as {v} says it is {stated} "
                            f"({meta.get('source', 'array')})")
            g0 = img.geometry if isinstance(img, Radiograph) else None
            if g0 is not None and not np.allclose([g0.sad, g0.sid], [geom.sad, geom.sid]):
                warn.append(f"{v}: made at SAD/SID {g0.sad:g}/{g0.sid:g} mm, the model expects "
                            f"{geom.sad:g}/{geom.sid:g} mm")
            if self.harmonizer is not None:  # into the DRR domain the model was trained on
                arr = self.harmonizer.translate_array(arr)
                inputs[v]["harmonized"] = True
            keep = (("source",) if invert or meta.get("inverted") or self.harmonizer is not None
                    else ("source", "units"))
            prepared[v] = Radiograph(arr, None, geom, {**{k: meta[k] for k in keep if k in meta},
                                                       "view": v, "kind": "prepared radiograph"})
        swapped = _views_look_swapped(views, prepared)
        if swapped:
            warn.append(swapped)
        for w in warn:
            warnings.warn(w, RuntimeWarning, stacklevel=2)
        timings["prepare"] = time.perf_counter() - t0
        raw = view_stack(prepared, names)
        extra: dict[str, Any] = {}
        sct, sd, scores, reproj = self._predict(raw, prepared, settings, samples, seed, timings,
                                                extra, progress,
                                                (0.1, 0.5 if settings else 0.85, 0.95))
        info = self._info("radiographs", t0, timings)
        info.update({"inputs": inputs, "warnings": warn, "space": "canonical",
                     "invert": bool(invert), **extra})
        if self.harmonizer is not None:
            info["harmonize"] = dict(self.harmonizer.record)
        sct.metadata.update({"space": "canonical (template space translated to the origin)"})
        report(progress, 1.0, "done")
        return ReconstructionResult(sct, sct, prepared, scores, info, reproj, sd, sd)

    # -- a CT ------------------------------------------------------------------------
    def reconstruct_ct(self, ct: Volume, *, template: Volume | str | os.PathLike | None = None,
                       register: bool | str = "auto", transform: Any = None,
                       progress: ProgressCallback | None = None,
                       refine: RefineLike = None, samples: int | None = None,
                       seed: int | None = None) -> ReconstructionResult:
        """An sCT from a CT's DRRs, put back on the CT's own grid.

        Args:
            ct: the CT in HU (any grid and direction).
            template: the registration template (Volume or file; ``None``: the default
                template, see :func:`~XRayToCTLib.registration.default_template_path`).
            register: ``"auto"``, True or False (:data:`REGISTER_CHOICES`).
            transform: a known canonical -> CT transform (skips the search).
            progress: ``(fraction, message)`` callback; returning False cancels.
            refine: fit the sCT to the CT's DRRs (absolute units) before placing it
                (:data:`RefineLike`; :mod:`~XRayToCTLib.refine`).
            samples, seed: a diffusion model's samples and their seed (see :meth:`reconstruct`).

        Returns:
            a :class:`ReconstructionResult` whose ``sct`` has exactly the CT's size, spacing,
            origin and direction, and overlays the CT in physical space.
        """
        t0 = time.perf_counter()
        timings: dict[str, float] = {}
        settings = refine_settings(refine)
        tmpl, register, warn = _registration_policy(register, template, transform)
        grid1 = self.drr_grid()
        vol1, tx = pp.to_canonical(ct, grid1, register=register, template=tmpl,
                                   transform=transform, progress=scaled(progress, 0.0, 0.5))
        timings["preprocess"] = time.perf_counter() - t0
        names = list(self.spec.views)
        report(progress, 0.5, "rendering DRRs")
        t = time.perf_counter()
        drrs, self.device = run_with_cpu_fallback(
            lambda d: self.drr.to(d).render(vol1), self.device, "DRR rendering")
        timings["drr"] = time.perf_counter() - t
        extra: dict[str, Any] = {}
        sct_c, sd_c, scores, reproj = self._predict(view_stack(drrs, names), drrs, settings,
                                                    samples, seed, timings, extra, progress,
                                                    (0.55, 0.65, 0.9))
        t = time.perf_counter()
        report(progress, 0.9, "placing the sCT on the CT grid")
        sct = pp.from_canonical(sct_c, tx, ct)
        sd = None
        if sd_c is not None:  # the spread on the CT's grid too (0 outside the field)
            sd = pp.from_canonical(sd_c, tx, ct, default=0.0)
            sd.metadata.update(sd_c.metadata, space="patient (the input CT's grid)")
        _label_synthetic(sct, model=self.spec.name, space="patient (the input CT's grid)")
        timings["placement"] = time.perf_counter() - t
        # the radiographs carry their geometry in the CT's space, where the rays went
        patient_geoms = {v: tx.moved_geometry(self.spec.projection(v)) for v in names}
        for images in (drrs, reproj):
            for v, rad in images.items():
                rad.geometry = patient_geoms[v]
                rad.metadata["frame"] = "the input CT's LPS space"
        info = self._info("ct", t0, timings)
        info.update(extra)
        info["geometry"]["views_in_ct_space"] = {v: g.to_dict() for v, g in patient_geoms.items()}
        info["geometry"]["drr_grid"] = grid1.geometry_dict()
        info["field_of_view"] = _field_record(ct, tx, self.grid)
        info.update({"inputs": {"ct": ct.metadata.get("source"), "ct_grid": ct.geometry_dict()},
                     "register": bool(register), "space": "patient", "warnings": warn,
                     "canonical_to_ct": tx.to_dict(),
                     "canonical_to_ct_convention": "maps canonical LPS points (the model's "
                                                   "frame) to the input CT's LPS points"})
        report(progress, 1.0, "done")
        return ReconstructionResult(sct, sct_c, drrs, scores, info, reproj, sd, sd_c)

    def drr_grid(self) -> Grid:
        """The canonical grid a CT is resampled onto before its DRRs are rendered: the model's
        field of view at :attr:`drr_spacing` mm."""
        n = max(1, int(round(self.spec.field_mm / self.drr_spacing)))
        return canonical_grid(n, self.spec.field_mm)

    # -- the one request ---------------------------------------------------------------
    def reconstruct(self, *, ct: Volume | None = None,
                    views: Mapping[str, Radiograph | np.ndarray] | None = None,
                    register: bool | str = "auto",
                    template: Volume | str | os.PathLike | None = None,
                    invert: bool = False, refine: RefineLike = None,
                    progress: ProgressCallback | None = None, samples: int | None = None,
                    seed: int | None = None) -> ReconstructionResult:
        """An sCT from a CT **or** from radiographs: the one request every face makes.

        Args:
            ct: a CT in HU: the sCT is made from its DRRs and put back on its grid.
            views: view name -> radiograph (the model's views): the sCT is on the canonical grid.
            register: for a CT, ``"auto"`` (register when a head template is available; else
                place the head by its centre and add a warning), True (the template is
                required) or False (:data:`REGISTER_CHOICES`).
            template: the template (Volume or file; ``None``: the default one).
            invert: radiographs only: bone is dark in the images.
            refine: fit the sCT to its views afterwards (:data:`RefineLike`; with samples,
                each sample is fitted).
            progress: ``(fraction, message)`` callback.
            samples: a diffusion model's number of samples (default 1): the sCT is their
                voxel-wise **mean** (HU) and, from 2 on, ``uncertainty`` their standard
                deviation; ``info["uncertainty"]`` its summary, ``info["sampler"]`` the
                sampler's settings. Other models refuse more than 1.
            seed: the samples' random seed (default 0): the same seed, the same samples.

        Raises:
            InputError: both or neither input given, or an unusable input.
        """
        if ct is not None and views:
            raise InputError(None, "both a CT and radiographs were given: reconstruct from one "
                                   "of them (the CT's own DRRs, or the radiographs)")
        if ct is None and not views:
            raise InputError(None, "nothing to reconstruct from: no CT and no radiographs")
        if ct is not None and self.harmonizer is not None:
            raise InputError(None, "harmonisation translates radiographs into the DRR domain; "
                                   "a CT is reconstructed from its own DRRs, which need none")
        if ct is not None:
            return self.reconstruct_ct(ct, template=template, register=register,
                                       progress=progress, refine=refine, samples=samples,
                                       seed=seed)
        return self.reconstruct_views(views, progress, invert=invert, refine=refine,
                                      samples=samples, seed=seed)


def _check_samples(model: torch.nn.Module, label: str, samples: int | None) -> int | None:
    """The number of samples to draw: ``samples`` (default 1) for a model that samples,
    None (one forward pass) for the others, which refuse more than one."""
    if samples is not None and (isinstance(samples, bool) or int(samples) != samples
                                or int(samples) < 1):
        raise InputError(None, f"the number of samples must be 1 or more, got {samples}")
    if not hasattr(model, "sample"):
        if samples is not None and int(samples) > 1:
            raise InputError(None, f"model {label!r} ({model.spec.name}) makes one sCT per "
                                   f"input: only a diffusion model draws several samples")
        return None
    return 1 if samples is None else int(samples)


def _mean_volume(draws: list[Volume]) -> Volume:
    """The voxel-wise mean of volumes on one grid (float32 HU)."""
    mean = np.mean(np.stack([d.array for d in draws]), axis=0).astype(np.float32)
    return draws[0].with_array(mean)


def uncertainty_summary(sct_hu: np.ndarray, sd_hu: np.ndarray,
                        high_hu: float = UNCERTAINTY_HIGH_HU) -> dict[str, Any]:
    """The summary of an uncertainty map for the JSON: the mean spread (SD, HU) inside the
    head of the sCT (:func:`~XRayToCTLib.hu.head_mask`: above the head threshold, largest
    piece, holes filled), the share of head voxels whose spread is above ``high_hu``, and
    the spread's maximum and median there."""
    sd = np.asarray(sd_hu, dtype=np.float64)
    head = np.asarray(head_mask(np.asarray(sct_hu)), dtype=bool)
    inside = sd[head]
    n = int(inside.size)
    return {"head_voxels": n,
            "mean_sd_head_hu": float(inside.mean()) if n else None,
            "median_sd_head_hu": float(np.median(inside)) if n else None,
            "max_sd_head_hu": float(inside.max()) if n else None,
            f"share_head_sd_above_{high_hu:g}_hu": float((inside > high_hu).mean()) if n else None,
            "definition": "voxel standard deviation (ddof 1) across the samples, in HU; the "
                          "head is the mean sCT's (above -500 HU, largest piece, holes filled)"}


def uncertainty_path(out: str | os.PathLike) -> Path:
    """Where :func:`write_result` puts the uncertainty of ``out``: ``sct.nii.gz`` ->
    ``sct_uncertainty.nii.gz`` (the same format; NIfTI beside a DICOM folder)."""
    p = Path(out)
    stem = p.name.split(".")[0]
    suffix = p.name[len(stem):] if p.suffix else ".nii.gz"
    return p.with_name(f"{stem}_uncertainty{suffix}")


def _field_record(ct: Volume, canonical_to_ct: RigidTransform, model_grid: Grid) -> dict[str, Any]:
    """What of the CT lies outside the model's field of view (where the sCT holds no model
    output, only air), for the JSON and the Slicer node: the share of the CT's voxels and of
    its head (voxels above the head threshold, largest piece) outside the field."""
    inside = field_of_view_mask(Grid.of(ct), canonical_to_ct, model_grid)
    head = head_mask(np.asarray(ct.array))
    n_head = int(head.sum())
    return {"volume_outside_fraction": float(1.0 - inside.mean()),
            "head_outside_fraction": None if n_head == 0 else
            float(1.0 - np.logical_and(head, inside).sum() / n_head),
            "outside_value_hu": AIR_HU,
            "note": f"the model sees a {model_grid.field_mm[0]:g} mm cube (the canonical grid "
                    "through canonical_to_ct); the sCT holds air there outside it: not a "
                    "prediction. `xraytoct evaluate` scores only inside the field."}


def _registration_policy(register: bool | str, template: Any, transform: Any
                         ) -> tuple[Volume | None, bool, list[str]]:
    """``(template, register, warnings)`` for a CT input under :data:`REGISTER_CHOICES`."""
    if register not in REGISTER_CHOICES:
        raise ValueError(f"register must be one of {REGISTER_CHOICES}, got {register!r}")
    if transform is not None or register is False:
        return None, bool(register), []
    tmpl = resolve_template(template, needed=register is True)
    if tmpl is None:
        return None, False, ["no head CT template is available, so the CT was not registered: "
                             "it was placed by its head centre in its own axes, and a model "
                             "trained on template-aligned heads may see it tilted"]
    return tmpl, True, []


def reconstruct(model: str | os.PathLike | torch.nn.Module, *, ct: Volume | None = None,
                views: Mapping[str, Radiograph | np.ndarray] | None = None,
                register: bool | str = "auto", template: Volume | str | os.PathLike | None = None,
                invert: bool = False, device: str | torch.device = "auto",
                refine: RefineLike = None,
                progress: ProgressCallback | None = None,
                harmonize: str | os.PathLike | torch.nn.Module | None = None,
                samples: int | None = None, seed: int | None = None
                ) -> ReconstructionResult:
    """Load ``model`` (and the ``harmonize`` model, if any) and run
    :meth:`Reconstructor.reconstruct` (see there)."""
    return Reconstructor(model, device, harmonize=harmonize).reconstruct(
        ct=ct, views=views, register=register, template=template, invert=invert,
        refine=refine, progress=progress, samples=samples, seed=seed)


def _load(name_or_path: str | os.PathLike) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A catalog name or a package file -> (model on the CPU, provenance); a catalog
    package's SHA-256 is checked (``models.load_model``; InputError on any problem)."""
    model, info = load_model(name_or_path, device="cpu")
    keep = ("size", "training_data", "validation", "created", "software",
            "dtype", "catalog")
    return model, {"name": info.get("model"), "file": info.get("path"),
                   "sha256": info.get("sha256"), **{k: info.get(k) for k in keep}}


# ----------------------------------------------------------------------------------------
# writing
# ----------------------------------------------------------------------------------------
def sidecar_path(out: str | os.PathLike) -> Path:
    """``sct.nii.gz`` -> ``sct.json``; a DICOM folder ``sct`` -> ``sct.json`` beside it."""
    p = Path(out)
    return p.with_name(p.name.split(".")[0] + ".json")


def check_output_path(out: str | os.PathLike) -> Path:
    """Refuse an output :func:`write_result` could not write, before any work is done:
    InputError for an unknown file extension, a parent that is a file, or a non-empty
    existing folder (a DICOM series needs a new or empty one). A missing parent folder is
    created (as a user asking for ``out/sct.nii.gz`` expects)."""
    p = Path(out)
    parent = p.parent if str(p.parent) else Path(".")
    if p.suffix != "" and not p.is_dir():
        xio.volume_format(p)
    for up in (parent, *parent.parents):
        if up.exists():
            if not up.is_dir():
                raise InputError(p, f"{up} is a file, not a folder")
            break
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(p, f"cannot create the folder {parent}: {err.strerror or err}") from None
    if p.suffix == "" or p.is_dir():
        if p.exists() and (not p.is_dir() or any(p.iterdir())):
            raise InputError(p, "the output folder for a DICOM series exists and is not empty")
    return p


def _write_sct_file(volume: Volume, path: Path) -> None:
    """The sCT as int16 HU (rounded, as CT scanners store them: a 256^3 NIfTI compresses in
    a sixth of the float32 time); NIfTI gets the label in its ``descrip`` field, NRRD/MHA
    their header keys through io.write_volume."""
    hu = np.clip(np.round(volume.array), -32768, 32767).astype(np.int16)
    volume = volume.with_array(hu)
    if xio.volume_format(path) != "nifti":
        xio.write_volume(volume, path)
        return
    img = xio.volume_to_sitk(Volume(hu, volume.spacing, volume.origin, volume.direction))
    img.SetMetaData("ITK_FileNotes", SYNTHETIC_LABEL)
    xio.write_sitk_image(img, path)


def _write_uncertainty_file(volume: Volume, path: Path) -> None:
    """An uncertainty map as float32 HU; NIfTI gets :data:`UNCERTAINTY_LABEL` in its
    ``descrip`` field, NRRD/MHA the metadata (synthetic, description, units) in the header."""
    volume = volume.with_array(np.asarray(volume.array, dtype=np.float32))
    if xio.volume_format(path) != "nifti":
        xio.write_volume(volume, path)
        return
    img = xio.volume_to_sitk(Volume(volume.array, volume.spacing, volume.origin, volume.direction))
    img.SetMetaData("ITK_FileNotes", UNCERTAINTY_LABEL)
    xio.write_sitk_image(img, path)


def write_result(result: ReconstructionResult, out: str | os.PathLike, *,
                 source: Any = None, extra: dict[str, Any] | None = None) -> list[Path]:
    """Write an sCT and its companions; returns the written paths.

    ``out`` is a volume file (``.nii.gz``, ``.nii``, ``.nrrd``, ``.mha``: int16 HU, written
    atomically)
    or a folder (no extension, or an existing folder: a DICOM CT series via
    :func:`~XRayToCTLib.io.write_dicom_series` with ``synthetic=True``; ``source`` is the
    CT whose study/frame of reference to carry, only for a CT input). Beside it:
    ``<stem>_<view>_input.nrrd`` (the images the model saw: the given radiographs or the
    CT's DRRs), ``<stem>_<view>_reprojection.nrrd`` (the sCT's DRRs) and ``<stem>.json``
    (the sidecar, ``files`` keys ``<view>_input`` / ``<view>_reprojection``, and
    ``uncertainty`` for ``<stem>_uncertainty.<ext>``, the samples' voxel SD in HU as float32,
    labelled :data:`UNCERTAINTY_LABEL`, when the result has one:
    model name and sha256, inputs, device, time, consistency, geometry, ``"synthetic": true``).
    """
    p = check_output_path(out)
    written: list[Path] = []
    if p.suffix == "" or p.is_dir():
        written += xio.write_dicom_series(result.sct, p, source=source, synthetic=True)
    else:
        _write_sct_file(result.sct, p)
        written.append(p)
    stem = p.name.split(".")[0]
    files: dict[str, Any] = {"sct": str(p)}
    if result.uncertainty is not None:  # several samples: their spread, on the sCT's grid
        u = uncertainty_path(p)
        _write_uncertainty_file(result.uncertainty, u)
        files["uncertainty"] = str(u)
        written.append(u)
    for v, rad in result.drrs.items():  # what the model saw, whatever the input kind
        f = xio.write_radiograph(rad, p.with_name(f"{stem}_{v}_input.nrrd"))
        files[f"{v}_input"] = str(f)
        written.append(f)
    for v, rad in result.reprojections.items():
        f = xio.write_radiograph(rad, p.with_name(f"{stem}_{v}_reprojection.nrrd"))
        files[f"{v}_reprojection"] = str(f)
        written.append(f)
    side = sidecar_path(p)
    data = {**result.to_dict(), "files": files, **(extra or {})}
    xio.write_json(side, data, ensure_ascii=False)
    written.append(side)
    return written
