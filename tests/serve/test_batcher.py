"""Continuous batching (`lamina.serve.Batcher`) on the debug preset: requests join and leave at
token boundaries and each gets what it would get alone."""

import time

import pytest
import torch

from lamina.errors import LaminaError
from lamina.model import Transformer, init_weights, preset
from lamina.model.kv_cache import SlotCache
from lamina.serve import Batcher, BatcherConfig, Engine, SamplingParams
from lamina.serve.batcher import QueueFull, Request, slot_length
from lamina.serve.text import StopMatcher

# Greedy tolerance: a row's logits in a batch equal its logits alone within this (fp32); the
# matmuls of a batch may only sum in another order.
ATOL = 1e-5


@pytest.fixture(scope="module")
def model():
    return init_weights(Transformer(preset("debug")), seed=3, std=0.2)


@pytest.fixture(scope="module")
def tokenizer(smollm2):
    return smollm2.tokenizer   # ids of the debug vocabulary (< 512) are real SmolLM2 tokens


def alone(model, prompt, params):
    """The tokens the static engine generates for one prompt by itself."""
    out = []
    for (t,) in Engine(model).generate([prompt], params):
        if t is None:
            break
        out.append(t)
    return out


def greedy(n, **kw):
    return SamplingParams(temperature=0, max_new_tokens=n, **kw)


def drain(batcher, trace=None):
    while batcher.running or batcher.waiting or batcher.chunked:
        batcher.step()
        if trace is not None:
            trace.append(batcher.n_running)


def test_requests_join_and_leave_at_token_boundaries_and_greedy_equals_alone(model, tokenizer):
    b = Batcher(model, tokenizer, BatcherConfig(max_slots=3, max_len=64))
    prompts = [[1, 2, 3], [7, 8, 9, 10, 11, 12, 13], [42], [300, 301, 302, 303], [5, 6], [9] * 20]
    lengths = [12, 6, 9, 15, 5, 8]
    running, reqs = [], []
    for p, n in zip(prompts, lengths):     # one joins at every step, while others run
        reqs.append(b.submit(Request(p, greedy(n))))
        b.step()
        running.append(b.n_running)
    drain(b, running)
    assert max(running) == 3                           # never more than the slots
    assert running[:3] == [1, 2, 3] and running[-1] == 0
    assert any(x < y for x, y in zip(running[3:], running[4:]))   # a slot freed, then reused
    for r, p, n in zip(reqs, prompts, lengths):
        assert r.tokens == alone(model, p, greedy(n)), p
        assert r.finish_reason == "length"


def test_requests_that_join_together_prefill_together(model, tokenizer):
    b = Batcher(model, tokenizer, BatcherConfig(max_slots=4, max_len=64))
    prompts = [[1, 2, 3], [7, 8, 9, 10, 11, 12, 13], [42], [300, 301, 302, 303]]
    reqs = [b.submit(Request(p, greedy(10))) for p in prompts]
    b.step()
    assert b.n_running == 4 and all(len(r.tokens) == 2 for r in reqs)   # prefill + one decode
    drain(b)
    assert [r.tokens for r in reqs] == [alone(model, p, greedy(10)) for p in prompts]


def test_batched_decode_logits_equal_the_uncached_forward_within_tolerance(model, tokenizer):
    b = Batcher(model, tokenizer, BatcherConfig(max_slots=4, max_len=64))
    prompts = [[1, 2, 3, 4, 5], [9, 8], [100] * 11]
    for p in prompts:
        b.submit(Request(p, greedy(6)))
    for _ in range(3):
        b.step()
    assert b.n_running == 3
    with torch.inference_mode():
        batched = b._decode_step(b.running)                                 # (3, V)
        for r, row in zip(b.running, batched):
            full = model(torch.tensor([r.prompt + r.tokens]))[0, -1]
            torch.testing.assert_close(row, full, atol=ATOL, rtol=ATOL)


