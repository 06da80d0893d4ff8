"""Log-likelihood of continuations, computed so that work shared between requests is done once.

A benchmark asks for log P(continuation | context) for every choice of every item. lm-eval's
reference backend runs each (context + continuation) as its own row. Here the tokens are cut the
way lm-eval cuts them (`encode_pair`), and then:

- the *preamble* that every item of a block shares (MMLU's five solved examples, ~600 tokens) is
  run once, batch 1, and its keys/values are shared by every row that follows;
- each item's *context* (what its choices share) is run once, as one row, and only its last
  position goes through the output layer;
- the choices' *suffixes* (the continuation tokens but the last) are packed side by side into
  that same row, each attending to the context and to itself only (a tree mask), at the
  positions they would have had alone; one forward runs contexts and suffixes together, and only
  the positions that score a continuation token go through the output layer (a fifth of the
  model's weights for SmolLM2, and the log-softmax over its 49k-token vocabulary), a chunk of
  the vocabulary at a time, so that their logits are never held whole
  (`lamina.model.loss.linear_target_logprobs`).

Items are sorted by length and batched under a token budget. The keys and values a request sees
are those of its own tokens at its own positions, so the scores equal the one-row-per-request
computation up to float rounding (tests/eval/test_scoring.py, and per item against lm-eval in
tests/eval/test_parity.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

from ..model import KVCache, Transformer
from ..model.loss import linear_target_logprobs

MIN_PREAMBLE = 32       # a shared preamble shorter than this is not worth a forward of its own


@dataclass(frozen=True)
class ScoringRequest:
    """Score `continuation` after `context` (token ids). Requests with equal `item` are the
    choices of one question; equal `block` means they may share a long common preamble."""
    context: tuple[int, ...]
    continuation: tuple[int, ...]
    item: int = 0
    block: int = 0


def lm_eval_cut(context: str, continuation: str) -> tuple[str, str]:
    """lm-eval's first cut of a pair: trailing spaces of the context move to the continuation."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    return context, continuation


def pair_texts(context: str, continuation: str) -> tuple[str, ...]:
    """The texts `encode_pair` encodes for this pair, to encode many pairs' texts at once."""
    if not context:
        return (continuation,)
    context, continuation = lm_eval_cut(context, continuation)
    return context + continuation, context


