"""Helper processes for Testing/test_training.py (not a test module).

``python train_helper.py slow CONFIG_YAML SECONDS``
    train from a YAML config, sleeping ``SECONDS`` after every step (so a test can kill
    the run between checkpoints).
``python -m torch.distributed.run --nproc_per_node 2 train_helper.py ddp CONFIG_YAML OUT_DIR``
    train under DDP (gloo on CPU); every rank writes ``OUT_DIR/rank<r>.json`` with a
    checksum of its generator's and discriminator's parameters after training.
"""
from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

import torch

torch.set_num_threads(1)


def _digest(module: torch.nn.Module) -> dict:
    h = hashlib.sha256()
    total = 0.0
    for name, p in sorted(module.state_dict().items()):
        t = p.detach().cpu().contiguous()
        h.update(name.encode())
        h.update(t.numpy().tobytes())
        if t.is_floating_point():
            total += float(t.double().sum())
    return {"sha256": h.hexdigest(), "sum": total}


def main(argv: list[str]) -> int:
    from XRayToCTLib import training
    from XRayToCTLib.training.distributed import Dist
    from XRayToCTLib.training.engine import Engine

    mode, cfg_path = argv[0], argv[1]
    cfg = training.TrainConfig.from_yaml(cfg_path)
    if mode == "slow":
        delay = float(argv[2])

        def cb(fraction: float, message: str):
            time.sleep(delay)
            print(f"{fraction:.3f} {message}", flush=True)

        training.train(cfg, progress=cb)
        return 0
    if mode == "ddp":
        out = Path(argv[2])
        cfg = cfg.resolved()
        dist = Dist(cfg.device)
        try:
            Path(cfg.out).mkdir(parents=True, exist_ok=True)
            engine = Engine(cfg, dist, None)
            engine.fit()
            rec = {"rank": dist.rank, "world": dist.world, "step": engine.step,
                   "epoch": engine.epoch, "generator": _digest(engine.model),
                   "discriminator": _digest(engine.disc) if engine.disc is not None else None,
                   "steps_per_epoch": len(engine._loader(engine.train_ds, train=True))}
            (out / f"rank{dist.rank}.json").write_text(json.dumps(rec))
        finally:
            dist.close()
        return 0
    raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
