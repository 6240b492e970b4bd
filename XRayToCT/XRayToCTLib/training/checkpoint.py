"""Training checkpoints: the format, RNG states, seeding, atomic saving and safe loading.

A checkpoint (``checkpoints/last.pt``, ``checkpoints/best.pt``) is a ``torch.save`` dict of
tensors and plain types only (``format`` = :data:`CHECKPOINT_FORMAT`), written atomically
(a kill leaves the old file or the new one) and read with ``torch.load(weights_only=True)``
(nothing is unpickled). It holds the weights, the optimisers, the gradient scaler,
epoch/step, the best validation score and the RNG states (torch, numpy, Python, CUDA), so
that a resumed run continues exactly.
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import InputError
from ..io import atomic_write

__all__ = ["CHECKPOINT_FORMAT", "load_checkpoint", "save_checkpoint", "rng_state",
           "set_rng_state", "seed_everything"]

CHECKPOINT_FORMAT = "xraytoct-train-checkpoint/1"


def rng_state() -> dict[str, Any]:
    """This process's RNG states (torch CPU, numpy, Python, every CUDA device) as tensors
    and plain types (loadable with ``weights_only=True``)."""
    np_state = np.random.get_state()
    py = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"name": str(np_state[0]), "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                       "pos": int(np_state[2]), "has_gauss": int(np_state[3]),
                       "cached_gaussian": float(np_state[4])},
             "python": [int(py[0]), [int(x) for x in py[1]], py[2]]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` saved (CUDA states of the devices present)."""
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached_gaussian"]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        cuda = list(state["cuda"])[: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's generators."""
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a training checkpoint without unpickling code (``weights_only=True``).

    Raises:
        InputError: a missing, unreadable, unsafe or foreign file.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated, foreign or unsafe file
        raise InputError(path, f"not a readable training checkpoint ({type(err).__name__}: "
                         f"{str(err).splitlines()[0][:200]})") from err
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise InputError(path, f"not an XRayToCT training checkpoint ({CHECKPOINT_FORMAT})")
    return state


def save_checkpoint(path: str | os.PathLike, state: dict) -> Path:
    """Write ``state`` atomically (readers see the old checkpoint or the whole new one)."""
    return atomic_write(path, lambda fh: torch.save(state, fh), binary=True)