def encode_pair(encode: Callable[[str], Sequence[int]], context: str, continuation: str,
                prefix_id: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Token ids of (context, continuation) exactly as lm-eval's causal backends cut them:
    trailing spaces of the context move to the continuation; the continuation is what encoding
    the whole adds after the context's own encoding; an empty context becomes `prefix_id`."""
    if not context:
        cont = list(encode(continuation))
        return ((prefix_id,), tuple(cont)) if cont[:1] != [prefix_id] else (tuple(cont[:1]), tuple(cont[1:]))
    context, continuation = lm_eval_cut(context, continuation)
    whole, ctx = encode(context + continuation), encode(context)
    return tuple(ctx), tuple(whole[len(ctx):])


def common_prefix(seqs: list[tuple[int, ...]]) -> int:
    """Length of the longest common prefix of token sequences."""
    first, n = seqs[0], min(len(s) for s in seqs)
    for s in seqs[1:]:
        i = 0
        while i < n and s[i] == first[i]:
            i += 1
        n = i
    return n


class SharedPrefixCache:
    """A KV cache (the interface of `lamina.model.KVCache`) whose first `A` slots hold a preamble
    stored once, (1, KV, A, D), and seen by every row; the slots after it are per row."""

    def __init__(self, prefix: KVCache | None, rows: int, room: int, config,
                 dtype: torch.dtype, device: torch.device):
        self.prefix_k = prefix.k if prefix is not None else None
        self.prefix_v = prefix.v if prefix is not None else None
        self.offset = prefix.max_len if prefix is not None else 0
        self.rows = KVCache(config, rows, room, dtype=dtype, device=device)

    def update(self, layer_id: int, k: Tensor, v: Tensor, slots: Tensor) -> tuple[Tensor, Tensor]:
        k_rows, v_rows = self.rows.update(layer_id, k, v, slots - self.offset)    # (B, KV, R, D)
        if self.prefix_k is None:
            return k_rows, v_rows
        B = k_rows.shape[0]
        k_all = torch.cat([self.prefix_k[layer_id].expand(B, -1, -1, -1), k_rows], dim=2)
        v_all = torch.cat([self.prefix_v[layer_id].expand(B, -1, -1, -1), v_rows], dim=2)
        return k_all, v_all                                                        # (B, KV, A+R, D)


@dataclass
class _Item:
    """One item's share of the work: its context (the tokens all its requests share, after the
    block's preamble) and each request's suffix, with where its scores come from."""
    index: list[int]            # request indices
    context: list[int]          # tokens after the preamble, up to the shared length
    start: int                  # absolute position of context[0] (= the preamble length)
    suffixes: list[list[int]]   # per request: input tokens after the shared part
    targets: list[list[int]]    # per request: the continuation tokens to score
    first: list[int]            # per request: index in [last context position] + suffix of its first score

    @property
    def width(self) -> int:
        return sum(len(s) for s in self.suffixes)

    @property
    def length(self) -> int:
        return len(self.context) + self.width


class Scorer:
    """Batched, prefix-sharing log-likelihoods on a lamina `Transformer`."""

    def __init__(self, model: Transformer, *, batch_size: int = 32, max_tokens: int = 4096,
                 max_len: int | None = None):
        self.model = model
        self.batch_size, self.max_tokens = batch_size, max_tokens
        self.max_len = max_len or model.config.max_seq_len
        weight = model.tok_embeddings.weight
        self.dtype, self.device = weight.dtype, weight.device

    @torch.inference_mode()
    def loglikelihood(self, requests: list[ScoringRequest], progress: Callable[[int], None] | None = None
                      ) -> list[tuple[float, bool]]:
        """(sum of log-probabilities of the continuation, whether greedy decoding would produce
        it) for every request, in order. `progress(n)` is called as items finish."""
        if any(not r.continuation for r in requests):
            raise ValueError("a request needs at least one continuation token")
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        for tokens, batches in self.plan(requests):
            preamble = self._prefill(tokens) if tokens else None
            for batch in batches:
                self._run(batch, preamble, results)
                if progress:
                    progress(len(batch))
        return results  # type: ignore[return-value]

    # -- planning --------------------------------------------------------------------------------
    def plan(self, requests: list[ScoringRequest]) -> list[tuple[list[int], list[list[_Item]]]]:
        """The work, without running the model: for each block of requests, (the preamble tokens
        its items share, its items in batches)."""
        by_block: dict[int, dict[int, list[int]]] = {}
        for i, r in enumerate(requests):
            by_block.setdefault(r.block, {}).setdefault(r.item, []).append(i)
        return [self._plan_block(requests, list(items.values())) for items in by_block.values()]

    def _plan_block(self, requests: list[ScoringRequest], groups: list[list[int]]) -> tuple[list[int], list[list[_Item]]]:
        """Split a block (`groups`: each item's request indices) into items, find the preamble
        they share, and batch them longest first under the budgets."""
        inputs, ctx_lens = {}, {}
        for g in groups:
            for i in g:
                r = requests[i]
                full = (r.context + r.continuation)[-(self.max_len + 1):]   # lm-eval truncates left
                inputs[i] = full[:-1]
                ctx_lens[i] = len(full) - len(r.continuation)
        shared = [min(common_prefix([inputs[i] for i in g]), min(ctx_lens[i] for i in g)) for g in groups]
        heads = [inputs[g[0]][:n] for g, n in zip(groups, shared)]
        A = min(common_prefix(heads), min(shared) - 1)
        A = A if A >= MIN_PREAMBLE else 0
        items = []
        for g, n in zip(groups, shared):
            full = [requests[i].context + requests[i].continuation for i in g]
            items.append(_Item(
                index=g, context=list(inputs[g[0]][A:n]), start=A,
                suffixes=[list(inputs[i][n:]) for i in g],
                targets=[list(f[-len(requests[i].continuation):]) for i, f in zip(g, full)],
                first=[ctx_lens[i] - 1 - (n - 1) for i in g]))
        items.sort(key=lambda it: it.length, reverse=True)
        batches: list[list[_Item]] = [[]]
        for it in items:
            batch = batches[-1]
            if batch and (len(batch) == self.batch_size or (len(batch) + 1) * batch[0].length > self.max_tokens):
                batches.append([it])
            else:
                batch.append(it)
        return list(heads[0][:A]), batches

    # -- running ---------------------------------------------------------------------------------
    def _prefill(self, tokens: list[int]) -> KVCache:
        """The keys and values of a preamble, batch 1."""
        A, dev = len(tokens), self.device
        cache = KVCache(self.model.config, 1, A, dtype=self.dtype, device=dev)
        slots = torch.arange(A, device=dev)
        mask = (slots[None, :] <= slots[:, None])[None, None]                      # (1, 1, A, A)
        self.model.body(torch.tensor([tokens], device=dev), slots[None], cache, slots, mask)
        return cache

    def _run(self, batch: list[_Item], preamble: KVCache | None, results: list) -> None:
        """One forward for a batch: each row holds an item's context, then its requests' suffixes
        side by side, then padding up to the longest row (items come sorted by length, so there is
        little). Only the positions that score a token go through the output layer."""
        A, dev, B = batch[0].start, self.device, len(batch)
        T = max(it.length for it in batch)
        tokens = torch.zeros(B, T, dtype=torch.long, device=dev)
        positions = torch.zeros(B, T, dtype=torch.long, device=dev)
        owner = torch.full((B, T), -2, dtype=torch.long, device=dev)   # -1: context; j >= 0: suffix j
        for b, it in enumerate(batch):
            n = len(it.context)
            tokens[b, :n] = torch.tensor(it.context, device=dev)
            positions[b, :n] = torch.arange(A, A + n, device=dev)
            owner[b, :n] = -1
            at = n
            for j, suffix in enumerate(it.suffixes):
                tokens[b, at:at + len(suffix)] = torch.tensor(suffix, device=dev)
                positions[b, at:at + len(suffix)] = torch.arange(A + n, A + n + len(suffix), device=dev)
                owner[b, at:at + len(suffix)] = j
                at += len(suffix)
        col = torch.arange(T, device=dev)
        query, key = owner[:, :, None], owner[:, None, :]
        # A context token sees the context before it; a suffix token sees the whole context and
        # its own suffix up to itself (a tree mask); padding sees itself only.
        causal = col[None, None, :] <= col[None, :, None]                  # (1, T, T)
        sees = (key == -1) & (query >= -1) & ((query >= 0) | causal)
        sees |= (query == key) & (query >= 0) & causal
        sees |= torch.eye(T, dtype=torch.bool, device=dev)[None]
        mask = torch.cat([torch.ones(B, T, A, dtype=torch.bool, device=dev), sees], dim=2)  # (B, T, A+T)
        cache = SharedPrefixCache(preamble, B, T, self.model.config, self.dtype, self.device)
        hidden = self.model.body(tokens, positions, cache, torch.arange(A, A + T, device=dev),
                                 mask[:, None]).flatten(0, 1)             # (B*T, dim)
        rows, targets, sizes = [], [], []
        for b, it in enumerate(batch):
            at = len(it.context)
            for s, target, first in zip(it.suffixes, it.targets, it.first):
                seq = [len(it.context) - 1] + list(range(at, at + len(s)))   # the positions scoring s
                rows += [b * T + c for c in seq[first:first + len(target)]]
                targets += target
                sizes.append(len(target))
                at += len(s)
        r, t = torch.tensor(rows, device=dev), torch.tensor(targets, device=dev)
        # The output layer on the scored rows only, chunk by chunk over the vocabulary: the
        # log-softmax at each target and whether it is the argmax, never the (rows, vocab) logits.
        # Each scoring row once (an item's requests all score their first token at its context's
        # last position); suffix rows that score nothing (WinoGrande's differing contexts) not at all.
        used, r = torch.unique(r, return_inverse=True)
        logp, greedy = linear_target_logprobs(hidden[used], self.model.output.weight, t, r)
        lls, greedy = logp.split(sizes), greedy.split(sizes)
        index = [i for it in batch for i in it.index]
        for i, ll, g in zip(index, lls, greedy):
            results[i] = (float(ll.sum()), bool(g.all()))
