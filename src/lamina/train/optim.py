"""Optimizers and learning-rate schedules.

Parameters fall in three groups: the 2-D weight matrices of the blocks (decayed; Muon's domain),
the embeddings and output head, and the norms (neither decayed). AdamW takes every group, or
Muon (`torch.optim.Muon`, Jordan et al. 2024) takes the block matrices and AdamW the rest, as
Muon is only defined for matrices and its authors keep embeddings and head on AdamW."""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import TrainConfig


def param_groups(model: nn.Module) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """(name, parameter) pairs by role: "matrices", "embeddings" (and head), "norms"."""
    groups: dict[str, list] = {"matrices": [], "embeddings": [], "norms": []}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name.endswith("norm.weight"):
            groups["norms"].append((name, p))
        elif name.startswith(("tok_embeddings", "output")):
            groups["embeddings"].append((name, p))
        else:
            groups["matrices"].append((name, p))
    return groups


def build_optimizers(model: nn.Module, config: TrainConfig, device: torch.device) -> list[torch.optim.Optimizer]:
    """AdamW alone, or Muon + AdamW; each group remembers its peak rate as `initial_lr`."""
    groups = param_groups(model)
    fused = {"fused": True} if device.type in ("cuda", "cpu") else {}
    plain = [{"params": [p for _, p in groups["embeddings"] + groups["norms"]], "weight_decay": 0.0}]
    matrices = [p for _, p in groups["matrices"]]
    if config.optimizer == "muon":
        muon = torch.optim.Muon([{"params": matrices}], lr=config.muon_lr,
                                weight_decay=config.weight_decay, momentum=0.95, nesterov=True)
        adamw = torch.optim.AdamW(plain, lr=config.lr, betas=config.betas, eps=1e-8, **fused)
        optimizers = [muon, adamw]
    else:
        decayed = [{"params": matrices, "weight_decay": config.weight_decay}]
        optimizers = [torch.optim.AdamW(decayed + plain, lr=config.lr, betas=config.betas, eps=1e-8, **fused)]
    for opt in optimizers:
        for g in opt.param_groups:
            g["initial_lr"] = g["lr"]
    return optimizers


def lr_factor(step: int, config: TrainConfig) -> float:
    """The fraction of the peak learning rate at `step` (0-based), for the configured schedule:
    linear warmup, then cosine to min_lr_ratio, or constant then a linear decay over the last
    decay_fraction of the steps (warmup-stable-decay, Hu et al. 2024, MiniCPM), or constant."""
    total, warmup, floor = config.total_steps, config.warmup_steps, config.min_lr_ratio
    if step < warmup:
        return (step + 1) / warmup
    if config.schedule == "constant":
        return 1.0
    if config.schedule == "cosine":
        progress = (step - warmup) / max(1, total - warmup)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    decay_start = total - max(1, round(total * config.decay_fraction))
    if step < decay_start:
        return 1.0
    progress = (step - decay_start + 1) / (total - decay_start)
    return 1 - (1 - floor) * min(1.0, progress)


def set_lr(optimizers: list[torch.optim.Optimizer], factor: float) -> None:
    for opt in optimizers:
        for g in opt.param_groups:
            g["lr"] = g["initial_lr"] * factor
