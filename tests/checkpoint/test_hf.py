"""Hugging Face model directories: what lamina writes, transformers loads with the same logits,
and what transformers saves, lamina loads with the same logits."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lamina.checkpoint import read_hf, write_hf
from lamina.errors import LaminaError
from lamina.model import ModelConfig, RopeScaling, expected_shapes, from_state_dict

TOLERANCE = 1e-4   # max abs logit difference in float32
SEQ_LEN = 48       # longer than the scaled configs' original_max_position_embeddings

CONFIGS = {
    "llama2-mha-untied": ModelConfig(
        dim=64, n_layers=2, n_heads=4, ffn_dim=96, vocab_size=96, norm_eps=1e-5, max_seq_len=256),
    "llama3-gqa-tied-scaled": ModelConfig(
        dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=160, vocab_size=128,
        rope_theta=500000.0, max_seq_len=256, tie_embeddings=True, bos_token_id=0, eos_token_id=1,
        rope_scaling=RopeScaling(factor=4.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                 original_max_position_embeddings=16)),
    "llama3-gqa-untied-scaled": ModelConfig(
        dim=96, n_layers=2, n_heads=6, n_kv_heads=2, ffn_dim=128, vocab_size=112,
        rope_theta=500000.0, max_seq_len=512, eos_token_id=(2, 3),
        rope_scaling=RopeScaling(factor=8.0, low_freq_factor=2.0, high_freq_factor=8.0,
                                 original_max_position_embeddings=32)),
    "explicit-head-dim-mqa": ModelConfig(
        dim=48, n_layers=2, n_heads=4, n_kv_heads=1, head_dim=16, ffn_dim=80, vocab_size=80,
        max_seq_len=128, tie_embeddings=True),
}


def random_weights(config: ModelConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """Weights large enough that every layer changes the logits (norms near, not at, one)."""
    g = torch.Generator().manual_seed(seed)
    return {name: 1 + 0.1 * torch.randn(shape, generator=g) if name.endswith("norm.weight")
            else 0.15 * torch.randn(shape, generator=g)
            for name, shape in expected_shapes(config).items()}


def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            scale, offset = (0.1, 1.0) if name.endswith("norm.weight") else (0.15, 0.0)
            p.copy_(offset + scale * torch.randn(p.shape, generator=g))
    return model


def random_tokens(config: ModelConfig, seed: int = 1) -> torch.Tensor:
    return torch.randint(config.vocab_size, (2, SEQ_LEN), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def max_logit_diff(ours: torch.nn.Module, theirs: LlamaForCausalLM, tokens: torch.Tensor) -> float:
    return (ours(tokens) - theirs(tokens).logits).abs().max().item()


def llama_config(c: ModelConfig) -> LlamaConfig:
    """The transformers 5 config for `c`, spelled out independently of lamina's config_to_hf."""
    rope = {"rope_type": "default", "rope_theta": c.rope_theta}
    if c.rope_scaling is not None:
        s = c.rope_scaling
        rope.update(rope_type="llama3", factor=s.factor, low_freq_factor=s.low_freq_factor,
                    high_freq_factor=s.high_freq_factor,
                    original_max_position_embeddings=s.original_max_position_embeddings)
    return LlamaConfig(
        hidden_size=c.dim, num_hidden_layers=c.n_layers, num_attention_heads=c.n_heads,
        num_key_value_heads=c.n_kv_heads, head_dim=c.head_dim, intermediate_size=c.ffn_dim,
        vocab_size=c.vocab_size, rms_norm_eps=c.norm_eps, rope_parameters=rope,
        max_position_embeddings=c.max_seq_len, tie_word_embeddings=c.tie_embeddings,
        bos_token_id=c.bos_token_id, eos_token_id=list(c.eos_token_ids) if len(c.eos_token_ids) > 1
        else c.eos_token_id)


