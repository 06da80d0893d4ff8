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
    rope_type: str = "llama3"

    def __post_init__(self) -> None:
        if self.rope_type != "llama3":
            raise FieldError("rope_scaling.rope_type", f"must be llama3 or yarn, got {_shown(self.rope_type)}")
        for f in ("factor", "low_freq_factor", "high_freq_factor"):
            check_float(f"rope_scaling.{f}", getattr(self, f))
        check_int("rope_scaling.original_max_position_embeddings", self.original_max_position_embeddings)
        if self.factor < 1:
            raise FieldError("rope_scaling.factor", f"must be at least 1, got {self.factor}")
        if self.high_freq_factor < self.low_freq_factor:      # equal: no band between (Llama 4 Scout)
            raise FieldError("rope_scaling.high_freq_factor", f"must be at least low_freq_factor "
                             f"({self.low_freq_factor}), got {self.high_freq_factor}")


@dataclass(frozen=True, kw_only=True)
class YarnScaling:
    """YaRN context extension (Peng et al. 2023), as DeepSeek-V3 (factor 40 from 4,096 positions)
    and Qwen3 set it: the low frequencies interpolated by `factor`, the high ones kept, a linear
    ramp between the dimensions that turn `beta_slow` and `beta_fast` times in the original
    context; cos and sin scaled by the attention factor (derived from `mscale` and
    `mscale_all_dim` unless given), and latent attention's softmax by mscale(mscale_all_dim)²."""

    factor: float
    original_max_position_embeddings: int
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    mscale: float = 0.0            # 0: not given
    mscale_all_dim: float = 0.0    # 0: not given
    attention_factor: float = 0.0  # 0: derived
    truncate: bool = True
    rope_type: str = "yarn"

    def __post_init__(self) -> None:
        for f in ("factor", "beta_fast", "beta_slow"):
            check_float(f"rope_scaling.{f}", getattr(self, f))
        check_int("rope_scaling.original_max_position_embeddings", self.original_max_position_embeddings)
        for f in ("mscale", "mscale_all_dim", "attention_factor"):
            value = getattr(self, f)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
                raise FieldError(f"rope_scaling.{f}", f"must be a finite number >= 0, got {_shown(value)}")
        if not isinstance(self.truncate, bool) or self.rope_type != "yarn":
            raise FieldError("rope_scaling", "truncate must be true or false, and rope_type yarn")


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
    rope_scaling: RopeScaling | YarnScaling | None = None
    max_seq_len: int = 2048        # context length the model was trained for
    tie_embeddings: bool = False   # output projection shares tok_embeddings.weight
    bos_token_id: int | None = 1
    eos_token_id: int | tuple[int, ...] | None = 2
    qk_norm: bool = False          # RMSNorm over each head's queries and keys before RoPE (Qwen3)
    # multi-head latent attention (model/mla.py); a kv_lora_rank of 0: grouped-query attention
    kv_lora_rank: int = 0          # the compressed key/value latent a token caches
    q_lora_rank: int = 0           # the queries' low-rank bottleneck; 0: a full query projection
    qk_nope_head_dim: int = 128    # per head: query/key channels without position ...
    qk_rope_head_dim: int = 64     # ... and with RoPE (the key's shared by all heads)
    v_head_dim: int = 128          # per head: value channels
    # mixture of experts (model/moe.py); 0 experts: every feed-forward is dense
    n_experts: int = 0             # routed experts in each sparse layer
    n_active_experts: int = 2      # experts each token is routed to (top-k)
    n_shared_experts: int = 0      # experts every token goes through (DeepSeekMoE)
    expert_ffn_dim: int = 0        # each expert's SwiGLU hidden size; 0 means ffn_dim
    dense_layers: int = 0          # the first layers stay dense, of ffn_dim (DeepSeek's first_k_dense_replace)
    router: str = "softmax"        # "softmax" over the experts (Mixtral, Qwen) or "sigmoid" each (DeepSeek-V3)
    norm_topk: bool = True         # the chosen experts' weights renormalised to sum to 1
    route_scale: float = 1.0       # and then multiplied by this (DeepSeek-V3: 2.5)
    expert_groups: int = 1         # group-limited routing: the experts in this many groups, ...
    topk_groups: int = 1           # ... of which a token may use the best this many
    expert_bias: bool = False      # a per-expert bias on selection only: auxiliary-loss-free balancing
    seq_aux_loss: float = 0.0      # while training: this times the sequence-wise balance loss (DeepSeek-V3: 1e-4)
    expert_input_scaled: bool = False   # the router's weight scales an expert's input, not its output (Llama 4)
    moe_every: int = 1             # of the layers after dense_layers, every this-many-th is sparse (Llama 4 Maverick: 2)
    # Llama 4's attention (iRoPE): every nope_every-th layer has no RoPE and attends over the whole
    # context; the others rotate, may attend within chunks only, and may L2-normalise queries and keys
    nope_every: int = 0            # 0: every layer rotates
    attention_chunk: int = 0       # the rotating layers attend within chunks of this many positions; 0: all
    qk_l2_norm: bool = False       # a weightless RMS norm on queries and keys after RoPE, rotating layers only
    attn_temperature: float = 0.0  # RoPE-free layers scale queries by 1 + this * log(1 + floor((pos + 1) / attn_floor))
    attn_floor: int = 8192
    # multi-token prediction (DeepSeek-V3): modules that each predict one token further ahead
    mtp_depth: int = 0             # how many (DeepSeek-V3's num_nextn_predict_layers: 1)

    def __post_init__(self) -> None:
        self._check_types()
        self._check_experts()
        self._check_latent()
        if not self.n_kv_heads:
            object.__setattr__(self, "n_kv_heads", self.n_heads)
        if not self.head_dim:
            if self.dim % self.n_heads:
                raise ValueError(f"dim {self.dim} is not divisible by n_heads {self.n_heads}")
            object.__setattr__(self, "head_dim", self.dim // self.n_heads)
        if isinstance(self.eos_token_id, list):
            object.__setattr__(self, "eos_token_id", tuple(self.eos_token_id))
        if isinstance(self.rope_scaling, dict):
            kind = YarnScaling if self.rope_scaling.get("rope_type") == "yarn" else RopeScaling
            try:
                object.__setattr__(self, "rope_scaling", kind(**self.rope_scaling))
            except TypeError:   # a key the scaling does not have
                known = ", ".join(f.name for f in dataclasses.fields(kind))
                raise FieldError("rope_scaling", f"takes only {known}; got "
                                 f"{_shown(sorted(self.rope_scaling))}") from None
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_kv_heads {self.n_kv_heads} does not divide n_heads {self.n_heads}")
        if self.rope_dim % 2:
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
        if not isinstance(self.rope_scaling, (RopeScaling, YarnScaling, dict, type(None))):
            raise FieldError("rope_scaling", f"must be a table of llama3 or yarn scaling parameters or null, "
                             f"got {_shown(self.rope_scaling)}")

    def _check_experts(self) -> None:
        for f in ("n_experts", "n_shared_experts", "expert_ffn_dim", "dense_layers", "mtp_depth"):
            check_int(f, getattr(self, f), minimum=0)
        for f in ("n_active_experts", "expert_groups", "topk_groups", "moe_every", "attn_floor"):
            check_int(f, getattr(self, f))
        for f in ("nope_every", "attention_chunk"):
            check_int(f, getattr(self, f), minimum=0)
        check_float("route_scale", self.route_scale)
        for f in ("attn_temperature", "seq_aux_loss"):
            value = getattr(self, f)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
                raise FieldError(f, f"must be a finite number >= 0, got {_shown(value)}")
        for f in ("norm_topk", "expert_bias", "qk_norm", "qk_l2_norm", "expert_input_scaled"):
            if not isinstance(getattr(self, f), bool):
                raise FieldError(f, f"must be true or false, got {_shown(getattr(self, f))}")
        if self.router not in ("softmax", "sigmoid"):
            raise FieldError("router", f"must be softmax or sigmoid, got {_shown(self.router)}")
        if not self.expert_ffn_dim:
            object.__setattr__(self, "expert_ffn_dim", self.ffn_dim)
        if not self.n_experts:
            return
        if self.n_active_experts > self.n_experts:
            raise FieldError("n_active_experts", f"must not exceed n_experts ({self.n_experts}), "
                             f"got {self.n_active_experts}")
        if self.n_experts % self.expert_groups or self.topk_groups > self.expert_groups:
            raise FieldError("expert_groups", f"must divide n_experts ({self.n_experts}) and be at least "
                             f"topk_groups ({self.topk_groups}), got {self.expert_groups}")
        if self.n_active_experts > self.topk_groups * (self.n_experts // self.expert_groups):
            raise FieldError("n_active_experts", "exceeds the experts of the groups a token may use")
        if self.dense_layers > self.n_layers:
            raise FieldError("dense_layers", f"must not exceed n_layers ({self.n_layers}), got {self.dense_layers}")

    def _check_latent(self) -> None:
        for f in ("kv_lora_rank", "q_lora_rank"):
            check_int(f, getattr(self, f), minimum=0)
        for f in ("qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"):
            check_int(f, getattr(self, f))
        if not self.kv_lora_rank:
            return
        for f in ("qk_norm", "qk_l2_norm", "nope_every", "attention_chunk", "attn_temperature"):
            if getattr(self, f):
                raise FieldError(f, "applies to grouped-query attention; latent attention has its own norms and RoPE")
        if self.qk_rope_head_dim % 2:
            raise FieldError("qk_rope_head_dim", f"must be even for RoPE, got {self.qk_rope_head_dim}")
        # every head has its own keys and values, expanded from the shared latent
        object.__setattr__(self, "n_kv_heads", self.n_heads)
        object.__setattr__(self, "head_dim", self.qk_nope_head_dim + self.qk_rope_head_dim)

    @property
    def latent(self) -> bool:
        """Multi-head latent attention (else grouped-query attention)."""
        return self.kv_lora_rank > 0

    @property
    def rope_dim(self) -> int:
        """The channels per head that RoPE rotates."""
        return self.qk_rope_head_dim if self.latent else self.head_dim

    def is_moe_layer(self, layer: int) -> bool:
        return self.n_experts > 0 and layer >= self.dense_layers and (layer + 1) % self.moe_every == 0

    def rotates(self, layer: int) -> bool:
        """Whether a layer applies RoPE (Llama 4 leaves it out of every nope_every-th)."""
        return not self.nope_every or (layer + 1) % self.nope_every != 0

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


def ffn_params(c: ModelConfig, layer: int, active: bool = False) -> int:
    """Matmul parameters of a layer's feed-forward: dense, or the router and every expert (the
    ones a token uses, when `active`: its top-k and the shared ones)."""
    if not c.is_moe_layer(layer):
        return 3 * c.dim * c.ffn_dim
    experts = (c.n_active_experts if active else c.n_experts) + c.n_shared_experts
    return c.dim * c.n_experts + experts * 3 * c.dim * c.expert_ffn_dim


def attention_params(c: ModelConfig, norms: bool = True) -> int:
    """Parameters of one layer's attention: grouped-query, or latent (with its latents' norms)."""
    if not c.latent:
        q, kv = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
        return c.dim * q + 2 * c.dim * kv + q * c.dim + (2 * c.head_dim if c.qk_norm and norms else 0)
    H = c.n_heads
    q = c.dim * c.q_lora_rank + c.q_lora_rank * H * c.head_dim if c.q_lora_rank else c.dim * H * c.head_dim
    kv = c.dim * (c.kv_lora_rank + c.qk_rope_head_dim) + c.kv_lora_rank * H * (c.qk_nope_head_dim + c.v_head_dim)
    latent_norms = (c.q_lora_rank + c.kv_lora_rank) if norms else 0
    return q + kv + H * c.v_head_dim * c.dim + latent_norms


def mtp_params(c: ModelConfig, active: bool = False) -> int:
    """Parameters of the multi-token prediction modules: each a block of the model's kind (the
    layer after the last), its two input norms, the projection of both inputs to one and the norm
    before the shared output head."""
    return sum(attention_params(c) + ffn_params(c, c.n_layers + k, active) + 2 * c.dim * c.dim + 5 * c.dim
               for k in range(c.mtp_depth))


def count_params(c: ModelConfig, active: bool = False, mtp: bool = False) -> int:
    """Parameter count from the architecture alone (tied embeddings counted once); with
    `active`, those a token uses (of a mixture of experts, its top-k and the shared ones). The
    multi-token prediction modules count only with `mtp`: published sizes leave them out
    (DeepSeek-V3's 671B; its checkpoint holds 685B)."""
    attention = attention_params(c)
    norms = 2 * c.dim                                  # attention_norm, ffn_norm
    layers = sum(attention + ffn_params(c, i, active) + norms for i in range(c.n_layers))
    embeddings = c.vocab_size * c.dim * (1 if c.tie_embeddings else 2)
    return layers + c.dim + embeddings + (mtp_params(c, active) if mtp else 0)   # + final norm
