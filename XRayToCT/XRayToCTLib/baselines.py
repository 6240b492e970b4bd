"""Baselines: what an evaluation compares each model with (no model should do worse).

Each baseline is an sCT on the ground truth's grid, built without looking at the ground
truth; :mod:`~XRayToCTLib.evaluation` scores it exactly as a model, inside the field of view of
the case's first model prediction. :data:`DEFINITIONS` says what each is, for readers of a
report:

* ``outline`` (:func:`outline_baseline`): a constant inside the prediction's own head outline.
  The constant is :func:`outline_hu_from_dataset` of the training targets, else
  :data:`~XRayToCTLib.constants.OUTLINE_BASELINE_HU`.
* ``template`` (:func:`template_baseline`): one head in the model's frame
  (:func:`template_from_dataset`, a given file, or :func:`shipped_template_hu`) put on the
  ground truth's grid through the prediction's own ``canonical_to_ct``.
* ``backprojection`` (:func:`backprojection_baseline`): the case's DRRs back-projected.

The shipped template is stored in Cormack units (Rorden et al. 2012, *Age-specific CT and MRI
templates for spatial normalization*): HU below -100 shifted by +1000, [-100, 100] HU stretched
tenfold, above 100 HU shifted again; :func:`~XRayToCTLib.registration.cormack_to_hu` is the
inverse, Rorden's ``c2h`` (github.com/neurolabusc/h2c, ``h2c(img, is_inverse=True)``).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from . import metrics as M
from .constants import AIR_HU, HU_CLIP, MU_WATER_PER_MM, OUTLINE_BASELINE_HU
from .drr import DRR
from .errors import InputError
from .geometry import Grid, ProjectionGeometry, Radiograph, RigidTransform, Volume
from .hu import head_center, head_mask
from .io import read_radiograph, read_volume
from .preprocess import from_canonical, resample_to_grid, window_to_hu
from .progress import ProgressCallback, report
from .refine import refine
from .registration import SHIPPED_TEMPLATE, cormack_to_hu, load_template

__all__ = ["NAMES", "DEFINITIONS", "read_hu", "read_manifest", "split_ids", "dataset_targets",
           "template_from_dataset", "shipped_template_hu", "template_baseline",
           "outline_hu_from_dataset", "outline_baseline", "read_case_views",
           "backprojection_baseline", "prediction_views", "atlas_baseline"]

NAMES = ("outline", "template", "atlas", "backprojection")
"""The baselines, in the order reports list them."""

DEFINITIONS = {
    "outline": (
        "A constant inside the head outline of the case's first model prediction (its voxels "
        "above -500 HU, the largest connected piece, holes filled), air (-1000 HU) outside. "
        "The constant is the median HU inside the head outline of the dataset's training "
        "targets when a dataset is given, else {default:g} HU, the median inside the head "
        "outline of a real adult head CT. The median, not the mean: it is the constant with the "
        "smallest absolute error, and the skull pulls the mean far above soft tissue. It shows "
        "what the outline alone is worth: a model must get the inside right to beat it."
    ).format(default=OUTLINE_BASELINE_HU),
    "template": (
        "One average head in the model's frame, the same for every case: the voxel-wise mean "
        "of the dataset's training targets, or a given template, or else the head CT template "
        "that ships with XRayToCT (Rorden et al. 2012, converted from Cormack units to HU), "
        "centred as the model's frame is. It is put on the ground truth's grid through the same "
        "rigid transform that brought the case's CT into the model's frame for its DRRs (the "
        "prediction's canonical_to_ct), not registered to the ground truth. It shows what the "
        "registration and an average head are worth without the radiographs."),
    "atlas": (
        "The classical 2D/3D method: the same average head as the template baseline, in the "
        "model's frame, fitted to the case's own input views by the test-time fit that "
        "`--refine` applies to a model's sCT (XRayToCTLib.refine: per-tissue HU curve, affine "
        "and coarse deformation, small residual, through the differentiable DRR), then placed "
        "like the template. It shows what the radiographs add to an average head without a "
        "learned model. It needs the JSON and the input images that `xraytoct reconstruct` "
        "writes beside the case's first model prediction."),
    "backprojection": (
        "The case's two DRRs smeared back along their rays: each voxel gets the mean "
        "attenuation per mm of the rays through it (each ray's DRR value divided by its length "
        "through the grid), averaged over the views that see it, as HU; a voxel no view sees "
        "is air. It shows what the radiographs give with no learned anatomy."),
}
"""What each baseline is, in words for the readers of a report."""


def read_hu(path: Path) -> Volume:
    """A volume in HU: a dataset target stored windowed (metadata ``window``) is mapped back."""
    vol = read_volume(path)
    win = vol.metadata.get("window")
    if win is not None and str(vol.metadata.get("units", "")).startswith("window"):
        vol = window_to_hu(vol, tuple(float(v) for v in win))
    return vol



def read_manifest(dataset: str | os.PathLike) -> dict[str, Any]:
    """A dataset's ``manifest.json`` (InputError when it is missing or unreadable)."""
    dataset = Path(dataset)
    path = dataset / "manifest.json"
    if not path.is_file():
        raise InputError(dataset, "not a dataset: manifest.json is missing")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise InputError(path, f"unreadable manifest: {err}") from err


