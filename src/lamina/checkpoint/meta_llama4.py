"""Llama 4 in Meta's original layout (`params.json` + `consolidated.NN.pth`, as Meta released
Scout and Maverick): the same folder as Llama 3's, other tensors. meta.py reads the files and
hands the shards here.

What differs from Llama 3's layout, as Meta's reference code (llama_models/llama4) reads it:
- queries, keys and values fused per model-parallel rank (`attention.wqkv.weight`, each rank's
  q, k and v rows stacked), the attention norm beside them (`attention.wqkv.layer_norm_weight`);
- a dense layer's gate and up projections fused per rank (`feed_forward.mlp.fc1_weight`);
- a sparse layer's router transposed (`router_DE`, dim x experts), its experts as three stacked
  matrices with the hidden size last or in the middle (`moe_w_in_eD_F`: experts*dim x F), split
  over ranks along F, and the shared expert's projections (`w_in_shared_FD` ...);
- the feed-forward sizes derived from `ffn_exp`, `ffn_dim_multiplier`, `multiple_of` and
  `moe_args`, never stated.
The reference's own module names (what its `state_dict()` holds after its load hooks ran) are
read too."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..errors import LaminaError
from ..model import ModelConfig, RopeScaling, llama_ffn_dim
from ..model.config import FieldError, check_float, check_int
from .hf_config import llama4_mismatch
from .layout import qk_rows

# Tensors the reference keeps beside the weights and its load hooks drop: Transformer Engine
# state, routing statistics, the precomputed RoPE table.
_DROPPED_SUFFIXES = ("._extra_state", "global_gate_stats_3E", "running_gate_stats_3E", "expert_activation_DE",
                     "rope.freqs", "freq_cis")
_VISION = ("vision_embeddings.", "vision_projection.")
# Meta's apply_scaling for Llama 4 fixes these; params.json gives the factor and high_freq_factor
_FIXED_SCALING = {"low_freq_factor": 1.0, "original_max_position_embeddings": 8192}
# The sizes Meta released both models with: tried first when writing, so a Scout or Maverick
# round trip gives back Meta's own params.json
_META_FFN = {"multiple_of": 2048, "ffn_dim_multiplier": 1.2, "ffn_exp": 4.0}
_PER_SHARD_COLUMNS = ("attention.wo.weight", "feed_forward.w2.weight", "shared_expert.w2.weight")
_REPLICATED = ("norm.weight", "router_DE")


def is_llama4(params: dict, names) -> bool:
    """Whether a Meta checkpoint is Llama 4's (its params or its fused tensors say so)."""
    return (any(k in params for k in ("moe_args", "ffn_exp", "nope_layer_interval", "use_qk_norm"))
            or any(n.endswith(("attention.wqkv.weight", "feed_forward.router_DE")) for n in names))


def model_params(params: dict) -> dict:
    """Some releases nest the model's parameters under "model"."""
    inner = params.get("model")
    return inner if isinstance(inner, dict) and "dim" not in params else params


def check_params(p: dict) -> None:
    """The numbers the tensors are cut and sized by, checked before any arithmetic (FieldError)."""
    for key in ("dim", "n_layers", "n_heads"):
        check_int(key, p[key])
    for key in ("n_kv_heads", "multiple_of"):
        if p.get(key) is not None:
            check_int(key, p[key])
    moe = p.get("moe_args")
    if moe is not None:
        if not isinstance(moe, dict):
            raise FieldError("moe_args", "must be an object")
        check_int("moe_args.num_experts", moe.get("num_experts"))
        check_float("ffn_exp", p.get("ffn_exp"))
        check_float("ffn_dim_multiplier", p.get("ffn_dim_multiplier"))
        check_float("moe_args.capacity_factor", moe.get("capacity_factor", 1.0))
    elif p.get("ffn_dim_multiplier") is not None:
        check_float("ffn_dim_multiplier", p["ffn_dim_multiplier"])


