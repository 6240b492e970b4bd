"""``xraytoct compare`` and its library: the metrics and difference of the module's Compare
(XRayToCTLib.compare), and compare.png rendered by Slicer's own slice logic
(XRayToCTLib.compare_view, on the slicer-core wheel): every pane shows its volume, cut
through the linked position, with the orientation Slicer shows."""
from __future__ import annotations

import csv
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from XRayToCTLib import compare, compare_view
from XRayToCTLib.cli import main
from XRayToCTLib.compare import Comparison, compare_volumes, write_comparison
from XRayToCTLib.errors import InputError
from XRayToCTLib.geometry import Volume, rotation_matrix
from XRayToCTLib.io import read_volume, write_volume
from XRayToCTLib.metrics import evaluate_pair
from XRayToCTLib.phantom import head_phantom

needs_mrml = pytest.mark.skipif(compare_view.unavailable() is not None,
                                reason="Slicer's MRML (the slicer-core package) is not installed")


@pytest.fixture(scope="module")
def phantom() -> Volume:
    return head_phantom(size=32, spacing=8.0, seed=0)


def _mae(a: np.ndarray, b: np.ndarray, lo: float, hi: float) -> float:
    return float(np.mean(np.abs(np.clip(a, lo, hi) - np.clip(b, lo, hi))))


# ---------------------------------------------------------------------------------------
# numbers
# ---------------------------------------------------------------------------------------


def test_compare_with_an_uncertainty_map_adds_the_spread_rows(phantom, tmp_path, capsys):
    """An sCT whose error grows with its spread: the compare table gains the mean spread in
    the head and a rank correlation near 1; the command finds the map beside the sCT."""
    from XRayToCTLib.hu import head_mask
    rng = np.random.default_rng(0)
    spread = phantom.with_array(rng.uniform(5.0, 200.0, phantom.array.shape).astype(np.float32))
    sct = phantom.with_array(phantom.array + spread.array)  # error = spread, voxel for voxel
    result = compare_volumes(sct, phantom, uncertainty=spread)
    assert len(result.rows) == 18
    head = np.asarray(head_mask(phantom), dtype=bool)
    assert result.value("spread_hu", "full") == pytest.approx(float(spread.array[head].mean()), rel=1e-5)
    assert result.value("spread_error_spearman", "full") > 0.99
    assert len(compare_volumes(sct, phantom).rows) == 16  # no map, no spread rows
    write_volume(sct, tmp_path / "sct.nii.gz")
    write_volume(spread, tmp_path / "sct_uncertainty.nii.gz")
    write_volume(phantom, tmp_path / "ct.nii.gz")
    assert main(["compare", str(tmp_path / "sct.nii.gz"), str(tmp_path / "ct.nii.gz"),
                 "--out", str(tmp_path / "out"), "--no-picture"]) == 0
    rows = json.loads((tmp_path / "out" / "metrics.json").read_text())["rows"]
    assert {r["metric"] for r in rows} >= {"spread_hu", "spread_error_spearman"}
    assert not (tmp_path / "out" / "compare.png").exists()

def test_compare_volumes_offset(phantom):
    sct = phantom.with_array(phantom.array + 20.0)
    result = compare_volumes(sct, phantom)
    assert isinstance(result, Comparison)
    # the rows the module's Compare computes: the same call, the same order
    expected = evaluate_pair(sct, phantom, windows=("brain", "full"), regions=("head", "whole"),
                             metrics=("ssim", "psnr", "cosine", "mae_hu"))
    assert result.rows == expected
    assert len(result.rows) == 16 and set(result.rows[0]) == {"metric", "window", "region", "value"}
    # +20 HU everywhere: the difference is 20 HU; the MAE is 20 HU where nothing is clipped
    np.testing.assert_allclose(result.difference.array, 20.0, atol=1e-4)
    assert result.difference.array.shape == sct.array.shape
    assert result.difference.metadata["kind"] == compare.KIND_DIFFERENCE
    whole = _mae(sct.array, phantom.array, -1000.0, 1000.0)
    assert result.value("mae_hu", "full", "whole") == pytest.approx(whole, rel=1e-4)
    assert 15.0 < whole < 20.0  # bone above 1000 HU is clipped, the rest moved by 20
    assert result.value("ssim", "full", "head") > 0.99
    assert "MAE" in result.summary()


