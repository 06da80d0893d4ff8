"""What the post-training tests share: a tiny Llama with SmolLM2's real tokenizer and chat
template, written as a model directory that lamina, transformers, TRL and PEFT all load."""

from __future__ import annotations

import pytest
import torch

from lamina.model import ModelConfig, Transformer, from_state_dict, init_weights, weights


def tiny_model_dir(path, tok, seed: int):
    """A 2-layer Llama of width 64 with `tok`'s vocabulary, its weights drawn from `seed`, at `path`."""
    from lamina.checkpoint import write_hf
    write_hf(path, tiny_config(tok), weights(init_weights(Transformer(tiny_config(tok)), seed=seed)), tok)
    return path


def tiny_config(tok) -> ModelConfig:
    return ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=176, vocab_size=tok.vocab_size,
                       max_seq_len=256, tie_embeddings=True, rope_theta=10000.0, bos_token_id=tok.bos_id,
                       eos_token_id=tok.eos_id)


def lamina_model(path) -> Transformer:
    """The model directory at `path`, loaded by lamina in float32."""
    from lamina.checkpoint import read_hf
    ck = read_hf(path)
    return from_state_dict(ck.config, ck.weights, dtype=torch.float32)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """(model directory, its config, the tokenizer): the tiny Llama with SmolLM2's tokenizer and template."""
    from lamina.tokenizer import load_tokenizer
    tok = load_tokenizer("smollm2-135m-instruct")
    path = tiny_model_dir(tmp_path_factory.mktemp("post") / "base", tok, seed=1)
    return path, tiny_config(tok), tok
