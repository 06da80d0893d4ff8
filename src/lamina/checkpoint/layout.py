"""Tensor names and layouts of the formats lamina reads and writes, in one place.

lamina's own names are Meta's (so a Meta checkpoint needs no renaming); Hugging Face and GGUF
names map onto them here. Meta and GGUF interleave the two halves of each RoPE channel pair in
the rows of wq/wk; Hugging Face (and lamina) keep them as two halves."""

from __future__ import annotations

import re

import torch
from torch import Tensor

from ..model import ModelConfig

# lamina (= Meta) name -> (Hugging Face name, GGUF name); "{i}" is the layer index.
NAMES = {
    "tok_embeddings.weight": ("model.embed_tokens.weight", "token_embd.weight"),
    "norm.weight": ("model.norm.weight", "output_norm.weight"),
    "output.weight": ("lm_head.weight", "output.weight"),
    "layers.{i}.attention.wq.weight": ("model.layers.{i}.self_attn.q_proj.weight", "blk.{i}.attn_q.weight"),
    "layers.{i}.attention.wk.weight": ("model.layers.{i}.self_attn.k_proj.weight", "blk.{i}.attn_k.weight"),
    "layers.{i}.attention.wv.weight": ("model.layers.{i}.self_attn.v_proj.weight", "blk.{i}.attn_v.weight"),
    "layers.{i}.attention.wo.weight": ("model.layers.{i}.self_attn.o_proj.weight", "blk.{i}.attn_output.weight"),
    "layers.{i}.feed_forward.w1.weight": ("model.layers.{i}.mlp.gate_proj.weight", "blk.{i}.ffn_gate.weight"),
    "layers.{i}.feed_forward.w2.weight": ("model.layers.{i}.mlp.down_proj.weight", "blk.{i}.ffn_down.weight"),
    "layers.{i}.feed_forward.w3.weight": ("model.layers.{i}.mlp.up_proj.weight", "blk.{i}.ffn_up.weight"),
    "layers.{i}.attention_norm.weight": ("model.layers.{i}.input_layernorm.weight", "blk.{i}.attn_norm.weight"),
    "layers.{i}.ffn_norm.weight": ("model.layers.{i}.post_attention_layernorm.weight", "blk.{i}.ffn_norm.weight"),
}
# A mixture of experts, in Mixtral's Hugging Face layout. lamina stacks a layer's experts into
# one tensor (E, ...), as GGUF does; Hugging Face keeps one tensor per expert, "{e}" its index.
# The selection bias of auxiliary-loss-free balancing has DeepSeek-V3's name.
NAMES.update({
    "layers.{i}.feed_forward.gate.weight": ("model.layers.{i}.block_sparse_moe.gate.weight", "blk.{i}.ffn_gate_inp.weight"),
    "layers.{i}.feed_forward.expert_bias": ("model.layers.{i}.block_sparse_moe.gate.e_score_correction_bias",
                                            "blk.{i}.exp_probs_b.bias"),
    "layers.{i}.feed_forward.experts.w1": ("model.layers.{i}.block_sparse_moe.experts.{e}.w1.weight",
                                           "blk.{i}.ffn_gate_exps.weight"),
    "layers.{i}.feed_forward.experts.w2": ("model.layers.{i}.block_sparse_moe.experts.{e}.w2.weight",
                                           "blk.{i}.ffn_down_exps.weight"),
    "layers.{i}.feed_forward.experts.w3": ("model.layers.{i}.block_sparse_moe.experts.{e}.w3.weight",
                                           "blk.{i}.ffn_up_exps.weight"),
})
# Multi-head latent attention and shared experts, as DeepSeek-V3's Hugging Face layout names them
# (GGUF: llama.cpp's deepseek2 names).
NAMES.update({
    "layers.{i}.attention.wq_a.weight": ("model.layers.{i}.self_attn.q_a_proj.weight", "blk.{i}.attn_q_a.weight"),
    "layers.{i}.attention.q_norm.weight": ("model.layers.{i}.self_attn.q_a_layernorm.weight", "blk.{i}.attn_q_a_norm.weight"),
    "layers.{i}.attention.wq_b.weight": ("model.layers.{i}.self_attn.q_b_proj.weight", "blk.{i}.attn_q_b.weight"),
    "layers.{i}.attention.wkv_a.weight": ("model.layers.{i}.self_attn.kv_a_proj_with_mqa.weight",
                                          "blk.{i}.attn_kv_a_mqa.weight"),
    "layers.{i}.attention.kv_norm.weight": ("model.layers.{i}.self_attn.kv_a_layernorm.weight",
                                            "blk.{i}.attn_kv_a_norm.weight"),
    "layers.{i}.attention.wkv_b.weight": ("model.layers.{i}.self_attn.kv_b_proj.weight", "blk.{i}.attn_kv_b.weight"),
    "layers.{i}.attention.k_norm.weight": ("model.layers.{i}.self_attn.k_norm.weight", "blk.{i}.attn_k_norm.weight"),
    "layers.{i}.feed_forward.shared.w1.weight": ("model.layers.{i}.mlp.shared_experts.gate_proj.weight",
                                                 "blk.{i}.ffn_gate_shexp.weight"),
    "layers.{i}.feed_forward.shared.w2.weight": ("model.layers.{i}.mlp.shared_experts.down_proj.weight",
                                                 "blk.{i}.ffn_down_shexp.weight"),
    "layers.{i}.feed_forward.shared.w3.weight": ("model.layers.{i}.mlp.shared_experts.up_proj.weight",
                                                 "blk.{i}.ffn_up_shexp.weight"),
})
# Where a Hugging Face layout names a tensor otherwise than Mixtral's (the default above): the
# router and the routed experts under `mlp`, as DeepSeek-V3 and Qwen3-MoE have them; Qwen3's
# per-head query norm (lamina's `q_norm` is otherwise the latent query norm of DeepSeek).
_MLP_EXPERTS = {
    "layers.{i}.feed_forward.gate.weight": "model.layers.{i}.mlp.gate.weight",
    "layers.{i}.feed_forward.experts.w1": "model.layers.{i}.mlp.experts.{e}.gate_proj.weight",
    "layers.{i}.feed_forward.experts.w2": "model.layers.{i}.mlp.experts.{e}.down_proj.weight",
    "layers.{i}.feed_forward.experts.w3": "model.layers.{i}.mlp.experts.{e}.up_proj.weight",
}
_QWEN3 = {"layers.{i}.attention.q_norm.weight": "model.layers.{i}.self_attn.q_norm.weight"}
# Multi-token prediction modules are layers after the last, as DeepSeek-V3 numbers them
# (model.layers.61 of V3; GLM-4.5 and MiMo do the same): a block's tensors, their own norms and
# projection, and copies of the embedding and the output head. lamina keeps them as `mtp.{k}`
# (`to_mtp`), sharing the model's embedding and head, and writes them so in every layout:
# transformers loads the model around them, as it does DeepSeek-V3's.
_MTP = {
    "layers.{i}.enorm.weight": "model.layers.{i}.enorm.weight",
    "layers.{i}.hnorm.weight": "model.layers.{i}.hnorm.weight",
    "layers.{i}.eh_proj.weight": "model.layers.{i}.eh_proj.weight",
    "layers.{i}.head_norm.weight": "model.layers.{i}.shared_head.norm.weight",
    "layers.{i}.embedding_copy": "model.layers.{i}.embed_tokens.weight",
    "layers.{i}.head_copy": "model.layers.{i}.shared_head.head.weight",
}
MTP_COPIES = {"embedding_copy": "tok_embeddings.weight", "head_copy": "output.weight"}
# Llama 4's text model (Llama4ForCausalLM): the feed-forward under `feed_forward`, the router
# `router`, one shared expert, and each layer's experts fused into two tensors, gate and up
# side by side (E, dim, 2F) and down (E, F, dim), which hf.py splits into lamina's.
_LLAMA4 = {
    "layers.{i}.feed_forward.gate.weight": "model.layers.{i}.feed_forward.router.weight",
    "layers.{i}.feed_forward.experts.gate_up": "model.layers.{i}.feed_forward.experts.gate_up_proj",
    "layers.{i}.feed_forward.experts.down": "model.layers.{i}.feed_forward.experts.down_proj",
    **{f"layers.{{i}}.feed_forward.{ours}.weight": f"model.layers.{{i}}.feed_forward.{theirs}.weight"
       for ours, theirs in (("w1", "gate_proj"), ("w2", "down_proj"), ("w3", "up_proj"),
                            ("shared.w1", "shared_expert.gate_proj"), ("shared.w2", "shared_expert.down_proj"),
                            ("shared.w3", "shared_expert.up_proj"))},
}
HF_LAYOUTS = {
    "deepseek_v3": _MLP_EXPERTS | _MTP | {
        "layers.{i}.feed_forward.expert_bias": "model.layers.{i}.mlp.gate.e_score_correction_bias"},
    "deepseek_v2": _MLP_EXPERTS,
    "qwen3_moe": _MLP_EXPERTS | _QWEN3 | _MTP,
    "qwen3": _QWEN3 | _MTP,
    "mixtral": _MTP,
    "llama": _MTP,
    "llama4": _LLAMA4 | _MTP,
}
# GGUF architectures that name a tensor otherwise than llama.cpp's llama (the default column
# above): Qwen3's per-head query norm (lamina's `q_norm` is otherwise DeepSeek's latent one).
GGUF_LAYOUTS = {
    "qwen3": {"layers.{i}.attention.q_norm.weight": "blk.{i}.attn_q_norm.weight"},
    "qwen3moe": {"layers.{i}.attention.q_norm.weight": "blk.{i}.attn_q_norm.weight"},
    # llama.cpp's deepseek2 splits the latent's up-projection per head into the keys' (transposed,
    # heads x rank x position-free channels) and the values' (heads x values x rank): gguf.py
    "deepseek2": {"layers.{i}.attention.wk_b": "blk.{i}.attn_k_b.weight",
                  "layers.{i}.attention.wv_b": "blk.{i}.attn_v_b.weight"},
}
LAYOUTS = {"hf": HF_LAYOUTS, "gguf": GGUF_LAYOUTS}
FORMATS = {"hf": 0, "gguf": 1}
_INDEX = re.escape("{i}"), re.escape("{e}")


