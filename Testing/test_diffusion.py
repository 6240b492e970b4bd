"""The conditional diffusion model (seed 002): shapes, the training step, seeded sampling,
``reconstruct --samples`` and its uncertainty map, the calibration of ``evaluate``, and the
package round trip with its prior referenced by SHA-256. Tiny random models (16^3 output,
8^3 diffusion grid)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from XRayToCTLib import inference, models
from XRayToCTLib.drr import DRR
from XRayToCTLib.errors import InputError
from XRayToCTLib.evaluation import uncertainty_calibration
from XRayToCTLib.geometry import canonical_grid
from XRayToCTLib.io import read_volume, write_radiograph, write_volume
from XRayToCTLib.models import package
from XRayToCTLib.phantom import head_phantom
from XRayToCTLib.training.engine import Engine

from test_inference import run  # the CLI in this process: (exit status, stdout, stderr)

META = {"training_data": {"description": "none: random weights (a test model)"},
        "validation": {}}
SIZE, PIXELS = 16, 16


def tiny_config(**over) -> dict:
    cfg = {"image_size": PIXELS, "output_size": SIZE, "output_spacing": 256.0 / SIZE,
           "prior": None, "diffusion_size": 8, "channels": [8, 8], "norm_groups": 4,
           "train_timesteps": 50, "sample_steps": 3, "cache": 8}
    cfg.update(over)
    return cfg


def tiny_diffusion(seed: int = 0, **over) -> torch.nn.Module:
    torch.manual_seed(seed)
    return models.build_model("diffusion", tiny_config(**over))


def tiny_prior(seed: int = 1) -> torch.nn.Module:
    torch.manual_seed(seed)
    return models.build_model("cnn_inr", {
        "image_size": PIXELS, "output_size": SIZE, "output_spacing": 256.0 / SIZE,
        "stem_channels": 4, "encoder_channels": [4], "hidden": 8, "pe_frequencies": 1})


def views(seed: int = 0, batch: int = 1) -> torch.Tensor:
    return torch.rand(batch, 2, PIXELS, PIXELS, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "tiny_diffusion.safetensors"
    package.save_package(tiny_diffusion(), path, metadata=META)
    return path


@pytest.fixture(scope="module")
def radiographs(tmp_path_factory, model_file) -> dict[str, Path]:
    """A phantom's DRRs at the tiny model's geometry, as NRRD files."""
    spec = models.load_model(model_file)[0].spec
    ct = head_phantom(32, 8.0, seed=2, pose=False)
    drrs = DRR({v: spec.projection(v) for v in spec.views}).render(ct)
    folder = tmp_path_factory.mktemp("views")
    return {v: write_radiograph(r, folder / f"{v}.nrrd") for v, r in drrs.items()}


# ----------------------------------------------------------------------------------------
# the model
# ----------------------------------------------------------------------------------------
def test_shapes_condition_and_state_without_the_prior():
    m = tiny_diffusion().eval()
    m.set_prior(tiny_prior())
    x = views(batch=2)
    cond = m.condition(x)
    assert cond.shape == (2, 3, 8, 8, 8)  # prior + one back-projection per view
    # the back-projection follows the real rays: a bright AP column lights a band along y
    spot = torch.zeros(1, 2, PIXELS, PIXELS)
    spot[0, 0, :, PIXELS // 2 - 2:PIXELS // 2 + 2] = 1.0  # +-50 mm about the central ray
    bp = m.condition(spot)[0, 1]  # [z, y, x]: the two central x columns, every y and z
    assert bp[:, :, 3:5].mean() > 0.8 and bp[:, :, 0].max() == 0.0
    y = m(x)
    assert y.shape == (2, 1, SIZE, SIZE, SIZE) and torch.isfinite(y).all()
    assert 0.0 <= float(y.min()) and float(y.max()) <= 1.0
    # the prior's weights stay out of the package
    assert all(k.startswith("unet.") for k in m.state_dict())
    assert m.spec.config["prior"] is None and m.spec.config["prior_sha256"] is None


def test_a_prior_with_other_views_or_geometry_is_refused():
    m = tiny_diffusion()
    other = models.build_model("cnn_inr", {"image_size": PIXELS * 2, "output_size": SIZE,
                                           "stem_channels": 4, "encoder_channels": [4],
                                           "hidden": 8})
    with pytest.raises(ValueError, match="does not fit"):
        m.set_prior(other)
    with pytest.raises(ValueError, match="multiple of"):
        tiny_diffusion(diffusion_size=6, channels=[8, 8, 8])


def test_the_training_step_loss_is_finite_and_gradients_reach_the_unet():
    m = tiny_diffusion().train()
    m.set_prior(tiny_prior())
    target = torch.rand(1, 1, SIZE, SIZE, SIZE)
    loss, clean, target_low = m.diffusion_loss(views(), target,
                                               generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(loss) and clean.shape == target_low.shape == (1, 1, 8, 8, 8)
    # the projection term on the predicted clean volume, as the engine computes it
    drr = DRR([m.spec.projection(v) for v in m.spec.views], m.training_grid(),
              attenuation="soft")
    proj = (drr.normalized(m.mapping.to_hu(clean)) - views()).abs().mean()
    (loss + proj).backward()
    grads = [p.grad for p in m.unet.parameters()]
    assert all(g is not None for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    assert all(p.grad is None for p in m.prior.parameters())  # the prior stays frozen


def test_the_engine_runs_a_diffusion_step(tmp_path):
    """``xraytoct train --model diffusion``'s step: the engine's diffusion branch on a tiny
    dataset-free setup (the engine's method with a stand-in self)."""
    m = tiny_diffusion().train()

    class Run:  # what Engine._diffusion_step reads
        cfg = type("C", (), {"lambda_rec": 1.0, "lambda_proj": 1.0})()
        model = m
        device = torch.device("cpu")
        opt_g = torch.optim.Adam(m.parameters(), lr=1e-3)
        scaler = torch.amp.GradScaler("cuda", enabled=False)
        dist = type("D", (), {"world": 1})()
        step = 0

        def _autocast(self):
            return torch.autocast("cpu", enabled=False)

    from XRayToCTLib.training.losses import ProjectionLoss
    run_ = Run()
    drr = DRR([m.spec.projection(v) for v in m.spec.views], m.training_grid(), attenuation="soft")
    run_.projection = ProjectionLoss(drr, m.mapping, "input")
    before = [p.detach().clone() for p in m.parameters()]
    out = Engine._diffusion_step(run_, views(), torch.rand(1, 1, SIZE, SIZE, SIZE))
    assert all(np.isfinite(out[k]) for k in ("loss_g", "loss_rec", "loss_proj"))
    assert out["loss_proj"] > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, m.parameters()))


