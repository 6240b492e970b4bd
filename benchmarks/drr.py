"""AP + lateral 128^2 DRRs of a 256^3 head CT: the torch renderer against ``plastimatch drr``,
on the same machine, in the same run. The last line printed is a JSON object.

    .venv/bin/python benchmarks/drr.py [--repeats 5] [--ct FILE]

Figures (medians over repeats, seconds, both views together):
* ``torch_cpu_s``: :meth:`XRayToCTLib.drr.DRR.render` of a volume in memory (HU ->
  attenuation and projection) by one DRR object whose ray plans are cached (the intended
  use: one object per run), on the CPU, with the separable projector of axis-aligned views;
* ``torch_cpu_general_s``: the same with the general (``grid_sample``) projector, which
  every view used before the separable one;
* ``torch_cpu_new_object_s``: a new DRR object per render (the ray plans computed each
  time, as every caller did before plans were cached), separable projector;
* ``plastimatch_s``: two ``plastimatch drr`` processes on a CT file already on disk (what
  a user of Plastimatch waits for: reading the CT, HU conversion, exact ray trace, writing);
* ``plastimatch_trace_s``: the time Plastimatch itself reports for its ray trace
  ("Total time"), which excludes reading the CT and converting it;
* ``torch_cuda_s`` when a GPU is present (after one warm-up; synchronised).
The ratios are torch / plastimatch (below 1.0 = the torch renderer is faster); the goal of
the separable projector is ``ratio_torch_cpu_vs_plastimatch_trace <= 2``. It also prints the
agreement of the two (mean relative error over head pixels) and the largest difference
between the separable and the general projector (relative to the image's maximum).
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "XRayToCT"))
from XRayToCTLib import drr  # noqa: E402
from XRayToCTLib.drr_plastimatch import (drr_command, plastimatch_executable,  # noqa: E402
                                         render_plastimatch)
from XRayToCTLib.io import read_volume, volume_to_sitk  # noqa: E402
from XRayToCTLib.phantom import head_phantom  # noqa: E402


def _time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--ct", help="a 3D CT in HU (default: a 256^3 1 mm phantom head)")
    args = ap.parse_args()

    vol = read_volume(args.ct) if args.ct else head_phantom(256, 1.0, seed=0)
    views = drr.biplanar_geometry(vol, pixels=128)
    geoms = list(views.values())
    exe = plastimatch_executable()
    if exe is None:
        sys.exit("error: plastimatch is not installed (pip install plastimatch)")

    result = {"volume": list(vol.size), "spacing": list(vol.spacing), "pixels": 128,
              "cpu_threads": torch.get_num_threads(), "repeats": args.repeats}
    renderer = drr.DRR(views)
    general = drr.DRR(views)
    general.separable = False
    for r in (renderer, general):
        r.render(vol, device="cpu")  # warm-up (and the plans)
    result["torch_cpu_s"] = _time(lambda: renderer.render(vol, device="cpu"), args.repeats)
    result["torch_cpu_general_s"] = _time(lambda: general.render(vol, device="cpu"), args.repeats)
    result["torch_cpu_new_object_s"] = _time(lambda: drr.DRR(views).render(vol, device="cpu"),
                                             args.repeats)

    with tempfile.TemporaryDirectory() as tmp:
        ct = Path(tmp) / "ct.mha"
        sitk.WriteImage(volume_to_sitk(vol.with_array(vol.array.astype(np.float32))), str(ct))
        trace = []

        def run_plastimatch():
            for g in geoms:
                out = subprocess.run(drr_command(exe, ct, Path(tmp) / "drr", g),
                                     capture_output=True, text=True, check=True)
                m = re.search(r"Total time:\s*([0-9.eE+-]+)", out.stdout + out.stderr)
                if m:
                    trace.append(float(m.group(1)))

        run_plastimatch()  # warm-up (file cache)
        trace.clear()
        result["plastimatch_s"] = _time(run_plastimatch, args.repeats)
        if trace:
            per_run = [sum(trace[i:i + 2]) for i in range(0, len(trace), 2)]
            result["plastimatch_trace_s"] = statistics.median(per_run)

    if torch.cuda.is_available():
        renderer.render(vol, device="cuda")

        def cuda_run():
            renderer.render(vol, device="cuda")
            torch.cuda.synchronize()
        result["torch_cuda_s"] = _time(cuda_run, args.repeats)
        result["gpu"] = torch.cuda.get_device_name(0)
        # the projector alone on a volume already on the GPU (the training-loop case)
        hu = torch.from_numpy(vol.array.astype(np.float32)).cuda()[None]

        def fwd():
            with torch.no_grad():
                renderer(hu, vol)
            torch.cuda.synchronize()
        fwd()
        result["torch_cuda_forward_s"] = _time(fwd, args.repeats)

    ours = renderer.render(vol, device="cpu")
    before = general.render(vol, device="cpu")
    errs = []
    for g in geoms:
        ref = render_plastimatch(vol, g).array
        head = ref > 0.05 * ref.max()
        errs.append(float(np.mean(np.abs(ours[g.view].array - ref)[head] / ref[head])))
    result["mean_relative_error_in_head"] = dict(zip([g.view for g in geoms], errs))
    result["separable_vs_general_max_relative_difference"] = max(
        float(np.abs(ours[v].array - before[v].array).max() / before[v].array.max())
        for v in views)

    for name in ("torch_cpu", "torch_cpu_general", "torch_cpu_new_object"):
        result[f"ratio_{name}_vs_plastimatch"] = result[f"{name}_s"] / result["plastimatch_s"]
        if "plastimatch_trace_s" in result:
            result[f"ratio_{name}_vs_plastimatch_trace"] = (result[f"{name}_s"]
                                                            / result["plastimatch_trace_s"])
    if "torch_cuda_s" in result:
        result["ratio_torch_cuda_vs_plastimatch"] = result["torch_cuda_s"] / result["plastimatch_s"]
    for k, v in result.items():
        if k.endswith("_s") or k.startswith("ratio"):
            print(f"{k:45s} {v:.4f}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
