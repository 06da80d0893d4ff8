"""The GRPO objective, as pure functions of tensors: group-normalised advantages, the clipped
surrogate with separate low and high clip, the k3 KL estimate, the three normalisations of the
loss (`grpo`, `dr_grpo`, `dapo`, as TRL names them), pass@k; and the log-probabilities of sampled
completions under a lamina model, computed only where a completion token is predicted. `lamina.post.grpo`
runs them; tests/post/test_grpo.py checks them against TRL's GRPOTrainer."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from ..model.segments import Segments, Sequence

LossType = Literal["grpo", "dr_grpo", "dapo"]
STD_EPS = 1e-4            # added to a group's std before dividing, as TRL does


def group_advantages(rewards: Tensor, group_size: int, scale: bool = True) -> Tensor:
    """Each reward minus its group's mean, over the group's (Bessel-corrected) std + 1e-4 when
    `scale`: rewards (N,) in consecutive groups of `group_size` -> (N,). A group whose answers all
    scored alike has advantage 0 and teaches nothing."""
    groups = rewards.view(-1, group_size)                                          # (P, G)
    advantages = groups - groups.mean(dim=1, keepdim=True)
    if scale:
        advantages = advantages / (groups.std(dim=1, keepdim=True) + STD_EPS)
    return advantages.flatten()


def clipped_surrogate(logps: Tensor, old_logps: Tensor, advantages: Tensor, epsilon_low: float,
                      epsilon_high: float) -> tuple[Tensor, Tensor]:
    """PPO's clipped objective per token, as a loss: -min(r A, clip(r, 1 - eps_low, 1 + eps_high) A)
    with r = exp(logp - old_logp); and whether each token's ratio was clipped where it mattered.
    logps, old_logps (N, C); advantages (N,) -> (N, C), (N, C) bool."""
    ratio = torch.exp(logps - old_logps)
    a = advantages[:, None]                                                         # (N, 1)
    loss = -torch.minimum(ratio * a, torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high) * a)
    clipped = ((ratio < 1 - epsilon_low) & (a < 0)) | ((ratio > 1 + epsilon_high) & (a > 0))
    return loss, clipped


def k3_kl(logps: Tensor, ref_logps: Tensor) -> Tensor:
    """Schulman's k3 estimate of KL(policy || reference) per token: exp(d) - d - 1 with d = ref - logp;
    never negative, unbiased, low variance (http://joschu.net/blog/kl-approx.html)."""
    d = ref_logps - logps
    return torch.exp(d) - d - 1


def kl_penalty(logps: Tensor, old_logps: Tensor, ref_logps: Tensor, corrected: bool = True) -> Tensor:
    """The per-token KL term: k3, times the importance ratio exp(logp - old_logp) when `corrected`,
    which makes its gradient the unbiased reverse-KL gradient for samples drawn from the old policy
    (DeepSeek-V3.2, 2025; TRL's default `use_bias_correction_kl`)."""
    kl = k3_kl(logps, ref_logps)
    return kl * torch.exp(logps - old_logps) if corrected else kl


def reduce_loss(per_token: Tensor, mask: Tensor, loss_type: LossType, *, sequences: int, tokens: int,
                max_new_tokens: int) -> Tensor:
    """These completions' share of the step's loss, so that micro-batches add up to it: `grpo` sums
    per-sequence means over the step's `sequences`; `dr_grpo` sums tokens over sequences ×
    max_new_tokens; `dapo` sums tokens over the step's completion `tokens`."""
    summed = per_token * mask
    if loss_type == "grpo":
        return (summed.sum(-1) / mask.sum(-1).clamp(min=1)).sum() / sequences
    if loss_type == "dr_grpo":
        return summed.sum() / (sequences * max_new_tokens)
    return summed.sum() / max(tokens, 1)


def grpo_loss(logps: Tensor, old_logps: Tensor, advantages: Tensor, mask: Tensor, *, loss_type: LossType,
              epsilon_low: float, epsilon_high: float, max_new_tokens: int, beta: float = 0.0,
              ref_logps: Tensor | None = None, kl_correction: bool = True) -> Tensor:
    """The GRPO loss of one batch of completions: log-probabilities (N, C) of the completion tokens
    under the policy, at sampling time and (beta > 0) under the reference; advantages (N,);
    mask (N, C) of the real tokens."""
    per_token, _ = clipped_surrogate(logps, old_logps, advantages, epsilon_low, epsilon_high)
    if beta:
        per_token = per_token + beta * kl_penalty(logps, old_logps, ref_logps, kl_correction)
    mask = mask.to(per_token.dtype)
    return reduce_loss(per_token, mask, loss_type, sequences=len(mask), tokens=int(mask.sum()),
                       max_new_tokens=max_new_tokens)


def pass_at_k(n: int, correct: int, k: int) -> float:
    """The chance that at least one of k of the n samples is right, c of them being right:
    1 - C(n - c, k) / C(n, k) (Chen et al. 2021, the unbiased estimator)."""
    if n - correct < k:
        return 1.0
    return 1.0 - math.comb(n - correct, k) / math.comb(n, k)


# ---- log-probabilities of completions ----

@dataclass(frozen=True)
class CompletionBatch:
    """Prompts and their completions as one packed row, what the training forward reads. A run of
    completions of the same prompt (a GRPO group) shares one copy of it: the prompt's tokens go
    through the model once, and each completion attends to them and to itself
    (`lamina.model.segments`), computing what a row of prompt + completion would. The last token
    of a completion is only ever a target, so it is not an input."""
    tokens: Tensor       # (1, T) the prompts and completions, each prompt once per run of its completions
    positions: Tensor    # (1, T) a completion's positions continue its prompt's
    layout: Segments     # who attends to whom
    at: Tensor           # (N, C) flat position whose hidden state predicts each completion token
    completion: Tensor   # (N, C) completion ids, 0 after
    mask: Tensor         # (N, C) bool: a real completion token

    @property
    def n_tokens(self) -> int:
        return int(self.mask.sum())


def completion_batch(prompts: list[list[int]], completions: list[list[int]], device=None) -> CompletionBatch:
    tokens: list[int] = []
    positions: list[int] = []
    sequences: list[Sequence] = []
    C = max((len(c) for c in completions), default=1)
    at = torch.zeros(len(prompts), C, dtype=torch.long)
    completion = torch.zeros(len(prompts), C, dtype=torch.long)
    mask = torch.zeros(len(prompts), C, dtype=torch.bool)
    prompt = range(0)
    for b, (p, c) in enumerate(zip(prompts, completions)):
        if not p:
            raise ValueError("a completion needs a prompt (at least one token) to be predicted from")
        if b == 0 or p != prompts[b - 1]:
            prompt = range(len(tokens), len(tokens) + len(p))
            tokens += p
            positions += range(len(p))
            sequences.append(Sequence(prompt))
        own = range(len(tokens), len(tokens) + len(c) - 1)         # inputs: the completion but its last token
        tokens += c[:-1]
        positions += range(len(p), len(p) + len(own))
        if own:
            sequences.append(Sequence(own, prefix=prompt))
        at[b, :len(c)] = torch.tensor([prompt[-1], *own], dtype=torch.long)[:len(c)]
        completion[b, :len(c)] = torch.tensor(c, dtype=torch.long)
        mask[b, :len(c)] = True
    device = torch.device(device or "cpu")
    return CompletionBatch(torch.tensor([tokens], device=device), torch.tensor([positions], device=device),
                           Segments.of(sequences, device), *(t.to(device) for t in (at, completion, mask)))


def _chunk_logprobs(h: Tensor, weight: Tensor, targets: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    logp = torch.log_softmax((h @ weight.T).float() / temperature, dim=-1)          # (r, vocab)
    entropy = -(logp.exp() * logp).sum(-1)
    return logp.gather(1, targets[:, None])[:, 0], entropy


def token_logprobs(h: Tensor, weight: Tensor, targets: Tensor, temperature: float = 1.0,
                   rows: int = 512) -> tuple[Tensor, Tensor]:
    """log softmax(h W^T / temperature) at each target, and each row's entropy: h (M, dim),
    targets (M,) -> float32 (M,), (M,). The head runs `rows` at a time, recomputed in the backward
    pass, so only one chunk's logits (rows × vocab) are ever held."""
    pieces = [checkpoint(_chunk_logprobs, h[s:s + rows], weight, targets[s:s + rows], temperature,
                         use_reentrant=False) if torch.is_grad_enabled() else
              _chunk_logprobs(h[s:s + rows], weight, targets[s:s + rows], temperature)
              for s in range(0, len(h), rows)]
    return torch.cat([p[0] for p in pieces]), torch.cat([p[1] for p in pieces])


def completion_logprobs(model, batch: CompletionBatch, temperature: float = 1.0) -> tuple[Tensor, Tensor]:
    """Per-token log-probabilities (N, C) of the completion tokens, and the entropy of each
    prediction (N, C), zero where masked. The output layer runs only where a completion token is
    predicted."""
    h = model.body(batch.tokens, batch.positions, mask=batch.layout)[0]           # (T, dim)
    picked = h[batch.at[batch.mask]]                                                # (M, dim)
    logp, entropy = token_logprobs(picked, model.output.weight, batch.completion[batch.mask], temperature)
    zeros = torch.zeros(batch.mask.shape, device=logp.device)
    return zeros.masked_scatter(batch.mask, logp), zeros.masked_scatter(batch.mask, entropy.detach())
