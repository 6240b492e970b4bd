"""Packaging a training run: one checkpoint -> one ``.safetensors`` model file."""
from __future__ import annotations

import json
import os
from pathlib import Path, PurePath, PureWindowsPath
from typing import Any

import torch

from ..errors import InputError, XRayToCTError
from ..models import build_model, save_package
from ..models.common import check_choice
from ..models.pix2pix import is_translation
from .checkpoint import load_checkpoint
from .config import VAL_REGIONS
from .translation import translation_record

__all__ = ["export_run", "portable"]


def portable(obj: Any) -> Any:
    """``obj`` with every absolute file path reduced to its last component (a folder or file
    name): a model package goes to other machines, and the paths of the machine that trained
    it mean nothing there (and should not travel)."""
    if isinstance(obj, dict):
        return {k: portable(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [portable(v) for v in obj]
    if isinstance(obj, str) and (obj.startswith("/") or PureWindowsPath(obj).drive) \
            and "\n" not in obj and len(obj) < 4096:
        return PurePath(obj).name if obj.startswith("/") else PureWindowsPath(obj).name
    return obj


def export_run(run_dir: str | os.PathLike, out: str | os.PathLike, checkpoint: str = "best", *,
               title: str | None = None, fp16: bool = False) -> Path:
    """Package a run's checkpoint as one ``.safetensors`` model file
    (``models.package.save_package``): the weights, plus in its header the model's spec
    (views, sizes, DRR geometry, intensity mapping), its config, the training-data
    description from the dataset manifest, the training settings, and the validation
    metrics of that checkpoint, and (``training.init``) the package a fine-tuning run started
    from (name, file name, SHA-256); file paths in them are reduced to names (:func:`portable`). ``checkpoint`` is ``"best"`` or ``"last"``; ``"best"``
    falls back to ``"last"`` (and says so in the metadata) when the run never validated.
    ``fp16`` stores the weights in half precision (half the size; cast back to float32 at
    load). Returns ``out``."""
    try:
        check_choice("export", "checkpoint", checkpoint, ("best", "last"))
    except ValueError as err:
        raise XRayToCTError(str(err)) from None
    run = Path(run_dir)
    if not run.is_dir():
        raise InputError(run, "run folder not found")
    path = run / "checkpoints" / f"{checkpoint}.pt"
    used = checkpoint
    if checkpoint == "best" and not path.exists() and (run / "checkpoints" / "last.pt").exists():
        path, used = run / "checkpoints" / "last.pt", "last (the run has no best.pt: it never validated)"
    state = load_checkpoint(path)
    model = build_model(state["model_name"], json.loads(state["model_config"]))
    model.load_state_dict(state["model"])
    model.eval()
    cfg = json.loads(state["config"])
    data = json.loads(state["data"])
    if is_translation(model):  # a pairs folder's record in the catalog's form
        data = translation_record(data)
    metadata = portable({
        "title": title or f"{state['model_name']} trained by XRayToCT",
        "training_data": data,
        "validation": ({"images": "[0, 1] normalised output vs target (validation pairs)",
                        "regions": {"whole": "every pixel", "head": "target > 0.02"},
                        **state.get("val", {})} if is_translation(model) else
                       {"window": cfg.get("val_window", "brain"),
                        "regions": list(VAL_REGIONS), **state.get("val", {})}),
        "training": {"checkpoint": used, "epoch": int(state["epoch"]),
                     "step": int(state["step"]), "best_metric": cfg.get("best_metric"),
                     "best": state.get("best"), "best_epoch": state.get("best_epoch"),
                     "world_size": state.get("world_size", 1), "saved": state.get("saved"),
                     "init": json.loads(state.get("init") or "null"), "settings": cfg},
    })
    out = Path(out)
    save_package(model, out, metadata=metadata, dtype=torch.float16 if fp16 else torch.float32)
    return out
