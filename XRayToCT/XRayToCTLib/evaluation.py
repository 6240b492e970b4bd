"""Batch evaluation of sCT predictions against ground-truth CTs, with baselines.

Pairing: a case id is a file name without its extension (``.nii.gz``, ``.nii``, ``.nrrd``,
``.nhdr``, ``.mha``, ``.mhd``); a ground-truth folder may also be a dataset
(``DIR/cases/<id>/ct.nii.gz``, as ``xraytoct prepare`` writes it). Each prediction folder is a
model. A prediction on another grid than its ground truth is resampled onto the ground
truth's grid through physical (LPS) space (linear; outside the prediction: air, -1000 HU, and
the covered fraction is recorded); no overlap fails the case with its reason. Every failure
(unreadable file, NaN voxels, no overlap, missing partner) is listed and the batch goes on.

Field of view: a model only sees its own field (a 256 mm cube in its canonical frame); an
sCT that ``xraytoct reconstruct --ct`` put back on the CT's grid is air wherever that field
does not reach, and such voxels say nothing about the model. When the JSON that
``xraytoct reconstruct`` writes beside an sCT (same name, ``.json``) gives the model's grid
(``sct_model_space_geometry``) and the transform from the model's frame to the CT
(``canonical_to_ct``; for an sCT in the model's frame, ``space: canonical``, the identity),
every region is restricted to the ground-truth voxels whose centres, mapped back into the
model's frame, fall inside that grid (:func:`field_of_view_mask`); the share of the ground
truth's head outside the field is reported per case. Without such a JSON the whole volume
counts, as it is.

Baselines (:mod:`~XRayToCTLib.baselines`: ``outline``, ``template``, ``backprojection``) are
scored as models are; reports show each model's gain over them.
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
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
from scipy.stats import spearmanr

from . import metrics as M
from .baselines import (DEFINITIONS as BASELINE_DEFINITIONS, NAMES as BASELINES,
                        atlas_baseline, backprojection_baseline, prediction_views, outline_baseline, outline_hu_from_dataset,
                        read_case_views, read_hu, read_manifest, shipped_template_hu, split_ids,
                        template_baseline, template_from_dataset)
from .constants import AIR_HU, OUTLINE_BASELINE_HU
from .errors import Cancelled, InputError, XRayToCTError
from .geometry import Grid, RigidTransform, Volume, field_of_view_mask
from .hu import head_mask
from .io import read_volume, write_json, write_text
from .preprocess import resample_to_grid
from .registration import register_rigid
from .progress import ProgressCallback, report, scaled
from .report import comparison_png, metric_definitions, write_html_report
from .stats import higher_is_better, summarize

__all__ = ["VOLUME_SUFFIXES", "CSV_COLUMNS", "BASELINES", "FIELD_OF_VIEW_DEFINITION", "case_id",
           "find_volumes", "align", "uncertainty_file", "uncertainty_calibration",
           "CALIBRATION_DEFINITION", "Sidecar", "read_sidecar", "field_of_view_mask",
           "check_frames", "FRAME_TOLERANCE",
           "prediction_field", "EvaluationResult", "evaluate", "write_csv", "write_summary",
           "case_figures", "run_evaluation"]

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
CSV_COLUMNS = ("case", "model", "metric", "window", "region", "value")
FIELD_OF_VIEW_DEFINITION = (
    "A model sees only its own field of view, a cube (256 mm for the shipped models) around "
    "the head in its own frame. An sCT put back on a CT's grid is air wherever that cube does "
    "not reach, which says nothing about the model. When the JSON written beside an sCT gives "
    "the model's grid and the rigid transform from the model's frame to the CT, every region "
    "(head and whole) is restricted to the ground-truth voxels whose centres fall inside the "
    "model's grid; the baselines are scored inside the field of the case's first model. The "
    "table gives, per case, the share of the ground truth's head (and of its whole volume) that "
    "lies outside the field and is not scored. Without such a JSON the whole volume is scored "
    "and the table says so.")
"""How the field of view restricts the scoring, in words for the readers of a report."""


# ----------------------------------------------------------------------------------------
# finding and pairing files
# ----------------------------------------------------------------------------------------
_SIDECAR = re.compile(r".+_(ap|pa|lateral|lateral_left)_(drr|input|reprojection)")
UNCERTAINTY_SUFFIX = "_uncertainty"
"""``<id>_uncertainty.<ext>`` beside a prediction: its voxel spread (``reconstruct --samples``)."""
CALIBRATION_DEFINITION = (
    "Uncertainty calibration (for predictions with an <id>_uncertainty file beside them, the "
    "voxel standard deviation in HU of a diffusion model's samples): over the ground truth's "
    "head voxels inside the model's field, the Spearman rank correlation between the spread "
    "and the absolute error |sCT - CT| in HU (1: the larger the spread, the larger the error, "
    "voxel for voxel; 0: the spread says nothing about the error), and the reliability "
    "curve: the voxels cut into ten bins of equal count by their spread, each bin's mean "
    "absolute error against its mean spread (for Gaussian errors of that SD, the mean "
    "absolute error is 0.80 x SD).")
"""What the calibration numbers are, in words for the readers of a report."""


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
        if _SIDECAR.fullmatch(cid) or cid.endswith(UNCERTAINTY_SUFFIX):
            continue  # the 2D images, the uncertainty `xraytoct reconstruct` writes beside an sCT
        if cid in out:
            raise InputError(root, f"two volumes for case {cid!r}: {out[cid].name} and {p.name}")
        out[cid] = p
    if not out:
        raise InputError(root, "no volumes found (.nii.gz, .nii, .nrrd, .mha, or a dataset's "
                               "cases/<id>/ct.nii.gz)")
    return out


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
# the JSON beside a prediction, the model's field of view
# ----------------------------------------------------------------------------------------
@dataclasses.dataclass
class Sidecar:
    """What the JSON ``xraytoct reconstruct`` writes beside an sCT says about its frame:
    ``space`` (``"patient"``: on the input CT's grid; ``"canonical"``: the model's frame),
    the model's grid (``sct_model_space_geometry``) and the model-frame -> CT transform
    (``canonical_to_ct``), each None when the JSON does not give it."""

    path: Path
    space: str | None = None
    model_grid: Grid | None = None
    canonical_to_ct: RigidTransform | None = None

    @property
    def field_transform(self) -> RigidTransform | None:
        """The transform that places the model's grid in the prediction's space: the
        ``canonical_to_ct`` transform, the identity for an sCT in the model's frame, None
        when the JSON does not say."""
        if self.canonical_to_ct is not None:
            return self.canonical_to_ct
        return RigidTransform() if self.space == "canonical" else None


def read_sidecar(prediction: str | os.PathLike) -> Sidecar | None:
    """The JSON beside a prediction (``<dir>/<case id>.json``), or None when there is none.

    Raises:
        InputError: the JSON is unreadable or its geometry or transform is malformed.
    """
    pred = Path(prediction)
    path = pred.with_name(case_id(pred) + ".json")
    if not path.is_file():
        return None
    try:
        d = json.loads(path.read_text())
        grid = d.get("sct_model_space_geometry")
        tx = d.get("canonical_to_ct")
        return Sidecar(path, d.get("space"),
                       None if grid is None else Grid.from_dict(grid),
                       None if tx is None else RigidTransform.from_dict(tx))
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as err:
        raise InputError(path, f"unreadable JSON beside the prediction: {_reason(err)}") from err


FRAME_TOLERANCE = (6.0, 10.0)
"""Largest rotation (degrees) and shift (mm) between an sCT made from radiographs and its
ground truth that :func:`check_frames` takes for "the same frame" (wide: a model's own sCT
may sit a few degrees off; a CT in its own patient frame is typically tens of degrees and
millimetres away)."""


def check_frames(sidecar: Sidecar | None, prediction: Volume, gt: Volume) -> None:
    """Refuse a pair whose frames differ: an sCT made from radiographs lies in the model's
    canonical (template) frame (its JSON says ``space: canonical`` and gives no transform to a
    CT), so it overlays only a ground truth in that frame (a dataset case, a CT brought into
    it), not a CT in its own patient frame, where the overlay would be tilted and shifted
    without a word. The frames are compared by a coarse rigid registration of the ground
    truth to the sCT (mutual information at 4 mm, no search); more than
    :data:`FRAME_TOLERANCE` between them is a mismatch.

    Raises:
        InputError: the rotation and shift found, and the way to a matching pair.
    """
    if sidecar is None or sidecar.space != "canonical" or sidecar.canonical_to_ct is not None:
        return
    reg = register_rigid(gt, prediction, levels=(2, 1), smoothing=(1.0, 0.0),
                         sampling=(0.5, 0.25), iterations=100, registration_spacing=4.0,
                         search=False)
    angle = reg.rotation_angle_deg
    centre = np.asarray(Grid.of(prediction).center, float)
    shift = float(np.linalg.norm(reg.transform_points(centre[None])[0] - centre))
    if angle > FRAME_TOLERANCE[0] or shift > FRAME_TOLERANCE[1]:
        raise InputError(sidecar.path, f"the sCT was made from radiographs and lies in the "
                         f"model's canonical (template) frame, but the ground truth is "
                         f"{angle:.0f} degrees and {shift:.0f} mm away from it (its own patient "
                         "frame): compare it with an sCT reconstructed from that CT (its DRRs, "
                         "placed back on its grid), or with the CT brought into the canonical "
                         "frame as dataset cases are")


def prediction_field(sidecar: Sidecar | None, grid: Grid) -> np.ndarray | None:
    """:func:`field_of_view_mask` on ``grid`` of the model that made a prediction, from its
    JSON; None (the whole volume counts) without a JSON or without the model's grid and
    frame in it."""
    if sidecar is None or sidecar.model_grid is None or sidecar.field_transform is None:
        return None
    return field_of_view_mask(grid, sidecar.field_transform, sidecar.model_grid)


# ----------------------------------------------------------------------------------------
# the batch
# ----------------------------------------------------------------------------------------
@dataclasses.dataclass
class EvaluationResult:
    """What :func:`evaluate` found: ``rows`` (dicts with :data:`CSV_COLUMNS`), ``failures``
    (dicts ``case, model, reason``), ``coverage`` (``(case, model) -> fraction`` of the
    ground truth covered by a resampled prediction, when < 1), the model and baseline names,
    the files of each case, the settings, ``fields`` (``(case, model) ->`` where it was
    scored: ``field`` (what restricted it, or why nothing did), ``head_outside_fraction`` and
    ``volume_outside_fraction`` of the ground truth outside the model's field, None when the
    whole volume counts), and the baselines' ``template`` volume and ``outline_hu``."""

    rows: list[dict[str, Any]]
    failures: list[dict[str, str]]
    models: list[str]
    baselines: list[str]
    gt_files: dict[str, Path]
    pred_files: dict[str, dict[str, Path]]
    coverage: dict[tuple[str, str], float]
    settings: dict[str, Any]
    fields: dict[tuple[str, str], dict[str, Any]] = dataclasses.field(default_factory=dict)
    template: Volume | None = None
    outline_hu: float | None = None
    calibration: dict[tuple[str, str], dict[str, Any]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class _Candidate:
    """One model's prediction or one baseline of a case, on the ground truth's grid."""

    name: str
    array: np.ndarray | None = None
    covered: float = 1.0
    field: np.ndarray | None = None  # bool [k, j, i]; None: the whole volume counts
    field_note: str = "whole volume"
    error: BaseException | None = None
    spread: np.ndarray | None = None  # its uncertainty (SD, HU) on the truth's grid, if any


_ERRORS = (XRayToCTError, ValueError, OSError, RuntimeError)


def _field_note(side: Sidecar | None) -> str:
    if side is None:
        return "whole volume: no JSON beside the prediction"
    if side.model_grid is None or side.field_transform is None:
        return f"whole volume: {side.path.name} gives no model grid and frame"
    return f"the model's field of view ({side.path.name})"


def _candidates(result: EvaluationResult, cid: str, gt_vol: Volume) -> Iterator[_Candidate]:
    """Each model's prediction of case ``cid`` on the ground truth's grid with its field of
    view, then each baseline (``outline`` and ``template`` from the first model prediction
    that could be read, inside its field). A candidate that cannot be built carries its
    ``error``."""
    ref: _Candidate | None = None
    ref_side: Sidecar | None = None
    for name in result.models:
        src = result.pred_files[name].get(cid)
        try:
            if src is None:
                raise InputError(None, "no prediction for this case")
            side = read_sidecar(src)
            pred_vol = read_volume(src)
            check_frames(side, pred_vol, gt_vol)
            arr, cov = align(pred_vol, gt_vol, name=src)
            arr = np.asarray(arr, dtype=np.float32)
            bad = int((~np.isfinite(arr)).sum())
            if bad:
                raise InputError(src, f"{bad} NaN or infinite voxels in the prediction")
            cand = _Candidate(name, arr, cov, prediction_field(side, gt_vol), _field_note(side))
            spread_file = uncertainty_file(src)
            if spread_file is not None:  # outside it: -1000 (align's air), left out below
                cand.spread = np.asarray(align(read_volume(spread_file, require_hu=False), gt_vol,
                                               name=spread_file)[0], dtype=np.float32)
        except Cancelled:
            raise
        except _ERRORS as err:
            yield _Candidate(name, error=err)
            continue
        if ref is None:
            ref, ref_side = cand, side
        yield cand
    for name in result.baselines:
        try:
            if name == "backprojection":
                ds = result.settings.get("dataset")
                if ds is not None and (Path(ds) / "cases" / cid).is_dir():
                    rads = read_case_views(ds, cid)
                elif ref_side is not None:  # the images beside the prediction, as placed
                    rads = {v: r for v, r in prediction_views(ref_side.path)[0].items()}
                else:
                    raise InputError(None, "the backprojection baseline needs a dataset or the "
                                           "images `xraytoct reconstruct` writes beside the "
                                           "prediction")
                arr = backprojection_baseline(rads, gt_vol)
            elif ref is None:
                raise InputError(None, "no model prediction of this case to build the baseline from")
            elif name == "outline":
                arr = outline_baseline(ref.array, float(result.outline_hu))
            elif name == "atlas":
                if ref_side is None or ref_side.model_grid is None:
                    raise InputError(None, "the atlas baseline needs the JSON `xraytoct "
                                           "reconstruct` writes beside the prediction")
                assert result.template is not None
                views, geoms = prediction_views(ref_side.path)
                arr = atlas_baseline(result.template, ref_side.model_grid, views, geoms, gt_vol,
                                     ref_side.canonical_to_ct)
            else:
                assert result.template is not None
                arr = template_baseline(result.template, gt_vol,
                                        None if ref_side is None else ref_side.canonical_to_ct)
        except Cancelled:
            raise
        except _ERRORS as err:
            yield _Candidate(name, error=err)
            continue
        note = "whole volume" if ref is None or ref.field is None else f"the field of {ref.name}"
        yield _Candidate(name, arr, 1.0, None if ref is None else ref.field, note)


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


def _baseline_sources(baselines: Sequence[str], template: str | os.PathLike | Volume | None,
                      dataset: str | os.PathLike | None, outline_hu: float | None
                      ) -> tuple[Volume | None, str | None, float | None, str | None]:
    """The template baseline's volume and the outline baseline's constant, with what each is."""
    tmpl = tmpl_text = value = value_text = None
    if "template" in baselines or "atlas" in baselines:
        if isinstance(template, Volume):
            tmpl, tmpl_text = template, str(template.metadata.get("source", "a given volume"))
        elif template is not None:
            tmpl, tmpl_text = read_hu(Path(template)), str(Path(template).resolve())
        elif dataset is not None:
            tmpl, tmpl_text = template_from_dataset(dataset), "mean of the dataset's training targets"
        else:
            tmpl = shipped_template_hu()
            tmpl_text = ("the shipped Rorden head CT template (Cormack units converted to HU), "
                         "its head centre at the model frame's origin")
    if "outline" in baselines:
        if outline_hu is not None:
            value, value_text = float(outline_hu), "given"
        elif dataset is not None:
            value = outline_hu_from_dataset(dataset)
            value_text = "median HU inside the head outline of the dataset's training targets"
        else:
            value = OUTLINE_BASELINE_HU
            value_text = ("default: median HU inside the head outline of a real adult head CT "
                          "(InVesalius sample 0051)")
    return tmpl, tmpl_text, value, value_text


def _head_np(masks: Mapping[str, torch.Tensor | None], gt: torch.Tensor) -> np.ndarray:
    m = masks.get("head")
    return (m if m is not None else head_mask(gt))[0, 0].cpu().numpy()


def evaluate(preds: Sequence[str | os.PathLike], gt: str | os.PathLike, *,
             names: Sequence[str] | None = None,
             windows: Sequence[str] = ("brain", "full"), regions: Sequence[str] = ("head", "whole"),
             metrics: Sequence[str] = ("ssim", "ssim_slices", "psnr", "mse", "mae_hu", "cosine"),
             baselines: Sequence[str] = (), template: str | os.PathLike | Volume | None = None,
             dataset: str | os.PathLike | None = None, split: str | None = None,
             outline_hu: float | None = None,
             progress: ProgressCallback | None = None) -> EvaluationResult:
    """Evaluate every prediction folder against the ground-truth folder (see module doc).

    Args:
        preds: prediction folders, one per model (files named by case id; the JSON
            ``xraytoct reconstruct`` writes beside each, if there, gives the model's field).
        gt: ground-truth folder (files named by case id, or a dataset folder).
        names: model names (default: the folders' names).
        windows, regions, metrics: as :func:`~XRayToCTLib.metrics.evaluate_pair`.
        baselines: any of :data:`BASELINES`.
        template: template volume (file or Volume, HU, in the model's frame) for the
            ``template`` baseline (default: the mean of ``dataset``'s training targets, else
            the shipped head CT template: :func:`shipped_template_hu`).
        dataset: dataset folder (``manifest.json``, ``cases/<id>/``): training targets for the
            template and the outline constant, DRRs for the back-projection and the triptychs'
            input views; defaults to ``gt`` when that is a dataset.
        split: only the ground-truth cases of this split of ``dataset``'s manifest (e.g.
            ``"test"``: the template baseline is the mean of the training split, so judge it
            on other cases); ``None``: every case.
        outline_hu: the ``outline`` baseline's constant (default: from ``dataset``, else
            :data:`~XRayToCTLib.constants.OUTLINE_BASELINE_HU`).
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
        read_manifest(dataset)
    model_names = _model_names(preds, names)
    gt_files = all_gt = find_volumes(gt)
    if dataset is None and (Path(gt) / "manifest.json").is_file():
        dataset = gt
    if split is not None:
        if dataset is None:
            raise InputError(None, "a split needs a dataset (a folder with manifest.json) as the ground truth")
        keep = set(split_ids(read_manifest(dataset), split))
        gt_files = {c: f for c, f in gt_files.items() if c in keep}
        if not gt_files:
            raise InputError(Path(gt), f"no ground-truth case of split {split!r}")
    pred_files = {n: find_volumes(p) for n, p in zip(model_names, preds)}
    if not any(set(files) & set(gt_files) for files in pred_files.values()):
        raise InputError(Path(preds[0]), "no prediction matches a ground-truth case: files are "
                         "paired by case id, the file name without .nii.gz/.nii/.nrrd/.mha (a "
                         "dataset's cases/<id>/ct.nii.gz), e.g. PRED/case01.nii.gz with "
                         "GT/case01.nii.gz")
    failures: list[dict[str, str]] = []
    for n, files in pred_files.items():
        for cid in sorted(set(files) - set(all_gt)):  # other splits' cases are not failures
            failures.append({"case": cid, "model": n, "reason": "no ground truth with this case id"})
    tmpl, tmpl_text, value, value_text = _baseline_sources(baselines, template, dataset, outline_hu)
    settings = {"windows": list(windows), "regions": list(regions), "metrics": list(metrics),
                "baselines": list(baselines), "gt": str(Path(gt).resolve()), "split": split,
                "preds": {n: str(Path(p).resolve()) for n, p in zip(model_names, preds)},
                "dataset": None if dataset is None else str(Path(dataset).resolve()),
                "template": tmpl_text, "outline_hu": value, "outline_hu_source": value_text}
    result = EvaluationResult([], failures, model_names, list(baselines), gt_files, pred_files,
                              {}, settings, {}, tmpl, value)
    cases = sorted(gt_files)
    for n_case, cid in enumerate(cases):
        report(progress, n_case / len(cases), f"case {cid}")
        try:
            gt_vol = read_hu(gt_files[cid])
            g = M.hu_tensor(gt_vol, "ground truth")
            masks = M.region_masks(g, regions)
        except (XRayToCTError, ValueError, OSError) as err:
            for n in model_names + list(baselines):
                failures.append({"case": cid, "model": n, "reason": f"ground truth: {_reason(err)}"})
            continue
        head = None
        for cand in _candidates(result, cid, gt_vol):
            try:
                if cand.error is not None:
                    raise cand.error
                if cand.field is not None and head is None:
                    head = _head_np(masks, g)  # the truth's head, for the share outside the field
                _score(result, cid, cand, g, masks, windows, metrics, regions, head)
                if cand.spread is not None:
                    result.calibration[cid, cand.name] = _calibrate(cand, g, masks)
            except Cancelled:
                raise
            except _ERRORS as err:
                failures.append({"case": cid, "model": cand.name, "reason": _reason(err)})
    report(progress, 1.0, "done")
    return result


def _score(result: EvaluationResult, cid: str, cand: _Candidate, g: torch.Tensor,
           masks: Mapping[str, torch.Tensor | None], windows: Sequence[str],
           metrics: Sequence[str], regions: Sequence[str], head: np.ndarray | None) -> None:
    """Every metric of one candidate in every window and region (inside its field), appended
    to ``result.rows``; its field of view and coverage recorded."""
    info: dict[str, Any] = {"case": cid, "model": cand.name, "field": cand.field_note,
                            "head_outside_fraction": None, "volume_outside_fraction": None}
    if cand.field is not None and head is not None:
        inside = int(np.count_nonzero(cand.field))
        if inside == 0:
            raise InputError(None, "no voxel of the ground truth lies inside the model's field of view")
        n_head = max(int(np.count_nonzero(head)), 1)
        info["head_outside_fraction"] = 1.0 - int(np.count_nonzero(head & cand.field)) / n_head
        info["volume_outside_fraction"] = 1.0 - inside / cand.field.size
        if "head" in regions and info["head_outside_fraction"] >= 1.0:
            raise InputError(None, "the ground truth's head lies wholly outside the model's field of view")
        f = torch.from_numpy(cand.field)[None, None]
        masks = {r: f if m is None else (m & f) for r, m in masks.items()}
    result.fields[cid, cand.name] = info
    if cand.covered < 1.0:
        result.coverage[cid, cand.name] = cand.covered
    p = torch.from_numpy(np.asarray(cand.array, dtype=np.float32))[None, None]
    for w in windows:
        vals = M.window_metrics(p, g, w, masks, list(metrics))
        for m in metrics:
            for r in regions:
                result.rows.append({"case": cid, "model": cand.name, "metric": m, "window": w,
                                    "region": r, "value": float(vals[m, r][0])})


def uncertainty_file(prediction: str | os.PathLike) -> Path | None:
    """The uncertainty map ``reconstruct --samples`` writes beside a prediction
    (``<id>_uncertainty.<ext>``, any volume format), or None."""
    p = Path(prediction)
    for suffix in VOLUME_SUFFIXES:
        f = p.with_name(f"{case_id(p)}{UNCERTAINTY_SUFFIX}{suffix}")
        if f.is_file():
            return f
    return None


def uncertainty_calibration(spread: np.ndarray, error: np.ndarray,
                            mask: np.ndarray | None = None, bins: int = 10) -> dict[str, Any]:
    """How well a voxel spread predicts the error (:data:`CALIBRATION_DEFINITION`).

    Args:
        spread: the voxel spread (SD, HU); negative values (no spread known) are left out.
        error: the absolute error (HU), same shape.
        mask: the voxels to use (the head); None: all.
        bins: spread bins of equal count for the reliability curve.

    Returns:
        ``spearman`` (rank correlation, None with fewer than 3 voxels or a constant input),
        ``voxels``, and ``bins``: per bin ``spread_low``, ``spread_high``, ``mean_spread``,
        ``mae_hu``, ``voxels``.
    """
    s = np.asarray(spread, dtype=np.float64)
    e = np.abs(np.asarray(error, dtype=np.float64))
    if s.shape != e.shape:
        raise ValueError(f"spread {s.shape} and error {e.shape} differ in shape")
    keep = np.isfinite(s) & np.isfinite(e) & (s >= 0)
    if mask is not None:
        keep &= np.asarray(mask, dtype=bool)
    s, e = s[keep], e[keep]
    rho = None
    if s.size >= 3 and np.ptp(s) > 0 and np.ptp(e) > 0:
        rho = float(spearmanr(s, e)[0])
    out_bins = []
    if s.size:
        order = np.argsort(s, kind="stable")
        for part in np.array_split(order, min(int(bins), s.size)):
            if part.size:
                out_bins.append({"spread_low": float(s[part].min()),
                                 "spread_high": float(s[part].max()),
                                 "mean_spread": float(s[part].mean()),
                                 "mae_hu": float(e[part].mean()), "voxels": int(part.size)})
    return {"spearman": rho, "voxels": int(s.size), "bins": out_bins}


def _calibrate(cand: _Candidate, g: torch.Tensor, masks: Mapping[str, torch.Tensor | None]
               ) -> dict[str, Any]:
    """A candidate's calibration over the truth's head inside its field."""
    region = _head_np(masks, g)
    if cand.field is not None:
        region = region & cand.field
    gt = g[0, 0].cpu().numpy()
    return uncertainty_calibration(cand.spread, np.abs(cand.array - gt), region)


def _calibration_summary(result: EvaluationResult) -> dict[str, Any]:
    """The summary's ``calibration`` (per case and model) and ``calibration_by_model`` (mean
    and median Spearman over the cases), when any prediction had an uncertainty map."""
    if not result.calibration:
        return {}
    per_case = [{"case": c, "model": m, **v} for (c, m), v in sorted(result.calibration.items())]
    by_model: dict[str, Any] = {}
    for m in dict.fromkeys(m for _, m in sorted(result.calibration)):
        rhos = [v["spearman"] for (_, mm), v in result.calibration.items()
                if mm == m and v["spearman"] is not None]
        by_model[m] = {"cases": len(rhos), "mean_spearman": float(np.mean(rhos)) if rhos else None,
                       "median_spearman": float(np.median(rhos)) if rhos else None}
    return {"calibration": per_case, "calibration_by_model": by_model,
            "calibration_definition": CALIBRATION_DEFINITION}


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
    metric, window and region, the failures, the coverage notes, each case's field of view
    (``field_of_view``: the share of the ground truth's head outside the model's field, or
    why the whole volume counts), the settings and the definitions (non-finite numbers as
    ``null``: :func:`~XRayToCTLib.io.to_jsonable`). Returns the summary."""
    summary = summarize(result.rows, baselines=result.baselines, ci=ci)
    summary.update({
        "models": result.models, "baselines": result.baselines,
        "cases": sorted(result.gt_files), "failures": result.failures,
        "partial_coverage": [{"case": c, "model": m, "covered_fraction": f}
                             for (c, m), f in sorted(result.coverage.items())],
        "field_of_view": [result.fields[k] for k in sorted(result.fields)],
        "settings": result.settings,
        "definitions": metric_definitions(result.settings),
        "field_of_view_definition": FIELD_OF_VIEW_DEFINITION,
        **_calibration_summary(result),
        "baseline_definitions": "\n\n".join(f"{b}: {t}" for b, t in BASELINE_DEFINITIONS.items()
                                             if b in result.baselines),
    })
    write_json(path, summary)
    return summary


