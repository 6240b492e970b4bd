"""Tests of XRayToCTLib.data: the cached dataset of CT/DRR cases and its PyTorch Dataset.

Small on purpose: 32^3 targets, 32^2 DRRs, DRRs rendered from a 4 mm volume."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from XRayToCTLib import data, io
from XRayToCTLib import dataset as reader
from XRayToCTLib import augment
from XRayToCTLib.augment import augmentation_transform as augment_transform
from XRayToCTLib import preprocess as pp
from XRayToCTLib.cli import main
from XRayToCTLib.drr import DRR
from XRayToCTLib.errors import InputError, XRayToCTError
from XRayToCTLib.geometry import canonical_grid

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
CTHEAD_DIR = SHARED_DATA / "head_ct" / "slicer_ctheadaxial"
TEMPLATE_FILE = SHARED_DATA / "templates" / "rorden_scct" / "scct.nii"

SMALL = dict(size=32, pixels=32, drr_spacing=4.0)


def _build(out: Path, **kw) -> Path:
    return data.prepare_dataset(out, **{**SMALL, "phantoms": 4, "seed": 0, **kw})


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ds") / "phantoms"
    seen = []
    mpath = _build(root, progress=lambda f, m: seen.append((f, m)))
    assert mpath == root / "manifest.json"
    assert seen[-1][0] == pytest.approx(1.0)
    assert all(0.0 <= f <= 1.0 for f, _ in seen)
    return root


def _arrays(root: Path, cid: str) -> dict[str, np.ndarray]:
    d = root / "cases" / cid
    return {n: sitk.GetArrayFromImage(sitk.ReadImage(str(d / f)))
            for n, f in (("ct", "ct.nii.gz"), ("ap", "ap.nrrd"), ("lateral", "lateral.nrrd"))}


def test_manifest_contents(dataset):
    m = reader.load_manifest(dataset)
    assert m["version"] == data.MANIFEST_VERSION and m["kind"] == "xraytoct dataset"
    assert (m["size"], m["pixels"], m["spacing"], m["window"]) == (32, 32, 8.0, "brain")
    assert m["window_level_width"] == [40.0, 40.0]
    assert m["grid"] == canonical_grid(32).geometry_dict()
    assert m["grid"]["origin"] == [-124.0] * 3
    geoms = data.dataset_geometries(32, 32)
    assert m["geometry"] == {v: geoms[v].to_dict() for v in ("ap", "lateral")}
    assert m["geometry"]["ap"]["isocenter"] == [0.0, 0.0, 0.0]
    assert "Plastimatch" in m["drr"]["units"] and "0.022" in m["drr"]["hu_conversion"]
    assert m["ct"]["units"] == "HU" and m["ct"]["clip"] == [-1000.0, 1000.0]
    s = m["settings"]
    assert (s["phantoms"], s["seed"], s["size"], s["drr_spacing"]) == (4, 0, 32, 4.0)
    assert m["planned"] == m["complete"] == 4 and m["failed"] == {}
    assert set(m["cases"]) == {f"phantom-{i:05d}" for i in range(4)}
    assert m["seeds"]["cases"]["phantom-00002"] == data.case_seed(0, "phantom-00002")
    assert m["split"]["ratios"] == {"train": 0.8, "val": 0.1, "test": 0.1}
    for cid, c in m["cases"].items():
        assert c["status"] == "complete" and c["kind"] == "phantom"
        for f in c["files"].values():
            assert (dataset / "cases" / cid / f).is_file()
        rec = json.loads((dataset / "cases" / cid / "case.json").read_text())
        assert rec["id"] == cid and rec["seed"] == c["seed"]
        assert rec["transform"]["registration"]["type"] == "Euler3DTransform"
        assert rec["transform"]["grid"]["size"] == [64, 64, 64]  # the 4 mm DRR volume
        assert rec["transform"]["target"]["size"] == [32, 32, 32]
        assert "findings" in rec and "phantom" in rec
    assert not list((dataset / "cases").glob(".tmp-*"))


def test_every_case_has_the_canonical_geometry(dataset):
    m = reader.load_manifest(dataset)
    grid = canonical_grid(32)
    for cid in m["cases"]:
        ct = io.read_volume(dataset / "cases" / cid / "ct.nii.gz")
        assert grid.same_as(ct, atol=1e-9), cid
        for view in ("ap", "lateral"):
            rad = io.read_radiograph(dataset / "cases" / cid / f"{view}.nrrd")
            assert rad.geometry.to_dict() == m["geometry"][view]


def test_case_dataset_shapes_and_values(dataset):
    full = reader.CaseDataset(dataset, None)
    assert len(full) == 4 and full.size == 32 and full.pixels == 32 and full.window == "brain"
    assert sum(len(reader.CaseDataset(dataset, s)) for s in ("train", "val", "test")) == 4
    item = full[0]
    assert item["id"] == "phantom-00000"
    assert item["ct"].shape == (1, 32, 32, 32) and item["ct"].dtype == torch.float32
    assert item["ap"].shape == item["lateral"].shape == (1, 32, 32)
    ct = item["ct"].numpy()
    assert ct.min() == -1000.0 and ct.max() <= 1000.0
    assert (ct > 300).mean() > 0.005  # skull
    assert 0.05 < (ct > -500).mean() < 0.6  # a head in air
    assert item["ap"].min() >= 0 and item["ap"].max() > 0.5 * item["lateral"].max() > 0
    np.testing.assert_array_equal(ct[0], _arrays(dataset, "phantom-00000")["ct"])
    assert full[-1]["id"] == full.ids[-1]
    with pytest.raises(IndexError):
        full[4]
    cached = reader.CaseDataset(dataset, None, cache_in_memory=True)
    assert torch.equal(cached[1]["ct"], cached[1]["ct"]) and 1 in cached._cache
    assert full.grid.shape == (32, 32, 32)
    assert canonical_grid(32).same_as(full.grid)
    assert full.geometries["lateral"] == data.dataset_geometries(32, 32)["lateral"]
    loader = torch.utils.data.DataLoader(full, batch_size=2)
    batch = next(iter(loader))
    assert batch["ct"].shape == (2, 1, 32, 32, 32) and batch["id"] == ["phantom-00000", "phantom-00001"]
    with pytest.raises(ValueError):
        reader.CaseDataset(dataset, "training")


def test_drrs_equal_a_render_of_the_stored_volume(dataset):
    """The stored DRRs come from the 4 mm volume; re-rendering the 8 mm target at the
    stored geometry gives the same images up to the coarser grid's blur."""
    ds = reader.CaseDataset(dataset, None)
    for i in range(2):
        item = ds[i]
        target = ds.grid.with_array(item["ct"][0].numpy())
        images = DRR(ds.geometries).render(target, device="cpu")
        for view, rad in images.items():
            stored = item[view][0].numpy()
            head = stored > 0.05 * stored.max()
            rel = np.abs(rad.array - stored)[head].mean() / stored[head].mean()
            assert rel < 0.05, (view, rel)
            assert abs(rad.array.sum() / stored.sum() - 1.0) < 0.02