def load_in_transformers(path: Path) -> LlamaForCausalLM:
    model, info = LlamaForCausalLM.from_pretrained(path, dtype=torch.float32, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    return model.eval()


def files_under(root: Path) -> dict[str, bytes]:
    return {str(f.relative_to(root)): f.read_bytes() for f in sorted(root.rglob("*")) if f.is_file()}


@pytest.mark.parametrize("name", CONFIGS)
def test_hf_directory_loads_in_transformers_with_equal_logits(tmp_path, name):
    config = CONFIGS[name]
    weights = random_weights(config)
    write_hf(tmp_path / "model", config, weights)
    theirs = load_in_transformers(tmp_path / "model")
    ours = from_state_dict(config, weights)
    assert max_logit_diff(ours, theirs, random_tokens(config)) <= TOLERANCE


@pytest.mark.parametrize("name", CONFIGS)
def test_transformers_checkpoint_loads_in_lamina_with_equal_logits(tmp_path, name):
    config = CONFIGS[name]
    theirs = randomize_(LlamaForCausalLM(llama_config(config)).eval())
    theirs.save_pretrained(tmp_path / "model")
    checkpoint = read_hf(tmp_path / "model")
    assert checkpoint.config == config
    ours = from_state_dict(checkpoint.config, checkpoint.weights)
    assert max_logit_diff(ours, theirs, random_tokens(config)) <= TOLERANCE


def test_transformers_applies_our_llama3_rope_scaling(tmp_path):
    config = CONFIGS["llama3-gqa-untied-scaled"]
    weights = random_weights(config)
    write_hf(tmp_path / "model", config, weights)
    theirs = load_in_transformers(tmp_path / "model")
    rope = theirs.config.rope_parameters
    assert rope["rope_type"] == "llama3" and rope["rope_theta"] == config.rope_theta
    assert {k: rope[k] for k in ("factor", "low_freq_factor", "high_freq_factor",
                                 "original_max_position_embeddings", "rope_type")} == vars(config.rope_scaling)
    # at this sequence length the scaling matters, so equal logits mean transformers applied it
    unscaled = from_state_dict(config.replace(rope_scaling=None), weights)
    assert max_logit_diff(unscaled, theirs, random_tokens(config)) > 100 * TOLERANCE


def test_sharded_directory_reads_back_identically_in_lamina_and_transformers(tmp_path):
    config = CONFIGS["llama3-gqa-untied-scaled"]
    weights = random_weights(config)
    write_hf(tmp_path / "model", config, weights, max_shard_bytes=60_000)
    shards = sorted(p.name for p in (tmp_path / "model").glob("model-*-of-*.safetensors"))
    index = json.loads((tmp_path / "model" / "model.safetensors.index.json").read_text())
    assert len(shards) >= 3 and not (tmp_path / "model" / "model.safetensors").exists()
    assert sorted(set(index["weight_map"].values())) == shards

    checkpoint = read_hf(tmp_path / "model")
    assert checkpoint.config == config
    assert checkpoint.weights.keys() == weights.keys()
    assert all(torch.equal(checkpoint.weights[k], weights[k]) for k in weights)
    theirs = load_in_transformers(tmp_path / "model")
    ours = from_state_dict(config, weights)
    assert max_logit_diff(ours, theirs, random_tokens(config)) <= TOLERANCE


def test_lamina_json_records_the_hash_of_every_file(tmp_path):
    config = CONFIGS["llama2-mha-untied"]
    write_hf(tmp_path / "model", config, random_weights(config), max_shard_bytes=60_000,
             made_by={"recipe": "test"})
    record = json.loads((tmp_path / "model" / "lamina.json").read_text())
    others = {f.name for f in (tmp_path / "model").iterdir()} - {"lamina.json"}
    assert set(record["files"]) == others and "model.safetensors.index.json" in others
    for name, digest in record["files"].items():
        assert hashlib.sha256((tmp_path / "model" / name).read_bytes()).hexdigest() == digest
    assert record["made_by"] == {"recipe": "test"}


def test_write_hf_refuses_a_non_empty_directory_and_changes_nothing(tmp_path):
    config = CONFIGS["llama2-mha-untied"]
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "notes.txt").write_text("keep me")
    before = files_under(tmp_path)
    with pytest.raises(LaminaError, match=r"model: already exists"):
        write_hf(tmp_path / "model", config, random_weights(config))
    assert files_under(tmp_path) == before
    assert [p.name for p in tmp_path.iterdir()] == ["model"]   # no partial directory left behind
