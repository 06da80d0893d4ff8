"""Model architecture configuration: one frozen dataclass covering Llama 1, 2, 3, 3.1/3.2 and
SmolLM2, plus the arithmetic that derives sizes (head_dim, parameter counts) from it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class RopeScaling:
    """The "llama3" RoPE frequency scaling of Llama 3.1/3.2 (Meta's `apply_scaling`)."""

    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192

    def __post_init__(self) -> None:
        if self.factor < 1 or self.high_freq_factor <= self.low_freq_factor:
            raise ValueError(f"invalid llama3 rope scaling: {self}")


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Architecture only; written as config.json (LlamaConfig fields) beside every checkpoint."""

    dim: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: int = 0            # grouped-query attention; 0 means n_heads (multi-head)
    head_dim: int = 0              # 0 means dim // n_heads; Llama 3.2 3B sets it explicitly
    ffn_dim: int = 11008           # SwiGLU hidden size
    vocab_size: int = 32000
    norm_eps: float = 1e-5         # RMSNorm epsilon
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    max_seq_len: int = 2048        # context length the model was trained for
    tie_embeddings: bool = False   # output projection shares tok_embeddings.weight
    bos_token_id: int | None = 1
    eos_token_id: int | tuple[int, ...] | None = 2

    def __post_init__(self) -> None:
        if not self.n_kv_heads:
            object.__setattr__(self, "n_kv_heads", self.n_heads)
        if not self.head_dim:
            if self.dim % self.n_heads:
                raise ValueError(f"dim {self.dim} is not divisible by n_heads {self.n_heads}")
            object.__setattr__(self, "head_dim", self.dim // self.n_heads)
        if isinstance(self.eos_token_id, list):
            object.__setattr__(self, "eos_token_id", tuple(self.eos_token_id))
        if isinstance(self.rope_scaling, dict):
            object.__setattr__(self, "rope_scaling", RopeScaling(**self.rope_scaling))
        positive = ("dim", "n_layers", "n_heads", "ffn_dim", "vocab_size", "max_seq_len")
        if any(getattr(self, f) <= 0 for f in positive):
            raise ValueError(f"sizes must be positive: {self}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_kv_heads {self.n_kv_heads} does not divide n_heads {self.n_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim {self.head_dim} must be even for RoPE")

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        eos = self.eos_token_id
        return () if eos is None else (eos,) if isinstance(eos, int) else tuple(eos)

    def replace(self, **changes) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown ModelConfig fields: {sorted(unknown)}")
        return cls(**d)


def llama_ffn_dim(dim: int, multiple_of: int, ffn_dim_multiplier: float | None = None) -> int:
    """SwiGLU hidden size as Meta's reference code derives it: 2/3 of 4*dim, scaled, rounded up."""
    hidden = int(2 * (4 * dim) / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


def count_params(c: ModelConfig) -> int:
    """Parameter count from the architecture alone (tied embeddings counted once)."""
    q, kv = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
    attention = c.dim * q + 2 * c.dim * kv + q * c.dim
    ffn = 3 * c.dim * c.ffn_dim
    per_layer = attention + ffn + 2 * c.dim          # + attention_norm, ffn_norm
    embeddings = c.vocab_size * c.dim * (1 if c.tie_embeddings else 2)
    return c.n_layers * per_layer + c.dim + embeddings   # + final norm
