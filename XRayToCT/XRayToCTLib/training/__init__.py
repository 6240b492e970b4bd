"""The training engine: the seeds' losses, checkpoints that survive a kill, DDP, logs.

Modules, one per concern:

* :mod:`.config` -- :class:`TrainConfig` (every setting, the model families' seed
  defaults, validation, YAML), :data:`LOG_COLUMNS`;
* :mod:`.losses` -- the reconstruction, projection-consistency (through the one
  :class:`~XRayToCTLib.drr.DRR` chain) and least-squares adversarial losses, with their
  sources in the seeds;
* :mod:`.engine` -- :func:`train` and the run it drives (data loaders, the training step,
  validation, the log, the loop; the optimiser settings and their sources);
* :mod:`.checkpoint` -- :data:`CHECKPOINT_FORMAT`, :func:`load_checkpoint`, atomic saving,
  RNG states and seeding;
* :mod:`.distributed` -- the process group under ``torchrun`` (DDP);
* :mod:`.export` -- :func:`export_run`, a checkpoint packaged as one ``.safetensors`` file;
* :mod:`.finetune` -- ``TrainConfig.init``: a run that starts from a model package's weights;
* :mod:`.cpu` -- oneDNN for the one-case 3D convolutions PyTorch would run slowly on a CPU.
* :mod:`.translation` -- a 2D translation model (``pix2pix``, the harmoniser) on a pairs folder
  (:mod:`~XRayToCTLib.pairs`): the engine's loop with Pix2Pix's losses and 2D validation.

A run folder holds ``config.yaml`` (the resolved settings), ``checkpoints/last.pt``,
``checkpoints/best.pt`` and ``log.csv`` (and ``tensorboard/`` when TensorBoard is
installed). Models never import training; training never imports the CLI.
"""
from __future__ import annotations

from .checkpoint import CHECKPOINT_FORMAT, load_checkpoint
from .config import LOG_COLUMNS, TrainConfig
from .engine import train
from .export import export_run

__all__ = ["TrainConfig", "train", "export_run", "load_checkpoint", "LOG_COLUMNS",
           "CHECKPOINT_FORMAT"]