def test_sampling_is_deterministic_per_seed_and_differs_across_seeds():
    m = tiny_diffusion().eval()
    x = views()
    a = m.sample(x, 2, generator=torch.Generator().manual_seed(5))
    b = m.sample(x, 2, generator=torch.Generator().manual_seed(5))
    c = m.sample(x, 2, generator=torch.Generator().manual_seed(6))
    assert a.shape == (2, 1, 1, SIZE, SIZE, SIZE)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert not torch.allclose(a[0], a[1])  # two samples of one input differ
    assert torch.equal(m(x), m(x))  # forward: the fixed seed 0
    assert m.sampler_settings()["steps"] == 3 and m.sampler_settings(steps=5)["steps"] == 5


# ----------------------------------------------------------------------------------------
# inference: samples and the uncertainty map
# ----------------------------------------------------------------------------------------
def test_cli_samples_write_the_uncertainty_on_the_scts_grid(model_file, radiographs, tmp_path,
                                                          capsys):
    out = tmp_path / "sct.nii.gz"
    argv = ["reconstruct", "--ap", radiographs["ap"], "--lateral", radiographs["lateral"],
            "--model", model_file, "--out", out, "--device", "cpu", "--samples", "3",
            "--seed", "7"]
    code, text, err = run(argv, capsys)
    assert code == 0, err
    assert "3 samples (seed 7" in text
    unc = tmp_path / "sct_uncertainty.nii.gz"
    assert unc.is_file()
    sct, sd = read_volume(out), read_volume(unc, require_hu=False)
    assert sd.array.shape == sct.array.shape
    assert np.allclose(sd.spacing, sct.spacing) and np.allclose(sd.origin, sct.origin)
    assert np.all(sd.array >= 0) and float(sd.array.max()) > 0
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(unc))
    reader.ReadImageInformation()
    assert "SYNTHETIC" in reader.GetMetaData("descrip")
    side = json.loads((tmp_path / "sct.json").read_text())
    u, s = side["uncertainty"], side["sampler"]
    assert s["samples"] == 3 and s["seed"] == 7 and s["steps"] == 3 and s["statistic"] == "mean"
    assert u["mean_sd_head_hu"] > 0 and 0.0 <= u["share_head_sd_above_100_hu"] <= 1.0
    assert side["files"]["uncertainty"].endswith("sct_uncertainty.nii.gz")
    # the same seed again: the same sCT and spread
    out2 = tmp_path / "again" / "sct.nii.gz"
    code, _, err = run(argv[:8] + [out2] + argv[9:], capsys)
    assert code == 0, err
    np.testing.assert_array_equal(read_volume(out2).array, sct.array)
    np.testing.assert_array_equal(read_volume(out2.with_name("sct_uncertainty.nii.gz"),
                                              require_hu=False).array,
                                  sd.array)