def test_splits_are_fixed_disjoint_and_keep_copies_together(dataset, tmp_path):
    m = reader.load_manifest(dataset)
    sets = [set(m["split"][s]) for s in ("train", "val", "test")]
    assert set.union(*sets) == set(m["cases"]) and sum(map(len, sets)) == len(m["cases"])
    for cid, c in m["cases"].items():
        assert c["split"] == data.split_of(c["group"]) and cid in m["split"][c["split"]]
    ids = [f"case-{i}" for i in range(3000)]
    got = [data.split_of(i) for i in ids]
    assert got == [data.split_of(i) for i in ids]  # deterministic
    for name, ratio in (("train", 0.8), ("val", 0.1), ("test", 0.1)):
        assert abs(got.count(name) / len(ids) - ratio) < 0.03
    assert {data.split_of(i, (0.0, 0.0, 1.0)) for i in ids[:50]} == {"test"}
    # augmented copies of a CT are in its split (no leakage across splits)
    (tmp_path / "cts").mkdir()
    for name in ("a.nii.gz", "b.nrrd", "c.mha"):
        (tmp_path / "cts" / name).write_bytes(b"")
    plan = data._plan({"ct_dir": str(tmp_path / "cts"), "augment": 5, "phantoms": 2,
                       "seed": 3, "splits": (0.5, 0.25, 0.25)})
    assert len(plan) == 3 * 6 + 2
    for c in plan:
        assert c["split"] == data.split_of(c["group"], (0.5, 0.25, 0.25))
        if c["parent"]:
            assert c["group"] == c["parent"] and c["id"].startswith(c["parent"] + "-aug")
    assert len({c["seed"] for c in plan}) == len(plan)


