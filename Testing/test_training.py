"""The training engine: losses, logs, config files, resume after a kill, DDP, export.

Everything runs on a tiny dataset (6 phantom cases, 16^3 targets, 16^2 DRRs) built once per
module through ``data.prepare_dataset``, with the narrowest model widths, on the CPU.
"""
from __future__ import annotations

import csv
import json
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from XRayToCTLib import training
from XRayToCTLib.cli import main
from XRayToCTLib.drr import hu_to_mu
from XRayToCTLib.errors import InputError
from XRayToCTLib.training import TrainConfig, export_run, load_checkpoint, train
from XRayToCTLib.training.distributed import Dist
from XRayToCTLib.training.engine import Engine, views_tensor
from XRayToCTLib.training.losses import (AdversarialLoss, ProjectionLoss, ReconstructionLoss,
                                         sample_points)

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SIZE = 16
# the narrowest widths: a test is about the engine, not about the networks
GAN_CFG = {"stem_channels": 4, "growth_rate": 4, "bn_size": 2, "encoder_blocks": [1, 1, 1],
           "decoder_channels": [4, 4, 4, 4], "decoder_blocks": [1, 1, 1, 0],
           "fusion_blocks": [1, 1, 1, 0], "head_kernel": 3}
INR_CFG = {"stem_channels": 4, "encoder_channels": [4, 8], "hidden": 8, "pe_frequencies": 2}


def _model_config(name: str) -> dict:
    """The narrowest widths, keeping only the keys the model knows."""
    import importlib
    from XRayToCTLib.models import MODELS
    want = GAN_CFG if name.startswith("x2ct") else INR_CFG
    known = getattr(importlib.import_module(MODELS[name].__module__), "DEFAULTS")
    assert set(want) <= set(known), set(want) - set(known)
    return dict(want)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    from XRayToCTLib.data import prepare_dataset
    from XRayToCTLib.dataset import CaseDataset
    root = tmp_path_factory.mktemp("train-data") / "ds"
    prepare_dataset(root, phantoms=6, size=SIZE, pixels=SIZE, drr_spacing=8.0,
                    splits=(0.5, 0.5, 0.0), seed=0)
    assert len(CaseDataset(root, "train")) >= 2 and len(CaseDataset(root, "val")) >= 1
    return root


def _config(dataset: Path, out: Path, model: str = "x2ct_gan", **kw) -> TrainConfig:
    base = dict(model=model, data=str(dataset), out=str(out), epochs=2, batch_size=2, lr=1e-3,
                model_config=_model_config(model), seed=0, device="cpu",
                discriminator_config={"disc_channels": 4, "disc_layers": 2})
    base.update(kw)
    return TrainConfig(**base)


def _log(run: Path) -> list[dict]:
    with open(run / "log.csv", newline="") as fh:
        return list(csv.DictReader(fh))


# -- settings ------------------------------------------------------------------------------

def test_defaults_are_the_seed_values():
    cfg = TrainConfig()
    assert (cfg.lr, cfg.batch_size, cfg.epochs, tuple(cfg.betas)) == (3e-5, 1, 170, (0.5, 0.99))
    gan = cfg.replace(model="x2ct_gan").resolved()
    assert (gan.lambda_adv, gan.lambda_rec, gan.lambda_proj, gan.recon_loss) == (0.1, 10.0, 10.0, "l1")
    inr = cfg.replace(model="cnn_inr").resolved()
    assert (inr.lambda_adv, inr.recon_loss) == (0.0, "mse")
    assert inr.lr_d == inr.lr
    with pytest.raises(ValueError, match="amp"):
        cfg.replace(amp="fp8").resolved()
    with pytest.raises(ValueError, match="epochs"):
        cfg.replace(epochs=0).resolved()


