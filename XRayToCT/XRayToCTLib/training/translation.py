"""Training a 2D translation model (``pix2pix``, seed 003) by the same engine.

:class:`TranslationEngine` is an :class:`~.engine.Engine` whose data are a pairs folder
(:class:`~XRayToCTLib.pairs.PairDataset`: normalised ``[B, 1, P, P]`` input and target
images), whose generator is the Pix2Pix U-Net and whose discriminator is the conditional 2D
PatchGAN (:mod:`XRayToCTLib.models.pix2pix`). Everything else is the engine's own: the
epoch loop, the data order, checkpoints (``last.pt``, ``best.pt``), resume, the CSV log,
TensorBoard, DDP, mixed precision and export (:func:`~.export.export_run`).

Losses (Isola et al. 2017, the Pix2Pix paper; seed 003 names the method but no settings):

* ``loss_d``: the discriminator's ``0.5 (GAN(D(x, y), real) + GAN(D(x, G(x)), fake))``, the
  conditional GAN with the paper's halved discriminator objective;
* ``loss_adv``: ``GAN(D(x, G(x)), real)``, the generator's adversarial term;
* ``loss_rec``: ``|G(x) - y|_1``, mean over the pixels;
* ``loss_g = lambda_adv * loss_adv + lambda_rec * loss_rec`` with the paper's
  ``lambda_adv = 1``, ``lambda_rec = 100`` (:mod:`.config`'s pix2pix defaults);
  there is no projection term (``lambda_proj`` must be 0).

``GAN`` is binary cross-entropy on the patch logits (the paper's vanilla GAN;
``discriminator_config: {gan_loss: least_squares}`` gives LSGAN).

Validation (every ``val_every`` epochs, the best checkpoint by ``best_metric``): SSIM (2D,
Gaussian window, :func:`~XRayToCTLib.metrics.ssim`), PSNR (data range 1) and cosine
similarity of the output against the target, both in [0, 1], over the whole image
(``*_whole``) and over the object (``*_head``: the pixels where the target exceeds
:data:`OBJECT_THRESHOLD`, the head's shadow on the detector).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .. import models
from ..errors import InputError, XRayToCTError
from ..io import to_jsonable
from ..metrics import cosine, psnr, ssim
from ..models.pix2pix import PIX2PIX_DISC_DEFAULTS, build_pix2pix_discriminator
from ..pairs import PairDataset, load_pairs_manifest
from ..progress import ProgressCallback
from .checkpoint import seed_everything
from .config import LOSS_NAMES, VAL_METRICS, TrainConfig
from .distributed import Dist, unwrap
from .engine import Engine, check_dataset
from .losses import AdversarialLoss, ReconstructionLoss

__all__ = ["TranslationEngine", "OBJECT_THRESHOLD", "translation_metrics", "translation_record"]

OBJECT_THRESHOLD = 0.02
"""Target pixels above this (normalised [0, 1]) are the object (``*_head`` metrics)."""


def translation_metrics(pred: torch.Tensor, target: torch.Tensor
                        ) -> dict[str, torch.Tensor]:
    """SSIM, PSNR and cosine of ``[B, 1, P, P]`` images in [0, 1] against their targets, per
    item ``[B]``: ``<metric>_whole`` and ``<metric>_head`` (the target's object,
    :data:`OBJECT_THRESHOLD`)."""
    mask = target > OBJECT_THRESHOLD
    out: dict[str, torch.Tensor] = {}
    for region, m in (("whole", None), ("head", mask)):
        out[f"ssim_{region}"] = ssim(pred, target, data_range=1.0, mask=m)
        out[f"psnr_{region}"] = psnr(pred, target, data_range=1.0, mask=m)
        out[f"cosine_{region}"] = cosine(pred, target, mask=m)
    return out


def _description(root: Path, ds: PairDataset) -> dict[str, Any]:
    man = load_pairs_manifest(root)
    keep = {k: man[k] for k in ("kind", "version", "pixels", "input_domain", "target_domain",
                                "source", "per_ct", "seed", "settings_ranges", "description")
            if k in man}
    keep["split"] = {s: len(PairDataset(root, s, ds.pixels)) if (root / s).is_dir() else 0
                     for s in ("train", "val", "test")}
    keep["path"] = str(root.resolve())  # a model package keeps only the folder's name
    return translation_record(to_jsonable(keep))


def translation_record(record: dict[str, Any]) -> dict[str, Any]:
    """A pairs folder's training record in the catalog's form: ``description`` (one
    sentence), ``sources`` (where the pairs came from), ``settings`` (how they were made),
    ``split`` (pairs per split), plus the manifest's own keys. Idempotent."""
    out = dict(record)
    split = out.get("split") or {}
    n = sum(v for v in split.values() if isinstance(v, int))
    src, dst = out.get("input_domain", "input"), out.get("target_domain", "target")
    made = (f", {out['per_ct']} per CT and view drawn with random physics, from the CTs of "
            f"{out['source']}" if out.get("per_ct") and out.get("source") else "")
    out.setdefault("description", f"{n} pairs of {out.get('pixels', '?')}^2 images, "
                                  f"{src} -> {dst}{made}")
    out.setdefault("sources", {k: out[k] for k in ("source", "input_domain", "target_domain")
                               if k in out})
    out.setdefault("settings", {k: out[k] for k in ("pixels", "per_ct", "seed", "settings_ranges")
                                if k in out})
    return out


