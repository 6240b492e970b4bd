"""Inference: sCT from a CT (placed back on its grid), from radiographs (PNG, NRRD), the
projection-consistency score and its JSON, device fallback, and the CLI's one-line errors."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from XRayToCTLib import inference
from XRayToCTLib import preprocess as pp
from XRayToCTLib.cli import main
from XRayToCTLib.constants import SYNTHETIC_LABEL
from XRayToCTLib.drr import DRR
from XRayToCTLib.errors import Cancelled, InputError
from XRayToCTLib.geometry import Radiograph, canonical_grid
from XRayToCTLib.io import read_volume, write_radiograph, write_volume
from XRayToCTLib.phantom import head_phantom

from XRayToCTLib import models
from XRayToCTLib.models import intensity, package


TEST_META = {"training_data": {"description": "none: random weights (a test model)"},
             "validation": {}}


def small_model(views=("ap", "lateral"), size=32, pixels=32, seed=0) -> torch.nn.Module:
    """A randomly initialised model of the real registry, at a test size."""
    torch.manual_seed(seed)
    name = "x2ct_gan" if len(views) == 2 else "x2ct_gan_single"
    return models.build_model(name, {
        "image_size": pixels, "output_size": size, "output_spacing": 256.0 / size,
        "stem_channels": 8, "growth_rate": 4, "encoder_blocks": [1, 1, 1],
        "decoder_channels": [4, 4, 8, 8], "decoder_blocks": [1, 1, 1, 0],
        "fusion_blocks": [1, 1, 1, 0]})


def run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum()))


@pytest.fixture(scope="module")
def ct():
    """A head with a random pose in a 256 mm field of view (4 mm voxels)."""
    return head_phantom(64, 4.0, seed=3, rotation_deg=(8.0, -10.0, 15.0),
                        translation_mm=(10.0, -8.0, 12.0))


@pytest.fixture(scope="module")
def ct_file(ct, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ct") / "head.nrrd"
    write_volume(ct, path)
    return path


@pytest.fixture(scope="module")
def biplanar_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "tiny_biplanar.safetensors"
    package.save_package(small_model(), path, metadata=TEST_META)
    return path


@pytest.fixture(scope="module")
def single_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "tiny_single.safetensors"
    package.save_package(small_model(("ap",)), path, metadata=TEST_META)
    return path


# ----------------------------------------------------------------------------------------
# radiographs onto the model's detector
# ----------------------------------------------------------------------------------------
def test_prepare_view_uses_pixel_spacing_to_crop_and_pad(biplanar_file):
    spec = inference.Reconstructor(biplanar_file, device="cpu").spec
    g = spec.projection("ap")
    rows, cols = g.pixels
    rng = np.random.default_rng(0)
    img = rng.random((rows, cols)).astype(np.float32)
    # the model's own detector: unchanged
    same = inference.prepare_view(Radiograph(img, g.pixel_spacing), g)
    np.testing.assert_allclose(same, img, atol=1e-6)
    # the same field of view at half the pixel size inside a larger image with a margin:
    # cropped to the detector, then binned back
    fine = np.kron(img, np.ones((2, 2), np.float32))
    big = np.pad(fine, 10, constant_values=-5.0)
    out = inference.prepare_view(Radiograph(big, (g.pixel_spacing[0] / 2, g.pixel_spacing[1] / 2)), g)
    assert out.shape == (rows, cols)
    np.testing.assert_allclose(out, img, atol=1e-5)
    assert out.min() > -1.0  # the margin was cropped away
    # a field of view smaller than the detector: padded with the image's minimum (air)
    small = inference.prepare_view(Radiograph(img[8:-8, 8:-8] + 1.0, g.pixel_spacing), g)
    assert small.shape == (rows, cols)
    assert small[0, 0] == pytest.approx(float((img[8:-8, 8:-8] + 1.0).min()), abs=1e-3)
    # no spacing, not square: square pixels, the longer side spans the detector
    wide = np.ones((rows // 2, cols), np.float32)
    out = inference.prepare_view(wide, g)
    assert out.shape == (rows, cols)
    assert out[rows // 2, cols // 2] == pytest.approx(1.0) and out[0, cols // 2] == pytest.approx(1.0)
    # invert: bone dark -> bone bright, about the range
    inv = inference.prepare_view(Radiograph(img, g.pixel_spacing), g, invert=True)
    np.testing.assert_allclose(inv, img.max() + img.min() - img, atol=1e-6)
    with pytest.raises(InputError, match="NaN"):
        inference.prepare_view(np.full((8, 8), np.nan), g)


# ----------------------------------------------------------------------------------------
# from a CT
# ----------------------------------------------------------------------------------------
def test_reconstruct_ct_is_on_the_ct_grid_and_labelled(biplanar_file, ct):
    rec = inference.Reconstructor(biplanar_file, device="cpu")
    seen = []
    res = rec.reconstruct_ct(ct, register=False, progress=lambda f, m: seen.append(f))
    assert res.sct.array.shape == ct.array.shape
    assert res.sct.spacing == ct.spacing and res.sct.origin == ct.origin
    np.testing.assert_array_equal(res.sct.direction, ct.direction)
    assert np.all(np.isfinite(res.sct.array))
    assert res.sct.metadata["synthetic"] is True
    assert res.sct.metadata["description"] == SYNTHETIC_LABEL
    grid = rec.spec.grid()
    assert pp.Grid.of(res.sct_model_space).same_as(grid)
    assert np.allclose(grid.center, 0.0)
    assert set(res.drrs) == set(rec.spec.views)
    for v, d in res.drrs.items():
        model_geometry = rec.spec.projection(v)
        assert d.geometry.pixels == model_geometry.pixels and d.array.max() > 0.1  # a head
        # no registration: the model's geometry moved to the CT head, not rotated
        np.testing.assert_allclose(d.geometry.normal, model_geometry.normal, atol=1e-9)
    assert seen[0] == 0.0 and seen[-1] == 1.0 and seen == sorted(seen)


def test_cancel_from_the_progress_callback(biplanar_file, ct):
    rec = inference.Reconstructor(biplanar_file, device="cpu")
    with pytest.raises(Cancelled):
        rec.reconstruct_ct(ct, register=False, progress=lambda f, m: f < 0.5)


class _Perfect(torch.nn.Module):
    """A "model" returning the ground truth in the canonical frame, in model intensity: what
    a perfect network would output. It reads the canonical volume that the reconstruction
    made (captured from preprocess.to_canonical by the test), never the CT itself."""

    def __init__(self, spec, captured: dict):
        super().__init__()
        self.spec, self.captured = spec, captured
        self.anchor = torch.nn.Parameter(torch.zeros(()))

    def forward(self, views: torch.Tensor) -> torch.Tensor:
        vol = pp.resample_to_size(self.captured["volume"], self.spec.output_size)
        mapping = intensity.get_mapping(self.spec.intensity)
        y = torch.as_tensor(mapping.to_model(torch.from_numpy(vol.array))).float()
        return y[None, None] + 0.0 * self.anchor


@pytest.mark.parametrize("register", [True, False])
def test_perfect_model_output_overlays_the_ct(register, ct, monkeypatch):
    """The sCT is placed back where the CT is: bone overlap with the CT in physical space,
    whereas the same volume dropped on the CT grid without the inverse transform misses."""
    spec = small_model(size=64).spec
    captured: dict = {}
    original = pp.to_canonical

    def capture(*a, **k):
        captured["volume"], captured["transform"] = original(*a, **k)
        return captured["volume"], captured["transform"]

    monkeypatch.setattr(pp, "to_canonical", capture)
    rec = inference.Reconstructor(_Perfect(spec, captured), device="cpu")
    template = head_phantom(64, 4.0, seed=5) if register else None
    res = rec.reconstruct_ct(ct, template=template, register=register)
    if register:
        assert captured["transform"].rotation_angle_deg > 10.0  # a real pose
    bone = ct.array > 300.0
    assert dice(bone, res.sct.array > 300.0) > 0.8
    # the DRRs carry their geometry in the CT's space: the CT rendered there gives them back
    for v, d in res.drrs.items():
        again = DRR([d.geometry]).render(ct)[v].array
        assert np.abs(again - d.array).mean() < 0.02 * d.array.max(), v
    naive = pp.resample_to_grid(res.sct_model_space, ct)
    assert dice(bone, naive.array > 300.0) < 0.6
    # a perfect sCT explains its inputs: high projection consistency
    for v in spec.views:
        assert res.consistency["views"][v]["ssim"] > 0.95
        assert res.consistency["views"][v]["psnr"] > 30.0


@pytest.mark.parametrize("register", [False, True])
def test_a_dataset_case_and_an_inference_run_give_the_model_identical_inputs(register, tmp_path):
    """One road into the canonical frame: the DRRs ``xraytoct prepare`` stores for a CT and
    the DRRs ``reconstruct_ct`` feeds the model for the same CT (a model built for that
    dataset) are the same images, registered to a template or not."""
    import SimpleITK as sitk

    from XRayToCTLib import data
    from XRayToCTLib import dataset as reader
    # one ITK thread for both runs: a multi-threaded registration metric sums in a varying
    # order, and the optimiser can amplify that noise between two runs of the same registration
    threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    try:
        _dataset_vs_inference(register, tmp_path)
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)


def _dataset_vs_inference(register, tmp_path):
    from XRayToCTLib import data
    from XRayToCTLib import dataset as reader
    src = head_phantom(48, 5.0, seed=4, rotation_deg=(6.0, -4.0, 9.0), translation_mm=(5.0, -3.0, 8.0))
    (tmp_path / "cts").mkdir()
    write_volume(src, tmp_path / "cts" / "head.nrrd")
    template = tmp_path / "template.nii.gz"
    write_volume(head_phantom(48, 5.0, seed=5), template)
    ds = tmp_path / "ds"
    data.prepare_dataset(ds, ct_dir=tmp_path / "cts", size=32, pixels=32, drr_spacing=4.0,
                         register=register, template=template if register else None,
                         splits=(1.0, 0.0, 0.0), workers=1)
    case = reader.CaseDataset(ds, split=None)
    geoms = case.geometries
    model = models.build_model("cnn_inr", {
        "image_size": 32, "output_size": 32, "output_spacing": 8.0,
        "geometry": {v: g.to_dict() for v, g in geoms.items()}})
    rec = inference.Reconstructor(model, device="cpu", drr_spacing=4.0)
    ct = read_volume(tmp_path / "cts" / "head.nrrd")
    res = rec.reconstruct_ct(ct, template=template if register else None, register=register)
    item = case[0]
    for v in ("ap", "lateral"):
        stored = item[v][0].numpy()
        np.testing.assert_allclose(res.drrs[v].array, stored, rtol=1e-5, atol=1e-5 * stored.max())
    stored_tx = case.case_record(0)["transform"]["registration"]
    np.testing.assert_allclose(res.info["canonical_to_ct"]["matrix"], stored_tx["matrix"], atol=1e-6)


# ----------------------------------------------------------------------------------------
# projection consistency
# ----------------------------------------------------------------------------------------
def test_projection_consistency_ranks_the_truth_first(biplanar_file, ct):
    spec = inference.Reconstructor(biplanar_file, device="cpu").spec
    fine, _ = pp.to_canonical(ct, canonical_grid(256, spec.field_mm), register=False)
    truth = pp.resample_to_size(fine, spec.output_size)
    drr = DRR({v: spec.projection(v) for v in spec.views})
    images = drr.render(truth)
    views = np.stack([images[v].array for v in spec.views])
    x = models.normalize_views(torch.from_numpy(views)[None])
    good = drr.consistency(truth, x)
    shifted = truth.with_array(np.roll(truth.array, 6, axis=0))
    bad = drr.consistency(shifted, x)
    for v in spec.views:
        assert good["views"][v]["ssim"] > 0.99 and good["views"][v]["psnr"] > 40.0
        assert bad["views"][v]["ssim"] < good["views"][v]["ssim"]
        assert bad["views"][v]["psnr"] < good["views"][v]["psnr"] - 10.0
    assert set(good["mean"]) == {"ssim", "psnr"}


# ----------------------------------------------------------------------------------------
# the CLI
# ----------------------------------------------------------------------------------------
def test_cli_reconstruct_from_ct_writes_sct_drrs_and_json(biplanar_file, ct_file, ct, tmp_path, capsys):
    out = tmp_path / "sct.nii.gz"
    code, stdout, err = run(["reconstruct", "--ct", ct_file, "--no-register", "--model",
                             biplanar_file, "--out", out, "--device", "cpu"], capsys)
    assert code == 0, err
    assert "SYNTHETIC" in stdout
    sct = read_volume(out, require_hu=False)
    assert sct.array.shape == ct.array.shape
    np.testing.assert_allclose(sct.origin, ct.origin, atol=1e-4)
    np.testing.assert_allclose(sct.spacing, ct.spacing, atol=1e-6)
    import SimpleITK as sitk
    assert "SYNTHETIC" in sitk.ReadImage(str(out)).GetMetaData("descrip")
    meta = json.loads((tmp_path / "sct.json").read_text())
    assert meta["synthetic"] is True and "not for diagnosis" in meta["description"]
    assert meta["model"]["sha256"] == package.sha256_file(biplanar_file)
    assert meta["device"] == "cpu" and meta["time_s"] > 0
    assert set(meta["consistency"]["views"]) == {"ap", "lateral"}
    for s in meta["consistency"]["views"].values():
        assert 0.0 <= s["ssim"] <= 1.0 + 1e-6 and np.isfinite(s["psnr"])
    assert set(meta["geometry"]["views"]) == {"ap", "lateral"}
    assert meta["geometry"]["canonical_grid"]["size"] == [32, 32, 32]
    assert meta["sct_geometry"]["size"] == list(ct.size)
    for v in ("ap", "lateral"):
        assert (tmp_path / f"sct_{v}_input.nrrd").is_file()
        assert (tmp_path / f"sct_{v}_reprojection.nrrd").is_file()


def test_cli_reconstruct_from_png_and_nrrd_radiographs(biplanar_file, tmp_path, capsys):
    from PIL import Image

    spec = inference.Reconstructor(biplanar_file, device="cpu").spec
    head = head_phantom(64, 4.0, seed=7)
    images = DRR({v: spec.projection(v) for v in ("ap", "lateral")}).render(head)
    ap, lat = images["ap"], images["lateral"]
    png = tmp_path / "ap.png"
    Image.fromarray(np.round(255 * ap.array / ap.array.max()).astype(np.uint8)).save(png)
    nrrd = write_radiograph(lat, tmp_path / "lateral.nrrd")
    out = tmp_path / "out" / "sct.nrrd"
    out.parent.mkdir()
    code, _, err = run(["reconstruct", "--ap", png, "--lateral", nrrd, "--model", biplanar_file,
                        "--out", out, "--device", "cpu"], capsys)
    assert code == 0, err
    sct = read_volume(out, require_hu=False)
    assert sct.same_as(spec.grid())
    assert sct.metadata.get("synthetic") is True
    meta = json.loads((out.parent / "sct.json").read_text())
    assert meta["input_kind"] == "radiographs" and meta["space"] == "canonical"
    assert meta["inputs"]["ap"]["source"].endswith("ap.png")
    assert meta["inputs"]["lateral"]["pixel_spacing"] == list(lat.pixel_spacing)
    assert (out.parent / "sct_ap_input.nrrd").is_file()


def test_cli_single_view_model_and_view_count_errors(single_file, biplanar_file, tmp_path, capsys):
    spec = inference.Reconstructor(single_file, device="cpu").spec
    assert tuple(spec.views) == ("ap",)
    ap = write_radiograph(DRR([spec.projection("ap")]).render(head_phantom(48, 5.0, seed=2))["ap"],
                          tmp_path / "ap.nrrd")
    code, _, err = run(["reconstruct", "--ap", ap, "--model", single_file, "--out",
                        tmp_path / "s.nii.gz", "--device", "cpu"], capsys)
    assert code == 0, err
    meta = json.loads((tmp_path / "s.json").read_text())
    assert list(meta["consistency"]["views"]) == ["ap"]
    # two views for a one-view model, one view for a two-view model: one line, exit 2
    for model, extra in ((single_file, ["--lateral", ap]), (biplanar_file, [])):
        code, _, err = run(["reconstruct", "--ap", ap, *extra, "--model", model, "--out",
                            tmp_path / "x.nii.gz"], capsys)
        assert code == 2 and err.count("\n") == 1 and err.startswith("error: ")
        assert "view" in err
    assert not (tmp_path / "x.nii.gz").exists()


def test_cli_reconstruct_errors_are_one_line(biplanar_file, ct_file, tmp_path, capsys):
    cases = [
        (["--ct", tmp_path / "missing.nii.gz", "--model", biplanar_file], "missing.nii.gz"),
        (["--ap", tmp_path / "nope.png", "--lateral", tmp_path / "nope2.png", "--model",
          biplanar_file], "nope.png"),
        (["--ct", ct_file, "--ap", ct_file, "--model", biplanar_file], "not both"),
        (["--model", biplanar_file], "nothing to reconstruct"),
        (["--ct", ct_file, "--no-register", "--model", tmp_path / "no_model.safetensors"],
         "no_model"),
        (["--ct", ct_file, "--no-register", "--model", "no_such_model_name"], "no_such_model_name"),
        (["--ct", ct_file, "--no-register", "--model", biplanar_file, "--out",
          tmp_path / "o.nii.gz" / "sub" / "o.nii.gz"], "is a file"),
        (["--ct", ct_file, "--no-register", "--model", biplanar_file, "--refine", "-3"],
         "--refine"),
        (["--ct", ct_file, "--no-register", "--model", biplanar_file, "--out",
          tmp_path / "o.png"], "cannot write"),
    ]
    (tmp_path / "o.nii.gz").write_text("a file where a folder is asked for")
    for args, needle in cases:
        if "--out" not in args:
            args = [*args, "--out", tmp_path / "o.nii.gz"]
        code, _, err = run(["reconstruct", *args], capsys)
        assert code == 2, (args, err)
        assert err.startswith("error: ") and err.count("\n") == 1 and needle in err, err
    assert (tmp_path / "o.nii.gz").read_text().startswith("a file")


def test_cli_models_lists_the_catalog(capsys):
    code, out, err = run(["models", "--json"], capsys)
    assert code == 0, err
    rows = json.loads(out)
    assert isinstance(rows, list)
    assert [r["name"] for r in rows] == [e["name"] for e in models.catalog()]
    for r in rows:
        assert {"name", "title", "views", "output_size", "trained_on", "present",
                "sha256_ok"} <= set(r)
        assert r["sha256_ok"] is False or r["present"] is True
    code, out, _ = run(["models"], capsys)
    assert code == 0


# ----------------------------------------------------------------------------------------
# device
# ----------------------------------------------------------------------------------------
def test_cuda_out_of_memory_falls_back_to_cpu():
    calls = []

    def work(device):
        calls.append(device.type)
        if device.type == "cuda":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
        return 42

    with pytest.warns(RuntimeWarning, match="falling back to the CPU"):
        value, dev = inference.run_with_cpu_fallback(work, torch.device("cuda"))
    assert (value, dev.type, calls) == (42, "cpu", ["cuda", "cpu"])

    def cpu_oom(device):
        raise torch.cuda.OutOfMemoryError("out of memory")

    with pytest.raises(torch.cuda.OutOfMemoryError):  # nothing to fall back to on the CPU
        inference.run_with_cpu_fallback(cpu_oom, torch.device("cpu"))


def test_reconstructor_falls_back_and_stays_on_cpu(biplanar_file, ct, monkeypatch):
    rec = inference.Reconstructor(biplanar_file, device="cpu")
    real = rec._forward_on
    tried = []

    def forward_on(device, x):
        tried.append(device.type)
        if device.type == "cuda":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return real(device, x)

    monkeypatch.setattr(rec, "_forward_on", forward_on)
    rec.device = torch.device("cuda")  # as if --device auto had found a GPU
    views = {v: np.ones(rec.spec.projection(v).pixels, np.float32) for v in rec.spec.views}
    with pytest.warns(RuntimeWarning, match="out of memory"):
        res = rec.reconstruct_views(views)
    assert tried == ["cuda", "cpu"]
    assert rec.device.type == "cpu" and res.info["device"] == "cpu"


def test_auto_device_is_cpu_without_cuda(biplanar_file):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert inference.Reconstructor(biplanar_file, device="auto").device.type == "cpu"


@pytest.mark.parametrize("cmd", ["reconstruct", "models"])
def test_subcommand_help(cmd, capsys):
    from XRayToCTLib.cli import build_parser
    code, out, _ = run([cmd, "--help"], capsys)
    assert code == 0 and f"usage: xraytoct {cmd}" in out
    for action in build_parser()._subparsers._group_actions[0].choices[cmd]._actions:
        if action.option_strings and action.dest != "help":
            assert action.help, f"{cmd} {action.option_strings} has no help"


CTHEAD = Path(__file__).resolve().parents[2] / "shared" / "data" / "head_ct" / "slicer_ctheadaxial"


def test_cli_real_head_ct_to_a_synthetic_dicom_series(biplanar_file, tmp_path, capsys):
    """A real head (DICOM, stored values + --rescale) in, an sCT DICOM series out on its grid."""
    if not CTHEAD.is_dir():
        pytest.skip(f"real head CT not available ({CTHEAD} is absent: a fresh clone has no "
                    "../shared/data)")
    import pydicom
    out = tmp_path / "sct_dicom"
    code, _, err = run(["reconstruct", "--ct", CTHEAD, "--rescale", 1, -1024, "--no-register",
                        "--model", biplanar_file, "--out", out, "--device", "cpu"], capsys)
    assert code == 0, err
    ct = read_volume(CTHEAD, rescale=(1, -1024))
    sct = read_volume(out, require_hu=False)
    assert sct.size == ct.size
    np.testing.assert_allclose(sct.spacing, ct.spacing, atol=1e-3)
    np.testing.assert_allclose(sct.origin, ct.origin, atol=1e-3)
    np.testing.assert_allclose(sct.direction, ct.direction, atol=1e-6)
    ds = pydicom.dcmread(sorted(out.iterdir())[0], stop_before_pixels=True)
    assert "SYNTHETIC" in list(ds.ImageType)
    meta = json.loads((tmp_path / "sct_dicom.json").read_text())
    assert meta["synthetic"] is True and meta["sct_geometry"]["size"] == list(ct.size)


def test_cnn_inr_goes_through_the_same_api(ct):
    torch.manual_seed(0)
    model = models.build_model("cnn_inr", {"image_size": 32, "output_size": 32, "views": ["lateral"],
                                           "stem_channels": 4, "encoder_channels": [8, 8],
                                           "hidden": 16})
    rec = inference.Reconstructor(model, device="cpu")
    res = rec.reconstruct_ct(ct, register=False)
    assert res.sct.array.shape == ct.array.shape and res.sct.metadata["synthetic"] is True
    assert list(res.consistency["views"]) == ["lateral"]
    with pytest.raises(InputError, match="takes 1 view"):
        rec.reconstruct_views({"ap": res.drrs["lateral"].array})


def test_shipped_model_sct_overlays_a_posed_ct():
    """The bundled CNN-INR (catalog name, SHA-256 checked) reconstructs a posed phantom from its
    DRRs, registered to the template, and the sCT lands on the CT in physical space."""
    from XRayToCTLib.models import catalog
    from XRayToCTLib.preprocess import default_template_path
    if "cnn_inr_phantom64" not in [e["name"] for e in catalog()]:
        pytest.skip("cnn_inr_phantom64 is not in the bundled catalog")
    if default_template_path() is None:
        pytest.skip("no head template for registration (the shipped one was removed)")
    ct = head_phantom(64, 4.0, seed=11, pose=True)
    res = inference.Reconstructor("cnn_inr_phantom64", device="cpu").reconstruct_ct(ct, register=True)
    assert res.sct.size == ct.size and np.allclose(res.sct.index_to_lps(), ct.index_to_lps())
    assert res.sct.metadata.get("synthetic") is True

    def dice(a, b):
        return 2.0 * np.sum(a & b) / (np.sum(a) + np.sum(b))
    assert dice(ct.array > -500.0, res.sct.array > -500.0) > 0.85  # the head
    assert dice(ct.array > 300.0, res.sct.array > 300.0) > 0.6     # the skull
    assert res.consistency["mean"]["ssim"] > 0.6  # measured 0.73 (64³ at 4 mm)


def test_cli_refine_keeps_both_scores_and_evaluate_reports_it_with_the_view_baselines(
        biplanar_file, ct, ct_file, tmp_path, capsys):
    """``reconstruct --refine`` writes the fitted sCT, the consistency before and after and the
    method ``<model>+refine``; ``evaluate`` scores it under that name next to the baselines
    that read the images beside it (atlas, back-projection) and the outline baseline."""
    pred = tmp_path / "pred" / "head.nii.gz"  # the folder does not exist yet: it is created
    code, out, err = run(["reconstruct", "--ct", ct_file, "--no-register", "--model",
                          biplanar_file, "--out", pred, "--device", "cpu", "--refine", "8"], capsys)
    assert code == 0, err
    assert "refined in" in out
    side = json.loads(pred.with_suffix("").with_suffix(".json").read_text())
    assert side["method"] == "tiny_biplanar+refine"
    assert side["refine"]["steps_run"] <= 8 and side["refine"]["match"] == "absolute"
    assert side["refine"]["view_error"]["after"] <= side["refine"]["view_error"]["before"]
    assert set(side["consistency_before_refine"]["views"]) == {"ap", "lateral"}
    gt = tmp_path / "gt"
    gt.mkdir()
    write_volume(ct, gt / "head.nii.gz")
    rep = tmp_path / "rep"
    code, _, err = run(["evaluate", "--pred", pred.parent, "--name", side["method"], "--gt", gt,
                        "--out", rep, "--window", "full", "--metric", "ssim", "--metric",
                        "mae_hu", "--baseline", "outline", "--baseline", "atlas",
                        "--baseline", "backprojection"], capsys)
    assert code == 0, err
    rows = (rep / "metrics.csv").read_text().splitlines()
    methods = {r.split(",")[1] for r in rows[1:]}
    assert methods == {"tiny_biplanar+refine", "outline", "atlas", "backprojection"}, methods


def test_a_view_mismatch_names_the_model_the_user_typed():
    """The error names the catalog model (cnn_inr_phantom64), not its architecture (cnn_inr)."""
    rec = inference.Reconstructor("cnn_inr_phantom64", device="cpu")
    with pytest.raises(InputError, match="'cnn_inr_phantom64' takes 2 view"):
        rec.reconstruct_views({"ap": np.zeros((16, 16), np.float32)})


def test_the_json_says_what_lies_outside_the_models_field(biplanar_file, tmp_path):
    """A CT taller than the model's 256 mm field: the JSON (and so the Slicer node) says which
    share of the CT and of its head the sCT does not cover (air there, not a prediction)."""
    tall = head_phantom(48, 8.0, seed=1, pose=False)  # 384 mm: the field misses the top and bottom
    res = inference.Reconstructor(biplanar_file, device="cpu").reconstruct_ct(tall, register=False)
    fov = res.info["field_of_view"]
    assert fov["volume_outside_fraction"] == pytest.approx(1 - (256 / 384) ** 3, abs=0.01), fov
    assert 0.0 <= fov["head_outside_fraction"] < fov["volume_outside_fraction"], fov
    assert fov["outside_value_hu"] == -1000.0 and "evaluate" in fov["note"]
    assert json.loads(res.to_json())["field_of_view"] == pytest.approx(fov)


def test_evaluate_refuses_an_sct_from_radiographs_against_a_ct_in_another_frame(
        ct, tmp_path, capsys):
    """An sCT made from radiographs lies in the model's canonical frame; scored against a CT in
    another frame (the posed fixture: 20 degrees, 18 mm away) the overlay would be tilted:
    evaluate names the mismatch and the way to a matching pair instead (issue 14 item 6). The
    same sCT against the CT it was made from, in the canonical frame, is scored."""
    model = "cnn_inr_phantom64"  # a trained model: its sCT is a head in HU
    upright = head_phantom(64, 4.0, seed=3, pose=False)
    views = inference.Reconstructor(model, "cpu").drr.render(upright, device="cpu")
    folder = tmp_path / "in"
    folder.mkdir()
    for v, r in views.items():
        write_radiograph(r, folder / f"{v}.nrrd")
    pred = tmp_path / "pred" / "head.nii.gz"
    code, _, err = run(["reconstruct", "--ap", folder / "ap.nrrd", "--lateral", folder / "lateral.nrrd",
                        "--model", model, "--out", pred, "--device", "cpu"], capsys)
    assert code == 0, err
    gt = tmp_path / "gt"
    gt.mkdir()
    write_volume(ct, gt / "head.nii.gz")  # posed: another frame
    code, _, err = run(["evaluate", "--pred", pred.parent, "--gt", gt, "--out", tmp_path / "rep",
                        "--window", "full", "--metric", "mae_hu"], capsys)
    assert "canonical (template) frame" in err and "degrees" in err, err
    write_volume(upright, gt / "head.nii.gz")
    code, _, err = run(["evaluate", "--pred", pred.parent, "--gt", gt, "--out", tmp_path / "rep2",
                        "--window", "full", "--metric", "mae_hu"], capsys)
    assert code == 0 and "failed" not in err, err
