"""An sCT against a ground-truth CT: the Slicer module's *Compare* without Slicer.

:func:`compare_volumes` gives what the module's Compare shows: the metric rows (SSIM, PSNR,
cosine similarity, MAE in HU; brain window and full range; inside the head and over the
whole volume; the sCT resampled onto the ground truth's grid) and the difference map
(sCT - ground truth, HU, on the sCT's grid). :func:`write_comparison` writes them to a folder
(``metrics.csv``, ``metrics.json``, ``difference.nrrd``) with ``compare.png``, the module's
compare layout rendered through Slicer's own slice logic (:mod:`XRayToCTLib.compare_view`,
which needs the ``slicer-core`` package).

Plain Python: no Qt, no MRML at import time. The modules that pull in torch, SimpleITK
or file readers are imported inside the functions, because :mod:`XRayToCTLib.mrml` (imported
by the Slicer module before its dependency check) takes :func:`on_grid_of` and
:func:`difference_volume` from here.
"""
from __future__ import annotations

import csv
import dataclasses
import os
from io import StringIO
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .constants import AIR_HU, SYNTHETIC_LABEL
from .geometry import Volume, lps_to_ras_points

__all__ = [
    "KIND_DIFFERENCE", "DIFFERENCE_UNITS", "COMPARE_WINDOWS", "COMPARE_REGIONS", "COMPARE_METRICS",
    "METRICS_COLUMNS", "Comparison", "on_grid_of", "difference_volume", "compare_volumes",
    "head_center_ras", "extent_ras", "check_position", "write_comparison",
]

KIND_DIFFERENCE = "sCT difference"
"""The ``kind`` of a difference volume (its metadata; the MRML node's ``XRayToCT.Kind``)."""
DIFFERENCE_UNITS = "HU (sCT - ground truth)"
COMPARE_WINDOWS = ("brain", "full")
COMPARE_REGIONS = ("head", "whole")
COMPARE_METRICS = ("ssim", "psnr", "cosine", "mae_hu")
METRICS_COLUMNS = ("metric", "window", "region", "value")
"""Columns of ``metrics.csv`` and keys of each row (as the module's metrics table)."""


@dataclasses.dataclass
class Comparison:
    """What :func:`compare_volumes` found.

    Attributes:
        rows: ``{"metric", "window", "region", "value"}`` per metric, window and region (as
            ``metrics.evaluate_pair`` returns them; the sCT on the ground truth's grid).
        difference: sCT - ground truth in HU on the sCT's grid.
        sct: the synthetic CT compared.
        ground_truth: the ground-truth CT.
    """

    rows: list[dict[str, Any]]
    difference: Volume
    sct: Volume
    ground_truth: Volume

    def value(self, metric: str, window: str, region: str = "head") -> float:
        """One row's value (NaN when there is no such row)."""
        for r in self.rows:
            if (r["metric"], r["window"], r["region"]) == (metric, window, region):
                return float(r["value"])
        return float("nan")

    def summary(self) -> str:
        """The head-region figures in one line (as the module's summary)."""
        return (f"inside the head: SSIM {self.value('ssim', 'brain'):.3f} (brain window) / "
                f"{self.value('ssim', 'full'):.3f} (full range), PSNR {self.value('psnr', 'full'):.1f} dB, "
                f"MAE {self.value('mae_hu', 'full'):.0f} HU")


def on_grid_of(volume: Volume, reference: Volume, default: float = AIR_HU) -> Volume:
    """``volume`` resampled (linear) onto ``reference``'s grid through world space; returned
    as is when the grids already agree."""
    same = (volume.array.shape == reference.array.shape
            and np.allclose(volume.index_to_lps(), reference.index_to_lps(), atol=1e-4))
    if same:
        return volume
    # late: preprocess pulls in the file readers (pydicom, Pillow), which the Slicer module's
    # first import of mrml, before its dependency check, must not need
    from .preprocess import resample_to_grid

    return resample_to_grid(volume, reference, default=default)


