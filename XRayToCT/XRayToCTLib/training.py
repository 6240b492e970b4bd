"""The training engine: losses of the seeds, checkpoints that survive a kill, DDP, logs.

What is trained, and how (the seeds are the papers in ``../shared/seeds/``):

* **Generator losses** (seed 001, "a least-squares conditional GAN formulation; the total
  objective combines adversarial, reconstruction and projection-consistency losses"; the
  weights are X2CT-GAN's, as quoted by seed 004: ``G = argmin(λ1 L_G + λ2 L_rec + λ2 L_pl)``
  with ``λ1 = 0.1`` and ``λ2 = 10``):

  - adversarial: least squares (LSGAN), ``monai.losses.PatchAdversarialLoss(criterion=
    "least_squares")`` on the patch logits of the conditional 3D PatchGAN
    (``models.build_discriminator``), weight :attr:`TrainConfig.lambda_adv` (0.1);
  - reconstruction: L1 between prediction and target in the model's intensity space
    (``models.intensity``), weight :attr:`TrainConfig.lambda_rec` (10). For ``cnn_inr`` the
    default is the mean squared error, as seed 001 trains its CNN–INR ("minimizing the
    voxel-wise mean squared error"), by default on the **full output grid** (the grid holds
    the same points, and the projection loss needs the whole grid rendered anyway), or, with
    :attr:`TrainConfig.points_per_step`, on random points as seed 001 did;
  - projection consistency, weight :attr:`TrainConfig.lambda_proj` (10): the prediction is
    mapped back to HU (the mapping's ``to_hu``), then to attenuation with a *smooth* version
    of :func:`~XRayToCTLib.drr.hu_to_mu` (``drr.hu_to_mu`` zeroes air below -800 HU with a
    hard threshold, whose gradient is zero; here the same line ``0.022 (1 + HU/1000)`` is
    multiplied by ``sigmoid((HU + 800) / proj_gate_hu)``, 10 HU by default), rendered with
    the differentiable :class:`~XRayToCTLib.drr.DRRRenderer` **at the dataset's own DRR
    geometry** (a real cone-beam line integral, not a mean along an axis), normalised with
    ``models.normalize_views`` like the network's inputs, and compared (L1) with the
    normalised input DRRs. With the ``brain`` intensity mapping, which cannot give HU
    outside its 20–60 HU window, the reference is instead the ground truth passed through
    the same mapping and rendered the same way (:attr:`TrainConfig.projection_reference`).

* **Discriminator loss**: ``0.5 (LSGAN(D(real), 1) + LSGAN(D(fake), 0))``, conditioned on the
  input views. ``cnn_inr`` has no adversarial term by default (seed 001 trains it without).
* **Optimiser**: Adam, batch size 1, learning rate 3e-5 for both models (seed 001:
  "Adam optimizer (batch size = 1). Learning rates were set to 3 × 10−5 for the CNN–INR and
  for the GAN"), 170 epochs (seed 001); betas (0.5, 0.99) as in X2CT-GAN (Ying et al.,
  CVPR 2019, the design seeds 001 and 004 follow; it used lr 2e-4).

Engineering: deterministic seeds (the data order of epoch ``e`` is a function of ``seed``
and ``e`` only); validation every ``val_every`` epochs with
:func:`~XRayToCTLib.metrics.batch_metrics` (SSIM, PSNR, cosine in the brain window, over
the whole volume — the seeds' protocol — and inside the head), the best checkpoint kept;
checkpoints written atomically and loaded with ``torch.load(weights_only=True)`` (tensors and
plain types only); ``resume`` continues exactly after the last checkpoint (weights,
optimisers, gradient scaler, epoch/step, RNG states, the log); PyTorch DDP under ``torchrun``
(``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` from the environment, ``DistributedSampler``, rank 0
writes); mixed precision (bf16/fp16 autocast) and ``torch.compile`` on CUDA as settings; a
CSV log and TensorBoard events when ``tensorboard`` is installed.

A run folder holds ``config.yaml`` (the resolved settings), ``checkpoints/last.pt``,
``checkpoints/best.pt`` and ``log.csv``; :func:`export_run` packages a checkpoint as one
``.safetensors`` model file.
"""
from __future__ import annotations

import csv
import dataclasses
import io as _io
import json
import math
import os
import random
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from .drr import MU_WATER_PER_MM, AIR_THRESHOLD_HU, DRRRenderer, resolve_device
from .errors import InputError, XRayToCTError
from .progress import ProgressCallback, report

