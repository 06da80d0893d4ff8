"""Rotary position embeddings (Su et al. 2021) with Llama 3.1's frequency scaling, or YaRN's.

lamina keeps Q/K in the Hugging Face "rotate half" channel order: the first half of each head is
the real part, the second half the imaginary part. Meta's checkpoints and GGUF interleave the
pairs instead; `lamina.checkpoint` permutes their rows on the way in and out, so the model itself
needs one convention only."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .config import RopeScaling, YarnScaling


def rope_inv_freq(head_dim: int, theta: float, scaling: RopeScaling | None = None) -> Tensor:
    """Per-channel-pair angular frequencies, (head_dim/2,) float32."""
    # float(theta): an integer theta (configs write 500000) too large for an int64 must still work
    inv_freq = 1.0 / float(theta) ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim)
    if scaling is None:
        return inv_freq
    if isinstance(scaling, YarnScaling):
        return _yarn(inv_freq, head_dim, theta, scaling)
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


def _yarn(inv_freq: Tensor, head_dim: int, theta: float, s: YarnScaling) -> Tensor:
    """YaRN's frequencies: interpolated (divided by the factor) below the dimension that turns
    beta_slow times in the original context, kept above the one that turns beta_fast times,
    ramped linearly between (the dimensions floored and ceiled when `truncate`)."""
    def dimension(turns: float) -> float:
        return head_dim * math.log(s.original_max_position_embeddings / (turns * 2 * math.pi)) / (2 * math.log(theta))
    low, high = dimension(s.beta_fast), dimension(s.beta_slow)
    if s.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, head_dim - 1)
    ramp = ((torch.arange(head_dim // 2, dtype=torch.float32) - low) / max(high - low, 0.001)).clamp(0, 1)
    return inv_freq / s.factor * ramp + inv_freq * (1 - ramp)


def _mscale(factor: float, mscale: float = 1.0) -> float:
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def rope_attention_factor(scaling: RopeScaling | YarnScaling | None) -> float:
    """What cos and sin are multiplied by: YaRN's attention factor (1 otherwise)."""
    if not isinstance(scaling, YarnScaling):
        return 1.0
    if scaling.attention_factor:
        return scaling.attention_factor
    if scaling.mscale and scaling.mscale_all_dim:
        return _mscale(scaling.factor, scaling.mscale) / _mscale(scaling.factor, scaling.mscale_all_dim)
    return _mscale(scaling.factor)


def softmax_mscale(scaling: RopeScaling | YarnScaling | None) -> float:
    """What latent attention's softmax scale is multiplied by under YaRN with `mscale_all_dim`
    (DeepSeek-V2 and V3): mscale(factor, mscale_all_dim)²; 1 otherwise."""
    if not isinstance(scaling, YarnScaling) or not scaling.mscale_all_dim:
        return 1.0
    return _mscale(scaling.factor, scaling.mscale_all_dim) ** 2


def rope_cos_sin(inv_freq: Tensor, positions: Tensor, dtype: torch.dtype, factor: float = 1.0
                 ) -> tuple[Tensor, Tensor]:
    """cos and sin for each position, times `factor` (YaRN's attention factor).
    positions: (B, T) -> each (B, 1, T, D), broadcast over heads."""
    angles = positions[..., None].float() * inv_freq          # (B, T, D/2)
    angles = torch.cat((angles, angles), dim=-1)[:, None]      # (B, 1, T, D)
    if factor != 1.0:
        return (angles.cos() * factor).to(dtype), (angles.sin() * factor).to(dtype)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate channel pairs (i, i + D/2) by position. x: (B, H, T, D)."""
    x1, x2 = x.chunk(2, dim=-1)                                # each (B, H, T, D/2)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin
