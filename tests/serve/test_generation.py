import pytest
import torch

from lamina.errors import LaminaError
from lamina.model import Transformer, init_weights, preset
from lamina.serve import Engine, SamplingParams
from lamina.serve.sampling import draw, keep_top_k, keep_top_p, penalize_repeats


@pytest.fixture(scope="module")
def engine():
    return Engine(init_weights(Transformer(preset("debug")), seed=3, std=0.2))


def _run(engine, prompts, **kw):
    params = SamplingParams(**{"temperature": 0.0, "max_new_tokens": 12, **kw})
    outs = [[] for _ in prompts]
    for step in engine.generate(prompts, params):
        for row, t in zip(outs, step):
            if t is not None:
                row.append(t)
    return outs


def _reference_greedy(model, prompt, n):
    """Greedy decoding by re-running the full forward pass every step (no cache)."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    return ids[len(prompt):]


def test_greedy_generation_equals_uncached_reference(engine):
    prompt = [5, 17, 200, 3, 99]
    assert _run(engine, [prompt])[0] == _reference_greedy(engine.model, prompt, 12)


def test_batched_generation_equals_one_at_a_time(engine):
    prompts = [[1, 2, 3], [7, 8, 9, 10, 11, 12, 13], [42], [300, 301, 302, 303]]
    batched = _run(engine, prompts)
    assert batched == [_run(engine, [p])[0] for p in prompts]


def test_batched_sampling_equals_one_at_a_time_logits(engine):
    """Left padding must not change any row's logits, not just its argmax."""
    model = engine.model
    prompts = [[1, 2, 3], [7, 8, 9, 10, 11, 12, 13]]
    with torch.no_grad():
        refs = [model(torch.tensor([p]))[0, -1] for p in prompts]
    from lamina.model import KVCache
    P, S = 7, 16
    cache = KVCache(model.config, 2, S)
    tokens = torch.tensor([[0, 0, 0, 0, 1, 2, 3], prompts[1]])
    pads = torch.tensor([4, 0])
    slot = torch.arange(S)
    valid = (slot[None] >= pads[:, None]) & (slot[None] < P)
    positions = (torch.arange(P)[None] - pads[:, None]).clamp(min=0)
    mask = ((slot[None] <= torch.arange(P)[:, None]) & valid[:, None]) | (slot[None] == torch.arange(P)[:, None])
    with torch.no_grad():
        logits = model.logits(model.body(tokens, positions, cache, slot[:P], mask[:, None])[:, -1])
    torch.testing.assert_close(logits[0], refs[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits[1], refs[1], atol=1e-5, rtol=1e-5)


def test_seeded_sampling_is_reproducible_and_seeds_differ(engine):
    a = _run(engine, [[1, 2, 3]], temperature=1.0, seed=7, max_new_tokens=20)
    b = _run(engine, [[1, 2, 3]], temperature=1.0, seed=7, max_new_tokens=20)
    c = _run(engine, [[1, 2, 3]], temperature=1.0, seed=8, max_new_tokens=20)
    assert a == b
    assert a != c


def test_top_k_one_is_greedy(engine):
    greedy = _run(engine, [[4, 5, 6]])
    assert _run(engine, [[4, 5, 6]], temperature=1.5, top_k=1, seed=1) == greedy


def test_stop_token_ends_a_row_and_is_not_returned(engine):
    free = _run(engine, [[4, 5, 6]])[0]
    stop = free[3]
    cut = free.index(stop)
    assert cut > 0
    assert _run(engine, [[4, 5, 6]], stop_token_ids=(stop,))[0] == free[:cut]


def test_max_new_tokens_is_respected_and_context_is_bounded(engine):
    assert len(_run(engine, [[1, 2]], max_new_tokens=5)[0]) == 5
    with pytest.raises(LaminaError, match="context"):
        _run(engine, [[1] * engine.config.max_seq_len])


def test_top_k_keeps_k_best():
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0]])
    kept = keep_top_k(logits, 2)
    assert torch.isfinite(kept).tolist() == [[False, True, False, True]]


def test_top_p_keeps_the_smallest_nucleus():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    kept = keep_top_p(probs.log(), 0.75)
    assert torch.isfinite(kept).tolist() == [[True, True, False, False]]
    assert torch.isfinite(keep_top_p(probs.log(), 0.1)).tolist() == [[True, False, False, False]]


