"""Llama 4's text model: iRoPE (RoPE-free layers attending over everything, the others within
chunks), the query/key L2 norm, attention temperature, the shared expert and input-scaled sigmoid
routing; equal to transformers' Llama4ForCausalLM both ways, chunk edges crossed; published
parameter counts; cached decoding across chunk edges equal to the uncached forward; training."""

from __future__ import annotations

import json

import pytest
import torch

from lamina.model import ModelConfig, RopeScaling, Transformer, count_params, init_weights, preset

from .conftest import lamina_loads_theirs, transformers_loads_ours

SMALL = dict(dim=64, n_layers=4, n_heads=4, n_kv_heads=2, head_dim=16, ffn_dim=96, vocab_size=300, max_seq_len=128,
             rope_theta=500000.0, n_experts=4, n_shared_experts=1, expert_ffn_dim=32, router="sigmoid",
             norm_topk=False, expert_input_scaled=True, nope_every=4, attention_chunk=8, attn_temperature=0.1,
             attn_floor=4)


@pytest.mark.parametrize("every,top_k,l2", [(1, 1, True), (2, 2, False)], ids=["scout-like", "maverick-like"])
def test_llama4s_layout_both_ways_with_transformers_logits(tmp_path, every, top_k, l2):
    """24 tokens over chunks of 8, the fourth layer without RoPE and its queries scaled from
    position 4 on; Scout's llama3 scaling with equal low and high factors."""
    from transformers import Llama4ForCausalLM, Llama4TextConfig
    c = ModelConfig(**SMALL, moe_every=every, n_active_experts=top_k, qk_l2_norm=l2,
                    rope_scaling=RopeScaling(factor=16.0, low_freq_factor=1.0, high_freq_factor=1.0,
                                             original_max_position_embeddings=16))
    model = init_weights(Transformer(c), seed=1, std=0.1).eval()
    assert transformers_loads_ours(model, Llama4ForCausalLM, tmp_path / "ours") == c
    saved = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert saved["model_type"] == "llama4_text" and saved["no_rope_layers"] == [1, 1, 1, 0]
    ck = lamina_loads_theirs(Llama4ForCausalLM(Llama4TextConfig(
        vocab_size=300, hidden_size=64, intermediate_size=32, intermediate_size_mlp=96, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_local_experts=4, num_experts_per_tok=top_k,
        interleave_moe_layer_step=every, use_qk_norm=l2, attention_chunk_size=8, floor_scale=4,
        max_position_embeddings=128, attn_implementation="eager")), tmp_path / "theirs")
    assert (ck.config.moe_every, ck.config.nope_every, ck.config.attention_chunk) == (every, 4, 8)


def test_parameter_counts_equal_the_published_ones():
    """Meta's figures count the vision encoder too (about 0.9B): Scout 109B in all, of which
    107.8B is the text model, 17B active; Maverick "400B", 400.7B of text model, 17B active."""
    scout, maverick = preset("llama-4-scout"), preset("llama-4-maverick")
    assert round(count_params(scout) / 1e9, 1) == 107.8 and round(count_params(scout, active=True) / 1e9) == 17
    assert round(count_params(maverick) / 1e9, 1) == 400.7 and round(count_params(maverick, active=True) / 1e9) == 17
    small = preset("debug-llama4")
    assert count_params(small) == sum(p.numel() for p in Transformer(small).parameters())
    assert [small.is_moe_layer(i) for i in range(4)] == [False, True, False, True]
    assert [small.rotates(i) for i in range(4)] == [True, True, True, False]


def test_cached_decoding_across_chunk_edges_equals_the_uncached_forward(greedy_equals_uncached):
    """Chunks of 4: left-padded prompts of 2 to 6 tokens and 8 new ones cross two or three edges,
    each row's keys placed by its own offset."""
    greedy_equals_uncached(init_weights(Transformer(preset("debug-llama4").replace(attention_chunk=4)),
                                        seed=2, std=0.2).eval())


def test_a_llama4_model_trains(shakespeare_corpus, tmp_path):
    from lamina.checkpoint.hf import read_hf
    from lamina.train import train, train_recipe
    result = train(train_recipe("debug", ['model="debug-llama4"', "eval_every=10", "save_every=10", "lr=1e-2",
                                          "seq_len=64"],
                                data=str(shakespeare_corpus), out=str(tmp_path / "run"), max_steps=10), progress=False)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
              if '"loss"' in line]
    assert losses[-1] < losses[0]
    assert read_hf(result.checkpoint).config.nope_every == 4


def test_the_text_model_of_metas_multimodal_checkpoint_reads_with_equal_logits(tmp_path):
    """Llama 4 as released (Llama4ForConditionalGeneration): the text model's tensors under
    `language_model.`, the vision encoder's beside them, left out; text-only logits equal."""
    from transformers import Llama4Config, Llama4ForConditionalGeneration

    from lamina.checkpoint.hf import read_hf
    from lamina.model import from_state_dict
    text = dict(vocab_size=300, hidden_size=64, intermediate_size=32, intermediate_size_mlp=96, num_hidden_layers=4,
                num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_local_experts=4,
                num_experts_per_tok=1, interleave_moe_layer_step=2, attention_chunk_size=8, floor_scale=4,
                max_position_embeddings=128)
    vision = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=56,
                  patch_size=14, vision_output_dim=64, projector_input_dim=64, projector_output_dim=64)
    torch.manual_seed(0)
    theirs = Llama4ForConditionalGeneration(Llama4Config(text_config=text, vision_config=vision))
    for p in theirs.parameters():
        torch.nn.init.normal_(p, std=0.1)
    theirs.eval().save_pretrained(tmp_path / "released")
    ck = read_hf(tmp_path / "released")
    assert ck.config.n_experts == 4 and not any("vision" in k for k in ck.weights)
    tokens = torch.randint(0, 300, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(from_state_dict(ck.config, ck.weights).eval()(tokens),
                                   theirs(input_ids=tokens).logits, rtol=1e-5, atol=1e-5)
