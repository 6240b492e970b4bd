"""Preparing the cached dataset of training/evaluation cases (:mod:`~XRayToCTLib.dataset`
reads it back: the manifest and a PyTorch ``Dataset``).

A **case** is one head in the dataset's *canonical space*, reached through
:func:`preprocess.to_canonical` exactly as at inference:

* ``ct.nii.gz`` -- the target volume: the seed-001 preprocessing (rigid registration to the
  head CT template, clip to [-1000, 1000] HU, 256 mm field) on the canonical grid at
  ``drr_spacing`` mm, brought to ``size^3`` voxels (block-averaged), **in HU** (float32). The
  manifest's ``window`` names the training window the dataset is meant for; models apply
  their own intensity mapping.
* ``ap.nrrd``, ``lateral.nrrd`` -- DRRs (:class:`drr.DRR`, torch, trilinear model)
  of the **fine** (``drr_spacing`` mm, 1 mm by default) preprocessed volume, not of the
  low-resolution target, at the dataset's fixed geometry; line integral of attenuation / 10
  (Plastimatch units, see :mod:`~XRayToCTLib.drr`); the NRRD headers carry the geometry.
* ``case.json`` -- the transform back to the source CT (``transform["registration"]`` maps
  canonical LPS points to source-CT LPS points, so :func:`preprocess.from_canonical` puts a
  prediction back on the CT), and metadata: kind,
  source, seed, findings, augmentation parameters, timings.

**Canonical grid** (identical for every case of every dataset of one ``size``): ``size^3``
voxels of ``256 / size`` mm, identity direction, origin ``-(size - 1) * spacing / 2``: the
grid's centre is the LPS origin (:func:`geometry.canonical_grid`). Registered CTs: the
template frame translated by ``-c``, ``c`` the template's head centroid (canonical point ``p``
is template point ``p + c``; the recorded registration includes that shift). Without
registration: the CT's own axes translated so that its head centroid ``c`` is the origin (the
transform is the pure translation by ``c``, snapped onto the CT's voxel lattice when the axes
and spacing agree; :func:`preprocess.canonical_transform`). Phantoms:
their own canonical frame (the head centred at the origin), the pose undone with the
generator's known transform (:func:`phantom.pose_registration`, no optimisation).
The DRR geometry is :func:`drr.biplanar_geometry` of that grid with isocentre (0, 0, 0)
and ``pixels x pixels`` detectors, the same for every case (:func:`dataset_geometries`).

**Sources**: phantoms (``phantoms`` heads, ``phantom-00000``...), a folder of CTs
(``ct-<name>``, any format :func:`io.read_volume` reads: NIfTI/NRRD/MetaImage files, DICOM
series folders, and sub-folders holding exactly one volume file, named by the folder:
``pyct/ct.nii.gz`` is ``ct-pyct``), and ``augment`` augmented copies of each CT
(``ct-<name>-aug01``...; they reuse their CT's registration).

**Real CTs** (recipe :data:`CT_PROTOCOL`): the **target** is the patient only -- the couch,
head holder and thermoplastic mask are set to air (:func:`augment.remove_support`); the
DRRs of the CT itself keep them (radiographs show them). An augmented copy is, in canonical
space and deterministic by the case seed (:mod:`~XRayToCTLib.augment`): B-spline elastic,
anisotropic scale and rigid pose resampled from the source CT in a single interpolation
through the composed transform; then with p = 0.5 a thick-slice blur along z (FWHM 1-5 mm),
with p = 0.5 a coverage cut (air below z = -60...-110 mm, lower neck to chin; in target and
DRRs alike), intensity jitter and noise, the clip; the support is removed from the target,
and from the DRRs with p = 0.5. ``case.json`` records it all (``augmentation``, ``support``).

**Splits** are fixed by id: a case's *group* (its own id; for an augmented copy, its CT's
id, so copies never leak across splits) is hashed (SHA-256 of the UTF-8 id, first 8 bytes
as a fraction of 2^64) and compared with the cumulative ratios: ``< train`` -> train,
``< train + val`` -> val, else test. Adding cases never moves existing ones. ``ct_splits``
forces the split of named real CTs' groups (``{"ct-a": "test"}``, the ``ct-`` prefix
optional; ``"all"`` names every real CT, a CT's own name wins over it): leave-one-out folds.

**Seeds**: a case's seed is the first 4 bytes (little-endian) of SHA-256 of
``"<dataset seed>/<case id>"``: the same dataset seed gives the same case under the same id.

**On disk**: ``DIR/manifest.json`` and ``DIR/cases/<id>/{ct.nii.gz, ap.nrrd, lateral.nrrd,
case.json}``. A case is built in ``DIR/cases/.tmp-<id>-...`` and renamed into place when all
its files are written (``case.json`` last); the manifest is rewritten atomically after each
case and lists only complete cases. A rerun skips complete cases (same settings key) and
rebuilds anything half-written. Everything needed to rebuild the dataset is in
``manifest["settings"]`` (``prepare_dataset(out, **settings)``; ``prepare_dataset(out)`` on an
existing dataset resumes with its settings).
"""
from __future__ import annotations