def test_samples_with_refine_fit_each_sample_and_a_ct_gets_its_grid(model_file):
    ct = head_phantom(24, 10.0, seed=4, pose=False)
    rec = inference.Reconstructor(model_file, device="cpu")
    res = rec.reconstruct(ct=ct, register=False, samples=2, seed=1, refine=2)
    assert res.uncertainty is not None and res.uncertainty.array.shape == ct.array.shape
    assert np.allclose(res.uncertainty.spacing, ct.spacing)
    assert res.uncertainty_model_space.array.shape == (SIZE,) * 3
    assert res.uncertainty.metadata["synthetic"] is True
    assert res.info["refine"]["samples_fitted"] == 2 and len(res.info["refine"]["per_sample"]) == 2
    assert res.info["method"].endswith("+refine")
    # one sample: no spread
    one = rec.reconstruct(ct=ct, register=False, samples=1)
    assert one.uncertainty is None and one.info["sampler"]["samples"] == 1


def test_other_models_refuse_several_samples():
    torch.manual_seed(0)
    rec = inference.Reconstructor(tiny_prior(), device="cpu")
    arr = {v: np.random.default_rng(0).random((PIXELS, PIXELS)).astype(np.float32)
           for v in ("ap", "lateral")}
    with pytest.raises(InputError, match="only a diffusion model draws several samples"):
        rec.reconstruct(views=arr, samples=3)
    assert rec.reconstruct(views=arr, samples=1).uncertainty is None


# ----------------------------------------------------------------------------------------
# evaluation: calibration
# ----------------------------------------------------------------------------------------
def test_calibration_of_error_proportional_to_spread_is_near_one():
    rng = np.random.default_rng(0)
    spread = rng.uniform(5, 200, size=(20, 20, 20))
    error = 0.8 * spread * rng.uniform(0.95, 1.05, size=spread.shape)
    head = np.zeros(spread.shape, bool)
    head[2:-2, 2:-2, 2:-2] = True
    cal = uncertainty_calibration(spread, error, head)
    assert cal["spearman"] > 0.98 and cal["voxels"] == int(head.sum())
    maes = [b["mae_hu"] for b in cal["bins"]]
    assert len(maes) == 10 and maes == sorted(maes)
    noise = uncertainty_calibration(spread, rng.uniform(0, 100, size=spread.shape), head)
    assert abs(noise["spearman"]) < 0.1
    assert uncertainty_calibration(spread, -error, head)["spearman"] > 0.98  # |error|


