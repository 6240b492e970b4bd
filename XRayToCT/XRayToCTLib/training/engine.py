"""The training loop: one run built from a :class:`~.config.TrainConfig` (:class:`Engine`)
and :func:`train`, which runs it.

Optimiser: Adam, batch size 1, learning rate 3e-5 for both models (seed 001: "Adam
optimizer (batch size = 1). Learning rates were set to 3 × 10−5 for the CNN–INR and for the
GAN"), 170 epochs (seed 001); betas (0.5, 0.99) as in X2CT-GAN (Ying et al., CVPR 2019, the
design seeds 001 and 004 follow; it used lr 2e-4). The losses are :mod:`.losses`'.

Engineering: deterministic seeds (the data order of epoch ``e`` is a function of ``seed``
and ``e`` only); validation every ``val_every`` epochs with
:func:`~XRayToCTLib.metrics.batch_metrics` (SSIM, PSNR, cosine in the brain window, over
the whole volume — the seeds' protocol — and inside the head), the best checkpoint kept;
checkpoints (:mod:`.checkpoint`) written atomically; ``resume`` continues exactly after the
last checkpoint (weights, optimisers, gradient scaler, epoch/step, RNG states, the log);
PyTorch DDP under ``torchrun`` (:mod:`.distributed`; ``DistributedSampler``, rank 0
writes); mixed precision (bf16/fp16 autocast) and ``torch.compile`` on CUDA as settings; a
CSV log (:data:`~.config.LOG_COLUMNS`) and TensorBoard events when ``tensorboard`` is
installed.
"""
from __future__ import annotations

import csv
import io
import itertools
import json
import math
import os
import random
import time
import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from .. import models
from ..dataset import CaseDataset
from ..drr import DRR, normalize_views
from ..errors import InputError, XRayToCTError
from ..io import atomic_write, to_jsonable
from ..metrics import batch_metrics
from ..models.discriminator import DISC_DEFAULTS
from ..models.pix2pix import TRANSLATION_KIND
from ..progress import ProgressCallback, report
from .checkpoint import (CHECKPOINT_FORMAT, load_checkpoint, rng_state, save_checkpoint,
                         seed_everything, set_rng_state)
from .config import LOG_COLUMNS, LOSS_NAMES, VAL_METRICS, VAL_REGIONS, TrainConfig
from .cpu import fast_conv3d
from .distributed import Dist, unwrap
from .finetune import load_init_weights
from .losses import (AdversarialLoss, PerceptualLoss, ProjectionLoss, ReconstructionLoss,
                     sample_points)

__all__ = ["Engine", "train", "check_dataset", "views_tensor", "view_statistics"]


# ----------------------------------------------------------------------------------------
# the data
# ----------------------------------------------------------------------------------------

def check_dataset(root: str) -> Path:
    """The dataset folder, or an :class:`InputError` saying what is wrong with it."""
    if not root:
        raise InputError(None, "no dataset given (a folder made by the data preparation)")
    path = Path(root)
    if not path.is_dir():
        raise InputError(path, "dataset folder not found (datasets are made by the data "
                         "preparation)")
    if not (path / "manifest.json").is_file():
        raise InputError(path, "not a dataset: manifest.json is missing (datasets are made "
                         "by the data preparation)")
    return path


def _data_description(ds: CaseDataset, root: Path) -> dict[str, Any]:
    """What the model was trained on, from the dataset manifest (JSON-friendly)."""
    man = dict(ds.manifest)
    keep = {k: man[k] for k in ("kind", "version", "size", "spacing", "pixels",
                                "field_of_view_mm", "window", "sources", "settings", "drr",
                                "settings_key", "created", "complete") if k in man}
    split = man.get("split")
    if isinstance(split, dict):  # case ids per split, and the ratios
        keep["split"] = {k: (len(v) if isinstance(v, list) else v) for k, v in split.items()}
        keep["train_cases"] = sorted(split.get("train", []))
    keep["path"] = str(root.resolve())  # a model package keeps only the folder's name
    return to_jsonable(keep)


def views_tensor(batch: dict, views: tuple[str, ...], device) -> torch.Tensor:
    """Stack the batch's DRRs in the model's view order: ``[B, V, P, P]``."""
    return torch.cat([batch[v] for v in views], dim=1).to(device, torch.float32)


