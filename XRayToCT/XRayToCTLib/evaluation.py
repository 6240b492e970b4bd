"""Batch evaluation of sCT predictions against ground-truth CTs, with baselines.

Pairing: a case id is a file name without its extension (``.nii.gz``, ``.nii``, ``.nrrd``,
``.nhdr``, ``.mha``, ``.mhd``); a ground-truth folder may also be a dataset
(``DIR/cases/<id>/ct.nii.gz``, as ``xraytoct prepare`` writes it). Each prediction folder is a
model. A prediction on another grid than its ground truth is resampled onto the ground
truth's grid through physical (LPS) space (linear; outside the prediction: air, -1000 HU, and
the covered fraction is recorded); no overlap fails the case with its reason. Every failure
(unreadable file, NaN voxels, no overlap, missing partner) is listed and the batch goes on.

Baselines (what no model achieves; reports show each model's gain over them):

* ``template``: one volume for every case: the voxel-wise mean of the training-split targets of
  a dataset (``manifest.json`` + ``cases/<id>/ct.nii.gz``; each resampled onto the first one's
  grid if they differ), or a given template file (HU), resampled onto each case's grid.
* ``backprojection``: the plain (unfiltered) back-projection of the case's two DRRs
  (``cases/<id>/ap.nrrd`` and ``lateral.nrrd`` with their ProjectionGeometry from the NRRD
  header, else ``cases/<id>/geometry.json`` or the manifest). A DRR pixel is the line integral
  of mu / 10 (see :mod:`~XRayToCTLib.drr`); divided by the ray's own chord length through the
  ground truth's grid (the DRR of a grid of ones, same renderer) it is the ray's mean
  attenuation per mm. Each voxel gets the mean, over the views whose detector it projects
  onto, of the mean attenuation of the ray through it (bilinear on the detector), and
  ``HU = 1000 * (mu / 0.022 - 1)``; a voxel seen by no view is air (-1000 HU).
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import re
from io import StringIO
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from . import metrics as M
from .constants import AIR_HU, MU_WATER_PER_MM
from .drr import DRR
from .errors import Cancelled, InputError, XRayToCTError
from .geometry import ProjectionGeometry, Radiograph, Volume
from .io import read_radiograph, read_volume, write_json, write_text
from .preprocess import resample_to_grid, window_to_hu
from .progress import ProgressCallback, report, scaled
from .report import comparison_png, write_html_report
from .stats import higher_is_better, summarize

__all__ = ["VOLUME_SUFFIXES", "CSV_COLUMNS", "BASELINES", "case_id", "find_volumes", "align",
           "template_from_dataset", "template_baseline", "backprojection_baseline",
           "read_case_views", "EvaluationResult", "evaluate", "write_csv"]

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
CSV_COLUMNS = ("case", "model", "metric", "window", "region", "value")
BASELINES = ("template", "backprojection")


# ----------------------------------------------------------------------------------------
# finding and pairing files
# ----------------------------------------------------------------------------------------
_SIDECAR = re.compile(r".+_(ap|pa|lateral|lateral_left)_(drr|input|reprojection)")


def case_id(path: str | os.PathLike) -> str:
    """A file's case id: its name without a volume extension (``a/b/c01.nii.gz`` -> ``c01``);
    for the dataset layout ``cases/<id>/ct.nii.gz``, ``<id>``."""
    p = Path(path)
    name = p.name
    for suf in VOLUME_SUFFIXES:
        if name.lower().endswith(suf):
            name = name[: -len(suf)]
            break
    if name == "ct" and p.parent.parent.name == "cases":
        return p.parent.name
    return name


def find_volumes(folder: str | os.PathLike) -> dict[str, Path]:
    """``{case id: file}`` of the volumes in ``folder`` (top level), or of
    ``folder/cases/<id>/ct.*`` for a dataset folder. Two files with one id is an error; the
    2D images ``xraytoct reconstruct`` writes beside an sCT (``<id>_<view>_drr|input|
    reprojection.nrrd``) are not cases."""
    root = Path(folder)
    if not root.is_dir():
        raise InputError(root, "not a folder")
    files = [p for p in sorted(root.iterdir())
             if p.is_file() and p.name.lower().endswith(VOLUME_SUFFIXES) and not p.name.startswith(".")]
    if not files and (root / "cases").is_dir():
        files = [p for d in sorted((root / "cases").iterdir()) if d.is_dir()
                 for p in sorted(d.iterdir())
                 if p.is_file() and p.name.lower().startswith("ct.") and p.name.lower().endswith(VOLUME_SUFFIXES)]
    out: dict[str, Path] = {}
    for p in files:
        cid = case_id(p)
        if _SIDECAR.fullmatch(cid):  # the 2D images `xraytoct reconstruct` writes beside an sCT
            continue
        if cid in out:
            raise InputError(root, f"two volumes for case {cid!r}: {out[cid].name} and {p.name}")
        out[cid] = p
    if not out:
        raise InputError(root, "no volumes found (.nii.gz, .nii, .nrrd, .mha, or a dataset's "
                               "cases/<id>/ct.nii.gz)")
    return out


def _read_hu(path: Path) -> Volume:
    """A volume in HU: a dataset target stored windowed (metadata ``window``) is mapped back."""
    vol = read_volume(path)
    win = vol.metadata.get("window")
    if win is not None and str(vol.metadata.get("units", "")).startswith("window"):
        vol = window_to_hu(vol, tuple(float(v) for v in win))
    return vol


# ----------------------------------------------------------------------------------------
# alignment
# ----------------------------------------------------------------------------------------
def align(pred: Volume | np.ndarray, gt: Volume | np.ndarray, *,
          name: str | os.PathLike | None = None) -> tuple[np.ndarray, float]:
    """The prediction's values on the ground truth's grid, and the fraction of the ground
    truth's voxels it covers.

    Two Volumes on different grids: linear resampling through LPS space (outside the
    prediction: -1000 HU). Arrays (no geometry) must have the same shape. Raises
    :class:`InputError` for a shape mismatch without geometry and for no overlap."""
    if isinstance(pred, Volume) and isinstance(gt, Volume):
        if M.grids_match(pred, gt):
            return np.asarray(pred.array), 1.0
        res = resample_to_grid(pred, gt, None, "linear", default=math.nan).array
        outside = np.isnan(res)
        covered = 1.0 - float(outside.mean())
        if covered == 0.0:
            raise InputError(name, "the prediction does not overlap the ground truth in "
                                   "physical space (check origin/direction)")
        res[outside] = AIR_HU
        return res, covered
    p = pred.array if isinstance(pred, Volume) else np.asarray(pred)
    g = gt.array if isinstance(gt, Volume) else np.asarray(gt)
    if p.shape != g.shape:
        raise InputError(name, f"shape mismatch {p.shape} vs the ground truth's {g.shape} and "
                               "no geometry to resample with")
    return p, 1.0


# ----------------------------------------------------------------------------------------
# baselines
# ----------------------------------------------------------------------------------------
def _manifest(dataset: Path) -> dict[str, Any]:
    path = dataset / "manifest.json"
    if not path.is_file():
        raise InputError(dataset, "not a dataset: manifest.json is missing")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise InputError(path, f"unreadable manifest: {err}") from err


def _split_ids(manifest: Mapping[str, Any], split: str) -> list[str]:
    """Case ids of ``split`` from the manifest's ``cases`` (a list of dicts with ``id`` and
    ``split``, or a dict id -> {split}) or from ``splits`` (split -> ids)."""
    ids: list[str] = []
    cases = manifest.get("cases")
    if isinstance(cases, list):
        ids = [str(c.get("id", c.get("case"))) for c in cases
               if isinstance(c, Mapping) and c.get("split") == split]
    elif isinstance(cases, Mapping):  # data.py's manifest: id -> {"split", "status", ...}
        ids = [str(k) for k, c in cases.items() if isinstance(c, Mapping) and c.get("split") == split
               and c.get("status", "complete") == "complete"]
    if not ids and isinstance(manifest.get("splits"), Mapping):
        ids = [str(i) for i in manifest["splits"].get(split, [])]
    return ids


def template_from_dataset(dataset: str | os.PathLike, *, split: str = "train",
                          progress: ProgressCallback | None = None) -> Volume:
    """The voxel-wise mean (HU) of a dataset's ``split`` targets ``cases/<id>/ct.*``, on the
    first target's grid (others resampled onto it through LPS space)."""
    root = Path(dataset)
    ids = _split_ids(_manifest(root), split)
    if not ids:
        raise InputError(root / "manifest.json", f"no case of split {split!r}")
    vols = find_volumes(root)
    missing = [i for i in ids if i not in vols]
    if missing:
        raise InputError(root, f"{len(missing)} {split} case(s) without ct volume, e.g. {missing[0]}")
    ref = None
    total = None
    for n, cid in enumerate(ids):
        v = _read_hu(vols[cid])
        if ref is None:
            ref = v
            total = np.zeros(v.array.shape, np.float64)
        arr = v.array if M.grids_match(v, ref) else resample_to_grid(v, ref, None, "linear", AIR_HU).array
        total += arr
        report(progress, (n + 1) / len(ids), f"template: {cid}")
    assert ref is not None and total is not None
    return ref.with_array((total / len(ids)).astype(np.float32), kind="template baseline",
                          template_cases=len(ids), template_split=split)


