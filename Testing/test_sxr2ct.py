"""The single-view S-XR2CT model (seed 004, ``sxr2ct``): shapes, the likelihood image, the
template prior's place on the canonical grid, gradients, the package round trip through
``inference.Reconstructor``, and two training steps through the engine (view statistics,
the perceptual term of the frozen ``cnn_inr_phantom64`` encoders)."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from XRayToCTLib import inference, models
from XRayToCTLib.baselines import shipped_template_hu
from XRayToCTLib.dataset import CaseDataset
from XRayToCTLib.drr import normalize_views
from XRayToCTLib.geometry import canonical_grid
from XRayToCTLib.hu import coarsen
from XRayToCTLib.models.sxr2ct import SXR2CT, likelihood_image
from XRayToCTLib.phantom import head_phantom
from XRayToCTLib.preprocess import resample_to_grid
from XRayToCTLib.training import TrainConfig, train
from XRayToCTLib.training.engine import view_statistics

torch.set_num_threads(1)

# three levels (32, 16, 8 voxels at 32^3; attention on the 16^3 level)
SMALL = {"image_size": 32, "output_size": 32, "encoder_channels": [8, 8, 16],
         "encoder_depths": [1, 1, 1], "volume_channels": [4, 8, 8], "attention_heads": 2}
META = {"training_data": {"description": "none: random weights (a test model)"},
        "validation": {}}


def small(**kw) -> SXR2CT:
    torch.manual_seed(0)
    return models.build_model("sxr2ct", {**SMALL, **kw})


@pytest.mark.parametrize("view", ["ap", "lateral"])
def test_shapes_views_and_spec(view):
    m = small(views=[view])
    assert m.spec.name == "sxr2ct" and m.spec.views == (view,)
    y = m(normalize_views(torch.rand(2, 1, 32, 32)))
    assert y.shape == (2, 1, 32, 32, 32) and torch.isfinite(y).all()
    assert 0.0 <= float(y.detach().min()) and float(y.detach().max()) <= 1.0
    again = models.build_model("sxr2ct", m.spec.config)
    assert [p.shape for p in again.parameters()] == [p.shape for p in m.parameters()]
    with pytest.raises(ValueError, match="expects views"):
        m(torch.rand(1, 2, 32, 32))


def test_default_view_and_argument_checks():
    assert small().spec.views == ("ap",)
    for bad, match in [({"views": ["ap", "lateral"]}, "exactly one view"),
                       ({"encoder_depths": [1, 1]}, "same number"),
                       ({"attention_heads": 3}, "divide"),
                       ({"output_activation": "relu", "template_residual": True},
                        "template_residual"),
                       ({"image_size": 30}, "multiples"),
                       ({"std_floor": 0}, "std_floor")]:
        with pytest.raises(ValueError, match=match):
            small(**bad)


def test_likelihood_image_is_the_formula():
    m = small()
    g = torch.Generator().manual_seed(1)
    mean = torch.rand(1, 32, 32, generator=g)
    std = 0.1 + torch.rand(1, 32, 32, generator=g)
    m.set_view_statistics(mean, std)
    x = torch.rand(3, 1, 32, 32, generator=g)
    want = (np.log(np.sqrt(2 * np.pi * std.numpy() ** 2))
            + (x.numpy() - mean.numpy()) ** 2 / (2 * std.numpy() ** 2))
    assert np.allclose(m.likelihood(x).numpy(), want, atol=1e-5)
    assert torch.allclose(likelihood_image(x, mean, std), m.likelihood(x))
    # sigma is floored; bad shapes are refused
    m.set_view_statistics(mean, torch.zeros(1, 32, 32))
    assert float(m.view_std.min()) == pytest.approx(m.std_floor)
    with pytest.raises(ValueError, match="view statistics"):
        m.set_view_statistics(mean[0], std[0])


def test_template_buffer_is_the_shipped_template_on_the_canonical_grid():
    m = small()
    t = m.template
    assert t.shape == (1, 1, 32, 32, 32) and "template" in m.state_dict()
    grid = canonical_grid(32, m.spec.field_mm)
    hu = resample_to_grid(coarsen(shipped_template_hu(), 8.0, -1000.0), grid, None, "linear",
                          -1000.0).array
    mapping = models.get_mapping(m.spec.intensity)
    assert np.allclose(mapping.to_hu(t)[0, 0].numpy(), hu, atol=1.0)
    # geometry: the head is centred on the origin (the canonical frame) and the skull top is
    # superior (+z, the last array index): the head's mass centre near the origin, more head
    # above the grid's centre plane than air at its top
    head = hu > -500
    k, j, i = np.nonzero(head)
    centre = grid.physical_points(np.stack([i, j, k], 1).astype(float)).mean(0)
    assert np.all(np.abs(centre) < 16.0), centre  # 2 voxels of 8 mm
    assert head[-1].sum() == 0 and head[:, :, 0].sum() == 0 and head[16].sum() > 0
    # with template_residual, the network starts from the template
    m = small(template_residual=True)
    with torch.no_grad():
        for p in m.head.parameters():
            p.zero_()
        y = m(torch.rand(1, 1, 32, 32))
    assert torch.allclose(y, t.clamp(1e-3, 1 - 1e-3), atol=1e-5)


def test_gradients_reach_every_parameter():
    m = small()
    m(torch.rand(1, 1, 32, 32)).mean().backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing
    assert all(not b.requires_grad for b in m.buffers())


def test_package_round_trip_and_reconstructor(tmp_path):
    m = small()
    m.set_view_statistics(torch.full((1, 32, 32), 0.3), torch.full((1, 32, 32), 0.2))
    path = models.save_package(m, tmp_path / "sxr2ct.safetensors", metadata=META)
    loaded, info = models.load_package(path)
    assert info["model"] == "sxr2ct" and info["spec"]["views"] == ["ap"]
    for name in ("view_mean", "view_std", "template"):
        assert torch.equal(getattr(loaded, name), getattr(m, name)), name
    x = torch.rand(1, 1, 32, 32)
    m.eval()
    with torch.no_grad():
        assert torch.allclose(loaded(x), m(x), atol=1e-6)
    rec = inference.Reconstructor(path, device="cpu")
    assert rec.spec.views == ("ap",)
    ct = head_phantom(32, 8.0, seed=2)
    res = rec.reconstruct(ct=ct, register=False)
    assert res.sct.array.shape == ct.array.shape and list(res.drrs) == ["ap"]
    sct = res.sct_model_space.array
    assert sct.shape == (32, 32, 32) and np.isfinite(sct).all()
    with torch.no_grad():  # the sCT in model space is the network's output, in HU
        x = normalize_views(torch.from_numpy(res.drrs["ap"].array)[None, None].float())
        want = models.get_mapping("hu_compand").to_hu(loaded(x))[0, 0].numpy()
    assert np.allclose(sct, want, atol=0.5)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    from XRayToCTLib.data import prepare_dataset
    root = tmp_path_factory.mktemp("sxr2ct-data") / "ds"
    # 64-pixel DRRs: the perceptual term's network (cnn_inr_phantom64) takes 64^2 views
    prepare_dataset(root, phantoms=4, size=16, pixels=64, drr_spacing=8.0,
                    splits=(0.5, 0.5, 0.0), seed=0)
    assert len(CaseDataset(root, "train")) == 2 and len(CaseDataset(root, "val")) >= 1
    return root


def test_view_statistics_of_the_training_views(dataset):
    ds = CaseDataset(dataset, "train")
    mean, std = view_statistics(ds, ("ap",))
    x = torch.stack([normalize_views(ds[i]["ap"][None])[0] for i in range(len(ds))]).double()
    assert mean.shape == (1, 64, 64)
    assert torch.allclose(mean.double(), x.mean(0), atol=1e-6)
    assert torch.allclose(std.double(), x.std(0, unbiased=False), atol=1e-5)


def test_two_training_steps_through_the_engine(dataset, tmp_path):
    run = tmp_path / "run"
    cfg = TrainConfig(model="sxr2ct", data=str(dataset), out=str(run), epochs=1, batch_size=1,
                      lr=1e-3, seed=0, device="cpu", threads=1, val_every=1,
                      model_config={"encoder_channels": [8, 8, 8],
                                    "encoder_depths": [1, 1, 1],
                                    "volume_channels": [4, 4, 8], "attention_heads": 2},
                      discriminator_config={"disc_channels": 4, "disc_layers": 1})
    resolved = cfg.resolved()
    assert (resolved.lambda_adv, resolved.lambda_rec, resolved.lambda_proj,
            resolved.lambda_perc) == (0.1, 10.0, 10.0, 1.0)
    assert TrainConfig(model="x2ct_gan_single").resolved().lambda_perc == 0.0
    train(cfg)
    with open(run / "log.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 1 and int(rows[0]["step"]) == 2  # two cases, batch 1: two steps
    for key in ("loss_g", "loss_d", "loss_adv", "loss_rec", "loss_proj", "loss_perc"):
        assert math.isfinite(float(rows[0][key])) and float(rows[0][key]) > 0, key
    state = torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)
    mean, std = view_statistics(CaseDataset(dataset, "train"), ("ap",))
    assert torch.allclose(state["model"]["view_mean"], mean)
    assert torch.allclose(state["model"]["view_std"], std.clamp_min(0.05))
