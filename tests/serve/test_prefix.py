"""Prefix caching in the continuous batcher: a request whose prompt begins as a recent one did
copies those positions' keys and values instead of computing them, and gets exactly what it
would get alone; the cache keeps to its budget and shows in /metrics."""

from __future__ import annotations

import pytest

from lamina.model import Transformer, init_weights, preset
from lamina.serve import Batcher, BatcherConfig, SamplingParams
from lamina.serve.batcher import Request
from lamina.serve.metrics import Metrics
from lamina.serve.prefix import PrefixCache, common_prefix

from .test_batcher import alone, drain, greedy

SYSTEM = [(7 * i + 3) % 500 + 1 for i in range(48)]    # a shared "system prompt" of 48 tokens


@pytest.fixture(scope="module")
def model():
    return init_weights(Transformer(preset("debug")), seed=3, std=0.2)


@pytest.fixture(scope="module")
def tokenizer(smollm2):
    return smollm2.tokenizer


def test_common_prefix():
    assert common_prefix((1, 2, 3, 4), (1, 2, 9)) == 2
    assert common_prefix((1, 2), (1, 2, 3)) == 2
    assert common_prefix((5,), (1,)) == 0
    assert common_prefix((), (1,)) == 0


def test_requests_sharing_a_system_prompt_reuse_it_and_get_what_they_would_alone(model, tokenizer):
    b = Batcher(model, tokenizer, BatcherConfig(max_slots=2, max_len=128))
    questions = [[11, 12, 13], [21, 22], [31, 32, 33, 34], [11, 12, 14]]
    for q in questions:                                  # one after another: each finds the ones before
        r = b.submit(Request(SYSTEM + q, greedy(10)))
        drain(b)
        assert r.tokens == alone(model, SYSTEM + q, greedy(10)), q
    stats = b.prefixes.stats
    assert stats["hits"] == 3 and stats["lookups"] == 4
    assert stats["reused_tokens"] == 48 + 48 + 50        # the last shares [11, 12] more with the first
    assert b.stats["prompt_tokens"] == 51 + 2 + 4 + 1    # what was computed


def test_a_growing_chat_history_reuses_the_turns_before(model, tokenizer):
    b = Batcher(model, tokenizer, BatcherConfig(max_slots=2, max_len=160))
    history = SYSTEM + [40, 41, 42]
    for turn in range(3):
        r = b.submit(Request(list(history), greedy(8)))
        drain(b)
        assert r.tokens == alone(model, history, greedy(8))
        history += r.tokens + [50 + turn, 51 + turn]       # the reply, then the next user turn
    assert b.prefixes.stats["hits"] == 2
    # each hit reuses the whole previous prompt (the reply's own keys were never stored: it was decoded)
    assert b.prefixes.stats["reused_tokens"] == 51 + 61


def test_concurrent_and_sampled_requests_and_stop_tokens_are_unchanged(model, tokenizer):
    """Requests joining in one step, some sampled with a seed: the cache changes no output."""
    params = [greedy(9), SamplingParams(temperature=0.8, top_p=0.9, seed=5, max_new_tokens=9), greedy(9)]
    prompts = [SYSTEM + [60], SYSTEM + [61, 62], SYSTEM + [60]]
    cold = Batcher(model, tokenizer, BatcherConfig(max_slots=3, max_len=96, prefix_cache_mb=0))
    warm = Batcher(model, tokenizer, BatcherConfig(max_slots=3, max_len=96))
    warm.submit(Request(SYSTEM + [99], greedy(2)))
    drain(warm)                                         # the system prompt is now cached
    outs = {}
    for name, b in (("cold", cold), ("warm", warm)):
        reqs = [b.submit(Request(p, q)) for p, q in zip(prompts, params)]
        drain(b)
        outs[name] = [r.tokens for r in reqs]
    assert outs["warm"] == outs["cold"]
    assert cold.prefixes is None and warm.prefixes.stats["hits"] == 3


