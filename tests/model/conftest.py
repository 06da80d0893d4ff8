"""What the model tests share: decoding through the serving engine checked against the plain forward."""

from __future__ import annotations

import pytest
import torch


def engine_greedy_equals_uncached(model, new_tokens: int = 8) -> None:
    """Batched greedy decoding through the KV-cache engine, prompts of different lengths sharing
    each step, equals re-running the whole sequence through the uncached forward each step."""
    from lamina.serve.engine import Engine
    from lamina.serve.sampling import SamplingParams
    prompts = [[1, 5, 9, 200], [3, 7], [11, 12, 13, 14, 15, 16]]
    outs: list[list[int]] = [[] for _ in prompts]
    params = SamplingParams(max_new_tokens=new_tokens, temperature=0, stop_token_ids=())
    for step in Engine(model).generate(prompts, params):
        for row, t in zip(outs, step):
            if t is not None:
                row.append(t)
    for prompt, out in zip(prompts, outs):
        seq = list(prompt)
        with torch.no_grad():
            for _ in range(new_tokens):
                seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
        assert out == seq[len(prompt):]


@pytest.fixture
def greedy_equals_uncached():
    return engine_greedy_equals_uncached
