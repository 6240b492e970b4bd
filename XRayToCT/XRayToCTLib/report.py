"""Pictures and reports people look at: PNG previews of volumes and radiographs.

Display conventions: axial slices are shown as radiologists read them (patient's right on
the image's left, anterior at the top), coronal and sagittal with superior at the top;
radiographs as stored (row 0 = top, see :mod:`XRayToCTLib.geometry`).
"""
from __future__ import annotations

import base64
import datetime
import html
import math
import os
from io import BytesIO
from pathlib import Path

import matplotlib
import numpy as np
import SimpleITK as sitk
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from .geometry import Volume
from .io import atomic_write, sitk_to_volume, volume_to_sitk, write_text


def to_uint8(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Clip to [lo, hi] and map linearly to 0..255."""
    scaled = (np.asarray(values, dtype=np.float32) - lo) / max(hi - lo, 1e-12)
    return (np.clip(scaled, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def save_png(image: np.ndarray, path: str | os.PathLike) -> Path:
    """Write an 8-bit grey image atomically."""
    path = Path(path)
    return atomic_write(path, lambda fh: Image.fromarray(np.ascontiguousarray(image)).save(
        fh, format="PNG"), binary=True)


def orthogonal_slices(volume: Volume, point=None) -> dict[str, np.ndarray]:
    """Axial, coronal and sagittal slices through ``point`` (LPS; default the centre) of a
    volume resampled onto an LPS-aligned grid, oriented for display (see module doc) with
    square pixels."""
    img = volume_to_sitk(volume.with_array(np.asarray(volume.array, dtype=np.float32)))
    if not np.allclose(volume.direction, np.eye(3)) or len(set(volume.spacing)) > 1:
        corners = volume.corners()
        sp = min(volume.spacing)
        lo, hi = corners.min(0), corners.max(0)
        size = [max(1, int(np.ceil((h - l) / sp))) for l, h in zip(lo, hi)]
        ref = sitk.Image(size, sitk.sitkFloat32)
        ref.SetSpacing((sp,) * 3)
        ref.SetOrigin(tuple(lo + sp / 2))
        img = sitk.Resample(img, ref, sitk.Transform(), sitk.sitkLinear, float(volume.array.min()))
    v = sitk_to_volume(img)
    p = v.center if point is None else np.asarray(point, dtype=float)
    i, j, k = np.clip(np.round(v.continuous_index(p[None])[0]).astype(int), 0,
                      np.asarray(v.size) - 1)
    a = v.array  # [k (S), j (P), i (L)]
    return {"axial": a[k, :, ::-1],         # rows anterior->posterior, cols right->left flipped: R on the left
            "coronal": a[::-1, j, ::-1],     # rows superior->inferior, patient's right on the left
            "sagittal": a[::-1, :, i]}       # rows superior->inferior, anterior on the left


def triptych(volume: Volume, lo: float, hi: float, point=None, gap: int = 4) -> np.ndarray:
    """Axial | coronal | sagittal side by side, windowed to [lo, hi], as 8-bit grey."""
    views = [to_uint8(s, lo, hi) for s in orthogonal_slices(volume, point).values()]
    h = max(v.shape[0] for v in views)
    padded = [np.pad(v, ((0, h - v.shape[0]), (0, gap))) for v in views]
    return np.concatenate(padded, axis=1)[:, :-gap]


# ----------------------------------------------------------------------------------------
# the evaluation report (self-contained HTML: images embedded as base64 PNG)
# ----------------------------------------------------------------------------------------
METRIC_LABELS = {"ssim": "SSIM (3D)", "ssim_slices": "SSIM (per-slice, published)",
                 "psnr": "PSNR (dB)", "mse": "MSE", "mae": "MAE (window units)",
                 "mae_hu": "MAE (HU)", "cosine": "cosine similarity", "fsim": "FSIM",
                 "lpips": "LPIPS"}


def _figure(width: float, height: float):
    """A matplotlib Figure on the Agg canvas (no pyplot, no global backend change)."""
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _png_bytes(fig, dpi: int = 100) -> bytes:
    buf = BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def boxplot_png(rows, window: str, region: str, metrics, models) -> bytes:
    """Box plots (median, IQR box, 1.5 IQR whiskers, outliers) of each metric per model, in
    one window and region, as PNG bytes. Non-finite values (inf PSNR) are left out."""
    n = len(metrics)
    cols = min(3, n)
    nrows = (n + cols - 1) // cols
    fig = _figure(4.2 * cols, 3.2 * nrows)
    for i, metric in enumerate(metrics):
        ax = fig.add_subplot(nrows, cols, i + 1)
        data, labels = [], []
        for m in models:
            vals = [r["value"] for r in rows if r["model"] == m and r["metric"] == metric
                    and r["window"] == window and r["region"] == region
                    and math.isfinite(r["value"])]
            data.append(vals if vals else [float("nan")])
            labels.append(m)
        ax.boxplot(data, showmeans=True)
        ax.set_xticks(range(1, len(labels) + 1), labels, rotation=20, fontsize=8)
        ax.set_title(METRIC_LABELS.get(metric, metric), fontsize=10, y=1.0)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"window {window}, region {region} (triangle = mean)", fontsize=11)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.12, top=0.9, wspace=0.3, hspace=0.45)
    return _png_bytes(fig)


def _strip(slices: dict, gap: int = 3) -> np.ndarray:
    """Axial | coronal | sagittal side by side (float, NaN gaps: drawn blank)."""
    views = [np.asarray(slices[k], dtype=np.float32) for k in ("axial", "coronal", "sagittal")]
    h = max(v.shape[0] for v in views)
    padded = [np.pad(v, ((0, h - v.shape[0]), (0, gap)), constant_values=np.nan) for v in views]
    return np.concatenate(padded, axis=1)[:, :-gap]


def comparison_png(gt: Volume, preds: dict, window: tuple[float, float], *, point=None,
                   views: dict | None = None, title: str = "", diff_range: float = 300.0) -> bytes:
    """One row per image, each row axial | coronal | sagittal (display conventions in the
    module doc): the ground truth and each prediction (on the ground truth's grid, HU) in the
    display ``window`` (lo, hi HU), each prediction's difference map (prediction - truth, HU,
    diverging colour map with a colour bar clipped to +-``diff_range``), and the input
    radiographs on top when given (``{view: 2D array}``). PNG bytes."""
    lo, hi = window
    gslices = orthogonal_slices(gt, point)
    rows = [("ground truth", _strip(gslices), "grey")]
    for name, arr in preds.items():
        s = orthogonal_slices(gt.with_array(np.asarray(arr, dtype=np.float32)), point)
        rows.append((str(name), _strip(s), "grey"))
        rows.append((f"{name} - truth", _strip({k: s[k] - gslices[k] for k in s}), "diff"))
    if views:
        imgs = [np.asarray(v, dtype=np.float32) for v in views.values()]
        imgs = [(v - v.min()) / max(float(np.ptp(v)), 1e-6) for v in imgs]
        h = max(v.shape[0] for v in imgs)
        strip = np.concatenate([np.pad(v, ((0, h - v.shape[0]), (0, 3)), constant_values=np.nan)
                                for v in imgs], axis=1)[:, :-3]
        rows.insert(0, ("input: " + " | ".join(views), strip, "input"))
    aspect = rows[-1][1].shape[1] / rows[-1][1].shape[0]
    fig = _figure(2.6 * aspect + 1.2, 2.7 * len(rows) + 0.4)
    grid = fig.add_gridspec(len(rows), 2, width_ratios=[1, 0.03])
    grey = matplotlib.colormaps["gray"].with_extremes(bad="white")
    div = matplotlib.colormaps["RdBu_r"].with_extremes(bad="white")
    for r, (label, img, kind) in enumerate(rows):
        ax = fig.add_subplot(grid[r, 0])
        if kind == "diff":
            im = ax.imshow(img, cmap=div, vmin=-diff_range, vmax=diff_range, interpolation="nearest")
        elif kind == "input":
            im = ax.imshow(img, cmap=grey, interpolation="nearest")
        else:
            im = ax.imshow(img, cmap=grey, vmin=lo, vmax=hi, interpolation="nearest")
        ax.set_axis_off()
        ax.text(0.0, 1.01, label if kind == "input" else f"{label}: axial | coronal | sagittal",
                transform=ax.transAxes, fontsize=9, va="bottom")
        if kind != "input":
            cax = fig.add_subplot(grid[r, 1])
            fig.colorbar(im, cax=cax).set_label("prediction - truth (HU)" if kind == "diff"
                                                else "HU", fontsize=8)
    if title:
        fig.text(0.5, 1 - 0.15 / fig.get_figheight(), title, ha="center", va="top", fontsize=10)
    fig.subplots_adjust(left=0.02, right=0.9, bottom=0.01, top=1 - 0.7 / fig.get_figheight(),
                        hspace=0.12, wspace=0.04)
    return _png_bytes(fig, dpi=80)


def _esc(x) -> str:
    return html.escape(str(x))


def _num(v, digits: int = 4) -> str:
    if v is None:
        return "–"
    if isinstance(v, str):
        return _esc(v)
    if math.isnan(v):
        return "–"
    if math.isinf(v):
        return "inf"
    return f"{v:.{digits}g}"


def _p(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.2g}" if v >= 1e-4 else "&lt;1e-4"


def _stats_table(summary: dict) -> str:
    out = ["<table><tr><th>metric</th><th>window</th><th>region</th><th>model</th><th>n</th>"
           "<th>mean [95% CI]</th><th>median [IQR]</th><th>gain over baselines (paired mean "
           "[95% CI]; p, Wilcoxon signed-rank)</th><th>note</th></tr>"]
    for g in summary["groups"]:
        gains = {}
        for x in g["gains"]:
            gains.setdefault(x["model"], []).append(
                f"vs {_esc(x['baseline'])}: {_num(x['mean_difference'])} "
                f"[{_num(x['ci_low'])}, {_num(x['ci_high'])}]; p={_p(x['signed_rank']['p'])}")
        arrow = "↑" if g["higher_is_better"] else "↓"
        for m, d in g["per_model"].items():
            out.append(
                f"<tr><td>{_esc(METRIC_LABELS.get(g['metric'], g['metric']))} {arrow}</td>"
                f"<td>{_esc(g['window'])}</td><td>{_esc(g['region'])}</td><td>{_esc(m)}</td>"
                f"<td>{d['n']}</td><td>{_num(d['mean'])} [{_num(d['ci_low'])}, {_num(d['ci_high'])}]</td>"
                f"<td>{_num(d['median'])} [{_num(d['q1'])}, {_num(d['q3'])}]</td>"
                f"<td>{'<br>'.join(gains.get(m, [])) or '–'}</td><td>{_esc(d['note'])}</td></tr>")
    out.append("</table>")
    return "\n".join(out)


def _comparisons_table(summary: dict) -> str:
    out = ["<table><tr><th>metric</th><th>window</th><th>region</th><th>A</th><th>B</th>"
           "<th>p (Wilcoxon rank-sum)</th><th>p (Wilcoxon signed-rank, paired cases)</th><th>n pairs</th></tr>"]
    for g in summary["groups"]:
        for c in g["comparisons"]:
            out.append(f"<tr><td>{_esc(g['metric'])}</td><td>{_esc(g['window'])}</td>"
                       f"<td>{_esc(g['region'])}</td><td>{_esc(c['a'])}</td><td>{_esc(c['b'])}</td>"
                       f"<td>{_p(c['rank_sum']['p'])}</td><td>{_p(c['signed_rank']['p'])}</td>"
                       f"<td>{c['signed_rank']['n']}</td></tr>")
    out.append("</table>")
    return "\n".join(out)


def _pct(v) -> str:
    return "–" if v is None else f"{100.0 * v:.1f} %"


def _field_table(summary: dict) -> str:
    """The share of each case's ground truth outside the model's field of view (not scored)."""
    rows = summary.get("field_of_view") or []
    if not rows:
        return ""
    out = ["<h2>Field of view</h2><p>Only the ground truth's voxels inside the model's field of "
           "view are scored (see Definitions). Share of the ground truth outside it, not scored:"
           "</p><table><tr><th>case</th><th>model</th><th>head outside the field</th>"
           "<th>volume outside the field</th><th>field</th></tr>"]
    for r in rows:
        out.append(f"<tr><td>{_esc(r['case'])}</td><td>{_esc(r['model'])}</td>"
                   f"<td>{_pct(r['head_outside_fraction'])}</td>"
                   f"<td>{_pct(r['volume_outside_fraction'])}</td><td>{_esc(r['field'])}</td></tr>")
    out.append("</table>")
    return "\n".join(out)


def write_html_report(path, result, summary: dict, *, cases: dict | None = None,
                      png_dir=None) -> Path:
    """Write the self-contained evaluation report (``report.html``) atomically.

    Args:
        path: the HTML file.
        result: an :class:`~XRayToCTLib.evaluation.EvaluationResult`.
        summary: its statistics (:func:`~XRayToCTLib.evaluation.write_summary`'s return).
        cases: ``{"best"|"median"|"worst": (case id, metric value, png bytes)}`` triptychs
            (see :func:`~XRayToCTLib.evaluation.case_figures`).
        png_dir: also write every embedded image there as ``report_*.png``.
    """
    path = Path(path)
    models = list(result.models) + list(result.baselines)
    metrics = result.settings["metrics"]
    images: list[tuple[str, str, bytes]] = []
    for w in result.settings["windows"]:
        for r in result.settings["regions"]:
            images.append((f"box_{w}_{r}", f"Box plots: window {w}, region {r}",
                           boxplot_png(result.rows, w, r, metrics, models)))
    for label, (cid, value, png) in (cases or {}).items():
        key = "case_" + "_".join("".join(c if c.isalnum() else " " for c in label).split())
        images.append((key, f"{label} case: {cid} ({value})", png))
    if png_dir is not None:
        for key, _, png in images:
            Path(png_dir).mkdir(parents=True, exist_ok=True)
            (Path(png_dir) / f"report_{key}.png").write_bytes(png)
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>XRayToCT evaluation</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:"
        "collapse;font-size:12px}td,th{border:1px solid #ccc;padding:3px 6px}th{background:#eee}"
        "img{max-width:100%}pre{background:#f6f6f6;padding:1em;font-size:11px;white-space:"
        "pre-wrap}</style></head><body>",
        "<h1>XRayToCT evaluation</h1>",
        f"<p>{_esc(datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'))}. "
        "Synthetic CTs (sCT) are synthetic: research only, not for diagnosis.</p>",
        f"<p>Models: {_esc(', '.join(result.models))}; baselines: "
        f"{_esc(', '.join(result.baselines) or 'none')}; cases: {len(result.gt_files)}; "
        f"windows: {_esc(', '.join(result.settings['windows']))}; regions: "
        f"{_esc(', '.join(result.settings['regions']))}. ↑ higher is better, ↓ lower is better. "
        "Infinite PSNR values (identical volumes) are written as <code>inf</code> in "
        "metrics.csv and left out of every mean, CI, median and test (counted in the note).</p>",
    ]
    if result.failures:
        parts.append(f"<h2>Failed cases ({len(result.failures)})</h2><table><tr><th>case</th>"
                     "<th>model</th><th>reason</th></tr>" + "".join(
                         f"<tr><td>{_esc(f['case'])}</td><td>{_esc(f['model'])}</td>"
                         f"<td>{_esc(f['reason'])}</td></tr>" for f in result.failures) + "</table>")
    if result.coverage:
        parts.append("<p>Predictions resampled onto the truth's grid that cover only part of "
                     "it (the rest counted as air, except outside the model's field of view, "
                     "which is not scored): " + ", ".join(
                         f"{_esc(c)}/{_esc(m)} {f:.1%}" for (c, m), f in sorted(result.coverage.items()))
                     + "</p>")
    parts.append(_field_table(summary))
    parts.append("<h2>Statistics</h2>" + _stats_table(summary))
    parts.append("<h2>Model comparisons</h2>" + _comparisons_table(summary))
    parts.append("<h2>Figures</h2>")
    for key, caption, png in images:
        parts.append(f"<figure id='{_esc(key)}'><img alt='{_esc(caption)}' src='data:image/png;base64,"
                     f"{base64.b64encode(png).decode('ascii')}'><figcaption>{_esc(caption)}"
                     "</figcaption></figure>")
    parts.append("<h2>Definitions</h2><pre>" + _esc(summary.get("definitions", "")) + "</pre>")
    if summary.get("field_of_view_definition"):
        parts.append("<h3>Field of view</h3><p>" + _esc(summary["field_of_view_definition"]) + "</p>")
    if summary.get("baseline_definitions"):
        parts.append("<h3>Baselines</h3>" + "".join(
            f"<p>{_esc(t)}</p>" for t in summary["baseline_definitions"].split("\n\n")))
    parts.append("</body></html>")
    return write_text(path, "\n".join(parts))
