"""Fine-tuning: a run that starts from a model package's weights (``TrainConfig.init``).

``init`` names a model package: a catalog name (``models.catalog``; its SHA-256 is checked)
or a ``.safetensors`` file (``models.package``: never unpickled). :func:`resolve_init`
takes the run's ``model`` and ``model_config`` from the package where the config does not
give them, and refuses a config that asks for another architecture (another model, other
views, layers or intensity mapping) with one line; :func:`load_init_weights` copies the
package's weights into the run's generator (the discriminator, if any, starts fresh).

The keys the engine sets from the dataset (:data:`RUN_KEYS`: the DRR size, the output grid
and the DRR geometry) may differ from the package's, as long as its weights still fit: the
CNN-INR's do not depend on them (it samples points, so a 64^3 package fine-tunes at 128^3),
the X2CT-GAN's depend on the image and output sizes. The field of view must be the
package's (the positional encoding and the 2D-to-3D lifting are scaled to it).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .. import models
from ..errors import InputError
from ..models.package import read_info, resolve_model

if TYPE_CHECKING:  # config imports this module
    from .config import TrainConfig

__all__ = ["RUN_KEYS", "resolve_init", "load_init_weights", "architecture"]

RUN_KEYS = ("image_size", "output_size", "output_spacing", "geometry")
"""Model config keys the training engine sets from the dataset (not the package's)."""
_FREE_KEYS = ("chunk",)  # inference settings that are not part of the architecture


def _json(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def architecture(config: dict[str, Any]) -> dict[str, Any]:
    """The architecture keys of a model's full config (``spec.config``): everything but the
    dataset's (:data:`RUN_KEYS`) and inference settings."""
    return {k: v for k, v in _json(config).items() if k not in RUN_KEYS + _FREE_KEYS}


def _package(name: str) -> tuple[Path, dict[str, Any]]:
    """The package file of ``init`` and its header (InputError for a bad name or file)."""
    path = resolve_model(name)
    return path, read_info(path)


def resolve_init(cfg: "TrainConfig") -> "TrainConfig":
    """``cfg`` with ``model`` and ``model_config`` taken from the ``init`` package where not
    given (``model_config`` keys given in ``cfg`` must equal the package's). A resumed run
    that names its model is left as it is (its ``config.yaml`` holds the package's settings,
    its checkpoint the weights: the package need not be there any more).

    Raises:
        InputError: an unknown or unreadable package, or a config that asks for another
            architecture than the package's (one line naming the package).
    """
    if not cfg.init or (cfg.resume and cfg.model):
        return cfg
    path, info = _package(str(cfg.init))
    name, pkg = info["model"], dict(info["config"])
    if cfg.model and cfg.model != name:
        raise InputError(path, f"holds the model {name}, not {cfg.model}: fine-tuning starts "
                         f"from the same architecture (leave the model out to take the "
                         f"package's)")
    arch = architecture(pkg)
    asked = {k: v for k, v in cfg.model_config.items() if k not in RUN_KEYS + _FREE_KEYS}
    if asked:  # the run's architecture as built from the given keys over the package's
        try:
            with torch.device("meta"):
                built = models.build_model(name, {**pkg, **asked})
        except ValueError as err:
            raise InputError(path, f"model_config does not fit the package's {name}: "
                             f"{err}") from None
        theirs = architecture(built.spec.config)
        diff = sorted(k for k in set(arch) | set(theirs) if arch.get(k) != theirs.get(k))
        if diff:
            shown = ", ".join(f"{k} {theirs.get(k)!r} (package: {arch.get(k)!r})"
                              for k in diff[:3])
            raise InputError(path, f"model_config asks for another {name} than the package's "
                             f"({shown}): fine-tuning needs the same architecture")
    merged = {**arch, **{k: v for k, v in cfg.model_config.items() if k in RUN_KEYS + _FREE_KEYS}}
    return cfg.replace(model=name, model_config=merged)


def load_init_weights(model: torch.nn.Module, init: str) -> dict[str, Any]:
    """Copy the ``init`` package's weights into ``model`` (built by the engine for this
    run's dataset); return the record of what was loaded (name, file name, SHA-256, model,
    its output size and title), for the run's checkpoints and the exported package.

    Raises:
        InputError: the package is another architecture, covers another field of view, or
            its weights do not fit ``model`` (one line: the first weight that differs).
    """
    loaded, info = models.load_model(init)  # a catalog model's SHA-256 is checked
    path = Path(info["path"])
    spec, theirs = model.spec, loaded.spec
    if theirs.name != spec.name or architecture(theirs.config) != architecture(spec.config):
        raise InputError(path, f"holds the model {theirs.name} with views "
                         f"{list(theirs.views)}, not the run's {spec.name} with views "
                         f"{list(spec.views)} (or other layers)")
    if not math.isclose(theirs.field_mm, spec.field_mm, rel_tol=1e-6):
        raise InputError(path, f"covers a {theirs.field_mm:g} mm field of view, the dataset "
                         f"{spec.field_mm:g} mm: fine-tuning keeps the field")
    state, mine = loaded.state_dict(), model.state_dict()
    for k in mine:
        if k not in state or state[k].shape != mine[k].shape:
            have = tuple(state[k].shape) if k in state else "none"
            raise InputError(path, f"its weights do not fit this run's {spec.name} (weight {k}: "
                             f"{have} in the package, {tuple(mine[k].shape)} here): it was "
                             f"made for {theirs.image_size} px views and a "
                             f"{theirs.output_size}^3 output, the run has {spec.image_size} px "
                             f"and {spec.output_size}^3")
    model.load_state_dict({k: state[k] for k in mine})
    entry = info.get("catalog") or {}
    return {"init": str(init), "file": path.name, "sha256": info["sha256"],
            "catalog": entry.get("name"), "model": theirs.name,
            "output_size": theirs.output_size, "image_size": theirs.image_size,
            "title": info.get("title")}
