"""Rotary position embeddings (Su et al. 2021) with Llama 3.1's frequency scaling.

lamina keeps Q/K in the Hugging Face "rotate half" channel order: the first half of each head is
the real part, the second half the imaginary part. Meta's checkpoints and GGUF interleave the
pairs instead; `lamina.checkpoint` permutes their rows on the way in and out, so the model itself
needs one convention only."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .config import RopeScaling


def rope_inv_freq(head_dim: int, theta: float, scaling: RopeScaling | None = None) -> Tensor:
    """Per-channel-pair angular frequencies, (head_dim/2,) float32."""
    # float(theta): an integer theta (configs write 500000) too large for an int64 must still work
    inv_freq = 1.0 / float(theta) ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim)
    if scaling is None:
        return inv_freq
    # Llama 3.1: keep high frequencies, divide low ones by `factor`, blend in between.
    old_len = scaling.original_max_position_embeddings
    low_wavelen = old_len / scaling.low_freq_factor
    high_wavelen = old_len / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / scaling.factor, inv_freq)
    if scaling.high_freq_factor == scaling.low_freq_factor:
        return scaled                                          # no band to blend (Llama 4 Scout)
    smooth = (old_len / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor)
    blended = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(medium, blended, scaled)


def rope_cos_sin(inv_freq: Tensor, positions: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """cos and sin for each position. positions: (B, T) -> each (B, 1, T, D), broadcast over heads."""
    angles = positions[..., None].float() * inv_freq          # (B, T, D/2)
    angles = torch.cat((angles, angles), dim=-1)[:, None]      # (B, 1, T, D)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate channel pairs (i, i + D/2) by position. x: (B, H, T, D)."""
    x1, x2 = x.chunk(2, dim=-1)                                # each (B, H, T, D/2)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin
