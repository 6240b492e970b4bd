"""Speed of the evaluation engine on 128^3 volumes. The last line printed is a JSON object.

    .venv/bin/python benchmarks/metrics.py [--repeats 5] [--cases 50] [--threads N]

Figures (medians over repeats, seconds):
* ``ours_metric_set_s``: :func:`XRayToCTLib.metrics.compute_metrics` on a 128^3 pair (HU, full
  window, whole volume): 3D SSIM, PSNR, MSE, MAE in HU and cosine together, windowing included;
* ``monai_ssim_s``: MONAI's ``SSIMMetric(spatial_dims=3, data_range=1)`` alone on the same
  windowed pair (float32, as MONAI is normally used), measured in the same run;
* ``ratio_monai_vs_ours``: how many times faster the whole metric set is than MONAI's SSIM;
* ``ssim_ours`` / ``ssim_monai`` / ``ssim_skimage``: the values (MONAI normalises its Gaussian
  over a kernel_size window like skimage, in float32);
* ``ours_evaluate_pair_s``: the evaluation's full per-case set (``ssim, ssim_slices, psnr, mse,
  mae_hu, cosine`` x brain and full windows x head and whole regions, head mask included);
* ``evaluate_cases_s``: ``run_evaluation`` end to end on ``--cases`` prediction/truth pairs of
  128^3 NIfTI files (reading, pairing, all metrics above, statistics, CSV, JSON and the HTML
  report with its figures); ``evaluate_per_case_s`` the same per case.
* ``*_cuda_s`` when a GPU is present (after a warm-up; synchronised).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "XRayToCT"))
from XRayToCTLib import metrics as M  # noqa: E402
from XRayToCTLib.phantom import head_phantom  # noqa: E402


def _time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _pair(seed: int = 0):
    from scipy import ndimage
    gt = head_phantom(128, 2.0, seed=seed)
    rng = np.random.default_rng(seed)
    pred = ndimage.gaussian_filter(gt.array, 1.0) + rng.normal(0, 25, gt.array.shape)
    return gt, gt.with_array(pred.astype(np.float32))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--cases", type=int, default=50)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from monai.metrics import SSIMMetric
    from skimage.metrics import structural_similarity

    gt, pred = _pair()
    result: dict = {"shape": list(gt.array.shape), "torch_threads": torch.get_num_threads(),
                    "repeats": args.repeats}
    metric_set = ("ssim", "psnr", "mse", "mae_hu", "cosine")

    def ours():
        return M.compute_metrics(pred, gt, window="full", region="whole", metrics=metric_set)

    vals = ours()
    result["ours_metric_set_s"] = _time(ours, args.repeats)

    x = M.to_window(torch.from_numpy(pred.array)[None, None].float(), "full")
    y = M.to_window(torch.from_numpy(gt.array)[None, None].float(), "full")
    monai_ssim = SSIMMetric(spatial_dims=3, data_range=1.0)

    def monai():
        return monai_ssim(x, y)

    result["ssim_monai"] = float(monai().reshape(-1)[0])
    result["monai_ssim_s"] = _time(monai, args.repeats)
    result["ratio_monai_vs_ours"] = result["monai_ssim_s"] / result["ours_metric_set_s"]
    result["ssim_ours"] = vals["ssim"]
    result["ssim_skimage"] = float(structural_similarity(
        x[0, 0].double().numpy(), y[0, 0].double().numpy(), data_range=1.0,
        gaussian_weights=True, sigma=1.5, use_sample_covariance=False))
    result["ours_evaluate_pair_s"] = _time(lambda: M.evaluate_pair(
        pred, gt, metrics=("ssim", "ssim_slices", "psnr", "mse", "mae_hu", "cosine")),
        max(1, args.repeats // 2))

    if torch.cuda.is_available():
        pc = torch.from_numpy(pred.array)[None, None].cuda()
        gc = torch.from_numpy(gt.array)[None, None].cuda()
        xc, yc = x.cuda(), y.cuda()

        def ours_cuda():
            M.batch_metrics(pc, gc, window="full", region="whole", metrics=metric_set)
            torch.cuda.synchronize()

        def monai_cuda():
            monai_ssim(xc, yc)
            torch.cuda.synchronize()
        ours_cuda()
        monai_cuda()
        result["ours_metric_set_cuda_s"] = _time(ours_cuda, args.repeats)
        result["monai_ssim_cuda_s"] = _time(monai_cuda, args.repeats)

    if args.cases > 0:
        from XRayToCTLib.evaluation import run_evaluation
        from XRayToCTLib.io import write_volume
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            (root / "gt").mkdir()
            (root / "pred").mkdir()
            heads = [_pair(seed) for seed in range(min(5, args.cases))]
            rng = np.random.default_rng(1)
            for c in range(args.cases):
                g, p = heads[c % len(heads)]
                noisy = p.array + rng.normal(0, 5, p.array.shape).astype(np.float32)
                write_volume(g, root / "gt" / f"case{c:03d}.nii.gz")
                write_volume(p.with_array(noisy), root / "pred" / f"case{c:03d}.nii.gz")
            t = time.perf_counter()
            run_evaluation(root / "out", [root / "pred"], root / "gt")
            result["evaluate_cases"] = args.cases
            result["evaluate_cases_s"] = time.perf_counter() - t
            result["evaluate_per_case_s"] = result["evaluate_cases_s"] / args.cases
    for k, v in result.items():
        if isinstance(v, float):
            print(f"{k:30s} {v:.4f}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
