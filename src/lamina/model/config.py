"""Model architecture configuration: one frozen dataclass covering Llama 1, 2, 3, 3.1/3.2 and
SmolLM2, plus the arithmetic that derives sizes (head_dim, parameter counts) from it."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

# No Llama comes near 2**31 in any size; the cap keeps the product of any two sizes within
# int64, so no value in a config file can overflow the arithmetic that sizes tensors.
MAX_SIZE = 2**31 - 1


class FieldError(ValueError):
    """A config field holds a value it cannot take. `field` names it (the dataclass field, or
    "rope_scaling.factor" for a nested one), so a reader can name the key in its own file."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"{field} {problem}")
        self.field, self.problem = field, problem


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_int(field: str, value, *, minimum: int = 1) -> None:
    """An integer (not a bool) from `minimum` to MAX_SIZE, or FieldError naming `field`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise FieldError(field, f"must be an integer, got {_shown(value)}")
    if not minimum <= value <= MAX_SIZE:
        raise FieldError(field, f"must be between {minimum} and {MAX_SIZE:,}, got {_shown(value)}")


def check_float(field: str, value) -> None:
    """A finite, positive number (an integer will do: rope_theta is often written 500000)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise FieldError(field, f"must be a number, got {_shown(value)}")
    if not (value > 0 and math.isfinite(float(value) if value < 1e308 else math.inf)):
        raise FieldError(field, f"must be a finite positive number, got {_shown(value)}")


def _is_token_id(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_SIZE


@dataclass(frozen=True, kw_only=True)
class RopeScaling:
    """The "llama3" RoPE frequency scaling of Llama 3.1/3.2 (Meta's `apply_scaling`)."""

    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192

    def __post_init__(self) -> None:
        for f in ("factor", "low_freq_factor", "high_freq_factor"):
            check_float(f"rope_scaling.{f}", getattr(self, f))
        check_int("rope_scaling.original_max_position_embeddings", self.original_max_position_embeddings)
        if self.factor < 1:
            raise FieldError("rope_scaling.factor", f"must be at least 1, got {self.factor}")
        if self.high_freq_factor <= self.low_freq_factor:
            raise FieldError("rope_scaling.high_freq_factor", f"must exceed low_freq_factor "
                             f"({self.low_freq_factor}), got {self.high_freq_factor}")


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
        self._check_types()
        if not self.n_kv_heads:
            object.__setattr__(self, "n_kv_heads", self.n_heads)
        if not self.head_dim:
            if self.dim % self.n_heads:
                raise ValueError(f"dim {self.dim} is not divisible by n_heads {self.n_heads}")
            object.__setattr__(self, "head_dim", self.dim // self.n_heads)
        if isinstance(self.eos_token_id, list):
            object.__setattr__(self, "eos_token_id", tuple(self.eos_token_id))
        if isinstance(self.rope_scaling, dict):
            try:
                object.__setattr__(self, "rope_scaling", RopeScaling(**self.rope_scaling))
            except TypeError:   # a key RopeScaling does not have
                known = ", ".join(f.name for f in dataclasses.fields(RopeScaling))
                raise FieldError("rope_scaling", f"takes only {known}; got "
                                 f"{_shown(sorted(self.rope_scaling))}") from None
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_kv_heads {self.n_kv_heads} does not divide n_heads {self.n_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim {self.head_dim} must be even for RoPE")

    def _check_types(self) -> None:
        """Every field of the right type and range, the field named: configs come from files."""
        for f in ("dim", "n_layers", "n_heads", "ffn_dim", "vocab_size", "max_seq_len"):
            check_int(f, getattr(self, f))
        for f in ("n_kv_heads", "head_dim"):   # 0 = derived
            check_int(f, getattr(self, f), minimum=0)
        for f in ("norm_eps", "rope_theta"):
            check_float(f, getattr(self, f))
        if not isinstance(self.tie_embeddings, bool):
            raise FieldError("tie_embeddings", f"must be true or false, got {_shown(self.tie_embeddings)}")
        if self.bos_token_id is not None and not _is_token_id(self.bos_token_id):
            raise FieldError("bos_token_id", f"must be a token id or null, got {_shown(self.bos_token_id)}")
        eos = self.eos_token_id
        if not (eos is None or _is_token_id(eos) or (isinstance(eos, (list, tuple))
                                                     and all(map(_is_token_id, eos)))):
            raise FieldError("eos_token_id", f"must be a token id, a list of them or null, got {_shown(eos)}")
        if not isinstance(self.rope_scaling, (RopeScaling, dict, type(None))):
            raise FieldError("rope_scaling", f"must be a table of llama3 scaling parameters or null, "
                             f"got {_shown(self.rope_scaling)}")

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