def dense_ffn_dim(p: dict) -> int:
    """A dense layer's hidden size as the reference's TransformerBlock derives it."""
    return llama_ffn_dim(p["dim"], p.get("multiple_of", 256), p.get("ffn_dim_multiplier"))


def expert_ffn_dim(p: dict) -> int:
    """Each expert's (and the shared expert's) hidden size as the reference's MoE derives it."""
    moe, multiple_of = p.get("moe_args") or {}, p.get("multiple_of", 256)
    hidden = int(2 * int(p["ffn_exp"] * p["dim"]) / 3)
    hidden = int(p["ffn_dim_multiplier"] * hidden)
    if moe.get("auto_scale_F", True):
        hidden = int(hidden / (moe.get("capacity_factor", 1.0) + 1))
    return hidden + (-hidden % multiple_of)


def config_from_params(p: dict, vocab_size: int, has_output: bool) -> ModelConfig:
    """ModelConfig of a Llama 4 params.json (KeyError and ValueError are meta.py's to report)."""
    moe = p.get("moe_args") or {}
    experts = {}
    if moe:
        experts = dict(n_experts=moe["num_experts"], n_active_experts=moe.get("top_k", 1), n_shared_experts=1,
                       expert_ffn_dim=expert_ffn_dim(p), router="sigmoid", norm_topk=False,
                       expert_input_scaled=True, moe_every=moe.get("interleave_moe_layer_step", 1))
    scaling = None
    if p.get("use_scaled_rope"):
        scaling = RopeScaling(factor=p.get("rope_scaling_factor") or 16.0,
                              high_freq_factor=p.get("rope_high_freq_factor") or 1.0, **_FIXED_SCALING)
    big = vocab_size >= 200000
    return ModelConfig(
        dim=p["dim"], n_layers=p["n_layers"], n_heads=p["n_heads"], n_kv_heads=p.get("n_kv_heads") or 0,
        ffn_dim=dense_ffn_dim(p), vocab_size=vocab_size, norm_eps=p.get("norm_eps", 1e-5),
        rope_theta=p.get("rope_theta", 500000.0), rope_scaling=scaling,
        max_seq_len=p.get("max_seq_len", 262144),   # the base models' 256K, as transformers' converter sets it
        tie_embeddings=bool(p.get("tie_embeddings", not has_output)), bos_token_id=200000 if big else 1,
        eos_token_id=(200001, 200007, 200008) if big else 2,
        nope_every=p.get("nope_layer_interval") or 0, attention_chunk=p.get("attention_chunk_size") or 0,
        qk_l2_norm=bool(p.get("use_qk_norm", False)),
        attn_temperature=float(p.get("attn_scale", 0.1)) if p.get("attn_temperature_tuning") else 0.0,
        attn_floor=int(p.get("floor_scale", 8192)), **experts)


def unshard(p: dict, shards: list[dict[str, Tensor]], where) -> tuple[dict[str, Tensor], int]:
    """The model-parallel shards of a Llama 4 checkpoint as one set of lamina's weights (and how
    many vision-encoder tensors were left out)."""
    vision = sum(n.startswith(_VISION) for n in shards[0])
    kept = [{n: t for n, t in s.items() if not n.startswith(_VISION) and not n.endswith(_DROPPED_SUFFIXES)}
            for s in shards]
    try:
        unfused = [_unfuse(p, s, len(shards), where) for s in kept]
    except RuntimeError as e:   # a tensor that does not reshape to params.json's sizes
        raise LaminaError(f"{where}: the experts' tensors do not fit params.json ({e})") from None
    names = list(unfused[0])
    for s in unfused[1:]:
        if set(s) != set(names):
            raise LaminaError(f"{where}: the model-parallel files hold different tensors")
    weights = {}
    for name in names:
        parts = [s[name] for s in unfused]
        try:
            weights[name] = _join(name, parts)
        except RuntimeError:
            raise LaminaError(f"{where}: the shards of tensor {name} do not fit together "
                              f"({', '.join(str(tuple(t.shape)) for t in parts)})") from None
    return {_lamina_name(n): _to_lamina(n, t) for n, t in weights.items()}, vision


