"""Structured output through the `openai` SDK against the live server on SmolLM2-135M-Instruct:
`response_format` json_object and json_schema enforced while decoding. 200 generated schemas
(nested objects, arrays, enums, required fields, string patterns, bounded integers) each get a
reply that parses and validates (`jsonschema`), while unconstrained requests sharing the batch
give, token for token, what they give alone; a schema that cannot be enforced is a 400."""

from __future__ import annotations

import asyncio
import json
import random

import jsonschema
import pytest

from .conftest import API_KEY, MODEL_NAME

pytest.importorskip("llguidance")

WORDS = ["red", "green", "blue", "small", "large", "north", "south", "alpha", "beta", "gamma"]


def random_schema(rng: random.Random, depth: int = 0) -> dict:
    # no fractional numbers: a grammar cannot bound their digits, and a small model sampling
    # 0.0000... runs to max_tokens (a reply cut short is not valid JSON, whatever the grammar)
    kinds = ["object", "array", "string", "pattern", "integer", "boolean", "enum"] if depth < 2 else \
        ["string", "pattern", "integer", "boolean", "enum"]
    kind = rng.choice(kinds)
    if kind == "object":
        names = rng.sample(["name", "size", "colour", "count", "tags", "ok", "place", "score"], rng.randint(1, 3))
        return {"type": "object", "properties": {n: random_schema(rng, depth + 1) for n in names},
                "required": rng.sample(names, rng.randint(1, len(names))), "additionalProperties": False}
    if kind == "array":
        return {"type": "array", "items": random_schema(rng, depth + 1), "minItems": rng.randint(0, 1),
                "maxItems": rng.randint(1, 3)}
    if kind == "string":
        return {"type": "string", "maxLength": rng.randint(3, 12)}
    if kind == "pattern":
        return {"type": "string", "pattern": rng.choice(["^[a-z]{2,6}$", "^[A-Z][a-z]{1,5}$", "^[0-9]{3}-[0-9]{2}$"])}
    if kind == "integer":
        low = rng.randint(-50, 50)
        return {"type": "integer", "minimum": low, "maximum": low + rng.randint(1, 100)}
    if kind == "boolean":
        return {"type": "boolean"}
    return {"enum": rng.sample(WORDS, rng.randint(2, 4))}


def schemas(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        top = random_schema(rng)
        if top.get("type") == "object":
            out.append(top)
    return out


@pytest.fixture(scope="module")
def aclient(server):
    import openai
    return lambda: openai.AsyncOpenAI(base_url=server[0] + "/v1", api_key=API_KEY, max_retries=0, timeout=300)


def test_json_object_replies_parse(client):
    r = client.chat.completions.create(model=MODEL_NAME, max_tokens=120, temperature=0,
                                       messages=[{"role": "user", "content": "Describe a cat."}],
                                       response_format={"type": "json_object"})
    assert r.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(r.choices[0].message.content), dict)


@pytest.mark.slow
def test_200_schemas_each_get_a_valid_reply_and_unconstrained_neighbours_are_unchanged(client, aclient):
    tests = schemas(200)
    plain_prompts = ["Write a haiku about rain.", "What is the capital of Italy?", "Count to five."]
    alone = [client.chat.completions.create(model=MODEL_NAME, max_tokens=24, temperature=0,
                                            messages=[{"role": "user", "content": p}]).choices[0].message.content
             for p in plain_prompts]

    async def run():
        api = aclient()
        limit = asyncio.Semaphore(8)

        async def constrained(i: int, schema: dict):
            async with limit:
                r = await api.chat.completions.create(
                    model=MODEL_NAME, max_tokens=160, temperature=0.7, seed=i,
                    messages=[{"role": "user", "content": "Give an example of this data as JSON."}],
                    response_format={"type": "json_schema", "json_schema": {"name": f"s{i}", "schema": schema}})
                return r.choices[0]

        async def plain(p: str):
            r = await api.chat.completions.create(model=MODEL_NAME, max_tokens=24, temperature=0,
                                                  messages=[{"role": "user", "content": p}])
            return r.choices[0].message.content
        got = await asyncio.gather(*(constrained(i, s) for i, s in enumerate(tests)),
                                   *(plain(p) for p in plain_prompts * 3))
        await api.close()
        return got[:len(tests)], got[len(tests):]
    replies, neighbours = asyncio.run(run())
    for schema, choice in zip(tests, replies):
        assert choice.finish_reason == "stop", (schema, choice.message.content)
        jsonschema.validate(json.loads(choice.message.content), schema)
    assert neighbours == alone * 3


def test_a_schema_that_cannot_be_enforced_is_a_400_naming_response_format(server):
    import httpx2
    from .conftest import AUTH
    for fmt in ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}},
                {"type": "json_schema", "json_schema": {"name": "x"}},
                {"type": "yaml"}):
        r = httpx2.post(server[0] + "/v1/chat/completions", headers=AUTH,
                        json={"model": MODEL_NAME, "messages": [{"role": "user", "content": "Hi"}],
                              "response_format": fmt})
        assert r.status_code == 400 and r.json()["error"]["param"] == "response_format", r.text