def template_baseline(template: Volume, gt: Volume) -> np.ndarray:
    """The template on ``gt``'s grid (linear through LPS space; outside it: air)."""
    if M.grids_match(template, gt):
        return np.asarray(template.array, dtype=np.float32)
    return resample_to_grid(template, gt, None, "linear", AIR_HU).array


def _geometries_from_json(d: Mapping[str, Any]) -> dict[str, ProjectionGeometry]:
    views = d.get("views", d.get("geometry", d))
    if isinstance(views, Mapping) and "views" in views:
        views = views["views"]
    out = {}
    if isinstance(views, Mapping):
        for k in ("ap", "lateral"):
            if isinstance(views.get(k), Mapping):
                out[k] = ProjectionGeometry.from_dict(views[k])
    return out


def read_case_views(dataset: str | os.PathLike, cid: str) -> dict[str, Radiograph]:
    """The AP and lateral DRRs of a dataset case, each with its ProjectionGeometry (from the
    NRRD header, else ``cases/<id>/geometry.json``, else the manifest's ``geometry``)."""
    d = Path(dataset) / "cases" / cid
    rads = {}
    for view in ("ap", "lateral"):
        f = next((d / f"{view}{s}" for s in (".nrrd", ".nii.gz", ".mha") if (d / f"{view}{s}").is_file()), None)
        if f is None:
            raise InputError(d, f"no {view} DRR ({view}.nrrd) for the back-projection baseline")
        rads[view] = read_radiograph(f, view=view)
    if any(r.geometry is None for r in rads.values()):
        geoms: dict[str, ProjectionGeometry] = {}
        for src in (d / "geometry.json", Path(dataset) / "manifest.json"):
            if src.is_file() and not geoms:
                try:
                    geoms = _geometries_from_json(json.loads(src.read_text()))
                except (OSError, ValueError, TypeError) as err:
                    raise InputError(src, f"unreadable geometry: {err}") from err
        for view, r in rads.items():
            if r.geometry is None:
                if view not in geoms:
                    raise InputError(d, f"no projection geometry for the {view} DRR")
                rads[view] = Radiograph(r.array, None, geoms[view], r.metadata)
    return rads


