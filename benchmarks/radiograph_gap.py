"""The radiograph gap: every shipped reconstruction model on held-out cases from DRRs, from
simulated radiographs, and from those radiographs after harmonisation.

    nice -n 5 .venv/bin/python benchmarks/radiograph_gap.py --data DS --out DIR --draws 2

For each case of the dataset's ``--split`` (default ``test``) and each model
(default: every reconstruction model of the catalog, ``models.catalog(kind="reconstruction")``):

* **drr**: the case's CT (as the dataset stores it: the canonical frame) rendered into the
  model's own views with the model's own projection geometry (``Reconstructor.drr``, the
  renderer the DRR-trained models learnt from);
* **simulated**: :func:`XRayToCTLib.simulate.simulate` of the same CT at the same geometry,
  ``--draws`` physics draws per case, each drawn as ``xraytoct pairs`` draws them
  (:func:`XRayToCTLib.pairs.random_settings` from ``numpy.random.default_rng(--seed)``; the
  draws are made once, in case order, and every model sees the same images);
* **harmonised**: the same simulated radiographs through the harmoniser ``--harmonizer``
  (``Reconstructor(..., harmonize=...)``: each image is brought onto the model's detector,
  then translated into the DRR domain).

Diffusion models draw one sample (seed ``--seed``). Every reconstruction is written under
``OUT/predictions/<model>/<input>/`` and scored by the evaluation engine
(:func:`XRayToCTLib.evaluation.evaluate`) against the case's CT at the model's own size
(``preprocess.resample_to_size``: block averaging, as ``xraytoct prepare`` makes smaller
targets), under ``OUT/truth/<size>/``: SSIM, PSNR and MAE (HU) in the full window and SSIM in
the brain window, all in the head region. Writes ``OUT/scores.csv`` (one row per model, input,
draw, case and metric) and ``OUT/summary.json``, and prints a Markdown table: rows model x
input, columns the means over cases and draws, and per model the share of the DRR ->
simulated gap that harmonisation closes, ``(harmonised - simulated) / (drr - simulated)``.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from XRayToCTLib.dataset import load_manifest
from XRayToCTLib.evaluation import evaluate
from XRayToCTLib.inference import Reconstructor
from XRayToCTLib.io import read_volume, write_volume
from XRayToCTLib.models import catalog
from XRayToCTLib.pairs import random_settings
from XRayToCTLib.preprocess import resample_to_size
from XRayToCTLib.simulate import SimulationSettings, simulate

INPUTS = ("drr", "simulated", "harmonised")
COLUMNS = (("ssim", "full"), ("psnr", "full"), ("mae_hu", "full"), ("ssim", "brain"))
"""The table's columns: (metric, window), head region."""
LABELS = {("ssim", "full"): "SSIM full", ("psnr", "full"): "PSNR full (dB)",
          ("mae_hu", "full"): "MAE (HU)", ("ssim", "brain"): "SSIM brain"}
REGION = "head"
DEFAULT_HARMONIZER = "pix2pix_harmonizer64"


def physics_draws(ids: Sequence[str], draws: int, seed: int) -> dict[str, list[SimulationSettings]]:
    """``draws`` physics settings per case, drawn as ``xraytoct pairs`` draws them (one
    generator, ``default_rng(seed)``, in case order; each draw's noise seed from it)."""
    rng = np.random.default_rng(seed)
    return {cid: [random_settings(rng, int(rng.integers(0, 2 ** 31))) for _ in range(draws)]
            for cid in ids}


def _truth(ct_path: Path, size: tuple[int, ...], folder: Path, cid: str) -> None:
    """The case's CT at the model's size, written once per size."""
    path = folder / f"{cid}.nii.gz"
    if path.is_file():
        return
    ct = read_volume(ct_path)
    write_volume(ct if tuple(ct.size) == size else resample_to_size(ct, size), path)


def _method(model: str, kind: str, draw: int | None) -> str:
    return f"{model}|{kind}|{'-' if draw is None else draw}"


def reconstruct_all(data: Path, out: Path, ids: Sequence[str], model: str, harmonizer: str,
                    draws: dict[str, list[SimulationSettings]], seed: int
                    ) -> tuple[str, dict[str, Path], Path, float]:
    """Every reconstruction of one model (DRR, each draw simulated and harmonised); returns
    its label, ``{method: prediction folder}``, the truth folder and the seconds taken."""
    plain = Reconstructor(model, device="cpu")
    harm = Reconstructor(model, device="cpu", harmonize=harmonizer)
    name = plain.label
    size = tuple(int(n) for n in plain.grid.size)
    truth = out / "truth" / "x".join(map(str, size))
    truth.mkdir(parents=True, exist_ok=True)
    samples = 1 if hasattr(plain.model, "sample") else None
    folders: dict[str, Path] = {}
    t0 = time.perf_counter()

    def run(rec: Reconstructor, views: dict, kind: str, draw: int | None, cid: str) -> None:
        method = _method(name, kind, draw)
        folder = out / "predictions" / name / (kind if draw is None else f"{kind}_d{draw:02d}")
        folder.mkdir(parents=True, exist_ok=True)
        res = rec.reconstruct_views(views, samples=samples, seed=seed if samples else None)
        write_volume(res.sct, folder / f"{cid}.nii.gz")
        folders[method] = folder

    for cid in ids:
        ct_path = data / "cases" / cid / "ct.nii.gz"
        _truth(ct_path, size, truth, cid)
        ct = read_volume(ct_path)
        run(plain, plain.drr.render(ct), "drr", None, cid)
        for k, settings in enumerate(draws[cid]):
            sims = simulate(ct, plain.drr, settings)
            run(plain, sims, "simulated", k, cid)
            run(harm, sims, "harmonised", k, cid)
    return name, folders, truth, time.perf_counter() - t0


