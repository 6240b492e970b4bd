"""Model packages (one ``.safetensors`` file per trained model) and the bundled catalog.

A package holds the weights (fp32, or fp16 to halve the size: they are cast back to fp32 at
load) and, in the safetensors header, string metadata, every value JSON-encoded:

``format`` ("xraytoct-model"), ``format_version``, ``model`` (registry name), ``spec``
(:class:`ModelSpec`), ``config`` (rebuilds the architecture), ``input`` (views, image size,
intensity convention), ``output`` (grid, spacing, intensity mapping), ``geometry`` (the DRR
geometry per view), ``intensity`` (the mapping's knots), ``training_data``, ``validation``
(metrics), ``created`` (UTC, ISO 8601), ``dtype``, ``software``, and any extra keys given.

Loading never unpickles (safetensors only). The catalog
``XRayToCT/Resources/Models/models.json`` lists the bundled packages
(``{"format_version": 1, "models": [{name, title, description, file, sha256, size, views,
output_size, trained_on, ...}]}``; ``file`` is relative to the catalog's folder); a
catalog package's sha256 is checked every time it is loaded.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .. import __version__
from ..drr import NORMALIZE_HIGH_Q, NORMALIZE_LOW_Q
from ..errors import InputError
from ..io import atomic_write
from .common import ModelSpec
from .intensity import get_mapping
from .registry import build_model

FORMAT = "xraytoct-model"
FORMAT_VERSION = 1
CATALOG_PATH = Path(__file__).resolve().parents[2] / "Resources" / "Models" / "models.json"
"""The bundled catalog (absent from a non-editable wheel: :func:`catalog` then lists none)."""

_RESERVED = ("format", "format_version", "model", "spec", "config", "input", "output",
             "geometry", "intensity", "created", "dtype", "software")


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _header(spec: Any, metadata: dict[str, Any], dtype: torch.dtype) -> dict[str, str]:
    clash = sorted(set(metadata) & set(_RESERVED))
    if clash:
        raise ValueError(f"metadata keys {clash} are written by save_package itself")
    if not isinstance(spec, ModelSpec):  # a 2D translation model (pix2pix.TranslationSpec)
        info = {"format": FORMAT, "format_version": FORMAT_VERSION, "model": spec.name,
                "spec": spec.to_dict(), "config": spec.config, **spec.package_header(),
                "training_data": {}, "validation": {},
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "dtype": str(dtype).replace("torch.", ""),
                "software": f"XRayToCT {__version__}, torch {torch.__version__}"}
        info.update(metadata)
        return {str(k): json.dumps(v) for k, v in info.items()}
    info: dict[str, Any] = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "model": spec.name,
        "spec": spec.to_dict(), "config": spec.config,
        "input": {"views": list(spec.views), "image_size": spec.image_size,
                  "layout": "[B, V, P, P], views in this order",
                  "convention": "line integrals, bone bright; each image scaled by "
                                f"normalize_views: (x - q{NORMALIZE_LOW_Q:g}) / "
                                f"(q{NORMALIZE_HIGH_Q:g} - q{NORMALIZE_LOW_Q:g}) clipped "
                                "to [0, 1]"},
        "output": {"size": spec.output_size, "spacing_mm": spec.output_spacing,
                   "field_mm": spec.output_size * spec.output_spacing,
                   "grid": "S^3 voxels centred on the LPS origin, identity direction, array "
                           "order [z, y, x]", "intensity": spec.intensity},
        "geometry": spec.geometry,
        "intensity": get_mapping(spec.intensity).to_dict(),
        "training_data": {}, "validation": {},
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "dtype": str(dtype).replace("torch.", ""),
        "software": f"XRayToCT {__version__}, torch {torch.__version__}",
    }
    info.update(metadata)
    return {str(k): json.dumps(v) for k, v in info.items()}


def save_package(model: torch.nn.Module, path: str | os.PathLike, *,
                 metadata: dict[str, Any], dtype: torch.dtype = torch.float32) -> Path:
    """Write ``model`` (built by :func:`~XRayToCTLib.models.build_model`) to one
    ``.safetensors`` file, atomically (temporary name, then rename).

    Args:
        metadata: at least ``training_data`` (what it was trained on) and ``validation``
            (metrics) are expected; any JSON-serialisable values, stored JSON-encoded.
        dtype: ``torch.float32`` or ``torch.float16`` (half the size; cast back to fp32 at
            load, a relative rounding of about 5e-4 per weight).
    """
    spec = getattr(model, "spec", None)
    if not isinstance(spec, ModelSpec) and not hasattr(spec, "package_header"):
        raise TypeError("save_package needs a model built by build_model (with .spec)")
    if dtype not in (torch.float32, torch.float16):
        raise ValueError(f"dtype must be torch.float32 or torch.float16, got {dtype}")
    if not isinstance(metadata, dict):
        raise TypeError("metadata must be a dict")
    header = _header(spec, metadata, dtype)
    tensors = {k: (v.detach().to("cpu", dtype) if v.is_floating_point() else v.detach().cpu())
               .contiguous().clone() for k, v in model.state_dict().items()}
    path = Path(path)
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=header), to_path=True,
                 create_parent=False)
    return path


def read_info(path: str | os.PathLike) -> dict[str, Any]:
    """A package's decoded header metadata (no weights read); InputError if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such model package")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata()
    except Exception as exc:  # safetensors raises its own error types for foreign files
        raise InputError(path, f"not a safetensors model package ({type(exc).__name__}: "
                               f"{str(exc).splitlines()[0] if str(exc) else 'unreadable'})"
                         ) from None
    try:
        info = {k: json.loads(v) for k, v in (raw or {}).items()}
    except ValueError:
        raise InputError(path, "a .safetensors file whose metadata is not an XRayToCT "
                               "model package's (not JSON)") from None
    if info.get("format") != FORMAT:
        raise InputError(path, "a .safetensors file but not an XRayToCT model package "
                               "(no 'format': 'xraytoct-model' in its header)")
    if int(info.get("format_version", 0)) > FORMAT_VERSION:
        raise InputError(path, f"package format {info.get('format_version')} is newer than "
                               f"this XRayToCT reads ({FORMAT_VERSION}); update XRayToCT")
    return info


