"""What the model tests share: decoding through the serving engine checked against the plain forward."""

from __future__ import annotations

import pytest
import torch


def engine_greedy_equals_uncached(model, new_tokens: int = 8, **engine) -> None:
    """Batched greedy decoding through the KV-cache engine (made with `engine`'s options), prompts
    of different lengths sharing each step, equals re-running the whole sequence through the
    uncached forward each step."""
    from lamina.serve.engine import Engine
    from lamina.serve.sampling import SamplingParams
    prompts = [[1, 5, 9, 200], [3, 7], [11, 12, 13, 14, 15, 16]]
    outs: list[list[int]] = [[] for _ in prompts]
    params = SamplingParams(max_new_tokens=new_tokens, temperature=0, stop_token_ids=())
    for step in Engine(model, **engine).generate(prompts, params):
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


def transformers_loads_ours(model, cls, folder):
    """lamina writes `model`; transformers' `cls` loads it with equal logits. The config read back."""
    from lamina.checkpoint import write_hf
    from lamina.checkpoint.hf import read_hf
    from lamina.model import weights
    write_hf(folder, model.config, weights(model))
    theirs = cls.from_pretrained(folder, dtype=torch.float32).eval()
    tokens = torch.randint(0, model.config.vocab_size, (2, 24))
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), theirs(tokens).logits, rtol=1e-5, atol=1e-5)
    return read_hf(folder).config


def lamina_loads_theirs(hf, folder, bias_std: float = 0.0):
    """transformers' `hf`, its weights drawn afresh (and any balancing bias), saved; lamina reads
    it with equal logits. The checkpoint lamina read."""
    from lamina.checkpoint.hf import read_hf
    from lamina.model import from_state_dict
    torch.manual_seed(0)
    for p in hf.parameters():
        torch.nn.init.normal_(p, std=0.1)
    for m in hf.modules():
        if bias_std and hasattr(m, "e_score_correction_bias"):
            m.e_score_correction_bias.normal_(0, bias_std)
    hf.eval().save_pretrained(folder)
    ck = read_hf(folder)
    tokens = torch.randint(0, hf.config.vocab_size, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(from_state_dict(ck.config, ck.weights).eval()(tokens), hf(tokens).logits,
                                   rtol=1e-5, atol=1e-5)
    return ck
