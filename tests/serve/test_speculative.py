"""Speculative decoding with drafters other than the model's own modules: prompt lookup and a
draft model. Whatever they propose, greedy output is plain greedy output, token for token; what
they change is how many tokens a forward yields."""

from __future__ import annotations

import pytest

from lamina.errors import LaminaError
from lamina.model import Transformer, init_weights, preset
from lamina.model.quant import quantize_model
from lamina.serve.engine import Engine
from lamina.serve.sampling import SamplingParams
from lamina.serve.speculative import LookupDrafter, Speculation, speculate

GREEDY = SamplingParams(max_new_tokens=40, temperature=0, stop_token_ids=())


def plain(model, prompt, n=40):
    return [t for (t,) in Engine(model).generate([prompt], SamplingParams(max_new_tokens=n, temperature=0, stop_token_ids=()))]


def test_prompt_lookup_proposes_what_followed_the_latest_earlier_occurrence():
    drafter = LookupDrafter(n_tokens=3)
    assert drafter.propose([5, 6, 7, 8, 9, 1, 6, 7]) == [8, 9, 1]           # 2-gram (6, 7) seen before
    assert drafter.propose([1, 2, 3, 1, 2, 4, 1, 2]) == [4, 1, 2]           # the latest occurrence wins
    assert drafter.propose([1, 2, 3, 9, 2, 3, 4, 5, 2, 3]) == [4, 5, 2]     # 3-gram absent, 2-gram (2, 3)
    assert drafter.propose([1, 2, 3, 4]) == []                              # nothing repeats


@pytest.mark.parametrize("draft", ["lookup", "model", "quantized self"])
def test_any_drafter_keeps_greedy_output_token_for_token(draft):
    model = init_weights(Transformer(preset("debug")), seed=7, std=0.3)
    drafter = {"lookup": "lookup",
               "model": init_weights(Transformer(preset("debug")), seed=8, std=0.3),   # a stranger: few guesses kept
               "quantized self": quantize_model(init_weights(Transformer(preset("debug")), seed=7, std=0.3), "int4")}[draft]
    for prompt in ([1, 5, 9, 1, 5, 9, 1, 5], [3, 7, 11], [2]):
        for n_tokens in (1, 4):
            stats = Speculation()
            out = list(speculate(model, prompt, 40, n_tokens=n_tokens, draft=drafter, stats=stats))
            assert out == plain(model, prompt), (draft, prompt, n_tokens)
            assert stats.forwards + 1 <= 40 and stats.accepted <= stats.proposed


def test_a_quantized_copy_drafts_most_tokens_of_its_model():
    """Drafts that are right cut the forwards: the model's own int8 copy agrees with it nearly always."""
    model = init_weights(Transformer(preset("debug")), seed=7, std=0.3)
    copy = quantize_model(init_weights(Transformer(preset("debug")), seed=7, std=0.3), "int8")
    stats = Speculation()
    assert list(speculate(model, [3, 7, 11], 40, n_tokens=4, draft=copy, stats=stats)) == plain(model, [3, 7, 11])
    assert stats.acceptance > 0.8 and stats.forwards < 20


def test_prompt_lookup_drafts_a_repeated_line_on_a_real_model(smollm2_llm):
    """SmolLM2 continuing a text whose lines repeat a sentence: prompt lookup proposes the
    sentence's next tokens, most are kept, and a forward yields about three tokens; the text is
    plain greedy's."""
    llm = smollm2_llm
    sentence = "The quick brown fox jumps over the lazy dog beside the old stone bridge at dawn."
    prompt = llm.tokenizer.encode(f"Line 1: {sentence}\nLine 2: {sentence}\nLine 3:")
    stats = Speculation()
    out = list(speculate(llm.model, prompt, 24, n_tokens=6, draft="lookup", stats=stats))
    assert out == plain(llm.model, prompt, 24)
    assert llm.tokenizer.decode(out).startswith(" " + sentence)
    assert stats.acceptance > 0.6 and len(out) / (stats.forwards + 1) > 2.5


def test_the_engine_and_the_command_line_take_a_drafter(capsys):
    from lamina.cli import main
    model = init_weights(Transformer(preset("debug")), seed=7, std=0.3)
    engine = Engine(model, speculate=3, draft="lookup")
    assert [t for (t,) in engine.generate([[1, 5, 9, 1, 5]], GREEDY)] == plain(model, [1, 5, 9, 1, 5])
    with pytest.raises(LaminaError, match="no multi-token prediction modules to draft with; draft by prompt lookup"):
        Engine(model, speculate=2)
    with pytest.raises(LaminaError, match="share its tokenizer"):
        Engine(model, speculate=2, draft=Transformer(preset("debug-moe").replace(vocab_size=600)))
    args = ["generate", "smollm2-135m-instruct", "The capital of France is", "--temperature", "0",
            "--max-new-tokens", "12"]
    assert main(args) == 0
    greedy = capsys.readouterr().out
    assert main([*args, "--speculate", "4", "--draft", "lookup"]) == 0
    assert capsys.readouterr().out == greedy
    assert main([*args, "--speculate", "4", "--draft", "smollm2-135m-instruct"]) == 0
    assert capsys.readouterr().out == greedy
