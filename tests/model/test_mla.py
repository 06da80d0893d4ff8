"""Multi-head latent attention (DeepSeek-V2/V3) and DeepSeek-V3's Hugging Face layout: lamina's
model and transformers' DeepseekV3ForCausalLM give equal logits on the same weights, both ways
(latent attention with and without the query bottleneck, sigmoid routing in groups, a shared
expert, the balancing bias, dense first layers, interleaved RoPE rows); published parameter
counts; training; and decoding over a cache of the latent alone, with the up-projections absorbed,
equal to the naive forward."""

from __future__ import annotations

import json

import pytest
import torch

from lamina.checkpoint.hf import read_hf
from lamina.model import Transformer, count_params, init_weights, preset, weights

from .conftest import lamina_loads_theirs, transformers_loads_ours


def test_deepseek_v3s_layout_both_ways_with_transformers_logits(tmp_path):
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM
    c = preset("debug-mla")
    model = init_weights(Transformer(c), seed=3, std=0.1).eval()
    for layer in model.layers[c.dense_layers:]:
        layer.feed_forward.expert_bias.normal_(0, 0.05)          # a trained bias changes which experts are chosen
    assert transformers_loads_ours(model, DeepseekV3ForCausalLM, tmp_path / "ours") == c
    assert json.loads((tmp_path / "ours" / "config.json").read_text())["architectures"] == ["DeepseekV3ForCausalLM"]
    # what transformers writes (no query bottleneck this time), lamina reads
    ck = lamina_loads_theirs(DeepseekV3ForCausalLM(DeepseekV3Config(
        vocab_size=300, hidden_size=64, intermediate_size=96, moe_intermediate_size=32, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=4, n_shared_experts=1, n_routed_experts=8,
        routed_scaling_factor=2.5, kv_lora_rank=32, q_lora_rank=None, qk_rope_head_dim=8, v_head_dim=12,
        qk_nope_head_dim=16, n_group=4, topk_group=2, num_experts_per_tok=2, first_k_dense_replace=1,
        max_position_embeddings=128)), tmp_path / "theirs", bias_std=0.05)
    assert (ck.config.q_lora_rank, ck.config.v_head_dim, ck.config.dense_layers) == (0, 12, 1)


def test_parameter_counts_equal_the_published_ones():
    v3 = preset("deepseek-v3")
    assert round(count_params(v3) / 1e9) == 671
    # DeepSeek counts activated parameters without the input embeddings: 37B
    assert round((count_params(v3, active=True) - v3.vocab_size * v3.dim) / 1e9) == 37
    assert round(count_params(preset("deepseek-v2-lite")) / 1e9, 1) == 15.7
    small = preset("debug-mla")
    assert count_params(small) == sum(p.numel() for p in Transformer(small).parameters())


def test_a_latent_model_trains(shakespeare_corpus, tmp_path):
    from lamina.train import train, train_recipe
    result = train(train_recipe("debug", ['model="debug-mla"', "eval_every=10", "save_every=10", "lr=1e-2"],
                                data=str(shakespeare_corpus), out=str(tmp_path / "run"), max_steps=10), progress=False)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
              if '"loss"' in line]
    assert losses[-1] < losses[0]
    ck = read_hf(result.checkpoint)
    assert ck.config.latent and ck.config.expert_bias


def test_absorbed_decoding_over_the_latent_cache_equals_the_naive_forward(greedy_equals_uncached):
    """The engine caches each token's latent and RoPE key only (kv_lora_rank + qk_rope_head_dim
    channels a layer) and attends over them with wkv_b absorbed; its batched greedy output,
    prompts of different lengths sharing a step, equals re-running the naive forward each step."""
    from lamina.model.kv_cache import SlotCache
    c = preset("debug-mla")
    model = init_weights(Transformer(c), seed=5, std=0.1).eval()
    for layer in model.layers[c.dense_layers:]:
        layer.feed_forward.expert_bias.normal_(0, 0.05)
    greedy_equals_uncached(model)
    greedy_equals_uncached(model, expand_latent=True)       # and the naive cache it is measured against
    per_token = SlotCache.bytes_per_token(c, torch.bfloat16)
    assert per_token == c.n_layers * (c.kv_lora_rank + c.qk_rope_head_dim) * 2
    assert per_token < 2 * c.n_layers * c.n_heads * c.head_dim * 2 / 4     # a quarter of multi-head attention's