def score(folders: dict[str, Path], truth: Path) -> list[dict[str, Any]]:
    """The evaluation engine's rows for the table's metrics, one per method, case and metric,
    with the method split into model, input and draw."""
    methods = list(folders)
    result = evaluate([folders[m] for m in methods], truth, names=methods,
                      windows=("full", "brain"), regions=(REGION,),
                      metrics=("ssim", "psnr", "mae_hu"))
    if result.failures:
        raise RuntimeError(f"evaluation failures: {result.failures[:3]}")
    wanted = set(COLUMNS)
    rows = []
    for r in result.rows:
        if (r["metric"], r["window"]) not in wanted:
            continue
        model, kind, draw = r["model"].split("|")
        rows.append({"model": model, "input": kind, "draw": draw, "case": r["case"],
                     "metric": r["metric"], "window": r["window"], "region": r["region"],
                     "value": r["value"]})
    return rows


def summarise(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Means over cases and draws per model, input and column, and the share of the DRR ->
    simulated gap harmonisation closes (percent; None when the gap is zero)."""
    out: dict[str, Any] = {}
    for model in dict.fromkeys(r["model"] for r in rows):
        per: dict[str, Any] = {}
        for kind in INPUTS:
            cells = {}
            for metric, window in COLUMNS:
                vals = [r["value"] for r in rows if (r["model"], r["input"], r["metric"],
                                                     r["window"]) == (model, kind, metric, window)]
                cells[f"{metric}/{window}"] = float(np.mean(vals)) if vals else None
            cells["n"] = sum(1 for r in rows if (r["model"], r["input"], r["metric"],
                                                 r["window"]) == (model, kind, *COLUMNS[0]))
            per[kind] = cells
        closed = {}
        for metric, window in COLUMNS:
            k = f"{metric}/{window}"
            d, s, h = (per[i][k] for i in INPUTS)
            gap = None if d is None or s is None else d - s
            closed[k] = (None if gap is None or h is None or abs(gap) < 1e-12
                         else 100.0 * (h - s) / gap)
        per["gap_closed_percent"] = closed
        out[model] = per
    return out


def table(summary: dict[str, Any]) -> str:
    """The Markdown table: rows model x input, then the gap closed by harmonisation."""
    head = "| model | input | n | " + " | ".join(LABELS[c] for c in COLUMNS) + " |"
    lines = [head, "|" + " --- |" * (len(COLUMNS) + 3)]
    for model, per in summary.items():
        for kind in INPUTS:
            cells = []
            for metric, window in COLUMNS:
                v = per[kind][f"{metric}/{window}"]
                cells.append("–" if v is None else (f"{v:.3f}" if metric == "ssim" else f"{v:.1f}"))
            lines.append(f"| {model} | {kind} | {per[kind]['n']} | " + " | ".join(cells) + " |")
        closed = [per["gap_closed_percent"][f"{m}/{w}"] for m, w in COLUMNS]
        lines.append(f"| {model} | gap closed by harmonisation | | "
                     + " | ".join("–" if c is None else f"{c:.0f} %" for c in closed) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="dataset folder made by `xraytoct prepare`")
    ap.add_argument("--out", required=True, help="results folder")
    ap.add_argument("--models", nargs="*", help="catalog names or .safetensors files (default: "
                    "every reconstruction model of the catalog)")
    ap.add_argument("--harmonizer", default=DEFAULT_HARMONIZER,
                    help=f"harmoniser (catalog name or package; default {DEFAULT_HARMONIZER})")
    ap.add_argument("--draws", type=int, default=2, help="physics draws per case (default 2)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the draws and of diffusion samples")
    ap.add_argument("--split", default="test", help="the dataset split to use (default test)")
    ap.add_argument("--limit", type=int, default=None, help="only the first N cases (timing)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    if args.draws < 1:
        ap.error("--draws must be at least 1")
    torch.set_num_threads(args.threads)
    data, out = Path(args.data), Path(args.out)
    manifest = load_manifest(data)
    ids = sorted(manifest["split"][args.split])[: args.limit]
    if not ids:
        print(f"no case in split {args.split!r} of {data}", file=sys.stderr)
        return 2
    models = args.models or [e["name"] for e in catalog(kind="reconstruction")]
    draws = physics_draws(ids, args.draws, args.seed)
    rows: list[dict[str, Any]] = []
    timings = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "made at SAD/SID ..." and the like
        for model in models:
            name, folders, truth, secs = reconstruct_all(data, out, ids, model, args.harmonizer,
                                                         draws, args.seed)
            rows.extend(score(folders, truth))
            timings[name] = secs
            print(f"{name}: {len(ids)} cases x (1 + 2 x {args.draws}) reconstructions in "
                  f"{secs:.0f} s", file=sys.stderr)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "scores.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    summary = summarise(rows)
    record = {"data": str(data), "split": args.split, "cases": ids, "draws": args.draws,
              "seed": args.seed, "harmonizer": args.harmonizer, "region": REGION,
              "settings": {cid: [{k: v for k, v in s.to_dict().items()
                                  if k not in ("models", "spectrum")} for s in draws[cid]]
                           for cid in ids},
              "seconds": timings, "summary": summary}
    (out / "summary.json").write_text(json.dumps(record, indent=1), encoding="utf-8")
    print(table(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