def _unfuse(p: dict, shard: dict[str, Tensor], ranks: int, where) -> dict[str, Tensor]:
    """One rank's tensors under the reference's module names, as its load hooks rename them."""
    out = {}
    dim, heads, kv_heads = p["dim"], p["n_heads"], p.get("n_kv_heads") or p["n_heads"]
    for name, t in shard.items():
        prefix, found, leaf = name.rpartition("feed_forward.")
        leaf = leaf if found else None
        if name.endswith("attention.wqkv.weight"):
            rows, rest = divmod(t.shape[0], heads + 2 * kv_heads)
            if rest or heads % ranks or kv_heads % ranks:
                raise LaminaError(f"{where}: tensor {name} {tuple(t.shape)} does not split into the queries, "
                                  f"keys and values of {heads} and {kv_heads} heads over {ranks} files")
            stem = name.removesuffix("wqkv.weight")
            q, k, v = t.split([rows * heads, rows * kv_heads, rows * kv_heads])
            out.update({stem + "wq.weight": q, stem + "wk.weight": k, stem + "wv.weight": v})
        elif name.endswith("attention.wqkv.layer_norm_weight"):
            out[name.replace("attention.wqkv.layer_norm_weight", "attention_norm.weight")] = t
        elif leaf in ("mlp.layer_norm_weight", "norm.weight"):
            out[prefix + "ffn_norm.weight"] = t
        elif leaf == "mlp.fc1_weight":
            out[prefix + "feed_forward.w1.weight"], out[prefix + "feed_forward.w3.weight"] = t.chunk(2)
        elif leaf == "mlp.fc2_weight":
            out[prefix + "feed_forward.w2.weight"] = t
        elif leaf in ("experts.moe_w_in_eD_F", "experts.moe_w_swiglu_eD_F"):
            e = p["moe_args"]["num_experts"]
            out[prefix + ("feed_forward.experts.w1" if "in" in leaf else "feed_forward.experts.w3")] = t.reshape(e, dim, -1)
        elif leaf == "experts.moe_w_out_eF_D":
            out[prefix + "feed_forward.experts.w2"] = t.reshape(p["moe_args"]["num_experts"], -1, dim)
        elif leaf in ("w_in_shared_FD.weight", "w_swiglu_FD.weight", "w_out_shared_DF.weight"):
            w = {"w_in_shared_FD.weight": "w1", "w_swiglu_FD.weight": "w3", "w_out_shared_DF.weight": "w2"}[leaf]
            out[f"{prefix}feed_forward.shared_expert.{w}.weight"] = t
        else:
            out[name] = t
    return out


def _join(name: str, parts: list[Tensor]) -> Tensor:
    if len(parts) == 1 or name.endswith(_REPLICATED):
        return parts[0]
    if name.endswith(_PER_SHARD_COLUMNS):
        return torch.cat(parts, 1)
    if name.endswith(("experts.w1", "experts.w3")):   # experts x dim x F, split along F
        return torch.cat(parts, 2)
    if name.endswith("experts.w2"):                  # experts x F x dim
        return torch.cat(parts, 1)
    return torch.cat(parts, 0)


def _lamina_name(name: str) -> str:
    return (name.replace("feed_forward.router_DE", "feed_forward.gate.weight")
            .replace("feed_forward.shared_expert.", "feed_forward.shared."))


def _to_lamina(name: str, t: Tensor) -> Tensor:
    """The reference keeps experts and the router with the input dimension first; lamina, as
    nn.Linear does, last."""
    if name.endswith("router_DE"):
        return t.t().contiguous()
    if ".experts.w" in name:
        return t.transpose(1, 2).contiguous()
    return t


