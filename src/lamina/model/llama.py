"""The Llama architecture (Touvron et al. 2023; Llama 2, Llama 3): pre-norm decoder blocks with
RMSNorm, rotary attention with grouped-query heads, and a SwiGLU feed-forward, or a
mixture of SwiGLU experts (`moe.py`) in the layers the config makes sparse. Parameter names
are Meta's (`wq`, `w1`, `attention_norm`, ...); `lamina.checkpoint` maps other formats to them."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import ModelConfig
from .kv_cache import Cache
from .layers import FeedForward, Linear, RMSNorm
from .loss import linear_cross_entropy
from .mla import LatentAttention
from .moe import MoEFeedForward
from .rope import apply_rope, rope_cos_sin, rope_inv_freq
from .segments import Segments


class Attention(nn.Module):
    def __init__(self, c: ModelConfig, layer_id: int):
        super().__init__()
        self.layer_id, self.n_heads, self.n_kv_heads, self.head_dim = (
            layer_id, c.n_heads, c.n_kv_heads, c.head_dim)
        self.wq = Linear(c.dim, c.n_heads * c.head_dim)
        self.wk = Linear(c.dim, c.n_kv_heads * c.head_dim)
        self.wv = Linear(c.dim, c.n_kv_heads * c.head_dim)
        self.wo = Linear(c.n_heads * c.head_dim, c.dim)
        if c.qk_norm:
            self.q_norm, self.k_norm = RMSNorm(c.head_dim, c.norm_eps), RMSNorm(c.head_dim, c.norm_eps)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, cache: Cache | None = None,
                slots: Tensor | None = None, mask: Tensor | Segments | None = None) -> Tensor:
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)     # (B, H, T, D)
        k = self.wk(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, KV, T, D)
        v = self.wv(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if hasattr(self, "q_norm"):                                                # Qwen3: per head, before RoPE
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(self.layer_id, k, v, slots)                        # (B, KV, S, D)
            # Attend over the slots the mask covers, a prefix of the cache: a prefill need not
            # read the slots that decoding will fill later.
            k, v = k[:, :, :mask.shape[-1]], v[:, :, :mask.shape[-1]]              # (B, KV, L, D)
        if isinstance(mask, Segments):
            y = mask.attend(q, k, v, enable_gqa=self.n_kv_heads != self.n_heads)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None,
                                               enable_gqa=self.n_kv_heads != self.n_heads)
        return self.wo(y.transpose(1, 2).reshape(B, T, -1))                        # (B, T, dim)


class TransformerBlock(nn.Module):
    def __init__(self, c: ModelConfig, layer_id: int):
        super().__init__()
        self.attention = LatentAttention(c, layer_id) if c.latent else Attention(c, layer_id)
        self.feed_forward = MoEFeedForward(c) if c.is_moe_layer(layer_id) else FeedForward(c.dim, c.ffn_dim)
        self.attention_norm = RMSNorm(c.dim, c.norm_eps)
        self.ffn_norm = RMSNorm(c.dim, c.norm_eps)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, cache: Cache | None = None,
                slots: Tensor | None = None, mask: Tensor | Segments | None = None) -> Tensor:
        x = x + self.attention(self.attention_norm(x), cos, sin, cache, slots, mask)
        return x + self.feed_forward(self.ffn_norm(x))


class Transformer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.dim)
        self.layers = nn.ModuleList(TransformerBlock(config, i) for i in range(config.n_layers))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.output = Linear(config.dim, config.vocab_size)
        if config.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        inv_freq = rope_inv_freq(config.rope_dim, config.rope_theta, config.rope_scaling)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def body(self, tokens: Tensor, positions: Tensor | None = None, cache: Cache | None = None,
             slots: Tensor | None = None, mask: Tensor | Segments | None = None) -> Tensor:
        """The final-normed hidden states (B, T, dim) of `tokens` (B, T): everything but the
        output layer, which each caller applies to the positions it needs (`logits`, or
        `lamina.model.loss` without the logits tensor).

        Without a cache this is the plain causal forward of training. With one, the caller gives
        each token's `positions` (B, T), the cache `slots` it is written to ((T,) for a KVCache,
        whose rows advance together; (B, T), each row its own, for a SlotCache), and a boolean
        attention `mask` (B, 1, T, L) over the cache's first L slots (True = may attend).
        Packed rows of several sequences (no cache) give their `Segments` as the mask: attention
        is then causal within each sequence, at the cost of the sequences alone."""
        B, T = tokens.shape
        if positions is None:
            positions = torch.arange(T, device=tokens.device).expand(B, T)
        if cache is not None and (slots is None or mask is None):
            raise ValueError("decoding with a KV cache needs slots and mask")
        h = self.tok_embeddings(tokens)                                # (B, T, dim)
        cos, sin = rope_cos_sin(self.inv_freq, positions, h.dtype)     # (B, 1, T, D)
        for layer in self.layers:
            h = layer(h, cos, sin, cache, slots, mask)
        return self.norm(h)

    def logits(self, h: Tensor) -> Tensor:
        """The output layer on hidden states from `body`: (..., dim) -> float32 (..., vocab)."""
        return self.output(h).float()

    def forward(self, tokens: Tensor, positions: Tensor | None = None, cache: Cache | None = None,
                slots: Tensor | None = None, mask: Tensor | Segments | None = None,
                targets: Tensor | None = None) -> Tensor:
        """Float32 logits (B, T, vocab) of every position (the arguments are `body`'s), or with
        `targets` (B, T) the mean cross-entropy against them (targets of -100 count for nothing),
        computed without the logits tensor (`lamina.model.loss.linear_cross_entropy`)."""
        h = self.body(tokens, positions, cache, slots, mask)
        if targets is not None:
            return linear_cross_entropy(h.flatten(0, 1), self.output.weight, targets.flatten())
        return self.logits(h)


def expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor a checkpoint must provide (no tied copy of the embeddings)."""
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in Transformer(config).state_dict().items()}
    if config.tie_embeddings:
        del shapes["output.weight"]
    return shapes