import concurrent.futures as cf
import datetime
import hashlib
import json
import multiprocessing
import os
import re
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import SimpleITK as sitk
import torch

from . import __version__, drr, phantom
from . import preprocess as pp
from .augment import (augment_intensity, augment_scan, augmentation_transform, remove_support,
                      support_in_drrs)
from .constants import DRR_AIR_THRESHOLD_HU, FIELD_OF_VIEW_MM, HU_CLIP, MU_WATER_PER_MM
from .dataset import CASE_FILE, MANIFEST_VERSION, load_manifest
from .errors import InputError, XRayToCTError
from .geometry import Grid, ProjectionGeometry, Volume, canonical_grid
from .hu import get_window
from .io import VOLUME_EXTENSIONS, is_dicom_dir, read_volume, write_json, write_radiograph, write_volume
from .progress import ProgressCallback, report, scaled

__all__ = ["VIEWS", "dataset_geometries", "case_seed", "split_of",
           "prepare_dataset"]

VIEWS = ("ap", "lateral")
PHANTOM_MARGIN_MM = 16.0
"""Phantoms are generated this much larger on each side than the field of view, so that
undoing their pose does not bring the generator's border into the field."""
_CT_FILE = "ct.nii.gz"
_CASE_SETTINGS = ("size", "pixels", "drr_spacing", "register", "findings", "seed", "template")
CT_PROTOCOL = 2
"""Version of the recipe that makes real-CT cases (1: no support removal, elastic + pose +
intensity + noise; 2: the module doc's). Part of the settings key of datasets with real
CTs only, so phantom-only datasets keep theirs."""
SPLITS = ("train", "val", "test")