def case_figures(result: EvaluationResult, *, metric: str | None = None,
                 window: str | None = None, region: str | None = None
                 ) -> dict[str, tuple[str, str, bytes]]:
    """Triptych figures (:func:`~XRayToCTLib.report.comparison_png`) of the best, median and
    worst case of the first model by ``metric`` (default ``ssim``, the first window, region
    ``head``; one figure per case, so fewer when cases repeat): ground truth, every model's
    and baseline's sCT and difference map (blank outside the model's field of view), and the
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
    picks: dict[tuple[float, str], list[str]] = {}
    for label, pick in (("best", vals[0]), ("median", vals[(len(vals) - 1) // 2]),
                        ("worst", vals[-1])):
        picks.setdefault(pick, []).append(label)
    lo, hi = M.window_range(window)
    out = {}
    for (value, cid), labels in picks.items():
        gt_vol = read_hu(result.gt_files[cid])
        preds = {}
        for cand in _candidates(result, cid, gt_vol):
            if cand.error is None:
                preds[cand.name] = (cand.array if cand.field is None
                                    else np.where(cand.field, cand.array, np.float32(np.nan)))
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
        label = ", ".join(labels)
        png = comparison_png(gt_vol, preds, (lo, hi), point=point, views=views,
                             title=f"{label} case {cid}: {text}")
        out[label] = (cid, text, png)
    return out


def run_evaluation(out_dir: str | os.PathLike, preds: Sequence[str | os.PathLike],
                   gt: str | os.PathLike, *, png_dir: str | os.PathLike | None = None,
                   progress: ProgressCallback | None = None, **kwargs: Any) -> dict[str, Path]:
    """:func:`evaluate` (``kwargs`` are its own), then write ``metrics.csv``,
    ``summary.json`` and ``report.html`` into ``out_dir``. Returns ``{"csv", "summary",
    "report"}`` paths."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(out, "exists and is not a folder")
    result = evaluate(preds, gt, progress=scaled(progress, 0.0, 0.85), **kwargs)
    out.mkdir(parents=True, exist_ok=True)  # only once the inputs have been read
    paths = {"csv": write_csv(result.rows, out / "metrics.csv")}
    summary = write_summary(result, out / "summary.json")
    paths["summary"] = out / "summary.json"
    report(progress, 0.9, "figures")
    figs = case_figures(result)
    paths["report"] = write_html_report(out / "report.html", result, summary, cases=figs,
                                        png_dir=png_dir)
    report(progress, 1.0, "done")
    return paths