class TranslationEngine(Engine):
    """One training run of a 2D translation model (see the module doc)."""

    def __init__(self, cfg: TrainConfig, dist: Dist, progress: ProgressCallback | None,
                 *, load_init: bool = True):
        self.cfg, self.dist, self.progress = cfg, dist, progress
        self.device = dist.device
        self.run = Path(cfg.out)
        root = check_dataset(cfg.data)
        if cfg.init:
            raise XRayToCTError(f"fine-tuning (init) is not available for {cfg.model}: "
                                f"train it from random weights")
        if float(cfg.lambda_proj) > 0:
            raise XRayToCTError(f"{cfg.model} has no projection loss: set lambda_proj to 0")
        if cfg.points_per_step:
            raise XRayToCTError(f"points_per_step is for models with query(); {cfg.model} "
                                f"has none")
        self.train_ds = PairDataset(root, "train", cfg.size)
        if len(self.train_ds) == 0:
            raise InputError(root, "the pairs folder has no training pairs (train/)")
        pixels = self.train_ds.pixels
        val = PairDataset(root, "val", pixels)
        self.val_ds = val if len(val) else None
        self.data_size = self.size = int(pixels)
        self.description = _description(root, self.train_ds)
        man = self.train_ds.manifest
        domains = {k: str(man[k]) for k in ("input_domain", "target_domain") if man.get(k)}
        self.model_config = {**domains, **cfg.model_config, "image_size": int(pixels)}
        seed_everything(cfg.seed)
        try:
            self.model = models.build_model(cfg.model, dict(self.model_config)).to(self.device)
        except ValueError as err:
            raise XRayToCTError(f"invalid model_config for {cfg.model}: {err}") from err
        self.init_record = None
        self.views = ()
        spec = self.model.spec
        self.reconstruction = ReconstructionLoss(cfg.recon_loss)
        self.adversarial = None
        self.disc = None
        self.disc_config = {**PIX2PIX_DISC_DEFAULTS, **cfg.discriminator_config}
        if cfg.lambda_adv > 0:
            try:
                self.disc = build_pix2pix_discriminator(spec, self.disc_config).to(self.device)
            except ValueError as err:
                raise XRayToCTError(str(err)) from err
            self.adversarial = AdversarialLoss(self.disc_config["gan_loss"])
        self.points = 0
        self.need_grid = True
        self._setup_training()

    def train_step(self, batch) -> dict[str, float]:
        """One step of the discriminator (if any), then of the generator (module doc)."""
        cfg = self.cfg
        x = batch["input"].to(self.device, torch.float32)
        target = batch["target"].to(self.device, torch.float32)
        with self._autocast():
            pred = self.g_train(x).float()
        out = {k: float("nan") for k in LOSS_NAMES}  # the terms this model has are set below
        if self.adversarial is not None:
            out["loss_d"] = self._discriminator_step(target, pred, x)
        rec = self.reconstruction(pred, target)
        loss = cfg.lambda_rec * rec
        if self.adversarial is not None:
            self.disc.requires_grad_(False)
            adv = self.adversarial.generator_loss(self.disc, pred, x, self._autocast)
            loss = loss + cfg.lambda_adv * adv
            out["loss_adv"] = float(adv.detach())
        self.opt_g.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.opt_g)
        self.scaler.update()
        if self.disc is not None:
            self.disc.requires_grad_(True)
        if not torch.isfinite(loss.detach()):
            raise XRayToCTError(f"training diverged at step {self.step + 1}: the loss is "
                                f"{float(loss)} (lower the learning rate, or turn mixed "
                                f"precision off)")
        out.update(loss_g=float(loss.detach()), loss_rec=float(rec.detach()))
        return out

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Mean SSIM, PSNR, cosine (whole image and object) over the validation pairs."""
        model = unwrap(self.model)
        model.eval()
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        try:
            for batch in self._loader(self.val_ds, train=False):
                x = batch["input"].to(self.device, torch.float32)
                with self._autocast():
                    pred = model(x).float()
                res = translation_metrics(pred, batch["target"].to(self.device, torch.float32))
                for key, v in res.items():
                    if key.split("_")[0] not in VAL_METRICS:
                        continue
                    v = v.double().reshape(-1)
                    v = v[torch.isfinite(v)]
                    sums[key] = sums.get(key, 0.0) + float(v.sum())
                    counts[key] = counts.get(key, 0) + int(v.numel())
        finally:
            model.train()
        return {k: sums[k] / counts[k] for k in sums if counts[k]}