def test_yaml_round_trip_and_overrides(tmp_path):
    cfg = TrainConfig(model="cnn_inr", data="d", out="o", model_config={"hidden": 8}, lr=1e-4)
    path = cfg.to_yaml(tmp_path / "c.yaml")
    assert TrainConfig.from_yaml(path) == cfg
    again = TrainConfig.from_yaml(path, epochs=3, lr=5e-4)
    assert (again.epochs, again.lr, again.model_config) == (3, 5e-4, {"hidden": 8})
    (tmp_path / "bad.yaml").write_text("epochs: 2\nlearning_rate: 1\n")
    with pytest.raises(InputError, match="bad.yaml.*learning_rate"):
        TrainConfig.from_yaml(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(InputError, match="mapping"):
        TrainConfig.from_yaml(tmp_path / "list.yaml")


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_are_valid(path):
    from XRayToCTLib.models import build_discriminator, build_model
    cfg = TrainConfig.from_yaml(path).resolved()  # an init package's settings are read
    size = cfg.size or 128  # None: the dataset's
    assert size in (64, 128) and not cfg.data and not cfg.out
    if cfg.model == "pix2pix":  # a 2D translation model (images in, images out): no grid
        from XRayToCTLib.models.pix2pix import build_pix2pix_discriminator
        with torch.device("meta"):
            model = build_model(cfg.model, {**cfg.model_config, "image_size": size})
            build_pix2pix_discriminator(model.spec, cfg.discriminator_config)
        assert model.spec.name == cfg.model and cfg.lambda_proj == 0
        return
    with torch.device("meta"):  # the architecture only, no memory for the weights
        model = build_model(cfg.model, {**cfg.model_config, "image_size": size,
                                        "output_size": size})
        if cfg.lambda_adv > 0:
            build_discriminator({**model.spec.config, **cfg.discriminator_config})
    assert model.spec.name == cfg.model and model.spec.output_size == size
    if cfg.points_per_step:
        assert hasattr(model, "query")


def test_soft_mu_is_hu_to_mu_with_a_gradient():
    """The projection loss's attenuation (the DRR's soft form)."""
    hu = torch.tensor([-1000.0, -900.0, -600.0, 0.0, 40.0, 1000.0], requires_grad=True)
    mu = hu_to_mu(hu, soft=True, gate_hu=10.0)
    assert torch.allclose(mu, hu_to_mu(hu.detach()), atol=1e-6)
    edge = torch.tensor([-800.0], requires_grad=True)
    hu_to_mu(edge, soft=True, gate_hu=10.0).sum().backward()
    assert edge.grad.item() > 0  # the hard threshold has none


def test_loss_pieces():
    """Each loss on its own: reconstruction (l1/mse), projection against the rendered target,
    least-squares adversarial terms of a patch discriminator."""
    pred, target = torch.zeros(2, 1, 4, 4, 4), torch.full((2, 1, 4, 4, 4), 0.5)
    assert float(ReconstructionLoss("l1")(pred, target)) == pytest.approx(0.5)
    assert float(ReconstructionLoss("mse")(pred, target)) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="l1 or mse"):
        ReconstructionLoss("huber")

    class Identity:  # model intensity = HU
        def to_hu(self, x):
            return x

    class Rendered:  # a stand-in DRR: the mean HU along one axis
        def normalized(self, hu):
            return hu.mean(dim=2)

    proj = ProjectionLoss(Rendered(), Identity(), reference="target")
    vol = torch.rand(2, 1, 4, 4, 4, requires_grad=True)
    assert float(proj(vol, None, vol.detach()).detach()) == 0.0
    loss = proj(vol, None, torch.zeros_like(vol))
    loss.backward()
    assert float(loss.detach()) > 0 and vol.grad is not None
    views = torch.rand(2, 1, 4, 4)
    to_input = ProjectionLoss(Rendered(), Identity(), "input")(vol.detach(), views, None)
    assert float(to_input) == pytest.approx(
        float(torch.nn.functional.l1_loss(vol.detach().mean(dim=2), views)))

    adv = AdversarialLoss()
    disc = lambda volume, views: [volume.mean(dim=(2, 3, 4), keepdim=True)]  # noqa: E731
    real, fake = torch.ones(1, 1, 4, 4, 4), torch.zeros(1, 1, 4, 4, 4)
    v = torch.zeros(1, 2, 4, 4)
    assert float(adv.discriminator_loss(disc, real, fake, v)) == pytest.approx(0.0)
    assert float(adv.generator_loss(disc, fake, v)) == pytest.approx(1.0)  # (D - 1)^2


