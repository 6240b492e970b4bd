"""A diffusion package's quality, calibration and time against its number of DDIM steps, on a
dataset's split, through the evaluation engine.

    .venv/bin/python benchmarks/diffusion_steps.py --data DS --out OUT [--model diffusion_real128]
        [--steps 5 10 20] [--samples 3] [--split test] [--threads 1]

First, per case, the frozen prior's sCT is made (and kept by the model: one sample with one
DDIM step, timed: ``prior_s``). Then for each number of steps, every case of the split is
reconstructed from its DRRs (``Reconstructor.reconstruct_views``, ``samples`` samples, seed
0: the sCT is their mean, their voxel SD is written beside it), timed per sample (the UNet
passes only: ``sample_s``; one whole sample at the shipped size costs ``prior_s +
sample_s``). One ``evaluate`` scores every setting (head region; full window and brain
window) with the uncertainty calibration. Prints a Markdown table and, last, a JSON object.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

from XRayToCTLib.dataset import load_manifest
from XRayToCTLib.evaluation import run_evaluation
from XRayToCTLib.inference import Reconstructor
from XRayToCTLib.io import read_radiograph, write_volume

ROWS = [("ssim", "full", "head"), ("mae_hu", "full", "head"), ("ssim", "brain", "head")]


def _mean(summary: dict, model: str, metric: str, window: str, region: str) -> float | None:
    for group in summary.get("groups", []):
        if (group["metric"], group["window"], group["region"]) == (metric, window, region):
            return (group["per_model"].get(model) or {}).get("mean")
    return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="dataset folder")
    ap.add_argument("--out", required=True, help="results folder")
    ap.add_argument("--model", default="diffusion_real128", help="catalog name or .safetensors")
    ap.add_argument("--steps", type=int, nargs="+", default=[5, 10, 20])
    ap.add_argument("--samples", type=int, default=3)
    ap.add_argument("--split", default="test")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    data, out = Path(args.data), Path(args.out)
    ids = list(load_manifest(data)["split"][args.split])
    rec = Reconstructor(args.model, device="cpu")
    if not hasattr(rec.model, "set_sample_steps"):
        raise SystemExit(f"{args.model} is not a diffusion model")
    cases = {cid: {v: read_radiograph(data / "cases" / cid / f"{v}.nrrd")
                   for v in rec.spec.views} for cid in ids}
    rec.model.set_sample_steps(1)
    prior_s = []
    for views in cases.values():  # the prior's sCT, kept by the model for the settings below
        prior_s.append(rec.reconstruct_views(views, samples=1).info["timings_s"]["model"])
    timing: dict[int, float] = {}
    preds, names = [], []
    for steps in args.steps:
        rec.model.set_sample_steps(steps)
        name = f"ddim{steps}"
        folder = out / "predictions" / name
        folder.mkdir(parents=True, exist_ok=True)
        per_sample = []
        for cid, views in cases.items():
            res = rec.reconstruct_views(views, samples=args.samples, seed=0)
            per_sample.append(res.info["timings_s"]["model"] / args.samples)
            write_volume(res.sct, folder / f"{cid}.nii.gz")
            if res.uncertainty is not None:
                write_volume(res.uncertainty, folder / f"{cid}_uncertainty.nii.gz")
        timing[steps] = statistics.median(per_sample)
        print(f"{name}: {len(cases)} cases x {args.samples} samples, median "
              f"{timing[steps]:.1f} s per sample", file=sys.stderr, flush=True)
        preds.append(folder)
        names.append(name)
    paths = run_evaluation(out / "report", preds, data, names=names, split=args.split,
                           windows=("full", "brain"), regions=("head",),
                           metrics=("ssim", "mae_hu"), dataset=data)
    summary = json.loads(Path(paths["summary"]).read_text())
    cal = summary.get("calibration_by_model") or {}
    prior = statistics.median(prior_s)
    lines = ["| DDIM steps | s per sample (+ prior once) | SSIM full (head) | MAE HU (head) | "
             "SSIM brain (head) | Spearman spread vs error |", "|" + " --- |" * 6]
    table = {}
    for steps, name in zip(args.steps, names):
        vals = {f"{m}_{w}_{r}": _mean(summary, name, m, w, r) for m, w, r in ROWS}
        rho = (cal.get(name) or {}).get("mean_spearman")
        table[steps] = {**vals, "sample_s": round(timing[steps], 2), "spearman": rho}
        fmt = lambda v, f: "–" if v is None else format(v, f)  # noqa: E731
        lines.append(f"| {steps} | {timing[steps]:.1f} (+ {prior:.1f}) | "
                     f"{fmt(vals['ssim_full_head'], '.3f')} | "
                     f"{fmt(vals['mae_hu_full_head'], '.1f')} | "
                     f"{fmt(vals['ssim_brain_head'], '.3f')} | {fmt(rho, '.3f')} |")
    print("\n".join(lines))
    print(f"report: {Path(paths['report']).resolve()}")
    print(json.dumps({"model": args.model, "split": args.split, "cases": len(cases),
                      "samples": args.samples, "threads": args.threads,
                      "prior_s_median": round(prior, 2), "steps": table}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