def _compile(theirs: str) -> re.Pattern:
    return re.compile(re.escape(theirs).replace(_INDEX[0], r"(?P<i>\d+)").replace(_INDEX[1], r"(?P<e>\d+)") + "$")


def _patterns(fmt: str, layout: str | None = None):
    """(lamina name, the format's name, its pattern): a layout's (Hugging Face) or architecture's
    (GGUF) own names first, then the defaults; reading (no layout given) knows every one's names."""
    col = FORMATS[fmt]
    for name, table in LAYOUTS[fmt].items():
        if layout in (None, name):
            for ours, theirs in table.items():
                yield ours, theirs, _compile(theirs)
    for ours, theirs in NAMES.items():
        yield ours, theirs[col], _compile(theirs[col])


def split_name(name: str, fmt: str) -> tuple[str | None, int | None]:
    """(the lamina name of a tensor named `name` in format `fmt`, or None if it is not a weight;
    the expert it holds, when the format keeps one tensor per expert, else None)."""
    for ours, _, rx in _patterns(fmt):
        m = rx.match(name)
        if m:
            groups = m.groupdict()
            expert = groups.get("e")
            return ours.replace("{i}", groups["i"]) if groups.get("i") else ours, \
                int(expert) if expert is not None else None
    return None, None


def to_lamina(name: str, fmt: str) -> str | None:
    """The lamina name of a tensor named `name` in format `fmt`, or None if it is not a weight."""
    return split_name(name, fmt)[0]