__all__ = ["TrainConfig", "train", "export_run", "load_checkpoint", "soft_hu_to_mu",
           "LOG_COLUMNS", "CHECKPOINT_FORMAT"]

CHECKPOINT_FORMAT = "xraytoct-train-checkpoint/1"
VAL_METRICS = ("ssim", "psnr", "cosine")
VAL_REGIONS = ("whole", "head")
LOG_COLUMNS = (["epoch", "step", "loss_g", "loss_d", "loss_adv", "loss_rec", "loss_proj"]
               + [f"val_{m}_{r}" for r in VAL_REGIONS for m in VAL_METRICS]
               + ["time_s", "step_time_s", "lr"])
"""Columns of ``log.csv``: one row per epoch; losses are epoch means over all ranks; val
columns are empty on epochs without validation; ``time_s`` is the epoch's wall time in
seconds (validation included), ``step_time_s`` the mean seconds per training step."""

# seed defaults per model family (see the module docstring for the sources)
_GAN_DEFAULTS = dict(lambda_adv=0.1, lambda_rec=10.0, lambda_proj=10.0, recon_loss="l1")
_INR_DEFAULTS = dict(lambda_adv=0.0, lambda_rec=10.0, lambda_proj=10.0, recon_loss="mse")


def _family_defaults(model: str) -> dict[str, Any]:
    return _INR_DEFAULTS if "inr" in model else _GAN_DEFAULTS


