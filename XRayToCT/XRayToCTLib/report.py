"""Pictures and reports people look at: PNG previews of volumes and radiographs.

Display conventions, those of the DRR presets (README "Conventions") and of radiology
viewers: axial slices with anterior at the top and the patient's right on the image's left;
coronal slices with superior at the top and the patient's right on the left (as the AP DRR);
sagittal slices with superior at the top and the face on the right (as the lateral DRR);
radiographs as stored (row 0 = top, see :mod:`XRayToCTLib.geometry`). :data:`ORIENTATION`
gives the letters for each (:func:`label_orientation` draws them).
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

from .constants import HEAD_THRESHOLD_HU
from .geometry import Volume
from .hu import WINDOWS
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
    a = v.array  # [k (S), j (P), i (L)]: i = 0 is the patient's right, j = 0 anterior
    return {"axial": a[k, :, :],            # rows anterior->posterior, patient's right on the left
            "coronal": a[::-1, j, :],        # rows superior->inferior, patient's right on the left
            "sagittal": a[::-1, ::-1, i]}    # rows superior->inferior, posterior->anterior: face on the right


ORIENTATION: dict[str, tuple[str, str, str, str]] = {
    "axial": ("A", "P", "R", "L"), "coronal": ("S", "I", "R", "L"),
    "sagittal": ("S", "I", "P", "A"), "ap": ("S", "I", "R", "L"),
    "pa": ("S", "I", "L", "R"), "lateral": ("S", "I", "P", "A"),
    "lateral_left": ("S", "I", "A", "P")}
"""The patient directions at the (top, bottom, left, right) edges of each displayed image: the
slices of :func:`orthogonal_slices` and the DRR presets (README "Conventions")."""

# 5 x 7 bitmaps of the orientation letters (no font file, no new dependency)
_GLYPHS = {
    "A": ("01110", "10001", "10001", "11111", "10001", "10001", "10001"),
    "P": ("11110", "10001", "10001", "11110", "10000", "10000", "10000"),
    "L": ("10000", "10000", "10000", "10000", "10000", "10000", "11111"),
    "R": ("11110", "10001", "10001", "11110", "10100", "10010", "10001"),
    "S": ("01111", "10000", "10000", "01110", "00001", "00001", "11110"),
    "I": ("11111", "00100", "00100", "00100", "00100", "00100", "11111"),
}


def _glyph(letter: str, scale: int) -> np.ndarray:
    """A letter's bitmap (bool) enlarged ``scale`` times."""
    g = np.array([[c == "1" for c in row] for row in _GLYPHS[letter]], dtype=bool)
    return np.kron(g, np.ones((scale, scale), dtype=bool))