def from_lamina(name: str, fmt: str, layout: str = "") -> str:
    """The name in format `fmt` (and Hugging Face `layout`, where it names tensors its own way) of
    lamina's tensor `name`; "{e}" stands for the expert where the format keeps one per expert."""
    for ours, theirs, _ in _patterns(fmt, layout):
        rx = re.escape(ours).replace(_INDEX[0], r"(\d+)")
        m = re.match(rx + "$", name)
        if m:
            return theirs.replace("{i}", m.group(1)) if m.groups() else theirs
    raise KeyError(name)


def to_mtp(name: str, n_layers: int) -> str:
    """A layer past the last is a multi-token prediction module: layers.{n_layers + k}.X -> mtp.{k}.X."""
    m = re.match(r"layers\.(\d+)\.(.*)$", name)
    return f"mtp.{int(m.group(1)) - n_layers}.{m.group(2)}" if m and int(m.group(1)) >= n_layers else name


def from_mtp(name: str, n_layers: int) -> str:
    """mtp.{k}.X -> layers.{n_layers + k}.X, as DeepSeek-V3's checkpoints number them."""
    m = re.match(r"mtp\.(\d+)\.(.*)$", name)
    return f"layers.{n_layers + int(m.group(1))}.{m.group(2)}" if m else name


