"""Llama 4 in Meta's original layout (params.json + consolidated.NN.pth, as Scout and Maverick
were released), against Meta's own code (llama_models.llama4, run in its own process by
meta_llama4_reference.py): what lamina writes, Meta's model loads strictly, through its load
hooks, with lamina's logits; what Meta's model saves, lamina reads with Meta's logits."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lamina.checkpoint import read_meta, write_meta
from lamina.checkpoint.meta_llama4 import config_from_params, params_from_config
from lamina.errors import LaminaError
from lamina.model import RopeScaling, YarnScaling, from_state_dict, preset

from .test_meta import random_weights

REFERENCE = Path(__file__).with_name("meta_llama4_reference.py")
DEBUG = preset("debug-llama4")
CONFIGS = {
    # every second layer sparse (Maverick's way), a dense size and an expert size Meta's released
    # multipliers cannot give: params.json solves its own
    "debug-llama4": DEBUG,
    # every layer sparse, two experts per token, Scout's RoPE scaling, no temperature tuning
    "scout-like": DEBUG.replace(moe_every=1, n_active_experts=2, attn_temperature=0.0,
                                rope_scaling=RopeScaling(factor=16.0, high_freq_factor=1.0), tie_embeddings=True),
}
# params.json as Meta writes it: sizes derived from ffn_exp, ffn_dim_multiplier, multiple_of
# and auto_scale_F, nothing stated
META_PARAMS = {
    "maverick-like": {"dim": 64, "n_layers": 4, "n_heads": 4, "n_kv_heads": 2, "vocab_size": 512,
                      "multiple_of": 16, "ffn_dim_multiplier": 1.2, "ffn_exp": 4.0, "norm_eps": 1e-5,
                      "rope_theta": 500000.0, "nope_layer_interval": 4, "attention_chunk_size": 16,
                      "use_qk_norm": False, "attn_temperature_tuning": True, "floor_scale": 8, "attn_scale": 0.1,
                      "moe_args": {"num_experts": 4, "capacity_factor": 1.0, "auto_scale_F": True, "top_k": 1,
                                   "interleave_moe_layer_step": 2}, "max_seq_len": 64},
    "scout-like": {"dim": 64, "n_layers": 4, "n_heads": 4, "n_kv_heads": 1, "vocab_size": 512,
                   "multiple_of": 16, "ffn_dim_multiplier": 1.2, "ffn_exp": 4.0, "norm_eps": 1e-5,
                   "rope_theta": 500000.0, "use_scaled_rope": True, "nope_layer_interval": 4,
                   "attention_chunk_size": 8, "use_qk_norm": True, "attn_temperature_tuning": True,
                   "floor_scale": 8, "attn_scale": 0.1,
                   "moe_args": {"num_experts": 4, "capacity_factor": 1.0, "auto_scale_F": True, "top_k": 1,
                                "interleave_moe_layer_step": 1}, "max_seq_len": 64},
}


def tokens(vocab: int) -> torch.Tensor:
    """Past two attention chunks and past the temperature floor, so iRoPE and the tuning count."""
    return torch.randint(vocab, (2, 40), generator=torch.Generator().manual_seed(1))


def reference(*args) -> None:
    run = subprocess.run([sys.executable, str(REFERENCE), *map(str, args)], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]


def reference_logits(folder: Path, ids: torch.Tensor, tmp_path: Path) -> torch.Tensor:
    torch.save(ids, tmp_path / "tokens.pt")
    reference("logits", folder, tmp_path / "tokens.pt", tmp_path / "logits.pt")
    return torch.load(tmp_path / "logits.pt", weights_only=True)


@torch.no_grad()
def lamina_logits(folder: Path, ids: torch.Tensor) -> torch.Tensor:
    checkpoint = read_meta(folder)
    return from_state_dict(checkpoint.config, checkpoint.weights)(ids)


@pytest.mark.parametrize("name", CONFIGS)
def test_metas_llama4_code_loads_what_lamina_writes_with_laminas_logits(tmp_path, name):
    config = CONFIGS[name]
    weights = random_weights(config)
    write_meta(tmp_path / "meta", config, weights, dtype=torch.float32)
    ids = tokens(config.vocab_size)
    with torch.no_grad():
        ours = from_state_dict(config, weights)(ids)
    theirs = reference_logits(tmp_path / "meta", ids, tmp_path)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", META_PARAMS)
def test_lamina_reads_what_metas_llama4_code_saves_with_its_logits(tmp_path, name):
    folder = tmp_path / "meta"
    folder.mkdir()
    (folder / "params.json").write_text(json.dumps(META_PARAMS[name]))
    reference("init", folder, 7)          # Meta's model, random, saved under its module names
    ids = tokens(512)
    torch.testing.assert_close(lamina_logits(folder, ids), reference_logits(folder, ids, tmp_path),
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shards", [1, 2])
@pytest.mark.parametrize("name", CONFIGS)
def test_llama4_meta_round_trip_keeps_weights_and_config(tmp_path, name, shards):
    config, weights = CONFIGS[name], random_weights(CONFIGS[name])
    write_meta(tmp_path / "meta", config, weights, shards=shards, dtype=torch.float32)
    assert len(list((tmp_path / "meta").glob("consolidated.*.pth"))) == shards
    checkpoint = read_meta(tmp_path / "meta")
    assert checkpoint.config == config
    assert checkpoint.weights.keys() == weights.keys() - ({"output.weight"} if config.tie_embeddings else set())
    assert all(torch.equal(checkpoint.weights[k], weights[k]) for k in checkpoint.weights)


def test_released_llama4_sizes_give_metas_params_and_back():
    """Scout and Maverick write the multipliers Meta released them with, and those derive their
    published hidden sizes: 8192 per expert, 16384 dense."""
    for name, step in (("llama-4-scout", 1), ("llama-4-maverick", 2)):
        config = preset(name)
        params = params_from_config(config)
        assert (params["multiple_of"], params["ffn_dim_multiplier"], params["ffn_exp"]) == (2048, 1.2, 4.0)
        assert params["moe_args"] == {"num_experts": config.n_experts, "top_k": 1, "capacity_factor": 1.0,
                                      "auto_scale_F": True, "interleave_moe_layer_step": step}
        back = config_from_params(params, 202048, has_output=True)
        assert (back.ffn_dim, back.expert_ffn_dim) == (16384, 8192)
        assert back.replace(head_dim=128) == config


def test_released_extras_are_left_out_and_nested_params_read(tmp_path):
    """Meta's files carry Transformer Engine state (io.BytesIO), routing statistics, the vision
    encoder and, in some releases, params under "model": the text model reads the same."""
    config, weights = DEBUG, random_weights(DEBUG)
    write_meta(tmp_path / "meta", config, weights, dtype=torch.float32)
    plain = read_meta(tmp_path / "meta")
    plain.weights = {k: v.clone() for k, v in plain.weights.items()}   # off the file rewritten below
    file = tmp_path / "meta" / "consolidated.00.pth"
    state = torch.load(file, weights_only=True)
    state.update({"layers.0.attention.wqkv._extra_state": io.BytesIO(b"te"),
                  "layers.1.feed_forward.global_gate_stats_3E": torch.zeros(3, 4),
                  "vision_embeddings.vision_encoder.conv1._linear.weight": torch.zeros(8, 8),
                  "vision_projection.weight": torch.zeros(64, 8)})
    torch.save(state, file)
    params = tmp_path / "meta" / "params.json"
    params.write_text(json.dumps({"model": json.loads(params.read_text())}))
    checkpoint = read_meta(tmp_path / "meta")
    assert checkpoint.config == plain.config
    assert all(torch.equal(checkpoint.weights[k], plain.weights[k]) for k in plain.weights)
    assert checkpoint.weights.keys() == plain.weights.keys()
    assert checkpoint.metadata["vision_tensors_left_out"] == 2


@pytest.mark.parametrize("change, says", [
    (dict(router="softmax", norm_topk=True, expert_input_scaled=False), "a router other than Llama 4's"),
    (dict(n_shared_experts=0), "other than one shared expert"),
    (dict(head_dim=24), "a head size other than dim / n_heads"),
    (dict(rope_scaling=YarnScaling(factor=4.0, original_max_position_embeddings=64)), "YaRN"),
    (dict(rope_scaling=RopeScaling(factor=8.0, low_freq_factor=2.0)), "other than low_freq_factor 1 and 8192"),
])
def test_what_metas_llama4_code_would_run_otherwise_is_refused_before_writing(tmp_path, change, says):
    config = DEBUG.replace(**change)
    with pytest.raises(LaminaError, match=says):
        write_meta(tmp_path / "meta", config, random_weights(config))
    assert not (tmp_path / "meta").exists()


def test_heads_that_do_not_split_over_the_files_are_refused(tmp_path):
    with pytest.raises(LaminaError, match="2 key/value heads do not split over 4 model-parallel files"):
        write_meta(tmp_path / "meta", DEBUG, random_weights(DEBUG), shards=4)
    assert not (tmp_path / "meta").exists()


@pytest.mark.parametrize("edit, says", [
    (lambda p, s: p["moe_args"].update(num_experts="4"), "moe_args.num_experts must be an integer"),
    (lambda p, s: p.pop("n_heads"), "missing field n_heads"),
    (lambda p, s: s.update({"layers.0.attention.wqkv.weight": torch.zeros(65, 64)}), "does not split into the queries"),
    (lambda p, s: s.update({"layers.1.feed_forward.experts.moe_w_out_eF_D": torch.zeros(63, 64)}),
     "do not fit params.json"),
])
def test_a_broken_llama4_checkpoint_is_one_clear_error(tmp_path, edit, says):
    write_meta(tmp_path / "meta", DEBUG, random_weights(DEBUG), dtype=torch.float32)
    params_file, file = tmp_path / "meta" / "params.json", tmp_path / "meta" / "consolidated.00.pth"
    params, state = json.loads(params_file.read_text()), torch.load(file, weights_only=True)
    edit(params, state)
    params_file.write_text(json.dumps(params))
    torch.save(state, file)
    with pytest.raises(LaminaError, match=says):
        read_meta(tmp_path / "meta")
