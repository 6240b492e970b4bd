"""Tests of XRayToCTLib.evaluation and ``xraytoct evaluate``: pairing, resampling, baselines,
failures that do not stop the batch, and the written CSV / JSON / HTML."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk

from XRayToCTLib import baselines as B
from XRayToCTLib import evaluation as E
from XRayToCTLib.cli import main
from XRayToCTLib.drr import DRR, biplanar_geometry
from XRayToCTLib.errors import InputError
from XRayToCTLib.geometry import Grid, RigidTransform, Volume, rotation_matrix
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
    hu = B.backprojection_baseline(views, water)
    assert hu.shape == water.array.shape
    assert np.abs(hu[4:-4, 4:-4, 4:-4]).max() < 20.0  # mean mu along every ray = water
    air = water.with_array(np.full(water.array.shape, -1000.0, np.float32))
    assert np.allclose(B.backprojection_baseline(render_biplanar(air, pixels=48, device="cpu"), air),
                       -1000.0)
    with pytest.raises(InputError):
        B.backprojection_baseline([], water)


def test_template_is_the_mean_of_training_targets(data):
    from XRayToCTLib.io import read_volume
    t = B.template_from_dataset(data["ds"])
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


# ----------------------------------------------------------------------------------------
# the model's field of view, the outline and template baselines
# ----------------------------------------------------------------------------------------
FOV_SHIFT = (20.0, -8.0, 4.0)  # canonical -> CT translation, whole 4 mm voxels


def _fov_head() -> Volume:
    """A 40^3 grid of 4 mm (160 mm) holding a 'head': a textured ball of radius 60 mm in a
    10 mm skull of 800 HU, air outside."""
    grid = Grid.centered((0.0, 0.0, 0.0), 40, 4.0)
    pts = grid.voxel_points().reshape(*grid.shape, 3)
    r = np.linalg.norm(pts, axis=-1)
    hu = np.full(grid.shape, -1000.0, np.float32)
    hu[r < 60.0] = 30.0 + 10.0 * np.sin(pts[r < 60.0, 0] / 6.0)
    hu[(r >= 50.0) & (r < 60.0)] = 800.0
    return grid.with_array(hu)


def _model_grid() -> Grid:
    return Grid.centered((0.0, 0.0, 0.0), (12, 8, 10), 8.0)  # +-48, +-32, +-40 mm


def _expected_field(grid: Grid, tx: RigidTransform, model: Grid) -> np.ndarray:
    """Independently of the code under test: q = R^T (p - c - t) + c for each voxel centre
    p, inside when |q| <= half the model grid's extent on every axis (its centre is 0)."""
    r = rotation_matrix(np.degrees(tx.parameters[:3]))
    c = np.asarray(tx.center)
    q = (grid.voxel_points() - c - np.asarray(tx.parameters[3:])) @ r + c
    half = np.asarray(model.size) * np.asarray(model.spacing) / 2.0
    return np.all(np.abs(q) <= half + 1e-9, axis=1).reshape(grid.shape)


