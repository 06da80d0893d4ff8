"""Named architecture presets with their published sizes.

Figures: LLaMA (Touvron et al. 2023, table 2), Llama 2 (Touvron et al. 2023b, table 1 and the
released params.json), Llama 3/3.1/3.2 (Meta model cards and released config.json), SmolLM2
(HuggingFaceTB/SmolLM2-135M config.json), Mixtral 8x7B (Jiang et al. 2024: 46.7B parameters, 12.9B
active; mistralai/Mixtral-8x7B-v0.1 config.json), DeepSeek-V3 (671B, 37B activated; its config.json,
without the multi-token prediction module), DeepSeek-V2-Lite (15.7B; its config.json) and
Qwen3-30B-A3B (30.5B, 3.3B activated; Qwen/Qwen3-30B-A3B config.json). The
presets leave out YaRN, with which both extend their context."""

from __future__ import annotations

from .config import ModelConfig, RopeScaling

_LLAMA1 = dict(vocab_size=32000, max_seq_len=2048, norm_eps=1e-6)
_LLAMA2 = dict(vocab_size=32000, max_seq_len=4096, norm_eps=1e-5)
_LLAMA3 = dict(vocab_size=128256, rope_theta=500000.0, norm_eps=1e-5, bos_token_id=128000,
               eos_token_id=128001)
_LLAMA31_SCALING = RopeScaling(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                               original_max_position_embeddings=8192)
_LLAMA32_SCALING = RopeScaling(factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                               original_max_position_embeddings=8192)

_LLAMA4 = dict(dim=5120, n_layers=48, n_heads=40, n_kv_heads=8, head_dim=128, ffn_dim=16384, vocab_size=202048,
               norm_eps=1e-5, rope_theta=500000.0, bos_token_id=200000, eos_token_id=(200001, 200007, 200008),
               n_active_experts=1, n_shared_experts=1, expert_ffn_dim=8192, router="sigmoid", norm_topk=False,
               expert_input_scaled=True, nope_every=4, attention_chunk=8192, attn_temperature=0.1, attn_floor=8192)
