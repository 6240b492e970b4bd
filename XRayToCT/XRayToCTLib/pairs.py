"""Paired 2D image datasets (for image-to-image translation: ``pix2pix``) and their builder
from CTs (simulated radiograph -> DRR pairs: the harmoniser's training data).

**Layout** of a pairs folder ``PAIRS`` (any modality; the images need only be matched)::

    PAIRS/manifest.json                   {"kind": "xraytoct pairs", ...}
    PAIRS/train/<id>_input.<ext>          one input image
    PAIRS/train/<id>_target.<ext>         the image it should become
    PAIRS/val/...    PAIRS/test/...       the same, for validation and testing

``<ext>`` is anything :func:`~XRayToCTLib.io.read_radiograph` reads (NRRD, NIfTI, MHA,
DICOM, PNG, TIFF, JPEG); the input and the target of a pair may differ in format. Images
are grey and 2D; each is resized (area averaging / bilinear) to ``pixels x pixels`` if it
is another size, then scaled by :func:`~XRayToCTLib.drr.normalize_views` (its 0.5 % and
99.5 % percentiles to 0 and 1), the models' input convention. ``manifest.json`` needs only
``"kind": "xraytoct pairs"``; it may say ``pixels`` (else the first training input's
rows), ``input_domain`` and ``target_domain`` (recorded in a model trained on it) and, per
pair, where it came from (``pairs``). A pair's split is its folder.

**Builder** (:func:`build_pairs`, ``xraytoct pairs``): from a dataset made by ``xraytoct
prepare`` (each case's preprocessed CT and its DRRs; a case keeps its dataset split, so the
held-out heads stay held out) or from CT files (DRRs rendered at the default biplanar
geometry centred on the CT; split by a hash of the file name), ``per_ct`` simulated
radiographs per CT and view (:func:`~XRayToCTLib.simulate.simulate`) with physics drawn at
random per pair (:func:`random_settings`), each paired with the DRR of the same view.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .drr import DRR, biplanar_geometry, normalize_views
from .errors import InputError
from .geometry import Radiograph
from .io import read_radiograph, read_volume, write_json, write_radiograph
from .progress import ProgressCallback, report
from .simulate import SimulationSettings, check_ct, simulate

__all__ = ["PAIRS_KIND", "SPLITS", "PairDataset", "load_pairs_manifest", "is_pairs_folder",
           "random_settings", "build_pairs", "prepare_image"]

PAIRS_KIND = "xraytoct pairs"
SPLITS = ("train", "val", "test")
_ROLES = ("input", "target")
SETTINGS_RANGES: dict[str, Any] = {
    "kvp": (60.0, 90.0), "scatter": (0.0, 0.4), "dose_ugy": (50.0, 600.0),
    "electronic_noise": (0.0, 10.0), "focal_spot_mm": (0.3, 1.2),
    "detector_blur_mm": (0.1, 0.6), "collimation_mm": (0.0, 40.0),
    "processing": ("cr", "dx", "none"), "marker": (True, False)}
"""The ranges :func:`random_settings` draws from (uniform; ``dose_ugy`` log-uniform):
head radiography at 60-90 kVp, scatter-to-primary 0-0.4 (with or without a grid), 50-600
µGy at the detector (noisy to clean), focal spots 0.3-1.2 mm, CR or DX processing or the
raw log image, open to tightly collimated fields, with or without a side marker."""


def load_pairs_manifest(root: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a pairs folder; InputError when it is not one."""
    path = Path(root)
    man = path / "manifest.json"
    if not man.is_file():
        raise InputError(path, "not a pairs folder: manifest.json is missing")
    try:
        data = json.loads(man.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(man, f"unreadable manifest ({exc})") from None
    if not isinstance(data, dict) or data.get("kind") != PAIRS_KIND:
        raise InputError(man, f"not a pairs manifest (it needs \"kind\": \"{PAIRS_KIND}\")")
    return data


def is_pairs_folder(root: str | os.PathLike) -> bool:
    """Whether ``root`` holds a pairs manifest (a reconstruction dataset does not)."""
    try:
        load_pairs_manifest(root)
    except InputError:
        return False
    return True


def _pair_files(folder: Path) -> dict[str, dict[str, Path]]:
    """``{id: {"input": path, "target": path}}`` of a split folder; InputError for a half pair."""
    found: dict[str, dict[str, Path]] = {}
    for f in sorted(folder.iterdir()):
        if not f.is_file() or f.name.startswith("."):
            continue
        stem = f.name.split(".")[0]
        for role in _ROLES:
            if stem.endswith("_" + role):
                found.setdefault(stem[: -len(role) - 1], {})[role] = f
    half = [i for i, r in found.items() if len(r) != 2]
    if half:
        raise InputError(folder, f"pair(s) without both an _input and a _target image: "
                                 f"{', '.join(sorted(half)[:3])}")
    return found


def prepare_image(image: np.ndarray | torch.Tensor, pixels: int) -> torch.Tensor:
    """One 2D image as the translation models take it: ``[1, pixels, pixels]`` float32,
    resized (area averaging when shrinking, else bilinear) and scaled by
    :func:`~XRayToCTLib.drr.normalize_views`."""
    t = torch.as_tensor(np.asarray(image, dtype=np.float32))
    if t.dim() != 2:
        raise ValueError(f"a 2D image is needed, got shape {tuple(t.shape)}")
    t = t[None, None]
    if tuple(t.shape[-2:]) != (pixels, pixels):
        shrink = t.shape[-2] >= pixels and t.shape[-1] >= pixels
        t = (F.interpolate(t, size=(pixels, pixels), mode="area") if shrink else
             F.interpolate(t, size=(pixels, pixels), mode="bilinear", align_corners=False))
    return normalize_views(t)[0]


class PairDataset(Dataset):
    """The pairs of one split: items ``{"id", "input": [1, P, P], "target": [1, P, P]}``
    (normalised, :func:`prepare_image`), read once and kept in memory.

    Args:
        root: the pairs folder (see the module doc).
        split: ``"train"``, ``"val"`` or ``"test"``.
        pixels: image side ``P`` (default: the manifest's, else the first training input's).
    """

    def __init__(self, root: str | os.PathLike, split: str = "train",
                 pixels: int | None = None) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        self.root = Path(root)
        self.manifest = load_pairs_manifest(self.root)
        folder = self.root / split
        self.files = _pair_files(folder) if folder.is_dir() else {}
        self.ids = sorted(self.files)
        self.split = split
        self.pixels = int(pixels or self.manifest.get("pixels") or self._first_size())
        self._cache: dict[int, dict[str, Any]] = {}
        self.transform: Callable[[dict], dict] | None = None

    def _first_size(self) -> int:
        train = self.root / "train"
        files = _pair_files(train) if train.is_dir() else {}
        if not files:
            raise InputError(self.root, "the pairs folder has no training pairs (train/)")
        first = files[sorted(files)[0]]["input"]
        return int(read_radiograph(first).array.shape[0])

    def __len__(self) -> int:
        return len(self.ids)

    def read(self, index: int) -> dict[str, Radiograph]:
        """The pair's images as read (no resizing or normalisation)."""
        pid = self.ids[index]
        return {role: read_radiograph(self.files[pid][role]) for role in _ROLES}

    def __getitem__(self, index: int) -> dict[str, Any]:
        if index not in self._cache:
            raw = self.read(index)
            item: dict[str, Any] = {"id": self.ids[index]}
            for role in _ROLES:
                try:
                    item[role] = prepare_image(raw[role].array, self.pixels)
                except ValueError as exc:
                    raise InputError(self.files[self.ids[index]][role], str(exc)) from None
            self._cache[index] = item
        item = dict(self._cache[index])
        return self.transform(item) if self.transform is not None else item


# ----------------------------------------------------------------------------------------
# building pairs from CTs
# ----------------------------------------------------------------------------------------
def random_settings(rng: np.random.Generator, seed: int) -> SimulationSettings:
    """Physics drawn from :data:`SETTINGS_RANGES` (the noise seeded by ``seed``)."""
    r = SETTINGS_RANGES

    def uni(key: str) -> float:
        return float(rng.uniform(*r[key]))

    lo, hi = r["dose_ugy"]
    return SimulationSettings(
        kvp=uni("kvp"), scatter=uni("scatter"),
        dose_ugy=float(math.exp(rng.uniform(math.log(lo), math.log(hi)))),
        electronic_noise=uni("electronic_noise"), focal_spot_mm=uni("focal_spot_mm"),
        detector_blur_mm=uni("detector_blur_mm"), collimation_mm=uni("collimation_mm"),
        processing=str(rng.choice(r["processing"])), marker=bool(rng.choice(r["marker"])),
        seed=int(seed))


def _hash_split(key: str, ratios: Sequence[float]) -> str:
    x = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2 ** 64
    acc = 0.0
    for name, r in zip(SPLITS, ratios):
        acc += r
        if x < acc:
            return name
    return SPLITS[-1]


def _sources(source: Path, ratios: Sequence[float], pixels: int | None
             ) -> Iterator[tuple[str, str, Callable[[], tuple[Any, dict[str, Radiograph]]]]]:
    """``(id, split, load)`` per CT; ``load() -> (ct Volume, {view: DRR Radiograph})``."""
    man_path = source / "manifest.json"
    if source.is_dir() and man_path.is_file():  # a dataset made by `xraytoct prepare`
        try:
            man = json.loads(man_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InputError(man_path, f"unreadable manifest ({exc})") from None
        cases = man.get("cases")
        if not isinstance(cases, dict):
            raise InputError(man_path, "not a dataset made by `xraytoct prepare` (no cases)")
        for cid in sorted(cases):
            entry = cases[cid]
            if entry.get("status", "complete") != "complete":
                continue
            files = entry.get("files", {})
            folder = source / "cases" / cid
            views = [v for v in ("ap", "lateral") if v in files]

            def load(folder=folder, files=files, views=views):
                ct = read_volume(folder / files["ct"])
                return ct, {v: read_radiograph(folder / files[v], view=v) for v in views}
            yield cid, str(entry.get("split", "train")), load
        return
    paths = ([p for p in sorted(source.iterdir()) if p.is_file() and not p.name.startswith(".")]
             if source.is_dir() else [source])
    if not paths:
        raise InputError(source, "no CT files in the folder")
    for p in paths:
        cid = p.name.split(".")[0]

        def load(p=p):
            ct = read_volume(p)
            geoms = biplanar_geometry(ct, pixels=pixels or 64)
            return ct, DRR(geoms).render(ct)
        yield cid, _hash_split(cid, ratios), load


def build_pairs(source: str | os.PathLike, out: str | os.PathLike, *, per_ct: int = 1,
                seed: int = 0, splits: Sequence[float] = (0.8, 0.1, 0.1),
                pixels: int | None = None, limit: int | None = None,
                progress: ProgressCallback | None = None) -> Path:
    """Write a pairs folder of (simulated radiograph, DRR) pairs from CTs.

    Args:
        source: a dataset folder made by ``xraytoct prepare`` (its cases' CTs and DRRs and
            their splits), a CT file, or a folder of CT files.
        out: the new pairs folder (must not hold a pairs manifest already).
        per_ct: simulated radiographs per CT and view, each with its own random physics.
        seed: the draw of the physics and the noise (``numpy.random.default_rng(seed)``).
        splits: train/val/test ratios for CT files (a dataset's cases keep their split).
        pixels: detector side for CT files (default 64); a dataset's DRRs set their own.
        limit: use at most this many CTs (the first ones, in id order).
        progress: ``(fraction, message)`` callback.

    Returns:
        ``out``; its manifest lists every pair's source CT, view, split and settings.
    """
    src, root = Path(source), Path(out)
    if not src.exists():
        raise InputError(src, "no such CT file, folder or dataset")
    if int(per_ct) < 1:
        raise ValueError(f"per_ct must be at least 1, got {per_ct}")
    if (root / "manifest.json").exists():
        raise InputError(root, "already holds a pairs folder: build into a new folder")
    if len(splits) != 3 or any(r < 0 for r in splits) or not math.isclose(sum(splits), 1.0):
        raise ValueError(f"splits must be three ratios adding up to 1, got {list(splits)}")
    rng = np.random.default_rng(seed)
    sources = list(_sources(src, splits, pixels))
    if limit is not None:
        sources = sources[: int(limit)]
    pairs: dict[str, Any] = {}
    size = None
    for n, (cid, split, load) in enumerate(sources):
        report(progress, n / max(len(sources), 1), f"CT {n + 1}/{len(sources)}: {cid}")
        ct, drrs = load()
        check_ct(ct)
        (root / split).mkdir(parents=True, exist_ok=True)
        geoms = {v: r.geometry for v, r in drrs.items()}
        for k in range(int(per_ct)):
            settings = random_settings(rng, int(rng.integers(0, 2 ** 31)))
            sims = simulate(ct, geoms, settings)
            for view, drr in drrs.items():
                pid = f"{cid}_{view}_{k:02d}"
                write_radiograph(sims[view], root / split / f"{pid}_input.nrrd")
                write_radiograph(drr, root / split / f"{pid}_target.nrrd")
                size = size or int(np.asarray(drr.array).shape[0])
                pairs[pid] = {"split": split, "source": cid, "view": view,
                              "settings": {k2: v2 for k2, v2 in settings.to_dict().items()
                                           if k2 not in ("models", "spectrum")}}
    manifest = {"kind": PAIRS_KIND, "version": 1, "pixels": size,
                "input_domain": "simulated radiograph", "target_domain": "drr",
                "source": src.name, "per_ct": int(per_ct), "seed": int(seed),
                "settings_ranges": {k: list(v) for k, v in SETTINGS_RANGES.items()},
                "split": {s: sorted(p for p, e in pairs.items() if e["split"] == s)
                          for s in SPLITS},
                "pairs": pairs}
    write_json(root / "manifest.json", manifest)
    report(progress, 1.0, f"{len(pairs)} pairs")
    return root
