"""The OpenAI parameters real clients send, through the `openai` SDK against the live server on
SmolLM2-135M-Instruct: log-probabilities (chat and completions, streamed and not) equal to what
the model computes for the same tokens, `echo` with the prompt's log-probabilities, `n` choices,
batched prompts, presence and frequency penalties, `logit_bias`, `min_tokens`; the tokenizer
endpoints; and lm-eval's `local-completions` model scoring a multiple-choice task through the
server exactly as `lamina eval` scores it."""

from __future__ import annotations

import math

import httpx2
import pytest
import torch

from lamina.model.loss import linear_target_logprobs

from .conftest import API_KEY, AUTH, MODEL_NAME

MESSAGES = [{"role": "user", "content": "Name three colours."}]


def scorer_logprobs(llm, prompt: list[int], tokens: list[int]) -> list[float]:
    """lamina's scorer's log-probabilities of `tokens` after `prompt` (the eval harness's own
    output-layer function on the model's hidden states)."""
    ids = prompt + tokens
    with torch.no_grad():
        h = llm.model.body(torch.tensor([ids[:-1]]))[0]
        lp, _ = linear_target_logprobs(h[len(prompt) - 1:], llm.model.output.weight, torch.tensor(tokens))
    return lp.tolist()


def chat_prompt(llm) -> list[int]:
    from lamina.tokenizer import render_chat
    return render_chat(llm.tokenizer, MESSAGES)


def token_ids(llm, entries) -> list[int]:
    """Ids of the chat logprob entries, from their bytes."""
    tok, ids, at = llm.tokenizer, [], 0
    raw = b"".join(bytes(e.bytes) for e in entries)
    # re-tokenizing the text could merge differently: map each entry's bytes back to its id
    by_bytes = {}
    for e in entries:
        b = bytes(e.bytes)
        if b not in by_bytes:
            by_bytes[b] = next(i for i in range(tok.vocab_size) if tok.piece(i) == b)
        ids.append(by_bytes[b])
        at += len(b)
    assert at == len(raw)
    return ids


def test_chat_logprobs_equal_the_scorers_and_top_logprobs_are_the_likeliest(client, smollm2_llm):
    r = client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, max_tokens=12, temperature=0,
                                       logprobs=True, top_logprobs=5)
    content = r.choices[0].logprobs.content
    assert "".join(e.token for e in content) == r.choices[0].message.content
    ids = token_ids(smollm2_llm, content)
    expected = scorer_logprobs(smollm2_llm, chat_prompt(smollm2_llm), ids)
    assert [e.logprob for e in content] == pytest.approx(expected, abs=2e-4)
    for e in content:
        assert len(e.top_logprobs) == 5
        assert e.top_logprobs[0].logprob == pytest.approx(e.logprob, abs=1e-6)     # greedy: the best one
        assert [t.logprob for t in e.top_logprobs] == sorted((t.logprob for t in e.top_logprobs), reverse=True)
    # streamed: the same entries, in pieces
    chunks = list(client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, max_tokens=12, temperature=0,
                                                 logprobs=True, top_logprobs=2, stream=True))
    streamed = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert [e.token for e in streamed] == [e.token for e in content]
    assert [e.logprob for e in streamed] == pytest.approx([e.logprob for e in content], abs=1e-5)


def test_completions_echo_gives_the_prompts_logprobs_and_max_tokens_0_the_prompt_alone(client, smollm2_llm):
    text = "The capital of France is Paris"
    prompt = smollm2_llm.tokenizer.encode(text)
    r = client.completions.create(model=MODEL_NAME, prompt=text, max_tokens=0, echo=True, logprobs=1, temperature=0)
    lp = r.choices[0].logprobs
    assert r.choices[0].text == text and r.choices[0].finish_reason == "length"
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert lp.token_logprobs[1:] == pytest.approx(scorer_logprobs(smollm2_llm, prompt[:1], prompt[1:]), abs=2e-4)
    assert "".join(lp.tokens) == text
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(len(lp.tokens))]
    assert r.usage.completion_tokens == 0
    # with a completion: prompt entries, then the generated token's, greedy = the best of its top
    r = client.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=3, echo=True, logprobs=3, temperature=0)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(prompt) + 3 and r.choices[0].text.startswith(text)
    for chosen, top in zip(lp.token_logprobs[len(prompt):], lp.top_logprobs[len(prompt):]):
        assert chosen == pytest.approx(max(top.values()), abs=1e-6) and len(top) == 3


def test_n_choices_differ_when_sampled_repeat_with_a_seed_and_equal_each_other_when_greedy(client):
    kw = dict(model=MODEL_NAME, messages=MESSAGES, max_tokens=16, temperature=1.0, top_p=1.0, seed=7)
    a = client.chat.completions.create(n=3, **kw)
    assert sorted(c.index for c in a.choices) == [0, 1, 2]
    assert len({c.message.content for c in a.choices}) > 1
    b = client.chat.completions.create(n=3, **kw)
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]
    alone = client.chat.completions.create(**kw)
    assert alone.choices[0].message.content == a.choices[0].message.content     # choice 0 has the seed itself
    g = client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, max_tokens=12, temperature=0, n=2)
    assert g.choices[0].message.content == g.choices[1].message.content
    chunks = list(client.chat.completions.create(n=2, stream=True, stream_options={"include_usage": True}, **kw))
    texts = {0: "", 1: ""}
    for c in chunks:
        for ch in c.choices:
            texts[ch.index] += ch.delta.content or ""
    assert texts == {0: a.choices[0].message.content, 1: a.choices[1].message.content}
    assert [c for c in chunks if c.usage][0].usage.prompt_tokens == a.usage.prompt_tokens