def test_each_request_keeps_its_own_sampling_parameters_and_seed(model, tokenizer):
    sampled = SamplingParams(temperature=1.0, top_p=0.9, top_k=50, seed=11, max_new_tokens=12)
    prompt = [4, 5, 6]
    by_itself = Batcher(model, tokenizer, BatcherConfig(max_slots=4, max_len=64))
    solo = by_itself.submit(Request(prompt, sampled))
    drain(by_itself)

    b = Batcher(model, tokenizer, BatcherConfig(max_slots=4, max_len=64))
    others = [b.submit(Request([1, 2], greedy(12))),
              b.submit(Request([3, 3, 3], SamplingParams(temperature=1.5, seed=1, max_new_tokens=12)))]
    b.step()
    b.step()
    mine = b.submit(Request(prompt, sampled))   # joins a batch already running
    b.submit(Request([8, 9], SamplingParams(temperature=0.8, seed=2, max_new_tokens=12)))
    drain(b)
    assert mine.tokens == solo.tokens
    assert others[0].tokens == alone(model, [1, 2], greedy(12))
    unseeded = Batcher(model, tokenizer, BatcherConfig(max_slots=4, max_len=64))
    other_seed = unseeded.submit(Request(prompt, SamplingParams(temperature=1.0, seed=12, max_new_tokens=12)))
    drain(unseeded)
    assert other_seed.tokens != solo.tokens