def test_draw_picks_each_token_with_its_probability_and_never_one_of_probability_zero():
    probs = torch.tensor([[0.0, 0.5, 0.0, 0.3, 0.2, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0, 1.0]]).repeat(20_000, 1)
    g = torch.Generator().manual_seed(0)
    tokens = draw(probs, g).view(-1, 2)
    counts = torch.bincount(tokens[:, 0], minlength=6) / len(tokens)
    # 20,000 draws: a frequency's standard error is at most 0.0036, so 0.015 is beyond 4 of them
    assert torch.allclose(counts, probs[0], atol=0.015)
    assert counts[[0, 2, 5]].sum() == 0
    assert (tokens[:, 1] == 5).all()
    # the same generator state draws the same tokens
    assert torch.equal(draw(probs[:8], torch.Generator().manual_seed(3)), draw(probs[:8], torch.Generator().manual_seed(3)))


def test_repetition_penalty_lowers_seen_tokens_only():
    logits = torch.tensor([[2.0, -2.0, 2.0]])
    seen = torch.tensor([[True, True, False]])
    assert penalize_repeats(logits, seen, 2.0).tolist() == [[1.0, -4.0, 2.0]]


def test_bad_sampling_parameters_are_refused():
    for bad in (dict(temperature=-1), dict(top_p=0), dict(top_k=-2), dict(max_new_tokens=-1)):
        with pytest.raises(ValueError):
            SamplingParams(**bad)


@pytest.mark.slow
def test_compiled_decode_generates_what_eager_decode_does(engine):
    """The compiled decode step (one graph per batch and cache length) changes speed, not output:
    greedy and seeded sampling, batched prompts of different lengths, token for token."""
    compiled = Engine(engine.model, compile=True)
    prompts = [[1, 5, 9, 2], [7, 3], [4, 4, 4, 4, 4, 8, 6]]
    assert _run(compiled, prompts) == _run(engine, prompts)
    sampled = {"temperature": 0.9, "top_k": 20, "top_p": 0.9, "seed": 11}
    assert _run(compiled, prompts, **sampled) == _run(engine, prompts, **sampled)


def test_huge_page_copy_keeps_parameters_and_outputs():
    from lamina.serve.llm import move_to_huge_pages

    model = init_weights(Transformer(preset("debug")), seed=5, std=0.2)
    params = list(model.parameters())
    x = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        before = model(x)
        move_to_huge_pages(model)
        after = model(x)
    assert [p is q for p, q in zip(params, model.parameters())] == [True] * len(params)
    assert all(p.data_ptr() % 64 == 0 for p in params)
    assert torch.equal(before, after)


def test_engine_applies_penalties_and_bias_and_refuses_logprobs(engine):
    prompt = [[5, 6, 7, 8]]
    greedy = SamplingParams(max_new_tokens=6, temperature=0.0)
    plain = [t[0] for t in engine.generate(prompt, greedy)]
    banned = [t[0] for t in engine.generate(prompt, SamplingParams(max_new_tokens=6, temperature=0.0,
                                                                   logit_bias=((plain[0], -100.0),)))]
    assert banned[0] != plain[0]
    forced = [t[0] for t in engine.generate(prompt, SamplingParams(max_new_tokens=3, temperature=0.0,
                                                                   logit_bias=((11, 100.0),)))]
    assert forced == [11, 11, 11]
    assert [t[0] for t in engine.generate(prompt, SamplingParams(max_new_tokens=3, temperature=0.0, logit_bias=(
        (11, 100.0),), frequency_penalty=2.0))] == [11, 11, 11]       # +100 outweighs any penalty
    with pytest.raises(LaminaError, match="log-probabilities come from the server"):
        list(engine.generate(prompt, SamplingParams(max_new_tokens=2, logprobs=1)))


def test_the_decode_step_compiles_by_default_unless_told_otherwise(monkeypatch, engine):
    """Fast by default (issue 22): compiled unless $LAMINA_COMPILE or the caller says off; LoRA
    adapters served per request default to eager; a wrong value is one error."""
    from lamina.serve import BatcherConfig
    from lamina.serve.engine import compile_mode
    from lamina.serve.adapters import Adapters
    monkeypatch.delenv("LAMINA_COMPILE", raising=False)
    assert compile_mode(None) is True and compile_mode("off") is False and compile_mode(False) is False
    assert Engine(engine.model, compile=None).compiled
    monkeypatch.setenv("LAMINA_COMPILE", "off")
    assert not Engine(engine.model, compile=None).compiled
    monkeypatch.delenv("LAMINA_COMPILE")
    adapted = Engine(engine.model, compile=None, adapters=Adapters(engine.model, {}))
    assert adapted.compiled            # no adapter loaded: nothing runs per request
    for bad in ("auto", "fast"):
        with pytest.raises(LaminaError, match="use on or off"):
            compile_mode(bad)
    with pytest.raises(LaminaError):
        BatcherConfig(compile="sometimes")
