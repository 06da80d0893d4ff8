"""The Anthropic Messages API through the official `anthropic` SDK against the live server on
SmolLM2-135M-Instruct: a message equal to the OpenAI route's chat answer (system prompt included),
streamed events that join to it, the stop reasons, and errors in Anthropic's shape."""

from __future__ import annotations

import httpx2
import pytest

from .conftest import API_KEY, MODEL_NAME

anthropic = pytest.importorskip("anthropic")


@pytest.fixture(scope="module")
def claude(server):
    return anthropic.Anthropic(base_url=server[0], api_key=API_KEY, max_retries=0, timeout=120)


def test_a_message_is_the_chat_answer_to_the_same_conversation(claude, client):
    system, question = "You answer briefly.", "What colour is the sky?"
    # the SDK has no temperature argument any more (its models fix it); the API still takes one
    m = claude.messages.create(model=MODEL_NAME, max_tokens=40, extra_body={"temperature": 0}, system=system,
                               messages=[{"role": "user", "content": question}])
    openai_reply = client.chat.completions.create(
        model=MODEL_NAME, max_tokens=40, extra_body={"temperature": 0},
        messages=[{"role": "system", "content": system}, {"role": "user", "content": question}])
    assert m.type == "message" and m.role == "assistant" and m.model == MODEL_NAME
    assert [b.type for b in m.content] == ["text"]
    assert m.content[0].text == openai_reply.choices[0].message.content
    assert m.stop_reason == ("end_turn" if openai_reply.choices[0].finish_reason == "stop" else "max_tokens")
    assert m.usage.input_tokens == openai_reply.usage.prompt_tokens
    assert m.usage.output_tokens == openai_reply.usage.completion_tokens


def test_streamed_events_join_to_the_message_and_come_in_anthropics_order(claude):
    kw = dict(model=MODEL_NAME, max_tokens=24, extra_body={"temperature": 0},
              messages=[{"role": "user", "content": [{"type": "text", "text": "Count to five."}]}])
    whole = claude.messages.create(**kw)
    with claude.messages.stream(**kw) as stream:
        kinds = [e.type for e in stream]
        final = stream.get_final_message()
    assert final.content[0].text == whole.content[0].text
    assert final.stop_reason == whole.stop_reason and final.usage.output_tokens == whole.usage.output_tokens
    raw = [k for k in kinds if k in ("message_start", "content_block_start", "content_block_delta",
                                     "content_block_stop", "message_delta", "message_stop")]
    assert raw[:2] == ["message_start", "content_block_start"] and "content_block_delta" in raw
    assert raw[-3:] == ["content_block_stop", "message_delta", "message_stop"]


def test_stop_reasons_max_tokens_and_stop_sequence(claude):
    short = claude.messages.create(model=MODEL_NAME, max_tokens=3, extra_body={"temperature": 0},
                                   messages=[{"role": "user", "content": "Tell me a long story."}])
    assert short.stop_reason == "max_tokens" and short.usage.output_tokens == 3
    free = claude.messages.create(model=MODEL_NAME, max_tokens=30, extra_body={"temperature": 0},
                                  messages=[{"role": "user", "content": "Count to ten: 1, 2, 3"}])
    word = free.content[0].text.split()[1]
    cut = claude.messages.create(model=MODEL_NAME, max_tokens=30, extra_body={"temperature": 0}, stop_sequences=[word],
                                 messages=[{"role": "user", "content": "Count to ten: 1, 2, 3"}])
    assert cut.stop_reason == "stop_sequence" and cut.stop_sequence == word
    assert word not in cut.content[0].text and free.content[0].text.startswith(cut.content[0].text)


def test_errors_have_anthropics_shape_and_the_sdk_raises_its_own_types(claude, server):
    with pytest.raises(anthropic.BadRequestError) as e:
        claude.messages.create(model=MODEL_NAME, max_tokens=10, extra_body={"temperature": 1.5},
                               messages=[{"role": "user", "content": "Hi"}])
    assert e.value.body["type"] == "error" and e.value.body["error"]["type"] == "invalid_request_error"
    assert "temperature" in e.value.body["error"]["message"]
    with pytest.raises(anthropic.NotFoundError):
        claude.messages.create(model="claude-9", max_tokens=10, messages=[{"role": "user", "content": "Hi"}])
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(base_url=server[0], api_key="nope", max_retries=0).messages.create(
            model=MODEL_NAME, max_tokens=10, messages=[{"role": "user", "content": "Hi"}])
    r = httpx2.post(server[0] + "/v1/messages", headers={"x-api-key": API_KEY},
                    json={"model": MODEL_NAME, "max_tokens": 5, "messages": [{"role": "user", "content": "Hi"}],
                          "tools": [{"name": "f", "input_schema": {"type": "object"}}]})
    assert r.status_code == 400 and r.json()["error"]["message"].startswith("tools: not supported yet")
    r = httpx2.post(server[0] + "/v1/messages", headers={"x-api-key": API_KEY},
                    json={"model": MODEL_NAME, "messages": [{"role": "user", "content": "Hi"}]})
    assert r.status_code == 400 and "max_tokens" in r.json()["error"]["message"]          # required