# -- training --------------------------------------------------------------------------------

def test_gan_training_lowers_the_loss_and_logs(dataset, tmp_path):
    run = tmp_path / "gan"
    messages = []
    out = train(_config(dataset, run, epochs=4, val_every=2),
                progress=lambda f, m: messages.append((f, m)))
    assert out == run
    rows = _log(run)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert [int(r["step"]) for r in rows] == [2, 4, 6, 8]  # 3 train cases, batch 2
    assert list(rows[0]) == training.LOG_COLUMNS
    first, last = rows[0], rows[-1]
    assert float(last["loss_rec"]) < float(first["loss_rec"])
    assert float(last["loss_g"]) < float(first["loss_g"])
    for r in rows:
        assert float(r["loss_d"]) > 0 and float(r["loss_adv"]) > 0 and float(r["loss_proj"]) > 0
    # validation on epochs 2 and 4 only, brain-window metrics in [0, 1]
    assert rows[0]["val_ssim_whole"] == "" and rows[1]["val_ssim_whole"] != ""
    assert 0 < float(last["val_ssim_head"]) <= 1 and 0 < float(last["val_cosine_whole"]) <= 1
    assert messages[-1][0] == 1.0 and any("epoch 3/4" in m for _, m in messages)
    # run folder contents
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["lambda_adv"] == 0.1 and saved["size"] == SIZE and saved["resume"] is False
    last_ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    best_ckpt = load_checkpoint(run / "checkpoints" / "best.pt")
    assert (last_ckpt["epoch"], last_ckpt["step"]) == (4, 8)
    assert best_ckpt["epoch"] in (2, 4) and best_ckpt["best"] == max(
        float(r["val_ssim_head"]) for r in rows if r["val_ssim_head"])
    assert last_ckpt["discriminator"] and last_ckpt["opt_d"]["state"]
    # a second run into the same folder is refused, with one clear line
    with pytest.raises(InputError, match="already holds a training run"):
        train(_config(dataset, run))


def test_cnn_inr_trains_without_a_discriminator(dataset, tmp_path):
    threads, seen = torch.get_num_threads(), []
    run = train(_config(dataset, tmp_path / "inr", model="cnn_inr", epochs=1, threads=1),
                progress=lambda f, m: seen.append(torch.get_num_threads()))
    assert set(seen) == {1} and torch.get_num_threads() == threads  # the run's, then restored
    rows = _log(run)
    assert len(rows) == 1 and rows[0]["loss_d"] == "" and float(rows[0]["loss_proj"]) > 0
    assert load_checkpoint(run / "checkpoints" / "last.pt")["discriminator"] == {}


def test_bf16_autocast_runs(dataset, tmp_path):
    """The mixed-precision path (bf16 autocast; on CUDA it is the default). Run with the
    CNN-INR: the X2CT-GAN under CPU bf16 autocast gave a NaN loss in some runs and not others
    (same seed and data), a known limit of the CPU-only opt-in path."""
    run = train(_config(dataset, tmp_path / "amp", model="cnn_inr", epochs=1, amp="bf16"))
    rows = _log(run)
    assert len(rows) == 1 and np.isfinite(float(rows[0]["loss_g"]))
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert all(v.dtype == torch.float32 for v in state["model"].values() if v.is_floating_point())


