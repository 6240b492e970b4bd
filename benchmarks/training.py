"""Training speed on the CPU: steps per second of each model through the real training
:class:`~XRayToCTLib.training.engine.Engine`, as a ratio to a plain forward + backward +
optimiser step of the same network(s) on the same tensors, measured in the same run.

    nice -n 5 .venv/bin/python benchmarks/training.py [--sizes 64,128] [--threads 1]
        [--cases cnn_inr,cnn_inr+proj,x2ct_gan] [--rounds 2] [--min-time 3]
        [--workdir DIR] [--data DIR ...]

The cases are the shipped CPU configs, at their own settings except ``size`` (and the
dataset):

* ``cnn_inr``: ``configs/cnn_inr_cpu64.yaml`` (default width, the MSE on 16384 random points
  per step, no projection term: the full grid is never rendered);
* ``cnn_inr+proj``: the same with ``lambda_proj: 10`` (the full grid rendered every step and
  projected through the training's DRR);
* ``x2ct_gan``: ``configs/x2ct_gan_cpu64.yaml`` (compact width, LSGAN + L1 + projection, the
  conditional PatchGAN).

Each runs at every size (64^3 with 64^2 DRRs, 128^3 with 128^2 DRRs) on a small dataset made
by ``xraytoct prepare --phantoms 4 --size S --drr-spacing 2 --seed 0`` (2 training cases;
made in ``--workdir``, a temporary folder by default, unless ``--data`` gives one of that
size). One *engine step* is what :meth:`Engine.fit` does per step: the next batch from the
engine's own data loader (its worker processes, as the config says: one), then
:meth:`Engine.train_step` (targets, losses, DRR projection, backward, Adam). The *plain
step* is the network work alone, on tensors made once from the first batch: the
generator's forward (the full grid when the step renders it, the points when it queries
them), an MSE/L1 against the fixed target, backward, Adam; for the GAN also the
discriminator's (real + fake in one batch, then the fake for the generator). Engine and plain
steps alternate in ``--rounds`` rounds of the same number of steps (at least ``--min-time``
seconds each); the figures are medians over the rounds. ``ratio`` = engine s/step over
plain s/step: 1.0 means training costs no more than its networks.

``case load s`` is what the loader's worker does per case when the training split does not
fit ``cache_mb`` (reading it, making its target), measured here in the main process: a worker
keeps up while it is below the engine's s/step (the 2-case split here is cached after the
first epoch, as any split that fits).

The machine is shared and noisy: compare ratios measured in one run, not seconds across
runs. The thread count (``torch.set_num_threads``) is printed; the data loader's worker
runs one thread in its own process. The last line printed is a JSON object.

Results on this project's shared 2-core CPU (no GPU), one thread, load average 3-4 (other
jobs running), ``nice -n 5 .venv/bin/python benchmarks/training.py`` (the defaults:
``--sizes 64,128 --threads 1 --rounds 2 --min-time 3``; about 4 minutes, and 20 s more to make
the datasets, which ``--workdir DIR`` keeps for the next run). *Before*: the engine
of commit 0ded5e5 measured the same way (its ``fit`` made a new loader each epoch), run
within minutes of *after*:

==============  ====  =======================  =======================  =========
case            size  before s/step (ratio)    after s/step (ratio)     steps/s
==============  ====  =======================  =======================  =========
cnn_inr           64  0.175 (1.90)             0.090 (1.04)             x1.9
cnn_inr+proj      64  2.11 (1.05)              1.49 (1.00)              x1.4
x2ct_gan          64  3.82 (1.08)              1.93 (1.01)              x2.0
cnn_inr          128  0.385 (2.02)             0.184 (1.08)             x2.1
cnn_inr+proj     128  18.0 (1.06)              15.1 (1.01)              x1.2
x2ct_gan         128  18.3 (1.04)              17.1 (1.03)              x1.07
==============  ====  =======================  =======================  =========

(A first *before* run, under heavier load, gave ratios 1.67, 1.00, 1.03, 2.12, 1.23, 0.91.)
What the profiles (``torch.profiler``, ``cProfile``) showed and what changed:

* the CNN-INR on points: its step is short (0.1-0.2 s), so the main loop's waits were most of
  the overhead: the loader's worker started anew every epoch (and the next epoch's first case
  waited for it), the target's intensity mapping (and resampling at another ``size``) ran
  in the loop. Now one loader pass covers all epochs (the worker reads ahead across epoch
  ends; the random stream is unchanged, so results are bit-identical), the targets are made
  per case in the worker (``engine.CaseTargets``) and a split that fits ``cache_mb`` is kept
  in memory;
* the networks themselves (the plain step got faster too): the CNN-INR's in-place additions
  on ``grid_sample``'s output view copied that whole tensor in backward, and its full-grid
  render recomputed the grid's coordinates in float64 every step (about 1 s at 128^3): both
  gone, bit-identical, full-grid forward + backward -27 % at 64^3. PyTorch sends a one-case
  3D convolution with ``C * D * H <= 20480`` to its im2col kernel, not oneDNN — every 3x3x3
  convolution of the X2CT-GAN at 64^3: ``training.cpu.SplitConv3d`` runs it as a batch of two
  halves (the same convolution up to float32 rounding), generator forward + backward
  2.7 s -> 1.0 s;
* the DRR projection is not a cost (forward + backward 0.03 s at 64^3, 0.13 s at 128^3); it
  compares with the stored input DRRs, and the ``target`` reference (the brain mapping) is now
  rendered once per case instead of every step;
* threads: with 2 torch threads a step took 13-35x longer than with one whenever another job
  used the CPU (OpenMP threads wait on each other): ``TrainConfig.threads`` /
  ``xraytoct train --threads``, 1 in the CPU configs;
* left: per-step host syncs (``float(loss)``) cost nothing on a CPU; ``cnn_inr+proj`` and the
  GAN at 128^3 are network-bound (the CNN-INR's full-grid ``grid_sample`` backward, the GAN's
  and PatchGAN's 3D convolutions).
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "XRayToCT"))
from XRayToCTLib.dataset import load_manifest  # noqa: E402
from XRayToCTLib.training import TrainConfig  # noqa: E402
from XRayToCTLib.training.distributed import Dist, unwrap  # noqa: E402
from XRayToCTLib.training.engine import Engine, views_tensor  # noqa: E402
from XRayToCTLib.training.losses import last_logits, sample_points  # noqa: E402

CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "cnn_inr": ("cnn_inr_cpu64.yaml", {}),
    "cnn_inr+proj": ("cnn_inr_cpu64.yaml", {"lambda_proj": 10.0}),
    "x2ct_gan": ("x2ct_gan_cpu64.yaml", {}),
}


def prepare(size: int, workdir: Path) -> Path:
    """A 4-phantom dataset of ``size`` in ``workdir`` (made once, then reused)."""
    out = workdir / f"ds{size}"
    if not (out / "manifest.json").is_file() or not load_manifest(out).get("complete", True):
        cmd = [sys.executable, "-m", "XRayToCTLib.cli", "prepare", "--out", str(out),
               "--phantoms", "4", "--size", str(size), "--drr-spacing", "2", "--seed", "0"]
        env = {**os.environ, "PYTHONPATH": str(REPO / "XRayToCT")}
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    return out


class Plain:
    """The network work of one engine step, alone, on fixed tensors (see the module doc)."""

    def __init__(self, engine: Engine, batch: dict):
        cfg = engine.cfg
        self.g = copy.deepcopy(unwrap(engine.model)).train()
        self.opt = torch.optim.Adam(self.g.parameters(), lr=cfg.lr, betas=tuple(cfg.betas))
        with torch.no_grad():
            self.x = engine.normalize(views_tensor(batch, engine.views, engine.device))
            self.target = engine.model_target(batch)
            self.points = None
            if engine.points:
                self.points = sample_points(self.target, engine.grid, engine.points)
        self.full = engine.need_grid
        self.d = self.opt_d = None
        if engine.disc is not None:
            self.d = copy.deepcopy(unwrap(engine.disc)).train()
            self.opt_d = torch.optim.Adam(self.d.parameters(), lr=cfg.lr_d,
                                          betas=tuple(cfg.betas))

    def step(self) -> None:
        pred = self.g(self.x) if self.full else None
        if self.d is not None:
            logits = last_logits(self.d(torch.cat([self.target, pred.detach()]),
                                        torch.cat([self.x, self.x])))
            self.opt_d.zero_grad(set_to_none=True)
            logits.square().mean().backward()
            self.opt_d.step()
            self.d.requires_grad_(False)
        loss = torch.zeros(())
        if self.points is not None:
            pts, values = self.points
            loss = loss + F.mse_loss(self.g.query(self.x, pts), values)
        if pred is not None:
            loss = loss + F.l1_loss(pred, self.target)
        if self.d is not None:
            loss = loss + last_logits(self.d(pred, self.x)).square().mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        if self.d is not None:
            self.d.requires_grad_(True)


def _batches(engine: Engine) -> Iterator[dict]:
    """The training batches epoch after epoch, as :meth:`Engine.fit` draws them."""
    for batches in engine.epochs(0, 1 << 30):
        yield from batches


def _case_load_s(engine: Engine) -> float:
    """Seconds to read one training case and make its target (what a loader worker does per
    case when the split does not fit ``cache_mb``), median over the cases, in this process."""
    ds = engine.train_ds
    cache, ds.cache_in_memory = ds.cache_in_memory, False
    times = []
    for i in range(len(ds)):
        t0 = time.perf_counter()
        ds[i]
        times.append(time.perf_counter() - t0)
    ds.cache_in_memory = cache
    return statistics.median(times)


def measure(case: str, data: Path, size: int, rounds: int, min_time: float,
            run_dir: Path) -> dict[str, Any]:
    """One case at one size: engine and plain s/step (medians over the rounds)."""
    name, overrides = CASES[case]
    cfg = TrainConfig.from_yaml(REPO / "configs" / name, data=str(data), out=str(run_dir),
                                size=size, device="cpu", **overrides).resolved()
    dist = Dist("cpu")
    try:
        engine = Engine(cfg, dist, None)
        load = _case_load_s(engine)
        batches = _batches(engine)
        engine.model.train()
        if engine.disc is not None:
            engine.disc.train()
        first = next(batches)
        plain = Plain(engine, first)

        def engine_steps(n: int, batch: dict | None = None) -> float:
            t0 = time.perf_counter()
            for i in range(n):
                engine.train_step(batch if batch is not None and i == 0 else next(batches))
            return (time.perf_counter() - t0) / n

        def plain_steps(n: int) -> float:
            t0 = time.perf_counter()
            for _ in range(n):
                plain.step()
            return (time.perf_counter() - t0) / n

        warm = max(engine_steps(1, first), plain_steps(1))  # warm-up (allocations, workers)
        n = max(1, math.ceil(min_time / warm))
        eng, pl = [], []
        for _ in range(rounds):
            eng.append(engine_steps(n))
            pl.append(plain_steps(n))
        batches.close()  # ends the loader's workers
    finally:
        dist.close()
    e, p = statistics.median(eng), statistics.median(pl)
    return {"case": case, "size": size, "config": name, "overrides": overrides,
            "steps_per_round": n, "rounds": rounds, "engine_s": e, "plain_s": p,
            "case_load_s": load, "cached": engine.train_ds.cache_in_memory,
            "engine_rounds_s": eng, "plain_rounds_s": pl,
            "engine_steps_per_s": 1.0 / e, "plain_steps_per_s": 1.0 / p, "ratio": e / p,
            "reference": "generator + discriminator" if engine.disc is not None
            else "generator"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="64,128", help="output sizes (default 64,128)")
    ap.add_argument("--cases", default=",".join(CASES), help=f"of {', '.join(CASES)}")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds (default 2)")
    ap.add_argument("--min-time", type=float, default=3.0,
                    help="seconds per round and kind, at least one step (default 3)")
    ap.add_argument("--workdir", help="where datasets are made and kept (default: a "
                    "temporary folder, removed)")
    ap.add_argument("--data", action="append", default=[],
                    help="a prepared dataset to use for its size (repeatable)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sizes = [int(s) for s in args.sizes.split(",")]
    cases = [c.strip() for c in args.cases.split(",")]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        ap.error(f"unknown case(s) {unknown}; choose among {list(CASES)}")
    given = {int(load_manifest(d)["size"]): Path(d) for d in args.data}
    with tempfile.TemporaryDirectory(prefix="xraytoct-bench-train-") as tmp:
        work = Path(args.workdir) if args.workdir else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        data = {s: given.get(s) or prepare(s, work) for s in sizes}
        print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
              f"{os.cpu_count()} CPU(s), {platform.processor() or platform.machine()}")
        print(f"{'case':14s} {'size':>4s} {'engine s/step':>13s} {'steps/s':>8s} "
              f"{'plain s/step':>12s} {'ratio':>6s} {'case load s':>11s}  reference")
        rows = []
        for size in sizes:
            for case in cases:
                r = measure(case, data[size], size, args.rounds, args.min_time,
                            Path(tmp) / f"run-{case}-{size}")
                rows.append(r)
                print(f"{case:14s} {size:4d} {r['engine_s']:13.3f} "
                      f"{r['engine_steps_per_s']:8.2f} {r['plain_s']:12.3f} "
                      f"{r['ratio']:6.2f} {r['case_load_s']:11.3f}  {r['reference']}",
                      flush=True)
    print(json.dumps({"threads": torch.get_num_threads(), "torch": torch.__version__,
                      "rows": rows}))


if __name__ == "__main__":
    main()