def difference_volume(sct: Volume, ground_truth: Volume) -> Volume:
    """``sCT - ground truth`` in HU on the sCT's grid (the ground truth is resampled there
    through world space; outside it counts as air, -1000 HU)."""
    gt = on_grid_of(ground_truth, sct)
    diff = np.asarray(sct.array, dtype=np.float32) - np.asarray(gt.array, dtype=np.float32)
    return sct.with_array(diff, kind=KIND_DIFFERENCE, units=DIFFERENCE_UNITS)


def _extent_lps(volume: Volume) -> tuple[np.ndarray, np.ndarray]:
    corners = volume.corners()
    return corners.min(axis=0), corners.max(axis=0)


def compare_volumes(sct: Volume, ground_truth: Volume, uncertainty: Volume | None = None) -> Comparison:
    """Compare a synthetic CT with a ground-truth CT (both HU, any grids that overlap in
    world space): the metric rows of the module's Compare (:data:`COMPARE_METRICS` in the
    :data:`COMPARE_WINDOWS`, over the :data:`COMPARE_REGIONS`; the sCT resampled onto the
    ground truth's grid) and the difference map (:func:`difference_volume`).

    With the sCT's ``uncertainty`` (the voxel SD of a diffusion model's samples, HU), two more
    head-region rows: ``spread_hu`` (its mean inside the head) and ``spread_error_spearman``
    (how well it ranks the voxels' absolute error:
    :func:`XRayToCTLib.evaluation.uncertainty_calibration`)."""
    # late: metrics loads torch (see the module's docstring)
    from .errors import InputError
    from .metrics import evaluate_pair

    (slo, shi), (glo, ghi) = (_extent_lps(v) for v in (sct, ground_truth))
    if np.any(shi <= glo) or np.any(ghi <= slo):
        raise InputError(None, "the synthetic CT and the ground truth do not overlap in space "
                               f"(LPS extents {np.round(slo, 1).tolist()}..{np.round(shi, 1).tolist()} and "
                               f"{np.round(glo, 1).tolist()}..{np.round(ghi, 1).tolist()} mm): "
                               "they are in different frames")
    on_gt = on_grid_of(sct, ground_truth)
    rows = evaluate_pair(on_gt, ground_truth, windows=COMPARE_WINDOWS,
                         regions=COMPARE_REGIONS, metrics=COMPARE_METRICS)
    if uncertainty is not None:
        rows += _spread_rows(on_gt, ground_truth, on_grid_of(uncertainty, ground_truth, default=-1.0))
    return Comparison(rows=rows, difference=difference_volume(sct, ground_truth), sct=sct,
                      ground_truth=ground_truth)


def _spread_rows(sct_on_gt: Volume, ground_truth: Volume, spread: Volume) -> list[dict[str, Any]]:
    """The uncertainty rows of :func:`compare_volumes` (inside the ground truth's head;
    outside the uncertainty map the spread is unknown, -1, and left out)."""
    from .evaluation import uncertainty_calibration
    from .hu import head_mask

    head = np.asarray(head_mask(ground_truth), dtype=bool)
    known = head & (spread.array >= 0)
    error = np.abs(sct_on_gt.array - ground_truth.array)  # as evaluate's calibration
    calibration = uncertainty_calibration(spread.array, error, mask=head)
    mean = float(spread.array[known].mean()) if known.any() else float("nan")
    rho = calibration["spearman"]
    return [{"metric": "spread_hu", "window": "full", "region": "head", "value": mean},
            {"metric": "spread_error_spearman", "window": "full", "region": "head",
             "value": float("nan") if rho is None else float(rho)}]


def head_center_ras(volume: Volume) -> np.ndarray:
    """RAS position (mm) of the centre of the head in ``volume`` (the centroid of its head
    mask, :func:`XRayToCTLib.hu.head_center`); the grid's centre when no head is found."""
    from .errors import InputError
    from .hu import head_center

    try:
        lps = head_center(volume)
    except InputError:
        lps = volume.center
    return lps_to_ras_points(np.asarray(lps, dtype=float)[None])[0]


def extent_ras(volumes: Sequence[Volume]) -> tuple[np.ndarray, np.ndarray]:
    """The RAS bounding box (mm; lowest and highest corner) of the volumes together."""
    corners = np.concatenate([lps_to_ras_points(v.corners()) for v in volumes])
    return corners.min(axis=0), corners.max(axis=0)