class CaseTargets:
    """A case's target on the run's output grid, made where the data loader reads the case
    (in its worker processes when it has any, off the training loop): the CT resampled
    (trilinear, the same field of view) when the run's size differs from the dataset's,
    and, with ``intensity`` (the training batches), in the model's intensity as
    ``"target"`` instead of ``"ct"`` (HU); without (validation), ``"ct"`` in HU.
    Picklable: a size and a mapping name."""

    def __init__(self, size: int, intensity: str | None = None):
        self.size, self.intensity = int(size), intensity

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        ct = item.pop("ct").to(torch.float32)
        if tuple(ct.shape[-3:]) != (self.size,) * 3:
            ct = F.interpolate(ct[None], size=(self.size,) * 3, mode="trilinear",
                               align_corners=False)[0]
        if self.intensity is None:
            item["ct"] = ct
        else:
            item["target"] = models.get_mapping(self.intensity).to_model(ct)
        return item


class _EpochBatches(Sampler):
    """The batches of epochs ``start .. stop - 1`` one after the other: each epoch is
    ``sampler`` (a ``DistributedSampler``) at that epoch, cut into ``batch_size`` batches (the
    last one of an epoch may be shorter, as a per-epoch loader gives)."""

    def __init__(self, sampler: DistributedSampler, batch_size: int, start: int, stop: int):
        self.sampler, self.batch_size = sampler, int(batch_size)
        self.start, self.stop = int(start), int(stop)

    def __len__(self) -> int:
        return max(self.stop - self.start, 0) * math.ceil(len(self.sampler) / self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        for epoch in range(self.start, self.stop):
            self.sampler.set_epoch(epoch)
            order = list(self.sampler)
            for i in range(0, len(order), self.batch_size):
                yield order[i:i + self.batch_size]


def view_statistics(ds: CaseDataset, views: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel mean and standard deviation ``[V, P, P]`` (float32) of the cases' views of
    ``ds`` (its split) after :func:`~XRayToCTLib.drr.normalize_views`, the models' input
    convention: the statistics of ``sxr2ct``'s likelihood image. Reads only the view files."""
    px = int(ds.pixels)
    total = torch.zeros(len(views), px, px, dtype=torch.float64)
    squares = torch.zeros_like(total)
    for cid in ds.ids:
        files = ds.manifest["cases"][cid]["files"]
        arrays = []
        for v in views:
            path = ds.root / "cases" / cid / files[v]
            try:
                arr = sitk.GetArrayFromImage(sitk.ReadImage(str(path), sitk.sitkFloat32))
            except RuntimeError as err:
                raise InputError(path, f"unreadable case file: "
                                 f"{str(err).strip().splitlines()[-1]}") from None
            if arr.shape != (px, px):
                raise InputError(path, f"shape {arr.shape} differs from the dataset's {(px, px)}")
            arrays.append(arr)
        x = normalize_views(torch.from_numpy(np.stack(arrays))[None])[0].double()
        total += x
        squares += x * x
    n = max(len(ds.ids), 1)
    mean = total / n
    std = (squares / n - mean * mean).clamp_min(0.0).sqrt()
    return mean.float(), std.float()


def _worker_init(worker_id: int) -> None:
    seed = torch.initial_seed() % (2 ** 32)
    np.random.seed(seed)
    random.seed(seed)
    torch.set_num_threads(1)


# ----------------------------------------------------------------------------------------
# the engine
# ----------------------------------------------------------------------------------------

class Engine:
    """One training run (built by :func:`train`): the data, the networks, their optimisers
    and losses, the precision and the process group. With ``cfg.init`` the generator starts
    from that package's weights (:mod:`.finetune`) unless ``load_init`` is false (a resumed
    run: its checkpoint holds the weights)."""

    def __init__(self, cfg: TrainConfig, dist: Dist, progress: ProgressCallback | None,
                 *, load_init: bool = True):
        self.cfg, self.dist, self.progress = cfg, dist, progress
        self.device = dist.device
        self.run = Path(cfg.out)
        root = check_dataset(cfg.data)
        self.train_ds = CaseDataset(root, split="train", exclude=cfg.exclude)
        if len(self.train_ds) == 0:
            raise InputError(root, "the dataset has no training cases")
        try:
            self.val_ds: CaseDataset | None = CaseDataset(root, split="val", exclude=cfg.exclude)
        except (InputError, ValueError, KeyError):
            self.val_ds = None
        ds = self.train_ds
        self.data_size = int(ds.size)
        self.size = int(cfg.size or ds.size)
        # the same field of view at another size
        self.spacing = float(ds.grid.spacing[0]) * self.data_size / self.size
        self.description = _data_description(ds, root)

        if cfg.model not in models.MODELS:
            raise InputError(None, f"unknown model {cfg.model!r}; choose one of "
                             f"{', '.join(sorted(models.MODELS))}")
        # the model is built for the dataset's detector, grid and DRR geometry
        self.model_config = {**cfg.model_config, "image_size": int(ds.pixels),
                             "output_size": self.size, "output_spacing": self.spacing,
                             "geometry": {v: g.to_dict() for v, g in ds.geometries.items()}}
        seed_everything(cfg.seed)
        try:
            self.model = models.build_model(cfg.model, dict(self.model_config)).to(self.device)
        except ValueError as err:
            raise XRayToCTError(f"invalid model_config for {cfg.model}: {err}") from err
        # what the generator started from (a package's record, or None: random weights)
        self.init_record: dict[str, Any] | None = None
        if cfg.init and load_init:
            self.init_record = load_init_weights(self.model, cfg.init)
        spec = self.model.spec
        self.views = tuple(spec.views)
        missing = [v for v in self.views if v not in ds.geometries]
        if missing:
            raise InputError(root, f"the dataset has no {', '.join(missing)} view(s), which "
                             f"{cfg.model} needs")
        if hasattr(self.model, "set_view_statistics") and self.init_record is None:
            # sxr2ct's likelihood image: per-pixel statistics of the training views (a
            # fine-tuned model keeps its package's; a resumed run's checkpoint has them)
            self.model.set_view_statistics(*view_statistics(self.train_ds, self.views))
        self.grid = spec.grid()  # S^3 canonical grid, centred on the origin
        self.mapping = models.get_mapping(spec.intensity)
        # the targets are made per case where the loader reads it (workers: off the loop),
        # and kept there when the training split fits in cache_mb (in each loader process)
        self.train_ds.transform = CaseTargets(self.size, spec.intensity)
        case_bytes = 4 * (self.size ** 3 + len(ds.geometries) * int(ds.pixels) ** 2)
        self.train_ds.cache_in_memory = (len(self.train_ds) * case_bytes * max(cfg.workers, 1)
                                         <= cfg.cache_mb * 2 ** 20)
        if self.val_ds is not None:
            self.val_ds.transform = CaseTargets(self.size)
        self.normalize = normalize_views  # the models' input convention

        # the losses; the run's one DRR chain, at the dataset's geometry on the output grid
        ref = cfg.projection_reference
        if ref == "auto":
            ref = "input" if getattr(self.mapping, "invertible", True) else "target"
        # (a diffusion model's projection term works on its own low-resolution grid)
        proj_grid = (self.model.training_grid() if hasattr(self.model, "diffusion_loss")
                     else self.grid)
        self.drr = DRR([ds.geometries[v] for v in self.views], proj_grid, attenuation="soft",
                       gate_hu=cfg.proj_gate_hu)
        self.projection = ProjectionLoss(self.drr, self.mapping, ref).to(self.device)
        self._reference: dict[str, torch.Tensor] = {}  # "target" reference DRRs, per case
        self.reconstruction = ReconstructionLoss(cfg.recon_loss)
        self.perceptual: PerceptualLoss | None = None
        self._perc_reference: dict[str, torch.Tensor] = {}  # the targets' DRRs, per case
        if cfg.lambda_perc > 0:
            self.perceptual = self._perceptual_loss(ds)
        self.adversarial: AdversarialLoss | None = None
        self.disc = None
        self.disc_config: dict[str, Any] = {}
        if cfg.lambda_adv > 0:
            unknown = sorted(set(cfg.discriminator_config) - set(DISC_DEFAULTS))
            if unknown:
                raise XRayToCTError(f"unknown discriminator_config key(s) {unknown}; valid: "
                                    f"{sorted(DISC_DEFAULTS)}")
            # the generator's inputs and grid (views, sizes, geometry), the PatchGAN's widths
            dcfg = {k: spec.config[k] for k in ("views", "image_size", "output_size",
                                                "output_spacing", "geometry") if k in spec.config}
            dcfg.update(cfg.discriminator_config)
            self.disc_config = dcfg
            self.disc = models.build_discriminator(dict(dcfg)).to(self.device)
            self.adversarial = AdversarialLoss()
        if self.device.type == "cpu":  # oneDNN for the one-case 3D convolutions (.cpu)
            fast_conv3d(self.model)
            fast_conv3d(self.disc)
        self.points = int(cfg.points_per_step)
        if self.points and not hasattr(self.model, "query"):
            raise XRayToCTError(f"points_per_step needs a model with query() (cnn_inr); "
                                f"{cfg.model} has none")
        # the full grid is predicted unless only the reconstruction on points needs it
        self.need_grid = not self.points or cfg.lambda_proj > 0 or self.disc is not None
        self._setup_training()

    def _setup_training(self) -> None:
        """Optimisers, mixed precision, DDP / compile wrappers and the run's counters: the part
        of the set-up every engine (this one, :class:`~.translation.TranslationEngine`) shares,
        once ``model``, ``disc`` and ``points`` are there."""
        cfg, dist = self.cfg, self.dist
        self.opt_g = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, betas=tuple(cfg.betas),
                                      weight_decay=cfg.weight_decay)
        self.opt_d = (torch.optim.Adam(self.disc.parameters(), lr=cfg.lr_d, betas=tuple(cfg.betas),
                                       weight_decay=cfg.weight_decay) if self.disc else None)

        # precision
        amp = cfg.amp
        if self.device.type != "cuda":  # bf16 autocast works on CPUs too, but only on request
            if amp == "fp16":
                warnings.warn(f"fp16 mixed precision needs CUDA; training in float32 on "
                              f"{self.device}")
            amp = "bf16" if amp == "bf16" else "off"
        elif amp == "auto":
            amp = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
        self.scaler = torch.amp.GradScaler("cuda", enabled=(amp == "fp16"))
        self.amp = amp

        # DDP and compile
        self.g_train: torch.nn.Module = self.model
        self.d_train = self.disc
        if dist.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            # with points, query() bypasses forward (as a diffusion model's diffusion_loss):
            # the gradients are averaged by hand
            if not self.points and not hasattr(self.model, "diffusion_loss"):
                self.g_train = DistributedDataParallel(self.model, device_ids=ids)
            if self.disc is not None:
                self.d_train = DistributedDataParallel(self.disc, device_ids=ids)
        if cfg.compile:
            self.g_train = torch.compile(self.g_train)

        self.epoch = 0  # completed epochs
        self.step = 0
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.last_val: dict[str, float] = {}
        self.tb = None

    # -- loaders ---------------------------------------------------------------------------
    def _sampler(self, ds: CaseDataset) -> DistributedSampler:
        return DistributedSampler(ds, num_replicas=self.dist.world, rank=self.dist.rank,
                                  shuffle=True, seed=self.cfg.seed)

    def _loader(self, ds: CaseDataset, *, train: bool, batch_sampler: Sampler | None = None
                ) -> DataLoader:
        """One epoch's loader (validation: in order), or the one over ``batch_sampler``."""
        workers = int(self.cfg.workers)
        common = dict(num_workers=workers, worker_init_fn=_worker_init if workers else None,
                      pin_memory=self.device.type == "cuda")
        if batch_sampler is not None:
            return DataLoader(ds, batch_sampler=batch_sampler, **common)
        return DataLoader(ds, batch_size=self.cfg.batch_size if train else 1,
                          sampler=self._sampler(ds) if train else None, shuffle=False,
                          **common)

    @property
    def steps_per_epoch(self) -> int:
        """Training steps per epoch and process."""
        return math.ceil(len(self._sampler(self.train_ds)) / self.cfg.batch_size)

    def epochs(self, start: int, stop: int) -> Iterator[Iterator[dict]]:
        """Per epoch ``start .. stop - 1``, an iterator over its training batches (each epoch's
        order is the ``DistributedSampler``'s for that epoch). All come from one pass of one
        loader, so its workers read the next epoch's first cases while an epoch ends.

        A loader's pass draws its workers' base seed from the global RNG when it starts; one
        loader per epoch (as before) drew once per epoch: the draw is repeated here at every
        later epoch's start, so the random stream (and a resumed run) stays the same."""
        loader = self._loader(self.train_ds, train=True, batch_sampler=_EpochBatches(
            self._sampler(self.train_ds), self.cfg.batch_size, start, stop))
        batches = iter(loader)
        for epoch in range(start, stop):
            if epoch > start:
                torch.empty((), dtype=torch.int64).random_()
            yield itertools.islice(batches, self.steps_per_epoch)

    def _target(self, batch) -> torch.Tensor:
        """The batch's CTs in HU on the output grid ``[B, 1, S, S, S]`` (the loader's
        :class:`CaseTargets` resampled them already)."""
        ct = batch["ct"].to(self.device, torch.float32)
        if tuple(ct.shape[-3:]) != (self.size,) * 3:
            ct = F.interpolate(ct, size=(self.size,) * 3, mode="trilinear", align_corners=False)
        return ct

    def model_target(self, batch) -> torch.Tensor:
        """The batch's targets in the model's intensity on the output grid ``[B, 1, S, S, S]``
        (made by the training loader's :class:`CaseTargets`, or here from ``"ct"``)."""
        if "target" in batch:
            return batch["target"].to(self.device, torch.float32)
        return self.mapping.to_model(self._target(batch))

    def _projection_reference(self, batch, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The projection loss's reference: the normalised input views, or (reference
        ``"target"``) the targets' DRRs, rendered once per case and kept."""
        if self.projection.reference == "input":
            return x
        ids = list(batch["id"])
        todo = [i for i, c in enumerate(ids) if c not in self._reference]
        if todo:
            rendered = self.projection.render_reference(target[todo])
            self._reference.update({ids[i]: r for i, r in zip(todo, rendered)})
        return torch.stack([self._reference[c] for c in ids])

    def _perceptual_loss(self, ds: CaseDataset) -> PerceptualLoss:
        """The perceptual term's frozen network (``cfg.perceptual_model``, a CNN-INR package)
        and the DRRs of its views that the dataset has, on the output grid."""
        net, _ = models.load_model(self.cfg.perceptual_model, device=self.device)
        if not hasattr(net, "encode"):
            raise XRayToCTError(f"perceptual_model {self.cfg.perceptual_model!r} is a "
                                f"{net.spec.name}, not a cnn_inr (its 2D encoders give the "
                                f"perceptual features)")
        if net.spec.image_size != int(ds.pixels):
            raise XRayToCTError(f"perceptual_model {self.cfg.perceptual_model!r} takes "
                                f"{net.spec.image_size}-pixel views, the dataset has "
                                f"{ds.pixels}")
        names = [v for v in net.spec.views if v in ds.geometries]
        if not names:
            raise XRayToCTError(f"the dataset has none of the views of perceptual_model "
                                f"{self.cfg.perceptual_model!r} ({', '.join(net.spec.views)})")
        drr = DRR([ds.geometries[v] for v in names], self.grid, attenuation="soft",
                  gate_hu=self.cfg.proj_gate_hu)
        return PerceptualLoss(net, names, drr, self.mapping).to(self.device)

    def _perceptual_reference(self, batch, target: torch.Tensor) -> list[torch.Tensor]:
        """The targets' perceptual features, from their DRRs (rendered once per case and kept:
        ``V x P x P`` floats each, not the features)."""
        ids = list(batch["id"])
        todo = [i for i, c in enumerate(ids) if c not in self._perc_reference]
        if todo:
            with torch.no_grad(), torch.autocast(target.device.type, enabled=False):
                rendered = self.perceptual.render(target[todo])
            self._perc_reference.update({ids[i]: r for i, r in zip(todo, rendered)})
        drrs = torch.stack([self._perc_reference[c] for c in ids])
        with torch.no_grad(), torch.autocast(target.device.type, enabled=False):
            return [f.detach() for f in self.perceptual.features(drrs)]

    def _autocast(self):
        if self.amp_dtype is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    # -- one step ----------------------------------------------------------------------------
    def train_step(self, batch) -> dict[str, float]:
        """One optimisation step of the discriminator (if any), then of the generator;
        returns the step's losses (``nan`` for the terms the run does not have)."""
        cfg = self.cfg
        x = self.normalize(views_tensor(batch, self.views, self.device))
        target = self.model_target(batch)
        if hasattr(self.model, "diffusion_loss"):
            return self._diffusion_step(x, target)
        pred = None
        if self.need_grid:
            with self._autocast():
                pred = self.g_train(x).float()
        out = {"loss_d": float("nan"), "loss_adv": float("nan")}
        if self.adversarial is not None:
            out["loss_d"] = self._discriminator_step(target, pred, x)

        rec = self._reconstruction_loss(x, target, pred)
        loss = cfg.lambda_rec * rec
        proj = torch.zeros((), device=self.device)
        if cfg.lambda_proj > 0:
            proj = self.projection(pred, reference=self._projection_reference(batch, x, target))
            loss = loss + cfg.lambda_proj * proj
        out["loss_perc"] = float("nan")
        if self.perceptual is not None:
            perc = self.perceptual(pred, self._perceptual_reference(batch, target))
            loss = loss + cfg.lambda_perc * perc
            out["loss_perc"] = float(perc.detach())
        if self.adversarial is not None:
            self.disc.requires_grad_(False)  # the generator step moves G only
            adv = self.adversarial.generator_loss(self.disc, pred, x, self._autocast)
            loss = loss + cfg.lambda_adv * adv
            out["loss_adv"] = float(adv.detach())
        self.opt_g.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.points and self.dist.world > 1:
            self.dist.average_gradients(self.model)
        self.scaler.step(self.opt_g)
        self.scaler.update()
        if self.disc is not None:
            self.disc.requires_grad_(True)
        if not torch.isfinite(loss.detach()):
            raise XRayToCTError(f"training diverged at step {self.step + 1}: the loss is "
                                f"{float(loss)} (lower the learning rate, or turn mixed "
                                f"precision off)")
        out.update(loss_g=float(loss.detach()), loss_rec=float(rec.detach()),
                   loss_proj=float(proj.detach()))
        return out

    def _diffusion_step(self, x: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
        """A conditional diffusion model's step (:mod:`~XRayToCTLib.models.diffusion`): the
        diffusion loss (weight ``lambda_rec``) plus the projection-consistency term (weight
        ``lambda_proj``) of its predicted clean volume, on its low-resolution grid, against
        the input views (or the target there rendered the same way)."""
        cfg = self.cfg
        with self._autocast():
            diff, clean, target_low = self.model.diffusion_loss(x, target)
        loss = cfg.lambda_rec * diff.float()
        proj = torch.zeros((), device=self.device)
        if cfg.lambda_proj > 0:
            ref = (x if self.projection.reference == "input"
                   else self.projection.render_reference(target_low))
            proj = self.projection(clean.float(), reference=ref)
            loss = loss + cfg.lambda_proj * proj
        self.opt_g.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.dist.world > 1:  # diffusion_loss bypasses forward (and DDP's hooks)
            self.dist.average_gradients(self.model)
        self.scaler.step(self.opt_g)
        self.scaler.update()
        if not torch.isfinite(loss.detach()):
            raise XRayToCTError(f"training diverged at step {self.step + 1}: the loss is "
                                f"{float(loss)} (lower the learning rate, or turn mixed "
                                f"precision off)")
        nan = float("nan")
        return {"loss_d": nan, "loss_adv": nan, "loss_g": float(loss.detach()),
                "loss_rec": float(diff.detach()), "loss_proj": float(proj.detach())}

    def _discriminator_step(self, target: torch.Tensor, pred: torch.Tensor,
                            x: torch.Tensor) -> float:
        """Real vs (detached) fake, conditioned on the views; returns the loss."""
        self.disc.requires_grad_(True)
        loss_d = self.adversarial.discriminator_loss(self.d_train, target, pred, x,
                                                     self._autocast)
        self.opt_d.zero_grad(set_to_none=True)
        self.scaler.scale(loss_d).backward()
        self.scaler.step(self.opt_d)
        return float(loss_d.detach())

    def _reconstruction_loss(self, x: torch.Tensor, target: torch.Tensor,
                             pred: torch.Tensor | None) -> torch.Tensor:
        """On the full grid, or on ``points_per_step`` random points (``model.query``)."""
        if not self.points:
            return self.reconstruction(pred, target)
        pts, values = sample_points(target, self.grid, self.points)
        with self._autocast():
            queried = self.model.query(x, pts)
        return self.reconstruction(queried, values)

    # -- validation --------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Mean brain-window SSIM, PSNR, cosine over the validation cases (rank 0)."""
        model = unwrap(self.model)
        model.eval()
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        try:
            for batch in self._loader(self.val_ds, train=False):
                x = self.normalize(views_tensor(batch, self.views, self.device))
                with self._autocast():
                    pred = model(x)
                pred_hu = self.mapping.to_hu(pred.float())
                gt_hu = self._target(batch)
                for region in VAL_REGIONS:
                    res = batch_metrics(pred_hu, gt_hu, window=self.cfg.val_window,
                                        region=region, metrics=VAL_METRICS)
                    for m in VAL_METRICS:
                        v = torch.as_tensor(res[m]).double().reshape(-1)
                        v = v[torch.isfinite(v)]  # an infinite PSNR (identical) is left out
                        key = f"{m}_{region}"
                        sums[key] = sums.get(key, 0.0) + float(v.sum())
                        counts[key] = counts.get(key, 0) + int(v.numel())
        finally:
            model.train()
        return {k: sums[k] / counts[k] for k in sums if counts[k]}

    # -- checkpoints -------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """The checkpoint of the run as it is now (:mod:`.checkpoint`)."""
        spec = self.model.spec
        return {
            "format": CHECKPOINT_FORMAT,
            "model_name": self.cfg.model,
            "model_config": json.dumps(spec.config, default=str),
            "discriminator_config": json.dumps(self.disc_config),
            "spec": json.dumps(spec.to_dict(), default=str),
            "config": json.dumps(self.cfg.to_dict()),
            "data": json.dumps(self.description),
            "init": json.dumps(self.init_record),
            "model": unwrap(self.model).state_dict(),
            "discriminator": self.disc.state_dict() if self.disc is not None else {},
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict() if self.opt_d is not None else {},
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch, "step": self.step,
            "best": self.best, "best_epoch": self.best_epoch,
            "val": dict(self.last_val),
            "rng": rng_state(),
            "world_size": self.dist.world,
            "saved": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }

    def load_state(self, state: dict[str, Any], path: Path) -> None:
        """Continue from a checkpoint of this run (``path`` names it in errors)."""
        if state.get("model_name") != self.cfg.model:
            raise InputError(path, f"the checkpoint is of model {state.get('model_name')!r}, "
                             f"not {self.cfg.model!r}")
        if json.loads(state["model_config"]) != json.loads(
                json.dumps(self.model.spec.config, default=str)):
            raise InputError(path, "the checkpoint's model settings differ from this run's "
                             "(size or model_config changed): resume with the run's config.yaml")
        self.model.load_state_dict(state["model"])
        self.init_record = json.loads(state.get("init") or "null")
        self.opt_g.load_state_dict(state["opt_g"])
        if self.disc is not None:
            if not state["discriminator"]:
                raise InputError(path, "the checkpoint has no discriminator, but lambda_adv > 0")
            self.disc.load_state_dict(state["discriminator"])
            self.opt_d.load_state_dict(state["opt_d"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.best, self.best_epoch = state.get("best"), state.get("best_epoch")
        self.last_val = dict(state.get("val") or {})
        set_rng_state(state["rng"])
        if self.dist.rank > 0:  # each rank's own stream: derived from the seed and the epoch
            seed_everything(self.cfg.seed + 7919 * self.epoch + self.dist.rank)

    # -- the log -----------------------------------------------------------------------------
    def _log_path(self) -> Path:
        return self.run / "log.csv"

    def trim_log(self) -> None:
        """Keep only the log rows up to the checkpoint (a kill may leave later ones)."""
        path = self._log_path()
        if not path.exists():
            return
        with open(path, newline="") as fh:
            rows = [r for r in csv.DictReader(fh) if r.get("step") and int(r["step"]) <= self.step]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=LOG_COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
        atomic_write(path, lambda fh: fh.write(buf.getvalue().encode()), binary=True)

    def append_log(self, row: dict[str, Any]) -> None:
        """Append one epoch's row to ``log.csv`` (synced to disk) and to TensorBoard."""
        path = self._log_path()
        new = not path.exists()
        with open(path, "a", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=LOG_COLUMNS, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow({k: ("" if v is None or (isinstance(v, float) and math.isnan(v)) else v)
                        for k, v in row.items()})
            fh.flush()
            os.fsync(fh.fileno())
        if self.tb is not None:
            for k, v in row.items():
                if k not in ("epoch", "step") and isinstance(v, (int, float)) and math.isfinite(v):
                    self.tb.add_scalar(k, v, row["step"])
            self.tb.flush()

    def _open_tensorboard(self) -> None:
        try:  # optional dependency: without tensorboard, the CSV log only
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            self.tb = None
            return
        self.tb = SummaryWriter(str(self.run / "tensorboard"))

    # -- the loop ----------------------------------------------------------------------------
    def fit(self) -> None:
        """Train from the current epoch to ``cfg.epochs``: log, validate and checkpoint."""
        cfg, dist = self.cfg, self.dist
        total = cfg.epochs * self.steps_per_epoch
        if dist.main and cfg.tensorboard:
            self._open_tensorboard()
        self.model.train()
        if self.disc is not None:
            self.disc.train()
        report(self.progress, self.step / max(total, 1),
               f"epoch {self.epoch}/{cfg.epochs}" + (" (resumed)" if self.epoch else ""))
        for batches in self.epochs(self.epoch, cfg.epochs):
            t0 = time.perf_counter()
            sums = torch.zeros(len(LOSS_NAMES), dtype=torch.float64)
            n = 0
            step_time = 0.0
            for batch in batches:
                ts = time.perf_counter()
                losses = self.train_step(batch)
                step_time += time.perf_counter() - ts
                self.step += 1
                n += 1
                sums += torch.tensor([losses.get(k, math.nan) for k in LOSS_NAMES],
                                     dtype=torch.float64)
                report(self.progress, self.step / total,
                       f"epoch {self.epoch + 1}/{cfg.epochs} loss {losses['loss_g']:.4f}")
            self.epoch += 1
            sums = dist.all_sum(sums) / (n * dist.world)
            row: dict[str, Any] = {"epoch": self.epoch, "step": self.step,
                                   **dict(zip(LOSS_NAMES, sums.tolist())),
                                   "step_time_s": step_time / max(n, 1),
                                   "lr": self.opt_g.param_groups[0]["lr"]}
            last = self.epoch == cfg.epochs
            validate = (self.val_ds is not None and len(self.val_ds) > 0 and cfg.val_every > 0
                        and (self.epoch % cfg.val_every == 0 or last))
            improved = False
            if validate and dist.main:
                self.last_val = self.validate()
                row.update({f"val_{k}": v for k, v in self.last_val.items()})
                score = self.last_val.get(cfg.best_metric)
                if score is not None and (self.best is None or score > self.best):
                    self.best, self.best_epoch, improved = float(score), self.epoch, True
            row["time_s"] = time.perf_counter() - t0
            save = last or improved or (cfg.checkpoint_every and self.epoch % cfg.checkpoint_every == 0)
            if dist.main:
                self.append_log(row)
                if save:
                    state = self.state()
                    save_checkpoint(self.run / "checkpoints" / "last.pt", state)
                    if improved:
                        save_checkpoint(self.run / "checkpoints" / "best.pt", state)
            dist.barrier()
        report(self.progress, 1.0, f"done: epoch {self.epoch}, step {self.step}")
        if self.tb is not None:
            self.tb.close()


def _engine_class(model: str) -> type[Engine]:
    """:class:`Engine` for the reconstruction models; for a 2D translation model
    (``pix2pix``) the :class:`~.translation.TranslationEngine` (a subclass of Engine, so it
    is imported here rather than at the top of this module)."""
    if getattr(models.MODELS.get(model), "kind", None) == TRANSLATION_KIND:
        from .translation import TranslationEngine
        return TranslationEngine
    return Engine


def train(config: TrainConfig, *, progress: ProgressCallback | None = None) -> Path:
    """Train a model; return the run folder (``config.out``).

    The folder gets ``config.yaml`` (the resolved settings), ``log.csv``,
    ``checkpoints/last.pt`` and ``checkpoints/best.pt``. With ``config.resume`` the run
    continues from ``checkpoints/last.pt`` (weights, optimisers, epoch and step, RNG states,
    the log trimmed to the checkpoint); otherwise a folder that already holds a run is
    refused. Under ``torchrun`` every process calls this; rank 0 writes. ``progress``
    receives ``(fraction of all steps, message)`` and can cancel.

    Raises:
        InputError: a missing or malformed dataset, config or checkpoint.
        XRayToCTError: a bad setting, or a diverging loss.
    """
    try:
        cfg = config.resolved()
    except ValueError as err:
        raise XRayToCTError(f"invalid training setting: {err}") from err
    if not cfg.out:
        raise InputError(None, "no run folder given")
    run = Path(cfg.out)
    if run.exists() and not run.is_dir():
        raise InputError(run, "exists and is not a folder")
    last = run / "checkpoints" / "last.pt"
    if cfg.resume and not last.is_file():
        raise InputError(last, "nothing to resume: the run has no checkpoint yet")
    if not cfg.resume and last.exists():
        raise InputError(run, "already holds a training run: resume it, or train into "
                         "another folder")
    check_dataset(cfg.data)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    dist = Dist(cfg.device)
    try:
        engine = _engine_class(cfg.model)(cfg, dist, progress, load_init=not cfg.resume)
        if cfg.resume:
            state = load_checkpoint(last, map_location=dist.device)
            engine.load_state(state, last)
        if dist.main:
            run.mkdir(parents=True, exist_ok=True)
            cfg.replace(size=engine.size, resume=False).to_yaml(run / "config.yaml")
            if cfg.resume:
                engine.trim_log()
        dist.barrier()
        engine.fit()
    finally:
        dist.close()
        torch.set_num_threads(threads)
    return run