def test_cnn_inr_on_random_points(dataset, tmp_path):
    """Seed 001's scheme: MSE on random points (no full grid without projection/adversary)."""
    cfg = _config(dataset, tmp_path / "pts", model="cnn_inr", points_per_step=256,
                  lambda_proj=0.0).resolved()
    engine = Engine(cfg, Dist("cpu"), None)
    # the sampled points are LPS millimetres: a target equal to x_LPS gives back x
    s = engine.size
    x_lps = torch.tensor(engine.grid.origin[0] + engine.grid.spacing[0] * np.arange(s),
                         dtype=torch.float32)
    target = x_lps.expand(2, 1, s, s, s).contiguous()  # array [z, y, x]: x along the last axis
    pts, values = sample_points(target, engine.grid, engine.points)
    assert pts.shape == (2, 256, 3) and values.shape == (2, 256)
    torch.testing.assert_close(values, pts[..., 0], rtol=0, atol=1e-3)
    lo, hi = engine.grid.corners().min(axis=0), engine.grid.corners().max(axis=0)
    assert float(pts.min()) >= lo.min() and float(pts.max()) <= hi.max()
    run = train(cfg.replace(epochs=2))
    rows = _log(run)
    assert len(rows) == 2 and float(rows[0]["loss_proj"]) == 0.0 and rows[0]["loss_d"] == ""
    with pytest.raises(Exception, match="query"):
        Engine(_config(dataset, tmp_path / "x", points_per_step=8).resolved(), Dist("cpu"),
               None)


def test_projection_loss_uses_the_renderer_at_the_dataset_geometry(dataset, tmp_path):
    """The loss is zero-ish for the ground truth itself, and large for a blank volume; it
    renders with the run's one DRR object (soft attenuation, the dataset's geometries)."""
    cfg = _config(dataset, tmp_path / "p").resolved()
    engine = Engine(cfg, Dist("cpu"), None)
    assert engine.projection.drr is engine.drr and engine.drr.attenuation == "soft"
    assert engine.drr.gate_hu == cfg.proj_gate_hu and engine.drr.views == engine.views
    batch = next(iter(engine._loader(engine.train_ds, train=True)))
    x = engine.normalize(views_tensor(batch, engine.views, "cpu"))
    gt = engine.model_target(batch)
    good = engine.projection(gt, x, gt).item()
    blank = engine.projection(torch.zeros_like(gt), x, gt).item()
    assert good < 0.1 < blank
    assert good < blank / 5


# -- resume after a kill ---------------------------------------------------------------------

def _slow_worker(cfg_path: str, delay: float) -> None:
    torch.set_num_threads(1)
    sys.path.insert(0, str(HERE))
    import train_helper
    train_helper.main(["slow", cfg_path, str(delay)])


def test_resume_after_kill(dataset, tmp_path):
    run = tmp_path / "killed"
    cfg = _config(dataset, run, epochs=3, val_every=1)
    cfg_path = cfg.to_yaml(tmp_path / "run.yaml")
    # a forked child process (no second interpreter start-up), killed with SIGKILL as soon as
    # its first checkpoint exists; train_helper.py's "slow" mode does the same from a shell
    import multiprocessing
    proc = multiprocessing.get_context("fork").Process(
        target=_slow_worker, args=(str(cfg_path), 0.4), daemon=True)
    proc.start()
    last = run / "checkpoints" / "last.pt"
    deadline = time.time() + 120
    try:
        while not last.exists():
            assert proc.exitcode is None, f"the training process ended early ({proc.exitcode})"
            assert time.time() < deadline, "no checkpoint within 120 s"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.join(timeout=60)
    assert proc.exitcode == -signal.SIGKILL
    killed = load_checkpoint(last)
    assert 1 <= killed["epoch"] < 3, "the run ended before it could be killed"
    rows_before = _log(run)
    assert len(rows_before) >= killed["epoch"]
    # a plain rerun is refused; --resume continues
    code = main(["train", "--out", str(run), "--config", str(cfg_path)])
    assert code == 2
    code = main(["train", "--out", str(run), "--resume"])  # settings from RUN_DIR/config.yaml
    assert code == 0
    done = load_checkpoint(last)
    assert (done["epoch"], done["step"]) == (3, 6)
    rows = _log(run)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert [int(r["step"]) for r in rows] == [2, 4, 6]
    for a, b in zip(rows_before[:killed["epoch"]], rows):
        assert a == b  # the log before the kill is kept as it was