def backprojection_baseline(views: Mapping[str, Radiograph] | Sequence[Radiograph],
                            grid: Volume) -> np.ndarray:
    """Plain unfiltered back-projection of DRRs onto ``grid`` (its voxel values unused), in HU
    ``[k, j, i]`` float32; see the module doc for the definition."""
    rads = list(views.values()) if isinstance(views, Mapping) else list(views)
    if not rads or any(r.geometry is None for r in rads):
        raise InputError(None, "back-projection needs radiographs with their projection geometry")
    geoms = [r.geometry for r in rads]
    shape = grid.array.shape
    with torch.no_grad():
        ones = torch.ones((1, 1, *shape), dtype=torch.float32)
        # the DRR of mu = 1/mm is the chord length / 10, the same units as the DRR pixels
        chords = [DRR([g], grid).project_mu(ones)[0, 0] for g in geoms]
    pts = grid.voxel_points()  # flat [k, j, i] order
    total = np.zeros(pts.shape[0])
    count = np.zeros(pts.shape[0])
    for rad, g, chord in zip(rads, geoms, chords):
        img = torch.from_numpy(np.asarray(rad.array, dtype=np.float32))
        mean_mu = torch.where(chord > 1e-3, img / chord.clamp(min=1e-3), torch.zeros_like(img))
        rc = g.project(pts)  # (row, col), continuous
        rows, cols = g.pixels
        inside = (rc[:, 0] >= -0.5) & (rc[:, 0] <= rows - 0.5) & (rc[:, 1] >= -0.5) & (rc[:, 1] <= cols - 0.5)
        # grid_sample coordinates (align_corners=False): x = (2 col + 1) / cols - 1
        gxy = np.stack([(2 * rc[:, 1] + 1) / cols - 1, (2 * rc[:, 0] + 1) / rows - 1], axis=1)
        samp = torch.nn.functional.grid_sample(
            mean_mu[None, None], torch.from_numpy(gxy.astype(np.float32))[None, None],
            mode="bilinear", padding_mode="border", align_corners=False)[0, 0, 0].double().numpy()
        total += np.where(inside, samp, 0.0)
        count += inside
    mu = np.where(count > 0, total / np.maximum(count, 1), 0.0)
    hu = 1000.0 * (mu / MU_WATER_PER_MM - 1.0)
    return hu.reshape(shape).astype(np.float32)