@dataclasses.dataclass
class TrainConfig:
    """All settings of a training run (the YAML config file holds the same keys).

    ``None`` means "the model's seed default" and is resolved by :meth:`resolved`
    (the run folder's ``config.yaml`` holds resolved values).

    Attributes:
        model: registry name (``x2ct_gan``, ``x2ct_gan_single``, ``cnn_inr``).
        data: dataset folder made by ``xraytoct prepare`` (``manifest.json`` inside).
        out: run folder.
        model_config: the model's own settings (width etc., passed to ``build_model``;
            ``image_size``/``output_size``/``output_spacing`` are set from the dataset).
        discriminator_config: settings for ``build_discriminator``.
        epochs: training epochs (seed 001: 170).
        batch_size: cases per step and per process (seed 001: 1).
        lr: Adam learning rate of the generator (seed 001: 3e-5).
        lr_d: Adam learning rate of the discriminator (``None``: ``lr``).
        betas: Adam betas (X2CT-GAN: 0.5, 0.99).
        weight_decay: Adam weight decay (0).
        lambda_adv, lambda_rec, lambda_proj: loss weights (GAN: 0.1, 10, 10; CNN–INR: 0, 10, 10).
        recon_loss: ``"l1"`` (GAN default) or ``"mse"`` (CNN–INR default, seed 001).
        projection_reference: ``"input"`` (the input DRRs), ``"target"`` (the ground truth
            passed through the intensity mapping and rendered), ``"auto"`` (``target`` for the
            mappings that are not invertible (``brain``), else ``input``).
        proj_gate_hu: width in HU of the sigmoid that replaces the -800 HU air threshold.
        points_per_step: models with ``query`` (``cnn_inr``) only: the reconstruction loss on
            this many random points per case and step, inside the output grid, against the
            trilinearly interpolated target (seed 001's "random coordinates were sampled from
            the training volumes"); the full grid is then rendered only when the projection or
            adversarial term needs it. 0 (default): the reconstruction loss on the full grid.
        size: output grid side S (``None``: the dataset's); other sizes resample the targets
            over the same 256 mm field (trilinear), and the projection loss renders that grid.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (under torchrun: ``cuda:LOCAL_RANK``).
        amp: mixed precision (``torch.autocast``): ``auto`` (bf16 on CUDA when supported,
            else fp16 with a gradient scaler; off on CPU), ``off``, ``bf16`` (CUDA or CPU),
            ``fp16`` (CUDA only, with a gradient scaler). The DRR projection and the losses
            are computed in float32 either way. bf16 on the CPU is experimental: the X2CT-GAN
            was seen to reach a NaN loss in some runs there (the engine then stops with an
            error saying so).
        compile: wrap the generator in ``torch.compile`` (CUDA; off by default: not measured).
        workers: DataLoader worker processes.
        val_every: validate every N epochs (and after the last epoch); 0 = never.
        checkpoint_every: write ``last.pt`` every N epochs (and after the last epoch).
        best_metric: the logged validation metric that picks ``best.pt`` (higher is better),
            one of ``{ssim,psnr,cosine}_{whole,head}``.
        val_window: the window of the validation metrics (seed 001: ``brain``, L40/W40).
        seed: random seed (weights, data order, sampling).
        deterministic: ``torch.use_deterministic_algorithms`` (slower on CUDA).
        resume: continue the run in ``out`` from ``checkpoints/last.pt``.
        tensorboard: write TensorBoard events when ``tensorboard`` is importable.
    """

    model: str = "x2ct_gan"
    data: str = ""
    out: str = ""
    model_config: dict = dataclasses.field(default_factory=dict)
    discriminator_config: dict = dataclasses.field(default_factory=dict)
    epochs: int = 170
    batch_size: int = 1
    lr: float = 3e-5
    lr_d: float | None = None
    betas: tuple = (0.5, 0.99)
    weight_decay: float = 0.0
    lambda_adv: float | None = None
    lambda_rec: float | None = None
    lambda_proj: float | None = None
    recon_loss: str | None = None
    projection_reference: str = "auto"
    proj_gate_hu: float = 10.0
    points_per_step: int = 0
    size: int | None = None
    device: str = "auto"
    amp: str = "auto"
    compile: bool = False
    workers: int = 0
    val_every: int = 1
    checkpoint_every: int = 1
    best_metric: str = "ssim_head"
    val_window: str = "brain"
    seed: int = 0
    deterministic: bool = False
    resume: bool = False
    tensorboard: bool = True

    # -- construction ------------------------------------------------------------------
    @classmethod
    def fields(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str | os.PathLike | None = None) -> "TrainConfig":
        """Build from a mapping; an unknown key is an :class:`InputError` naming ``source``."""
        unknown = sorted(set(d) - set(cls.fields()))
        if unknown:
            raise InputError(source, f"unknown setting(s) {', '.join(unknown)}; known: "
                             f"{', '.join(cls.fields())}")
        d = dict(d)
        if d.get("betas") is not None:
            d["betas"] = tuple(float(b) for b in d["betas"])
        for key in ("model_config", "discriminator_config"):
            if d.get(key) is None:
                d[key] = {}
        return cls(**d)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike, **overrides: Any) -> "TrainConfig":
        """Read a YAML config (a mapping of the :class:`TrainConfig` keys); ``overrides``
        (e.g. command-line flags) replace its values."""
        path = Path(path)
        if not path.is_file():
            raise InputError(path, "config file not found")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise InputError(path, f"not valid YAML: {str(err).splitlines()[0]}") from err
        if not isinstance(data, dict):
            raise InputError(path, "a training config must be a YAML mapping of settings")
        data.update(overrides)
        return cls.from_dict(data, source=path)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = [float(b) for b in self.betas]
        return d

    def to_yaml(self, path: str | os.PathLike) -> Path:
        """Write the settings as YAML, atomically."""
        path = Path(path)
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        _atomic_write(path, lambda fh: fh.write(text.encode()))
        return path

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    def resolved(self) -> "TrainConfig":
        """Fill the model's seed defaults in the ``None`` settings and validate everything
        (``ValueError`` with a clear message on a bad value)."""
        fam = _family_defaults(self.model)
        cfg = self.replace(**{k: (fam[k] if getattr(self, k) is None else getattr(self, k))
                              for k in fam})
        if cfg.lr_d is None:
            cfg = cfg.replace(lr_d=cfg.lr)
        _choice("recon_loss", cfg.recon_loss, ("l1", "mse"))
        _choice("projection_reference", cfg.projection_reference, ("auto", "input", "target"))
        _choice("amp", cfg.amp, ("auto", "off", "bf16", "fp16"))
        _choice("best_metric", cfg.best_metric,
                [f"{m}_{r}" for r in VAL_REGIONS for m in VAL_METRICS])
        for name in ("epochs", "batch_size"):
            if int(getattr(cfg, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(cfg, name)}")
        for name in ("workers", "val_every", "checkpoint_every", "points_per_step"):
            if int(getattr(cfg, name)) < 0:
                raise ValueError(f"{name} must be 0 or more, got {getattr(cfg, name)}")
        for name in ("lr", "lr_d", "proj_gate_hu"):
            if not float(getattr(cfg, name)) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(cfg, name)}")
        for name in ("lambda_adv", "lambda_rec", "lambda_proj", "weight_decay"):
            if not float(getattr(cfg, name)) >= 0:
                raise ValueError(f"{name} must be 0 or more, got {getattr(cfg, name)}")
        if len(cfg.betas) != 2 or not all(0 <= b < 1 for b in cfg.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {cfg.betas}")
        if cfg.size is not None and int(cfg.size) < 8:
            raise ValueError(f"size must be at least 8, got {cfg.size}")
        if not cfg.model:
            raise ValueError("no model given (e.g. --model x2ct_gan)")
        return cfg


# ----------------------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------------------

def _choice(name: str, value: Any, options) -> None:
    """One-line ``ValueError`` unless ``value`` is one of ``options``."""
    if value not in options:
        raise ValueError(f"{name} must be one of {', '.join(map(str, options))}; got {value!r}")


def _atomic_write(path: Path, write) -> None:
    """Write ``path`` atomically in binary mode (:func:`~XRayToCTLib.io.atomic_write`)."""
    from .io import atomic_write
    atomic_write(path, write, binary=True)


def soft_hu_to_mu(hu: torch.Tensor, gate_hu: float = 10.0) -> torch.Tensor:
    """Differentiable attenuation per mm from HU: Plastimatch's line
    ``0.022 (1 + HU / 1000)`` times ``sigmoid((HU + 800) / gate_hu)``, a smooth stand-in for
    :func:`~XRayToCTLib.drr.hu_to_mu`'s hard zero at or below -800 HU (which has no gradient
    there). Differs from it by less than 0.1 % of water's mu more than ~7 gate widths from
    -800 HU."""
    mu = hu * (MU_WATER_PER_MM / 1000.0) + MU_WATER_PER_MM
    return mu * torch.sigmoid((hu - AIR_THRESHOLD_HU) / gate_hu)


def _cpu_rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    py = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"name": str(np_state[0]), "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                       "pos": int(np_state[2]), "has_gauss": int(np_state[3]),
                       "cached_gaussian": float(np_state[4])},
             "python": [int(py[0]), [int(x) for x in py[1]], py[2]]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached_gaussian"]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        cuda = list(state["cuda"])[: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a training checkpoint without unpickling code (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated, foreign or unsafe file
        raise InputError(path, f"not a readable training checkpoint ({type(err).__name__}: "
                         f"{str(err).splitlines()[0][:200]})") from err
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise InputError(path, f"not an XRayToCT training checkpoint ({CHECKPOINT_FORMAT})")
    return state


