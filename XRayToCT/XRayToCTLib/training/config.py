"""The settings of a training run: :class:`TrainConfig`, its seed defaults, its validation
and its YAML form; the names of the logged columns."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import yaml

from ..errors import InputError
from ..io import write_text
from ..models.common import check_choice
from .finetune import resolve_init

__all__ = ["TrainConfig", "LOG_COLUMNS", "LOSS_NAMES", "VAL_METRICS", "VAL_REGIONS"]

VAL_METRICS = ("ssim", "psnr", "cosine")
VAL_REGIONS = ("whole", "head")
LOSS_NAMES = ("loss_g", "loss_d", "loss_adv", "loss_rec", "loss_proj", "loss_perc")
LOG_COLUMNS = (["epoch", "step", *LOSS_NAMES]
               + [f"val_{m}_{r}" for r in VAL_REGIONS for m in VAL_METRICS]
               + ["time_s", "step_time_s", "lr"])
"""Columns of ``log.csv``: one row per epoch; losses are epoch means over all ranks; val
columns are empty on epochs without validation; ``time_s`` is the epoch's wall time in
seconds (validation included), ``step_time_s`` the mean seconds per training step."""

# seed defaults per model family (see the package docstring for the sources)
_GAN_DEFAULTS = dict(lambda_adv=0.1, lambda_rec=10.0, lambda_proj=10.0, recon_loss="l1")
_INR_DEFAULTS = dict(lambda_adv=0.0, lambda_rec=10.0, lambda_proj=10.0, recon_loss="mse")
# diffusion: lambda_rec weighs the diffusion loss (MSE of the UNet's output against its
# prediction target), lambda_proj the projection term on its predicted clean volume
_DIFFUSION_DEFAULTS = dict(lambda_adv=0.0, lambda_rec=1.0, lambda_proj=1.0, recon_loss="mse")
# Pix2Pix (Isola et al. 2017; seed 003 uses it with no other settings): cGAN + 100 x L1
_PIX2PIX_DEFAULTS = dict(lambda_adv=1.0, lambda_rec=100.0, lambda_proj=0.0, recon_loss="l1")
# S-XR2CT (seed 004): X2CT-GAN's losses plus a perceptual term, lambda 0.1 / 10 / 10 / 1; the
# other models have no perceptual term (lambda_perc 0)
_SXR2CT_DEFAULTS = dict(_GAN_DEFAULTS, lambda_perc=1.0)


DEFAULT_MODEL = "x2ct_gan"
"""The model of a config that names none (and starts from no package)."""


def _family_defaults(model: str) -> dict[str, Any]:
    if model == "diffusion":
        return _DIFFUSION_DEFAULTS
    if model == "pix2pix":
        return _PIX2PIX_DEFAULTS
    if model == "sxr2ct":
        return _SXR2CT_DEFAULTS
    return _INR_DEFAULTS if "inr" in model else _GAN_DEFAULTS


@dataclasses.dataclass
class TrainConfig:
    """All settings of a training run (the YAML config file holds the same keys).

    ``None`` means "the model's seed default" and is resolved by :meth:`resolved`
    (the run folder's ``config.yaml`` holds resolved values).

    Attributes:
        model: registry name (``x2ct_gan``, ``x2ct_gan_single``, ``cnn_inr``); ``None``: the
            ``init`` package's model, else ``x2ct_gan``.
        data: dataset folder made by ``xraytoct prepare`` (``manifest.json`` inside).
        out: run folder.
        model_config: the model's own settings (width etc., passed to ``build_model``;
            ``image_size``/``output_size``/``output_spacing`` are set from the dataset).
            With ``init``: the package's, and the keys given here must equal its.
        init: fine-tuning: a model package (a catalog name or a ``.safetensors`` file) whose
            weights the generator starts from (:mod:`.finetune`); ``model`` and
            ``model_config`` come from it, a different architecture or views are refused.
            The dataset sets the output size (the CNN-INR's weights fit any size; the
            X2CT-GAN's only the package's sizes). Recorded in the checkpoints and the
            exported package (``training.init``: name, file name, SHA-256).
        exclude: case ids or case groups left out of training and validation (a real CT's
            id ``ct-<name>`` leaves out the CT and all its augmented copies): leave-one-head-out
            runs on one dataset. Recorded in the run's config and the exported package.
        discriminator_config: settings for ``build_discriminator``.
        epochs: training epochs (seed 001: 170).
        batch_size: cases per step and per process (seed 001: 1).
        lr: Adam learning rate of the generator (seed 001: 3e-5).
        lr_d: Adam learning rate of the discriminator (``None``: ``lr``).
        betas: Adam betas (X2CT-GAN: 0.5, 0.99).
        weight_decay: Adam weight decay (0).
        lambda_adv, lambda_rec, lambda_proj: loss weights (GAN: 0.1, 10, 10; CNN–INR: 0, 10, 10;
            pix2pix: 1, 100, 0, :mod:`.translation`).
        lambda_perc: weight of the perceptual term (:class:`.losses.PerceptualLoss`; seed
            004: 1 for ``sxr2ct``; ``None`` is 0 for the other models).
        perceptual_model: the frozen network of the perceptual term: a CNN-INR package (a
            catalog name or a ``.safetensors`` file) whose 2D encoders give the features.
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
        workers: DataLoader worker processes (they read the cases and make the targets
            off the training loop; one is enough on a CPU).
        threads: torch threads of the training process (``torch.set_num_threads`` for the run,
            restored after it); ``None``: PyTorch's default, one per core. On a CPU that other
            jobs share, 1 is far faster: with 2 threads on this project's 2-core machine, a
            step took 13-35x longer while another job ran (``benchmarks/training.py``).
        cache_mb: keep the training cases in memory after their first read (their targets
            as the loader makes them, in each loader process) when the whole training split
            fits in this many MiB (counted once per worker process); 0: read every case every
            epoch.
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

    model: str | None = None
    data: str = ""
    out: str = ""
    model_config: dict = dataclasses.field(default_factory=dict)
    discriminator_config: dict = dataclasses.field(default_factory=dict)
    init: str | None = None
    exclude: list = dataclasses.field(default_factory=list)
    epochs: int = 170
    batch_size: int = 1
    lr: float = 3e-5
    lr_d: float | None = None
    betas: tuple = (0.5, 0.99)
    weight_decay: float = 0.0
    lambda_adv: float | None = None
    lambda_rec: float | None = None
    lambda_proj: float | None = None
    lambda_perc: float | None = None
    perceptual_model: str = "cnn_inr_phantom64"
    recon_loss: str | None = None
    projection_reference: str = "auto"
    proj_gate_hu: float = 10.0
    points_per_step: int = 0
    size: int | None = None
    device: str = "auto"
    amp: str = "auto"
    compile: bool = False
    workers: int = 0
    threads: int | None = None
    cache_mb: int = 2048
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
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        return write_text(path, text)

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    def resolved(self) -> "TrainConfig":
        """Fill the model's seed defaults in the ``None`` settings (and, with ``init``, the
        package's model and model_config: :func:`.finetune.resolve_init`, which reads the
        package's header) and validate everything (``ValueError`` with a clear message on a
        bad value; :class:`InputError` for a bad ``init`` package)."""
        if self.init is not None and not (isinstance(self.init, str) and self.init.strip()):
            raise ValueError(f"init must be a model package (a catalog name or a "
                             f".safetensors file), got {self.init!r}")
        cfg = resolve_init(self)  # the model and model_config of an init package
        if cfg.model is None:
            cfg = cfg.replace(model=DEFAULT_MODEL)
        fam = _family_defaults(cfg.model)
        cfg = cfg.replace(**{k: (fam[k] if getattr(cfg, k) is None else getattr(cfg, k))
                             for k in fam})
        if cfg.lr_d is None:
            cfg = cfg.replace(lr_d=cfg.lr)
        if cfg.lambda_perc is None:
            cfg = cfg.replace(lambda_perc=0.0)
        check_choice("training", "recon_loss", cfg.recon_loss, ("l1", "mse"))
        check_choice("training", "projection_reference", cfg.projection_reference,
                     ("auto", "input", "target"))
        check_choice("training", "amp", cfg.amp, ("auto", "off", "bf16", "fp16"))
        check_choice("training", "best_metric", cfg.best_metric,
                     [f"{m}_{r}" for r in VAL_REGIONS for m in VAL_METRICS])
        for name in ("epochs", "batch_size"):
            if int(getattr(cfg, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(cfg, name)}")
        for name in ("workers", "val_every", "checkpoint_every", "points_per_step", "cache_mb"):
            if int(getattr(cfg, name)) < 0:
                raise ValueError(f"{name} must be 0 or more, got {getattr(cfg, name)}")
        for name in ("lr", "lr_d", "proj_gate_hu"):
            if not float(getattr(cfg, name)) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(cfg, name)}")
        for name in ("lambda_adv", "lambda_rec", "lambda_proj", "lambda_perc", "weight_decay"):
            if not float(getattr(cfg, name)) >= 0:
                raise ValueError(f"{name} must be 0 or more, got {getattr(cfg, name)}")
        if len(cfg.betas) != 2 or not all(0 <= b < 1 for b in cfg.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {cfg.betas}")
        if cfg.threads is not None and int(cfg.threads) < 1:
            raise ValueError(f"threads must be at least 1, got {cfg.threads}")
        if cfg.size is not None and int(cfg.size) < 8:
            raise ValueError(f"size must be at least 8, got {cfg.size}")
        if not cfg.model:
            raise ValueError("no model given (a registry name such as x2ct_gan)")

        return cfg
