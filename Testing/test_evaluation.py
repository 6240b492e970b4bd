"""Tests of XRayToCTLib.evaluation and ``xraytoct evaluate``: pairing, resampling, baselines,
failures that do not stop the batch, and the written CSV / JSON / HTML."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk

from XRayToCTLib import evaluation as E
from XRayToCTLib.cli import main
from XRayToCTLib.drr import DRR, biplanar_geometry
from XRayToCTLib.errors import InputError
from XRayToCTLib.geometry import Volume
from XRayToCTLib.io import write_radiograph, write_volume
from XRayToCTLib.phantom import head_phantom

N = 4
SIZE = 32
SPACING = 256.0 / SIZE


def render_biplanar(volume, *, pixels, device="cpu"):
    """AP and lateral DRRs of ``volume`` at the default geometry."""
    return DRR(biplanar_geometry(volume, pixels=pixels)).render(volume, device=device)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A dataset (manifest + cases/<id>/{ct.nii.gz, ap.nrrd, lateral.nrrd}) of 32^3 phantom
    heads, and two prediction folders: 'good' (noise) and 'bad' (blur, a NaN case, an
    unreadable file, a prediction on another grid, one that overlaps nothing)."""
    from scipy import ndimage
    root = tmp_path_factory.mktemp("evaluation")
    ds, good, bad = root / "ds", root / "good", root / "bad"
    for d in (ds / "cases", good, bad):
        d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    cases = []
    for s in range(N):
        cid = f"c{s}"
        v = head_phantom(SIZE, SPACING, seed=s)
        d = ds / "cases" / cid
        d.mkdir()
        write_volume(v, d / "ct.nii.gz")
        for view, rad in render_biplanar(v, pixels=32, device="cpu").items():
            write_radiograph(rad, d / f"{view}.nrrd")
        cases.append({"id": cid, "split": "train" if s < 2 else "test"})
        noisy = v.array + rng.normal(0, 15, v.array.shape) if s else v.array  # c0 identical
        write_volume(v.with_array(noisy.astype(np.float32)), good / f"{cid}.nii.gz")
        blurred = ndimage.gaussian_filter(v.array, 1.5).astype(np.float32)
        if s == 0:
            arr = blurred.copy()
            arr[5, 5, 5] = np.nan
            img = sitk.GetImageFromArray(arr)
            img.SetSpacing(v.spacing)
            img.SetOrigin(v.origin)
            sitk.WriteImage(img, str(bad / f"{cid}.nrrd"))
        elif s == 1:
            (bad / f"{cid}.nii.gz").write_bytes(b"not a nifti file at all")
        elif s == 2:  # another grid: shifted by half a voxel, one voxel larger
            grid = Volume(np.zeros((SIZE + 1,) * 3), v.spacing,
                          tuple(np.asarray(v.origin) - SPACING / 2), v.direction)
            from XRayToCTLib.preprocess import resample_to_grid
            write_volume(resample_to_grid(v.with_array(blurred), grid), bad / f"{cid}.nii.gz")
        else:  # no overlap
            far = Volume(blurred, v.spacing, tuple(np.asarray(v.origin) + 5000.0), v.direction)
            write_volume(far, bad / f"{cid}.nii.gz")
    (ds / "manifest.json").write_text(json.dumps({"cases": cases}))
    return {"ds": ds, "good": good, "bad": bad, "root": root}


def test_case_ids_and_finding_volumes(data, tmp_path):
    assert E.case_id("a/b/c01.nii.gz") == "c01" and E.case_id("x.mha") == "x"
    assert E.case_id("d/cases/c7/ct.nii.gz") == "c7"
    assert sorted(E.find_volumes(data["ds"])) == [f"c{s}" for s in range(N)]
    assert sorted(E.find_volumes(data["good"])) == [f"c{s}" for s in range(N)]
    (tmp_path / "b_ap_reprojection.nrrd").write_bytes(b"")  # reconstruct's sidecar: skipped
    (tmp_path / "a.nii.gz").write_bytes(b"")
    assert list(E.find_volumes(tmp_path)) == ["a"]
    (tmp_path / "a.nrrd").write_bytes(b"")
    with pytest.raises(InputError, match="two volumes"):
        E.find_volumes(tmp_path)
    with pytest.raises(InputError, match="no volumes"):
        E.find_volumes(data["ds"] / "cases")


def test_align_resamples_through_physical_space_and_refuses_no_overlap():
    v = head_phantom(SIZE, SPACING, seed=0)
    from XRayToCTLib.preprocess import resample_to_grid
    shifted = Volume(np.zeros((SIZE + 2,) * 3), v.spacing, tuple(np.asarray(v.origin) - SPACING), v.direction)
    moved = resample_to_grid(v, shifted)  # the same image on a larger grid: exact voxels
    back, covered = E.align(moved, v)
    assert covered == 1.0 and np.allclose(back, v.array, atol=1e-3)
    partial = Volume(v.array, v.spacing, tuple(np.asarray(v.origin) + SPACING * 8), v.direction)
    _, cov = E.align(partial, v)
    assert cov == pytest.approx(((SIZE - 8) / SIZE) ** 3)  # shifted 8 voxels along i, j and k
    far = Volume(v.array, v.spacing, tuple(np.asarray(v.origin) + 1e4), v.direction)
    with pytest.raises(InputError, match="does not overlap"):
        E.align(far, v, name="far.nii.gz")
    with pytest.raises(InputError, match="no geometry"):
        E.align(np.zeros((4, 4, 4)), np.zeros((4, 4, 5)))