def test_resume_continues_exactly(dataset, tmp_path):
    """2 epochs + resume to 3 gives the weights of 3 epochs in one go."""
    one = train(_config(dataset, tmp_path / "a", epochs=3, val_every=0))
    train(_config(dataset, tmp_path / "b", epochs=2, val_every=0))
    two = train(_config(dataset, tmp_path / "b", epochs=3, val_every=0, resume=True))
    a = load_checkpoint(one / "checkpoints" / "last.pt")
    b = load_checkpoint(two / "checkpoints" / "last.pt")
    assert b["step"] == a["step"]
    for k, v in a["model"].items():
        torch.testing.assert_close(b["model"][k], v, rtol=1e-5, atol=1e-6, msg=k)


# -- DDP ----------------------------------------------------------------------------------------

def _free_port() -> int:
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ddp_worker(rank: int, cfg_path: str, out: str, port: int) -> None:
    """One process of a 2-process run, initialised from the env vars torchrun sets."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2",
                      RANK=str(rank), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    sys.path.insert(0, str(HERE))
    import train_helper
    train_helper.main(["ddp", cfg_path, out])


@pytest.mark.parametrize("model,extra", [("x2ct_gan", {}),
                                         ("cnn_inr", {"points_per_step": 64, "lambda_proj": 0.0})],
                         ids=["gan", "inr-points"])
def test_ddp_two_processes_agree(dataset, tmp_path, model, extra):
    """DDP on CPU (gloo): two forked processes, as torchrun would start them (the helper
    also runs under ``python -m torch.distributed.run --nproc_per_node 2``). With random
    points (``cnn_inr``) the gradients are averaged by the engine, not by DDP."""
    import torch.multiprocessing as mp
    run = tmp_path / "ddp"
    cfg_path = _config(dataset, run, model=model, epochs=1, batch_size=1, val_every=1,
                       **extra).to_yaml(tmp_path / "ddp.yaml")
    out = tmp_path / "ranks"
    out.mkdir()
    mp.start_processes(_ddp_worker, args=(str(cfg_path), str(out), _free_port()), nprocs=2,
                       join=True, start_method="fork")
    r0 = json.loads((out / "rank0.json").read_text())
    r1 = json.loads((out / "rank1.json").read_text())
    assert (r0["world"], r1["world"]) == (2, 2)
    # 3 training cases over 2 ranks: 2 steps per rank (the sampler pads), 1 epoch
    assert r0["steps_per_epoch"] == 2 and r0["step"] == r1["step"] == 2
    assert r0["generator"]["sha256"] == r1["generator"]["sha256"]
    assert r0["discriminator"] == r1["discriminator"]
    assert (r0["discriminator"] is None) == (model == "cnn_inr")
    # rank 0 wrote the run; its checkpoint holds the same weights
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    assert ckpt["world_size"] == 2 and ckpt["step"] == 2
    total = sum(float(v.double().sum()) for v in ckpt["model"].values() if v.is_floating_point())
    assert total == pytest.approx(r0["generator"]["sum"], rel=1e-9, abs=1e-9)
    assert len(_log(run)) == 1


# -- export ---------------------------------------------------------------------------------------

def test_export_round_trip(dataset, tmp_path):
    run = train(_config(dataset, tmp_path / "run", epochs=1))
    out = export_run(run, tmp_path / "model.safetensors", title="tiny test model")
    from XRayToCTLib.models import build_model, load_package
    model, info = load_package(out)
    ckpt = load_checkpoint(run / "checkpoints" / "best.pt")
    ref = build_model("x2ct_gan", json.loads(ckpt["model_config"]))
    ref.load_state_dict(ckpt["model"])
    ref.eval()
    model.eval()
    x = torch.rand(1, 2, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x))
    text = json.dumps(info, default=str)
    assert "tiny test model" in text and "phantom" in text and "ssim_head" in text
    # the package travels: no path of the training machine in its header, folder names only
    header = json.dumps({k: v for k, v in info.items() if k != "path"}, default=str)  # path: where it was loaded from
    assert str(tmp_path) not in header and info["training_data"]["path"] == dataset.name
    assert info["training"]["settings"]["out"] == "run"
    assert model.spec.output_size == SIZE and tuple(model.spec.views) == ("ap", "lateral")
    # the CLI does the same
    code = main(["export", str(run), "--out", str(tmp_path / "cli.safetensors"), "--checkpoint",
                 "last"])
    assert code == 0 and (tmp_path / "cli.safetensors").stat().st_size > 0


# -- the command line ---------------------------------------------------------------------------

def test_cli_yaml_config_with_flag_overrides(dataset, tmp_path, capsys):
    cfg = {"model": "x2ct_gan", "data": str(dataset), "epochs": 5, "batch_size": 3,
           "lr": 1e-3, "model_config": _model_config("x2ct_gan"), "lambda_adv": 0.0,
           "val_every": 0}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    code = main(["train", "--config", str(path), "--out", str(run), "--epochs", "1",
                 "--device", "cpu", "--seed", "3"])
    assert code == 0, capsys.readouterr().err
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert (saved["epochs"], saved["batch_size"], saved["seed"], saved["lambda_adv"]) == (1, 3, 3, 0.0)
    assert saved["model_config"] == cfg["model_config"]
    rows = _log(run)
    assert len(rows) == 1 and rows[0]["loss_d"] == "" and int(rows[0]["step"]) == 1


def test_cli_missing_dataset_is_one_line(tmp_path, capsys):
    code = main(["train", "--model", "x2ct_gan", "--data", str(tmp_path / "nope"),
                 "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: ") and "nope" in err
    assert "no such file or folder" in err  # checked before the heavy imports
    (tmp_path / "empty").mkdir()
    code = main(["train", "--model", "x2ct_gan", "--data", str(tmp_path / "empty"),
                 "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "manifest.json" in err and err.count("\n") == 1


def test_cli_bad_model_and_missing_run(dataset, tmp_path, capsys):
    code = main(["train", "--model", "nope", "--data", str(dataset), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and "unknown model" in err and err.count("\n") == 1
    code = main(["export", str(tmp_path / "none"), "--out", str(tmp_path / "m.safetensors")])
    err = capsys.readouterr().err
    assert code == 2 and "none: no such file or folder" in err  # checked before the heavy imports
    code = main(["train", "--out", str(tmp_path / "none"), "--resume", "--data", str(dataset)])
    err = capsys.readouterr().err
    assert code == 2 and "nothing to resume" in err


def test_checkpoint_is_not_unpickled(tmp_path):
    bad = tmp_path / "evil.pt"
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    bad.write_bytes(pickle.dumps({"format": training.CHECKPOINT_FORMAT, "x": Evil()}, protocol=2))
    with pytest.raises(InputError, match="not a readable training checkpoint"):
        load_checkpoint(bad)


# -- fine-tuning from a model package (init) ------------------------------------------------------

def _package(dataset: Path, tmp_path: Path, model: str) -> Path:
    """A tiny package of ``model`` trained one epoch on the test dataset (16^3)."""
    run = train(_config(dataset, tmp_path / f"pkg-{model}", model=model, epochs=1, val_every=0))
    return export_run(run, tmp_path / f"{model}.safetensors", checkpoint="last")


def test_init_fine_tunes_a_cnn_inr_package_at_another_size(dataset, tmp_path, capsys):
    """A 16^3 CNN-INR package fine-tuned at 32^3 (the INR samples points: its weights fit any
    output size): the model and its settings come from the package, its weights are the
    start, and the package is recorded in config.yaml, the checkpoint and the export."""
    from XRayToCTLib.models import load_package
    pkg = _package(dataset, tmp_path, "cnn_inr")
    ref, info = load_package(pkg)
    cfg = TrainConfig(init=str(pkg), data=str(dataset), out=str(tmp_path / "e"),
                      device="cpu", size=2 * SIZE, points_per_step=64).resolved()
    assert cfg.model == "cnn_inr" and cfg.model_config["hidden"] == INR_CFG["hidden"]
    engine = Engine(cfg, Dist("cpu"), None)
    assert engine.model.spec.output_size == 2 * SIZE
    assert engine.model.spec.field_mm == pytest.approx(ref.spec.field_mm)
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(engine.model.state_dict()[k], v, rtol=0, atol=0, msg=k)
    assert engine.init_record["sha256"] == info["sha256"]
    # the command line: no --model, another size
    run = tmp_path / "ft"
    code = main(["train", "--init", str(pkg), "--data", str(dataset), "--out", str(run),
                 "--size", str(2 * SIZE), "--epochs", "1", "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert (saved["model"], saved["init"], saved["size"]) == ("cnn_inr", str(pkg), 2 * SIZE)
    assert saved["model_config"]["hidden"] == INR_CFG["hidden"]
    out = export_run(run, tmp_path / "ft.safetensors")
    model, ft = load_package(out)
    assert model.spec.output_size == 2 * SIZE
    assert model.spec.output_spacing == pytest.approx(ref.spec.output_spacing / 2)
    assert ft["training"]["init"]["sha256"] == info["sha256"]
    assert ft["training"]["init"]["file"] == pkg.name and str(tmp_path) not in json.dumps(ft["training"])
    with torch.no_grad():
        assert model(torch.rand(1, 2, SIZE, SIZE)).shape == (1, 1, 2 * SIZE, 2 * SIZE, 2 * SIZE)
    # a resumed fine-tuning needs its checkpoint, not the package any more
    pkg.unlink()
    code = main(["train", "--out", str(run), "--resume", "--epochs", "2"])
    assert code == 0, capsys.readouterr().err
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 2
    assert json.loads(load_checkpoint(run / "checkpoints" / "last.pt")["init"])["sha256"] == info["sha256"]


def test_init_refuses_another_architecture_in_one_line(dataset, tmp_path, capsys):
    gan = _package(dataset, tmp_path, "x2ct_gan")
    base = ["--data", str(dataset), "--epochs", "1", "--device", "cpu"]
    code = main(["train", "--init", str(gan), "--model", "cnn_inr", "--out",
                 str(tmp_path / "a"), *base])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "holds the model x2ct_gan, not cnn_inr" in err
    # other layers than the package's
    with pytest.raises(InputError, match="growth_rate"):
        TrainConfig(init=str(gan), model_config={"growth_rate": 8}).resolved()
    # the X2CT-GAN's weights depend on the sizes: 16^3 weights do not fit a 32^3 run
    code = main(["train", "--init", str(gan), "--size", str(2 * SIZE), "--out",
                 str(tmp_path / "b"), *base])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "weights do not fit" in err
    assert not (tmp_path / "b" / "checkpoints").exists()
    # only packages: a training checkpoint (a pickle) is not read
    ckpt = tmp_path / "pkg-x2ct_gan" / "checkpoints" / "last.pt"
    with pytest.raises(InputError, match="not a safetensors model package"):
        TrainConfig(init=str(ckpt)).resolved()
    with pytest.raises(InputError, match="unknown model 'nope'"):
        TrainConfig(init="nope").resolved()


def test_init_from_the_catalog(dataset, tmp_path):
    """A catalog name: the shipped 64^3 CNN-INR starts a run on 16^2 views (its SHA-256
    checked at load)."""
    from XRayToCTLib.models import catalog, load_model
    if "cnn_inr_phantom64" not in [e["name"] for e in catalog()]:
        pytest.skip("the catalog has no cnn_inr_phantom64")
    cfg = TrainConfig(init="cnn_inr_phantom64", data=str(dataset), out=str(tmp_path / "c"),
                      device="cpu").resolved()
    assert cfg.model == "cnn_inr" and "geometry" not in cfg.model_config
    engine = Engine(cfg, Dist("cpu"), None)
    ref, _ = load_model("cnn_inr_phantom64")
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(engine.model.state_dict()[k], v, rtol=0, atol=0, msg=k)
    assert engine.init_record["catalog"] == "cnn_inr_phantom64"
    assert engine.model.spec.image_size == SIZE and engine.model.spec.output_size == SIZE


# -- speed: the same results, less work ------------------------------------------------------------

def test_a_loader_worker_gives_the_same_run(dataset, tmp_path):
    """One loader pass over all epochs, its worker reading ahead (workers=1), trains exactly
    as reading in the main process (the random points come from the same stream)."""
    kw = dict(model="cnn_inr", epochs=3, points_per_step=64, lambda_proj=0.0, val_every=2)
    a = train(_config(dataset, tmp_path / "w0", workers=0, **kw))
    b = train(_config(dataset, tmp_path / "w1", workers=1, **kw))
    sa = load_checkpoint(a / "checkpoints" / "last.pt")
    sb = load_checkpoint(b / "checkpoints" / "last.pt")
    for k, v in sa["model"].items():
        torch.testing.assert_close(sb["model"][k], v, rtol=0, atol=0, msg=k)
    assert [r["loss_g"] for r in _log(a)] == [r["loss_g"] for r in _log(b)]


def test_the_target_reference_is_rendered_once_per_case(dataset, tmp_path):
    """The ``target`` projection reference (the target's DRRs) is rendered once per case,
    not every step, and is what rendering it again gives."""
    cfg = _config(dataset, tmp_path / "ref", model="cnn_inr", epochs=2, val_every=0,
                  projection_reference="target").resolved()
    engine = Engine(cfg, Dist("cpu"), None)
    assert engine.projection.reference == "target"
    rendered = []
    render = engine.projection.render_reference
    engine.projection.render_reference = lambda t: rendered.append(t.shape[0]) or render(t)
    engine.run.mkdir(parents=True)
    engine.fit()
    assert engine.step == 4 and sum(rendered) == len(engine.train_ds) == 3
    batch = next(iter(engine._loader(engine.train_ds, train=True)))
    target = engine.model_target(batch)
    x = engine.normalize(views_tensor(batch, engine.views, "cpu"))
    torch.testing.assert_close(engine._projection_reference(batch, x, target), render(target))


def test_split_conv3d_is_the_same_convolution():
    from XRayToCTLib.models import build_discriminator, build_model
    from XRayToCTLib.training.cpu import SplitConv3d, fast_conv3d
    gen = torch.Generator().manual_seed(0)
    conv = torch.nn.Conv3d(4, 3, 3, padding=1)
    split = torch.nn.Conv3d(4, 3, 3, padding=1)
    split.load_state_dict(conv.state_dict())
    assert fast_conv3d(split) == 1 and isinstance(split, SplitConv3d)
    x = torch.rand(1, 4, 16, 12, 10, generator=gen, requires_grad=True)
    assert split._split(x) and not split._split(torch.rand(2, 4, 16, 12, 10))
    y0, y1 = conv(x), split(x)
    torch.testing.assert_close(y1, y0, rtol=1e-5, atol=1e-5)
    g = torch.rand(y0.shape, generator=gen)
    grads0 = torch.autograd.grad(y0, [x, conv.weight, conv.bias], g)
    grads1 = torch.autograd.grad(y1, [x, split.weight, split.bias], g)
    for a, b in zip(grads0, grads1):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
    strided = torch.nn.Conv3d(4, 3, 3, padding=1, stride=2)
    fast_conv3d(strided)
    assert not strided._split(x)  # other convolutions are nn.Conv3d's own
    # a generator keeps its weights and their names
    model = build_model("x2ct_gan", {**GAN_CFG, "image_size": SIZE, "output_size": SIZE})
    keys = list(model.state_dict())
    assert fast_conv3d(model) > 0 and list(model.state_dict()) == keys
    assert fast_conv3d(build_discriminator({"disc_channels": 4, "disc_layers": 2})) > 0
