"""The mixture-of-experts feed-forward (Shazeer et al. 2017; Mixtral, Jiang et al. 2024;
DeepSeekMoE, Dai et al. 2024; DeepSeek-V3, 2024): a router sends each token to its top-k of
`n_experts` SwiGLU experts and mixes their outputs by the router's weights; shared experts, when
the config has them, see every token.

Routing covers both families: a softmax over all experts (Mixtral, Qwen-MoE), or a sigmoid score
per expert (DeepSeek-V3), optionally limited to the best `topk_groups` of `expert_groups` groups,
the chosen weights renormalised and scaled by `route_scale`. Auxiliary-loss-free balancing
(Wang et al. 2024, used by DeepSeek-V3): a per-expert bias added to the scores for *choosing*
experts only, never to the weights that mix them; the trainer nudges it after each step towards
equal load (`update_expert_bias`).

The experts' weights are stacked, (E, F, D) and (E, D, F), and computed with grouped matmuls
(`F.grouped_mm`: the tokens sorted by expert, one kernel per projection for all experts), not a
Python loop over experts."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import ModelConfig
from .layers import FeedForward, Linear

SMALL = 8       # (token, expert) pairs up to which a layer computes them one by one (batch-1 decode)


def route(logits: Tensor, c: ModelConfig, bias: Tensor | None) -> tuple[Tensor, Tensor]:
    """(weights (N, k), experts (N, k)) of router logits (N, E), computed in float32."""
    logits = logits.float()
    scores = logits.softmax(-1) if c.router == "softmax" else logits.sigmoid()       # (N, E)
    choose = scores if bias is None else scores + bias                               # selection only
    if c.expert_groups > 1:
        groups = choose.view(len(choose), c.expert_groups, -1)                       # (N, G, E/G)
        best = groups.topk(min(2, groups.shape[-1]), dim=-1).values.sum(-1)           # (N, G): DeepSeek-V3
        keep = torch.zeros_like(best).scatter_(1, best.topk(c.topk_groups, dim=-1).indices, 1.0)
        choose = choose.masked_fill(~keep.bool().repeat_interleave(groups.shape[-1], 1), float("-inf"))
    experts = choose.topk(c.n_active_experts, dim=-1).indices                         # (N, k)
    weights = scores.gather(1, experts)                                              # (N, k)
    if c.norm_topk:
        weights = weights / (weights.sum(-1, keepdim=True) + 1e-20)
    return weights * c.route_scale, experts


def grouped_swiglu(x: Tensor, w1: Tensor, w2: Tensor, w3: Tensor, offsets: Tensor) -> Tensor:
    """SwiGLU of rows `x` (M, D) sorted by expert, row block e through expert e:
    w1, w3 (E, F, D), w2 (E, D, F); `offsets` (E,) int32, the end of each expert's block."""
    if hasattr(F, "grouped_mm"):
        def mm(a: Tensor, w: Tensor) -> Tensor:
            return F.grouped_mm(a, w.transpose(-2, -1), offs=offsets)
    else:                                   # an older torch: one matmul per expert
        def mm(a: Tensor, w: Tensor) -> Tensor:
            starts = [0, *offsets.tolist()]
            return torch.cat([a[s:e] @ w[i].T for i, (s, e) in enumerate(zip(starts, starts[1:]))])
    return mm(F.silu(mm(x, w1)) * mm(x, w3), w2)                                      # (M, D)


class Experts(nn.Module):
    """`n` SwiGLU experts, their weights stacked: w1, w3 (n, ffn_dim, dim), w2 (n, dim, ffn_dim)."""

    def __init__(self, n: int, dim: int, ffn_dim: int):
        super().__init__()
        self.w1 = nn.Parameter(torch.empty(n, ffn_dim, dim))    # gate
        self.w2 = nn.Parameter(torch.empty(n, dim, ffn_dim))    # down
        self.w3 = nn.Parameter(torch.empty(n, ffn_dim, dim))    # up

    def forward(self, x: Tensor, weights: Tensor, experts: Tensor, scale_input: bool = False) -> Tensor:
        """x (N, D); each row through its k experts (N, k), mixed by `weights` (N, k), which
        scale each expert's output, or with `scale_input` its input (Llama 4)."""
        N, k = experts.shape
        if N * k <= SMALL and not torch.compiler.is_compiling():
            return self.few(x, weights, experts, scale_input)
        flat = experts.flatten()                                  # (N*k,)
        order = flat.argsort(stable=True)
        offsets = torch.bincount(flat, minlength=self.w1.shape[0]).cumsum(0).to(torch.int32)
        rows = order // k                                         # the token of each sorted row
        w = weights.flatten()[order].unsqueeze(-1).to(x.dtype)   # (N*k, 1)
        inputs = x[rows] * w if scale_input else x[rows]
        y = grouped_swiglu(inputs, self.w1, self.w2, self.w3, offsets)                  # (N*k, D)
        return torch.zeros_like(x).index_add_(0, rows, y if scale_input else y * w)    # (N, D)

    def few(self, x: Tensor, weights: Tensor, experts: Tensor, scale_input: bool = False) -> Tensor:
        """A decode step's few (token, expert) pairs one by one: sorting and grouping cost more
        than they save when there are a handful of rows."""
        out = torch.zeros_like(x)
        for n, row in enumerate(experts.tolist()):
            for j, e in enumerate(row):
                w = weights[n, j].to(x.dtype)
                xe = x[n] * w if scale_input else x[n]
                h = F.silu(F.linear(xe, self.w1[e])) * F.linear(xe, self.w3[e])
                out[n] += F.linear(h, self.w2[e]) if scale_input else w * F.linear(h, self.w2[e])
        return out