def test_backprojection_of_water_is_zero_hu_and_air_is_air():
    water = Volume(np.zeros((24, 24, 24), np.float32), (4.0, 4.0, 4.0), (-46.0, -46.0, -46.0))
    views = render_biplanar(water, pixels=48, device="cpu")
    hu = E.backprojection_baseline(views, water)
    assert hu.shape == water.array.shape
    assert np.abs(hu[4:-4, 4:-4, 4:-4]).max() < 20.0  # mean mu along every ray = water
    air = water.with_array(np.full(water.array.shape, -1000.0, np.float32))
    assert np.allclose(E.backprojection_baseline(render_biplanar(air, pixels=48, device="cpu"), air),
                       -1000.0)
    with pytest.raises(InputError):
        E.backprojection_baseline([], water)


def test_template_is_the_mean_of_training_targets(data):
    from XRayToCTLib.io import read_volume
    t = E.template_from_dataset(data["ds"])
    a = read_volume(data["ds"] / "cases" / "c0" / "ct.nii.gz").array
    b = read_volume(data["ds"] / "cases" / "c1" / "ct.nii.gz").array
    assert np.allclose(t.array, (a.astype(np.float64) + b) / 2, atol=1e-3)
    assert t.metadata["template_cases"] == 2


def test_cli_evaluate_end_to_end(data, capsys):
    out = data["root"] / "report"
    rc = main(["evaluate", "--pred", str(data["good"]), "--pred", str(data["bad"]),
               "--name", "good", "--name", "bad", "--gt", str(data["ds"]), "--out", str(out),
               "--baseline", "template", "--baseline", "backprojection"])
    err = capsys.readouterr().err
    assert rc == 0, err
    with open(out / "metrics.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    assert tuple(rows[0]) == E.CSV_COLUMNS
    body = [dict(zip(rows[0], r)) for r in rows[1:]]
    models = {r["model"] for r in body}
    assert models == {"good", "bad", "template", "backprojection"}
    assert {r["metric"] for r in body} == {"ssim", "ssim_slices", "psnr", "mse", "mae_hu", "cosine"}
    assert {(r["window"], r["region"]) for r in body} == {(w, r) for w in ("brain", "full")
                                                           for r in ("head", "whole")}
    # c0 of 'good' is the truth itself: PSNR inf, SSIM 1
    psnr_c0 = [r["value"] for r in body if r["case"] == "c0" and r["model"] == "good" and r["metric"] == "psnr"]
    assert psnr_c0 and all(v == "inf" for v in psnr_c0)
    # 'bad': only c2 (another grid, resampled) is evaluated; c0 NaN, c1 unreadable, c3 no overlap
    assert {r["case"] for r in body if r["model"] == "bad"} == {"c2"}
    summary = json.loads((out / "summary.json").read_text())
    reasons = {(f["case"], f["model"]): f["reason"] for f in summary["failures"]}
    assert set(reasons) == {("c0", "bad"), ("c1", "bad"), ("c3", "bad")}
    assert "NaN" in reasons["c0", "bad"] and "overlap" in reasons["c3", "bad"]
    assert "c1.nii.gz" in reasons["c1", "bad"]
    assert "failed" in err
    g = next(x for x in summary["groups"] if x["metric"] == "psnr" and x["window"] == "full"
             and x["region"] == "head")
    assert g["per_model"]["good"]["n_excluded"] == 1 and "excluded" in g["per_model"]["good"]["note"]
    assert {(x["model"], x["baseline"]) for x in g["gains"]} == {
        (m, b) for m in ("good", "bad") for b in ("template", "backprojection")}
    ssim = next(x for x in summary["groups"] if x["metric"] == "ssim" and x["window"] == "full"
                and x["region"] == "head")
    assert ssim["per_model"]["good"]["mean"] > ssim["per_model"]["template"]["mean"]
    assert ssim["per_model"]["good"]["mean"] > ssim["per_model"]["backprojection"]["mean"]
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 4 + 3  # box plots + best/median/worst
    assert "Failed cases" in html and "c3" in html and "Wilcoxon" in html
    assert "http" not in html.replace("http-equiv", "")  # self-contained: nothing fetched


def test_cli_evaluate_bad_input_is_one_line(data, tmp_path, capsys):
    rc = main(["evaluate", "--pred", str(data["good"]), "--gt", str(tmp_path / "missing"),
               "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error:") and "\n" not in err and "missing" in err
    rc = main(["evaluate", "--pred", str(data["good"]), "--gt", str(data["ds"]),
               "--out", str(tmp_path / "o"), "--baseline", "backprojection",
               "--dataset", str(tmp_path)])
    assert rc == 2
    rc = main(["evaluate", "--pred", str(data["good"]), "--gt", str(data["ds"]),
               "--out", str(tmp_path / "o"), "--metric", "nonsense"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "unknown metrics" in err.splitlines()[-1]


def test_cli_evaluate_split_keeps_only_that_split(data, tmp_path):
    out = tmp_path / "split"
    rc = main(["evaluate", "--pred", str(data["good"]), "--gt", str(data["ds"]), "--out", str(out),
               "--split", "test", "--baseline", "template", "--metric", "ssim", "--window", "full"])
    assert rc == 0
    with open(out / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["case"] for r in rows} == {"c2", "c3"}
    assert {r["model"] for r in rows} == {"good", "template"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["failures"] == [] and summary["settings"]["split"] == "test"
    assert main(["evaluate", "--pred", str(data["good"]), "--gt", str(data["ds"]), "--out",
                 str(out), "--split", "nope"]) == 2
