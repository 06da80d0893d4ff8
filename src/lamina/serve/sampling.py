"""Choosing the next token from logits: repetition penalty, temperature, top-k, top-p, greedy.
Pure functions on (B, V) float32 logits.

A temperature below `GREEDY_BELOW` samples greedily: that is the limit sampling tends to as the
temperature falls, and dividing logits by a smaller one can overflow float32 (1e-300 becomes 0 in
float32; logits of ~20 over 1e-37 are past its largest value) and turn the softmax into NaN.
Seeds are what `torch.Generator.manual_seed` takes: integers in [-2**63, 2**64)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

GREEDY_BELOW = 1e-5                    # temperatures under this sample greedily (vLLM's cut-off too)
SEED_RANGE = (-2**63, 2**64 - 1)       # what torch.Generator.manual_seed accepts (negatives wrap)
MAX_LOGPROBS = 20                      # most alternatives reported per token (OpenAI's cap)


@dataclass(frozen=True, kw_only=True)
class SamplingParams:
    """How the next token is chosen. These defaults are the only ones: `lamina generate` and
    `chat`, `LLM.generate` and a server request that leaves a field out all take them. A small
    model sampled from its whole distribution wanders off into the long tail; a nucleus of 0.9 at
    temperature 0.7 keeps it on topic (Meta's Llama reference generation uses 0.9 and 0.6)."""
    max_new_tokens: int = 256         # most tokens to generate
    temperature: float = 0.7          # 0 (or below 1e-5) is greedy: deterministic, no sampling
    top_k: int = 0                    # sample among the k likeliest tokens (0: all)
    top_p: float = 0.9                # nucleus: the likeliest tokens that hold this much probability (1: all)
    repetition_penalty: float = 1.0   # >1 discourages tokens already in the text (CTRL, Keskar 2019)
    presence_penalty: float = 0.0     # subtracted from the logit of every token already generated (OpenAI's)
    frequency_penalty: float = 0.0    # subtracted once per time a token was already generated (OpenAI's)
    logit_bias: tuple[tuple[int, float], ...] = ()   # (token id, added to its logit), -100 bans, 100 forces
    min_tokens: int = 0               # the stop tokens cannot end the reply before this many tokens
    stop_token_ids: tuple[int, ...] = ()
    seed: int | None = None           # the same seed gives the same tokens (default: a fresh draw)
    logprobs: int | None = None       # report each chosen token's log-probability and this many likeliest (None: no)
    prompt_logprobs: int | None = None   # the same for every prompt token (None: no)

    def __post_init__(self) -> None:
        if self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if not 0 <= self.temperature < float("inf"):   # NaN too
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if self.seed is not None and not SEED_RANGE[0] <= self.seed <= SEED_RANGE[1]:
            raise ValueError(f"seed must be an integer in [-2**63, 2**64 - 1], got {self.seed}")
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2 <= getattr(self, name) <= 2:
                raise ValueError(f"{name} must be in [-2, 2], got {getattr(self, name)}")
        if any(not -100 <= b <= 100 for _, b in self.logit_bias):
            raise ValueError("logit_bias values must be in [-100, 100]")
        if self.min_tokens < 0:
            raise ValueError(f"min_tokens must be >= 0, got {self.min_tokens}")
        for name in ("logprobs", "prompt_logprobs"):
            if getattr(self, name) is not None and not 0 <= getattr(self, name) <= MAX_LOGPROBS:
                raise ValueError(f"{name} must be in [0, {MAX_LOGPROBS}], got {getattr(self, name)}")

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW

    @property
    def counts_tokens(self) -> bool:
        """Whether choosing a token needs the counts of those generated so far."""
        return self.presence_penalty != 0 or self.frequency_penalty != 0

    @property
    def raw(self) -> bool:
        """Whether the model's logits are used as they are (the argmax is the greedy token)."""
        return (self.repetition_penalty == 1.0 and not self.counts_tokens and not self.logit_bias
                and not self.min_tokens)


def penalize_repeats(logits: Tensor, seen: Tensor, penalty: float) -> Tensor:
    """Shrink the logits of tokens already seen (seen: (B, V) bool) toward lower probability."""
    if penalty == 1.0:
        return logits
    penalized = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalized, logits)


