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


# ----------------------------------------------------------------------------------------
# issue 14: output folders, colour images, swapped views, missing inputs before torch
# ----------------------------------------------------------------------------------------
def one_line_error(code: int, err: str, needle) -> None:
    """Exit 2 and one error line naming ``needle``, last (after any progress lines)."""
    assert code == 2, err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and err.endswith(errors[0] + "\n") and str(needle) in errors[0], err
    assert "Traceback" not in err


def test_every_writing_command_creates_its_output_folder(small_ct, tmp_path, capsys):
    phantom = tmp_path / "new" / "a" / "p.nii.gz"
    code, _, err = run(["phantom", "--out", phantom, "--size", 24, "--spacing", 10], capsys)
    assert code == 0 and phantom.is_file(), err
    code, _, err = run(["convert", small_ct, tmp_path / "conv" / "b" / "head.nrrd"], capsys)
    assert code == 0 and (tmp_path / "conv" / "b" / "head.nrrd").is_file(), err
    code, _, err = run(["convert", small_ct, tmp_path / "conv" / "c" / "dicom"], capsys)
    assert code == 0 and any((tmp_path / "conv" / "c" / "dicom").iterdir()), err
    pre = tmp_path / "pre" / "d" / "t.nii.gz"
    code, _, err = run(["preprocess", small_ct, "--out", pre, "--no-register", "--size", 32,
                        "--target-size", 16], capsys)
    assert code == 0 and pre.is_file(), err
    code, _, err = run(["drr", small_ct, "--out-dir", tmp_path / "drr" / "e" / "f", "--pixels",
                        16, "--device", "cpu"], capsys)
    assert code == 0 and len(list((tmp_path / "drr" / "e" / "f").glob("*.nrrd"))) == 2, err
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    gt.mkdir(), pred.mkdir()
    write_volume(head_phantom(24, 10.0, seed=1, pose=False), gt / "c1.nii.gz")
    write_volume(head_phantom(24, 10.0, seed=2, pose=False), pred / "c1.nii.gz")
    code, _, err = run(["evaluate", "--pred", pred, "--gt", gt, "--out",
                        tmp_path / "ev" / "g" / "report", "--metric", "mae_hu"], capsys)
    assert code == 0 and (tmp_path / "ev" / "g" / "report" / "metrics.csv").is_file(), err


def test_an_output_under_a_file_is_refused_in_one_line(small_ct, tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("a file, not a folder")
    cases = [["phantom", "--out", blocker / "p.nii.gz", "--size", 24],
             ["convert", small_ct, blocker / "sub" / "h.nrrd"],
             ["preprocess", small_ct, "--no-register", "--out", blocker / "t.nii.gz"],
             ["drr", small_ct, "--out-dir", blocker / "d"],
             ["evaluate", "--pred", tmp_path, "--gt", tmp_path, "--out", blocker / "r"],
             ["demo", "--out", blocker / "demo"],
             ["export", tmp_path, "--out", blocker / "m.safetensors"]]
    for argv in cases:
        code, _, err = run(argv, capsys)
        one_line_error(code, err, blocker)
        assert "is a file, not a folder" in err, err
    assert blocker.read_text() == "a file, not a folder"


def test_colour_image_is_refused_and_grey_stored_as_rgb_is_accepted(tmp_path, capsys):
    from PIL import Image
    rng = np.random.default_rng(0)
    photo = tmp_path / "photo.png"
    Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8), "RGB").save(photo)
    rgba = tmp_path / "photo_rgba.png"
    Image.fromarray(rng.integers(0, 255, (40, 50, 4), dtype=np.uint8), "RGBA").save(rgba)
    grey = rng.integers(0, 255, (40, 50), dtype=np.uint8)
    grey_rgb = tmp_path / "grey_rgb.png"
    Image.fromarray(np.dstack([grey] * 3), "RGB").save(grey_rgb)
    for colour in (photo, rgba):
        code, _, err = run(["reconstruct", "--ap", colour, "--lateral", grey_rgb, "--model",
                            "any_model", "--out", tmp_path / "sct.nii.gz"], capsys)
        one_line_error(code, err, colour)
        assert "colour" in err
        code, _, err = run(["convert", "--radiograph", colour, tmp_path / "c.nrrd"], capsys)
        one_line_error(code, err, colour)
    code, _, err = run(["convert", "--radiograph", grey_rgb, tmp_path / "g.nrrd"], capsys)
    assert code == 0, err
    np.testing.assert_allclose(read_radiograph(tmp_path / "g.nrrd").array, grey, atol=1e-3)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from test_inference import TEST_META, small_model
    from XRayToCTLib.models import package
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    package.save_package(small_model(), path, metadata=TEST_META)
    return path