def test_stop_tokens_and_stop_strings_end_a_request(model, tokenizer):
    b = Batcher(model, tokenizer, BatcherConfig(max_slots=2, max_len=64))
    outputs = []
    free = b.submit(Request([4, 5, 6], greedy(20), on_output=outputs.append))
    drain(b)
    text = "".join(o.text for o in outputs)
    assert text == tokenizer.decode(free.tokens) and outputs[-1].finish_reason == "length"

    stop_token = free.tokens[5]
    by_token = b.submit(Request([4, 5, 6], greedy(20, stop_token_ids=(stop_token,))))
    drain(b)
    assert by_token.tokens == free.tokens[:free.tokens.index(stop_token)]
    assert by_token.finish_reason == "stop"

    stop = text[len(text) // 2:len(text) // 2 + 3]
    pieces = []
    by_string = b.submit(Request([4, 5, 6], greedy(20), stop=(stop,), on_output=pieces.append))
    drain(b)
    assert "".join(p.text for p in pieces) == text[:text.index(stop)]
    assert by_string.finish_reason == "stop" and len(by_string.tokens) < 20


def test_stop_matcher_holds_back_a_possible_stop_string_until_it_is_decided():
    m = StopMatcher(("END",))
    assert m.feed("abc E") == ("abc ", False)      # "E" may begin "END"
    assert m.feed("N") == ("", False)
    assert m.feed("D and more") == ("", True)       # "END" found: nothing from it on is shown
    m = StopMatcher(("END",))
    assert m.feed("abc E") == ("abc ", False)
    assert m.feed("xit") == ("Exit", False)         # not a stop after all: released
    assert StopMatcher(("a", "bc")).feed("xxbcxa") == ("xx", True)   # the earliest one wins


def test_a_cancelled_request_leaves_at_the_next_step_and_frees_its_slot(model, tokenizer):
    b = Batcher(model, tokenizer, BatcherConfig(max_slots=2, max_len=128))
    keep = b.submit(Request([1, 2, 3], greedy(30)))
    gone = b.submit(Request([5, 6, 7], greedy(100)))
    waiting = b.submit(Request([9, 9], greedy(5)))
    b.step()
    b.step()
    assert b.n_running == 2 and b.n_waiting == 1
    b.cancel(gone)
    b.step()
    assert gone.finish_reason == "abort" and len(gone.tokens) == 3   # 1 from prefill, 1 a step, none after
    assert waiting in b.running                  # its slot went to the next in line
    assert b.stats["aborted"] == 1
    drain(b)
    assert keep.tokens == alone(model, [1, 2, 3], greedy(30))
    assert waiting.tokens == alone(model, [9, 9], greedy(5))


def test_a_deadline_ends_a_request_waiting_or_running(model, tokenizer):
    b = Batcher(model, tokenizer, BatcherConfig(max_slots=1, max_len=128))
    late = time.monotonic() + 0.2
    running = b.submit(Request([1, 2], greedy(100), deadline=late))
    waiting = b.submit(Request([3, 4], greedy(100), deadline=late))
    b.step()
    time.sleep(0.25)
    b.step()
    assert (running.finish_reason, waiting.finish_reason) == ("timeout", "timeout")
    assert b.n_running == b.n_waiting == 0 and b.stats["timed_out"] == 2


def test_the_queue_is_capped(model, tokenizer):
    b = Batcher(model, tokenizer, BatcherConfig(max_slots=1, max_len=64, max_queue=2))
    for _ in range(3):     # 1 will take the slot at the next step, 2 wait
        b.submit(Request([1, 2], greedy(4)))
    with pytest.raises(QueueFull, match="capacity"):
        b.submit(Request([1, 2], greedy(4)))
    with pytest.raises(LaminaError, match="prompt has 64 tokens"):
        Batcher(model, tokenizer, BatcherConfig(max_slots=1, max_len=64)).submit(Request([1] * 64, greedy(1)))


def test_the_kv_budget_sizes_the_slots(model):
    c = model.config
    per_token = SlotCache.bytes_per_token(c, torch.float32)
    assert per_token == 2 * c.n_layers * c.n_kv_heads * c.head_dim * 4
    # A budget for 4 slots of 100 tokens gives 100-token slots; the model's context caps it.
    mb = 4 * 100 * per_token / 2**20
    assert slot_length(BatcherConfig(max_slots=4, kv_cache_mb=mb), c.max_seq_len, per_token) == 100
    assert slot_length(BatcherConfig(max_slots=4), c.max_seq_len, per_token) == c.max_seq_len
    with pytest.raises(LaminaError, match="over the .* budget"):
        slot_length(BatcherConfig(max_slots=4, max_len=200, kv_cache_mb=mb), c.max_seq_len, per_token)
    for bad in (dict(max_slots=0), dict(kv_cache_mb=0), dict(max_len=1), dict(max_queue=-1)):
        with pytest.raises(LaminaError):
            BatcherConfig(**bad)


@pytest.mark.slow
def test_compiled_batcher_generates_what_eager_does(model, tokenizer):
    """The compiled decode step (one row, or every slot padded) changes speed, not tokens, and
    warm-up compiles every graph serving needs."""
    prompts = [[1, 5, 9, 2], [7, 3], [4, 4, 4, 4, 4, 8, 6]]
    results = []
    for compile in (False, True):
        b = Batcher(model, tokenizer, BatcherConfig(max_slots=2, max_len=64, compile=compile))
        if compile:
            b.warmup()
        reqs = [b.submit(Request(p, greedy(8 + i))) for i, p in enumerate(prompts)]
        # after warm-up, serving compiles nothing more (a recompile would raise)
        with torch._dynamo.config.patch(error_on_recompile=compile):
            drain(b)
        results.append([r.tokens for r in reqs])
    assert results[0] == results[1]


@pytest.mark.parametrize("name", ["debug-moe", "debug-mla", "debug-llama4"])
def test_the_batcher_serves_mixtures_latent_attention_and_llama4_as_alone(tokenizer, name):
    """Continuous batching of a mixture of experts, of latent attention over its latent cache, and
    of Llama 4 with chunks of 4 (requests crossing chunk edges at their own slot offsets): each
    request's greedy tokens are those it gets alone."""
    config = preset(name)
    if name == "debug-llama4":
        config = config.replace(attention_chunk=4)
    model = init_weights(Transformer(config), seed=4, std=0.2).eval()
    b = Batcher(model, tokenizer, BatcherConfig(max_slots=3, max_len=64))
    prompts = [[1, 2, 3], [7, 8, 9, 10, 11, 12, 13], [42], [300, 301, 302, 303, 304]]
    lengths = [10, 6, 9, 7]
    reqs = []
    for p, n in zip(prompts, lengths):
        reqs.append(b.submit(Request(p, greedy(n))))
        b.step()
    drain(b)
    for r, p, n in zip(reqs, prompts, lengths):
        assert r.tokens == alone(model, p, greedy(n)), p
