"""Reading a prepared dataset (made by :mod:`~XRayToCTLib.data`): its manifest and a
PyTorch ``Dataset`` over its complete cases (see :mod:`~XRayToCTLib.data` for the layout)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import SimpleITK as sitk
import torch
from torch.utils.data import Dataset as _TorchDataset

from .errors import InputError
from .geometry import Grid, ProjectionGeometry

__all__ = ["MANIFEST_VERSION", "CASE_FILE", "load_manifest", "CaseDataset"]

MANIFEST_VERSION = 1
CASE_FILE = "case.json"


def load_manifest(root: str | os.PathLike) -> dict[str, Any]:
    """The manifest of the dataset in ``root`` (a folder, or its ``manifest.json``)."""
    p = Path(root).expanduser()
    mpath = p if p.is_file() else p / "manifest.json"
    if not mpath.is_file():
        raise InputError(mpath, "no dataset manifest here (build one with 'xraytoct prepare')")
    try:
        with open(mpath) as fh:
            m = json.load(fh)
    except (OSError, ValueError) as err:
        raise InputError(mpath, f"unreadable manifest: {err}") from None
    if not isinstance(m, dict) or m.get("kind") != "xraytoct dataset":
        raise InputError(mpath, "not an XRayToCT dataset manifest")
    if m.get("version") != MANIFEST_VERSION:
        raise InputError(mpath, f"manifest version {m.get('version')} is not supported "
                                f"(this software reads version {MANIFEST_VERSION})")
    return m



# ----------------------------------------------------------------------------------------
# the PyTorch dataset
# ----------------------------------------------------------------------------------------
class CaseDataset(_TorchDataset):
    """The complete cases of a prepared dataset, as tensors.

    Args:
        root: the dataset folder (or its manifest.json).
        split: ``"train"``, ``"val"``, ``"test"`` or ``None`` (all cases).
        cache_in_memory: keep each case's tensors after its first read (per process:
            each DataLoader worker has its own cache).
        exclude: case ids or groups to leave out (a real CT's id leaves out its augmented
            copies too: they share its group); an unknown name is an InputError.
        transform: applied to each case's dict after it is read (in the DataLoader's worker
            processes when there are any; the training puts its targets on the output grid
            and into the model's intensity there); it must be deterministic: with
            ``cache_in_memory`` its result is what is kept.

    ``dataset[i]`` is ``{"id": str, "ct": FloatTensor[1, S, S, S]`` (HU, array order
    ``k, j, i`` of the canonical grid), ``"ap"``, ``"lateral": FloatTensor[1, P, P]`` (DRR
    line-integral units, row 0 at the top)``}``. Cases are in sorted id order.

    Properties: :attr:`grid` (the canonical :class:`~XRayToCTLib.geometry.Grid` of the
    targets, for ``drr.DRR(dataset.geometries, dataset.grid)``),
    :attr:`geometries` (view -> :class:`ProjectionGeometry`), :attr:`size`, :attr:`pixels`,
    :attr:`window` (the manifest's training window, a name or ``(level, width)``),
    :attr:`manifest`, :attr:`ids`.
    """

    def __init__(self, root: str | os.PathLike, split: str | None = "train", *,
                 cache_in_memory: bool = False,
                 transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
                 exclude: Sequence[str] = ()):
        if split not in ("train", "val", "test", None):
            raise ValueError(f"split must be 'train', 'val', 'test' or None, got {split!r}")
        p = Path(root).expanduser()
        self.root = p.parent if p.is_file() else p
        self.manifest = load_manifest(self.root)
        self.split = split
        cases = self.manifest["cases"]
        left_out = set(exclude)
        unknown = sorted(left_out - set(cases) - {c.get("group") for c in cases.values()})
        if unknown:
            raise InputError(self.root, f"no case or group named {', '.join(unknown)} to leave out")
        self.ids = sorted(cid for cid, c in cases.items()
                          if c.get("status") == "complete" and (split is None or c["split"] == split)
                          and cid not in left_out and c.get("group") not in left_out)
        self.cache_in_memory = bool(cache_in_memory)
        self._cache: dict[int, dict[str, Any]] = {}
        self.transform = transform

    @property
    def size(self) -> int:
        return int(self.manifest["size"])

    @property
    def pixels(self) -> int:
        return int(self.manifest["pixels"])

    @property
    def window(self) -> str | tuple[float, float]:
        w = self.manifest["window"]
        return w if isinstance(w, str) else (float(w[0]), float(w[1]))

    @property
    def grid(self) -> Grid:
        return Grid.from_dict(self.manifest["grid"])

    @property
    def geometries(self) -> dict[str, ProjectionGeometry]:
        return {v: ProjectionGeometry.from_dict(d) for v, d in self.manifest["geometry"].items()}

    def __len__(self) -> int:
        return len(self.ids)

    def case_dir(self, index: int) -> Path:
        return self.root / "cases" / self.ids[index]

    def case_record(self, index: int) -> dict[str, Any]:
        """The case's ``case.json`` (transform back to its source CT, metadata)."""
        with open(self.case_dir(index) / CASE_FILE) as fh:
            return json.load(fh)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"case index {index} out of range (0..{len(self) - 1})")
        if index in self._cache:
            return dict(self._cache[index])
        d = self.case_dir(index)
        files = self.manifest["cases"][self.ids[index]]["files"]
        s, px = self.size, self.pixels
        item: dict[str, Any] = {"id": self.ids[index]}
        for name, shape in (("ct", (s, s, s)), ("ap", (px, px)), ("lateral", (px, px))):
            path = d / files[name]
            try:
                arr = sitk.GetArrayFromImage(sitk.ReadImage(str(path), sitk.sitkFloat32))
            except RuntimeError as err:
                raise InputError(path, f"unreadable case file: {str(err).strip().splitlines()[-1]}") from None
            if arr.shape != shape:
                raise InputError(path, f"shape {arr.shape} differs from the dataset's {shape}")
            item[name] = torch.from_numpy(np.ascontiguousarray(arr))[None]
        if self.transform is not None:
            item = self.transform(item)
        if self.cache_in_memory:
            self._cache[index] = item
        return dict(item)