def test_the_prefix_cache_keeps_to_its_budget_and_shows_in_metrics(model, tokenizer):
    per_prompt = 2 * 2 * 64 * 2 * 16 * 4    # layers x (k, v) x tokens x kv heads x head dim x fp32
    b = Batcher(model, tokenizer, BatcherConfig(max_slots=1, max_len=96, prefix_cache_mb=2.5 * per_prompt / 2**20))
    for i in range(5):
        b.submit(Request([i + 1] * 64, greedy(1)))
        drain(b)
    assert len(b.prefixes.entries) == 2 and b.prefixes.nbytes <= b.prefixes.budget
    assert [k[1][0] for k in b.prefixes.entries] == [4, 5]      # the least recently used went first
    b.submit(Request([5] * 64 + [7], greedy(1)))
    drain(b)
    text = Metrics(b).render().decode()
    assert "lamina_prefix_cache_hits_total 1.0" in text
    assert "lamina_prefix_cache_reused_tokens_total 64.0" in text
    assert f"lamina_prefix_cache_bytes {float(b.prefixes.nbytes)}" in text


def test_a_store_larger_than_the_budget_is_skipped():
    import torch
    cache = PrefixCache(budget_bytes=100)
    cache.store(0, list(range(20)), [torch.zeros(1, 20, 4)])   # 320 bytes
    assert not cache.entries and cache.nbytes == 0


def test_a_long_prompt_is_prefilled_a_chunk_a_step_while_the_others_decode(model, tokenizer):
    """A 100-token prompt with chunks of 16 takes 7 steps to prefill in the last slot, while a
    running request goes on decoding one token a step; both get what they would alone, and the
    long one, done, decodes beside it from the slot after it."""
    b = Batcher(model, tokenizer, BatcherConfig(max_slots=3, max_len=160, prefill_chunk=16, prefix_cache_mb=0))
    short = b.submit(Request([5, 6, 7], greedy(30)))
    b.step()
    long_prompt = [(3 * i) % 400 + 2 for i in range(100)]
    long = b.submit(Request(long_prompt, greedy(6)))
    b.step()
    assert b.chunked is long and long.slot == 2 and long.prefilled == 16
    made = []
    while b.chunked is not None:
        made.append(len(short.tokens))
        b.step()
    assert made == list(range(made[0], made[0] + 6))        # one token a step, never stalled
    assert long.slot == 1 and long in b.running and len(long.tokens) == 2   # joined: its first two tokens
    text = Metrics(b).render().decode()
    assert "lamina_prefilling_requests 0.0" in text
    drain(b)
    assert short.tokens == alone(model, [5, 6, 7], greedy(30))
    assert long.tokens == alone(model, long_prompt, greedy(6))
    assert b.stats["prompt_tokens"] == 103


@pytest.mark.parametrize("compile", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_chunked_prefill_starts_from_the_prefix_cache_and_fills_every_slot(model, tokenizer, compile):
    """A long prompt sharing a cached beginning prefills only the rest, in chunks; requests
    joining meanwhile take the slots below it; compiled decode, whose padding rows write the
    free slots, leaves its slot intact."""
    b = Batcher(model, tokenizer, BatcherConfig(max_slots=3, max_len=160, prefill_chunk=16, compile=compile))
    base = [(5 * i) % 300 + 3 for i in range(60)]
    first = b.submit(Request(base, greedy(2)))
    drain(b)
    longer = b.submit(Request(base + [7] * 40, greedy(5)))
    others = [b.submit(Request([i + 1, i + 2], greedy(12))) for i in range(3)]
    b.step()
    assert b.chunked is longer and longer.prefilled == 60 + 16      # the cached 60, then a chunk
    assert len(b.running) == 2                                      # two below it; the third waits
    drain(b)
    assert first.tokens == alone(model, base, greedy(2))
    assert longer.tokens == alone(model, base + [7] * 40, greedy(5))
    for i, r in enumerate(others):
        assert r.tokens == alone(model, [i + 1, i + 2], greedy(12))
