"""Generation time of one 256^3 1 mm phantom head CT, against a reference measured in the same
run. The last line printed is a JSON object.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/phantom.py [--repeats 3] [--size 256]

Figures (medians over repeats, seconds):
* ``phantom_s``: :func:`XRayToCTLib.phantom.head_phantom` (default options: random pose,
  findings none, noise, blur), a different seed each repeat;
* ``phantom_cpu_s``: the CPU time it used (on a machine shared with other jobs the wall
  time includes waiting for a core; the CPU time is what an idle machine would take);
* ``reference_s``: allocating and filling a float32 array of the same size with standard
  normal numbers (``torch.randn``), the cheapest thing any generator of such a volume does;
* ``ratio`` = phantom_s / reference_s (how many "random volumes" one head costs), which
  carries across machines better than the seconds do.
The issue's aim is a 256^3 head in under 2 s on a 2-core CPU. Torch's thread count is
printed: on a loaded machine one thread (``OMP_NUM_THREADS=1``) is faster than two, because
the generator works in cache-sized slabs where thread start-up dominates.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "XRayToCT"))
from XRayToCTLib.phantom import head_phantom  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--size", type=int, default=256)
    args = ap.parse_args()
    n = args.size
    head_phantom(32, 8.0, seed=99)  # warm-up (imports, allocator)
    ref, gen, cpu = [], [], []
    for r in range(args.repeats):
        t0 = time.perf_counter()
        torch.randn(n, n, n, dtype=torch.float32)
        ref.append(time.perf_counter() - t0)
        t0, c0 = time.perf_counter(), time.process_time()
        vol = head_phantom(n, 256.0 / n, seed=r)
        gen.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        print(f"repeat {r}: phantom {gen[-1]:.2f} s, randn reference {ref[-1]:.3f} s "
              f"({vol.size}, findings {vol.metadata['findings']})")
    result = {"size": n, "spacing_mm": 256.0 / n, "repeats": args.repeats,
              "torch_threads": torch.get_num_threads(),
              "phantom_s": round(statistics.median(gen), 3),
              "phantom_cpu_s": round(statistics.median(cpu), 3),
              "reference_s": round(statistics.median(ref), 4)}
    result["ratio"] = round(result["phantom_s"] / result["reference_s"], 1)
    result["aim_2s_met"] = result["phantom_s"] < 2.0
    print(json.dumps(result))


if __name__ == "__main__":
    main()