def test_a_batch_of_prompts_answers_each_as_alone(client):
    prompts = ["The sky is", "Two plus two is", "My favourite fruit is"]
    batch = client.completions.create(model=MODEL_NAME, prompt=prompts, max_tokens=6, temperature=0, n=2)
    assert sorted(c.index for c in batch.choices) == list(range(6))
    for i, p in enumerate(prompts):
        alone = client.completions.create(model=MODEL_NAME, prompt=p, max_tokens=6, temperature=0)
        assert batch.choices[2 * i].text == batch.choices[2 * i + 1].text == alone.choices[0].text


def test_penalties_bias_and_min_tokens_change_what_is_chosen(client, smollm2_llm):
    repeat = dict(model=MODEL_NAME, prompt="one, one, one, one, one, one, one,", max_tokens=12, temperature=0)
    plain = client.completions.create(**repeat).choices[0].text
    assert plain.count("one") >= 4                                     # greedy goes on repeating
    for penalty in ("frequency_penalty", "presence_penalty"):
        assert client.completions.create(**repeat, **{penalty: 2.0}).choices[0].text.count("one") < 2
    kw = dict(model=MODEL_NAME, messages=MESSAGES, max_tokens=24, temperature=0)
    first = client.chat.completions.create(logprobs=True, **kw).choices[0].logprobs.content[0]
    first_id = token_ids(smollm2_llm, [first])[0]
    banned = client.chat.completions.create(logit_bias={str(first_id): -100}, logprobs=True, **kw)
    assert token_ids(smollm2_llm, banned.choices[0].logprobs.content[:1]) != [first_id]
    forced_id = smollm2_llm.tokenizer.encode(" banana")[0]
    forced = client.chat.completions.create(logit_bias={str(forced_id): 100}, **{**kw, "max_tokens": 3})
    assert forced.choices[0].message.content == smollm2_llm.tokenizer.decode([forced_id] * 3)
    brief = dict(model=MODEL_NAME, messages=[{"role": "user", "content": "Say hello."}], max_tokens=100,
                 temperature=0)
    short = client.chat.completions.create(**brief)
    assert short.choices[0].finish_reason == "stop"
    n = short.usage.completion_tokens
    longer = client.chat.completions.create(**brief, extra_body={"min_tokens": n + 5})
    assert longer.usage.completion_tokens >= n + 5


def test_tokenize_detokenize_and_tokenizer_info_as_vllm_answers_them(server, smollm2_llm):
    url = server[0]
    tok = smollm2_llm.tokenizer
    r = httpx2.post(url + "/tokenize", json={"prompt": "Hello world", "add_special_tokens": False}, headers=AUTH)
    assert r.status_code == 200 and r.json()["tokens"] == tok.encode("Hello world", bos=False)
    assert r.json()["count"] == len(r.json()["tokens"])
    r = httpx2.post(url + "/tokenize", json={"messages": MESSAGES}, headers=AUTH)
    assert r.json()["tokens"] == chat_prompt(smollm2_llm)
    r = httpx2.post(url + "/detokenize", json={"tokens": tok.encode("Hello world")}, headers=AUTH)
    assert r.json()["prompt"] == "Hello world"
    r = httpx2.post(url + "/detokenize", json={"tokens": [10 ** 9]}, headers=AUTH)
    assert r.status_code == 400 and r.json()["error"]["param"] == "tokens"
    info = httpx2.get(url + "/tokenizer_info", headers=AUTH).json()
    assert info["eos_token"] == tok.eos_token and info["chat_template"] == tok.chat_template
    assert httpx2.get(url + "/tokenizer_info").status_code == 401          # behind the API key too


@pytest.mark.slow
def test_lm_eval_local_completions_scores_a_task_through_the_server_as_lamina_eval_does(server, smollm2_llm,
                                                                                        monkeypatch):
    """lm-eval's own `local-completions` model (echo + logprobs, the server's /tokenize), pointed
    at `lamina serve`, against `lamina eval` on the same items."""
    import lm_eval.models.openai_completions  # noqa: F401  (registers local-completions)
    from lm_eval.api.registry import get_model
    from lm_eval.evaluator import evaluate as lm_evaluate

    from lamina.eval import EvalConfig, evaluate
    from lamina.eval.lm_eval_model import reference_task
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    lm = get_model("local-completions")(base_url=server[0] + "/v1/completions", model=MODEL_NAME,
                                        tokenizer_backend="remote", auth_token=API_KEY, num_concurrent=1,
                                        max_retries=1, max_length=512)
    out = lm_evaluate(lm=lm, task_dict={"arc_easy": reference_task("arc_easy")}, limit=8)["results"]["arc_easy"]
    ours = evaluate(smollm2_llm, EvalConfig(tasks=("arc_easy",), limit=8))["results"]["arc_easy"]
    assert out["acc,none"] == ours["acc"] and out["acc_norm,none"] == ours["acc_norm"]
    assert not math.isnan(out["acc,none"])