def _write_sct(folder, cid, sct: Volume, tx: RigidTransform | None, model: Grid) -> None:
    """An sCT and, when ``tx`` is given, the JSON `xraytoct reconstruct --ct` writes beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    write_volume(sct, folder / f"{cid}.nii.gz")
    if tx is not None:
        (folder / f"{cid}.json").write_text(json.dumps({
            "space": "patient", "canonical_to_ct": tx.to_dict(),
            "sct_model_space_geometry": model.geometry_dict(), "model": {"name": "cnn_inr"}}))


@pytest.mark.parametrize("angles", [(0.0, 0.0, 0.0), (0.0, 0.0, 90.0), (20.0, -10.0, 35.0)])
def test_field_of_view_mask_maps_the_truths_voxels_into_the_models_grid(angles):
    gt = _fov_head()
    model = _model_grid()
    tx = RigidTransform((*np.radians(angles), *FOV_SHIFT), (3.0, -2.0, 1.0))
    field = E.field_of_view_mask(gt, tx, model)
    assert field.shape == gt.shape and field.dtype == bool
    assert 0 < field.sum() < field.size
    assert np.array_equal(field, _expected_field(gt, tx, model))
    if angles == (0.0, 0.0, 0.0):  # the box [-28, 68] x [-40, 24] x [-36, 44] mm
        i, j, k = (np.arange(40) * 4.0 - 78.0,) * 3
        box = ((np.abs(k - 4.0) <= 40)[:, None, None] & (np.abs(j + 8.0) <= 32)[None, :, None]
               & (np.abs(i - 20.0) <= 48)[None, None, :])
        assert np.array_equal(field, box)


def test_read_sidecar(tmp_path):
    gt = _fov_head()
    tx = RigidTransform.translation_by(FOV_SHIFT)
    _write_sct(tmp_path, "c", gt, tx, _model_grid())
    side = E.read_sidecar(tmp_path / "c.nii.gz")
    assert side.space == "patient" and side.model_grid.same_as(_model_grid())
    assert np.allclose(side.canonical_to_ct.matrix(), tx.matrix())
    assert E.read_sidecar(tmp_path / "missing.nii.gz") is None
    (tmp_path / "c.json").write_text(json.dumps({"space": "canonical",
                                                 "sct_model_space_geometry": _model_grid().to_dict()}))
    side = E.read_sidecar(tmp_path / "c.nii.gz")  # an sCT in the model's frame: identity
    assert np.allclose(side.field_transform.matrix(), np.eye(4))
    (tmp_path / "c.json").write_text('{"canonical_to_ct": {"parameters": [1, 2]}}')
    with pytest.raises(InputError, match="JSON"):
        E.read_sidecar(tmp_path / "c.nii.gz")
    (tmp_path / "c.json").write_text('{"space": "patient"}')
    assert E.prediction_field(E.read_sidecar(tmp_path / "c.nii.gz"), gt) is None


def test_outline_baseline_is_a_constant_inside_the_predictions_own_outline():
    pred = np.full((24, 24, 24), -1000.0, np.float32)
    kk, jj, ii = np.mgrid[:24, :24, :24]
    ball = (kk - 11) ** 2 + (jj - 11) ** 2 + (ii - 11) ** 2 < 64
    pred[ball] = 40.0
    pred[(kk - 11) ** 2 + (jj - 11) ** 2 + (ii - 11) ** 2 < 4] = -1000.0  # an enclosed air pocket
    pred[1:3, 20:22, 20:22] = 500.0  # a small separate piece: not the head
    out = B.outline_baseline(pred, 26.0)
    assert out.dtype == np.float32 and out.shape == pred.shape
    assert np.all(out[ball] == 26.0)  # the pocket is filled: inside the outline
    assert np.all(out[~ball] == -1000.0)  # the separate piece and the air
    assert np.all(B.outline_baseline(np.full((8, 8, 8), -1000.0), 26.0) == -1000.0)


def test_outline_constant_from_a_dataset_is_the_median_inside_the_head(data):
    from XRayToCTLib.hu import head_mask
    from XRayToCTLib.io import read_volume
    vals = []
    for cid in ("c0", "c1"):  # the training split
        a = read_volume(data["ds"] / "cases" / cid / "ct.nii.gz").array
        vals.append(np.clip(np.rint(a[head_mask(a)]), -1000, 1000))
    assert B.outline_hu_from_dataset(data["ds"]) == pytest.approx(np.median(np.concatenate(vals)), abs=1.0)


def test_cormack_units_to_hu_known_values_monotone_and_round_trip():
    from XRayToCTLib.registration import cormack_to_hu, hu_to_cormack
    # Rorden's h2c: HU -1000 -> 0, -100 -> 900, [-100, 100] stretched tenfold, then slope 1
    assert np.allclose(cormack_to_hu(np.array([0, 900, 1900, 2900, 3900])),
                       [-1000, -100, 0, 100, 1100])
    assert np.allclose(hu_to_cormack(np.array([-1024, -1000, -100, 0, 40, 100, 1000])),
                       [0, 0, 900, 1900, 2300, 2900, 3800])
    c = np.linspace(0.0, 12000.0, 2401)
    h = cormack_to_hu(c)
    assert np.all(np.diff(h) > 0)
    assert np.allclose(hu_to_cormack(h), c, atol=1e-2)


def test_the_shipped_template_in_hu_and_in_the_models_frame():
    from XRayToCTLib.hu import head_center
    from XRayToCTLib.registration import SHIPPED_TEMPLATE
    if not SHIPPED_TEMPLATE.is_file():
        pytest.skip(f"the shipped template is not installed ({SHIPPED_TEMPLATE.name})")
    t = B.shipped_template_hu()
    assert t.array.min() == pytest.approx(-1000.0) and 500.0 < t.array.max() < 1500.0
    assert np.linalg.norm(head_center(t)) < 3.0  # head centre at the model frame's origin
    soft = np.median(t.array[(t.array > -100) & (t.array < 100)])
    assert 0.0 < soft < 80.0  # soft tissue where HU says it is


def test_template_baseline_goes_through_the_predictions_transform():
    gt = _fov_head()
    tmpl = gt.translated(-np.asarray(FOV_SHIFT))  # the same head, in the model's frame
    tx = RigidTransform.translation_by(FOV_SHIFT)
    assert np.allclose(B.template_baseline(tmpl, gt, tx), gt.array, atol=1e-3)
    assert not np.allclose(B.template_baseline(tmpl, gt), gt.array, atol=1.0)  # without it: off


def test_evaluate_scores_only_inside_the_field_and_says_how_much_is_outside(tmp_path):
    from XRayToCTLib.hu import head_mask
    gt = _fov_head()
    model = _model_grid()
    tx = RigidTransform.translation_by(FOV_SHIFT)
    field = _expected_field(gt, tx, model)
    (tmp_path / "gt").mkdir()
    write_volume(gt, tmp_path / "gt" / "h1.nii.gz")
    sct = gt.with_array(np.where(field, gt.array, -1000.0).astype(np.float32))  # air outside
    _write_sct(tmp_path / "with_json", "h1", sct, tx, model)
    _write_sct(tmp_path / "no_json", "h1", sct, None, model)
    write_volume(gt.translated(-np.asarray(FOV_SHIFT)), tmp_path / "tmpl.nii.gz")
    out = tmp_path / "report"
    rc = main(["evaluate", "--pred", str(tmp_path / "with_json"), "--pred", str(tmp_path / "no_json"),
               "--name", "cnn_inr+refine", "--name", "plain", "--gt", str(tmp_path / "gt"),
               "--out", str(out), "--baseline", "outline", "--baseline", "template",
               "--template", str(tmp_path / "tmpl.nii.gz"), "--metric", "mae_hu",
               "--metric", "ssim", "--window", "full"])
    assert rc == 0
    with open(out / "metrics.csv", newline="") as fh:
        rows = {(r["model"], r["metric"], r["region"]): float(r["value"]) for r in csv.DictReader(fh)}
    assert {m for m, _, _ in rows} == {"cnn_inr+refine", "plain", "outline", "template"}
    for region in ("head", "whole"):
        assert rows["cnn_inr+refine", "mae_hu", region] == pytest.approx(0.0, abs=1e-3)
        assert rows["template", "mae_hu", region] == pytest.approx(0.0, abs=1e-3)
        assert rows["plain", "mae_hu", region] > 50.0  # no JSON: the air outside the field counts
    assert rows["cnn_inr+refine", "ssim", "head"] > rows["plain", "ssim", "head"]
    # the outline baseline: 26 HU inside the sCT's outline, scored inside the field only
    head = head_mask(gt.array)
    outline = np.where(head_mask(sct.array), 26.0, -1000.0)
    expected = np.abs(outline - gt.array)[head & field].mean()
    assert rows["outline", "mae_hu", "head"] == pytest.approx(expected, rel=1e-4)
    summary = json.loads((out / "summary.json").read_text())
    fov = {f["model"]: f for f in summary["field_of_view"]}
    share = 1.0 - (head & field).sum() / head.sum()
    assert 0.2 < share < 0.9
    for name in ("cnn_inr+refine", "outline", "template"):
        assert fov[name]["head_outside_fraction"] == pytest.approx(share)
        assert fov[name]["volume_outside_fraction"] == pytest.approx(1.0 - field.mean())
    assert fov["outline"]["field"] == "the field of cnn_inr+refine"
    assert fov["plain"]["head_outside_fraction"] is None and "no JSON" in fov["plain"]["field"]
    assert summary["settings"]["outline_hu"] == 26.0
    assert summary["failures"] == []
    html = (out / "report.html").read_text()
    assert "Field of view" in html and f"{100 * share:.1f} %" in html
    assert "cnn_inr+refine" in html and "no JSON" in html
    assert "Field of view</h3>" in html and "canonical_to_ct" in html  # the definitions
    assert html.count("data:image/png;base64,") == 2 + 1  # box plots + one case figure


def test_a_head_wholly_outside_the_field_fails_that_case(tmp_path):
    gt = _fov_head()
    tx = RigidTransform.translation_by((500.0, 0.0, 0.0))  # the field is beside the grid
    (tmp_path / "gt").mkdir()
    write_volume(gt, tmp_path / "gt" / "h1.nii.gz")
    _write_sct(tmp_path / "p", "h1", gt, tx, _model_grid())
    result = E.evaluate([tmp_path / "p"], tmp_path / "gt", metrics=("mae_hu",), windows=("full",))
    assert result.rows == [] and "field of view" in result.failures[0]["reason"]


def test_evaluate_with_no_pair_is_refused_and_writes_nothing(tmp_path, capsys):
    """No prediction shares a case id with the ground truth: exit 2, one line saying how files
    are paired, no report."""
    from XRayToCTLib.geometry import canonical_grid
    from XRayToCTLib.io import write_volume
    vol = canonical_grid(16).with_array(np.zeros((16, 16, 16), np.float32))
    (tmp_path / "pred").mkdir()
    (tmp_path / "gt").mkdir()
    write_volume(vol, tmp_path / "pred" / "case01.nii.gz")
    write_volume(vol, tmp_path / "gt" / "case02.nii.gz")
    rc = main(["evaluate", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"),
               "--out", str(tmp_path / "rep")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error:") and "\n" not in err, err
    assert "paired by case id" in err
    assert not (tmp_path / "rep").exists()
