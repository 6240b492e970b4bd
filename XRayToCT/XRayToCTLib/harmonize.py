"""Harmonisation: a radiograph translated into the DRR domain the reconstruction models were
trained on, by a 2D translation model (``pix2pix``, seed 003; issue 12).

Real radiographs are not DRRs (a polychromatic beam, scatter, blur, noise, the vendor's
look-up tables and edge enhancement, collimation, markers: :mod:`~XRayToCTLib.simulate`
models them), and a model that has only seen DRRs loses accuracy on them (seed 000: SSIM
0.782 -> 0.717). A harmoniser is trained on (simulated radiograph, DRR) pairs
(:mod:`~XRayToCTLib.pairs`) and applied before the reconstruction model:

* :class:`Harmonizer` loads one (a catalog name or a ``.safetensors`` package; anything but a
  2D translation model is refused) and translates images: :meth:`Harmonizer.translate_array`
  (a 2D array of any size -> the same size) and :meth:`Harmonizer.harmonize` (a
  :class:`~XRayToCTLib.geometry.Radiograph` -> a Radiograph with the same pixel spacing,
  geometry and view, its metadata saying it was harmonised and by which model);
* :func:`evaluate_pairs` (``xraytoct harmonize PAIRS --model M --evaluate``) scores a
  harmoniser on a pairs folder's test split with seed 003's 2D metrics (PSNR, SSIM, FSIM),
  each input against its target before and after harmonisation;
* :func:`harmonize_file` (``xraytoct harmonize IN --model M --out OUT``) reads, translates
  and writes one file; :class:`~XRayToCTLib.inference.Reconstructor` takes ``harmonize=M``
  (``xraytoct reconstruct --harmonize M``) and translates each view after bringing it onto
  the model's detector.

How an image is translated: it must be bone bright (``invert`` flips one where bone is
dark; MONOCHROME1 DICOM is already inverted by the reader); it is resized to the
harmoniser's ``P x P`` (the whole image: the harmoniser was trained on whole detector
images of the reconstruction models' 400 mm detector), scaled to [0, 1] by
:func:`~XRayToCTLib.drr.normalize_views`, translated, and resized back to the image's own
size (bilinear). The output is in the normalised DRR domain, [0, 1] (the reconstruction
models normalise their inputs the same way, so they read it as a DRR).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .drr import resolve_device
from .errors import InputError
from .geometry import Radiograph
from .io import read_radiograph, write_radiograph
from .models import load_model
from .metrics import fsim, psnr, ssim
from .models.pix2pix import is_translation
from .pairs import PairDataset, prepare_image

__all__ = ["Harmonizer", "harmonize", "harmonize_file", "evaluate_pairs", "HARMONIZED_UNITS",
           "PAIR_METRICS"]

HARMONIZED_UNITS = "normalised DRR domain, [0, 1], bone bright (harmonised)"
"""The ``units`` of a harmonised image."""


class Harmonizer:
    """A loaded 2D translation model, ready to harmonise radiographs.

    Args:
        model: a catalog name, a ``.safetensors`` package, or an ``nn.Module`` with a
            translation ``.spec`` (tests, embedding).
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.

    Raises:
        InputError: unknown or corrupt package, or a model that is not a 2D translation model
            (a reconstruction model).
    """

    def __init__(self, model: str | os.PathLike | torch.nn.Module,
                 device: str | torch.device = "cpu") -> None:
        self.device = resolve_device(device)
        if isinstance(model, torch.nn.Module):
            self.model, info = model, {}
            self.label = str(getattr(getattr(model, "spec", None), "name", type(model).__name__))
        else:
            self.model, info = load_model(model, device="cpu")
            self.label = Path(model).stem if str(model).endswith(".safetensors") else str(model)
        if not is_translation(self.model):
            raise InputError(None if isinstance(model, torch.nn.Module) else os.fspath(model),
                             "is a reconstruction model, not a harmoniser (a 2D translation "
                             "model such as pix2pix)")
        self.model.to(self.device).eval()
        self.spec = self.model.spec
        self.record: dict[str, Any] = {
            "model": self.label, "architecture": self.spec.name,
            "file": Path(info["path"]).name if info.get("path") else None,
            "sha256": info.get("sha256"), "input_domain": self.spec.input_domain,
            "target_domain": self.spec.target_domain, "image_size": self.spec.image_size}
        """What harmonised an image (recorded in its metadata and in reconstruction JSONs)."""

    def translate_array(self, image: np.ndarray, *, invert: bool = False) -> np.ndarray:
        """A bone-bright 2D image (any size) translated into the target domain: float32 of
        the same shape, in [0, 1] (see the module doc). InputError for NaN values or an image
        that is not 2D."""
        arr = np.asarray(image, dtype=np.float32)
        if arr.ndim != 2 or min(arr.shape) < 2:
            raise InputError(None, f"a radiograph must be a 2D image, got shape {arr.shape}")
        if not np.all(np.isfinite(arr)):
            raise InputError(None, "the radiograph holds NaN or infinite values")
        if invert:
            arr = (float(arr.max()) + float(arr.min())) - arr
        x = prepare_image(arr, self.spec.image_size)[None].to(self.device)
        with torch.no_grad():
            y = self.model(x).float()
        if tuple(y.shape[-2:]) != arr.shape:
            y = F.interpolate(y, size=arr.shape, mode="bilinear", align_corners=False)
        return np.ascontiguousarray(y[0, 0].clamp(0.0, 1.0).cpu().numpy(), dtype=np.float32)

    def harmonize(self, image: Radiograph | np.ndarray, *, invert: bool = False) -> Radiograph:
        """A radiograph translated into the DRR domain: the same pixel spacing, geometry and
        view; ``metadata["harmonized"]`` is :attr:`record`, ``units``
        :data:`HARMONIZED_UNITS`, ``kind`` ``"harmonised radiograph"``."""
        if isinstance(image, Radiograph):
            meta = dict(image.metadata or {})
            try:
                arr = self.translate_array(image.array, invert=invert)
            except InputError as err:
                raise InputError(meta.get("source"), err.problem) from None
            spacing, geometry = image.pixel_spacing, image.geometry
        else:
            arr, spacing, geometry, meta = self.translate_array(image, invert=invert), None, None, {}
        meta.update({"harmonized": dict(self.record), "units": HARMONIZED_UNITS,
                     "kind": "harmonised radiograph",
                     "harmonized_from": {k: meta.get(k) for k in ("kind", "units", "source")
                                         if meta.get(k) is not None}})
        meta.pop("inverted", None)
        return Radiograph(arr, spacing, geometry, meta)


def harmonize(image: Radiograph | np.ndarray, model: str | os.PathLike | torch.nn.Module, *,
              invert: bool = False, device: str | torch.device = "cpu") -> Radiograph:
    """Load ``model`` and :meth:`Harmonizer.harmonize` one image."""
    return Harmonizer(model, device).harmonize(image, invert=invert)


def harmonize_file(path: str | os.PathLike, model: str | os.PathLike | torch.nn.Module,
                   out: str | os.PathLike, *, view: str | None = None, invert: bool = False,
                   device: str | torch.device = "cpu") -> Path:
    """Read a radiograph (anything :func:`~XRayToCTLib.io.read_radiograph` reads), harmonise
    it and write it to ``out`` (NRRD, MetaImage or NIfTI; NRRD and MetaImage keep the
    geometry and the metadata, which say it was harmonised and by which model). ``view``
    names the view when the file does not. Returns ``out``."""
    image = read_radiograph(path, view=view)
    image.metadata.setdefault("source", os.fspath(path))
    result = Harmonizer(model, device).harmonize(image, invert=invert)
    return write_radiograph(result, out)


PAIR_METRICS = ("psnr", "ssim", "fsim")
"""Seed 003's 2D metrics, as :func:`evaluate_pairs` computes them on [0, 1] images: PSNR
with data range 1 (:func:`~XRayToCTLib.metrics.psnr`), 2D Gaussian-window SSIM
(:func:`~XRayToCTLib.metrics.ssim`, sigma 1.5 px), FSIM (Zhang et al. 2011,
:func:`~XRayToCTLib.metrics.fsim`: phase congruency and gradient magnitude)."""


def evaluate_pairs(root: str | os.PathLike, model: str | os.PathLike | torch.nn.Module | None,
                   *, split: str = "test", device: str | torch.device = "cpu"
                   ) -> dict[str, Any]:
    """Score a harmoniser on the pairs of one split (:class:`~XRayToCTLib.pairs.PairDataset`):
    every input and every harmonised input against its target, at the harmoniser's image
    size (the pairs' size without a model), all normalised to [0, 1] as the models take them.

    Returns ``{"split", "pairs", "before": {metric: {"mean", "std"}}, "after": {...},
    "per_pair": [{"id", "before": {...}, "after": {...}}], "harmonizer": record}``
    (``after`` and ``harmonizer`` only with a model). InputError for a split with no pairs."""
    h = Harmonizer(model, device) if model is not None else None
    ds = PairDataset(root, split, h.spec.image_size if h is not None else None)
    if len(ds) == 0:
        raise InputError(Path(root) / split, f"no {split} pairs to evaluate")
    rows: list[dict[str, Any]] = []
    for i in range(len(ds)):
        item = ds[i]
        x, y = item["input"][None], item["target"][None]
        row: dict[str, Any] = {"id": item["id"], "before": _pair_scores(x, y)}
        if h is not None:
            with torch.no_grad():
                out = h.model(x.to(h.device)).float().cpu()
            row["after"] = _pair_scores(out, y)
        rows.append(row)
    result: dict[str, Any] = {"split": split, "pairs": len(rows),
                              "images": f"{ds.pixels} x {ds.pixels}, normalised to [0, 1]"}
    for stage in ("before", "after"):
        if stage not in rows[0]:
            continue
        result[stage] = {}
        for m in PAIR_METRICS:
            v = np.array([r[stage][m] for r in rows], dtype=np.float64)
            v = v[np.isfinite(v)]
            result[stage][m] = {"mean": float(v.mean()) if v.size else float("nan"),
                                "std": float(v.std()) if v.size else float("nan")}
    if h is not None:
        result["harmonizer"] = dict(h.record)
    result["per_pair"] = rows
    return result


def _pair_scores(pred: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    return {"psnr": float(psnr(pred, target, data_range=1.0)[0]),
            "ssim": float(ssim(pred, target, data_range=1.0)[0]),
            "fsim": float(fsim(target, pred, data_range=1.0)[0])}
