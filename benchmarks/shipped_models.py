"""The README's results table: the shipped models and the baselines on a held-out phantom test
set, through the evaluation engine.

    .venv/bin/python benchmarks/shipped_models.py --data ds64 --out results64

Builds the dataset if ``--data`` holds none (``xraytoct prepare --phantoms 200 --size 64
--drr-spacing 2 --seed 0``: the dataset the shipped models were trained on; only its
train split was used for training and its validation split for choosing checkpoints), then
reconstructs every case of the **test split** from its two DRRs with each model
(``Reconstructor.reconstruct_views``, CPU; with ``--refine`` also followed by the test-time
fit, rows ``<model>+refine``), and runs ``xraytoct evaluate`` with the outline (a constant inside
the first model's outline), template (mean training target) and back-projection baselines. Prints a Markdown table of mean
(95 % CI) per model for SSIM, PSNR (brain window L40/W40 and full range, head region) and MAE
(HU, full range, head), and as its last line a JSON object with the same numbers.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from XRayToCTLib.cli import main as xraytoct
from XRayToCTLib.dataset import load_manifest
from XRayToCTLib.evaluation import run_evaluation
from XRayToCTLib.inference import Reconstructor
from XRayToCTLib.io import read_radiograph, write_volume
from XRayToCTLib.models import catalog

ROWS = [("ssim", "brain", "head"), ("psnr", "brain", "head"), ("ssim", "full", "head"),
        ("psnr", "full", "head"), ("mae_hu", "full", "head"), ("ssim", "full", "whole")]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="dataset folder (built when missing)")
    ap.add_argument("--out", required=True, help="results folder")
    ap.add_argument("--models", nargs="*", help="catalog names or .safetensors files (default: "
                    "every bundled model)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--samples", type=int, default=None, metavar="N",
                    help="diffusion models: N samples per case (seed 0), the sCT their mean; "
                    "from 2 on their spread is written beside it and evaluate reports the "
                    "calibration")
    ap.add_argument("--refine", action="store_true",
                    help="also each model followed by the test-time fit (rows <model>+refine)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    data, out = Path(args.data), Path(args.out)
    if not (data / "manifest.json").is_file():
        code = xraytoct(["prepare", "--out", str(data), "--phantoms", "200", "--size", "64",
                         "--drr-spacing", "2", "--seed", "0"])
        if code:
            return code
    manifest = load_manifest(data)
    ids = list(manifest["split"][args.split])
    models = args.models or [e["name"] for e in catalog(kind="reconstruction")]
    names = [Path(m).stem if m.endswith(".safetensors") else m for m in models]
    preds, methods = [], []
    for model, name in zip(models, names):
        rec = Reconstructor(model, device="cpu")
        for refine, method in ((None, name), (True, f"{name}+refine"))[:2 if args.refine else 1]:
            folder = out / "predictions" / method
            folder.mkdir(parents=True, exist_ok=True)
            t0 = time.perf_counter()
            for cid in ids:
                views = {v: read_radiograph(data / "cases" / cid / f"{v}.nrrd")
                         for v in rec.spec.views}
                n = args.samples if hasattr(rec.model, "sample") else None
                res = rec.reconstruct_views(views, refine=refine, samples=n, seed=0)
                write_volume(res.sct, folder / f"{cid}.nii.gz")
                if res.uncertainty is not None:
                    write_volume(res.uncertainty, folder / f"{cid}_uncertainty.nii.gz")
            print(f"{method}: {len(ids)} cases in {time.perf_counter() - t0:.1f} s",
                  file=sys.stderr)
            preds.append(folder)
            methods.append(method)
    names = methods
    paths = run_evaluation(out / "report", preds, data, names=names, split=args.split,
                           baselines=["outline", "template", "backprojection"], dataset=data)
    summary = json.loads(Path(paths["summary"]).read_text())
    table = _table(summary)
    print(table)
    print(f"report: {Path(paths['report']).resolve()}")
    for m, c in (summary.get("calibration_by_model") or {}).items():
        print(f"uncertainty calibration of {m}: Spearman (spread vs |error|, head voxels) "
              f"mean {c['mean_spearman']:.3f}, median {c['median_spearman']:.3f} over "
              f"{c['cases']} cases")
    print(json.dumps({"split": args.split, "cases": len(ids), "models": names,
                      "figures": _figures(summary),
                      "calibration": summary.get("calibration_by_model")}))
    return 0


def _stats(summary: dict, model: str, metric: str, window: str, region: str) -> dict | None:
    for group in summary.get("groups", []):
        if (group["metric"], group["window"], group["region"]) == (metric, window, region):
            return group["per_model"].get(model)
    return None


def _models(summary: dict) -> list[str]:
    return list(summary.get("models", [])) + list(summary.get("baselines", []))


def _figures(summary: dict) -> dict:
    out = {}
    for m in _models(summary):
        for metric, window, region in ROWS:
            s = _stats(summary, m, metric, window, region)
            if s is not None:
                out[f"{m}/{metric}/{window}/{region}"] = {
                    k: s.get(k) for k in ("n", "mean", "ci_low", "ci_high", "median")}
    return out


def _table(summary: dict) -> str:
    head = "| model | " + " | ".join(f"{m} {w} ({r})" for m, w, r in ROWS) + " |"
    lines = [head, "|" + " --- |" * (len(ROWS) + 1)]
    for m in _models(summary):
        cells = []
        for metric, window, region in ROWS:
            s = _stats(summary, m, metric, window, region)
            if s is None or s.get("mean") is None:
                cells.append("–")
                continue
            fmt = "{:.3f}" if metric == "ssim" else "{:.1f}"
            cells.append(f"{fmt.format(s['mean'])} ({fmt.format(s['ci_low'])}–"
                         f"{fmt.format(s['ci_high'])})")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
