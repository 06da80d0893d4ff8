"""Prefix caching for the server: the keys and values of recent prompts, kept by their tokens.

Requests often begin alike: the same system prompt, the same few-shot block, a chat history that
grows by one turn. Keys and values at a position depend only on the tokens up to it, so a prompt
that begins with the first L tokens of a stored one can copy those L positions of the cache and
compute only the rest. Entries are whole prompts (with their LoRA adapter), found by the longest
common prefix with the new prompt, evicted least recently used beyond a memory budget."""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor

MIN_TOKENS = 16   # shorter shared beginnings are cheaper to recompute than to look up and copy


def common_prefix(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    """Length of the longest common prefix of two token tuples (binary search on slices, which
    compare in C)."""
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


class PrefixCache:
    def __init__(self, budget_bytes: int, min_tokens: int = MIN_TOKENS):
        self.budget, self.min_tokens = budget_bytes, min_tokens
        self.entries: OrderedDict[tuple[int, tuple[int, ...]], list[Tensor]] = OrderedDict()
        self.nbytes = 0
        self.stats = {"lookups": 0, "hits": 0, "reused_tokens": 0}

    def lookup(self, adapter: int, prompt: list[int]) -> tuple[int, list[Tensor] | None]:
        """(L, the stored layers' keys and values) for the longest beginning of `prompt` a stored
        prompt of the same adapter shares, at least `min_tokens` long and short of the whole
        prompt (its last token is computed for the logits); (0, None) if none."""
        self.stats["lookups"] += 1
        tokens, best, found = tuple(prompt), 0, None
        for key, kv in self.entries.items():
            if key[0] == adapter:
                n = min(common_prefix(key[1], tokens), len(tokens) - 1)
                if n > best:
                    best, found = n, key
        if found is None or best < self.min_tokens:
            return 0, None
        self.entries.move_to_end(found)
        self.stats["hits"] += 1
        self.stats["reused_tokens"] += best
        return best, self.entries[found]

    def store(self, adapter: int, prompt: list[int], kv: list[Tensor]) -> None:
        """Keep a prompt's keys and values (copies, (KV, len(prompt), D) per cache tensor)."""
        key = (adapter, tuple(prompt))
        size = sum(t.nbytes for t in kv)
        if len(prompt) < self.min_tokens or size > self.budget or key in self.entries:
            if key in self.entries:
                self.entries.move_to_end(key)
            return
        self.entries[key] = kv
        self.nbytes += size
        while self.nbytes > self.budget:
            _, old = self.entries.popitem(last=False)
            self.nbytes -= sum(t.nbytes for t in old)