def test_difference_on_the_sct_grid_and_metrics_on_the_ct_grid():
    ramp = np.add.outer(np.arange(12.0), np.zeros((12, 12))).astype(np.float32) * 10.0  # 10 HU per k
    gt = Volume(ramp, 2.0, (0.0, 0.0, 0.0))
    sct = Volume(ramp[:8, :8, :8] + 25.0, 2.0, (4.0, 4.0, 2.0))  # shifted 1 slice: +10 HU more
    result = compare_volumes(sct, gt)
    assert result.difference.array.shape == sct.array.shape
    np.testing.assert_allclose(result.difference.origin, sct.origin)
    np.testing.assert_allclose(result.difference.array, 25.0 - 10.0, atol=1e-3)
    assert compare.on_grid_of(sct, gt).array.shape == gt.array.shape


def test_no_overlap_is_refused(phantom):
    far = phantom.translated((1000.0, 0.0, 0.0))
    with pytest.raises(InputError, match="do not overlap"):
        compare_volumes(far, phantom)


def test_mrml_keeps_the_names():
    mrml = pytest.importorskip("XRayToCTLib.mrml") if compare_view.unavailable() is None else None
    if mrml is None:
        pytest.skip("Slicer's MRML (the slicer-core package) is not installed")
    assert mrml.on_grid_of is compare.on_grid_of
    assert mrml.difference_volume is compare.difference_volume
    assert mrml.KIND_DIFFERENCE == compare.KIND_DIFFERENCE


def test_write_comparison_without_picture(phantom, tmp_path):
    sct = phantom.with_array(phantom.array - 30.0)
    result = compare_volumes(sct, phantom)
    paths = write_comparison(result, tmp_path / "out", sct_path="a/sct.nii.gz",
                             ground_truth_path="b/ct.nii.gz", picture=False)
    assert set(paths) == {"csv", "json", "difference"}
    with open(paths["csv"]) as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["metric", "window", "region", "value"]
    assert [float(r["value"]) for r in rows] == pytest.approx([r["value"] for r in result.rows])
    data = json.loads(paths["json"].read_text())
    assert data["label"].startswith("SYNTHETIC CT")
    assert data["sct"].endswith("a/sct.nii.gz") and data["ground_truth"].endswith("b/ct.nii.gz")
    assert data["rows"] == json.loads(json.dumps(result.rows))
    diff = read_volume(paths["difference"], require_hu=False)
    np.testing.assert_allclose(diff.array, -30.0, atol=1e-3)
    np.testing.assert_allclose(diff.origin, sct.origin, atol=1e-6)
    assert not list((tmp_path / "out").glob(".*.tmp"))  # atomic writes leave nothing behind


def test_unavailable_names_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "slicer", types.ModuleType("slicer"))  # a "slicer" without MRML
    assert "slicer-core" in compare_view.unavailable()


# ---------------------------------------------------------------------------------------
# the command
# ---------------------------------------------------------------------------------------

@pytest.fixture
def files(phantom, tmp_path):
    ct, sct = tmp_path / "ct.nii.gz", tmp_path / "sct.nii.gz"
    write_volume(phantom, ct)
    write_volume(phantom.with_array(phantom.array + 20.0), sct)
    return sct, ct


