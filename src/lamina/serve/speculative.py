"""Speculative decoding that keeps greedy output as it is (Leviathan et al. 2023; Chen et al.
2023): a cheap drafter proposes the next few tokens, the model checks them all in one forward,
and the longest run of proposals it agrees with is kept, followed by the model's own next token.
Each forward then yields between one and (proposals + 1) tokens, and every one of them is the
token plain greedy decoding would have chosen.

Three drafters:
- "mtp", the model's own multi-token prediction modules (DeepSeek-V3, section 2.2 and 5.4.3: its
  one module's second token was accepted 85-90% of the time, 1.8x the tokens per second);
- "lookup", prompt lookup (Saxena 2023; transformers' `prompt_lookup_num_tokens`): the tokens that
  followed the latest earlier occurrence of the sequence's last few tokens, which needs no model
  and pays off where the output repeats its input (editing code, summarising a given text);
- a draft model with the same tokenizer (a smaller sibling, or a quantized copy of the model),
  decoding greedily over its own cache.

What follows is about the modules.
Module m, at the last position whose hidden state the model has checked, sees that state (module
0) or module m-1's output there, and the embedding of the token m+1 ahead, and proposes the token
m+2 ahead: D modules propose D tokens from one position, each through its own block.

Each module keeps its own cache (layers n_layers + m of one KVCache). At position i module m
needs the true token i+m+1, so its cache can be filled with true inputs only up to m positions
behind the model's; the positions in between are left out of its attention when it drafts, and
filled once the verified tokens reach them. What it drafts never changes the output, only how
many tokens a forward yields."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
from torch import Tensor

from ..errors import LaminaError
from ..model import KVCache, Transformer


@dataclass
class Speculation:
    """What speculative decoding did: model forwards after the prompt, tokens proposed, proposals kept."""

    forwards: int = 0
    proposed: int = 0
    accepted: int = 0

    @property
    def acceptance(self) -> float:
        return self.accepted / self.proposed if self.proposed else 0.0


class AheadDrafter:
    """Proposals from the model's multi-token prediction modules (see the module's docstring)."""

    def __init__(self, model: Transformer, cache: KVCache, size: int, n_tokens: int):
        self.model, self.cache, self.n = model, cache, n_tokens
        dim, dev, dtype = model.config.dim, cache.k[0].device, cache.k[0].dtype
        # hidden[m][i]: the input module m takes at position i (0: the model's final-normed state)
        self.hidden = [torch.zeros(size, dim, dtype=dtype, device=dev) for _ in range(n_tokens + 1)]
        self.filled = [0] * n_tokens        # module m's cache holds true entries for positions below this

    def checked(self, start: int, hidden: Tensor) -> None:
        """The model's final-normed states (T, dim) at positions start.. start + T - 1."""
        self.hidden[0][start:start + len(hidden)] = hidden

    def propose(self, seq: list[int]) -> list[int]:
        """Up to n tokens after `seq`, whose last token the model has not run yet (its states
        cover positions 0..len(seq) - 2)."""
        last = len(seq) - 2                              # the position drafting runs at
        proposals: list[int] = []
        for m in range(self.n):
            # bring the module's cache up to date with true inputs: positions filled..last - m
            lo, hi = self.filled[m], last - m
            if hi >= lo:
                out, normed = self._run(m, self.hidden[m][lo:hi + 1], seq[lo + m + 1:hi + m + 2], lo, true_below=lo)
                self.hidden[m + 1][lo:hi + 1] = out
                self.filled[m] = hi + 1
                if m == 0:
                    proposals.append(int(self.model.logits(normed[-1]).argmax()))
                    h = out[-1:]
                    continue
            # a draft at the last position, from the proposal before: its cache entry is provisional
            # and it attends only over the true entries and itself
            h, normed = self._run(m, h, [proposals[-1]], last, true_below=self.filled[m])
            proposals.append(int(self.model.logits(normed[-1]).argmax()))
        return proposals

    def _run(self, m: int, h: Tensor, tokens: list[int], start: int, true_below: int) -> tuple[Tensor, Tensor]:
        """Module m at positions start.. for inputs `h` (T, dim) and `tokens` (T,), attending over
        its cache's slots below `true_below` and causally over its own: its output and that
        output normed for the head, each (T, dim)."""
        dev, T = h.device, len(tokens)
        positions = torch.arange(start, start + T, device=dev)
        slots = torch.arange(start + T, device=dev)
        mask = (slots[None] <= positions[:, None]) & ((slots[None] < true_below) | (slots[None] >= start))
        out, normed = self.model.predict_ahead(m, h[None], torch.tensor([tokens], device=dev), positions[None],
                                               self.cache, positions, mask[None, None])
        return out[0], normed[0]


class LookupDrafter:
    """Prompt lookup: the `n_tokens` tokens that followed the latest earlier occurrence of the
    sequence's last `ngram` tokens (the longest of max_ngram..1 that occurs); none if none does."""

    def __init__(self, n_tokens: int, max_ngram: int = 3):
        self.n, self.max_ngram = n_tokens, max_ngram

    def checked(self, start: int, hidden: Tensor) -> None:
        pass

    def propose(self, seq: list[int]) -> list[int]:
        for size in range(min(self.max_ngram, len(seq) - 1), 0, -1):
            tail = seq[-size:]
            for i in range(len(seq) - size - 1, -1, -1):     # latest first, never the tail itself
                if seq[i:i + size] == tail:
                    return seq[i + size:i + size + self.n]
        return []


