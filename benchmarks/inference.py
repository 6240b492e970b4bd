"""Network-only forward time and peak memory of the registry's models at 128^3, against the
published X2CT-GAN generator. The last line printed is a JSON object.

    .venv/bin/python benchmarks/inference.py [--device cpu|cuda] [--repeats 3] [--size 128]
                                             [--models x2ct_gan,cnn_inr] [--no-seed-width]

For each model at its default (shipped) width, with random weights, batch 1, the views
(``[1, V, P, P]``, already normalised) in memory:

* ``forward_s``: median wall time of ``model(views)`` under ``torch.inference_mode`` after
  one warm-up call (CUDA: synchronised);
* ``peak_rss_mb``: the process's peak resident memory during the forward (Linux VmHWM,
  reset just before; it includes the Python interpreter, torch and the weights, as a user
  sees it), and ``peak_delta_mb``: that peak minus the resident memory just before the
  forward (what the forward itself needs). CUDA: ``torch.cuda.max_memory_allocated``;
* ``params``, ``package_mb`` (the ``.safetensors`` package, fp32 and fp16).

Each model runs in its own child process, so one's memory does not hide another's. The
anchor is the published X2CT-GAN biplanar generator (61.7 M parameters, 247 MB fp32):
16.4 s and 2.0 GB peak for one 128^3 volume on this 2-core CPU (measured once);
``x2ct_gan_seed`` re-measures that width in the same run, and the ``ratios`` are each
model's time and peak RSS over the anchor's (below 1.0 = faster / smaller).

``time_model(name, config, device)`` is the reusable measurement (in-process).

End to end (``--end-to-end 64,128``, with ``--e2e-register`` to include the registration to
the template): ``xraytoct reconstruct --ct CT --model PKG --out sct.nii.gz`` run in a child
process per output size, on a 256^3 1 mm phantom head CT with a random pose, for the
shipped-width ``x2ct_gan`` with random weights: ``wall_s`` (reading the CT, loading the
package, preprocessing, DRRs, the network, the consistency score, placing the sCT on the CT
grid, writing every file) and the stage times from the sCT's ``.json`` sidecar, and the
child's peak RSS.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "XRayToCT"))
from XRayToCTLib import models  # noqa: E402

ANCHOR = {"name": "published X2CT-GAN generator (seed 001 width)", "params": 61.7e6,
          "package_mb": 247.0, "forward_s": 16.4, "peak_rss_mb": 2000.0,
          "device": "this project's 2-core CPU, random weights, one 128^3 volume"}


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process; False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _peak_mb() -> float:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def time_model(name: str, config: dict[str, Any] | None = None, device: str = "cpu", *,
               repeats: int = 3, size: int | None = None) -> dict[str, Any]:
    """Forward time and peak memory of ``build_model(name, config)`` for one input, in this
    process (see the module doc for the figures). ``size`` overrides ``output_size``."""
    cfg = dict(config or {})
    if size is not None:
        cfg["output_size"] = size
        cfg.pop("output_spacing", None)
    if name == "diffusion":  # every timed call pays the prior's sCT: one whole sample
        cfg.setdefault("cache", 0)
    dev = torch.device(device)
    torch.manual_seed(0)
    model = models.build_model(name, cfg).eval().to(dev)
    spec = model.spec
    n_params = sum(p.numel() for p in model.parameters())
    views = torch.rand(1, len(spec.views), spec.image_size, spec.image_size, device=dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    with torch.inference_mode():
        model(views)  # warm-up (lazy initialisation, allocator)
        sync()
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        before = _rss_mb()
        exact = _reset_peak()
        times = []
        for _ in range(max(1, repeats)):
            t0 = time.perf_counter()
            out = model(views)
            sync()
            times.append(time.perf_counter() - t0)
            del out
        peak = _peak_mb()
    result = {"model": name, "params": n_params, "image_size": spec.image_size,
              "output_size": spec.output_size, "views": list(spec.views),
              "device": str(dev), "forward_s": round(statistics.median(times), 3),
              "forward_all_s": [round(t, 3) for t in times],
              "peak_rss_mb": round(peak, 1), "peak_delta_mb": round(peak - before, 1),
              "peak_exact": exact}
    if dev.type == "cuda":
        result["cuda_peak_mb"] = round(torch.cuda.max_memory_allocated(dev) / 2 ** 20, 1)
    if hasattr(model, "sampler_settings"):  # diffusion: forward = one sample (prior + DDIM)
        result["sampler"] = model.sampler_settings()
    with tempfile.TemporaryDirectory() as tmp:
        for dt, key in ((torch.float32, "package_mb"), (torch.float16, "package_mb_fp16")):
            p = models.save_package(model.cpu(), Path(tmp) / "m.safetensors",
                                    metadata={"training_data": {}, "validation": {}}, dtype=dt)
            result[key] = round(p.stat().st_size / 1e6, 2)
    return result


def time_end_to_end(size: int, device: str = "cpu", *, register: bool = False) -> dict[str, Any]:
    """``xraytoct reconstruct --ct`` on a 256^3 phantom head, shipped-width ``x2ct_gan`` with
    random weights at ``output_size`` ``size`` (in-process; see the module doc)."""
    from XRayToCTLib.cli import main as cli_main
    from XRayToCTLib.io import write_volume
    from XRayToCTLib.phantom import head_phantom

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        ct = write_volume(head_phantom(256, 1.0, seed=11, rotation_deg=(4, -6, 9),
                                       translation_mm=(5, -4, 8)), tmp_path / "ct.nii.gz")
        torch.manual_seed(0)
        model = models.build_model("x2ct_gan", {"output_size": size})
        pkg = models.save_package(model, tmp_path / "m.safetensors",
                                  metadata={"training_data": {}, "validation": {}})
        del model
        out = tmp_path / "sct.nii.gz"
        argv = ["reconstruct", "--ct", str(ct), "--model", str(pkg), "--out", str(out),
                "--device", device] + ([] if register else ["--no-register"])
        t0 = time.perf_counter()
        code = cli_main(argv)
        wall = time.perf_counter() - t0
        if code != 0:
            raise SystemExit(f"xraytoct reconstruct exited {code}")
        info = json.loads((tmp_path / "sct.json").read_text())
    return {"model": "x2ct_gan", "output_size": size, "register": register, "device": device,
            "wall_s": round(wall, 2), "stages_s": info["timings_s"],
            "peak_rss_mb": round(_peak_mb(), 1), "ct": "256^3 phantom at 1 mm"}


def _child(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    if args.child == "end_to_end":
        print(json.dumps(time_end_to_end(args.size, args.device, register=args.e2e_register)))
        return
    res = time_model(args.child, json.loads(args.config), args.device, repeats=args.repeats,
                     size=args.size)
    print(json.dumps(res))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--size", type=int, default=128, help="output_size (and image size)")
    ap.add_argument("--models", default="x2ct_gan,cnn_inr",
                    help="registry names, comma-separated (diffusion: one sample, its default "
                    "prior cnn_inr_real128 from the catalog, 64-pixel views)")
    ap.add_argument("--config", default="{}", help="JSON config for every model (widths)")
    ap.add_argument("--no-seed-width", action="store_true",
                    help="skip re-measuring the published width (16 s, 2 GB on 2 cores)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--end-to-end", default="", metavar="SIZES",
                    help="also time 'xraytoct reconstruct --ct' at these output sizes (e.g. 64,128)")
    ap.add_argument("--e2e-register", action="store_true",
                    help="end to end with the registration to the template (default: --no-register)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return _child(args)

    runs = [(m, json.loads(args.config), m) for m in args.models.split(",") if m]
    if not args.no_seed_width:
        runs.append(("x2ct_gan", {"preset": "seed"}, "x2ct_gan_seed"))
    results = {}
    for name, cfg, label in runs:
        cmd = [sys.executable, __file__, "--child", name, "--config", json.dumps(cfg),
               "--device", args.device, "--repeats", str(args.repeats if label != "x2ct_gan_seed"
                                                         else 1),
               "--size", str(args.size), "--threads", str(args.threads)]
        proc = subprocess.run(cmd, capture_output=True, text=True,
                              env={**os.environ, "PYTHONWARNINGS": "ignore"})
        if proc.returncode != 0:
            raise SystemExit(f"{label} failed:\n{proc.stderr[-2000:]}")
        results[label] = json.loads(proc.stdout.strip().splitlines()[-1])
        r = results[label]
        print(f"{label:16s} {r['params'] / 1e6:6.2f} M params  {r['package_mb']:7.2f} MB "
              f"(fp16 {r['package_mb_fp16']:.2f})  forward {r['forward_s']:6.2f} s  peak RSS "
              f"{r['peak_rss_mb']:7.1f} MB (+{r['peak_delta_mb']:.1f} for the forward)",
              flush=True)
    end_to_end = []
    for size in [int(x) for x in args.end_to_end.split(",") if x]:
        cmd = [sys.executable, __file__, "--child", "end_to_end", "--device", args.device,
               "--size", str(size), "--threads", str(args.threads)]
        cmd += ["--e2e-register"] if args.e2e_register else []
        proc = subprocess.run(cmd, capture_output=True, text=True,
                              env={**os.environ, "PYTHONWARNINGS": "ignore"})
        if proc.returncode != 0:
            raise SystemExit(f"end to end at {size} failed:\n{proc.stderr[-2000:]}")
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        end_to_end.append(r)
        print(f"end to end {size:4d}^3 (register {r['register']}): {r['wall_s']:6.1f} s wall, "
              f"stages {r['stages_s']}, peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)
    ratios = {label: {"time_vs_anchor": round(r["forward_s"] / ANCHOR["forward_s"], 3),
                      "peak_rss_vs_anchor": round(r["peak_rss_mb"] / ANCHOR["peak_rss_mb"], 3)}
              for label, r in results.items()}
    if "x2ct_gan_seed" in results:
        seed = results["x2ct_gan_seed"]
        for label, r in results.items():
            ratios[label]["time_vs_seed_same_run"] = round(r["forward_s"] / seed["forward_s"], 3)
    print(json.dumps({"benchmark": "inference", "size": args.size, "device": args.device,
                      "threads": args.threads, "cpu": platform.processor() or platform.machine(),
                      "load_avg": os.getloadavg(), "anchor": ANCHOR, "models": results,
                      "ratios": ratios, "end_to_end": end_to_end}))


if __name__ == "__main__":
    main()
