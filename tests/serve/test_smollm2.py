"""Generation with the real SmolLM2-135M-Instruct weights, checked against transformers."""

import pytest
import torch

from lamina.checkpoint import resolve

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Llamas are"]


@pytest.fixture(scope="module")
def hf_gguf():
    """transformers' own reading of the same GGUF file (its dequantization, its tokenizer)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    path, _ = resolve("smollm2-135m-instruct")
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                 dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    return model.eval(), tok


@pytest.mark.slow
def test_greedy_continuation_equals_transformers_token_for_token(smollm2_llm, hf_gguf):
    model, tok = hf_gguf
    for prompt in PROMPTS:
        ids = smollm2_llm.tokenizer.encode(prompt)
        assert ids == tok(prompt, add_special_tokens=False)["input_ids"]
        ours = []
        for (t,) in smollm2_llm.engine.generate([ids], smollm2_llm._params(
                temperature=0.0, max_new_tokens=24, stop_token_ids=())):
            ours.append(t)
        theirs = model.generate(torch.tensor([ids]), max_new_tokens=24, min_new_tokens=24,
                                do_sample=False)[0, len(ids):].tolist()
        assert ours == theirs, prompt


@pytest.mark.slow
def test_logits_equal_transformers_on_the_real_model(smollm2_llm, hf_gguf):
    model, _ = hf_gguf
    ids = torch.tensor([smollm2_llm.tokenizer.encode("A llama is a domesticated South American camelid")])
    with torch.no_grad():
        ours = smollm2_llm.model(ids)
        theirs = model(ids).logits
    torch.testing.assert_close(ours, theirs, atol=1e-3, rtol=1e-4)


def test_batched_generation_equals_one_at_a_time_on_smollm2(smollm2_llm):
    batched = smollm2_llm.generate(PROMPTS, temperature=0, max_new_tokens=12)
    assert batched == [smollm2_llm.generate(p, temperature=0, max_new_tokens=12) for p in PROMPTS]


def test_stream_pieces_join_to_the_generated_text(smollm2_llm):
    pieces = list(smollm2_llm.stream("Once upon a time", temperature=0, max_new_tokens=20))
    assert len(pieces) > 1
    assert "".join(pieces) == smollm2_llm.generate("Once upon a time", temperature=0, max_new_tokens=20)


def test_chat_answers_and_stops_at_end_of_turn(smollm2_llm):
    reply = smollm2_llm.chat([{"role": "user", "content": "What is the capital of France?"}],
                             temperature=0, max_new_tokens=40)
    assert "Paris" in reply
    assert "<|im_end|>" not in reply