@pytest.mark.parametrize("layout", ["deepseek_v3", "qwen3_moe"])
def test_yarn_as_deepseek_v3_and_qwen3_set_it_equals_transformers(tmp_path, layout):
    """YaRN (factor 4 over 16 original positions, 40 tokens): DeepSeek-V3's with mscale and
    mscale_all_dim (cos/sin unscaled, the softmax by mscale²), Qwen3's with the attention factor
    on cos and sin; lamina's logits equal transformers' and differ from unscaled RoPE's."""
    import transformers
    from lamina.model import YarnScaling, from_state_dict
    deepseek = layout == "deepseek_v3"
    c = preset("debug-mla" if deepseek else "debug-moe").replace(rope_scaling=YarnScaling(
        factor=4.0, original_max_position_embeddings=16, mscale=1.0 if deepseek else 0.0,
        mscale_all_dim=1.0 if deepseek else 0.0), **({} if deepseek else {"qk_norm": True}))
    model = init_weights(Transformer(c), seed=1, std=0.1).eval()
    cls = getattr(transformers, "DeepseekV3ForCausalLM" if deepseek else "Qwen3MoeForCausalLM")
    assert transformers_loads_ours(model, cls, tmp_path / "m") == c
    tokens = torch.randint(0, 512, (1, 40))
    with torch.no_grad():
        unscaled = from_state_dict(c.replace(rope_scaling=None), weights(model))(tokens)
        assert (model(tokens) - unscaled).abs().max() > 0.1


def test_a_model_no_layout_holds_is_refused_before_training(shakespeare_corpus, tmp_path):
    """Latent attention with softmax routing has no Hugging Face layout (DeepSeek-V3's routes by
    sigmoid): `lamina train` says so before the first step, not at the first checkpoint."""
    from lamina.errors import LaminaError
    from lamina.train import train, train_recipe
    config = train_recipe("debug", ['model="debug-mla"', 'model_overrides.router="softmax"'],
                          data=str(shakespeare_corpus), out=str(tmp_path / "run"), max_steps=2)
    with pytest.raises(LaminaError, match="sigmoid"):
        train(config, progress=False)
    assert not (tmp_path / "run").exists()


def test_deepseek_v2s_layout_both_ways_with_transformers_logits(tmp_path):
    """DeepSeek-V2(-Lite)'s layout: latent attention without a query bottleneck and experts routed
    by softmax, greedy top-k, weights not renormalised, shared experts, a dense first layer."""
    from transformers import DeepseekV2Config, DeepseekV2ForCausalLM
    c = preset("debug-mla").replace(q_lora_rank=0, router="softmax", norm_topk=False, route_scale=1.0,
                                    expert_groups=1, topk_groups=1, expert_bias=False)
    model = init_weights(Transformer(c), seed=4, std=0.1).eval()
    assert transformers_loads_ours(model, DeepseekV2ForCausalLM, tmp_path / "ours") == c
    assert json.loads((tmp_path / "ours" / "config.json").read_text())["model_type"] == "deepseek_v2"
    ck = lamina_loads_theirs(DeepseekV2ForCausalLM(DeepseekV2Config(
        vocab_size=300, hidden_size=64, intermediate_size=96, moe_intermediate_size=32, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=4, n_shared_experts=2, n_routed_experts=8, kv_lora_rank=32,
        q_lora_rank=None, qk_rope_head_dim=8, v_head_dim=12, qk_nope_head_dim=16, num_experts_per_tok=2,
        first_k_dense_replace=1, max_position_embeddings=128)), tmp_path / "theirs")
    assert (ck.config.router, ck.config.norm_topk, ck.config.n_shared_experts) == ("softmax", False, 2)
    v2_lite = preset("deepseek-v2-lite")
    from lamina.checkpoint.hf_config import config_to_hf
    assert config_to_hf(v2_lite, torch.bfloat16)["architectures"] == ["DeepseekV2ForCausalLM"]
