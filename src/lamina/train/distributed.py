"""Data parallelism for `torchrun`: DDP everywhere (gloo on CPU, NCCL on GPUs), FSDP2
(`fully_shard`) for models that do not fit one device. The model knows nothing of it.

Every rank draws the same global batch from the same seeded generator and trains on its own
slice of the rows, so N ranks see exactly the batches one process would, and the averaged
gradient is that of the whole batch."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from ..errors import LaminaError


@dataclass(frozen=True)
class Cluster:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def pick_device(name: str) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise LaminaError("device = cuda, but no CUDA device is visible")
        return torch.device("cuda")
    return torch.device("cpu")


def start(device: str) -> Cluster:
    """Join the torchrun job described by the environment, or run as a single process."""
    base = pick_device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Cluster(0, 1, 0, torch.device("cuda", torch.cuda.current_device()) if base.type == "cuda" else base)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if base.type == "cuda":
        torch.cuda.set_device(local)
        base = torch.device("cuda", local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if base.type == "cuda" else "gloo")
    return Cluster(rank, world, local, base)


def stop() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: nn.Module, cluster: Cluster, parallel: str) -> nn.Module:
    """The model as the ranks train it: itself alone, DDP-wrapped, or FSDP2-sharded per block."""
    if cluster.world == 1:
        return model
    if parallel == "fsdp":
        from torch.distributed.fsdp import fully_shard
        for block in model.blocks():
            fully_shard(block)
        fully_shard(model)
        return model
    ids = [cluster.device.index] if cluster.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def total(value: float, cluster: Cluster, device: torch.device) -> float:
    """The sum of a number over ranks."""
    if cluster.world == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t)


def summed(t: torch.Tensor, cluster: Cluster) -> torch.Tensor:
    """A tensor summed over ranks (itself on one)."""
    if cluster.world > 1:
        t = t.clone()
        dist.all_reduce(t)
    return t


def mean(value: float, cluster: Cluster, device: torch.device) -> float:
    """The mean of a number over ranks."""
    return total(value, cluster, device) / cluster.world


def barrier(cluster: Cluster) -> None:
    if cluster.world > 1:
        dist.barrier()