def keep_top_k(logits: Tensor, k: int) -> Tensor:
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]          # (B, 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def keep_top_p(logits: Tensor, p: float) -> Tensor:
    """Keep the smallest set of most likely tokens whose probability reaches p (Holtzman 2019)."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = sorted_logits.softmax(-1)
    drop = probs.cumsum(-1) - probs > p                            # mass before this token > p
    drop[..., 0] = False                                           # always keep the best one
    return logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))


def adjust(logits: Tensor, params: SamplingParams, seen: Tensor | None = None, counts: Tensor | None = None,
           generated: int = 0) -> Tensor:
    """The logits sampling chooses from: the model's (B, V), with the repetition penalty (tokens
    `seen`, (B, V) bool), presence and frequency penalties (`counts`, (B, V), of the tokens
    generated so far, as OpenAI and vLLM count them), the logit bias, and the stop tokens held off
    while fewer than `min_tokens` were `generated`."""
    if seen is not None:
        logits = penalize_repeats(logits, seen, params.repetition_penalty)
    if counts is not None:
        logits = logits - params.frequency_penalty * counts - params.presence_penalty * (counts > 0)
    if params.logit_bias:
        ids, bias = zip(*params.logit_bias)
        logits = logits.index_add(-1, torch.tensor(ids, device=logits.device),
                                  torch.tensor(bias, dtype=logits.dtype, device=logits.device).expand(len(logits), -1))
    if generated < params.min_tokens and params.stop_token_ids:
        logits = logits.index_fill(-1, torch.tensor(params.stop_token_ids, device=logits.device), float("-inf"))
    return logits


def next_token(logits: Tensor, params: SamplingParams, seen: Tensor | None,
               generator: torch.Generator | None, counts: Tensor | None = None, generated: int = 0) -> Tensor:
    """(B, V) logits -> (B,) token ids (`adjust` first)."""
    logits = adjust(logits, params, seen, counts, generated)
    if params.greedy:
        return logits.argmax(-1)
    logits = keep_top_p(keep_top_k(logits / params.temperature, params.top_k), params.top_p)
    return draw(logits.softmax(-1), generator)


def draw(probs: Tensor, generator: torch.Generator | None) -> Tensor:
    """One token per row of probs (B, V), each with its probability: by inverse transform, one
    uniform number per row against the row's cumulative sum. `torch.multinomial` draws an
    exponential variate for every vocabulary entry instead: for 16 rows of SmolLM2's 49k
    vocabulary on 2 CPU cores that is 15 ms a token, most of a batched decode step's sampling.
    A token of probability 0 is never drawn (the first index whose running sum exceeds u)."""
    cdf = probs.cumsum(-1)                                                          # (B, V)
    total = cdf[:, -1:]
    u = torch.rand(probs.shape[0], 1, generator=generator, device=probs.device, dtype=cdf.dtype) * total
    u = torch.minimum(u, torch.nextafter(total, torch.zeros_like(total)))          # below the total, rounding aside
    return torch.searchsorted(cdf, u, right=True).squeeze(-1)


@dataclass(frozen=True)
class TokenLogprob:
    """A token as it was chosen (or read, in a prompt): its log-probability under the model, and
    the model's likeliest tokens with theirs, best first (a prompt's first token: none of either)."""
    token: int
    logprob: float | None
    top: tuple[tuple[int, float], ...] = ()


def logprobs_of(logits: Tensor, tokens: Tensor, k: int) -> list[TokenLogprob]:
    """The model's own log-probabilities (before temperature, penalties or bias, as the scorer
    computes them) of `tokens` (N,) under `logits` (N, V), and the `k` likeliest of each row."""
    lp = torch.log_softmax(logits.float(), dim=-1)
    chosen = lp.gather(1, tokens[:, None])[:, 0].tolist()
    if not k:
        return [TokenLogprob(t, c) for t, c in zip(tokens.tolist(), chosen)]
    values, ids = lp.topk(k, dim=-1)
    return [TokenLogprob(t, c, tuple(zip(i, v))) for t, c, i, v in
            zip(tokens.tolist(), chosen, ids.tolist(), values.tolist())]