def _save_checkpoint(path: Path, state: dict) -> None:
    _atomic_write(path, lambda fh: torch.save(state, fh))


def _unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The plain module under DDP and/or ``torch.compile`` wrappers."""
    while True:
        if hasattr(module, "module") and isinstance(module, torch.nn.parallel.DistributedDataParallel):
            module = module.module
        elif hasattr(module, "_orig_mod"):
            module = module._orig_mod
        else:
            return module


def _last_logits(out: Any) -> torch.Tensor:
    """MONAI's PatchDiscriminator returns every layer's output; the logits are the last."""
    return out[-1] if isinstance(out, (list, tuple)) else out


class _Dist:
    """The process group under ``torchrun`` (env ``WORLD_SIZE`` > 1), or a single process."""

    def __init__(self, device_pref: str):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.owner = False
        if self.world > 1:
            base = resolve_device(device_pref)
            if base.type == "cuda":
                self.device = torch.device("cuda", self.local_rank)
                torch.cuda.set_device(self.device)
            else:
                self.device = base
            if not torch.distributed.is_initialized():
                torch.distributed.init_process_group(
                    "nccl" if self.device.type == "cuda" else "gloo")
                self.owner = True
            self.rank = torch.distributed.get_rank()
            self.world = torch.distributed.get_world_size()
        else:
            self.device = resolve_device(device_pref)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            t = t.clone()
            torch.distributed.all_reduce(t)
        return t

    def average_gradients(self, module: torch.nn.Module) -> None:
        """All-reduce and average the gradients (what DDP does, for calls that bypass it)."""
        for p in module.parameters():
            if p.grad is not None:
                torch.distributed.all_reduce(p.grad)
                p.grad /= self.world

    def close(self) -> None:
        if self.owner and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


# ----------------------------------------------------------------------------------------
# the data
# ----------------------------------------------------------------------------------------

def _open_dataset(root: Path, split: str):
    from .data import CaseDataset
    return CaseDataset(root, split=split)


def _check_dataset(root: str) -> Path:
    if not root:
        raise InputError(None, "no dataset given (--data DIR, made by `xraytoct prepare`)")
    path = Path(root)
    if not path.is_dir():
        raise InputError(path, "dataset folder not found (make one with `xraytoct prepare "
                         "--out DIR --phantoms N`)")
    if not (path / "manifest.json").is_file():
        raise InputError(path, "not a dataset: manifest.json is missing (make one with "
                         "`xraytoct prepare --out DIR --phantoms N`)")
    return path


def _data_description(ds, root: Path) -> dict[str, Any]:
    """What the model was trained on, from the dataset manifest (JSON-friendly)."""
    man = dict(ds.manifest)
    keep = {k: man[k] for k in ("kind", "version", "size", "spacing", "pixels",
                                "field_of_view_mm", "window", "sources", "settings", "drr",
                                "settings_key", "created", "complete") if k in man}
    split = man.get("split")
    if isinstance(split, dict):  # case ids per split, and the ratios
        keep["split"] = {k: (len(v) if isinstance(v, list) else v) for k, v in split.items()}
        keep["train_cases"] = sorted(split.get("train", []))
    keep["path"] = str(root.resolve())
    return json.loads(json.dumps(keep, default=str))


def _views_tensor(batch: dict, views: tuple[str, ...], device) -> torch.Tensor:
    """Stack the batch's DRRs in the model's view order: ``[B, V, P, P]``."""
    return torch.cat([batch[v] for v in views], dim=1).to(device, torch.float32)


# ----------------------------------------------------------------------------------------
# the engine
# ----------------------------------------------------------------------------------------

class _Engine:
    """One training run (built by :func:`train`)."""

    def __init__(self, cfg: TrainConfig, dist: _Dist, progress: ProgressCallback | None):
        from . import models
        from .models.intensity import get_mapping

        self.cfg, self.dist, self.progress = cfg, dist, progress
        self.device = dist.device
        self.run = Path(cfg.out)
        root = _check_dataset(cfg.data)
        self.train_ds = _open_dataset(root, "train")
        if len(self.train_ds) == 0:
            raise InputError(root, "the dataset has no training cases")
        try:
            self.val_ds = _open_dataset(root, "val")
        except (InputError, ValueError, KeyError):
            self.val_ds = None
        ds = self.train_ds
        self.data_size = int(ds.size)
        self.size = int(cfg.size or ds.size)
        ds_spacing = float(np.asarray(getattr(ds.grid, "spacing", (256.0 / ds.size,)))[0])
        self.spacing = ds_spacing * self.data_size / self.size  # the same field of view
        self.description = _data_description(ds, root)

        if cfg.model not in models.MODELS:
            raise InputError(None, f"unknown model {cfg.model!r}; choose one of "
                             f"{', '.join(sorted(models.MODELS))}")
        # the model is built for the dataset's detector, grid and DRR geometry
        self.model_config = {**cfg.model_config, "image_size": int(ds.pixels),
                             "output_size": self.size, "output_spacing": self.spacing,
                             "geometry": {v: g.to_dict() for v, g in ds.geometries.items()}}
        _seed_everything(cfg.seed)
        try:
            self.model = models.build_model(cfg.model, dict(self.model_config)).to(self.device)
        except ValueError as err:
            raise XRayToCTError(f"invalid model_config for {cfg.model}: {err}") from err
        spec = self.model.spec
        self.views = tuple(spec.views)
        missing = [v for v in self.views if v not in ds.geometries]
        if missing:
            raise InputError(root, f"the dataset has no {', '.join(missing)} view(s), which "
                             f"{cfg.model} needs")
        self.grid = spec.grid()  # S^3 canonical grid, centred on the origin
        self.mapping = get_mapping(spec.intensity)
        self.normalize = models.normalize_views
        ref = cfg.projection_reference
        if ref == "auto":
            ref = "input" if getattr(self.mapping, "invertible", True) else "target"
        self.proj_ref = ref
        self.renderer = DRRRenderer([ds.geometries[v] for v in self.views], self.grid).to(self.device)

        self.disc = None
        if cfg.lambda_adv > 0:
            from .models.discriminator import DISC_DEFAULTS
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
            from monai.losses import PatchAdversarialLoss
            self.adv_loss = PatchAdversarialLoss(criterion="least_squares")
        else:
            self.disc_config = {}
        self.points = int(cfg.points_per_step)
        if self.points and not hasattr(self.model, "query"):
            raise XRayToCTError(f"points_per_step needs a model with query() (cnn_inr); "
                                f"{cfg.model} has none")
        self.opt_g = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, betas=tuple(cfg.betas),
                                      weight_decay=cfg.weight_decay)
        self.opt_d = (torch.optim.Adam(self.disc.parameters(), lr=cfg.lr_d, betas=tuple(cfg.betas),
                                       weight_decay=cfg.weight_decay) if self.disc else None)

        # precision
        amp = cfg.amp
        if self.device.type != "cuda":  # bf16 autocast works on CPUs too, but only on request
            if amp == "fp16":
                warnings.warn(f"amp=fp16 needs CUDA; training in float32 on {self.device}")
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
            from torch.nn.parallel import DistributedDataParallel as DDP
            ids = [self.device.index] if self.device.type == "cuda" else None
            if not self.points:  # with points, query() bypasses forward: gradients are
                self.g_train = DDP(self.model, device_ids=ids)  # averaged by hand instead
            if self.disc is not None:
                self.d_train = DDP(self.disc, device_ids=ids)
        if cfg.compile:
            self.g_train = torch.compile(self.g_train)

        self.epoch = 0  # completed epochs
        self.step = 0
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.last_val: dict[str, float] = {}
        self.tb = None

    # -- loaders ---------------------------------------------------------------------------
    def _loader(self, ds, *, train: bool):
        from torch.utils.data import DataLoader, DistributedSampler
        sampler = (DistributedSampler(ds, num_replicas=self.dist.world, rank=self.dist.rank,
                                      shuffle=True, seed=self.cfg.seed) if train else None)
        return DataLoader(ds, batch_size=self.cfg.batch_size if train else 1, sampler=sampler,
                          shuffle=False, num_workers=self.cfg.workers,
                          worker_init_fn=_worker_init if self.cfg.workers else None,
                          persistent_workers=False, pin_memory=self.device.type == "cuda")

    def _target(self, batch) -> torch.Tensor:
        ct = batch["ct"].to(self.device, torch.float32)
        if self.size != self.data_size:
            ct = F.interpolate(ct, size=(self.size,) * 3, mode="trilinear", align_corners=False)
        return ct

    def _autocast(self):
        if self.amp_dtype is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _sample_points(self, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``points_per_step`` uniform random LPS points per case inside the output grid
        (between the outer voxel centres) and the target's trilinear values there."""
        b, s = target.shape[0], self.size
        idx = torch.rand(b, self.points, 3, device=self.device) * (s - 1)  # (i, j, k)
        origin = torch.tensor(self.grid.origin, dtype=torch.float32, device=self.device)
        lin = torch.tensor(self.grid.direction @ np.diag(self.grid.spacing), dtype=torch.float32,
                           device=self.device)
        pts = idx @ lin.T + origin
        coords = (idx / (s - 1) * 2.0 - 1.0).reshape(b, 1, 1, self.points, 3)  # x=i, y=j, z=k
        values = F.grid_sample(target, coords, mode="bilinear", align_corners=True)
        return pts, values.reshape(b, self.points)

    def _project(self, x_model: torch.Tensor) -> torch.Tensor:
        """Normalised DRRs of a volume in model intensity, rendered at the dataset geometry."""
        hu = self.mapping.to_hu(x_model.float())
        return self.normalize(self.renderer(soft_hu_to_mu(hu, self.cfg.proj_gate_hu)))

    # -- one step ----------------------------------------------------------------------------
    def train_step(self, batch) -> dict[str, float]:
        cfg = self.cfg
        raw = _views_tensor(batch, self.views, self.device)
        x = self.normalize(raw)
        gt_hu = self._target(batch)
        target = self.mapping.to_model(gt_hu)
        need_grid = not self.points or cfg.lambda_proj > 0 or self.disc is not None
        pred = None
        if need_grid:
            with self._autocast():
                pred = self.g_train(x)
            pred = pred.float()
        out = {"loss_d": float("nan"), "loss_adv": float("nan")}

        if self.disc is not None:  # discriminator step: real vs fake, conditioned on views
            self.disc.requires_grad_(True)
            with self._autocast():
                logits = _last_logits(self.d_train(torch.cat([target, pred.detach()]),
                                                   torch.cat([x, x]))).float()
            real, fake = logits.chunk(2)
            loss_d = 0.5 * (self.adv_loss(real, target_is_real=True, for_discriminator=True)
                            + self.adv_loss(fake, target_is_real=False, for_discriminator=True))
            self.opt_d.zero_grad(set_to_none=True)
            self.scaler.scale(loss_d).backward()
            self.scaler.step(self.opt_d)
            out["loss_d"] = float(loss_d.detach())

        loss_fn = F.l1_loss if cfg.recon_loss == "l1" else F.mse_loss
        if self.points:
            pts, values = self._sample_points(target)
            with self._autocast():
                rec = loss_fn(self.model.query(x, pts).float(), values)
        else:
            rec = loss_fn(pred, target)
        loss = cfg.lambda_rec * rec
        proj = torch.zeros((), device=self.device)
        if cfg.lambda_proj > 0:
            with torch.autocast(self.device.type, enabled=False):
                if self.proj_ref == "input":
                    ref = x
                else:
                    with torch.no_grad():
                        ref = self._project(target)
                proj = F.l1_loss(self._project(pred), ref)
            loss = loss + cfg.lambda_proj * proj
        if self.disc is not None:
            self.disc.requires_grad_(False)  # the generator step moves G only
            with self._autocast():
                adv = self.adv_loss(_last_logits(self.disc(pred, x)).float(), target_is_real=True,
                                    for_discriminator=False)
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
                                f"{float(loss)} (lower --lr, or amp off)")
        out.update(loss_g=float(loss.detach()), loss_rec=float(rec.detach()),
                   loss_proj=float(proj.detach()))
        return out

    # -- validation --------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Mean brain-window SSIM, PSNR, cosine over the validation cases (rank 0)."""
        from .metrics import batch_metrics
        model = _unwrap(self.model)
        model.eval()
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        try:
            for batch in self._loader(self.val_ds, train=False):
                x = self.normalize(_views_tensor(batch, self.views, self.device))
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
        spec = self.model.spec
        spec_d = spec.to_dict() if hasattr(spec, "to_dict") else {}
        return {
            "format": CHECKPOINT_FORMAT,
            "model_name": self.cfg.model,
            "model_config": json.dumps(spec.config, default=str),
            "discriminator_config": json.dumps(self.disc_config),
            "spec": json.dumps(spec_d, default=str),
            "config": json.dumps(self.cfg.to_dict()),
            "data": json.dumps(self.description),
            "model": _unwrap(self.model).state_dict(),
            "discriminator": self.disc.state_dict() if self.disc is not None else {},
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict() if self.opt_d is not None else {},
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch, "step": self.step,
            "best": self.best, "best_epoch": self.best_epoch,
            "val": dict(self.last_val),
            "rng": _cpu_rng_state(),
            "world_size": self.dist.world,
            "saved": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }

    def load_state(self, state: dict[str, Any], path: Path) -> None:
        if state.get("model_name") != self.cfg.model:
            raise InputError(path, f"the checkpoint is of model {state.get('model_name')!r}, "
                             f"not {self.cfg.model!r}")
        if json.loads(state["model_config"]) != json.loads(
                json.dumps(self.model.spec.config, default=str)):
            raise InputError(path, "the checkpoint's model settings differ from this run's "
                             "(size or model_config changed): resume with the run's config.yaml")
        self.model.load_state_dict(state["model"])
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
        _set_rng_state(state["rng"])
        if self.dist.rank > 0:  # each rank's own stream: derived from the seed and the epoch
            _seed_everything(self.cfg.seed + 7919 * self.epoch + self.dist.rank)

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
        self._write_log(rows)

    def _write_log(self, rows: list[dict]) -> None:
        buf = _io.StringIO()
        w = csv.DictWriter(buf, fieldnames=LOG_COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
        _atomic_write(self._log_path(), lambda fh: fh.write(buf.getvalue().encode()))

    def append_log(self, row: dict[str, Any]) -> None:
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

    # -- the loop ----------------------------------------------------------------------------
    def fit(self) -> None:
        cfg, dist = self.cfg, self.dist
        loader = self._loader(self.train_ds, train=True)
        steps_per_epoch = len(loader)
        total = cfg.epochs * steps_per_epoch
        if dist.main and cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(str(self.run / "tensorboard"))
            except ImportError:  # tensorboard not installed: the CSV log only
                self.tb = None
        self.model.train()
        if self.disc is not None:
            self.disc.train()
        report(self.progress, self.step / max(total, 1),
               f"epoch {self.epoch}/{cfg.epochs}" + (" (resumed)" if self.epoch else ""))
        while self.epoch < cfg.epochs:
            t0 = time.perf_counter()
            loader.sampler.set_epoch(self.epoch)
            sums = torch.zeros(5, dtype=torch.float64)
            n = 0
            step_time = 0.0
            for batch in loader:
                ts = time.perf_counter()
                losses = self.train_step(batch)
                step_time += time.perf_counter() - ts
                self.step += 1
                n += 1
                sums += torch.tensor([losses[k] for k in ("loss_g", "loss_d", "loss_adv",
                                                          "loss_rec", "loss_proj")],
                                     dtype=torch.float64)
                report(self.progress, self.step / total,
                       f"epoch {self.epoch + 1}/{cfg.epochs} loss {losses['loss_g']:.4f}")
            self.epoch += 1
            sums = dist.all_sum(sums) / (n * dist.world)
            row: dict[str, Any] = {"epoch": self.epoch, "step": self.step,
                                   **dict(zip(("loss_g", "loss_d", "loss_adv", "loss_rec",
                                               "loss_proj"), sums.tolist())),
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
                    _save_checkpoint(self.run / "checkpoints" / "last.pt", state)
                    if improved:
                        _save_checkpoint(self.run / "checkpoints" / "best.pt", state)
            dist.barrier()
        report(self.progress, 1.0, f"done: epoch {self.epoch}, step {self.step}")
        if self.tb is not None:
            self.tb.close()


def _worker_init(worker_id: int) -> None:
    seed = torch.initial_seed() % (2 ** 32)
    np.random.seed(seed)
    random.seed(seed)
    torch.set_num_threads(1)


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
        raise InputError(None, "no run folder given (--out RUN_DIR)")
    run = Path(cfg.out)
    if run.exists() and not run.is_dir():
        raise InputError(run, "exists and is not a folder")
    last = run / "checkpoints" / "last.pt"
    if cfg.resume and not last.is_file():
        raise InputError(last, "nothing to resume: the run has no checkpoint yet")
    if not cfg.resume and last.exists():
        raise InputError(run, "already holds a training run: pass --resume to continue it, "
                         "or choose another --out")
    _check_dataset(cfg.data)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    dist = _Dist(cfg.device)
    try:
        engine = _Engine(cfg, dist, progress)
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
    return run


def export_run(run_dir: str | os.PathLike, out: str | os.PathLike, checkpoint: str = "best", *,
               title: str | None = None, fp16: bool = False) -> Path:
    """Package a run's checkpoint as one ``.safetensors`` model file
    (``models.package.save_package``): the weights, plus in its header the model's spec
    (views, sizes, DRR geometry, intensity mapping), its config, the training-data
    description from the dataset manifest, the training settings, and the validation
    metrics of that checkpoint. ``checkpoint`` is ``"best"`` or ``"last"``; ``"best"``
    falls back to ``"last"`` (and says so in the metadata) when the run never validated.
    ``fp16`` stores the weights in half precision (half the size; cast back to float32 at
    load). Returns ``out``."""
    from .models import build_model
    from .models.package import save_package

    try:
        _choice("checkpoint", checkpoint, ("best", "last"))
    except ValueError as err:
        raise XRayToCTError(str(err)) from None
    run = Path(run_dir)
    if not run.is_dir():
        raise InputError(run, "run folder not found")
    path = run / "checkpoints" / f"{checkpoint}.pt"
    used = checkpoint
    if checkpoint == "best" and not path.exists() and (run / "checkpoints" / "last.pt").exists():
        path, used = run / "checkpoints" / "last.pt", "last (the run has no best.pt: it never validated)"
    state = load_checkpoint(path)
    model = build_model(state["model_name"], json.loads(state["model_config"]))
    model.load_state_dict(state["model"])
    model.eval()
    cfg = json.loads(state["config"])
    metadata = {
        "title": title or f"{state['model_name']} trained by XRayToCT",
        "training_data": json.loads(state["data"]),
        "validation": {"window": cfg.get("val_window", "brain"),
                               "regions": list(VAL_REGIONS), **state.get("val", {})},
        "training": {"checkpoint": used, "epoch": int(state["epoch"]),
                     "step": int(state["step"]), "best_metric": cfg.get("best_metric"),
                     "best": state.get("best"), "best_epoch": state.get("best_epoch"),
                     "world_size": state.get("world_size", 1), "saved": state.get("saved"),
                     "settings": cfg},
    }
    out = Path(out)
    save_package(model, out, metadata=metadata,
                 dtype=torch.float16 if fp16 else torch.float32)
    return out