def test_reproducible_from_the_manifest(dataset, tmp_path):
    settings = reader.load_manifest(dataset)["settings"]
    again = tmp_path / "again"
    data.prepare_dataset(again, **{**settings, "phantoms": 2})
    for cid in ("phantom-00000", "phantom-00001"):
        a, b = _arrays(dataset, cid), _arrays(again, cid)
        np.testing.assert_array_equal(a["ct"], b["ct"])
        np.testing.assert_allclose(a["ap"], b["ap"], rtol=1e-6, atol=1e-6)
    other = tmp_path / "other"
    data.prepare_dataset(other, **{**settings, "phantoms": 1, "seed": 1})
    assert not np.array_equal(_arrays(dataset, "phantom-00000")["ct"],
                              _arrays(other, "phantom-00000")["ct"])


_KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    from XRayToCTLib.data import prepare_dataset

    def progress(fraction, message):
        # die like a killed job in the middle of writing the second case
        if message == "phantom-00001: writing DRRs":
            os.kill(os.getpid(), signal.SIGKILL)

    prepare_dataset(sys.argv[1], phantoms=3, size=32, pixels=32, drr_spacing=4.0,
                    progress=progress)
""")


def test_resume_after_a_kill(dataset, tmp_path):
    out = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", _KILL_SCRIPT, str(out)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    # the half-written case is only in a temporary folder; the manifest lists what is complete
    assert len(list((out / "cases").glob(".tmp-phantom-00001-*"))) == 1
    assert not (out / "cases" / "phantom-00001").exists()
    m = reader.load_manifest(out)
    assert list(m["cases"]) == ["phantom-00000"] and m["planned"] == 3
    assert reader.CaseDataset(out, None).ids == ["phantom-00000"]
    # a stale case: complete folder but broken record -> rebuilt
    (out / "cases" / "phantom-00000" / "case.json").write_text("{")
    data.prepare_dataset(out)  # resumes with the manifest's settings
    m = reader.load_manifest(out)
    assert m["complete"] == 3 and not list((out / "cases").glob(".tmp-*"))
    for cid in ("phantom-00000", "phantom-00001", "phantom-00002"):
        a, b = _arrays(out, cid), _arrays(dataset, cid)  # same seed and id -> same case
        np.testing.assert_array_equal(a["ct"], b["ct"])
        np.testing.assert_allclose(a["lateral"], b["lateral"], rtol=1e-6, atol=1e-6)
    # a third run has nothing to do and changes nothing
    before = (out / "cases" / "phantom-00002" / "case.json").stat().st_mtime_ns
    data.prepare_dataset(out, phantoms=3, size=32, pixels=32, drr_spacing=4.0)
    assert (out / "cases" / "phantom-00002" / "case.json").stat().st_mtime_ns == before


def test_settings_must_match_an_existing_dataset(dataset):
    with pytest.raises(InputError, match="other settings.*size"):
        data.prepare_dataset(dataset, phantoms=4, size=16, drr_spacing=4.0)
    with pytest.raises(InputError, match="nothing to prepare"):
        data.prepare_dataset(dataset.parent / "empty")
    with pytest.raises(InputError, match="drr_spacing"):
        data.prepare_dataset(dataset.parent / "x", phantoms=1, drr_spacing=3.0)
    with pytest.raises(InputError, match="a folder of CTs is needed"):
        data.prepare_dataset(dataset.parent / "x", phantoms=1, augment=2)


def test_workers_build_the_same_cases(dataset, tmp_path):
    out = tmp_path / "pool"
    data.prepare_dataset(out, phantoms=2, workers=2, **SMALL)
    for cid in ("phantom-00000", "phantom-00001"):
        a, b = _arrays(out, cid), _arrays(dataset, cid)
        np.testing.assert_allclose(a["ct"], b["ct"], atol=1e-3)
        np.testing.assert_allclose(a["ap"], b["ap"], rtol=1e-5, atol=1e-5)
    assert reader.load_manifest(out)["complete"] == 2


@pytest.mark.skipif(not (CTHEAD_DIR.is_dir() and TEMPLATE_FILE.is_file()),
                    reason=f"shared data absent: {CTHEAD_DIR} or {TEMPLATE_FILE}")
def test_real_ct_case_with_an_augmented_copy(tmp_path):
    ct = io.read_volume(CTHEAD_DIR, rescale=(1.0, -1024.0))  # stored 0..3926, no intercept
    (tmp_path / "cts").mkdir()
    io.write_volume(ct, tmp_path / "cts" / "cthead.nii.gz")
    (tmp_path / "cts" / "broken.nii.gz").write_bytes(b"not a nifti")
    out = tmp_path / "real"
    with pytest.raises(XRayToCTError, match="2 of 4 cases failed.*ct-broken"):
        data.prepare_dataset(out, ct_dir=tmp_path / "cts", augment=1, template=TEMPLATE_FILE,
                             **SMALL)
    m = reader.load_manifest(out)
    assert sorted(m["cases"]) == ["ct-cthead", "ct-cthead-aug01"]
    assert set(m["failed"]) == {"ct-broken", "ct-broken-aug01"}
    assert m["sources"]["template_sha256"] and Path(m["settings"]["template"]) == TEMPLATE_FILE.resolve()
    orig, aug = m["cases"]["ct-cthead"], m["cases"]["ct-cthead-aug01"]
    assert orig["split"] == aug["split"] and aug["parent"] == "ct-cthead"
    assert aug["registration"] == orig["registration"]  # registered once
    rec = json.loads((out / "cases" / "ct-cthead" / "case.json").read_text())
    offset = rec["transform"]["registration"]["info"]["canonical_offset_mm"]
    assert 10 < offset[1] < 30  # the Rorden template's head centre is about (0, 20, 0)
    # the target overlays the CT: put it back on the CT grid through the stored transform
    target = io.read_volume(out / "cases" / "ct-cthead" / "ct.nii.gz")
    back = pp.to_patient_space(target, rec["transform"]["registration"], ct)
    inside = (back.array > -900) & (ct.array > -900)
    assert inside.mean() > 0.2
    corr = np.corrcoef(np.clip(back.array[inside], -200, 1000), np.clip(ct.array[inside], -200, 1000))[0, 1]
    assert corr > 0.75, corr
    augmented = io.read_volume(out / "cases" / "ct-cthead-aug01" / "ct.nii.gz")
    arec = json.loads((out / "cases" / "ct-cthead-aug01" / "case.json").read_text())
    assert {"pose", "elastic", "intensity", "noise"} <= set(arec["augmentation"])
    # the copy is the CT seen through the recorded augmentation, composed in canonical space
    tx, spatial = augment_transform(canonical_grid(64), arec["seed"],
                                    center=(0.0, 0.0, 0.0))
    assert spatial["pose"] == arec["augmentation"]["pose"]
    expected = pp.resample_to_grid(target, target, tx)
    head = (target.array > -500) | (augmented.array > -500)
    plain = np.corrcoef(augmented.array[head], target.array[head])[0, 1]
    through = np.corrcoef(augmented.array[head], expected.array[head])[0, 1]
    assert through > 0.7 and through > plain + 0.2, (through, plain)  # 0.79 vs 0.46


def test_cli_prepare_and_its_errors(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["prepare", "--out", str(out), "--phantoms", "1", "--size", "16",
                 "--drr-spacing", "8", "--findings", "none"]) == 0
    assert "1 of 1 cases complete" in capsys.readouterr().out
    assert reader.CaseDataset(out, None)[0]["ct"].shape == (1, 16, 16, 16)
    fresh = str(tmp_path / "fresh")
    for argv, needle in (
            ([fresh, "--ct-dir", str(tmp_path / "missing")], "no such file or folder"),
            ([fresh], "nothing to prepare"),
            ([str(out), "--phantoms", "1", "--size", "32", "--drr-spacing", "8"], "other settings"),
            ([str(out), "--phantoms", "-2"], "phantoms must be"),
    ):
        code = main(["prepare", "--out", *argv])
        err = capsys.readouterr().err
        assert code == 2, argv
        assert err.startswith("error: ") and needle in err and err.count("\n") == 1, err
    (tmp_path / "file").write_text("x")
    assert main(["prepare", "--out", str(tmp_path / "file"), "--phantoms", "1"]) == 2
    assert "not a folder" in capsys.readouterr().err


def test_unregistered_ct_is_centred_on_its_head(tmp_path):
    """--no-register: the canonical grid is centred on the CT's head; the recorded transform
    (a pure translation) puts the target back on the CT."""
    grid = pp.Grid.centered((5.0, -8.0, 12.0), (70, 70, 40), (3.0, 3.0, 5.0))
    ct = grid.volume(-1000.0)
    kji = np.stack(np.meshgrid(*[np.arange(s) for s in grid.shape], indexing="ij"), -1)
    pts = grid.physical_points(kji[..., ::-1].reshape(-1, 3).astype(float)).reshape(*kji.shape)
    centre = np.array([20.0, -10.0, 30.0])
    r = np.sqrt((((pts - centre) / (65.0, 80.0, 70.0)) ** 2).sum(-1))
    ct.array[r < 1.0] = 1200.0
    ct.array[r < 0.9] = 35.0
    (tmp_path / "cts").mkdir()
    io.write_volume(ct, tmp_path / "cts" / "ellipsoid.nrrd")
    out = tmp_path / "noreg"
    data.prepare_dataset(out, ct_dir=tmp_path / "cts", register=False, augment=1, **SMALL)
    m = reader.load_manifest(out)
    assert m["settings"]["template"] is None and m["complete"] == 2
    rec = json.loads((out / "cases" / "ct-ellipsoid" / "case.json").read_text())
    reg = pp.RigidRegistration.from_dict(rec["transform"]["registration"])
    np.testing.assert_allclose(reg.parameters[:3], 0.0, atol=1e-12)
    np.testing.assert_allclose(reg.transform_points([[0.0, 0.0, 0.0]])[0], centre, atol=2.0)
    target = io.read_volume(out / "cases" / "ct-ellipsoid" / "ct.nii.gz")
    np.testing.assert_allclose(pp.head_center(target), 0.0, atol=4.0)
    back = pp.to_patient_space(target, reg, ct)
    # away from the 8 mm target's blurred shell, the values come back where they were
    deep, far = r < 0.7, (r > 1.2) & (r < 1.5)
    assert np.abs(back.array[deep] - 35.0).max() < 30
    assert np.abs(back.array[far] + 1000.0).max() < 60
    assert m["cases"]["ct-ellipsoid-aug01"]["registration"] == m["cases"]["ct-ellipsoid"]["registration"]


def test_ct_sources_name_one_volume_folders_by_the_folder(tmp_path):
    cts = tmp_path / "cts"
    for rel in ("a.nii.gz", "pycerr_hn_pt1/ct.nii.gz", "pycerr_hn_pt1/NOTICE.txt",
                "two/x.nii.gz", "two/y.nrrd", ".hidden/ct.nii.gz", "notes/readme.txt",
                "b.mha", "b/ct.nrrd"):
        (cts / rel).parent.mkdir(parents=True, exist_ok=True)
        (cts / rel).write_bytes(b"")
    (cts / "empty").mkdir()
    found = data._ct_sources(cts)
    assert [(cid, p.relative_to(cts).as_posix()) for cid, p in found] == [
        ("ct-a", "a.nii.gz"), ("ct-b", "b/ct.nrrd"), ("ct-b-2", "b.mha"),
        ("ct-pycerr_hn_pt1", "pycerr_hn_pt1/ct.nii.gz")]
    with pytest.raises(InputError, match="no CT found"):
        data._ct_sources(cts / "notes")


def test_forced_splits_override_the_hash_for_whole_groups(tmp_path):
    (tmp_path / "cts").mkdir()
    for name in ("a.nii.gz", "b.nrrd", "c.mha", "d.nii"):
        (tmp_path / "cts" / name).write_bytes(b"")
    base = {"ct_dir": str(tmp_path / "cts"), "augment": 2, "phantoms": 30, "seed": 3,
            "splits": (0.5, 0.25, 0.25)}
    hashed = {c["id"]: c["split"] for c in data._plan(base)}
    plan = data._plan({**base, "ct_splits": {"a": "test", "ct-b": "val", "all": "train"}})
    got = {c["id"]: c["split"] for c in plan}
    for cid in ("ct-a", "ct-a-aug01", "ct-a-aug02"):
        assert got[cid] == "test"
    assert {got[c] for c in ("ct-b", "ct-b-aug01", "ct-b-aug02")} == {"val"}
    assert {got[c] for c in got if c.startswith(("ct-c", "ct-d"))} == {"train"}
    # phantoms keep the hashed split (and it does vary)
    phantoms = {c: got[c] for c in got if c.startswith("phantom")}
    assert phantoms == {c: hashed[c] for c in phantoms} and len(set(phantoms.values())) > 1
    only = {c["id"]: c["split"] for c in data._plan({**base, "ct_splits": {"ct-c": "val"}})}
    assert only["ct-c-aug02"] == "val" and only["ct-a"] == hashed["ct-a"]
    with pytest.raises(InputError, match=r"named 'nope', 'ct-x' \(its CTs: ct-a, ct-b"):
        data._plan({**base, "ct_splits": {"nope": "test", "ct-x": "val", "a": "test"}})
    with pytest.raises(InputError, match="need a folder of CTs"):
        data._plan({**base, "ct_dir": None, "augment": 0, "ct_splits": {"all": "test"}})
    with pytest.raises(InputError, match="ct_splits maps a CT name to one of train, val, test"):
        data.prepare_dataset(tmp_path / "x", ct_dir=tmp_path / "cts", register=False,
                             ct_splits={"a": "testing"}, **SMALL)
    # the CLI: NAME=SPLIT, repeatable; errors are one line
    for argv, needle in (
            (["--ct-split", "a"], "--ct-split takes NAME=SPLIT"),
            (["--ct-split", "a=test", "--ct-split", "zz=val"], "no CT here is named 'zz'"),
            (["--ct-split", "a=exam"], "ct_splits maps a CT name")):
        code = main(["prepare", "--out", str(tmp_path / "cli"), "--ct-dir",
                     str(tmp_path / "cts"), "--no-register", *argv])
        assert code == 2, argv
    assert not (tmp_path / "cli" / "cases").exists()


def _couch_ct() -> tuple[pp.Volume, np.ndarray]:
    """A long ellipsoid 'head and neck' (skull 1000 HU, inside 30 HU) lying on a couch slab
    (150 HU, 10 to 40 mm behind it, foam between), on an anisotropic CT grid; and its centre."""
    centre = np.array([5.0, -8.0, 12.0])
    grid = pp.Grid.centered(centre, (66, 66, 54), (4.0, 4.0, 5.0))
    ct = grid.volume(-1000.0)
    kji = np.stack(np.meshgrid(*[np.arange(s) for s in grid.shape], indexing="ij"), -1)
    p = grid.physical_points(kji[..., ::-1].reshape(-1, 3).astype(float)).reshape(*kji.shape)
    p = p - centre
    r = np.sqrt(((p / (65.0, 85.0, 120.0)) ** 2).sum(-1))
    ct.array[r < 1.0] = 1000.0
    ct.array[r < 0.92] = 30.0
    ct.array[(r >= 1.0) & (p[..., 1] > 40.0) & (p[..., 1] < 95.0) & (np.abs(p[..., 0]) < 60)] = -880.0
    ct.array[(p[..., 1] >= 95.0) & (p[..., 1] <= 125.0)] = 150.0
    return ct, centre


def test_real_ct_support_coverage_resolution_and_forced_split(tmp_path):
    """Targets never hold the couch; the CT's own DRRs do, and each copy's DRRs as drawn; the
    coverage cut and the slice blur follow the case seed; ct_splits puts every copy in one
    split and is part of the settings."""
    ct, _ = _couch_ct()
    (tmp_path / "cts" / "couch_head").mkdir(parents=True)
    io.write_volume(ct, tmp_path / "cts" / "couch_head" / "ct.nrrd")
    fine = canonical_grid(64).volume(0.0)  # the 4 mm DRR volume's grid
    draws = {}
    for n in range(1, 9):  # enough copies to see each draw both ways
        sid = data.case_seed(0, f"ct-couch_head-aug{n:02d}")
        rec = augment.augment_scan(fine, sid, center=(0.0, 0.0, 0.0))[1]
        draws[n] = (rec["crop"]["applied"], rec["resolution"]["applied"],
                    augment.support_in_drrs(sid))
        if all(len({d[i] for d in draws.values()}) == 2 for i in range(3)):
            break
    n_aug = len(draws)
    out = tmp_path / "ds"
    data.prepare_dataset(out, ct_dir=tmp_path / "cts", register=False, augment=n_aug,
                         ct_splits={"couch_head": "val"}, **SMALL)
    m = reader.load_manifest(out)
    ids = ["ct-couch_head"] + [f"ct-couch_head-aug{n:02d}" for n in range(1, n_aug + 1)]
    assert sorted(m["cases"]) == ids and m["split"]["val"] == ids
    assert m["settings"]["ct_splits"] == {"couch_head": "val"} and m["ct_protocol"] == 2
    assert m["split"]["forced"] == {"couch_head": "val"}
    ds = reader.CaseDataset(out, None)
    renderer = DRR(ds.geometries)
    grid = canonical_grid(32)
    kji = np.argwhere(np.ones(grid.shape, bool))
    zyx = grid.physical_points(kji[:, ::-1].astype(float))[:, ::-1].reshape(*grid.shape, 3)
    for i, cid in enumerate(ds.ids):
        rec = json.loads((out / "cases" / cid / "case.json").read_text())
        item = ds[i]
        target = item["ct"][0].numpy()
        # no couch in any target: nothing but air behind the head
        assert np.all(target[zyx[..., 1] > 110.0] <= -999.0), cid
        sup = rec["support"]
        assert sup["in_target"] is False and sup["removed_ml"] > 500.0
        ratio = {}
        for view, rad in renderer.render(grid.with_array(target), device="cpu").items():
            ratio[view] = item[view][0].numpy().sum() / rad.array.sum()
        if sup["in_drrs"]:  # the couch adds to both views
            assert ratio["lateral"] > 1.3 and ratio["ap"] > 1.1, (cid, ratio)
        else:
            assert abs(ratio["lateral"] - 1) < 0.03 and abs(ratio["ap"] - 1) < 0.03, (cid, ratio)
        if cid == "ct-couch_head":
            assert sup["in_drrs"] and "augmentation" not in rec
            # the head is whole: inside, the CT's 30 HU, down to the end of the 'neck'
            rr = np.sqrt(((zyx[..., ::-1] / (65.0, 85.0, 120.0)) ** 2).sum(-1))
            assert np.abs(target[rr < 0.75] - 30.0).max() < 5.0
            low = (zyx[..., 0] < -104.0) & (rr < 0.95)
            assert low.sum() > 3 and (target[low] > 0).all()
            continue
        aug = rec["augmentation"]
        n = int(cid[-2:])
        assert (aug["crop"]["applied"], aug["resolution"]["applied"], sup["in_drrs"]) == draws[n]
        assert aug["support"] == {"in_drrs": sup["in_drrs"]} and "scale" in aug
        if aug["crop"]["applied"]:
            level = aug["crop"]["z_mm"]
            assert -110.0 <= level <= -60.0
            assert np.all(target[zyx[..., 0] < level - 8.0] <= -999.0), cid
            assert (target[zyx[..., 0] > level + 8.0] > 0).any()
        else:
            assert (target[(zyx[..., 0] < -108.0) & (np.abs(zyx[..., 1]) < 30)] > -500).any(), cid
    # ct_splits is a case-defining setting: another one is refused; resuming keeps it
    with pytest.raises(InputError, match="ct_splits"):
        data.prepare_dataset(out, ct_dir=tmp_path / "cts", register=False, augment=n_aug,
                             ct_splits={"all": "train"}, **SMALL)
    data.prepare_dataset(out)
    # a dataset of real CTs made by the first recipe is not mixed with this one
    mpath = out / "manifest.json"
    old = json.loads(mpath.read_text())
    del old["ct_protocol"]
    mpath.write_text(json.dumps(old))
    with pytest.raises(InputError, match="real-CT recipe: 1 there, 2 now"):
        data.prepare_dataset(out)


def test_a_dataset_leaves_out_a_head_and_all_its_copies(tmp_path):
    """CaseDataset(exclude=[...]) / train --exclude: a real CT's id leaves out the CT and its
    augmented copies (they share its group), other cases stay; an unknown name is refused."""
    from XRayToCTLib.dataset import MANIFEST_VERSION, CaseDataset

    def case(group, split="train"):
        return {"group": group, "split": split, "status": "complete", "files": {}}

    cases = {"ct-a": case("ct-a"), "ct-a-aug01": case("ct-a"), "ct-a-aug02": case("ct-a", "val"),
             "ct-b": case("ct-b"), "phantom-00000": case("phantom-00000")}
    (tmp_path / "manifest.json").write_text(json.dumps(
        {"kind": "xraytoct dataset", "version": MANIFEST_VERSION, "cases": cases}))
    assert CaseDataset(tmp_path, "train").ids == ["ct-a", "ct-a-aug01", "ct-b", "phantom-00000"]
    assert CaseDataset(tmp_path, "train", exclude=["ct-a"]).ids == ["ct-b", "phantom-00000"]
    assert CaseDataset(tmp_path, "val", exclude=["ct-a"]).ids == []
    assert CaseDataset(tmp_path, None, exclude=["ct-a-aug01"]).ids == [
        "ct-a", "ct-a-aug02", "ct-b", "phantom-00000"]
    with pytest.raises(InputError, match="ct-zzz"):
        CaseDataset(tmp_path, "train", exclude=["ct-zzz"])
