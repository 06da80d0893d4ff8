"""Meta's original checkpoints (params.json + consolidated.NN.pth): lamina writes and reads them
losslessly, its Q/K row order matches Meta's interleaved complex RoPE, and a pickle that would
run code is refused without running it."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from lamina.checkpoint import read_hf, read_meta, write_hf, write_meta
from lamina.errors import LaminaError
from lamina.model import ModelConfig, RopeScaling, expected_shapes, from_state_dict
from lamina.model.rope import apply_rope, rope_cos_sin, rope_inv_freq

CONFIGS = {
    "llama2-mha-untied": ModelConfig(dim=64, n_layers=2, n_heads=4, ffn_dim=96, vocab_size=96,
                                     max_seq_len=256),
    # lamina-only params.json keys: a head_dim Meta's code would derive differently, and llama3
    # RoPE scaling parameters other than the ones Meta's code fixes
    "llama3-gqa-tied-scaled-head-dim": ModelConfig(
        dim=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=24, ffn_dim=170, vocab_size=128,
        rope_theta=500000.0, max_seq_len=512, tie_embeddings=True,
        rope_scaling=RopeScaling(factor=4.0, high_freq_factor=8.0, original_max_position_embeddings=16)),
    # Llama 3.1's own scaling, which params.json states with use_scaled_rope alone; an ffn_dim
    # for which ffn_dim_multiplier = ffn_dim / hidden rounds one short in Meta's int(...)
    "llama31-scaling": ModelConfig(dim=32, n_layers=1, n_heads=2, ffn_dim=98, vocab_size=64,
                                   rope_theta=500000.0, rope_scaling=RopeScaling(factor=8.0)),
}


def random_weights(config: ModelConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {name: 1 + 0.1 * torch.randn(shape, generator=g) if name.endswith("norm.weight")
            else 0.15 * torch.randn(shape, generator=g)
            for name, shape in expected_shapes(config).items()}


@torch.no_grad()
def logits(config: ModelConfig, weights: dict[str, torch.Tensor]) -> torch.Tensor:
    tokens = torch.randint(config.vocab_size, (2, 40), generator=torch.Generator().manual_seed(1))
    return from_state_dict(config, weights)(tokens)


@pytest.mark.parametrize("shards", [1, 2])
@pytest.mark.parametrize("name", CONFIGS)
def test_meta_round_trip_keeps_weights_and_config(tmp_path, name, shards):
    config, weights = CONFIGS[name], random_weights(CONFIGS[name])
    write_meta(tmp_path / "meta", config, weights, shards=shards, dtype=torch.float32)
    assert len(list((tmp_path / "meta").glob("consolidated.*.pth"))) == shards
    checkpoint = read_meta(tmp_path / "meta")
    assert checkpoint.config == config
    assert checkpoint.weights.keys() == weights.keys()
    assert all(torch.equal(checkpoint.weights[k], weights[k]) for k in weights)


def test_meta_checkpoint_gives_the_same_logits_as_the_original_and_the_hf_path(tmp_path):
    config = CONFIGS["llama3-gqa-tied-scaled-head-dim"]
    weights = random_weights(config)
    write_meta(tmp_path / "meta", config, weights, shards=2, dtype=torch.float32)
    write_hf(tmp_path / "hf", config, weights)
    meta, hf = read_meta(tmp_path / "meta"), read_hf(tmp_path / "hf")
    original = logits(config, weights)
    torch.testing.assert_close(logits(meta.config, meta.weights), original, rtol=0, atol=1e-5)
    torch.testing.assert_close(logits(hf.config, hf.weights), original, rtol=0, atol=1e-5)


def test_meta_bfloat16_default_keeps_the_values_bfloat16_can_hold(tmp_path):
    config = CONFIGS["llama2-mha-untied"]
    weights = random_weights(config)
    write_meta(tmp_path / "meta", config, weights)
    checkpoint = read_meta(tmp_path / "meta")
    assert checkpoint.dtypes == {"bfloat16": len(weights)}
    assert all(torch.equal(checkpoint.weights[k], weights[k].to(torch.bfloat16)) for k in weights)


def meta_rotary(x: torch.Tensor, theta: float) -> torch.Tensor:
    """Meta's reference RoPE: channel pairs (2i, 2i+1) as complex numbers, rotated by
    position * theta^(-2i/D). x: (B, T, H, D) in Meta's interleaved layout."""
    B, T, H, D = x.shape
    freqs = 1.0 / theta ** (torch.arange(0, D, 2).float() / D)                 # (D/2,)
    angles = torch.outer(torch.arange(T).float(), freqs)                       # (T, D/2)
    rotation = torch.polar(torch.ones_like(angles), angles)[None, :, None]     # (1, T, 1, D/2)
    pairs = torch.view_as_complex(x.float().reshape(B, T, H, D // 2, 2))       # (B, T, H, D/2)
    return torch.view_as_real(pairs * rotation).flatten(3)                     # (B, T, H, D)


def test_meta_qk_rows_match_metas_interleaved_complex_rope(tmp_path):
    config = ModelConfig(dim=64, n_layers=1, n_heads=4, n_kv_heads=2, ffn_dim=96, vocab_size=64,
                         rope_theta=10000.0)
    B, T, H, KV, D = 1, 24, config.n_heads, config.n_kv_heads, config.head_dim
    write_meta(tmp_path / "meta", config, random_weights(config), dtype=torch.float32)
    on_disk = torch.load(tmp_path / "meta" / "consolidated.00.pth", weights_only=True)
    ours = read_meta(tmp_path / "meta").weights
    x = torch.randn(B, T, config.dim, generator=torch.Generator().manual_seed(2))

    wq, wk = "layers.0.attention.wq.weight", "layers.0.attention.wk.weight"
    q_meta = meta_rotary((x @ on_disk[wq].T).view(B, T, H, D), config.rope_theta)
    k_meta = meta_rotary((x @ on_disk[wk].T).view(B, T, KV, D), config.rope_theta)
    cos, sin = rope_cos_sin(rope_inv_freq(D, config.rope_theta), torch.arange(T)[None], x.dtype)
    q_ours = apply_rope((x @ ours[wq].T).view(B, T, H, D).transpose(1, 2), cos, sin).transpose(1, 2)
    k_ours = apply_rope((x @ ours[wk].T).view(B, T, KV, D).transpose(1, 2), cos, sin).transpose(1, 2)

    # Meta's pair (2i, 2i+1) is lamina's (i, i + D/2)
    def halves(t):
        return torch.cat((t[..., 0::2], t[..., 1::2]), dim=-1)

    torch.testing.assert_close(halves(q_meta), q_ours, rtol=0, atol=1e-5)
    torch.testing.assert_close(halves(k_meta), k_ours, rtol=0, atol=1e-5)
    # and what attention sees, q·k per query head and its kv head, needs no layout at all
    kv_of = torch.arange(H) // (H // KV)
    scores_meta = torch.einsum("bthd,bshd->bhts", q_meta, k_meta[:, :, kv_of])
    scores_ours = torch.einsum("bthd,bshd->bhts", q_ours, k_ours[:, :, kv_of])
    torch.testing.assert_close(scores_meta, scores_ours, rtol=0, atol=1e-4)


class _CreatesAFile:
    """Unpickling this opens (creates) `path`: harmless, and visible if it ever runs."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("writer", ["torch.save", "torch.save legacy", "pickle.dump"])
def test_meta_pth_that_would_run_code_is_refused_and_never_runs(tmp_path, writer):
    config = CONFIGS["llama2-mha-untied"]
    write_meta(tmp_path / "meta", config, random_weights(config))
    pth, marker = tmp_path / "meta" / "consolidated.00.pth", tmp_path / "payload-ran"
    state = dict(torch.load(pth, weights_only=True)) | {"norm.weight": _CreatesAFile(marker)}
    if writer == "pickle.dump":
        pth.write_bytes(pickle.dumps(state))
    else:
        torch.save(state, pth, _use_new_zipfile_serialization=writer == "torch.save")

    with pytest.raises(LaminaError, match=r"consolidated\.00\.pth: refused: ") as e:
        read_meta(tmp_path / "meta")
    message = str(e.value)
    assert "\n" not in message and "weights_only" not in message and "\x1b" not in message
    if writer.startswith("torch.save"):
        assert "GLOBAL builtins.open" in message or "GLOBAL io.open" in message
    assert not marker.exists()
    if writer == "torch.save":   # the file is truly armed: an unsafe load would have run it
        torch.load(pth, weights_only=False)
        assert marker.exists()
