"""Data-parallel training: the process group under ``torchrun`` (or a single process), and
the plain module under the DDP / ``torch.compile`` wrappers."""
from __future__ import annotations

import os

import torch
import torch.distributed

from ..drr import resolve_device

__all__ = ["Dist", "unwrap"]


class Dist:
    """The process group under ``torchrun`` (env ``WORLD_SIZE`` > 1), or a single process.

    ``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` come from the environment; on CUDA each process
    takes ``cuda:LOCAL_RANK`` (NCCL), else the device asked for (gloo). A group this object
    initialised is destroyed by :meth:`close`.
    """

    def __init__(self, device_pref: str):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.owner = False
        self.device = resolve_device(device_pref)
        if self.world > 1:
            if self.device.type == "cuda":
                self.device = torch.device("cuda", self.local_rank)
                torch.cuda.set_device(self.device)
            if not torch.distributed.is_initialized():
                torch.distributed.init_process_group(
                    "nccl" if self.device.type == "cuda" else "gloo")
                self.owner = True
            self.rank = torch.distributed.get_rank()
            self.world = torch.distributed.get_world_size()

    @property
    def main(self) -> bool:
        """True on rank 0 (the process that writes the run folder)."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        """The sum of ``t`` over all ranks (a copy; ``t`` itself in a single process)."""
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


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The plain module under DDP and/or ``torch.compile`` wrappers."""
    while True:
        if isinstance(module, torch.nn.parallel.DistributedDataParallel):
            module = module.module
        elif hasattr(module, "_orig_mod"):  # torch.compile's OptimizedModule
            module = module._orig_mod
        else:
            return module
