"""pix2pix (seed 003) and harmonisation (issue 12 item 3): the 2D U-Net and PatchGAN, the
losses, training by the engine on a pairs folder, packages, ``xraytoct pairs`` /
``harmonize`` / ``reconstruct --harmonize``, and FSIM. Small images (32^2, 64^2), CPU."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from XRayToCTLib import models
from XRayToCTLib.drr import DRR, default_biplanar
from XRayToCTLib.errors import InputError, XRayToCTError
from XRayToCTLib.geometry import Radiograph
from XRayToCTLib.harmonize import HARMONIZED_UNITS, Harmonizer, evaluate_pairs
from XRayToCTLib.inference import Reconstructor
from XRayToCTLib.io import read_radiograph, write_radiograph, write_volume
from XRayToCTLib.metrics import fsim
from XRayToCTLib.models import package
from XRayToCTLib.models.pix2pix import (Pix2PixDiscriminator, build_pix2pix_discriminator,
                                        is_translation)
from XRayToCTLib.pairs import PairDataset
from XRayToCTLib.phantom import head_phantom
from XRayToCTLib.training import TrainConfig, export_run, train
from XRayToCTLib.training.distributed import Dist
from XRayToCTLib.training.losses import AdversarialLoss
from XRayToCTLib.training.translation import TranslationEngine

from test_inference import run, small_model  # a random two-view reconstruction model at a test size

SMALL = {"channels": [4, 8, 16], "strides": [2, 2]}
SMALL_DISC = {"disc_channels": 4, "disc_layers": 2}
META = {"training_data": {"description": "none: random weights (a test model)"},
        "validation": {}}


def tiny_pix2pix(size: int = 32, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return models.build_model("pix2pix", {"image_size": size, **SMALL})


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> Path:
    """A pairs folder of 32^2 images: the target a smooth blob, the input its inverse, squared
    and noisy (what a translation must undo); 6 train, 2 val, 2 test pairs."""
    root = tmp_path_factory.mktemp("pairs")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:32, :32] / 31.0
    for split, n in (("train", 6), ("val", 2), ("test", 2)):
        (root / split).mkdir()
        for i in range(n):
            cy, cx = rng.uniform(0.3, 0.7, 2)
            target = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 0.05).astype(np.float32)
            noisy = (1 - target) ** 2 + rng.normal(0, 0.05, target.shape)
            write_radiograph(Radiograph(target, (2.0, 2.0), None, {}),
                             root / split / f"p{i}_target.nrrd")
            write_radiograph(Radiograph(noisy.astype(np.float32), (2.0, 2.0), None, {}),
                             root / split / f"p{i}_input.nrrd")
    (root / "manifest.json").write_text(json.dumps({"kind": "xraytoct pairs",
                                                    "input_domain": "noisy inverse",
                                                    "target_domain": "blob"}))
    return root


def _config(pairs: Path, out: Path, **kw) -> TrainConfig:
    base = dict(model="pix2pix", data=str(pairs), out=str(out), epochs=2, batch_size=2,
                lr=2e-4, model_config=dict(SMALL), discriminator_config=dict(SMALL_DISC),
                threads=1, tensorboard=False, device="cpu")
    base.update(kw)
    return TrainConfig(**base)


def _log(run_dir: Path) -> list[dict]:
    with open(run_dir / "log.csv", newline="") as fh:
        return list(csv.DictReader(fh))


# -- networks ------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [32, 64])
def test_generator_and_discriminator_shapes(size):
    g = models.build_model("pix2pix", {"image_size": size})
    assert is_translation(g) and g.spec.kind == "translation_2d"
    x = torch.rand(2, 1, size, size)
    y = g(x)
    assert y.shape == x.shape and float(y.detach().min()) >= 0 and float(y.detach().max()) <= 1
    d = build_pix2pix_discriminator(g.spec)
    logits = d(y, x)
    s = size // 8 - 2  # kernel 4, strides 2, 2, 2, 1 then a 4x4 convolution: the PatchGAN
    assert logits.shape == (2, 1, s, s)
    # the rebuilt spec gives the same architecture
    assert models.build_model("pix2pix", g.spec.config).spec.config == g.spec.config


def test_invalid_arguments_are_one_line_errors():
    with pytest.raises(ValueError, match="divisible"):
        models.build_model("pix2pix", {"image_size": 36})
    with pytest.raises(ValueError, match="strides"):
        models.build_model("pix2pix", {"channels": [8, 16], "strides": [2, 2]})
    with pytest.raises(ValueError, match="dropout"):
        models.build_model("pix2pix", {"dropout": 1.5})
    with pytest.raises(ValueError, match="no patch"):
        Pix2PixDiscriminator(image_size=16, num_layers=3)
    with pytest.raises(ValueError, match="unknown discriminator_config"):
        build_pix2pix_discriminator(tiny_pix2pix().spec, {"lift": "parallel"})
    with pytest.raises(ValueError, match="32 x 32"):
        tiny_pix2pix()(torch.rand(1, 1, 64, 64))


# -- losses --------------------------------------------------------------------------------
def test_loss_terms_and_seed_defaults(pairs, tmp_path):
    cfg = _config(pairs, tmp_path / "run").resolved()
    assert (cfg.lambda_adv, cfg.lambda_rec, cfg.lambda_proj, cfg.recon_loss) == (1.0, 100.0, 0.0,
                                                                                 "l1")
    # the vanilla GAN's BCE on logits: a confident, correct discriminator has a small loss
    bce = AdversarialLoss("bce")

    class Sure(torch.nn.Module):
        def forward(self, image, condition):
            return (image.mean(dim=(1, 2, 3), keepdim=True) - 0.5) * 100

    real, fake, x = torch.ones(1, 1, 8, 8), torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8)
    assert float(bce.discriminator_loss(Sure(), real, fake, x)) < 1e-6
    assert float(bce.generator_loss(Sure(), fake, x)) > 10  # the fake is found out
    # one engine step: loss_g = 100 L1 + 1 adversarial
    engine = TranslationEngine(cfg, Dist("cpu"), None)
    batch = next(iter(engine._loader(engine.train_ds, train=False)))
    with torch.no_grad():
        l1 = float((engine.model(batch["input"]) - batch["target"]).abs().mean())
    out = engine.train_step(batch)
    assert out["loss_rec"] == pytest.approx(l1, rel=1e-5)
    assert out["loss_g"] == pytest.approx(100 * out["loss_rec"] + out["loss_adv"], rel=1e-5)
    assert np.isnan(out["loss_proj"]) and out["loss_d"] > 0
    with pytest.raises(XRayToCTError, match="projection"):
        TranslationEngine(cfg.replace(lambda_proj=1.0), Dist("cpu"), None)


# -- training, resume, export --------------------------------------------------------------
def test_two_epoch_training_logs_validates_resumes_and_exports(pairs, tmp_path):
    run_dir = train(_config(pairs, tmp_path / "run"))
    rows = _log(run_dir)
    assert [int(r["epoch"]) for r in rows] == [1, 2] and int(rows[-1]["step"]) == 6
    for key in ("val_ssim_whole", "val_psnr_whole", "val_ssim_head", "loss_adv", "loss_d"):
        assert np.isfinite(float(rows[-1][key])), key
    assert (run_dir / "checkpoints" / "best.pt").is_file()
    train(_config(pairs, tmp_path / "run", epochs=3, resume=True))
    assert [int(r["epoch"]) for r in _log(run_dir)] == [1, 2, 3]
    # the package: a 2D translation model, its domains from the pairs manifest
    path = export_run(run_dir, tmp_path / "p2p.safetensors", checkpoint="last")
    model, info = models.load_package(path)
    assert info["kind"] == "translation_2d" and info["model"] == "pix2pix"
    assert info["input"]["domain"] == "noisy inverse" and info["output"]["domain"] == "blob"
    assert info["training_data"]["split"] == {"train": 6, "val": 2, "test": 2}
    assert "ssim_whole" in info["validation"] and "window" not in info["validation"]
    entry = package.catalog_entry(path, name="h", title="t", description="d",
                                  catalog_dir=tmp_path)
    assert entry["kind"] == "translation_2d" and "views" not in entry
    assert entry["trained_on"].get("path") is None  # no machine path in a catalog entry
    ds = PairDataset(pairs, "test")
    x = torch.stack([ds[i]["input"] for i in range(len(ds))])
    state = torch.load(run_dir / "checkpoints" / "last.pt", map_location="cpu",
                       weights_only=False)["model"]
    fresh = models.build_model("pix2pix", model.spec.config)
    fresh.load_state_dict(state)
    fresh.eval()
    with torch.no_grad():
        assert torch.allclose(model(x), fresh(x), atol=1e-6)


def test_package_round_trip_fp16(tmp_path):
    g = tiny_pix2pix()
    g.eval()
    path = package.save_package(g, tmp_path / "g.safetensors", metadata=META,
                                dtype=torch.float16)
    loaded, info = models.load_package(path)
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded(x), g(x), atol=2e-3)
    assert info["spec"]["kind"] == "translation_2d" and info["dtype"] == "float16"


def test_pairs_dataset_errors(tmp_path):
    with pytest.raises(InputError, match="manifest.json"):
        PairDataset(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"kind": "xraytoct pairs"}))
    (tmp_path / "train").mkdir()
    write_radiograph(Radiograph(np.ones((8, 8), np.float32), None, None, {}),
                     tmp_path / "train" / "a_input.nrrd")
    with pytest.raises(InputError, match="_target"):
        PairDataset(tmp_path)


# -- building pairs from a CT --------------------------------------------------------------
def test_build_pairs_from_ct_files(tmp_path, capsys):
    cts = tmp_path / "cts"
    cts.mkdir()
    for seed in (1, 2):
        write_volume(head_phantom(48, 5.0, seed=seed), cts / f"head{seed}.nii.gz")
    code, out, err = run(["pairs", cts, "--out", tmp_path / "pairs", "--per-ct", 2,
                          "--pixels", 32, "--seed", 3], capsys)
    assert code == 0, err
    man = json.loads((tmp_path / "pairs" / "manifest.json").read_text())
    assert len(man["pairs"]) == 2 * 2 * 2 and man["pixels"] == 32  # CTs x draws x views
    settings = [p["settings"] for p in man["pairs"].values()]
    assert len({round(s["kvp"], 6) for s in settings}) == 4  # physics drawn per draw
    split = next(s for s in ("train", "val", "test") if man["split"][s])
    ds = PairDataset(tmp_path / "pairs", split)
    item = ds[0]
    assert item["input"].shape == (1, 32, 32) and 0 <= float(item["target"].min())
    pid = item["id"]
    raw = read_radiograph(tmp_path / "pairs" / split / f"{pid}_input.nrrd")
    assert raw.metadata["kind"] == "simulated radiograph" and raw.geometry is not None
    code, _, err = run(["pairs", cts, "--out", tmp_path / "pairs"], capsys)
    assert code != 0 and "already holds" in err


# -- harmonisation -------------------------------------------------------------------------
def _drr_file(tmp_path: Path, pixels: int = 32) -> tuple[Path, Radiograph]:
    geoms = default_biplanar(pixels=pixels)
    img = DRR({"ap": geoms["ap"]}).render(head_phantom(48, 5.0, seed=4))["ap"]
    return write_radiograph(img, tmp_path / "ap.nrrd"), img


def test_harmonize_cli_keeps_geometry_and_says_so(tmp_path, capsys):
    pkg = package.save_package(tiny_pix2pix(), tmp_path / "h.safetensors", metadata=META)
    src, img = _drr_file(tmp_path)
    out = tmp_path / "out" / "ap_h.nrrd"
    code, stdout, err = run(["harmonize", src, "--model", pkg, "--out", out, "--device", "cpu"],
                            capsys)
    assert code == 0, err
    h = read_radiograph(out)
    assert h.array.shape == img.array.shape
    assert h.pixel_spacing == pytest.approx(img.pixel_spacing)
    assert h.geometry.to_dict() == img.geometry.to_dict()
    assert h.metadata["view"] == "ap" and h.metadata["units"] == HARMONIZED_UNITS
    assert h.metadata["harmonized"]["model"] == "h"
    assert h.metadata["harmonized"]["sha256"] == package.sha256_file(pkg)
    assert 0 <= h.array.min() and h.array.max() <= 1
    # another image size: translated at 32^2, returned at its own size
    big = Harmonizer(pkg).translate_array(np.random.default_rng(0).random((50, 70)))
    assert big.shape == (50, 70)
    # a reconstruction model is not a harmoniser
    recon = package.save_package(small_model(), tmp_path / "r.safetensors", metadata=META)
    code, _, err = run(["harmonize", src, "--model", recon, "--out", tmp_path / "x.nrrd"],
                       capsys)
    assert code != 0 and "not a harmoniser" in err and len(err.strip().splitlines()) == 1


def test_reconstructor_refuses_a_pix2pix_package(tmp_path, capsys):
    pkg = package.save_package(tiny_pix2pix(), tmp_path / "h.safetensors", metadata=META)
    with pytest.raises(InputError, match="not a reconstruction model"):
        Reconstructor(pkg, device="cpu")
    src, _ = _drr_file(tmp_path)
    code, _, err = run(["reconstruct", "--ap", src, "--lateral", src, "--model", pkg, "--out",
                        tmp_path / "s.nii.gz"], capsys)
    assert code != 0 and "2D translation model" in err
    assert len(err.strip().splitlines()) == 1


def test_reconstruct_harmonize_translates_each_view_and_records_it(tmp_path, capsys):
    pkg = package.save_package(tiny_pix2pix(), tmp_path / "h.safetensors", metadata=META)
    recon = package.save_package(small_model(), tmp_path / "r.safetensors", metadata=META)
    spec = Reconstructor(recon, device="cpu").spec
    images = DRR({v: spec.projection(v) for v in spec.views}).render(head_phantom(48, 5.0, seed=6))
    files = {v: write_radiograph(images[v], tmp_path / f"{v}.nrrd") for v in spec.views}
    out = tmp_path / "sct.nii.gz"
    code, stdout, err = run(["reconstruct", "--ap", files["ap"], "--lateral", files["lateral"],
                             "--model", recon, "--harmonize", pkg, "--out", out,
                             "--device", "cpu"], capsys)
    assert code == 0, err
    assert "harmonised by h" in stdout
    meta = json.loads((tmp_path / "sct.json").read_text())
    assert meta["harmonize"]["model"] == "h"
    assert meta["harmonize"]["sha256"] == package.sha256_file(pkg)
    assert all(meta["inputs"][v]["harmonized"] for v in spec.views)
    # the model saw the harmonised images: they differ from the plain run's inputs
    plain = Reconstructor(recon, device="cpu").reconstruct(views=images)
    harm = Reconstructor(recon, device="cpu", harmonize=pkg).reconstruct(views=images)
    h = Harmonizer(pkg)
    for v in spec.views:
        assert not np.allclose(plain.drrs[v].array, harm.drrs[v].array)
        want = h.translate_array(plain.drrs[v].array)
        np.testing.assert_allclose(harm.drrs[v].array, want, atol=1e-5)
    with pytest.raises(InputError, match="radiographs"):
        Reconstructor(recon, device="cpu", harmonize=pkg).reconstruct(
            ct=head_phantom(48, 5.0, seed=6))


def test_evaluate_pairs_before_and_after(pairs, tmp_path, capsys):
    pkg = package.save_package(tiny_pix2pix(), tmp_path / "h.safetensors", metadata=META)
    res = evaluate_pairs(pairs, pkg, split="test")
    assert res["pairs"] == 2
    for stage in ("before", "after"):
        assert set(res[stage]) == {"psnr", "ssim", "fsim"}
    code, stdout, err = run(["harmonize", pairs, "--model", pkg, "--evaluate", "--out",
                             tmp_path / "eval.json"], capsys)
    assert code == 0, err
    assert "before" in stdout and "FSIM" in stdout
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["before"]["ssim"]["mean"] == pytest.approx(res["before"]["ssim"]["mean"])


# -- FSIM ----------------------------------------------------------------------------------
def test_fsim_is_one_for_identical_images_and_drops_with_noise():
    yy, xx = np.mgrid[:64, :64] / 63.0
    img = (0.5 + 0.3 * np.sin(12 * xx) * np.cos(9 * yy)
           + 0.2 * ((xx - 0.5) ** 2 + (yy - 0.5) ** 2 < 0.08)).clip(0, 1)
    x = torch.as_tensor(img, dtype=torch.float64)[None, None]
    assert float(fsim(x, x)[0]) == pytest.approx(1.0, abs=1e-9)
    rng = np.random.default_rng(0)
    scores = []
    for sigma in (0.02, 0.1, 0.3):
        noisy = torch.as_tensor((img + rng.normal(0, sigma, img.shape)).clip(0, 1))[None, None]
        scores.append(float(fsim(x, noisy)[0]))
    assert 1.0 > scores[0] > scores[1] > scores[2]


# -- the bundled harmoniser ----------------------------------------------------------------
def test_bundled_harmonisers_load_translate_and_are_listed_as_such(capsys):
    entries = models.catalog(kind="translation_2d")
    if not entries:
        pytest.skip("no harmoniser in the bundled catalog")
    assert not {e["name"] for e in entries} & {e["name"] for e in
                                               models.catalog(kind="reconstruction")}
    for e in entries:
        h = Harmonizer(e["name"])
        assert h.spec.image_size == e["image_size"] and h.record["sha256"] == e["sha256"]
        out = h.translate_array(np.random.default_rng(0).random((64, 64)))
        assert out.shape == (64, 64) and np.isfinite(out).all()
        assert {"psnr", "ssim", "fsim"} <= set(e["test"]["after"])
    code, out, _ = run(["models"], capsys)
    assert code == 0
    for e in entries:
        block = out.split(f"{e['name']}:", 1)[1].split("\n")[1]
        assert "harmoniser" in block and "views" not in block