# ----------------------------------------------------------------------------------------
# the batch
# ----------------------------------------------------------------------------------------
@dataclasses.dataclass
class EvaluationResult:
    """What :func:`evaluate` found: ``rows`` (dicts with :data:`CSV_COLUMNS`), ``failures``
    (dicts ``case, model, reason``), ``coverage`` (``(case, model) -> fraction`` of the
    ground truth covered by a resampled prediction, when < 1), the model and baseline names,
    the files of each case, and the settings."""

    rows: list[dict[str, Any]]
    failures: list[dict[str, str]]
    models: list[str]
    baselines: list[str]
    gt_files: dict[str, Path]
    pred_files: dict[str, dict[str, Path]]
    coverage: dict[tuple[str, str], float]
    settings: dict[str, Any]


def _model_names(preds: Sequence[str | os.PathLike], names: Sequence[str] | None) -> list[str]:
    if names:
        if len(names) != len(preds):
            raise InputError(None, f"{len(names)} model names for {len(preds)} prediction "
                                   "folders: give one name per prediction folder or none")
        out = list(names)
    else:
        out = [Path(p).resolve().name or str(p) for p in preds]
    if len(set(out)) != len(out):
        raise InputError(None, f"model names must differ, got {out}")
    bad = [n for n in out if n in BASELINES]
    if bad:
        raise InputError(None, f"model name {bad[0]!r} is a baseline's name")
    return out