def check_position(position_ras: Sequence[float], volumes: Sequence[Volume]) -> tuple[np.ndarray, np.ndarray]:
    """Raise ``ValueError`` when the RAS point lies outside the volumes' bounding box
    (:func:`extent_ras`, which it returns)."""
    position = np.asarray(position_ras, dtype=float).reshape(3)
    low, high = extent_ras(volumes)
    if not np.all(np.isfinite(position)) or np.any(position < low - 1e-6) or np.any(position > high + 1e-6):
        raise ValueError(f"the position R {position[0]:g}, A {position[1]:g}, S {position[2]:g} mm lies "
                         f"outside the volumes (RAS {np.round(low, 1).tolist()} to "
                         f"{np.round(high, 1).tolist()} mm)")
    return low, high


def _metrics_csv(rows: Sequence[dict[str, Any]]) -> str:
    buf = StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(METRICS_COLUMNS)
    for r in rows:
        writer.writerow([r["metric"], r["window"], r["region"], repr(float(r["value"]))])
    return buf.getvalue()


def write_comparison(comparison: Comparison, out_dir: str | os.PathLike, *,
                     sct_path: str | os.PathLike | None = None,
                     ground_truth_path: str | os.PathLike | None = None,
                     picture: bool = True, position_ras: Sequence[float] | None = None,
                     range_hu: float = 500.0, opacity: float = 0.5, overlay: str = "sct",
                     window: str = "full", pane_px: int = 256, blend: str = "add") -> dict[str, Path]:
    """Write a comparison into ``out_dir`` (created), every file atomically.

    Files: ``metrics.csv`` (:data:`METRICS_COLUMNS`), ``metrics.json`` (the rows, the two
    input paths, the settings and the synthetic label), ``difference.nrrd`` (sCT - ground
    truth, HU, on the sCT's grid) and, with ``picture``, ``compare.png``
    (:func:`XRayToCTLib.compare_view.write_compare_png`: the compare layout through Slicer's
    slice logic, at ``position_ras``, default :func:`head_center_ras` of the sCT).

    Returns ``{"csv", "json", "difference"[, "png"]}`` -> path. The picture needs the
    ``slicer-core`` package: check :func:`XRayToCTLib.compare_view.unavailable` first, or the
    ``ImportError`` it raises reaches the caller after the other files are written."""
    from .io import write_json, write_text, write_volume

    out = Path(out_dir)
    if position_ras is None:
        position_ras = head_center_ras(comparison.sct)
    position = [float(x) for x in position_ras]
    if picture:
        check_position(position, (comparison.sct, comparison.ground_truth))
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": write_text(out / "metrics.csv", _metrics_csv(comparison.rows))}
    paths["json"] = write_json(out / "metrics.json", {
        "label": SYNTHETIC_LABEL,
        "sct": os.fspath(Path(sct_path).resolve()) if sct_path is not None else None,
        "ground_truth": os.fspath(Path(ground_truth_path).resolve()) if ground_truth_path is not None else None,
        "rows": comparison.rows,
        "summary": comparison.summary(),
        "definitions": {
            "sct_grid": "metrics: the sCT is resampled (linear) onto the ground truth's grid",
            "difference": "difference.nrrd: sCT - ground truth in HU on the sCT's grid "
                          "(the ground truth resampled there; outside it counts as air)",
            "regions": "head: the ground truth's head mask; whole: every voxel",
            "windows": "brain: level 40 / width 40 HU; full: [-1000, 1000] HU",
        },
        "picture": {"position_ras_mm": position, "range_hu": float(range_hu),
                    "opacity": float(opacity), "overlay": overlay, "blend": blend, "window": window}
        if picture else None,
    })
    paths["difference"] = write_volume(comparison.difference, out / "difference.nrrd")
    if picture:
        from .compare_view import write_compare_png

        paths["png"] = write_compare_png(
            out / "compare.png", comparison.sct, comparison.ground_truth, comparison.difference,
            position_ras=position, range_hu=range_hu, opacity=opacity, overlay=overlay,
            window=window, pane_px=pane_px, blend=blend, caption=comparison.summary()).path
    return paths