# ----------------------------------------------------------------------------------------
# the canonical grid and geometry
# ----------------------------------------------------------------------------------------
def _check_int(value: Any, name: str, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {value!r}")
    return int(value)


def dataset_geometries(size: int, pixels: int | None = None) -> dict[str, ProjectionGeometry]:
    """AP and lateral geometry of a dataset: :func:`drr.biplanar_geometry` of the canonical
    grid, isocentre (0, 0, 0), ``pixels`` (default ``size``) per detector side."""
    p = _check_int(size if pixels is None else pixels, "pixels", 2)
    return drr.biplanar_geometry(canonical_grid(size), pixels=p, isocenter=(0.0, 0.0, 0.0))


def case_seed(dataset_seed: int, case_id: str) -> int:
    """The seed of case ``case_id`` in a dataset of seed ``dataset_seed`` (module doc)."""
    digest = hashlib.sha256(f"{int(dataset_seed)}/{case_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def split_of(group_id: str, splits: Sequence[float] = (0.8, 0.1, 0.1)) -> str:
    """``"train"``, ``"val"`` or ``"test"`` for a case group id (module doc)."""
    u = int.from_bytes(hashlib.sha256(group_id.encode()).digest()[:8], "big") / 2.0 ** 64
    tr, va = float(splits[0]), float(splits[1])
    return "train" if u < tr else ("val" if u < tr + va else "test")


# ----------------------------------------------------------------------------------------
# settings and planning
# ----------------------------------------------------------------------------------------
def _check_splits(splits: Sequence[float]) -> tuple[float, float, float]:
    try:
        s = tuple(float(x) for x in splits)
    except (TypeError, ValueError):
        raise ValueError(f"splits must be three numbers, got {splits!r}") from None
    if len(s) != 3 or min(s) < 0 or abs(sum(s) - 1.0) > 1e-6:
        raise ValueError(f"splits must be three ratios >= 0 summing to 1, got {splits!r}")
    return s  # type: ignore[return-value]


def _check_findings(findings: Any) -> str | list[str]:
    if findings is None or findings == "none":
        return "none"
    if findings == "random":
        return "random"
    if isinstance(findings, str):
        findings = [f for f in findings.split(",") if f.strip()]
    names = sorted({str(f).strip() for f in findings})
    if not names or any(not re.fullmatch(r"[A-Za-z0-9_\-]+", n) for n in names):
        raise ValueError(f"findings must be 'random', 'none' or names, got {findings!r}")
    return names


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def _ct_sources(ct_dir: Path) -> list[tuple[str, Path]]:
    """``(case id, path)`` of every CT in ``ct_dir`` (volume files and DICOM folders)."""
    if not ct_dir.exists():
        raise InputError(ct_dir, "CT folder not found")
    if not ct_dir.is_dir():
        raise InputError(ct_dir, "the CT source must be a folder of CTs")
    def is_volume(p: Path) -> bool:
        return (p.is_file() and not p.name.startswith(".")
                and any(p.name.lower().endswith(e) for e in VOLUME_EXTENSIONS))

    found: list[tuple[str, Path]] = []  # (name, path)
    for p in sorted(ct_dir.iterdir()):
        if p.name.startswith("."):
            continue
        if is_volume(p):
            found.append((p.name, p))
        elif p.is_dir() and is_dicom_dir(p):
            found.append((p.name, p))
        elif p.is_dir():
            inner = [f for f in sorted(p.iterdir()) if is_volume(f)]
            if len(inner) == 1:  # a folder holding one volume: named by the folder
                found.append((p.name, inner[0]))
    if not found and is_dicom_dir(ct_dir):
        found = [(ct_dir.name, ct_dir)]  # the folder is itself one DICOM series
    if not found:
        raise InputError(ct_dir, "no CT found (expected .nii/.nii.gz/.nrrd/.mha files, "
                                 "DICOM series folders, or folders holding one such file)")
    out: list[tuple[str, Path]] = []
    used: set[str] = set()
    for stem, p in found:
        for e in sorted(VOLUME_EXTENSIONS, key=len, reverse=True):
            if stem.lower().endswith(e):
                stem = stem[: -len(e)]
                break
        cid = "ct-" + (re.sub(r"[^A-Za-z0-9_\-]+", "_", stem).strip("_") or "scan")
        base, k = cid, 2
        while cid in used:
            cid, k = f"{base}-{k}", k + 1
        used.add(cid)
        out.append((cid, p))
    return out


def _check_ct_splits(ct_splits: Any) -> dict[str, str]:
    """``{name: split}`` with names stripped and splits checked (names are matched against
    the CTs in :func:`_plan`)."""
    if ct_splits is None:
        return {}
    if not isinstance(ct_splits, dict):
        raise ValueError(f"ct_splits must map CT names to splits, got {ct_splits!r}")
    out: dict[str, str] = {}
    for name, split in ct_splits.items():
        n = str(name).strip()
        if not n or split not in SPLITS:
            raise ValueError(f"ct_splits maps a CT name to one of {', '.join(SPLITS)}, "
                             f"got {name!r}: {split!r}")
        out[n] = split
    return dict(sorted(out.items()))


def _forced_splits(ct_splits: dict[str, str], ids: Sequence[str], where: Any) -> dict[str, str]:
    """The forced split of each real CT id: ``ct_splits``' names matched to ``ids`` (the name
    itself or ``ct-`` + name; ``all`` for every CT, a CT's own name winning). Unknown names
    raise :class:`InputError` naming them."""
    out: dict[str, str] = {}
    if "all" in ct_splits:
        out = {cid: ct_splits["all"] for cid in ids}
    unknown = []
    for name, split in ct_splits.items():
        if name == "all":
            continue
        match = name if name in ids else ("ct-" + name if "ct-" + name in ids else None)
        if match is None:
            unknown.append(name)
        else:
            out[match] = split
    if unknown:
        raise InputError(where, "no CT here is named " + ", ".join(repr(u) for u in unknown)
                         + " (its CTs: " + (", ".join(ids) or "none") + ")")
    return out


def _plan(settings: dict[str, Any]) -> list[dict[str, Any]]:
    """Every case the settings ask for, in build order (each CT before its copies)."""
    cases: list[dict[str, Any]] = []
    seed, splits = settings["seed"], settings["splits"]
    ct_splits = settings.get("ct_splits") or {}
    forced: dict[str, str] = {}
    if settings["ct_dir"] is not None:
        sources = _ct_sources(Path(settings["ct_dir"]))
        forced = _forced_splits(ct_splits, [cid for cid, _ in sources], settings["ct_dir"])
        for cid, path in sources:
            cases.append({"id": cid, "kind": "ct", "group": cid, "source": str(path),
                          "seed": case_seed(seed, cid), "parent": None})
            for a in range(1, settings["augment"] + 1):
                aid = f"{cid}-aug{a:02d}"
                cases.append({"id": aid, "kind": "ct-augmented", "group": cid,
                              "source": str(path), "seed": case_seed(seed, aid), "parent": cid})
    elif ct_splits:
        raise InputError(None, "forced splits of real CTs need a folder of CTs")
    for i in range(settings["phantoms"]):
        pid = f"phantom-{i:05d}"
        cases.append({"id": pid, "kind": "phantom", "group": pid, "source": "phantom",
                      "seed": case_seed(seed, pid), "parent": None})
    for c in cases:
        c["split"] = forced.get(c["group"]) or split_of(c["group"], splits)
    return cases


def _settings_key(settings: dict[str, Any]) -> str:
    keyed = {k: settings[k] for k in _CASE_SETTINGS}
    keyed["template_sha256"] = settings.get("template_sha256")
    keyed["version"] = MANIFEST_VERSION
    if settings.get("ct_dir") is not None:  # phantom-only datasets keep their key
        keyed["ct_protocol"] = CT_PROTOCOL
    return hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------
# building one case (runs in a worker process or in-process)
# ----------------------------------------------------------------------------------------
_TEMPLATES: dict[str, Volume] = {}


def _template(path: str) -> Volume:
    """The template, read once per process."""
    if path not in _TEMPLATES:
        _TEMPLATES[path] = pp.load_template(path)
    return _TEMPLATES[path]


def _worker_init() -> None:
    """Pool initializer: one thread per worker for torch and ITK (workers run side by side)."""
    torch.set_num_threads(1)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)


def _make_phantom(seed: int, findings: str | list[str], spacing: float) -> tuple[Volume, Any]:
    """A phantom covering the field of view plus a margin, and its pose registration
    (canonical -> phantom points)."""
    n = int(round((FIELD_OF_VIEW_MM + 2 * PHANTOM_MARGIN_MM) / spacing))
    vol = phantom.head_phantom(n, spacing, seed, findings=None if findings == "none" else findings,
                               pose=True)
    return vol, phantom.pose_registration(vol)


def _build_case(out: str, case: dict[str, Any], settings: dict[str, Any],
                parent_registration: dict | None = None,
                progress: ProgressCallback | None = None) -> dict[str, Any]:
    """Build one case into a temporary folder and rename it into place; return its record.

    The CT (or phantom) enters the canonical frame through :func:`preprocess.to_canonical`,
    exactly as at inference (:meth:`inference.Reconstructor.reconstruct_ct`)."""
    t0 = time.perf_counter()
    cid = case["id"]
    size, pixels, dsp = settings["size"], settings["pixels"], settings["drr_spacing"]
    fine = canonical_grid(int(round(FIELD_OF_VIEW_MM / dsp)))
    meta: dict[str, Any] = {}
    report(progress, 0.0, f"{cid}: source")
    known = None  # a known canonical -> source transform (no search)
    if case["kind"] == "phantom":
        src, known = _make_phantom(case["seed"], settings["findings"], dsp)
        meta["phantom"] = {k: src.metadata.get(k) for k in
                           ("seed", "findings", "ventricle_scale", "pose", "source")
                           if k in src.metadata}
        meta["findings"] = src.metadata.get("findings", [])
    else:
        src = read_volume(case["source"])
        if parent_registration is not None:
            known = pp.RigidRegistration.from_dict(parent_registration)
        meta["findings"] = []
    warp, record_aug = None, None
    centre = (0.0, 0.0, 0.0)  # the head centre in the canonical frame
    if case["kind"] == "ct-augmented":
        warp, record_aug = augmentation_transform(fine, case["seed"], center=centre)
    report(progress, 0.05, f"{cid}: into the canonical frame")
    volume, reg = pp.to_canonical(
        src, fine, register=bool(settings["register"]), transform=known, warp=warp,
        template=_template(settings["template"]) if settings["register"] and known is None else None,
        progress=scaled(progress, 0.05, 0.7))
    t_source = time.perf_counter() - t0
    drr_source = volume
    if case["kind"] != "phantom":
        keep = True  # the CT's own DRRs show its support, as radiographs would
        if record_aug is not None:
            volume, srecord = augment_scan(volume, case["seed"], center=centre)
            volume, irecord = augment_intensity(volume, case["seed"])
            volume = pp.clip_hu(volume, *pp.DEFAULT_CLIP)
            keep = support_in_drrs(case["seed"])
            meta["augmentation"] = {
                "seed": case["seed"], "strength": 1.0, **record_aug, **srecord, **irecord,
                "support": {"in_drrs": keep},
                "applied": "in canonical space: canonical point q takes the source CT at "
                           "registration(B-spline(scale^-1(pose^-1(q)))), then the z blur, "
                           "the coverage cut, intensity and noise, the clip; then the support "
                           "removed from the target (and from the DRRs unless support.in_drrs)"}
        report(progress, 0.65, f"{cid}: removing the patient support")
        patient, support = remove_support(volume)
        meta["support"] = {**support, "in_target": False, "in_drrs": keep}
        drr_source = volume if keep else patient
        volume = patient
    report(progress, 0.7, f"{cid}: target")
    target = pp.resample_to_size(volume, size)
    grid = canonical_grid(size)
    if not grid.same_as(target, atol=1e-6):
        raise XRayToCTError(f"{cid}: target grid {target.geometry_dict()} is not the "
                            "canonical grid (internal error)")
    target = grid.with_array(target.array.astype(np.float32, copy=False), units="HU", case=cid)
    transform = {"space": "canonical", "grid": fine.geometry_dict(),
                 "source_grid": Grid.of(src).geometry_dict(), "registration": reg.to_dict(),
                 "clip": list(pp.DEFAULT_CLIP), "target": {**target.geometry_dict(), "units": "HU"},
                 "info": {"canonical": "grid centred on the LPS origin; registration maps "
                                       "canonical points to source-CT points",
                          "registered": bool(settings["register"]) if case["kind"] != "phantom"
                          else "known phantom pose",
                          "augmented": record_aug is not None}}
    del src

    report(progress, 0.75, f"{cid}: rendering DRRs")
    images = _case_drr(size, pixels).render(drr_source, device="cpu")
    del drr_source

    cases_dir = Path(out) / "cases"
    tmp = cases_dir / f".tmp-{cid}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()  # (not mkdtemp: the case folder gets the usual permissions)
    try:
        write_volume(target, tmp / _CT_FILE)
        report(progress, 0.9, f"{cid}: writing DRRs")
        for view in VIEWS:
            images[view].metadata["case"] = cid
            write_radiograph(images[view], tmp / f"{view}.nrrd")
        files = {"ct": _CT_FILE, **{v: f"{v}.nrrd" for v in VIEWS}, "case": CASE_FILE}
        record = {"id": cid, "kind": case["kind"], "group": case["group"],
                  "split": case["split"], "seed": case["seed"], "source": case["source"],
                  "parent": case["parent"], "status": "complete",
                  "settings_key": settings["settings_key"], "files": files,
                  "findings": meta.pop("findings"), **meta,
                  "transform": transform,
                  "timing_s": {"source": t_source, "total": time.perf_counter() - t0},
                  "created": datetime.datetime.now(datetime.timezone.utc).isoformat()}
        write_json(tmp / CASE_FILE, record, indent=1)
        final = cases_dir / cid
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    report(progress, 1.0, f"{cid}: done")
    return _summary(record)


_DRRS: dict[tuple[int, int], drr.DRR] = {}


def _case_drr(size: int, pixels: int) -> "drr.DRR":
    """The dataset's DRR object (its geometries), built once per process and reused for every
    case (its ray plans are cached)."""
    key = (int(size), int(pixels))
    if key not in _DRRS:
        _DRRS[key] = drr.DRR(dataset_geometries(size, pixels))
    return _DRRS[key]


def _build_case_in_worker(*args: Any) -> dict[str, Any]:
    """:func:`_build_case` in a pool worker: a case-level input problem comes back as
    ``{"error": message}`` (InputError does not survive pickling across processes)."""
    try:
        return _build_case(*args)
    except (InputError, OSError) as err:
        return {"error": str(err)}


def _summary(record: dict[str, Any]) -> dict[str, Any]:
    """What the manifest keeps of a case record."""
    keep = ("kind", "group", "split", "seed", "source", "parent", "status", "findings", "files")
    out = {k: record.get(k) for k in keep}
    out["registration"] = (record.get("transform") or {}).get("registration")
    out["time_s"] = (record.get("timing_s") or {}).get("total")
    return out


def _complete_record(case_dir: Path, key: str) -> dict[str, Any] | None:
    """The case record if ``case_dir`` holds a complete case built with settings ``key``."""
    try:
        with open(case_dir / CASE_FILE) as fh:
            rec = json.load(fh)
    except (OSError, ValueError):
        return None
    if rec.get("status") != "complete" or rec.get("settings_key") != key:
        return None
    if not all((case_dir / f).is_file() for f in (rec.get("files") or {}).values()):
        return None
    return rec


# ----------------------------------------------------------------------------------------
# the dataset
# ----------------------------------------------------------------------------------------
def _write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    write_json(path, manifest, indent=1)


def _resolve_settings(existing: dict | None, given: dict[str, Any]) -> dict[str, Any]:
    """Validated settings; with no sources given, those of the existing manifest."""
    if given["ct_dir"] is None and not given["phantoms"]:
        if existing is None:
            raise InputError(None, "nothing to prepare: no folder of CTs and no phantoms were given")
        given = {**existing["settings"], "workers": given["workers"]}
    s = dict(given)
    s["size"] = _check_int(s["size"], "size", 4)
    s["pixels"] = _check_int(s["size"] if s["pixels"] is None else s["pixels"], "pixels", 4)
    s["phantoms"] = _check_int(s["phantoms"], "phantoms", 0)
    s["augment"] = _check_int(s["augment"], "augment", 0)
    s["workers"] = _check_int(s["workers"], "workers", 1)
    s["seed"] = _check_int(s["seed"], "seed", 0)
    s["splits"] = list(_check_splits(s["splits"]))
    s["ct_splits"] = _check_ct_splits(s.get("ct_splits"))
    s["findings"] = _check_findings(s["findings"])
    s["register"] = bool(s["register"])
    get_window(s["window"])
    if not isinstance(s["window"], str):
        s["window"] = [float(x) for x in s["window"]]
    dsp = float(s["drr_spacing"])
    n_fine = int(round(FIELD_OF_VIEW_MM / dsp)) if dsp > 0 else 0
    if dsp <= 0 or abs(n_fine * dsp - FIELD_OF_VIEW_MM) > 1e-6:
        raise ValueError(f"drr_spacing must divide {FIELD_OF_VIEW_MM:g} mm, got {dsp}")
    s["drr_spacing"] = dsp
    if s["augment"] and s["ct_dir"] is None:
        raise InputError(None, "augmented copies are made of real CTs: a folder of CTs is needed too")
    s["template_sha256"] = None
    if s["ct_dir"] is not None:
        s["ct_dir"] = str(Path(s["ct_dir"]).expanduser().resolve())
        if not Path(s["ct_dir"]).exists():  # the user's first mistake first
            raise InputError(s["ct_dir"], "CT folder not found")
        if s["register"]:
            t = s["template"] if s["template"] is not None else pp.default_template_path()
            if t is None:
                raise InputError(None, "registration to a head CT template needs one: pass "
                                       "--template FILE or --no-register (or set "
                                       "XRAYTOCT_TEMPLATE)")
            t = Path(t).expanduser().resolve()
            if not t.exists():
                raise InputError(t, "template file not found")
            s["template"] = str(t)
            s["template_sha256"] = _file_digest(t)
    if s["ct_dir"] is None or not s["register"]:
        s["template"] = None
    return s


def prepare_dataset(out: str | os.PathLike, *, ct_dir: str | os.PathLike | None = None,
                    phantoms: int = 0, size: int = 128, pixels: int | None = None,
                    window: str | Sequence[float] = "brain",
                    template: str | os.PathLike | None = None, register: bool = True,
                    augment: int = 0, findings: str | Sequence[str] | None = "random",
                    workers: int = 1, seed: int = 0,
                    splits: Sequence[float] = (0.8, 0.1, 0.1), drr_spacing: float = 1.0,
                    ct_splits: dict[str, str] | None = None,
                    progress: ProgressCallback | None = None) -> Path:
    """Build (or resume) a dataset of cases in ``out``; return the manifest's path.

    Args:
        out: dataset folder (created; an existing dataset there is resumed).
        ct_dir: folder of real head CTs in HU (see the module doc for what counts as a CT).
        phantoms: number of generated phantom heads.
        size: target voxels per side (spacing ``256 / size`` mm).
        pixels: DRR detector pixels per side (default ``size``).
        window: the training window the dataset is meant for (a name of
            :data:`preprocess.WINDOWS` or ``(level, width)``); recorded, not applied.
        template: head CT template for registering real CTs (default
            :func:`preprocess.default_template_path`).
        register: register real CTs to the template (else centre them on their head).
        augment: augmented copies per real CT.
        findings: for phantoms: ``"random"``, ``"none"``/``None`` or a list of names (or a
            comma-separated string) passed to :func:`phantom.head_phantom`.
        workers: processes building cases side by side (each with one torch/ITK thread).
        seed: dataset seed (each case's seed is derived from it and the case id).
        splits: train / val / test ratios (fixed by case group id, see the module doc).
        ct_splits: ``{name: "train" | "val" | "test"}`` forcing the split of real CTs (and
            all their copies) over the hash: a name is a CT's case id with or without the
            ``ct-`` prefix, or ``"all"`` for every real CT (a CT's own name wins over it).
            Recorded in the settings; a name that is no CT of ``ct_dir`` is an
            :class:`InputError`.
        drr_spacing: mm per voxel of the fine volume DRRs are rendered from (the seed
            protocol's 1 mm; coarser only for quick tests). Must divide 256 mm.
        progress: ``(fraction, message)`` callback; returning False cancels
            (:class:`~XRayToCTLib.errors.Cancelled`; complete cases stay).

    With no ``ct_dir`` and no ``phantoms``, an existing dataset in ``out`` is resumed with
    the settings of its manifest. Case-defining settings must match an existing manifest's
    (else :class:`InputError`); source counts may grow.

    Raises:
        InputError: bad arguments or inputs; :class:`XRayToCTError` after the run when some
            cases failed (the manifest then lists the complete ones and ``failed``).
    """
    out_p = Path(out).expanduser()
    if out_p.exists() and not out_p.is_dir():
        raise InputError(out_p, "exists and is not a folder")
    mpath = out_p / "manifest.json"
    existing = load_manifest(out_p) if mpath.is_file() else None
    try:
        settings = _resolve_settings(existing, dict(
            ct_dir=None if ct_dir is None else str(ct_dir), phantoms=phantoms, size=size,
            pixels=pixels, window=window, template=None if template is None else str(template),
            register=register, augment=augment, findings=findings, workers=workers, seed=seed,
            splits=splits, drr_spacing=drr_spacing, ct_splits=ct_splits))
    except ValueError as err:
        raise InputError(None, str(err)) from None
    settings["settings_key"] = _settings_key(settings)
    if existing is not None:
        old = existing.get("settings", {})
        diff = [(k, old[k], settings[k]) for k in (*_CASE_SETTINGS, "window", "splits")
                if k in old and old[k] != settings[k]]
        if (old.get("ct_splits") or {}) != settings["ct_splits"]:
            diff.append(("ct_splits", old.get("ct_splits") or {}, settings["ct_splits"]))
        if settings["ct_dir"] is not None and existing.get("ct_protocol") != CT_PROTOCOL:
            diff.append(("real-CT recipe", existing.get("ct_protocol", 1), CT_PROTOCOL))
        if existing.get("settings_key") not in (None, settings["settings_key"]) and not diff:
            diff = [("template contents", "other", "these")]
        if diff:
            raise InputError(out_p, "holds a dataset built with other settings ("
                             + ", ".join(f"{k}: {a!r} there, {b!r} now" for k, a, b in diff[:3])
                             + "): use another --out")
    plan = _plan(settings)
    cases_dir = out_p / "cases"
    cases_dir.mkdir(parents=True, exist_ok=True)
    for tmp in cases_dir.glob(".tmp-*"):  # left by a killed run: never used
        shutil.rmtree(tmp, ignore_errors=True)

    key = settings["settings_key"]
    done: dict[str, dict[str, Any]] = {}
    registrations: dict[str, dict] = {}
    for c in plan:
        d = cases_dir / c["id"]
        rec = _complete_record(d, key)
        if rec is not None:
            done[c["id"]] = _summary(rec)
            if c["kind"] == "ct":
                registrations[c["id"]] = rec["transform"]["registration"]
        elif d.exists():
            shutil.rmtree(d)  # half-written or stale: rebuild
    failed: dict[str, str] = {}
    created = (existing or {}).get("created") or _now()
    manifest_state = {"created": created}

    def write() -> None:
        _write_manifest(mpath, _manifest(settings, plan, done, failed, manifest_state))

    write()
    todo = [c for c in plan if c["id"] not in done]
    total = max(1, len(plan))
    report(progress, len(done) / total, f"{len(done)}/{len(plan)} cases complete")
    if not todo:
        return mpath

    def finished(cid: str, summary: dict) -> None:
        done[cid] = summary
        write()
        report(progress, len(done) / total, f"{len(done)}/{len(plan)} cases: {cid} done")

    def fail(cid: str, err: BaseException) -> None:
        failed[cid] = str(err)
        write()

    by_id = {c["id"]: c for c in plan}
    if settings["workers"] == 1:
        for c in todo:
            parent_reg = registrations.get(c["parent"]) if c["parent"] else None
            if c["parent"] and c["parent"] in failed:
                fail(c["id"], XRayToCTError(f"its CT failed: {failed[c['parent']]}"))
                continue
            sub = scaled(progress, len(done) / total, (len(done) + 1) / total)
            try:
                summary = _build_case(str(out_p), c, settings, parent_reg, sub)
            except (InputError, OSError) as err:
                fail(c["id"], err)
                continue
            if c["kind"] == "ct":
                registrations[c["id"]] = summary["registration"]
            finished(c["id"], summary)
    else:
        ctx = multiprocessing.get_context("spawn")
        with cf.ProcessPoolExecutor(settings["workers"], mp_context=ctx,
                                    initializer=_worker_init) as pool:
            futures: dict[cf.Future, str] = {}

            def submit(c: dict) -> None:
                parent_reg = registrations.get(c["parent"]) if c["parent"] else None
                futures[pool.submit(_build_case_in_worker, str(out_p), c, settings,
                                    parent_reg)] = c["id"]

            waiting = {c["id"] for c in todo if c["parent"] and c["parent"] not in registrations}
            for c in todo:
                if c["id"] not in waiting:
                    submit(c)
            try:
                while futures:
                    ready, _ = cf.wait(list(futures), return_when=cf.FIRST_COMPLETED)
                    for fut in ready:
                        cid = futures.pop(fut)
                        summary = fut.result()
                        if "error" in summary:
                            fail(cid, XRayToCTError(summary["error"]))
                            summary = None
                        else:
                            finished(cid, summary)
                        if by_id[cid]["kind"] == "ct":
                            children = [c for c in todo if c["parent"] == cid]
                            if summary is not None:
                                registrations[cid] = summary["registration"]
                                for c in children:
                                    submit(c)
                            else:
                                for c in children:
                                    fail(c["id"], XRayToCTError(f"its CT failed: {failed[cid]}"))
            except BaseException:
                for fut in futures:
                    fut.cancel()
                raise
    if failed:
        first = next(iter(failed.items()))
        raise XRayToCTError(f"{len(failed)} of {len(plan)} cases failed (first: {first[0]}: "
                            f"{first[1]}); the {len(done)} complete cases are listed in {mpath}")
    return mpath


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _manifest(settings: dict[str, Any], plan: list[dict], done: dict[str, dict],
              failed: dict[str, str], state: dict[str, Any]) -> dict[str, Any]:
    size, pixels = settings["size"], settings["pixels"]
    geoms = dataset_geometries(size, pixels)
    cases = {c["id"]: done[c["id"]] for c in plan if c["id"] in done}
    level, width = get_window(settings["window"])
    stored = {k: v for k, v in settings.items() if k not in ("settings_key", "template_sha256")}
    return {
        "version": MANIFEST_VERSION, "kind": "xraytoct dataset", "software": __version__,
        "created": state["created"], "updated": _now(),
        "size": size, "spacing": FIELD_OF_VIEW_MM / size, "pixels": pixels,
        "field_of_view_mm": FIELD_OF_VIEW_MM,
        "window": settings["window"], "window_level_width": [level, width],
        "grid": canonical_grid(size).geometry_dict(),
        "geometry": {v: geoms[v].to_dict() for v in VIEWS},
        "ct": {"file": _CT_FILE, "units": "HU", "clip": list(HU_CLIP), "dtype": "float32",
               "array_order": "k, j, i (SimpleITK), LPS"},
        "drr": {"files": {v: f"{v}.nrrd" for v in VIEWS},
                "units": "line integral of mu (1/mm) x mm / 10, Plastimatch units",
                "hu_conversion": f"mu = {MU_WATER_PER_MM}*(1+HU/1000) per mm, 0 at or below "
                                 f"{DRR_AIR_THRESHOLD_HU:g} HU",
                "renderer": "drr.DRR (torch, Joseph, trilinear)",
                "rendered_from": f"the preprocessed volume at {settings['drr_spacing']:g} mm "
                                 "(256 mm field), not the target"},
        "settings": stored, "settings_key": settings["settings_key"],
        **({"ct_protocol": CT_PROTOCOL} if settings["ct_dir"] is not None else {}),
        "sources": {"ct_dir": settings["ct_dir"], "phantoms": settings["phantoms"],
                    "augment_per_ct": settings["augment"], "template": settings["template"],
                    "template_sha256": settings.get("template_sha256"),
                    "cts": sorted({c["source"] for c in plan if c["kind"] == "ct"})},
        "seeds": {"dataset": settings["seed"],
                  "rule": "case seed = first 4 bytes (little-endian) of sha256('<dataset "
                          "seed>/<case id>')",
                  "cases": {c["id"]: c["seed"] for c in plan}},
        "split": {"ratios": dict(zip(("train", "val", "test"), settings["splits"])),
                  "rule": "sha256 of the case group id (augmented copies: their CT's id), "
                          "first 8 bytes big-endian / 2^64, against the cumulative ratios; "
                          "real CTs named in forced (settings ct_splits) go where it says",
                  "forced": dict(settings["ct_splits"]),
                  **{s: sorted(c["id"] for c in plan if c["split"] == s)
                     for s in ("train", "val", "test")}},
        "planned": len(plan), "complete": len(cases),
        "cases": cases, "failed": dict(failed),
    }



