"""The layers every block is made of: a bias-free linear (with the CPU decode path that makes
batch-1 matmuls fast under torch.compile), RMSNorm, the SwiGLU feed-forward, and attention whose
values may be narrower than its queries and keys."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def linear(x: Tensor, weight: Tensor) -> Tensor:
    """x @ weight.T, for x (..., in) and weight (out, in).

    On CPU under torch.compile, a single row (batch-1 decode) is written as a multiply and a sum,
    which inductor turns into its own GEMV kernel: split over all cores and fused with the norm
    before it. Left as a matmul it calls MKL, whose GEMV at these sizes runs on one core at about
    half the memory bandwidth; decode is bandwidth-bound, so this makes it about 1.8x faster
    (bench/decode.py). Eagerly the product would be materialized, so there it stays a matmul."""
    if torch.compiler.is_compiling() and x.is_cpu and x.shape[:-1].numel() == 1:
        return (x.unsqueeze(-2) * weight).sum(-1)                      # (..., out)
    return F.linear(x, weight)


class Linear(nn.Linear):
    """A bias-free nn.Linear (same parameter name and shape) that computes with `linear`."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__(in_features, out_features, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # Normalise in float32 whatever the activation dtype, as the reference implementations do.
        return self.weight * F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).type_as(x)


class FeedForward(nn.Module):
    """SwiGLU (Shazeer 2020): w2(silu(w1 x) * w3 x), hidden size `hidden`."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1 = Linear(dim, hidden)   # gate
        self.w2 = Linear(hidden, dim)   # down
        self.w3 = Linear(dim, hidden)   # up

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


def attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale: float | None = None,
           enable_gqa: bool = False) -> Tensor:
    """Causal (or masked) attention with values of another width than queries and keys: the
    narrower side padded with zeros, which changes no dot product and no weighted sum, because
    scaled_dot_product_attention's fast kernels need one width (2-3x faster on CPU than the math
    path it otherwise takes). q, k (B, H, T or L, Dqk), v (B, H, L, Dv) -> (B, H, T, Dv)."""
    dqk, dv = q.shape[-1], v.shape[-1]
    if dv < dqk:
        v = F.pad(v, (0, dqk - dv))
    elif dqk < dv:
        q, k = F.pad(q, (0, dv - dqk)), F.pad(k, (0, dv - dqk))
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None, scale=scale,
                                       enable_gqa=enable_gqa)
    return y[..., :dv]