def evaluate(preds: Sequence[str | os.PathLike], gt: str | os.PathLike, *,
             names: Sequence[str] | None = None,
             windows: Sequence[str] = ("brain", "full"), regions: Sequence[str] = ("head", "whole"),
             metrics: Sequence[str] = ("ssim", "ssim_slices", "psnr", "mse", "mae_hu", "cosine"),
             baselines: Sequence[str] = (), template: str | os.PathLike | Volume | None = None,
             dataset: str | os.PathLike | None = None, split: str | None = None,
             progress: ProgressCallback | None = None) -> EvaluationResult:
    """Evaluate every prediction folder against the ground-truth folder (see module doc).

    Args:
        preds: prediction folders, one per model (files named by case id).
        gt: ground-truth folder (files named by case id, or a dataset folder).
        names: model names (default: the folders' names).
        windows, regions, metrics: as :func:`~XRayToCTLib.metrics.evaluate_pair`.
        baselines: any of ``template`` and ``backprojection``.
        template: template volume (file or Volume, HU) for the ``template`` baseline (default:
            the mean of ``dataset``'s training targets).
        dataset: dataset folder (``manifest.json``, ``cases/<id>/``): training targets for the
            template, DRRs for the back-projection and the triptychs' input views; defaults to
            ``gt`` when that is a dataset.
        split: only the ground-truth cases of this split of ``dataset``'s manifest (e.g.
            ``"test"``: the template baseline is the mean of the training split, so judge it
            on other cases); ``None``: every case.
        progress: callback ``(fraction, message)``; returning False cancels.
    """
    for b in baselines:
        if b not in BASELINES:
            raise InputError(None, f"unknown baseline {b!r}; choose from {list(BASELINES)}")
    for w in windows:
        M.window_range(w)
    unknown = [m for m in metrics if m not in M.ALL_METRICS]
    if unknown or not metrics:
        raise InputError(None, f"unknown metrics {unknown}; choose from {list(M.ALL_METRICS)}")
    if dataset is not None:
        _manifest(Path(dataset))
    model_names = _model_names(preds, names)
    gt_files = all_gt = find_volumes(gt)
    if dataset is None and (Path(gt) / "manifest.json").is_file():
        dataset = gt
    if split is not None:
        if dataset is None:
            raise InputError(None, "a split needs a dataset (a folder with manifest.json) as the ground truth")
        keep = set(_split_ids(_manifest(Path(dataset)), split))
        gt_files = {c: f for c, f in gt_files.items() if c in keep}
        if not gt_files:
            raise InputError(Path(gt), f"no ground-truth case of split {split!r}")
    pred_files = {n: find_volumes(p) for n, p in zip(model_names, preds)}
    failures: list[dict[str, str]] = []
    for n, files in pred_files.items():
        for cid in sorted(set(files) - set(all_gt)):  # other splits' cases are not failures
            failures.append({"case": cid, "model": n, "reason": "no ground truth with this case id"})
    tmpl: Volume | None = None
    if "template" in baselines:
        if isinstance(template, Volume):
            tmpl = template
        elif template is not None:
            tmpl = _read_hu(Path(template))
        elif dataset is not None:
            tmpl = template_from_dataset(dataset)
        else:
            raise InputError(None, "the template baseline needs a template CT or a dataset (its training-split mean)")
    if "backprojection" in baselines and dataset is None:
        raise InputError(None, "the backprojection baseline needs a dataset (its DRRs)")
    rows: list[dict[str, Any]] = []
    coverage: dict[tuple[str, str], float] = {}
    cases = sorted(gt_files)
    for n_case, cid in enumerate(cases):
        report(progress, n_case / len(cases), f"case {cid}")
        try:
            gt_vol = _read_hu(gt_files[cid])
            g = M.hu_tensor(gt_vol, "ground truth")
            masks = M.region_masks(g, regions)
        except (XRayToCTError, ValueError, OSError) as err:
            for n in model_names + list(baselines):
                failures.append({"case": cid, "model": n, "reason": f"ground truth: {_reason(err)}"})
            continue
        candidates: list[tuple[str, Any]] = [(n, pred_files[n].get(cid)) for n in model_names]
        candidates += [(b, b) for b in baselines]
        for name, src in candidates:
            try:
                if src is None:
                    raise InputError(None, "no prediction for this case")
                if name == "template":
                    arr, cov = template_baseline(tmpl, gt_vol), 1.0
                elif name == "backprojection":
                    arr, cov = backprojection_baseline(read_case_views(dataset, cid), gt_vol), 1.0
                else:
                    arr, cov = align(read_volume(src), gt_vol, name=src)
                p = torch.from_numpy(np.asarray(arr)).to(torch.float32)[None, None]
                bad = int((~torch.isfinite(p)).sum())
                if bad:
                    raise InputError(src if isinstance(src, Path) else None,
                                     f"{bad} NaN or infinite voxels in the prediction")
                if cov < 1.0:
                    coverage[cid, name] = cov
                for w in windows:
                    vals = M.window_metrics(p, g, w, masks, list(metrics))
                    for m in metrics:
                        for r in regions:
                            rows.append({"case": cid, "model": name, "metric": m, "window": w,
                                         "region": r, "value": float(vals[m, r][0])})
            except Cancelled:
                raise
            except (XRayToCTError, ValueError, OSError, RuntimeError) as err:
                failures.append({"case": cid, "model": name, "reason": _reason(err)})
    report(progress, 1.0, "done")
    settings = {"windows": list(windows), "regions": list(regions), "metrics": list(metrics),
                "baselines": list(baselines), "gt": str(Path(gt).resolve()), "split": split,
                "preds": {n: str(Path(p).resolve()) for n, p in zip(model_names, preds)},
                "dataset": None if dataset is None else str(Path(dataset).resolve()),
                "template": (str(Path(template).resolve()) if isinstance(template, (str, os.PathLike))
                             else ("mean of the dataset's training targets" if tmpl is not None
                                   and template is None else None))}
    return EvaluationResult(rows, failures, model_names, list(baselines), gt_files, pred_files,
                            coverage, settings)