def split_ids(manifest: Mapping[str, Any], split: str) -> list[str]:
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


def dataset_targets(dataset: str | os.PathLike, ids: Sequence[str]) -> dict[str, Path]:
    """``{case id: cases/<id>/ct.*}`` of a dataset, for the ids that have one."""
    out: dict[str, Path] = {}
    for cid in ids:
        files = sorted(f for f in (Path(dataset) / "cases" / cid).glob("ct.*") if f.is_file())
        if files:
            out[cid] = files[0]
    return out


def template_from_dataset(dataset: str | os.PathLike, *, split: str = "train",
                          progress: ProgressCallback | None = None) -> Volume:
    """The voxel-wise mean (HU) of a dataset's ``split`` targets ``cases/<id>/ct.*``, on the
    first target's grid (others resampled onto it through LPS space)."""
    root = Path(dataset)
    ids = split_ids(read_manifest(root), split)
    if not ids:
        raise InputError(root / "manifest.json", f"no case of split {split!r}")
    vols = dataset_targets(root, ids)
    missing = [i for i in ids if i not in vols]
    if missing:
        raise InputError(root, f"{len(missing)} {split} case(s) without ct volume, e.g. {missing[0]}")
    ref = None
    total = None
    for n, cid in enumerate(ids):
        v = read_hu(vols[cid])
        if ref is None:
            ref = v
            total = np.zeros(v.array.shape, np.float64)
        arr = v.array if M.grids_match(v, ref) else resample_to_grid(v, ref, None, "linear", AIR_HU).array
        total += arr
        report(progress, (n + 1) / len(ids), f"template: {cid}")
    assert ref is not None and total is not None
    return ref.with_array((total / len(ids)).astype(np.float32), kind="template baseline",
                          template_cases=len(ids), template_split=split)


def shipped_template_hu(path: str | os.PathLike = SHIPPED_TEMPLATE) -> Volume:
    """The head CT template that ships with the extension (Rorden et al. 2012, Cormack units)
    in HU (:func:`~XRayToCTLib.registration.cormack_to_hu`, the inverse of Rorden's h2c,
    github.com/neurolabusc/h2c) and in the canonical frame: translated so that its head centre
    (:func:`~XRayToCTLib.hu.head_center` with Otsu's threshold, as
    :func:`~XRayToCTLib.preprocess.canonical_transform` finds it) is the origin."""
    raw = load_template(path)
    centre = head_center(raw, None)
    hu = raw.with_array(cormack_to_hu(raw.array), units="HU", kind="template baseline")
    return hu.translated(-centre)