def interleaved_to_halves(w: Tensor, n_heads: int) -> Tensor:
    """Meta/GGUF row order of wq/wk -> lamina's. w: (n_heads * D, dim)."""
    rows, cols = w.shape
    return w.view(n_heads, rows // n_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def halves_to_interleaved(w: Tensor, n_heads: int) -> Tensor:
    """lamina's row order of wq/wk -> Meta/GGUF's."""
    rows, cols = w.shape
    return w.view(n_heads, 2, rows // n_heads // 2, cols).transpose(1, 2).reshape(rows, cols)


def qk_rows(config: ModelConfig, name: str, w: Tensor, to_halves: bool) -> Tensor:
    """wq's and wk's rows between lamina's RoPE halves and Meta's/GGUF's interleaved pairs (to
    lamina's when `to_halves`); any other tensor as it is."""
    if not (is_query(name) or is_key(name)):
        return w
    heads = config.n_heads if is_query(name) else config.n_kv_heads
    return (interleaved_to_halves if to_halves else halves_to_interleaved)(w, heads)


def latent_rope_rows(config: ModelConfig, name: str, w: Tensor, to_halves: bool) -> Tensor:
    """DeepSeek's checkpoints (Hugging Face and GGUF) keep the rotated channels of queries and the shared key in
    interleaved pairs (`rope_interleave`); lamina rotates halves. Permute those rows of wq/wq_b
    (per head, after the position-free channels) and of wkv_a (its last rows)."""
    permute = interleaved_to_halves if to_halves else halves_to_interleaved
    nope, rope = config.qk_nope_head_dim, config.qk_rope_head_dim
    if name.endswith(("attention.wq.weight", "attention.wq_b.weight")):
        heads = w.view(config.n_heads, nope + rope, -1)
        rotated = permute(heads[:, nope:].reshape(config.n_heads * rope, -1), config.n_heads)
        return torch.cat((heads[:, :nope], rotated.view(config.n_heads, rope, -1)), dim=1).reshape(w.shape)
    if name.endswith("attention.wkv_a.weight"):
        return torch.cat((w[:config.kv_lora_rank], permute(w[config.kv_lora_rank:], 1)))
    return w


def is_query(name: str) -> bool:
    return name.endswith("attention.wq.weight")


def is_key(name: str) -> bool:
    return name.endswith("attention.wk.weight")
