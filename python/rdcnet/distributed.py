"""Multi-process training with torch DistributedDataParallel, started by ``torchrun``
(``torchrun --nproc-per-node N -m rdcnet train ...``) or by ``rdcnet train --nproc N``.

Every rank draws its own random crops (its generators are seeded with ``seed + rank``), the
gradients are averaged by DDP, and only rank 0 validates, prints and writes checkpoints (the
others wait at a barrier, then continue from the same weights). One process without torchrun's
environment is the ordinary single-process training."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch

__all__ = ["Context", "launch"]


@dataclass
class Context:
    """This process's place in the job: ``rank`` of ``world`` processes (1 = not distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device: torch.device) -> "Context":
        """Join the process group torchrun describes (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_*):
        gloo on CPU, NCCL on CUDA (one GPU per local rank). Without it, a single process."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        import torch.distributed as dist

        ctx = cls(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return ctx

    def device(self, device: torch.device) -> torch.device:
        """CUDA ranks use the GPU of their local rank."""
        if self.active and device.type == "cuda" and device.index is None:
            return torch.device("cuda", self.local_rank)
        return device

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module to train: DDP (parameters broadcast from rank 0, gradients averaged)."""
        if not self.active:
            return model
        from torch.nn.parallel import DistributedDataParallel

        dev = next(model.parameters()).device
        return DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)

    def seed(self, seed: int) -> int:
        """A distinct seed per rank for crops, augmentation and dropout."""
        return seed + self.rank

    def any_rank(self, flag: bool) -> bool:
        """Whether ``flag`` holds on any rank (a collective: every rank must call it)."""
        if not self.active:
            return flag
        on = "cuda" if torch.distributed.get_backend() == "nccl" else "cpu"  # NCCL reduces GPU tensors only
        t = torch.tensor([1.0 if flag else 0.0], device=on)
        torch.distributed.all_reduce(t)
        return bool(t.item() > 0)

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()

    def gather(self, obj) -> List:
        """``obj`` of every rank, in rank order (on every rank)."""
        if not self.active:
            return [obj]
        out: List = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out

    def close(self) -> None:
        if self.active and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def launch(nproc: int, argv: Sequence[str]) -> int:
    """Re-run ``rdcnet <argv>`` as ``nproc`` processes under torchrun on this machine."""
    from torch.distributed.run import main as torchrun

    if nproc < 1:
        raise ValueError(f"--nproc: expected a positive number of processes, got {nproc}")
    torchrun(["--standalone", f"--nproc-per-node={nproc}", "-m", "rdcnet", *argv])
    return 0


def without_option(argv: Sequence[str], name: str, takes_value: bool = True) -> List[str]:
    """``argv`` without ``name`` (and its value): what the launched processes run."""
    out: List[str] = []
    skip = False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == name:
            skip = takes_value
            continue
        if a.startswith(name + "="):
            continue
        out.append(a)
    return out


def state_for(ctx: Context, rng_state: dict, torch_state: torch.Tensor) -> Optional[dict]:
    """Per-rank generator states for a checkpoint (so every rank resumes its own stream)."""
    states = ctx.gather((rng_state, torch_state))
    return {"numpy_rng_ranks": [s[0] for s in states], "torch_rng_ranks": [s[1] for s in states]} \
        if ctx.active else None