def _reason(err: BaseException) -> str:
    return " ".join(str(err).split())[:300] or type(err).__name__


def _fmt(v: float) -> str:
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if math.isnan(v):
        return "nan"
    return repr(float(v))


def write_csv(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """``metrics.csv`` with exactly :data:`CSV_COLUMNS`, one row per value (``inf`` written as
    ``inf``), written atomically."""
    buf = StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for r in rows:
        w.writerow([r["case"], r["model"], r["metric"], r["window"], r["region"], _fmt(r["value"])])
    return write_text(path, buf.getvalue())


def write_summary(result: EvaluationResult, path: str | os.PathLike, *,
                  ci: str = "t") -> dict[str, Any]:
    """``summary.json``: the statistics of :func:`~XRayToCTLib.stats.summarize` per model,
    metric, window and region, the failures, the coverage notes, the settings and the metric
    definitions (non-finite numbers as ``null``: :func:`~XRayToCTLib.io.to_jsonable`). Returns
    the summary."""
    summary = summarize(result.rows, baselines=result.baselines, ci=ci)
    summary.update({
        "models": result.models, "baselines": result.baselines,
        "cases": sorted(result.gt_files), "failures": result.failures,
        "partial_coverage": [{"case": c, "model": m, "covered_fraction": f}
                             for (c, m), f in sorted(result.coverage.items())],
        "settings": result.settings,
        "definitions": (M.__doc__ or "").strip(),
        "baseline_definitions": (__doc__ or "").split("Baselines", 1)[-1].strip(),
    })
    write_json(path, summary)
    return summary


def _prediction_on_gt(result: EvaluationResult, name: str, cid: str, gt_vol: Volume,
                      template: Volume | None) -> np.ndarray | None:
    dataset = result.settings.get("dataset")
    try:
        if name == "template":
            return None if template is None else template_baseline(template, gt_vol)
        if name == "backprojection":
            return backprojection_baseline(read_case_views(dataset, cid), gt_vol)
        src = result.pred_files[name].get(cid)
        return None if src is None else align(read_volume(src), gt_vol, name=src)[0]
    except (XRayToCTError, ValueError, OSError):
        return None


def case_figures(result: EvaluationResult, *, metric: str | None = None,
                 window: str | None = None, region: str | None = None,
                 template: Volume | None = None) -> dict[str, tuple[str, str, bytes]]:
    """Triptych figures (:func:`~XRayToCTLib.report.comparison_png`) of the best, median and
    worst case of the first model by ``metric`` (default ``ssim``, the first window, region
    ``head``): ground truth, every model's and baseline's sCT and difference map, and the
    input DRRs when the dataset has them. ``{label: (case, "metric = value", png)}``."""
    s = result.settings
    metric = metric or ("ssim" if "ssim" in s["metrics"] else s["metrics"][0])
    window = window or s["windows"][0]
    region = region or ("head" if "head" in s["regions"] else s["regions"][0])
    if not result.models:
        return {}
    first = result.models[0]
    vals = sorted(((r["value"], r["case"]) for r in result.rows
                   if r["model"] == first and r["metric"] == metric and r["window"] == window
                   and r["region"] == region and not math.isnan(r["value"])),
                  reverse=higher_is_better(metric))
    if not vals:
        return {}
    picks = {"best": vals[0], "median": vals[(len(vals) - 1) // 2], "worst": vals[-1]}
    lo, hi = M.window_range(window)
    out = {}
    for label, (value, cid) in picks.items():
        gt_vol = _read_hu(result.gt_files[cid])
        preds = {}
        for name in result.models + result.baselines:
            arr = _prediction_on_gt(result, name, cid, gt_vol, template)
            if arr is not None:
                preds[name] = arr
        mask = M.head_mask(gt_vol.array)
        point = None
        if mask.any():
            kji = np.argwhere(mask).mean(axis=0)
            point = gt_vol.physical_points(kji[::-1][None])[0]
        views = None
        if s.get("dataset"):
            try:
                views = {v: r.array for v, r in read_case_views(s["dataset"], cid).items()}
            except XRayToCTError:
                views = None
        text = f"{metric} ({window}, {region}) of {first} = {value:.4g}"
        png = comparison_png(gt_vol, preds, (lo, hi), point=point, views=views,
                             title=f"{label} case {cid}: {text}")
        out[label] = (cid, text, png)
    return out


def run_evaluation(out_dir: str | os.PathLike, preds: Sequence[str | os.PathLike],
                   gt: str | os.PathLike, *, png_dir: str | os.PathLike | None = None,
                   progress: ProgressCallback | None = None, **kwargs: Any) -> dict[str, Path]:
    """:func:`evaluate`, then write ``metrics.csv``, ``summary.json`` and ``report.html``
    into ``out_dir``. Returns ``{"csv", "summary", "report"}`` paths."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(out, "exists and is not a folder")
    template = kwargs.get("template")
    if "template" in kwargs.get("baselines", ()) and not isinstance(template, Volume):
        if template is not None:
            kwargs["template"] = _read_hu(Path(template))
        else:
            ds = kwargs.get("dataset") or (gt if (Path(gt) / "manifest.json").is_file() else None)
            if ds is not None:
                kwargs["template"] = template_from_dataset(ds)
    result = evaluate(preds, gt, progress=scaled(progress, 0.0, 0.85), **kwargs)
    if isinstance(template, (str, os.PathLike)):
        result.settings["template"] = str(Path(template).resolve())
    elif kwargs.get("template") is not None and template is None:
        result.settings["template"] = "mean of the dataset's training targets"
    out.mkdir(parents=True, exist_ok=True)  # only once the inputs have been read
    paths = {"csv": write_csv(result.rows, out / "metrics.csv")}
    summary = write_summary(result, out / "summary.json")
    paths["summary"] = out / "summary.json"
    report(progress, 0.9, "figures")
    tmpl = kwargs.get("template") if isinstance(kwargs.get("template"), Volume) else None
    figs = case_figures(result, template=tmpl)
    paths["report"] = write_html_report(out / "report.html", result, summary, cases=figs,
                                        png_dir=png_dir)
    report(progress, 1.0, "done")
    return paths
