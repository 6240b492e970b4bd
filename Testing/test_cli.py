"""The ``xraytoct`` command: subcommands, outputs, exit statuses and one-line errors."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from XRayToCTLib.cli import build_parser, main
from XRayToCTLib.geometry import Volume
from XRayToCTLib.io import read_radiograph, read_volume, write_volume
from XRayToCTLib.phantom import head_phantom

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SUBCOMMANDS = ["convert", "preprocess", "drr", "phantom", "demo"]


def run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def small_ct(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ct") / "head.nii.gz"
    write_volume(head_phantom(48, 5.0, seed=4), path)
    return path


@pytest.mark.parametrize("cmd", SUBCOMMANDS)
def test_every_subcommand_has_help(cmd, capsys):
    code, out, _ = run([cmd, "--help"], capsys)
    assert code == 0
    assert "usage: xraytoct " + cmd in out
    for action in build_parser()._subparsers._group_actions[0].choices[cmd]._actions:
        if action.option_strings and action.dest != "help":
            assert action.help, f"{cmd} {action.option_strings} has no help"


def test_usage_error_is_one_line(capsys):
    code, out, err = run(["drr"], capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: ")
    code, _, err = run(["nosuchcommand"], capsys)
    assert code == 2 and err.startswith("error: ")


def test_drr_writes_both_views_and_geometry(small_ct, tmp_path, capsys):
    out = tmp_path / "drr"
    code, _, err = run(["drr", small_ct, "--out-dir", out, "--pixels", 40, "--device", "cpu"],
                       capsys)
    assert code == 0, err
    stem = Path(small_ct).name.split(".")[0]  # side files are <stem>_<view>_<kind>.nrrd
    assert sorted(f.name for f in out.iterdir()) == sorted(
        [f"{stem}_ap_drr.nrrd", f"{stem}_lateral_drr.nrrd", f"{stem}_drr.json"])
    geometry = json.loads((out / f"{stem}_drr.json").read_text())
    assert set(geometry["views"]) == {"ap", "lateral"}
    for view in ("ap", "lateral"):
        rad = read_radiograph(out / f"{stem}_{view}_drr.nrrd")
        assert rad.array.shape == (40, 40)
        assert rad.geometry is not None and rad.geometry.view == view
        assert rad.geometry.to_dict()["normal"] == geometry["views"][view]["normal"]
        assert rad.array.max() > 0.5  # a head, not air


def test_drr_plastimatch_backend_matches_torch(small_ct, tmp_path, capsys):
    from XRayToCTLib.drr_plastimatch import plastimatch_executable
    if plastimatch_executable() is None:
        pytest.skip("plastimatch is not installed")
    for backend in ("torch", "plastimatch"):
        code, _, err = run(["drr", small_ct, "--out-dir", tmp_path / backend, "--pixels", 40,
                            "--backend", backend, "--device", "cpu"], capsys)
        assert code == 0, err
    stem = Path(small_ct).name.split(".")[0]
    a = read_radiograph(tmp_path / "torch" / f"{stem}_ap_drr.nrrd").array
    b = read_radiograph(tmp_path / "plastimatch" / f"{stem}_ap_drr.nrrd").array
    assert np.abs(a - b).sum() / b.sum() < 0.05


def test_convert_round_trip_and_dicom(small_ct, tmp_path, capsys):
    code, _, err = run(["convert", small_ct, tmp_path / "head.nrrd"], capsys)
    assert code == 0, err
    code, _, err = run(["convert", tmp_path / "head.nrrd", tmp_path / "dicom"], capsys)
    assert code == 0, err
    a, b = read_volume(small_ct), read_volume(tmp_path / "dicom")
    np.testing.assert_allclose(b.index_to_lps(), a.index_to_lps(), atol=1e-3)
    np.testing.assert_allclose(b.array, a.array, atol=1.0)


def test_phantom_command(tmp_path, capsys):
    code, _, err = run(["phantom", "--out", tmp_path / "p.nrrd", "--size", 32, "--spacing", 8,
                        "--seed", 5], capsys)
    assert code == 0, err
    v = read_volume(tmp_path / "p.nrrd")
    assert v.size == (32, 32, 32) and v.spacing == (8.0, 8.0, 8.0)


@pytest.mark.parametrize("case", ["missing", "truncated", "2d_as_ct", "nan", "empty_dir"])
def test_bad_input_gives_one_line_and_status_2(case, small_ct, tmp_path, capsys):
    if case == "missing":
        path = tmp_path / "nope.nii.gz"
    elif case == "truncated":
        path = tmp_path / "cut.nii.gz"
        path.write_bytes(small_ct.read_bytes()[:2000])
    elif case == "2d_as_ct":
        from PIL import Image
        path = tmp_path / "xray.png"
        Image.fromarray(np.zeros((16, 16), np.uint8)).save(path)
    elif case == "nan":
        path = tmp_path / "nan.nrrd"
        a = np.full((8, 8, 8), -1000.0, np.float32)
        a[4, 4, 4] = np.nan
        write_volume(Volume(a), path)
    else:
        path = tmp_path / "empty"
        path.mkdir()
    out = tmp_path / "out"
    code, _, err = run(["drr", path, "--out-dir", out], capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: ") and str(path) in err
    assert "Traceback" not in err
    assert not out.exists() or not any(out.iterdir())


def test_not_hu_is_refused_with_how_to_rescale(tmp_path, capsys):
    folder = SHARED / "head_ct" / "slicer_ctheadaxial"
    if not folder.is_dir():
        pytest.skip(f"real head CT not available ({folder} is absent)")
    code, _, err = run(["drr", folder, "--out-dir", tmp_path], capsys)
    assert code == 2 and "--rescale" in err
    code, _, err = run(["drr", folder, "--out-dir", tmp_path, "--rescale", 1, -1024,
                        "--pixels", 32, "--device", "cpu"], capsys)
    assert code == 0, err


def test_tilted_series_drr(tmp_path, capsys):
    folder = SHARED / "head_ct" / "ge_hispeed_tilt"
    if not folder.is_dir():
        pytest.skip(f"tilted head CT not available ({folder} is absent)")
    code, _, err = run(["drr", folder, "--out-dir", tmp_path, "--pixels", 48, "--device", "cpu"],
                       capsys)
    assert code == 0, err
    lateral = read_radiograph(tmp_path / f"{folder.name}_lateral_drr.nrrd").array
    # a head: about 180 mm of tissue and skull along the ray (0.022/mm water, /10)
    assert 0.3 < lateral.max() < 2.0


def test_demo_end_to_end_small(tmp_path, capsys):
    """README command 1 on a small phantom: DRRs -> bundled model -> sCT on the CT's grid ->
    metrics -> report."""
    code, out, err = run(["demo", "--out", tmp_path / "demo", "--size", 64, "--device", "cpu"],
                         capsys)
    assert code == 0, err
    d = tmp_path / "demo"
    for name in ("ct/phantom_seed0.nii.gz", "sct/phantom_seed0.nii.gz", "sct/phantom_seed0.json",
                 "sct/phantom_seed0_ap_input.nrrd", "sct/phantom_seed0_lateral_reprojection.nrrd",
                 "report/report.html", "report/metrics.csv",
                 "drr_ap.png", "sct_brain_window.png", "README.txt"):
        assert (d / name).is_file(), name
    assert f"report: {(d / 'report' / 'report.html').resolve()}" in out
    ct, sct = read_volume(d / "ct/phantom_seed0.nii.gz"), read_volume(d / "sct/phantom_seed0.nii.gz")
    assert sct.size == ct.size == (64, 64, 64)
    assert np.allclose(sct.origin, ct.origin) and np.allclose(sct.spacing, ct.spacing)
    rows = (d / "report/metrics.csv").read_text().splitlines()
    assert rows[0] == "case,model,metric,window,region,value" and len(rows) > 10


def test_console_script_and_training_script_share_the_parser(small_ct, tmp_path):
    """`python XRayToCTTraining.py` takes exactly the `xraytoct` arguments."""
    script = Path(__file__).resolve().parents[1] / "XRayToCTTraining" / "XRayToCTTraining.py"
    proc = subprocess.run([sys.executable, str(script), "drr", str(small_ct), "--out-dir",
                           str(tmp_path / "t"), "--pixels", "24", "--device", "cpu"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "t" / f"{Path(small_ct).name.split('.')[0]}_ap_drr.nrrd").is_file()
    proc = subprocess.run([sys.executable, str(script), "drr", str(tmp_path / "missing.nii")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
