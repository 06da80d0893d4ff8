"""config.json of a Hugging Face model directory and lamina's ModelConfig, both ways, for each
family lamina reads and writes: Llama's fields, and Mixtral's, Qwen3's and Qwen3-MoE's,
DeepSeek-V2's and V3's and Llama 4's beyond them; RoPE scaling (llama3, YaRN); which layout a
config is written in (`hf_layout`). A config no layout holds is refused with the reason, before
any file is made. `hf.py` reads and writes the tensors and files."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from ..errors import LaminaError
from ..model import ModelConfig, RopeScaling, YarnScaling
from .base import config_error, null_as_zero

# ModelConfig field -> the config.json key it comes from, to name the key a refusal is about
HF_KEYS = {"dim": "hidden_size", "n_layers": "num_hidden_layers", "n_heads": "num_attention_heads",
           "n_kv_heads": "num_key_value_heads", "ffn_dim": "intermediate_size",
           "norm_eps": "rms_norm_eps", "max_seq_len": "max_position_embeddings",
           "tie_embeddings": "tie_word_embeddings", "n_experts": "num_local_experts",
           "n_active_experts": "num_experts_per_tok", "mtp_depth": "num_nextn_predict_layers"}
_LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


def config_from_hf(d: dict, where: Path | str = "config.json") -> ModelConfig:
    if not isinstance(d, dict):
        raise LaminaError(f"{where}: expected a JSON object of LlamaConfig fields")
    archs = d.get("architectures") or []
    if not isinstance(archs, list) or not all(isinstance(a, str) for a in archs):
        raise LaminaError(f"{where}: architectures must be a list of names")
    mixtral = d.get("model_type") == "mixtral" or "MixtralForCausalLM" in archs
    deepseek = d.get("model_type") in ("deepseek_v3", "deepseek_v2") or bool(
        {"DeepseekV3ForCausalLM", "DeepseekV2ForCausalLM"} & set(archs))
    qwen3 = d.get("model_type") in ("qwen3", "qwen3_moe") or bool({"Qwen3ForCausalLM", "Qwen3MoeForCausalLM"} & set(archs))
    llama4 = d.get("model_type") == "llama4_text" or "Llama4ForCausalLM" in archs
    if multimodal_llama4(d):            # Meta's released checkpoints: lamina runs the text model inside
        text = d.get("text_config")
        if not isinstance(text, dict):
            raise LaminaError(f"{where}: a Llama4ForConditionalGeneration config needs its text_config")
        return config_from_hf({**text, "architectures": ["Llama4ForCausalLM"], "model_type": "llama4_text"}, where)
    if d.get("model_type") != "llama" and "LlamaForCausalLM" not in archs and not (mixtral or deepseek or qwen3 or llama4):
        found = ", ".join(archs) or str(d.get("model_type") or "none stated")[:40]
        raise LaminaError(f"{where}: architecture {found} is not supported (lamina runs LlamaForCausalLM, "
                          "MixtralForCausalLM, DeepseekV2ForCausalLM, DeepseekV3ForCausalLM, Qwen3ForCausalLM, "
                          "Qwen3MoeForCausalLM and Llama4ForCausalLM)")
    if d.get("attention_bias") or d.get("mlp_bias"):
        raise LaminaError(f"{where}: Llama variants with biases are not supported")
    if (mixtral and d.get("sliding_window")) or (qwen3 and d.get("use_sliding_window")):
        raise LaminaError(f"{where}: sliding-window attention (sliding_window {d['sliding_window']!r:.20}) is not "
                          "supported; Mixtral's released models set it to null")
    rope, scaling = _rope_from_hf(d, where)
    experts = {}
    if deepseek:
        experts = _deepseek_from_hf(d, where)
    elif qwen3:
        experts = _qwen3_from_hf(d, where)
    elif llama4:
        experts = _llama4_from_hf(d, where)
    elif mixtral:
        try:
            experts = {"n_experts": d["num_local_experts"], "n_active_experts": d["num_experts_per_tok"],
                       "expert_bias": bool(d.get("lamina_expert_bias", False))}
        except KeyError as e:
            raise LaminaError(f"{where}: missing field {e.args[0]}") from None
    try:
        fields = dict(
            dim=d["hidden_size"], n_layers=d["num_hidden_layers"], n_heads=d["num_attention_heads"],
            n_kv_heads=null_as_zero(d.get("num_key_value_heads")),
            head_dim=null_as_zero(d.get("head_dim")),
            ffn_dim=d["intermediate_size_mlp" if llama4 else "intermediate_size"], vocab_size=d["vocab_size"],
            norm_eps=d.get("rms_norm_eps", 1e-6),
            rope_theta=rope.get("rope_theta", d.get("rope_theta", 10000.0)), rope_scaling=scaling,
            max_seq_len=d.get("max_position_embeddings", 2048),
            tie_embeddings=d.get("tie_word_embeddings", False),
            bos_token_id=d.get("bos_token_id"), eos_token_id=d.get("eos_token_id"),
            mtp_depth=null_as_zero(d.get("num_nextn_predict_layers")),
            # DeepSeek's keys for the sequence-wise balance loss, read (and written) in every layout
            seq_aux_loss=float(d.get("aux_loss_alpha") or 0.0) if d.get("seq_aux") else 0.0)
        return ModelConfig(**(fields | experts))
    except KeyError as e:
        raise LaminaError(f"{where}: missing field {e.args[0]}") from None
    except ValueError as e:
        raise config_error(e, where, HF_KEYS) from None


def _deepseek_from_hf(d: dict, where) -> dict:
    """The ModelConfig fields of DeepSeek-V3's config.json beyond Llama's: latent attention, and
    a mixture of experts with sigmoid routing, groups and the balancing bias after the first
    `first_k_dense_replace` dense layers."""
    if d.get("rope_interleave", True) is not True:
        raise LaminaError(f"{where}: rope_interleave false is not supported (DeepSeek-V3's checkpoints interleave)")
    v2 = d.get("model_type") == "deepseek_v2" or "DeepseekV2ForCausalLM" in (d.get("architectures") or [])
    routing = (d.get("scoring_func", "softmax" if v2 else "sigmoid"), d.get("topk_method", "greedy" if v2 else "noaux_tc"))
    if routing not in (("sigmoid", "noaux_tc"), ("softmax", "greedy")):
        raise LaminaError(f"{where}: DeepSeek routing {routing[0]}/{routing[1]} is not supported (V3's sigmoid "
                          "scores with noaux_tc, V2-Lite's softmax with greedy top-k)")
    try:
        layers, dense = d["num_hidden_layers"], d.get("first_k_dense_replace", 0)
        moe = d.get("n_routed_experts") and dense < layers
        fields = {"kv_lora_rank": d["kv_lora_rank"], "q_lora_rank": null_as_zero(d.get("q_lora_rank")),
                  "qk_nope_head_dim": d["qk_nope_head_dim"], "qk_rope_head_dim": d["qk_rope_head_dim"],
                  "v_head_dim": d["v_head_dim"], "head_dim": 0, "n_kv_heads": 0}
        if moe:
            fields |= {"n_experts": d["n_routed_experts"], "n_active_experts": d["num_experts_per_tok"],
                       "n_shared_experts": d.get("n_shared_experts") or 0, "expert_ffn_dim": d["moe_intermediate_size"],
                       "dense_layers": dense, "router": routing[0], "norm_topk": bool(d.get("norm_topk_prob", not v2)),
                       "route_scale": float(d.get("routed_scaling_factor", 1.0)),
                       "expert_groups": 1 if v2 else d.get("n_group") or 1,
                       "topk_groups": 1 if v2 else d.get("topk_group") or 1, "expert_bias": not v2}
        return fields
    except KeyError as e:
        raise LaminaError(f"{where}: missing field {e.args[0]}") from None


def _qwen3_from_hf(d: dict, where) -> dict:
    """Qwen3's fields beyond Llama's: the per-head query/key norm, and for Qwen3-MoE softmax-routed
    experts in every layer from `decoder_sparse_step` 1, the `mlp_only_layers` dense."""
    fields: dict = {"qk_norm": True}
    if d.get("model_type") != "qwen3_moe" and "Qwen3MoeForCausalLM" not in (d.get("architectures") or []):
        return fields
    dense = sorted(d.get("mlp_only_layers") or [])
    if d.get("decoder_sparse_step", 1) != 1 or dense != list(range(len(dense))):
        raise LaminaError(f"{where}: sparse layers other than all of them after the first dense ones "
                          f"(decoder_sparse_step {d.get('decoder_sparse_step')}, mlp_only_layers {dense}) are not supported")
    try:
        return fields | {"n_experts": d["num_experts"] if "num_experts" in d else d["num_local_experts"],  # transformers 5 writes the latter
                         "n_active_experts": d["num_experts_per_tok"],
                         "expert_ffn_dim": d["moe_intermediate_size"], "dense_layers": len(dense),
                         "norm_topk": bool(d.get("norm_topk_prob", True))}
    except KeyError as e:
        raise LaminaError(f"{where}: missing field {e.args[0]}") from None


def multimodal_llama4(d: dict) -> bool:
    """Llama 4 as Meta released it, text and vision (Llama4ForConditionalGeneration): its text
    model's tensors under `language_model.`, beside the vision encoder's, which lamina leaves."""
    return d.get("model_type") == "llama4" or "Llama4ForConditionalGeneration" in (d.get("architectures") or [])


def _llama4_from_hf(d: dict, where) -> dict:
    """Llama 4's fields beyond Llama's: a shared expert and top-k sigmoid routing whose weight
    scales the expert's input, in every `interleave_moe_layer_step`-th layer; no RoPE in every
    `no_rope_layer_interval`-th layer, chunked attention and the query/key L2 norm in the others;
    attention temperature in the RoPE-free ones."""
    layers = d["num_hidden_layers"]
    step, interval = d.get("interleave_moe_layer_step", 1), d.get("no_rope_layer_interval", 4)
    moe = d.get("moe_layers")
    if moe is not None and list(moe) != list(range(step - 1, layers, step)):
        raise LaminaError(f"{where}: moe_layers other than every interleave_moe_layer_step-th layer are not supported")
    nope = d.get("no_rope_layers")
    if nope and list(nope) != [int((i + 1) % interval != 0) for i in range(layers)]:
        raise LaminaError(f"{where}: no_rope_layers other than every no_rope_layer_interval-th are not supported")
    try:
        return {"n_experts": d["num_local_experts"], "n_active_experts": d.get("num_experts_per_tok", 1),
                "n_shared_experts": 1, "expert_ffn_dim": d["intermediate_size"], "router": "sigmoid",
                "norm_topk": False, "expert_input_scaled": True, "moe_every": step, "nope_every": interval,
                "attention_chunk": d.get("attention_chunk_size") or 0, "qk_l2_norm": bool(d.get("use_qk_norm", True)),
                "attn_temperature": float(d.get("attn_scale", 0.1)) if d.get("attn_temperature_tuning", True) else 0.0,
                "attn_floor": int(d.get("floor_scale", 8192))}
    except KeyError as e:
        raise LaminaError(f"{where}: missing field {e.args[0]}") from None


def _rope_from_hf(d: dict, where) -> tuple[dict, RopeScaling | YarnScaling | None]:
    """(the RoPE parameters, the llama3 or yarn scaling or None): transformers 5 writes
    `rope_parameters`, 4 wrote `rope_scaling`."""
    key = "rope_parameters" if d.get("rope_parameters") else "rope_scaling"
    rope = d.get(key) or {}
    if not isinstance(rope, dict):
        raise LaminaError(f"{where}: {key} must be an object such as {{\"rope_type\": \"llama3\", "
                          f"\"factor\": 8.0, ...}} or null, got {repr(rope)[:40]}")
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", "llama3", "yarn"):
        raise LaminaError(f"{where}: RoPE scaling {repr(rope_type)[:40]} is not supported (default, llama3, yarn)")
    if rope_type == "default":
        return rope, None
    if rope_type == "yarn":
        if "factor" not in rope or not (rope.get("original_max_position_embeddings")
                                        or d.get("max_position_embeddings")):
            raise LaminaError(f"{where}: {key} of type yarn needs factor and original_max_position_embeddings")
        given = {k: rope[k] for k in ("beta_fast", "beta_slow", "mscale", "mscale_all_dim", "attention_factor",
                                      "truncate") if rope.get(k) is not None}
        try:
            return rope, YarnScaling(factor=rope["factor"], original_max_position_embeddings=rope.get(
                "original_max_position_embeddings") or d["max_position_embeddings"], **given)
        except ValueError as e:
            raise config_error(e, where, {}) from None
    missing = [k for k in _LLAMA3_KEYS if k not in rope]
    if missing:
        raise LaminaError(f"{where}: {key} of type llama3 is missing {', '.join(missing)}")
    try:
        return rope, RopeScaling(**{k: rope[k] for k in _LLAMA3_KEYS})
    except ValueError as e:
        raise config_error(e, where, {}) from None


def mixtral_config(c: ModelConfig) -> dict:
    """The config.json fields of a mixture of experts in Mixtral's layout, or LaminaError when
    its routing is one Mixtral cannot express."""
    unlike = [what for what, differs in (
        ("a sigmoid router", c.router != "softmax"), ("unnormalised top-k weights", not c.norm_topk),
        ("a route scale", c.route_scale != 1.0), ("group-limited routing", c.expert_groups > 1),
        ("shared experts", c.n_shared_experts > 0), ("dense layers among the sparse ones", c.dense_layers > 0)) if differs]
    if unlike:
        raise LaminaError(f"this mixture of experts has {', '.join(unlike)}, which Mixtral's layout cannot hold; "
                          "DeepSeek-V3's holds them, with latent attention (kv_lora_rank > 0)")
    return {"architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "num_local_experts": c.n_experts,
            "num_experts_per_tok": c.n_active_experts, "intermediate_size": c.expert_ffn_dim,
            "sliding_window": None, "router_jitter_noise": 0.0, "output_router_logits": False,
            "router_aux_loss_coef": 0.0,
            # lamina's own key: transformers' Mixtral has no selection bias and ignores the tensor
            **({"lamina_expert_bias": True} if c.expert_bias else {})}


def hf_layout(c: ModelConfig) -> str:
    """The Hugging Face layout a config is written in: DeepSeek-V3's for latent attention (V2's
    for a softmax-routed mixture with it), Llama 4's for its attention or routing, Qwen3's
    (or Qwen3-MoE's) for per-head query/key norms, Mixtral's for another mixture of experts,
    Llama's otherwise."""
    if c.latent:
        return "deepseek_v2" if c.n_experts and c.router == "softmax" else "deepseek_v3"
    if c.expert_input_scaled or c.nope_every or c.attention_chunk or c.qk_l2_norm:
        return "llama4"
    if c.qk_norm:
        return "qwen3_moe" if c.n_experts else "qwen3"
    return "mixtral" if c.n_experts else "llama"


def _qwen3(c: ModelConfig) -> dict:
    """Qwen3's config.json fields; Qwen3-MoE's when the model has experts."""
    if not c.n_experts:
        return {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "use_sliding_window": False}
    unlike = [what for what, differs in (
        ("a sigmoid router", c.router != "softmax"), ("a route scale", c.route_scale != 1.0),
        ("group-limited routing", c.expert_groups > 1), ("shared experts", c.n_shared_experts > 0),
        ("a balancing bias", c.expert_bias)) if differs]
    if unlike:
        raise LaminaError(f"this mixture of experts has {', '.join(unlike)}, which Qwen3-MoE's layout cannot hold")
    return {"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "num_experts": c.n_experts,
            "num_experts_per_tok": c.n_active_experts, "moe_intermediate_size": c.expert_ffn_dim,
            "norm_topk_prob": c.norm_topk, "decoder_sparse_step": 1, "mlp_only_layers": list(range(c.dense_layers)),
            "use_sliding_window": False, "output_router_logits": False, "router_aux_loss_coef": 0.0}


def llama4_mismatch(c: ModelConfig) -> list[str]:
    """What of this model Llama 4's layouts (Hugging Face's and Meta's) cannot hold."""
    return [what for what, differs in (
        ("other than one shared expert", c.n_experts and c.n_shared_experts != 1),
        ("a router other than Llama 4's", c.n_experts and (
            c.router != "sigmoid" or c.norm_topk or c.route_scale != 1.0 or c.expert_groups > 1 or c.expert_bias
            or not c.expert_input_scaled)),
        ("dense layers first", c.dense_layers > 0), ("a Qwen3 query/key norm", c.qk_norm)) if differs]


def _llama4(c: ModelConfig) -> dict:
    """Llama 4's text model's config.json fields."""
    unlike = (["no experts"] if not c.n_experts else []) + llama4_mismatch(c)
    if unlike:
        raise LaminaError(f"this model has {', '.join(unlike)}, which Llama 4's layout cannot hold")
    return {"architectures": ["Llama4ForCausalLM"], "model_type": "llama4_text", "num_local_experts": c.n_experts,
            "num_experts_per_tok": c.n_active_experts, "intermediate_size": c.expert_ffn_dim,
            "intermediate_size_mlp": c.ffn_dim, "interleave_moe_layer_step": c.moe_every,
            "moe_layers": [i for i in range(c.n_layers) if c.is_moe_layer(i)],
            "no_rope_layer_interval": c.nope_every or c.n_layers + 1,
            "no_rope_layers": [int(c.rotates(i)) for i in range(c.n_layers)],
            "attention_chunk_size": c.attention_chunk or None, "use_qk_norm": c.qk_l2_norm,
            "attn_temperature_tuning": c.attn_temperature > 0, "attn_scale": c.attn_temperature or 0.1,
            "floor_scale": c.attn_floor, "output_router_logits": False, "router_aux_loss_coef": 0.0}


def _deepseek(c: ModelConfig) -> dict:
    """DeepSeek-V3's config.json fields (latent attention; its sigmoid-routed experts, if any)."""
    if c.n_experts and c.router != "sigmoid":
        raise LaminaError("DeepSeek-V3's layout routes experts by sigmoid scores; this model routes by softmax")
    moe = c.n_experts > 0
    return {"architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3",
            "kv_lora_rank": c.kv_lora_rank, "q_lora_rank": c.q_lora_rank or None,
            "qk_nope_head_dim": c.qk_nope_head_dim, "qk_rope_head_dim": c.qk_rope_head_dim,
            "v_head_dim": c.v_head_dim, "head_dim": c.qk_rope_head_dim, "rope_interleave": True,
            "n_routed_experts": c.n_experts if moe else 1, "num_experts_per_tok": c.n_active_experts if moe else 1,
            "n_shared_experts": c.n_shared_experts if moe else 0, "moe_intermediate_size": c.expert_ffn_dim,
            "first_k_dense_replace": c.dense_layers if moe else c.n_layers,
            "routed_scaling_factor": c.route_scale, "n_group": c.expert_groups, "topk_group": c.topk_groups,
            "norm_topk_prob": c.norm_topk, "scoring_func": "sigmoid", "topk_method": "noaux_tc",
            "num_nextn_predict_layers": c.mtp_depth}


def _deepseek_v2(c: ModelConfig) -> dict:
    """DeepSeek-V2's config.json fields: latent attention and softmax-routed experts, greedy top-k
    (V2-Lite's; transformers' DeepseekV2 neither renormalises the chosen weights nor limits groups
    as lamina does, so those are refused)."""
    unlike = [what for what, differs in (
        ("renormalised top-k weights", c.norm_topk), ("group-limited routing", c.expert_groups > 1),
        ("a balancing bias", c.expert_bias)) if differs]
    if unlike:
        raise LaminaError(f"this latent mixture routed by softmax has {', '.join(unlike)}, which DeepSeek-V2's "
                          "layout cannot hold; route by sigmoid scores (DeepSeek-V3's layout)")
    return _deepseek(c.replace(router="sigmoid")) | {
        "architectures": ["DeepseekV2ForCausalLM"], "model_type": "deepseek_v2", "scoring_func": "softmax",
        "topk_method": "greedy", "n_group": None, "topk_group": None, "norm_topk_prob": False}


def config_to_hf(c: ModelConfig, dtype: torch.dtype) -> dict:
    eos = list(c.eos_token_ids) if len(c.eos_token_ids) > 1 else c.eos_token_id
    scaling = None if c.rope_scaling is None else {
        k: v for k, v in dataclasses.asdict(c.rope_scaling).items()
        if not (isinstance(c.rope_scaling, YarnScaling) and k in ("mscale", "mscale_all_dim", "attention_factor")
                and not v)}                                    # YaRN's zeros: not given
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": c.dim, "num_hidden_layers": c.n_layers,
        "num_attention_heads": c.n_heads, "num_key_value_heads": c.n_kv_heads,
        "head_dim": c.head_dim, "intermediate_size": c.ffn_dim, "vocab_size": c.vocab_size,
        "rms_norm_eps": c.norm_eps, "rope_theta": c.rope_theta, "rope_scaling": scaling,
        "max_position_embeddings": c.max_seq_len, "tie_word_embeddings": c.tie_embeddings,
        "bos_token_id": c.bos_token_id, "eos_token_id": eos,
        "hidden_act": "silu", "attention_bias": False, "mlp_bias": False,
        "attention_dropout": 0.0, "initializer_range": 0.02, "pretraining_tp": 1,
        "use_cache": True, "torch_dtype": str(dtype).removeprefix("torch."),
        **({"num_nextn_predict_layers": c.mtp_depth} if c.mtp_depth else {}),
        **({"seq_aux": True, "aux_loss_alpha": c.seq_aux_loss} if c.seq_aux_loss else {}),
        **({"deepseek_v3": _deepseek, "deepseek_v2": _deepseek_v2, "mixtral": mixtral_config, "qwen3": _qwen3, "qwen3_moe": _qwen3,
            "llama4": _llama4}[hf_layout(c)](c) if hf_layout(c) != "llama" else {}),
    }