@needs_mrml
def test_cli_writes_the_four_files(files, tmp_path, capsys):
    sct, ct = files
    out = tmp_path / "cmp"
    assert main(["compare", str(sct), str(ct), "--out", str(out), "--pane-size", "64"]) == 0
    text = capsys.readouterr()
    for name in ("metrics.csv", "metrics.json", "difference.nrrd", "compare.png"):
        assert (out / name).is_file(), name
        assert name in text.out
    assert "SYNTHETIC CT" in text.out and "compare: 100%" in text.err
    np.testing.assert_allclose(read_volume(out / "difference.nrrd", require_hu=False).array, 20.0, atol=1e-3)
    image = Image.open(out / "compare.png")
    assert image.mode == "RGB" and image.width > 3 * 64


def test_cli_without_mrml_writes_the_rest(files, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(compare_view, "unavailable", lambda: "the picture needs slicer-core")
    sct, ct = files
    out = tmp_path / "cmp"
    assert main(["compare", str(sct), str(ct), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["difference.nrrd", "metrics.csv", "metrics.json"]
    assert [line for line in err.splitlines() if "slicer-core" in line] == \
        ["note: the picture needs slicer-core; wrote the metrics and the difference without it"]


@pytest.mark.parametrize("extra", [[], ["--opacity", "2"], ["--range-hu", "0"], ["--position", "900", "0", "0"]],
                         ids=["missing-file", "opacity", "range", "position"])
def test_cli_bad_input_is_one_line(files, tmp_path, capsys, extra):
    sct, ct = files
    if not extra:
        sct = tmp_path / "absent.nii.gz"
    elif extra[0] == "--position" and compare_view.unavailable() is not None:
        pytest.skip("the position is checked for the picture, which needs slicer-core")
    assert main(["compare", str(sct), str(ct), "--out", str(tmp_path / "o"), *extra]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1
    if not extra:
        assert "absent.nii.gz" in err[0] and not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------------------
# the picture: pixels
# ---------------------------------------------------------------------------------------

GREY = {0.0: 128, -500.0: 64}  # full window [-1000, 1000] HU -> 0..255
MARK = np.array([42.5, 32.5, 22.5])  # RAS: the patient's right, anterior, superior of the centre


def _marked(value: float, *, size: int = 40, spacing: float = 5.0, angles=(0.0, 0.0, 0.0),
            radius: float = 7.5) -> Volume:
    """A volume of constant ``value`` HU centred on the origin, with a ball of 1000 HU at
    :data:`MARK` (and none at its mirror image)."""
    direction = rotation_matrix(angles)
    half = (size - 1) / 2.0 * spacing
    origin = -direction @ np.full(3, half)
    volume = Volume(np.full((size,) * 3, value, np.float32), spacing, origin, direction)
    lps = volume.voxel_points()
    mark_lps = MARK * np.array([-1.0, -1.0, 1.0])
    inside = np.linalg.norm(lps - mark_lps, axis=1) <= radius
    volume.array.reshape(-1)[inside] = 1000.0
    return volume


def _expected_pixel(orientation: str, picture, size: int) -> tuple[float, float]:
    """(row, col) of MARK in a pane, by Slicer's slice orientations: axial and coronal with the
    patient's right on the left, sagittal with anterior on the left; superior / anterior up."""
    d = (MARK - picture.center_ras) / picture.mm_per_pixel
    half = size / 2.0
    if orientation == "Axial":
        return half - d[1], half - d[0]
    if orientation == "Sagittal":
        return half - d[2], half - d[1]
    return half - d[2], half - d[0]


def _render(tmp_path, sct, gt, **kw):
    result = compare_volumes(sct, gt)
    kw.setdefault("pane_px", 96)
    picture = compare_view.write_compare_png(tmp_path / "compare.png", sct, gt, result.difference,
                                             position_ras=MARK, **kw)
    image = np.asarray(Image.open(picture.path).convert("RGB"))
    return picture, image


def _pane(image, picture, key):
    x0, y0, x1, y1 = picture.panes[key]
    return image[y0:y1, x0:x1].astype(int)


def _white(pane: np.ndarray, edge: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of the white pixels (the 1000 HU ball) away from the edges (where the
    orientation letters are)."""
    rows, cols = np.nonzero(pane[edge:-edge, edge:-edge].min(axis=-1) > 200)
    return rows + edge, cols + edge


def _check_marker(pane: np.ndarray, orientation: str, picture, key) -> None:
    rows, cols = _white(pane)
    assert rows.size > 4, f"{key}: the marker is not in the view (the cut misses the position)"
    row, col = _expected_pixel(orientation, picture, pane.shape[0])
    assert abs(rows.mean() - row) < 2.0 and abs(cols.mean() - col) < 2.0, \
        (key, (rows.mean(), cols.mean()), (row, col))


@needs_mrml
def test_every_pane_shows_its_volume_at_the_linked_position(tmp_path):
    sct, gt = _marked(0.0), _marked(-500.0)
    picture, image = _render(tmp_path, sct, gt, overlay="none")
    assert picture.overlay_rows == ()
    assert set(picture.panes) == {(r, o) for r in ("sct", "gt") for o in compare_view.ORIENTATIONS}
    np.testing.assert_allclose(picture.center_ras, 0.0, atol=1e-6)
    for (row, orientation), _box in picture.panes.items():
        pane = _pane(image, picture, (row, orientation))
        # the volume's grey: sCT on top, ground truth below (the middle of the pane, no letters)
        centre = pane[24:72, 24:72].reshape(-1, 3)
        grey = np.median(centre, axis=0)
        assert np.all(np.abs(grey - GREY[0.0 if row == "sct" else -500.0]) <= 2), (row, orientation, grey)
        _check_marker(pane, orientation, picture, (row, orientation))
    # left-right: the marker on the patient's right is on the image's left in axial and coronal
    for orientation in ("Axial", "Coronal"):
        cols = _white(_pane(image, picture, ("sct", orientation)))[1]
        assert cols.mean() < 96 / 2
    # anterior: up in axial, on the left in Slicer's sagittal view
    rows = _white(_pane(image, picture, ("gt", "Axial")))[0]
    assert rows.mean() < 96 / 2
    cols = _white(_pane(image, picture, ("gt", "Sagittal")))[1]
    assert cols.mean() < 96 / 2


@needs_mrml
def test_letters_follow_slicers_views():
    sct = _marked(0.0, size=16, spacing=10.0)
    rendered = compare_view.render_panes(sct, sct, None, position_ras=(0, 0, 0), pane_px=32)
    assert rendered["letters"][("sct", "Axial")] == ("A", "P", "R", "L")
    assert rendered["letters"][("gt", "Sagittal")] == ("S", "I", "A", "P")
    assert rendered["letters"][("gt", "Coronal")] == ("S", "I", "R", "L")


@needs_mrml
@pytest.mark.parametrize("overlay", ["sct", "both"])
@pytest.mark.parametrize("blend", ["add", "alpha"])
def test_difference_overlay_rows(tmp_path, overlay, blend):
    """sCT 0 HU over a ground truth of -500 HU: +500 HU, the top of the range, is pure red in
    both colour maps. Slicer's compositing puts it over the grey of the view's own volume:
    added at the opacity (``add``), or blended with it (``alpha``, the module's view)."""
    sct, gt = _marked(0.0), _marked(-500.0)
    picture, image = _render(tmp_path, sct, gt, overlay=overlay, opacity=0.5, range_hu=500.0, blend=blend)
    assert picture.overlay_rows == compare_view.OVERLAY_ROWS[overlay]
    for row in ("sct", "gt"):
        grey = GREY[0.0 if row == "sct" else -500.0]
        pane = _pane(image, picture, (row, "Coronal"))
        rgb = np.median(pane[24:72, 24:72].reshape(-1, 3), axis=0)
        if row not in picture.overlay_rows:
            np.testing.assert_allclose(rgb, [grey] * 3, atol=2)
        elif blend == "add":  # the grey plus half of pure red
            np.testing.assert_allclose(rgb, [min(grey + 127.5, 255), grey, grey], atol=3)
        else:  # half the grey and half pure red
            np.testing.assert_allclose(rgb, [grey / 2 + 127.5, grey / 2, grey / 2], atol=3)


@needs_mrml
def test_equal_voxels_keep_their_grey_when_added(tmp_path):
    """``add``: where the sCT equals the ground truth nothing is added (the module's ``alpha``
    view washes them towards white)."""
    sct = _marked(0.0)
    for blend, expected in (("add", GREY[0.0]), ("alpha", (GREY[0.0] + 255) / 2)):
        picture, image = _render(tmp_path, sct, sct, overlay="both", opacity=0.5, blend=blend)
        rgb = np.median(_pane(image, picture, ("gt", "Axial"))[24:72, 24:72].reshape(-1, 3), axis=0)
        np.testing.assert_allclose(rgb, [expected] * 3, atol=2)


@needs_mrml
def test_oblique_volumes(tmp_path):
    """A ground truth on a rotated grid and an sCT on another: the metrics resample, the
    difference lies on the sCT's grid, every pane still cuts through the position."""
    sct = _marked(0.0, size=40, spacing=5.0)
    gt = _marked(0.0, size=36, spacing=6.0, angles=(12.0, -20.0, 25.0), radius=9.0)
    result = compare_volumes(sct, gt)
    assert result.difference.array.shape == sct.array.shape
    # both 0 HU where both are, each with its ball at MARK: no difference away from the ball
    lps = sct.voxel_points()
    away = (np.linalg.norm(lps, axis=1) < 90.0) & (np.linalg.norm(lps - MARK * [-1, -1, 1], axis=1) > 25.0)
    assert np.abs(result.difference.array.reshape(-1)[away]).max() < 1.0
    assert result.value("ssim", "full", "head") > 0.5
    picture, image = _render(tmp_path, sct, gt, overlay="none")
    for key in picture.panes:
        _check_marker(_pane(image, picture, key), key[1], picture, key)


REAL_HEAD = Path(__file__).resolve().parents[2] / "shared" / "data" / "head_ct" / "slicer_ctheadaxial"


@needs_mrml
def test_the_picture_of_a_real_head(tmp_path, capsys):
    """``xraytoct compare`` on a real head CT read from ../shared/data (pictures of the project's
    real heads are made from there, never committed): an sCT 40 HU above the CT. Every pane
    shows the head (bright skull and dark air), the top row carries the +40 HU overlay in red,
    the bottom row is the CT's own grey."""
    if not REAL_HEAD.is_dir():
        pytest.skip(f"real head CT not available ({REAL_HEAD} is absent: a fresh clone has no ../shared/data)")
    ct = read_volume(REAL_HEAD, rescale=(1.0, -1024.0))
    write_volume(ct, tmp_path / "ct.nii.gz")
    write_volume(ct.with_array(ct.array + 40.0), tmp_path / "sct.nii.gz")
    assert main(["compare", str(tmp_path / "sct.nii.gz"), str(tmp_path / "ct.nii.gz"), "--out",
                 str(tmp_path / "out"), "--pane-size", "128"]) == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    mae = {(r["metric"], r["window"], r["region"]): r["value"] for r in metrics["rows"]}
    assert mae[("mae_hu", "full", "head")] == pytest.approx(40.0, abs=4.0)  # bone above 1000 HU is clipped
    image = np.asarray(Image.open(tmp_path / "out" / "compare.png").convert("RGB")).astype(int)
    assert image.shape[0] > 256 and image.shape[1] > 3 * 128
    top, bottom = image[: image.shape[0] // 2], image[image.shape[0] // 2:]
    for half, red in ((top, True), (bottom, False)):
        reddish = (half[..., 0] - half[..., 2] > 60).mean()
        assert (reddish > 0.02) == red, reddish
        grey = half[(np.abs(half[..., 0] - half[..., 2]) < 8)]
        assert (grey.mean(axis=1) > 200).mean() > 0.005 and (grey.mean(axis=1) < 10).mean() > 0.2  # skull, air