def test_swapped_views_refused_by_header_and_warned_by_symmetry(small_ct, tiny_model, tmp_path,
                                                                capsys):
    from PIL import Image
    from XRayToCTLib.drr import DRR
    from XRayToCTLib.inference import Reconstructor
    code, _, err = run(["drr", small_ct, "--out-dir", tmp_path / "drr", "--pixels", 32,
                        "--device", "cpu"], capsys)
    assert code == 0, err
    files = {read_radiograph(f).geometry.view: f for f in (tmp_path / "drr").glob("*.nrrd")}
    out = tmp_path / "sct.nii.gz"
    code, _, err = run(["reconstruct", "--ap", files["lateral"], "--lateral", files["ap"],
                        "--model", tiny_model, "--out", out, "--device", "cpu"], capsys)
    one_line_error(code, err, files["lateral"])
    assert "says it is lateral" in err and not out.exists()
    # no header (PNG): the image checks warn, they do not refuse
    spec = Reconstructor(tiny_model, device="cpu").spec
    images = DRR({v: spec.projection(v) for v in ("ap", "lateral")}).render(
        head_phantom(64, 4.0, seed=7))
    png = {}
    for view, rad in images.items():
        png[view] = tmp_path / f"{view}.png"
        Image.fromarray(np.round(255 * rad.array / rad.array.max()).astype(np.uint8)).save(png[view])
    code, _, err = run(["reconstruct", "--ap", png["lateral"], "--lateral", png["ap"], "--model",
                        tiny_model, "--out", out, "--device", "cpu"], capsys)
    assert code == 0 and "warning: " in err and "swapped" in err, err
    code, _, err = run(["reconstruct", "--ap", png["ap"], "--lateral", png["lateral"], "--model",
                        tiny_model, "--out", tmp_path / "ok.nii.gz", "--device", "cpu"], capsys)
    assert code == 0 and "swapped" not in err, err


@pytest.mark.parametrize("argv, missing", [
    (["drr", "{d}/missing.nii.gz", "--out-dir", "{d}/o"], "missing.nii.gz"),
    (["evaluate", "--pred", "{d}/nopred", "--gt", "{d}", "--out", "{d}/r"], "nopred"),
    (["reconstruct", "--ap", "{d}/a.png", "--lateral", "{d}/b.png", "--model", "x", "--out",
      "{d}/o.nii.gz"], "a.png"),
    (["reconstruct", "--ct", "{d}/ct.nii.gz", "--model", "{d}/m.safetensors", "--out",
      "{d}/o.nii.gz"], "m.safetensors"),
    (["export", "{d}/norun", "--out", "{d}/m.safetensors"], "norun"),
])
def test_missing_inputs_are_one_line(argv, missing, tmp_path, capsys):
    (tmp_path / "ct.nii.gz").write_bytes(b"")  # exists: the check is about existence
    code, _, err = run([a.format(d=tmp_path) for a in argv], capsys)
    one_line_error(code, err, missing)
    assert not (tmp_path / "o").exists() and not (tmp_path / "r").exists()


def test_missing_input_is_reported_before_torch_is_imported(tmp_path):
    """`reconstruct --ct missing` exits 2 naming the file, without importing torch."""
    wrapper = ("import sys\nfrom XRayToCTLib.cli import main\n"
               "code = main(sys.argv[1:])\nprint('torch' in sys.modules)\nsys.exit(code)\n")
    proc = subprocess.run([sys.executable, "-c", wrapper, "reconstruct", "--ct",
                           str(tmp_path / "missing.nii.gz"), "--model", "x", "--out",
                           str(tmp_path / "o.nii.gz")], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert "missing.nii.gz" in proc.stderr and proc.stderr.count("\n") == 1
    assert proc.stdout.strip() == "False"


def test_progress_is_plain_lines_when_stderr_is_not_a_terminal(capsys):
    """Off a terminal (a log, a pipe, the Slicer console) long commands print plain progress
    lines ``desc: NN% message``, one per 5 % step, instead of a tqdm bar (issue 14 item 8)."""
    from XRayToCTLib.cli import _tqdm_progress
    cb, close = _tqdm_progress("evaluate")
    for i in range(101):
        cb(i / 100, f"case {i}")
    close()
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "evaluate:   0% case 0" and lines[-1] == "evaluate: 100% case 100"
    assert len(lines) == 21, lines