def load_package(path: str | os.PathLike, *, device: str | torch.device = "cpu",
                 expected_sha256: str | None = None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Load a package: ``(model in eval mode on device, info)``; ``info`` is the decoded
    header plus ``path``, ``sha256`` and ``size``. Never unpickles. Raises
    :class:`InputError` (one line naming the file) for a missing, corrupt or foreign file,
    weights that do not fit the stored config, or a SHA-256 other than ``expected_sha256``.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such model package")
    digest = sha256_file(path)
    if expected_sha256 is not None and digest.lower() != str(expected_sha256).lower():
        raise InputError(path, f"SHA-256 {digest[:12]}... differs from the catalog's "
                               f"{str(expected_sha256)[:12]}...: the file is corrupt or was "
                               f"replaced")
    info = read_info(path)
    try:
        model = build_model(info["model"], info["config"])
    except (KeyError, ValueError, TypeError) as exc:
        raise InputError(path, f"the package's model/config cannot be built: {exc}") from None
    state = model.state_dict()
    try:
        with safe_open(str(path), framework="pt") as f:
            keys = set(f.keys())
            if keys != set(state):
                missing, extra = sorted(set(state) - keys), sorted(keys - set(state))
                raise InputError(path, f"weights do not fit the {info['model']} config "
                                       f"(missing {missing[:3]}, unexpected {extra[:3]})")
            tensors = {k: f.get_tensor(k) for k in keys}
    except InputError:
        raise
    except Exception as exc:
        raise InputError(path, f"corrupt model package ({type(exc).__name__})") from None
    for k, t in tensors.items():
        if tuple(t.shape) != tuple(state[k].shape):
            raise InputError(path, f"weight {k} has shape {tuple(t.shape)}, the config "
                                   f"needs {tuple(state[k].shape)}")
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise InputError(path, f"weight {k} has NaN or infinite values")
    model.load_state_dict({k: t.to(state[k].dtype) for k, t in tensors.items()})
    model.to(device).eval()
    info.update(path=str(path), sha256=digest, size=path.stat().st_size)
    return model, info


# -------------------------------------------------------------------------------------------
# Catalog
# -------------------------------------------------------------------------------------------

def catalog(path: str | os.PathLike | None = None, *, kind: str | None = None
            ) -> list[dict[str, Any]]:
    """The bundled models (entries of ``models.json``; none when the file is absent).

    An entry's ``kind`` says what the model does: none (or ``"reconstruction"``) for the
    sCT models, ``"translation_2d"`` for a harmoniser (:mod:`.pix2pix`). ``kind`` keeps
    only the entries of that kind (``"reconstruction"``: the models a reconstruction can
    use)."""
    path = Path(path) if path is not None else CATALOG_PATH
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(path, f"unreadable model catalog ({exc})") from None
    entries = data.get("models") if isinstance(data, dict) else data
    if not isinstance(entries, list) or not all(
            isinstance(e, dict) and {"name", "file", "sha256"} <= set(e) for e in entries):
        raise InputError(path, "the model catalog must list entries with name, file and sha256")
    return [dict(e) for e in entries
            if kind is None or e.get("kind", "reconstruction") == kind]


def _find(name_or_path: str | os.PathLike, catalog_path: str | os.PathLike | None
          ) -> tuple[Path, dict[str, Any] | None]:
    cat_path = Path(catalog_path) if catalog_path is not None else CATALOG_PATH
    text = os.fspath(name_or_path)
    entries = catalog(cat_path)
    for e in entries:
        if e["name"] == text:
            f = (cat_path.parent / e["file"]).resolve()
            if not f.is_file():
                raise InputError(f, f"model {text!r} is in the catalog but its file is missing")
            return f, e
    p = Path(text)
    if p.is_file():
        return p, None
    if p.suffix == ".safetensors" or os.sep in text:
        raise InputError(p, "no such model file")
    names = ", ".join(e["name"] for e in entries) or "none bundled yet"
    raise InputError(None, f"unknown model {text!r}: not a file and not in the catalog "
                           f"(catalog models: {names})")


def resolve_model(name_or_path: str | os.PathLike, *,
                  catalog_path: str | os.PathLike | None = None) -> Path:
    """The package file of a catalog name, or the given file itself (its SHA-256 is checked
    at load: use :func:`load_model`)."""
    return _find(name_or_path, catalog_path)[0]


def load_model(name_or_path: str | os.PathLike, *, device: str | torch.device = "cpu",
               catalog_path: str | os.PathLike | None = None
               ) -> tuple[torch.nn.Module, dict[str, Any]]:
    """:func:`resolve_model` then :func:`load_package`, checking a catalog model's SHA-256;
    ``info["catalog"]`` is its catalog entry (``None`` for a plain file)."""
    path, entry = _find(name_or_path, catalog_path)
    model, info = load_package(path, device=device,
                               expected_sha256=entry["sha256"] if entry else None)
    info["catalog"] = entry
    return model, info


#: Parts of a package's training record that describe the development run, not the model:
#: the dataset folder it was read from, per-case id lists, the dataset's resume key.
DEVELOPMENT_KEYS = frozenset({"path", "train_cases", "val_cases", "test_cases", "settings_key"})


def _no_machine_paths(value: Any) -> Any:
    """``value`` with every absolute path string reduced to its last part (a folder or file
    name), recursively through dicts and lists."""
    if isinstance(value, dict):
        return {k: _no_machine_paths(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_no_machine_paths(v) for v in value]
    if isinstance(value, str) and (value.startswith(("/", "\\")) or
                                   (len(value) > 2 and value[1] == ":" and value[2] in "/\\")):
        return Path(value.replace("\\", "/")).name
    return value


def user_training_record(training_data: Any) -> Any:
    """The parts of a package's ``training_data`` a catalog shows a user: sources, sizes,
    settings, split counts, DRR conventions, real heads, description; without
    :data:`DEVELOPMENT_KEYS` and with absolute paths reduced to names."""
    if not isinstance(training_data, dict):
        return training_data
    return _no_machine_paths({k: v for k, v in training_data.items()
                              if k not in DEVELOPMENT_KEYS})


def catalog_entry(path: str | os.PathLike, *, name: str, title: str, description: str,
                  catalog_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """A catalog entry for a package file (sha256, size, views, output size and the
    user-facing part of its training record, :func:`user_training_record`, read from it);
    ``file`` is relative to ``catalog_dir`` (default: the bundled catalog's folder)."""
    path = Path(path).resolve()
    info = read_info(path)
    base = Path(catalog_dir) if catalog_dir is not None else CATALOG_PATH.parent
    spec = info["spec"]
    common = {"name": name, "title": title, "description": description,
              "file": os.path.relpath(path, base.resolve()), "sha256": sha256_file(path),
              "size": path.stat().st_size, "model": info["model"]}
    record = {"trained_on": user_training_record(info.get("training_data", {})),
              "validation": info.get("validation", {})}
    if "views" not in spec:  # a 2D translation model: its domains, not views and a grid
        return {**common, "kind": spec.get("kind"), "image_size": spec["image_size"],
                "input_domain": spec.get("input_domain"),
                "target_domain": spec.get("target_domain"), **record}
    return {**common, "views": spec["views"],
            "image_size": spec["image_size"], "output_size": spec["output_size"],
            "output_spacing": spec["output_spacing"], "intensity": spec["intensity"], **record}
