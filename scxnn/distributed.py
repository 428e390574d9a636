"""Data-parallel training helpers (DDP under ``torchrun``); each is a no-op in a single process.

Under ``torchrun`` (``WORLD_SIZE`` > 1) a finding's model trains data-parallel: gloo on CPU, NCCL on
CUDA. Each rank takes a disjoint shard of the epoch's sample list (:func:`shard_indices`), gradients
are averaged (:func:`wrap_ddp`), the epoch's sums and draws are combined across ranks
(:func:`all_reduce_sum`, :func:`all_gather_cat`), rank 0's BatchNorm statistics are given to all
(:func:`sync_buffers`), every rank validates on the whole (small) validation set so their decisions
agree, and rank 0 alone writes (:attr:`Dist.main`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False  # init_distributed called init_process_group (and close_distributed destroys it)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def init_distributed(device: torch.device) -> Dist:
    """Join the torchrun process group when ``WORLD_SIZE`` > 1 (gloo on CPU, NCCL on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as dist

    owns = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        owns = True
    return Dist(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=int(os.environ.get("LOCAL_RANK", "0")), owns_group=owns)


def close_distributed(dist_: Dist) -> None:
    """Leave the process group, if :func:`init_distributed` created it."""
    if dist_.owns_group:
        import torch.distributed as dist

        dist.destroy_process_group()


def shard_indices(indices: Sequence[int], rank: int, world: int) -> list[int]:
    """Rank ``rank``'s share of an epoch's sample list, like DistributedSampler: the list is padded
    by wrapping to a multiple of ``world`` and dealt out round-robin, so shards have equal length."""
    idx = list(indices)
    if world <= 1 or not idx:
        return idx
    pad = (-len(idx)) % world
    idx = idx + (idx * (pad // len(idx) + 1))[:pad]
    return idx[rank::world]


def wrap_ddp(model: nn.Module, dist_: Dist, device: torch.device) -> nn.Module:
    if not dist_.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index] if device.type == "cuda" else None
    return DDP(model, device_ids=ids)


def all_reduce_sum(values: list[float], dist_: Dist, device: torch.device) -> list[float]:
    if not dist_.enabled:
        return values
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def all_gather_cat(t: torch.Tensor, dist_: Dist, device: torch.device) -> torch.Tensor:
    """Every rank's ``t`` concatenated in rank order (shards have equal length: see shard_indices)."""
    if not dist_.enabled:
        return t
    import torch.distributed as dist

    t = t.to(device)
    parts = [torch.empty_like(t) for _ in range(dist_.world)]
    dist.all_gather(parts, t)
    return torch.cat(parts).cpu()


def sync_buffers(model: nn.Module, dist_: Dist) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics drift apart per shard), so all
    ranks validate the very model rank 0 saves and take the same schedule / stopping decisions."""
    if not dist_.enabled:
        return
    import torch.distributed as dist

    for b in model.buffers():
        dist.broadcast(b.data, src=0)


def barrier(dist_: Dist) -> None:
    if dist_.enabled:
        import torch.distributed as dist

        dist.barrier()
