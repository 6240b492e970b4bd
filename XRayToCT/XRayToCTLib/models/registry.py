"""The model registry: name -> class, and :func:`build_model` (a config dict -> the class's
typed keyword arguments)."""
from __future__ import annotations

from typing import Any, Mapping

import torch

from .cnn_inr import CNNINR
from .common import config_arguments
from .diffusion import ConditionalDiffusion
from .pix2pix import Pix2PixGenerator
from .sxr2ct import SXR2CT
from .x2ct_gan import X2CTGenerator, X2CTGeneratorSingle

MODELS: dict[str, type[torch.nn.Module]] = {
    "x2ct_gan": X2CTGenerator,
    "x2ct_gan_single": X2CTGeneratorSingle,
    "cnn_inr": CNNINR,
    "diffusion": ConditionalDiffusion,  # residual diffusion on a prior model's sCT
    "sxr2ct": SXR2CT,
    "pix2pix": Pix2PixGenerator,  # 2D translation (harmoniser), not a reconstruction model
}


def build_model(name: str, config: Mapping[str, Any] | None = None) -> torch.nn.Module:
    """Build the model ``name`` from ``config``: its keys are the class's keyword arguments
    (missing ones take their defaults, an unknown one is a ValueError naming the valid ones;
    ``{"preset": "seed"}`` gives the published width of ``x2ct_gan``). The module's
    ``.spec.config`` holds every argument, so ``build_model(m.spec.name, m.spec.config)``
    rebuilds the same architecture."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    cls = MODELS[name]
    return cls(**config_arguments(cls, config, name))
