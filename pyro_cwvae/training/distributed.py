"""Data-parallel training with torch.distributed: the process group a run trains in (one process or many).

Launched with ``torchrun --nproc_per_node N -m pyro_cwvae fit ...``, every process (rank) builds the same
networks, trains on its own shard of each global batch, and DistributedDataParallel averages the gradients,
so all ranks keep identical weights. Rank 0 alone writes the run directory. Decisions that must agree across
ranks (skip a non-finite step, stop on a signal) are reduced over the group. Backends: nccl on CUDA, gloo on CPU.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from pyro_cwvae.errors import UserError


@dataclass
class Group:
    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def any(self, *flags: bool, device: torch.device) -> list[bool]:
        """Each flag, true if it is true on any rank."""
        if not self.active:
            return list(flags)
        values = torch.tensor([float(f) for f in flags], device=device)
        dist.all_reduce(values, op=dist.ReduceOp.MAX)
        return [bool(v) for v in values.tolist()]

    def all(self, flag: torch.Tensor) -> torch.Tensor:
        """A bool tensor, true where it is true on every rank: a collective on the device, nothing read back."""
        if not self.active:
            return flag
        values = flag.to(torch.float32)
        dist.all_reduce(values, op=dist.ReduceOp.MIN)
        return values > 0

    def mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """The mean of ``tensor`` over the ranks (for the logged terms)."""
        if self.active:
            tensor = tensor.clone()
            dist.all_reduce(tensor)
            tensor /= self.world
        return tensor

    def gather(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj`` on rank 0, in rank order; None elsewhere."""
        if not self.active:
            return [obj]
        gathered = [None] * self.world if self.is_main else None
        dist.gather_object(obj, gathered, dst=0)
        return gathered

    def rows(self, batch_size: int) -> slice:
        """This rank's rows of every global batch: rank r of N gets rows r*B/N .. (r+1)*B/N - 1."""
        if batch_size % self.world:
            raise UserError(f"--batch-size {batch_size} must be divisible by the {self.world} processes")
        share = batch_size // self.world
        return slice(self.rank * share, (self.rank + 1) * share)

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


def launched_ranks() -> int:
    """How many processes torchrun (or another launcher setting WORLD_SIZE) started."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def join(device_name: str) -> tuple[Group, str]:
    """Join the launcher's process group, if any; returns the group and this rank's device name."""
    world = launched_ranks()
    if world == 1:
        return Group(), device_name
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device_name != "cpu" and torch.cuda.is_available()
    if cuda:
        device_name = f"cuda:{local_rank}"
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(minutes=30))
    return Group(rank, world), device_name


def leave(group: Group) -> None:
    if group.active and dist.is_initialized():
        dist.destroy_process_group()