def label_orientation(image: np.ndarray, letters: tuple[str, str, str, str]) -> np.ndarray:
    """An 8-bit grey image with orientation letters (top, bottom, left, right; see
    :data:`ORIENTATION`) drawn white on a black outline at the middle of each edge, as
    radiology viewers do. Returns a copy."""
    img = np.array(image, dtype=np.uint8, copy=True)
    h, w = img.shape
    scale = max(1, min(h, w) // 90)
    gh, gw = 7 * scale, 5 * scale
    m = scale + 1  # margin: room for the outline
    if h < gh + 2 * m or w < gw + 2 * m:
        return img
    spots = [(m, (w - gw) // 2), (h - gh - m, (w - gw) // 2),
             ((h - gh) // 2, m), ((h - gh) // 2, w - gw - m)]
    for letter, (r, c) in zip(letters, spots):
        g = _glyph(letter, scale)
        outline = np.zeros((gh + 2, gw + 2), dtype=bool)
        for dr in range(3):
            for dc in range(3):
                outline[dr:dr + gh, dc:dc + gw] |= g
        img[r - 1:r + gh + 1, c - 1:c + gw + 1][outline] = 0
        img[r:r + gh, c:c + gw][g] = 255
    return img


def upscale(image: np.ndarray, min_size: int = 256) -> np.ndarray:
    """An 8-bit image enlarged by a whole factor (nearest neighbour: every pixel stays a
    visible square) until its shorter side is at least ``min_size``; unchanged when it is."""
    f = max(1, math.ceil(min_size / max(1, min(image.shape[:2]))))
    if f == 1:
        return np.asarray(image)
    h, w = image.shape[:2]
    return np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize(
        (w * f, h * f), Image.Resampling.NEAREST))


def radiograph_preview(values: np.ndarray, view: str, lo: float, hi: float,
                       min_size: int = 256) -> np.ndarray:
    """A radiograph (row 0 = top, as stored) windowed to [lo, hi], enlarged to at least
    ``min_size`` pixels a side and labelled with the orientation letters of its ``view``."""
    return label_orientation(upscale(to_uint8(values, lo, hi), min_size), ORIENTATION[view])


def triptych(volume: Volume, lo: float, hi: float, point=None, gap: int = 8,
             min_size: int = 192) -> np.ndarray:
    """Axial | coronal | sagittal side by side, windowed to [lo, hi], as 8-bit grey, each
    labelled with its orientation letters (:data:`ORIENTATION`); small volumes are enlarged
    to at least ``min_size`` pixels a side."""
    slices = orthogonal_slices(volume, point)
    f = max(1, math.ceil(min_size / max(1, min(min(s.shape) for s in slices.values()))))
    views = [label_orientation(upscale(to_uint8(s, lo, hi), min(s.shape) * f), ORIENTATION[name])
             for name, s in slices.items()]
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


METRIC_DEFINITIONS = {
    "ssim": "SSIM (3D): the structural similarity of Wang et al. (2004) computed on 3D "
            "neighbourhoods (Gaussian window, sigma 1.5 voxels; K1 0.01, K2 0.03), averaged over "
            "the region's voxels at least 5 voxels from the volume's border; as scikit-image "
            "computes it. 1 = identical.",
    "ssim_slices": "SSIM (per slice): the convention of the published X2CT-GAN code: the 2D "
                   "SSIM of every slice, averaged over the slices along each of the three axes, "
                   "then over the three axes. Usually higher than the 3D SSIM.",
    "psnr": "PSNR: 10 log10(1 / MSE) in decibels, with the window mapped onto [0, 1] (so the "
            "peak is 1, never an implied 4095); infinite when the volumes are equal.",
    "mse": "MSE: the mean squared difference of the windowed values (window mapped onto [0, 1]).",
    "mae": "MAE: the mean absolute difference of the windowed values (window mapped onto [0, 1]).",
    "mae_hu": "MAE (HU): the mean absolute difference in Hounsfield units after both volumes "
              "are clipped to the window (the MAE times the window's width).",
    "cosine": "Cosine similarity of the windowed volumes as vectors (region voxels only); 1 = "
              "proportional.",
    "fsim": "FSIM: the feature similarity index of Zhang et al. (2011), on 2D images.",
    "lpips": "LPIPS: the learned perceptual distance of Zhang et al. (2018), averaged over the "
             "slices along the three axes; lower is closer.",
}
"""Each metric in words for the readers of a report."""


def metric_definitions(settings: dict) -> str:
    """What the report's numbers mean, for readers (plain text, paragraphs separated by a blank
    line): the windows, the regions and each metric of ``settings`` (an evaluation's
    ``windows``, ``regions`` and ``metrics``)."""
    windows = ", ".join(
        f"{w} (level {WINDOWS[w][0]:g} HU, width {WINDOWS[w][1]:g} HU: "
        f"[{WINDOWS[w][0] - WINDOWS[w][1] / 2:g}, {WINDOWS[w][0] + WINDOWS[w][1] / 2:g}] HU)"
        if w in WINDOWS else str(w) for w in settings.get("windows", []))
    out = [f"Windows: {windows}. Every metric is computed in a window: both volumes, in HU, are "
           "clipped to it and mapped linearly onto [0, 1]. The same pair of volumes therefore "
           "scores differently in each window; the brain window is the hardest, as a few HU of "
           "error span much of it.",
           f"Regions: head = the ground truth's head (its voxels above {HEAD_THRESHOLD_HU:g} HU, the largest "
           "connected piece, enclosed holes filled); whole = every voxel of the ground truth's "
           "grid (mostly air, which raises every similarity).",
           "Statistics: each case gives one value per model, metric, window and region. The "
           "tables give the mean with its 95 % confidence interval (none for one case), the median with "
           "its interquartile range, and each model's paired gain over each baseline (mean of "
           "the per-case differences, with the Wilcoxon signed-rank test)."]
    out += [METRIC_DEFINITIONS[m] for m in settings.get("metrics", []) if m in METRIC_DEFINITIONS]
    return "\n\n".join(out)


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
        for x, vals in enumerate(data, start=1):  # every case as a dot: n = 1 or 2 has no box
            finite = [v for v in vals if math.isfinite(v)]
            ax.plot([x] * len(finite), finite, "o", color="tab:blue", alpha=0.6, markersize=4)
            if len(finite) < 3:
                for v in finite:
                    ax.annotate(_num(v), (x, v), xytext=(6, 0), textcoords="offset points",
                                fontsize=7, va="center")
        ax.set_xticks(range(1, len(labels) + 1),
                      [f"{m}\nn = {sum(math.isfinite(v) for v in d)}" for m, d in zip(labels, data)],
                      rotation=20, fontsize=8)
        ax.set_title(METRIC_LABELS.get(metric, metric), fontsize=10, y=1.0)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"window {window}, region {region} (dots = cases, triangle = mean; "
                 "a box needs at least 3 cases)", fontsize=11)
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


def _mean_ci(d: dict) -> str:
    """``mean [CI]``, or for one case its value and why there is no interval."""
    if d["n"] == 1:
        return f"{_num(d['mean'])} (n = 1: no interval)"
    return f"{_num(d['mean'])} [{_num(d['ci_low'])}, {_num(d['ci_high'])}]"


def _median_iqr(d: dict) -> str:
    if d["n"] == 1:
        return f"{_num(d['median'])} (n = 1)"
    return f"{_num(d['median'])} [{_num(d['q1'])}, {_num(d['q3'])}]"


def _gain(x: dict) -> str:
    """One gain over a baseline: paired mean [CI]; p, or the single difference for n = 1."""
    n = x.get("n", x.get("signed_rank", {}).get("n"))
    if n == 1:
        return (f"vs {_esc(x['baseline'])}: {_num(x['mean_difference'])} "
                "(n = 1: no interval, no test)")
    return (f"vs {_esc(x['baseline'])}: {_num(x['mean_difference'])} "
            f"[{_num(x['ci_low'])}, {_num(x['ci_high'])}]; p={_p(x['signed_rank']['p'])}")


def _stats_table(summary: dict) -> str:
    out = ["<table><tr><th>metric</th><th>window</th><th>region</th><th>model</th><th>n</th>"
           "<th>mean [95% CI]</th><th>median [IQR]</th><th>gain over baselines (paired mean "
           "[95% CI]; p, Wilcoxon signed-rank)</th><th>note</th></tr>"]
    for g in summary["groups"]:
        gains = {}
        for x in g["gains"]:
            gains.setdefault(x["model"], []).append(_gain(x))
        arrow = "↑" if g["higher_is_better"] else "↓"
        for m, d in g["per_model"].items():
            out.append(
                f"<tr><td>{_esc(METRIC_LABELS.get(g['metric'], g['metric']))} {arrow}</td>"
                f"<td>{_esc(g['window'])}</td><td>{_esc(g['region'])}</td><td>{_esc(m)}</td>"
                f"<td>{d['n']}</td><td>{_mean_ci(d)}</td><td>{_median_iqr(d)}</td>"
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


def reliability_png(calibration: list[dict]) -> bytes:
    """The reliability plot of uncertainty maps: per model, each case's mean absolute error
    (HU) against the mean spread (SD, HU) of its spread bins (``calibration``: the summary's
    per-case entries with ``bins``), and the line ``MAE = 0.80 SD`` (Gaussian errors of
    that SD), as PNG bytes."""
    fig = _figure(5.5, 4.2)
    ax = fig.add_subplot(1, 1, 1)
    colours = matplotlib.colormaps["tab10"]
    models = list(dict.fromkeys(c["model"] for c in calibration))
    top = 1.0
    for i, m in enumerate(models):
        for j, c in enumerate(x for x in calibration if x["model"] == m):
            xs = [b["mean_spread"] for b in c["bins"]]
            ys = [b["mae_hu"] for b in c["bins"]]
            if xs:
                top = max(top, max(xs))
                ax.plot(xs, ys, "o-", color=colours(i % 10), alpha=0.6, markersize=3,
                        label=m if j == 0 else None)
    ax.plot([0, top], [0, 0.8 * top], "k--", linewidth=1, label="MAE = 0.80 x SD (Gaussian)")
    ax.set_xlabel("spread in the bin (mean voxel SD, HU)")
    ax.set_ylabel("mean absolute error in the bin (HU)")
    ax.set_title("Uncertainty reliability (head voxels, 10 bins of equal count per case)",
                 fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.subplots_adjust(left=0.13, right=0.97, bottom=0.12, top=0.9)
    return _png_bytes(fig)


def _calibration_section(summary: dict) -> str:
    """The uncertainty calibration table (Spearman per model and per case), if any."""
    by_model = summary.get("calibration_by_model") or {}
    if not by_model:
        return ""
    out = ["<h2>Uncertainty calibration</h2><p>Spearman rank correlation between the voxel "
           "spread of the samples and the absolute error over the head (see Definitions; the "
           "reliability plot is under Figures).</p><table><tr><th>model</th><th>cases</th>"
           "<th>mean Spearman</th><th>median Spearman</th></tr>"]
    for m, v in by_model.items():
        out.append(f"<tr><td>{_esc(m)}</td><td>{v['cases']}</td><td>{_num(v['mean_spearman'], 3)}"
                   f"</td><td>{_num(v['median_spearman'], 3)}</td></tr>")
    out.append("</table><table><tr><th>case</th><th>model</th><th>Spearman</th><th>head voxels"
               "</th><th>spread, lowest bin (HU)</th><th>MAE there (HU)</th><th>spread, highest "
               "bin (HU)</th><th>MAE there (HU)</th></tr>")
    for c in summary.get("calibration") or []:
        lo, hi = (c["bins"][0], c["bins"][-1]) if c["bins"] else ({}, {})
        out.append(f"<tr><td>{_esc(c['case'])}</td><td>{_esc(c['model'])}</td>"
                   f"<td>{_num(c['spearman'], 3)}</td><td>{c['voxels']}</td>"
                   f"<td>{_num(lo.get('mean_spread'), 3)}</td><td>{_num(lo.get('mae_hu'), 3)}</td>"
                   f"<td>{_num(hi.get('mean_spread'), 3)}</td>"
                   f"<td>{_num(hi.get('mae_hu'), 3)}</td></tr>")
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
    if summary.get("calibration"):
        images.append(("reliability", "Uncertainty reliability: mean absolute error against "
                       "the spread, per case", reliability_png(summary["calibration"])))
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
    parts.append(_calibration_section(summary))
    parts.append("<h2>Model comparisons</h2>" + _comparisons_table(summary))
    parts.append("<h2>Figures</h2>")
    for key, caption, png in images:
        parts.append(f"<figure id='{_esc(key)}'><img alt='{_esc(caption)}' src='data:image/png;base64,"
                     f"{base64.b64encode(png).decode('ascii')}'><figcaption>{_esc(caption)}"
                     "</figcaption></figure>")
    parts.append("<h2>Definitions</h2>" + "".join(
        f"<p>{_esc(t)}</p>" for t in metric_definitions(result.settings).split("\n\n")))
    if summary.get("calibration_definition"):
        parts.append("<h3>Uncertainty calibration</h3><p>" + _esc(summary["calibration_definition"])
                     + "</p>")
    if summary.get("field_of_view_definition"):
        parts.append("<h3>Field of view</h3><p>" + _esc(summary["field_of_view_definition"]) + "</p>")
    if summary.get("baseline_definitions"):
        parts.append("<h3>Baselines</h3>" + "".join(
            f"<p>{_esc(t)}</p>" for t in summary["baseline_definitions"].split("\n\n")))
    parts.append("</body></html>")
    return write_text(path, "\n".join(parts))