class ModelDrafter:
    """A draft model with the model's vocabulary: it decodes `n_tokens` greedily after the
    sequence, over a cache of its own whose entries past the last true token are provisional and
    rewritten at the next call."""

    def __init__(self, draft: Transformer, size: int, n_tokens: int):
        weight = draft.tok_embeddings.weight
        self.model, self.n, self.done = draft, n_tokens, 0
        self.cache = KVCache(draft.config, 1, size, dtype=weight.dtype, device=weight.device)

    def checked(self, start: int, hidden: Tensor) -> None:
        pass

    def propose(self, seq: list[int]) -> list[int]:
        tokens, start = seq[self.done:], self.done
        self.done = len(seq)                       # true entries below this once the first run is done
        proposals: list[int] = []
        for _ in range(self.n):
            dev = self.model.tok_embeddings.weight.device
            positions = torch.arange(start, start + len(tokens), device=dev)
            mask = torch.arange(start + len(tokens), device=dev)[None] <= positions[:, None]
            hidden = self.model.body(torch.tensor([tokens], device=dev), positions[None], self.cache, positions,
                                     mask[None, None])
            proposals.append(int(self.model.logits(hidden[0, -1]).argmax()))
            start, tokens = start + len(tokens), proposals[-1:]
        return proposals


DRAFTERS = ("mtp", "lookup")


def check_draft(c, n_tokens: int, draft: str | Transformer) -> None:
    """One clear refusal for drafting `n_tokens` a step with `draft` for a model of config `c`."""
    if draft == "mtp":
        if not c.mtp_depth:
            raise LaminaError("speculate: this model has no multi-token prediction modules to draft with; "
                              "draft by prompt lookup (--draft lookup) or with a draft model (--draft MODEL). "
                              "Self-speculation needs modules, and this model has none: train them "
                              "(model_overrides.mtp_depth) or load DeepSeek-V3's")
        if not 1 <= n_tokens <= c.mtp_depth:
            raise LaminaError(f"speculate: this model's multi-token prediction modules propose 1 to "
                              f"{c.mtp_depth} tokens a step")
    elif not 1 <= n_tokens <= 64:
        raise LaminaError(f"speculate: propose 1 to 64 tokens a step, not {n_tokens}")
    if isinstance(draft, Transformer) and draft.config.vocab_size != c.vocab_size:
        raise LaminaError(f"the draft model's vocabulary has {draft.config.vocab_size} tokens, the model's "
                          f"{c.vocab_size}: a draft model must share its tokenizer")
    if not isinstance(draft, Transformer) and draft not in DRAFTERS:
        raise LaminaError(f"draft: {draft!r} is not a drafter; choose mtp, lookup or a draft model")


@torch.inference_mode()
def speculate(model: Transformer, prompt: list[int], max_new_tokens: int, *, n_tokens: int = 1,
              draft: str | Transformer = "mtp", stop_token_ids: tuple[int, ...] = (), include_stop: bool = False,
              stats: Speculation | None = None) -> Iterator[int]:
    """Greedy decoding of `prompt`, the tokens yielded one at a time as plain greedy decoding
    yields them (a stop token ends it, yielded only with `include_stop`), `n_tokens` proposed
    before each forward by `draft`: "mtp" (the model's first n_tokens multi-token prediction
    modules), "lookup" (prompt lookup) or a draft model of the same vocabulary. `stats`, when
    given, counts what happened."""
    c = model.config
    check_draft(c, n_tokens, draft)
    if not prompt:
        raise LaminaError("the prompt needs at least one token")
    P = len(prompt)
    if P >= c.max_seq_len:
        raise LaminaError(f"the prompt has {P} tokens; this model's context is {c.max_seq_len}")
    max_new_tokens = min(max_new_tokens, c.max_seq_len - P)
    if max_new_tokens <= 0:
        return
    stats = stats if stats is not None else Speculation()
    weight = model.tok_embeddings.weight
    dev, size = weight.device, P + max_new_tokens + n_tokens + 1
    cache = KVCache(c, 1, size, dtype=weight.dtype, device=dev, layers=c.n_layers + (c.mtp_depth if draft == "mtp" else 0))
    drafter = (AheadDrafter(model, cache, size, n_tokens) if draft == "mtp" else LookupDrafter(n_tokens)
               if draft == "lookup" else ModelDrafter(draft, size, n_tokens))

    def forward(tokens: list[int], start: int) -> Tensor:
        """The model over `tokens` at positions start..; their final-normed states (T, dim)."""
        positions = torch.arange(start, start + len(tokens), device=dev)
        mask = torch.arange(start + len(tokens), device=dev)[None] <= positions[:, None]
        hidden = model.body(torch.tensor([tokens], device=dev), positions[None], cache, positions, mask[None, None])[0]
        drafter.checked(start, hidden)
        return hidden

    hidden = forward(prompt, 0)
    seq, made = list(prompt), 0
    new = [int(model.logits(hidden[-1]).argmax())]
    while True:
        for token in new:
            if token in stop_token_ids:
                if include_stop:
                    yield token
                return
            yield token
            seq.append(token)
            made += 1
            if made == max_new_tokens:
                return
        proposals = drafter.propose(seq)[:max_new_tokens - made - 1]
        N = len(seq) - 1
        picks = model.logits(forward([seq[-1], *proposals], N)).argmax(-1).tolist()   # the model's own choices
        kept = 0
        while kept < len(proposals) and proposals[kept] == picks[kept]:
            kept += 1
        new = [*proposals[:kept], picks[kept]]
        stats.forwards += 1
        stats.proposed += len(proposals)
        stats.accepted += kept