class MoEFeedForward(nn.Module):
    """Router, routed experts and (if any) shared experts. Keeps, while training, the tokens each
    expert received since the trainer last read them (`load`), for balancing and the logs."""

    def __init__(self, c: ModelConfig):
        super().__init__()
        self.config = c
        self.gate = Linear(c.dim, c.n_experts)                    # the router
        self.experts = Experts(c.n_experts, c.dim, c.expert_ffn_dim)
        self.shared = FeedForward(c.dim, c.n_shared_experts * c.expert_ffn_dim) if c.n_shared_experts else None
        if c.expert_bias:
            self.register_buffer("expert_bias", torch.zeros(c.n_experts))
        else:
            self.expert_bias = None
        self.register_buffer("load", torch.zeros(c.n_experts), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        B, T, D = x.shape
        flat = x.reshape(-1, D)                                   # (N, D)
        logits = F.linear(flat.float(), self.gate.weight.float())      # (N, E): routed in float32, as DeepSeek-V3
        weights, experts = route(logits, self.config, self.expert_bias)
        if self.training:
            self.load += torch.bincount(experts.flatten(), minlength=self.config.n_experts).to(self.load.dtype)
            if self.config.seq_aux_loss:
                self.aux_loss = self.config.seq_aux_loss * sequence_balance_loss(
                    logits.view(B, T, -1), experts.view(B, T, -1), self.config.router)
        y = self.experts(flat, weights, experts, self.config.expert_input_scaled)
        if self.shared is not None:
            y = y + self.shared(flat)
        return y.view(B, T, D)


def sequence_balance_loss(logits: Tensor, experts: Tensor, router: str) -> Tensor:
    """DeepSeek-V3's complementary sequence-wise balance loss (its eqs. 17-20), the mean over rows
    of sum_i f_i P_i: f_i the share of the row's (token, expert) choices that went to expert i,
    times E; P_i its mean score, the scores normalised over the experts at each token. 1 when a
    row is spread evenly, up to E when it all goes to one expert. logits (B, T, E), experts (B, T, k)."""
    B, T, E = logits.shape
    scores = logits.softmax(-1) if router == "softmax" else logits.sigmoid()
    share = (scores / scores.sum(-1, keepdim=True)).mean(1)                          # (B, E)
    counts = torch.zeros(B, E, device=logits.device).scatter_add_(
        1, experts.flatten(1), torch.ones(B, experts[0].numel(), device=logits.device))
    return (counts * E / experts[0].numel() * share).sum(1).mean()


def moe_layers(model: nn.Module) -> list[MoEFeedForward]:
    return [m for m in model.modules() if isinstance(m, MoEFeedForward)]


@torch.no_grad()
def update_expert_bias(model: nn.Module, rate: float, loads: list[Tensor] | None = None) -> list[Tensor]:
    """Auxiliary-loss-free balancing, after an optimizer step: each expert's selection bias moves
    by `rate` towards equal load, up for experts below the mean and down for those above (Wang et
    al. 2024, "Auxiliary-Loss-Free Load Balancing Strategy for Mixture-of-Experts"). `loads` are
    the layers' token counts (all-reduced over ranks by the caller); by default their own. The
    counters restart; the loads used are returned."""
    layers = moe_layers(model)
    loads = [m.load.clone() for m in layers] if loads is None else loads
    for m, load in zip(layers, loads):
        if m.expert_bias is not None and rate:
            m.expert_bias += rate * torch.sign(load.mean() - load)
        m.load.zero_()
    return loads