def template_baseline(template: Volume, gt: Grid,
                      canonical_to_ct: RigidTransform | None = None) -> np.ndarray:
    """The template (in the model's frame) on ``gt``'s grid: through ``canonical_to_ct``
    (:func:`~XRayToCTLib.preprocess.from_canonical`) when given, else as it is; linear,
    air outside the template."""
    if canonical_to_ct is not None:
        return from_canonical(template, canonical_to_ct, gt).array
    if isinstance(gt, Volume) and M.grids_match(template, gt):
        return np.asarray(template.array, dtype=np.float32)
    return resample_to_grid(template, gt, None, "linear", AIR_HU).array


def outline_hu_from_dataset(dataset: str | os.PathLike, *, split: str = "train") -> float:
    """The median HU (to 1 HU, clipped to +-1000) inside the head outline
    (:func:`~XRayToCTLib.hu.head_mask`) of a dataset's ``split`` targets, all voxels pooled."""
    root = Path(dataset)
    ids = split_ids(read_manifest(root), split)
    vols = dataset_targets(root, ids)
    lo, hi = HU_CLIP
    counts = np.zeros(int(hi - lo) + 1, dtype=np.int64)
    for cid in ids:
        if cid in vols:
            arr = read_hu(vols[cid]).array
            vals = np.clip(np.rint(arr[head_mask(arr)]), lo, hi).astype(np.int64) - int(lo)
            counts += np.bincount(vals, minlength=counts.size)
    if counts.sum() == 0:
        raise InputError(root, f"no head voxel in the {split!r} targets for the outline baseline")
    cum = np.cumsum(counts)
    return float(np.searchsorted(cum, (cum[-1] + 1) // 2) + lo)


def outline_baseline(prediction: np.ndarray, value: float) -> np.ndarray:
    """``value`` HU inside the prediction's own head outline
    (:func:`~XRayToCTLib.hu.head_mask`), air (-1000 HU) outside; float32 of its shape."""
    arr = np.asarray(prediction)
    return np.where(head_mask(arr), np.float32(value), np.float32(AIR_HU)).astype(np.float32)


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


def prediction_views(sidecar_json: str | os.PathLike) -> tuple[dict[str, Radiograph],
                                                               dict[str, ProjectionGeometry]]:
    """The images a model saw for one sCT (``<stem>_<view>_input.nrrd`` beside it, as
    :func:`~XRayToCTLib.inference.write_result` names them; ``_drr.nrrd``, the name older
    versions gave a CT's DRRs, is read too) and their view
    geometries in the model's frame (the JSON's ``geometry.views``)."""
    path = Path(sidecar_json)
    try:
        d = json.loads(path.read_text())
        geoms = {v: ProjectionGeometry.from_dict(g) for v, g in d["geometry"]["views"].items()}
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise InputError(path, f"no view geometry for the atlas baseline: {err}") from err
    stem = path.name[: -len(".json")]
    views = {}
    for v in geoms:
        f = next((path.with_name(f"{stem}_{v}_{kind}.nrrd") for kind in ("input", "drr")
                  if path.with_name(f"{stem}_{v}_{kind}.nrrd").is_file()), None)
        if f is None:
            raise InputError(path, f"no {v} image beside it ({stem}_{v}_input.nrrd) "
                                   "for the atlas baseline")
        views[v] = read_radiograph(f, view=v)
    return views, geoms


def atlas_baseline(template: Volume, model_grid: Grid, views: Mapping[str, Radiograph],
                   geometries: Mapping[str, ProjectionGeometry], gt: Grid,
                   canonical_to_ct: RigidTransform | None = None) -> np.ndarray:
    """The template (HU, model frame) on ``model_grid``, fitted to ``views``
    (:func:`~XRayToCTLib.refine.refine`, default settings), then on ``gt``'s grid as
    :func:`template_baseline` places it."""
    prior = resample_to_grid(template, model_grid, None, "linear", AIR_HU)
    fitted, _ = refine(prior, views, geometries)
    return template_baseline(fitted, gt, canonical_to_ct)
