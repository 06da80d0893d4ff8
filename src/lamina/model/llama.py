"""The Llama architecture (Touvron et al. 2023; Llama 2, Llama 3): pre-norm decoder blocks with
RMSNorm, rotary attention with grouped-query heads, and a SwiGLU feed-forward, or a
mixture of SwiGLU experts (`moe.py`) in the layers the config makes sparse; latent attention
(`mla.py`) where the config compresses keys and values; and, where it asks for them,
DeepSeek-V3's multi-token prediction modules after the last layer. Parameter names are Meta's
(`wq`, `w1`, `attention_norm`, ...); `lamina.checkpoint` maps other formats to them."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import ModelConfig
from .kv_cache import Cache
from .layers import FeedForward, Linear, RMSNorm
from .loss import IGNORE_INDEX, linear_cross_entropy
from .mla import LatentAttention
from .moe import MoEFeedForward
from .rope import apply_rope, rope_attention_factor, rope_cos_sin, rope_inv_freq
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
        self.l2_eps = c.norm_eps if c.qk_l2_norm and c.rotates(layer_id) else None

    def forward(self, x: Tensor, cos: Tensor | None, sin: Tensor | None, cache: Cache | None = None,
                slots: Tensor | None = None, mask: Tensor | Segments | None = None,
                q_scale: Tensor | None = None) -> Tensor:
        """`cos`, `sin` None: a layer without RoPE (Llama 4), whose queries `q_scale` (B, 1, T, 1)
        may scale."""
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)     # (B, H, T, D)
        k = self.wk(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, KV, T, D)
        v = self.wv(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if hasattr(self, "q_norm"):                                                # Qwen3: per head, before RoPE
            q, k = self.q_norm(q), self.k_norm(k)
        if cos is not None:
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if self.l2_eps is not None:                                                # Llama 4: after RoPE, no weight
            q, k = (F.rms_norm(t.float(), (self.head_dim,), eps=self.l2_eps).type_as(t) for t in (q, k))
        if q_scale is not None:
            q = (q * q_scale).to(q.dtype)
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

    def forward(self, x: Tensor, cos: Tensor | None, sin: Tensor | None, cache: Cache | None = None,
                slots: Tensor | None = None, mask: Tensor | Segments | None = None,
                q_scale: Tensor | None = None) -> Tensor:
        attention_in = self.attention_norm(x)
        x = x + (self.attention(attention_in, cos, sin, cache, slots, mask) if q_scale is None else
                 self.attention(attention_in, cos, sin, cache, slots, mask, q_scale))
        return x + self.feed_forward(self.ffn_norm(x))


class MultiTokenPredictor(TransformerBlock):
    """One depth of multi-token prediction (DeepSeek-V3, Liu et al. 2024, section 2.2): at
    position i, the hidden state of the depth before (the main model's final-normed output for
    the first) and the embedding of the token k ahead, each normed, projected together to one
    and run through a block of the model's kind, predict the token k+1 ahead through the shared
    output head, after a norm of its own. The embedding and the head are the model's; the
    concatenation puts the embedding first, as DeepSeek's checkpoints are read (vLLM, SGLang)."""

    def __init__(self, c: ModelConfig, layer_id: int):
        super().__init__(c, layer_id)
        self.enorm = RMSNorm(c.dim, c.norm_eps)
        self.hnorm = RMSNorm(c.dim, c.norm_eps)
        self.eh_proj = Linear(2 * c.dim, c.dim)
        self.head_norm = RMSNorm(c.dim, c.norm_eps)

    def forward(self, h: Tensor, embedded: Tensor, cos: Tensor, sin: Tensor, cache: Cache | None = None,
                slots: Tensor | None = None, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Its output, for the next depth, and that output normed for the head: the norm runs
        here, inside the module, where FSDP2 has gathered its weights."""
        x = self.eh_proj(torch.cat((self.enorm(embedded), self.hnorm(h)), dim=-1))
        out = super().forward(x, cos, sin, cache, slots, mask)
        return out, self.head_norm(out)


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
        if config.mtp_depth:
            self.mtp = nn.ModuleList(MultiTokenPredictor(config, config.n_layers + k) for k in range(config.mtp_depth))
            # the last training forward's losses, main then each depth, for the logs
            self.register_buffer("last_losses", torch.zeros(1 + config.mtp_depth), persistent=False)
        inv_freq = rope_inv_freq(config.rope_dim, config.rope_theta, config.rope_scaling)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.rope_factor = rope_attention_factor(config.rope_scaling)

    def blocks(self) -> list[nn.Module]:
        """The decoder blocks, then any multi-token prediction modules: what activation
        checkpointing and sharding take one at a time."""
        return [*self.layers, *getattr(self, "mtp", ())]

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
        cos, sin = rope_cos_sin(self.inv_freq, positions, h.dtype, self.rope_factor)     # (B, 1, T, D)
        c = self.config
        if not (c.nope_every or c.attention_chunk):
            for layer in self.layers:
                h = layer(h, cos, sin, cache, slots, mask)
            return self.norm(h)
        local, q_scale = self.chunked(mask, positions, cache, slots), None
        if c.attn_temperature:                                         # Llama 4's, for long contexts
            q_scale = (torch.log1p(torch.floor((positions.float() + 1) / c.attn_floor)) * c.attn_temperature
                       + 1)[:, None, :, None]                          # (B, 1, T, 1)
        for i, layer in enumerate(self.layers):
            h = layer(h, cos, sin, cache, slots, local) if c.rotates(i) else \
                layer(h, None, None, cache, slots, mask, q_scale)
        return self.norm(h)

    def chunked(self, mask: Tensor | Segments | None, positions: Tensor, cache: Cache | None,
                slots: Tensor | None) -> Tensor | Segments | None:
        """The mask of the layers that attend within chunks of `attention_chunk` positions (Llama
        4's RoPE layers): the causal (or given) mask cut at chunk edges. Over a cache, a row's
        slots hold its positions at a fixed offset (slot - position: its left padding, or none),
        which each query's own slot and position give. Packed sequences only while they fit in one chunk."""
        C = self.config.attention_chunk
        if not C:
            return mask
        if isinstance(mask, Segments):
            if positions.shape[1] > C:
                raise ValueError(f"chunked attention over packed rows longer than a chunk ({positions.shape[1]} > "
                                 f"attention_chunk {C}) is not supported")
            return mask
        if cache is not None:
            offset = (slots - positions)[:, :, None]                             # (B, T, 1)
            keys = torch.arange(mask.shape[-1], device=positions.device) - offset           # (B, T, L)
            same = keys // C == positions[:, :, None] // C                      # (B, T, L)
            return mask & same[:, None]
        if mask is None and bool((positions < C).all()):
            return mask                                                          # one chunk: plain causal
        q, k = positions[:, :, None], positions[:, None, :]                     # (B, T, 1), (B, 1, T)
        local = (k <= q) & (k // C == q // C)
        return local[:, None] if mask is None else mask & local[:, None]

    def logits(self, h: Tensor) -> Tensor:
        """The output layer on hidden states from `body`: (..., dim) -> float32 (..., vocab)."""
        return self.output(h).float()

    def predict_ahead(self, depth: int, h: Tensor, tokens: Tensor, positions: Tensor, cache: Cache | None = None,
                      slots: Tensor | None = None, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Multi-token prediction module `depth` (0 = the first) at `positions` (B, T): `h`
        (B, T, dim) is the depth before's output there (for depth 0, `body`'s), `tokens` (B, T)
        the tokens depth + 1 ahead of each position. Its output (B, T, dim), which feeds the next
        depth, and that output normed, which `logits` turns into predictions of the tokens
        depth + 2 ahead. Caches take this module as layer n_layers + depth."""
        cos, sin = rope_cos_sin(self.inv_freq, positions, h.dtype, self.rope_factor)
        return self.mtp[depth](h, self.tok_embeddings(tokens), cos, sin, cache, slots, mask)

    def forward(self, tokens: Tensor, positions: Tensor | None = None, cache: Cache | None = None,
                slots: Tensor | None = None, mask: Tensor | Segments | None = None,
                targets: Tensor | None = None, mtp_weight: float = 0.0) -> Tensor:
        """Float32 logits (B, T, vocab) of every position (the arguments are `body`'s), or with
        `targets` (B, T) the mean cross-entropy against them (targets of -100 count for nothing),
        computed without the logits tensor (`lamina.model.loss.linear_cross_entropy`). With a
        `mtp_weight` and multi-token prediction modules, the loss adds that weight times the
        modules' mean loss (DeepSeek-V3's lambda: 0.3, later 0.1), and `last_losses` keeps the
        parts. While training with `seq_aux_loss`, it adds each sparse layer's weighted
        sequence-wise balance loss."""
        h = self.body(tokens, positions, cache, slots, mask)
        if targets is None:
            return self.logits(h)
        loss = linear_cross_entropy(h.flatten(0, 1), self.output.weight, targets.flatten())
        if mtp_weight and self.config.mtp_depth:
            if cache is not None or mask is not None:
                raise ValueError("multi-token prediction trains on plain causal rows, without cache or mask")
            ahead = self.ahead_losses(h, tokens, targets, positions)
            self.last_losses.copy_(torch.stack([loss, *ahead]).detach())
            loss = loss + mtp_weight * torch.stack(ahead).mean()
        if self.training and self.config.seq_aux_loss:      # each sparse layer's, of this forward
            loss = loss + sum(m.aux_loss for m in self.modules() if isinstance(m, MoEFeedForward))
        return loss

    def ahead_losses(self, h: Tensor, tokens: Tensor, targets: Tensor, positions: Tensor | None) -> list[Tensor]:
        """Each depth's mean cross-entropy on rows `tokens` (B, T) with next-token `targets`: depth
        k (from 1) sees at position i the token i + k and predicts the token i + k + 1; the last k
        positions have nothing to predict (their rows are shifted in from the right)."""
        B, T = tokens.shape
        if positions is None:
            positions = torch.arange(T, device=tokens.device).expand(B, T)
        stream = torch.cat((tokens, targets[:, -1:].clamp(min=0)), dim=1)                 # (B, T + 1)
        losses = []
        for depth in range(self.config.mtp_depth):
            k = depth + 1
            ahead = F.pad(stream[:, k:], (0, k - 1))                                        # (B, T): token i + k
            wanted = F.pad(targets[:, k:], (0, k), value=IGNORE_INDEX)                      # token i + k + 1
            h, normed = self.predict_ahead(depth, h, ahead, positions)
            losses.append(linear_cross_entropy(normed.flatten(0, 1), self.output.weight,
                                               wanted.flatten()))
        return losses


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
    for module in model.modules():          # the counters no checkpoint holds start at zero
        for name, buffer in module._buffers.items():
            if buffer is not None and buffer.is_meta:
                module._buffers[name] = torch.zeros(buffer.shape, dtype=buffer.dtype, device=device)
    inv_freq = rope_inv_freq(config.rope_dim, config.rope_theta, config.rope_scaling).to(device)
    model.register_buffer("inv_freq", inv_freq, persistent=False)
    return model.eval()


def without_mtp(config: ModelConfig, weights: dict[str, Tensor]) -> tuple[ModelConfig, dict[str, Tensor]]:
    """The model without its multi-token prediction modules, which next-token inference never
    runs: the formats that cannot hold them take it so."""
    return config.replace(mtp_depth=0), {k: v for k, v in weights.items() if not k.startswith("mtp.")}


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
