"""Why the Slicer module runs long work in a process: a reconstruction under a main thread
that holds Python's GIL, as 3D Slicer's does while idle.

3D Slicer's Python manager runs PythonQt without thread support: the main thread holds the
GIL between events, so a Python worker thread runs only when the main thread runs a little
Python (the panel's 200 ms timer). This script emulates that main thread: it holds the GIL in
C for 200 ms (``ctypes.PyDLL``'s ``usleep`` does not release it), then polls, and again. It
times the same reconstruction (a 64^3 phantom from its DRRs with the bundled
``cnn_inr_phantom64``, no registration) three ways, in the same run:

* ``reference``: in this process, main thread free (the blocking ``Logic.reconstruct``);
* ``thread``: in a worker thread polled by the GIL-holding main thread (the former
  ``BackgroundTask``);
* ``process``: ``xraytoct reconstruct`` in a separate process followed through its log
  (``XRayToCTLib.process.CommandTask``, what the module does now), polled the same way.

It prints each time and its ratio to the reference. The process pays for starting Python and
importing torch; the thread pays for the starved GIL. Usage::

    .venv/bin/python benchmarks/slicer_background.py [--threads 1] [--tick-ms 200]
"""
from __future__ import annotations

import argparse
import ctypes
import threading
import time

import torch

from XRayToCTLib import process
from XRayToCTLib.inference import Reconstructor
from XRayToCTLib.io import write_volume
from XRayToCTLib.phantom import head_phantom

MODEL = "cnn_inr_phantom64"


def _hold_gil(seconds: float) -> None:
    """Sleep in C without releasing the GIL (a PyDLL call keeps it)."""
    ctypes.PyDLL(None).usleep(int(seconds * 1e6))


def _poll_until(done, tick_s: float) -> float:
    """The emulated Slicer main thread: hold the GIL for ``tick_s``, run a little Python, again."""
    start = time.perf_counter()
    while not done():
        _hold_gil(tick_s)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--tick-ms", type=float, default=200.0, help="the main thread's GIL hold (ms)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tick = args.tick_ms / 1000.0
    ct = head_phantom(size=64, spacing=4.0, seed=0, pose=False)
    reconstructor = Reconstructor(MODEL, device="cpu")
    reconstructor.reconstruct(ct=ct, register=False)  # warm up (plans, allocations)

    start = time.perf_counter()
    reconstructor.reconstruct(ct=ct, register=False)
    reference = time.perf_counter() - start

    worker = threading.Thread(target=lambda: reconstructor.reconstruct(ct=ct, register=False))
    start = time.perf_counter()
    worker.start()
    thread = _poll_until(lambda: not worker.is_alive(), tick)

    def prepare(folder):
        write_volume(ct, folder / "ct.nrrd", compress=False)
        return ["reconstruct", "--ct", folder / "ct.nrrd", "--no-register", "--model", MODEL,
                "--out", folder / "sct.nrrd", "--device", "cpu"]

    task = process.CommandTask(prepare, lambda folder: None, name="benchmark",
                               env={"OMP_NUM_THREADS": str(args.threads)})
    in_process = _poll_until(lambda: task.done, tick)
    task.result()

    print(f"reconstruction of a 64^3 phantom with {MODEL}, {args.threads} torch thread(s); the main "
          f"thread holds the GIL {args.tick_ms:g} ms at a time")
    for name, seconds in (("reference (main thread free)", reference), ("worker thread", thread),
                          ("separate process (the module)", in_process)):
        print(f"  {name:32s} {seconds:7.2f} s   x{seconds / reference:6.1f}")


if __name__ == "__main__":
    main()
