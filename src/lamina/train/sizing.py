"""Whether a run fits before it starts: the batch arithmetic over ranks and micro-batches, the
dtype the matmuls will run in, and a rough memory estimate against what the device has."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data.loader import TokenShards
from ..errors import LaminaError
from ..model import ModelConfig, count_params
from .config import TrainConfig


@dataclass
class Plan:
    """The batch arithmetic of a run on this many ranks."""
    per_rank: int        # sequences per rank per step
    micro: int           # sequences per forward/backward
    accum: int           # micro-batches per step


def plan_batches(config: TrainConfig, world: int) -> Plan:
    if config.batch_size % world:
        raise LaminaError(f"batch_size {config.batch_size} does not divide over {world} ranks")
    per_rank = config.batch_size // world
    micro = config.micro_batch_size or per_rank
    if per_rank % micro:
        raise LaminaError(f"batch_size {config.batch_size} over {world} rank(s) is {per_rank} sequences per rank, "
                          f"which micro_batch_size {micro} does not divide")
    return Plan(per_rank, micro, per_rank // micro)


def compute_dtype(config: TrainConfig, device: torch.device) -> torch.dtype:
    """What the matmuls run in: bf16 autocast when asked, or by default ("auto") on GPUs."""
    bf16 = config.dtype == "bfloat16" or (config.dtype == "auto" and device.type == "cuda")
    return torch.bfloat16 if bf16 else torch.float32


def estimate_memory_gb(c: ModelConfig, config: TrainConfig, plan: Plan, world: int,
                       dtype: torch.dtype = torch.float32) -> float:
    """A deliberately rough upper estimate: fp32 weights, gradients and optimizer state (two
    AdamW moments; sharded under FSDP), plus activations — about 34·T·dim bytes per layer per
    sequence in 16-bit (Korthikanti et al. 2022, with attention fused), doubled for fp32 — and the
    fp32 logits with their gradient."""
    params = count_params(c)
    shard = world if config.parallel == "fsdp" else 1
    states = params * 4 * 4 / shard
    per_layer = 34 * config.seq_len * c.dim * (1 if dtype == torch.bfloat16 else 2)
    layers = c.n_layers if not config.activation_checkpointing else 1
    activations = plan.micro * (per_layer * layers + 3 * 4 * config.seq_len * c.vocab_size)
    return (states + activations) / 2 ** 30


def available_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[1] / 2 ** 30
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) / 2 ** 20
    except (OSError, KeyError, ValueError):
        return float("inf")


def check_fits(config: TrainConfig, model_config: ModelConfig, plan: Plan, world: int, dtype: torch.dtype,
               device: torch.device, train_data: TokenShards | None) -> None:
    """Fail early on a run that would not fit in memory or whose shards are shorter than a window
    (`train_data` None: the run reads no token shards)."""
    need = estimate_memory_gb(model_config, config, plan, world, dtype)
    have = config.max_memory_gb or available_memory_gb(device)
    if need > have:
        raise LaminaError(f"this run needs about {need:.1f} GiB per device and {have:.1f} GiB is allowed; "
                          "lower micro_batch_size or seq_len, turn on activation_checkpointing, or use a smaller model")
    if train_data is not None and max(len(s) for s in train_data.shards) <= config.seq_len:
        raise LaminaError(f"{config.data}: every training shard is shorter than seq_len + 1 = {config.seq_len + 1}")