def first_mismatch(config: ModelConfig, weights: dict[str, Tensor]
                   ) -> tuple[str, tuple | None, tuple | None] | None:
    """The first tensor that does not fit `config`, as (name, its shape or None if missing,
    the expected shape or None if it does not belong), or None when all fit."""
    expected = expected_shapes(config)
    for name, shape in expected.items():
        if name not in weights:
            return name, None, shape
        if tuple(weights[name].shape) != shape:
            return name, tuple(weights[name].shape), shape
    extra = sorted(set(weights) - set(expected))
    return (extra[0], tuple(weights[extra[0]].shape), None) if extra else None


def from_state_dict(config: ModelConfig, state_dict: dict[str, Tensor],
                    dtype: torch.dtype | None = None) -> Transformer:
    """A model holding exactly these tensors (no copy unless `dtype` asks for one). Raises
    ValueError naming the first missing, unexpected or misshapen tensor."""
    state = dict(state_dict)
    if config.tie_embeddings:
        state.pop("output.weight", None)   # some exporters keep the tied copy
    mismatch = first_mismatch(config, state)
    if mismatch:
        name, got, want = mismatch
        raise ValueError(f"missing tensor {name}" if got is None else
                         f"unexpected tensor {name}" if want is None else
                         f"tensor {name} has shape {got}, the config says {want}")
    if dtype is not None:
        state = {k: v.to(dtype) for k, v in state.items()}
    if config.tie_embeddings:
        state["output.weight"] = state["tok_embeddings.weight"]
    with torch.device("meta"):
        model = Transformer(config)
    model.load_state_dict(state, assign=True)
    if config.tie_embeddings:
        model.output.weight = model.tok_embeddings.weight
    device = state["tok_embeddings.weight"].device
    inv_freq = rope_inv_freq(config.rope_dim, config.rope_theta, config.rope_scaling).to(device)
    model.register_buffer("inv_freq", inv_freq, persistent=False)
    return model.eval()


def weights(model: Transformer) -> dict[str, Tensor]:
    """The model's tensors by lamina name, without the tied copy of the embeddings."""
    state = model.state_dict()
    if model.config.tie_embeddings:
        del state["output.weight"]
    return state


def init_weights(model: Transformer, seed: int = 0, std: float = 0.02) -> Transformer:
    """Normal(0, std) weights and unit norms, deterministic for a seed (training starts here)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return model
