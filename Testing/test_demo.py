"""Tests of the demo's previews and report (issue 14, items 11 and 12): orientation letters
that agree between slices and DRRs, DRR previews large enough to read, the catalog name of the
model, the baselines beside it and a report that says n = 1 for one case."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from XRayToCTLib import report as R
from XRayToCTLib.cli import main
from XRayToCTLib.drr import DRR, biplanar_geometry
from XRayToCTLib.geometry import Volume
from XRayToCTLib.models import catalog

SIZE = 32


def _marked_volume() -> Volume:
    """A 32^3 water cube (LPS, 8 mm voxels) with a dense block at the patient's left
    (high i), anterior (low j) and superior (high k) corner."""
    a = np.full((SIZE, SIZE, SIZE), -1000.0, np.float32)
    a[4:-4, 4:-4, 4:-4] = 0.0
    a[20:28, 4:12, 20:28] = 2000.0  # k superior, j anterior, i patient's left
    return Volume(a, (8.0, 8.0, 8.0), (-124.0, -124.0, -124.0))


def _bright_side(image: np.ndarray) -> tuple[str, str]:
    """Where the brightest half of an image lies: ("top"|"bottom", "left"|"right")."""
    img = np.asarray(image, dtype=np.float64)
    h, w = img.shape
    vert = "top" if img[: h // 2].sum() > img[h - h // 2:].sum() else "bottom"
    horiz = "left" if img[:, : w // 2].sum() > img[:, w - w // 2:].sum() else "right"
    return vert, horiz


def _expected_side(letters: tuple[str, str, str, str], vert: str, horiz: str) -> tuple[str, str]:
    """The image sides where the directions ``vert`` and ``horiz`` lie per ``letters``."""
    top, bottom, left, right = letters
    return ("top" if vert == top else "bottom" if vert == bottom else "?",
            "left" if horiz == left else "right" if horiz == right else "?")


def test_slices_and_drrs_agree_with_their_orientation_letters():
    """The block (left, anterior, superior) is where the letters say, in every slice and both
    DRRs: the sagittal slice and the lateral DRR both show the face on the right, the coronal
    slice and the AP DRR both the patient's left on the right."""
    vol = _marked_volume()
    slices = R.orthogonal_slices(vol, point=(40.0, -60.0, 60.0))  # through the block
    assert _bright_side(slices["axial"]) == _expected_side(R.ORIENTATION["axial"], "A", "L")
    assert _bright_side(slices["coronal"]) == _expected_side(R.ORIENTATION["coronal"], "S", "L")
    assert _bright_side(slices["sagittal"]) == _expected_side(R.ORIENTATION["sagittal"], "S", "A")
    drrs = DRR(biplanar_geometry(vol, pixels=32)).render(vol, device="cpu")
    assert _bright_side(drrs["ap"].array) == _expected_side(R.ORIENTATION["ap"], "S", "L")
    assert _bright_side(drrs["lateral"].array) == _expected_side(R.ORIENTATION["lateral"], "S", "A")
    assert _expected_side(R.ORIENTATION["sagittal"], "S", "A") == ("top", "right")
    assert R.ORIENTATION["sagittal"][2:] == R.ORIENTATION["lateral"][2:] == ("P", "A")
    assert R.ORIENTATION["coronal"][2:] == R.ORIENTATION["ap"][2:] == ("R", "L")


def test_orientation_letters_are_drawn_at_the_edges_and_small_drrs_are_enlarged():
    flat = np.full((64, 64), 100.0, np.float32)
    img = R.radiograph_preview(flat, "lateral", 0.0, 200.0, min_size=256)
    assert img.shape == (256, 256) and img.dtype == np.uint8
    base = R.upscale(R.to_uint8(flat, 0.0, 200.0), 256)
    changed = img != base
    h, w = img.shape
    edges = {"top": changed[: h // 8], "bottom": changed[-h // 8:],
             "left": changed[:, : w // 8], "right": changed[:, -w // 8:]}
    for name, region in edges.items():
        assert region.any(), f"no letter at the {name} edge"
    assert not changed[h // 4: -h // 4, w // 4: -w // 4].any()  # the image itself untouched
    # the letters differ: 'P' on the left, 'A' on the right
    left = img[(h - 28) // 2:(h + 28) // 2, :40] == 255
    right = img[(h - 28) // 2:(h + 28) // 2, -40:] == 255
    assert left.sum() != right.sum()
    assert R.upscale(np.zeros((300, 300), np.uint8), 256).shape == (300, 300)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """``xraytoct demo`` on a 64^3 phantom (CPU)."""
    out = tmp_path_factory.mktemp("demo") / "d"
    rc = main(["demo", "--out", str(out), "--size", "64", "--device", "cpu"])
    assert rc == 0
    return out


def test_demo_previews_are_large_and_labelled(demo):
    for view in ("ap", "lateral"):
        img = np.asarray(Image.open(demo / f"drr_{view}.png"))
        assert min(img.shape) >= 256, img.shape
        assert (img == 255).any()  # the white letters
    trip = np.asarray(Image.open(demo / "ct_brain_window.png"))
    assert trip.shape[0] >= 192
    readme = (demo / "README.txt").read_text()
    assert "orientation letters" in readme and "face" in readme


def test_demo_report_names_the_catalog_model_with_baselines_and_n_1(demo):
    name = str(catalog()[0]["name"])
    summary = json.loads((demo / "report" / "summary.json").read_text())
    assert summary["models"] == [name]
    assert summary["baselines"] == ["outline", "template"]
    with open(demo / "report" / "metrics.csv", newline="") as fh:
        models = {r["model"] for r in csv.DictReader(fh)}
    assert models == {name, "outline", "template"}
    html = (demo / "report" / "report.html").read_text()
    assert f"Models: {name};" in html and "baselines: outline, template" in html
    assert "[–, –]" not in html and "n = 1: no interval" in html
    assert ":func:" not in html and ":mod:" not in html and "``" not in html
    assert "../shared" not in html and "<pre>" not in html.split("<h2>Definitions</h2>")[1]
    assert "Windows: brain (level 40 HU, width 40 HU" in html
    assert html.count("<figcaption>best, median, worst case") == 1  # one case: one figure
    assert html.count("data:image/png;base64,") == 4 + 1  # 2 windows x 2 regions + one case