PRESETS: dict[str, ModelConfig] = {
    # a tiny model for tests: every feature on (GQA, tied embeddings, llama3 rope scaling)
    "debug": ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=176, vocab_size=512,
                         max_seq_len=256, tie_embeddings=True, rope_theta=10000.0,
                         rope_scaling=RopeScaling(factor=4.0, original_max_position_embeddings=64)),
    # lamina's own small Llama for the CPU speedrun (about 5M parameters; vocabulary set by the
    # tokenizer the run trains)
    "lamina-speedrun": ModelConfig(dim=256, n_layers=6, n_heads=4, n_kv_heads=2, ffn_dim=704,
                                   vocab_size=4096, max_seq_len=512, tie_embeddings=True,
                                   rope_theta=10000.0, bos_token_id=None, eos_token_id=None),
    # its mixture-of-experts twin: the same attention and the same active feed-forward per token
    # (2 of 8 experts of 352 = 704), four times the feed-forward parameters, balanced by the bias
    "lamina-speedrun-moe": ModelConfig(dim=256, n_layers=6, n_heads=4, n_kv_heads=2, ffn_dim=704,
                                       vocab_size=4096, max_seq_len=512, tie_embeddings=True,
                                       rope_theta=10000.0, bos_token_id=None, eos_token_id=None,
                                       n_experts=8, n_active_experts=2, expert_ffn_dim=352, expert_bias=True),
    # and DeepSeek-V3's kind: latent attention, a latent of 96 + a RoPE key of 16 per token (112
    # channels cached against grouped-query attention's 256, attention within 3% of its
    # parameters), and the experts routed by sigmoid scores
    "lamina-speedrun-mla": ModelConfig(dim=256, n_layers=6, n_heads=4, ffn_dim=704, vocab_size=4096, max_seq_len=512,
                                       tie_embeddings=True, rope_theta=10000.0, bos_token_id=None, eos_token_id=None,
                                       kv_lora_rank=96, qk_nope_head_dim=48, qk_rope_head_dim=16, v_head_dim=64,
                                       n_experts=8, n_active_experts=2, expert_ffn_dim=352, expert_bias=True,
                                       router="sigmoid"),
    "llama-7b": ModelConfig(dim=4096, n_layers=32, n_heads=32, ffn_dim=11008, **_LLAMA1),
    "llama-13b": ModelConfig(dim=5120, n_layers=40, n_heads=40, ffn_dim=13824, **_LLAMA1),
    "llama-33b": ModelConfig(dim=6656, n_layers=60, n_heads=52, ffn_dim=17920, **_LLAMA1),
    "llama-65b": ModelConfig(dim=8192, n_layers=80, n_heads=64, ffn_dim=22016, **_LLAMA1),
    "llama-2-7b": ModelConfig(dim=4096, n_layers=32, n_heads=32, ffn_dim=11008, **_LLAMA2),
    "llama-2-13b": ModelConfig(dim=5120, n_layers=40, n_heads=40, ffn_dim=13824, **_LLAMA2),
    "llama-2-70b": ModelConfig(dim=8192, n_layers=80, n_heads=64, n_kv_heads=8, ffn_dim=28672,
                               **_LLAMA2),
    "llama-3-8b": ModelConfig(dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, ffn_dim=14336,
                              max_seq_len=8192, **_LLAMA3),
    "llama-3-70b": ModelConfig(dim=8192, n_layers=80, n_heads=64, n_kv_heads=8, ffn_dim=28672,
                               max_seq_len=8192, **_LLAMA3),
    "llama-3.1-8b": ModelConfig(dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, ffn_dim=14336,
                                max_seq_len=131072, rope_scaling=_LLAMA31_SCALING, **_LLAMA3),
    "llama-3.2-1b": ModelConfig(dim=2048, n_layers=16, n_heads=32, n_kv_heads=8, ffn_dim=8192,
                                max_seq_len=131072, tie_embeddings=True,
                                rope_scaling=_LLAMA32_SCALING, **_LLAMA3),
    "llama-3.2-3b": ModelConfig(dim=3072, n_layers=28, n_heads=24, n_kv_heads=8, head_dim=128,
                                ffn_dim=8192, max_seq_len=131072, tie_embeddings=True,
                                rope_scaling=_LLAMA32_SCALING, **_LLAMA3),
    # mixtures of experts
    "debug-moe": ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=176, vocab_size=512,
                             max_seq_len=256, tie_embeddings=True, rope_theta=10000.0, n_experts=4,
                             n_active_experts=2, expert_ffn_dim=64),
    "mixtral-8x7b": ModelConfig(dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, ffn_dim=14336, vocab_size=32000,
                                max_seq_len=32768, rope_theta=1e6, norm_eps=1e-5, n_experts=8, n_active_experts=2),
    # latent attention and DeepSeek's mixture (sigmoid routing in groups, a shared expert, the balancing bias)
    "debug-mla": ModelConfig(dim=64, n_layers=3, n_heads=4, ffn_dim=96, vocab_size=512, max_seq_len=256,
                             tie_embeddings=True, rope_theta=10000.0, norm_eps=1e-6, kv_lora_rank=32, q_lora_rank=24,
                             qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16, n_experts=8, n_active_experts=2,
                             n_shared_experts=1, expert_ffn_dim=32, dense_layers=1, router="sigmoid", route_scale=2.5,
                             expert_groups=4, topk_groups=2, expert_bias=True),
    "deepseek-v3": ModelConfig(dim=7168, n_layers=61, n_heads=128, ffn_dim=18432, vocab_size=129280, max_seq_len=163840,
                               norm_eps=1e-6, rope_theta=10000.0, bos_token_id=0, eos_token_id=1, kv_lora_rank=512,
                               q_lora_rank=1536, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128,
                               n_experts=256, n_active_experts=8, n_shared_experts=1, expert_ffn_dim=2048,
                               dense_layers=3, router="sigmoid", route_scale=2.5, expert_groups=8, topk_groups=4,
                               expert_bias=True, mtp_depth=1),
    "deepseek-v2-lite": ModelConfig(dim=2048, n_layers=27, n_heads=16, ffn_dim=10944, vocab_size=102400,
                                    max_seq_len=163840, norm_eps=1e-6, rope_theta=10000.0, bos_token_id=100000,
                                    eos_token_id=100001, kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64,
                                    v_head_dim=128, n_experts=64, n_active_experts=6, n_shared_experts=2,
                                    expert_ffn_dim=1408, dense_layers=1, norm_topk=False),
    "qwen3-30b-a3b": ModelConfig(dim=2048, n_layers=48, n_heads=32, n_kv_heads=4, head_dim=128, ffn_dim=6144,
                                 vocab_size=151936, max_seq_len=40960, rope_theta=1e6, norm_eps=1e-6, qk_norm=True,
                                 bos_token_id=151643, eos_token_id=151645, n_experts=128, n_active_experts=8,
                                 expert_ffn_dim=768),
    # Llama 4's text models: a shared expert and top-1 sigmoid routing that scales the expert's input,
    # in every layer (Scout) or every second (Maverick); iRoPE: every fourth layer without RoPE,
    # attending over everything, the others within 8192-token chunks
    "llama-4-scout": ModelConfig(n_experts=16, moe_every=1, qk_l2_norm=True, max_seq_len=10485760,
                                 rope_scaling=RopeScaling(factor=16.0, low_freq_factor=1.0, high_freq_factor=1.0,
                                                          original_max_position_embeddings=8192), **_LLAMA4),
    "llama-4-maverick": ModelConfig(n_experts=128, moe_every=2, qk_l2_norm=False, max_seq_len=1048576, **_LLAMA4),
    "debug-llama4": ModelConfig(dim=64, n_layers=4, n_heads=4, n_kv_heads=2, ffn_dim=96, vocab_size=512,
                                max_seq_len=256, rope_theta=500000.0, n_experts=4, n_active_experts=1,
                                n_shared_experts=1, expert_ffn_dim=32, router="sigmoid", norm_topk=False,
                                expert_input_scaled=True, moe_every=2, nope_every=4, attention_chunk=16,
                                qk_l2_norm=True, attn_temperature=0.1, attn_floor=8),
    "smollm2-135m": ModelConfig(dim=576, n_layers=30, n_heads=9, n_kv_heads=3, ffn_dim=1536,
                                vocab_size=49152, max_seq_len=8192, rope_theta=100000.0,
                                tie_embeddings=True, bos_token_id=1, eos_token_id=2),
}


def preset(name: str) -> ModelConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown model preset {name!r}; known: {', '.join(PRESETS)}") from None