def check_writable(config: ModelConfig) -> None:
    """One clear refusal for a model Meta's Llama 4 code cannot run as lamina does."""
    scaling = config.rope_scaling
    unlike = llama4_mismatch(config) + [what for what, differs in (
        ("latent attention", config.latent),
        ("a head size other than dim / n_heads", config.head_dim != config.dim // config.n_heads),
        ("YaRN", scaling is not None and scaling.rope_type != "llama3"),
        ("llama3 RoPE scaling with other than low_freq_factor 1 and 8192 original positions",
         scaling is not None and scaling.rope_type == "llama3"
         and any(getattr(scaling, k) != v for k, v in _FIXED_SCALING.items()))) if differs]
    if unlike:
        raise LaminaError(f"this model has {', '.join(unlike)}, which Meta's Llama 4 layout cannot hold")


def params_from_config(config: ModelConfig) -> dict:
    """params.json for Meta's Llama 4 code: its keys and its way of deriving the sizes."""
    check_writable(config)
    c = config
    p = {"dim": c.dim, "n_layers": c.n_layers, "n_heads": c.n_heads, "n_kv_heads": c.n_kv_heads,
         "vocab_size": c.vocab_size, "norm_eps": c.norm_eps, "rope_theta": c.rope_theta, "max_seq_len": c.max_seq_len,
         "use_scaled_rope": c.rope_scaling is not None, "nope_layer_interval": c.nope_every or None,
         "attention_chunk_size": c.attention_chunk or None, "use_qk_norm": c.qk_l2_norm,
         "attn_temperature_tuning": c.attn_temperature > 0, "attn_scale": c.attn_temperature or 0.1,
         "floor_scale": c.attn_floor}
    if c.tie_embeddings:
        p["tie_embeddings"] = True   # lamina's key (Meta's code ignores it): the head is a copy of the embedding
    if c.rope_scaling is not None:
        p.update(rope_scaling_factor=c.rope_scaling.factor, rope_high_freq_factor=c.rope_scaling.high_freq_factor)
    if c.n_experts:
        p["moe_args"] = {"num_experts": c.n_experts, "top_k": c.n_active_experts, "capacity_factor": 1.0,
                         "auto_scale_F": True, "interleave_moe_layer_step": c.moe_every}
    p.update(_ffn_params(c, p))
    return p


def _ffn_params(c: ModelConfig, p: dict) -> dict:
    """multiple_of, ffn_dim_multiplier and ffn_exp from which the reference derives this model's
    dense and expert hidden sizes: Meta's released values when they give them, else solved with
    multiple_of 1 and no automatic expert scaling."""
    meta = {**p, **_META_FFN}
    if dense_ffn_dim(meta) == c.ffn_dim and (not c.n_experts or expert_ffn_dim(meta) == c.expert_ffn_dim):
        return _META_FFN
    hidden = int(2 * 4 * c.dim / 3)
    multiplier = _least_float(c.ffn_dim / hidden, lambda m: int(m * hidden) >= c.ffn_dim)
    out = {"multiple_of": 1, "ffn_dim_multiplier": multiplier, "ffn_exp": 4.0}
    if c.n_experts:
        p["moe_args"]["auto_scale_F"] = False
        # int(multiplier * h) == expert_ffn_dim for some h = int(2 * int(ffn_exp * dim) / 3)
        h = next((h for h in range(max(1, int(c.expert_ffn_dim / multiplier) - 2), int(c.expert_ffn_dim / multiplier) + 3)
                  if int(multiplier * h) == c.expert_ffn_dim), None)
        if h is None:
            raise LaminaError(f"Meta's Llama 4 layout cannot express an expert size of {c.expert_ffn_dim} beside a "
                              f"dense size of {c.ffn_dim}: both derive from one ffn_dim_multiplier")
        inner = -(-3 * h // 2)                       # the least int(ffn_exp * dim) whose 2/3 is h
        out["ffn_exp"] = _least_float(inner / c.dim, lambda x: int(x * c.dim) >= inner)
    return out


def _least_float(x: float, enough) -> float:
    """x, nudged up by the least step until `enough(x)` (a quotient can land a hair short)."""
    while not enough(x):
        x = math.nextafter(x, math.inf)
    return x


def shard(config: ModelConfig, weights: dict[str, Tensor], ranks: int, dtype: torch.dtype, where) -> list[dict]:
    """lamina's weights as `ranks` files of Meta's released Llama 4 layout."""
    full = {name: qk_rows(config, name, t.detach().to(dtype), to_halves=False) for name, t in weights.items()}
    if config.tie_embeddings:   # Meta's code always has its own head: a copy, dropped again on reading
        full["output.weight"] = full["tok_embeddings.weight"]
    for name, t in full.items():
        axis = _split_axis(name)
        if axis is not None and t.shape[axis] % ranks:
            raise LaminaError(f"{where}: tensor {name} {tuple(t.shape)} does not split into {ranks} equal "
                              f"model-parallel shards")
    if config.n_heads % ranks or config.n_kv_heads % ranks:
        raise LaminaError(f"{where}: {config.n_heads} query and {config.n_kv_heads} key/value heads do not split "
                          f"over {ranks} model-parallel files")
    return [_rank(config, full, ranks, r) for r in range(ranks)]


def _split_axis(name: str) -> int | None:
    """Along which axis of lamina's tensor the reference's ranks split it."""
    if name.endswith(("norm.weight", "feed_forward.gate.weight")):
        return None
    if name.endswith(("attention.wo.weight", "feed_forward.w2.weight", "shared.w2.weight")):
        return 1
    if name.endswith(("experts.w1", "experts.w3", "experts.w2")):
        return 1 if not name.endswith("w2") else 2
    return 0


def _rank(config: ModelConfig, full: dict[str, Tensor], ranks: int, r: int) -> dict[str, Tensor]:
    def part(name: str) -> Tensor:
        axis = _split_axis(name)
        t = full[name]
        return t if axis is None else t.chunk(ranks, axis)[r]

    out = {"tok_embeddings.weight": part("tok_embeddings.weight"), "norm.weight": full["norm.weight"],
           "output.weight": part("output.weight")}
    for i in range(config.n_layers):
        a, f = f"layers.{i}.attention.", f"layers.{i}.feed_forward."
        out[a + "wqkv.weight"] = torch.cat([part(a + w) for w in ("wq.weight", "wk.weight", "wv.weight")])
        out[a + "wqkv.layer_norm_weight"] = full[f"layers.{i}.attention_norm.weight"]
        out[a + "wo.weight"] = part(a + "wo.weight")
        if config.is_moe_layer(i):
            out[f + "norm.weight"] = full[f"layers.{i}.ffn_norm.weight"]
            out[f + "router_DE"] = full[f + "gate.weight"].t()
            e = config.n_experts
            for ours, theirs in (("w1", "moe_w_in_eD_F"), ("w3", "moe_w_swiglu_eD_F")):
                out[f + "experts." + theirs] = part(f + "experts." + ours).transpose(1, 2).reshape(e * config.dim, -1)
            out[f + "experts.moe_w_out_eF_D"] = part(f + "experts.w2").transpose(1, 2).reshape(-1, config.dim)
            for ours, theirs in (("w1", "w_in_shared_FD"), ("w3", "w_swiglu_FD"), ("w2", "w_out_shared_DF")):
                out[f + theirs + ".weight"] = part(f + f"shared.{ours}.weight")
        else:
            out[f + "mlp.layer_norm_weight"] = full[f"layers.{i}.ffn_norm.weight"]
            out[f + "mlp.fc1_weight"] = torch.cat((part(f + "w1.weight"), part(f + "w3.weight")))
            out[f + "mlp.fc2_weight"] = part(f + "w2.weight")
    return {name: t.contiguous().clone() for name, t in out.items()}
