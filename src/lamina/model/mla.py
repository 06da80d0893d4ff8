"""Multi-head latent attention (DeepSeek-V2, 2024; DeepSeek-V3): keys and values are expanded per
head from one small latent per token (`kv_lora_rank` channels, normed), plus one RoPE key shared by
all heads; queries may pass through their own low-rank bottleneck (`q_lora_rank`). Each head's
query and key are the concatenation of a position-free part and a rotated part. Names follow
DeepSeek's reference code (`wq_a`, `q_norm`, `wq_b`, `wkv_a`, `kv_norm`, `wkv_b`, `wo`).

Without a cache (training, scoring) it runs the naive form, the reference: the latent expanded
into every head's keys and values. With a cache it keeps only the latent and the rotated RoPE key
per token (`kv_cache.cached_dims`: kv_lora_rank + qk_rope_head_dim channels per layer, against
2 × heads × head_dim for multi-head attention) and absorbs the key up-projection into the query
and the value up-projection into the output (DeepSeek-V2 §2.1.2): a decoded token's heads attend
over the latent itself, so the expanded keys and values are never made. A prefill (many new
tokens) expands the cached latents once instead, which costs less than attending in the
latent's width, as vLLM does. A cache made `expanded` holds every head's keys and values instead,
the naive form's cache, which bench/moe.py measures the latent one against."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .config import ModelConfig
from .kv_cache import Cache
from .layers import Linear, RMSNorm, attend
from .rope import apply_rope, softmax_mscale
from .segments import Segments

LATENT_NORM_EPS = 1e-6          # DeepSeek's latent norms use their own epsilon, not the config's


class LatentAttention(nn.Module):
    def __init__(self, c: ModelConfig, layer_id: int):
        super().__init__()
        self.layer_id, self.n_heads = layer_id, c.n_heads
        self.nope, self.rope, self.v_dim, self.rank = c.qk_nope_head_dim, c.qk_rope_head_dim, c.v_head_dim, c.kv_lora_rank
        qk = c.qk_nope_head_dim + c.qk_rope_head_dim
        if c.q_lora_rank:
            self.wq_a = Linear(c.dim, c.q_lora_rank)
            self.q_norm = RMSNorm(c.q_lora_rank, LATENT_NORM_EPS)
            self.wq_b = Linear(c.q_lora_rank, c.n_heads * qk)
        else:
            self.wq = Linear(c.dim, c.n_heads * qk)
        self.wkv_a = Linear(c.dim, c.kv_lora_rank + c.qk_rope_head_dim)
        self.kv_norm = RMSNorm(c.kv_lora_rank, LATENT_NORM_EPS)
        self.wkv_b = Linear(c.kv_lora_rank, c.n_heads * (c.qk_nope_head_dim + c.v_head_dim))
        self.wo = Linear(c.n_heads * c.v_head_dim, c.dim)
        self.scale = qk ** -0.5 * softmax_mscale(c.rope_scaling)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, cache: Cache | None = None,
                slots: Tensor | None = None, mask: Tensor | Segments | None = None) -> Tensor:
        B, T, _ = x.shape
        H = self.n_heads
        q = self.wq_b(self.q_norm(self.wq_a(x))) if hasattr(self, "wq_a") else self.wq(x)
        q_nope, q_pe = q.view(B, T, H, -1).transpose(1, 2).split([self.nope, self.rope], dim=-1)  # (B, H, T, *)
        latent, k_pe = self.wkv_a(x).split([self.rank, self.rope], dim=-1)           # (B, T, rank), (B, T, rope)
        latent = self.kv_norm(latent)
        k_pe = apply_rope(k_pe.unsqueeze(1), cos, sin)                               # (B, 1, T, rope)
        q_pe = apply_rope(q_pe, cos, sin)
        if cache is not None and not cache.expanded:
            return self.absorbed(q_nope, q_pe, latent, k_pe, cache, slots, mask)
        kv = self.wkv_b(latent).view(B, T, H, -1).transpose(1, 2)                   # (B, H, T, nope + v)
        k_nope, v = kv.split([self.nope, self.v_dim], dim=-1)
        q = torch.cat((q_nope, q_pe), dim=-1)                                       # (B, H, T, qk)
        k = torch.cat((k_nope, k_pe.expand(B, H, T, self.rope)), dim=-1)
        if cache is not None:           # the naive cache: every head's keys and values, expanded
            k, v = cache.update(self.layer_id, k, v, slots)
            k, v = k[:, :, :mask.shape[-1]], v[:, :, :mask.shape[-1]]
        if isinstance(mask, Segments):
            y = mask.attend(q, k, v, scale=self.scale)
        else:
            y = attend(q, k, v, mask, self.scale)
        return self.wo(y.transpose(1, 2).reshape(B, T, H * self.v_dim))                # (B, T, dim)

    def absorbed(self, q_nope: Tensor, q_pe: Tensor, latent: Tensor, k_pe: Tensor, cache: Cache, slots: Tensor,
                 mask: Tensor) -> Tensor:
        """Attention over the cached latents: q_nope (B, H, T, nope), q_pe (B, H, T, rope) rotated,
        the new tokens' latent (B, T, rank) and rotated key k_pe (B, 1, T, rope)."""
        B, H, T, _ = q_nope.shape
        c_kv, c_pe = cache.update(self.layer_id, latent.unsqueeze(1), k_pe, slots)   # (B, 1, S, rank), (B, 1, S, rope)
        L = mask.shape[-1]
        c_kv, c_pe = c_kv[:, :, :L], c_pe[:, :, :L]
        if T > 1:       # a prefill: expanding the latents once costs less than attending in the latent's width
            kv = self.wkv_b(c_kv.squeeze(1)).view(B, L, H, -1).transpose(1, 2)            # (B, H, L, nope + v)
            k_nope, v = kv.split([self.nope, self.v_dim], dim=-1)
            k = torch.cat((k_nope, c_pe.expand(B, H, L, self.rope)), dim=-1)
            y = attend(torch.cat((q_nope, q_pe), dim=-1), k, v, mask, self.scale)
            return self.wo(y.transpose(1, 2).reshape(B, T, H * self.v_dim))
        w = self.wkv_b.weight.view(H, self.nope + self.v_dim, self.rank)
        q_latent = torch.einsum("bhtn,hnr->bhtr", q_nope, w[:, :self.nope])                # (B, H, T, rank)
        q = torch.cat((q_latent, q_pe), dim=-1).view(B, 1, H, -1)      # (B, 1, H, rank + rope): heads as rows
        k = torch.cat((c_kv, c_pe), dim=-1)                                                # (B, 1, L, rank + rope)
        # one key/value head shared by all: the heads attend as rows of one query block, so the
        # latent is read once per token, never copied per head
        y = attend(q, k, c_kv, mask, self.scale)                                          # (B, 1, H, rank)
        y = y.view(B, H, T, self.rank)
        y = torch.einsum("bhtr,hvr->bhtv", y, w[:, self.nope:])                            # (B, H, T, v)
        return self.wo(y.transpose(1, 2).reshape(B, T, H * self.v_dim))