def test_evaluate_reports_the_calibration(tmp_path, capsys):
    rng = np.random.default_rng(1)
    ct = head_phantom(24, 10.0, seed=5, pose=False)
    spread = rng.uniform(1, 100, size=ct.array.shape).astype(np.float32)
    pred = ct.with_array(ct.array + spread * rng.choice([-1.0, 1.0], size=spread.shape))
    (tmp_path / "gt").mkdir()
    (tmp_path / "pred").mkdir()
    write_volume(ct, tmp_path / "gt" / "c1.nii.gz")
    write_volume(pred, tmp_path / "pred" / "c1.nii.gz")
    write_volume(ct.with_array(spread), tmp_path / "pred" / "c1_uncertainty.nii.gz")
    code, _, err = run(["evaluate", "--pred", tmp_path / "pred", "--gt", tmp_path / "gt",
                        "--out", tmp_path / "rep", "--window", "full", "--metric", "mae_hu"],
                       capsys)
    assert code == 0, err
    summary = json.loads((tmp_path / "rep" / "summary.json").read_text())
    assert [c["case"] for c in summary["calibration"]] == ["c1"]  # not a case of its own
    assert summary["calibration_by_model"]["pred"]["mean_spearman"] > 0.95
    html = (tmp_path / "rep" / "report.html").read_text()
    assert "Uncertainty calibration" in html and "id='reliability'" in html


# ----------------------------------------------------------------------------------------
# the package
# ----------------------------------------------------------------------------------------
def test_package_round_trip_loads_the_prior_by_sha256(tmp_path):
    prior_file = tmp_path / "prior.safetensors"
    package.save_package(tiny_prior(), prior_file, metadata=META)
    m = tiny_diffusion(prior=str(prior_file)).eval()
    digest = package.sha256_file(prior_file)
    assert m.spec.config["prior_sha256"] == digest
    path = package.save_package(m, tmp_path / "diff.safetensors", metadata=META)
    assert path.stat().st_size < 1_000_000  # the prior's weights are not in it
    loaded, info = package.load_package(path)
    assert info["model"] == "diffusion" and loaded.prior is not None
    x = views(3)
    g = lambda: torch.Generator().manual_seed(2)  # noqa: E731
    assert torch.allclose(loaded.sample(x, 1, generator=g()), m.sample(x, 1, generator=g()))
    # another prior file under the same name: refused
    package.save_package(tiny_prior(seed=9), prior_file, metadata=META)
    with pytest.raises(InputError, match="trained on top of the prior"):
        package.load_package(path)
    entry = package.catalog_entry(path, name="t", title="t", description="t",
                                  catalog_dir=tmp_path)
    assert entry["model"] == "diffusion" and entry["output_size"] == SIZE


def test_the_residual_is_added_inside_the_priors_head_only():
    m = tiny_diffusion()
    m.set_prior(tiny_prior())
    prior_low = torch.zeros(1, 1, 8, 8, 8)  # air (0 in hu_compand) ...
    prior_low[..., 2:6, 2:6, 2:6] = 0.5  # ... around a head
    gate = m.residual_gate(prior_low, (SIZE,) * 3)
    assert gate.shape == (1, 1, SIZE, SIZE, SIZE)
    assert float(gate[..., SIZE // 2, SIZE // 2, SIZE // 2]) == 1.0  # inside
    assert float(gate[..., 0, 0, 0]) == 0.0 and float(gate.min()) >= 0.0  # far outside
    everywhere = tiny_diffusion(head_gate_hu=None)
    everywhere.set_prior(tiny_prior())
    assert everywhere.residual_gate(prior_low, (SIZE,) * 3) is None


def test_the_grids_match_the_spec():
    m = tiny_diffusion()
    assert m.training_grid().same_as(canonical_grid(8, 256.0))
    assert m.downsample(torch.ones(1, 1, SIZE, SIZE, SIZE)).shape == (1, 1, 8, 8, 8)
