"""GGUF, llama.cpp's format: read (any type the `gguf` package can dequantize, F32/F16/BF16/Q8_0/
Q4_0/Q4_1 and the K-quants among them) into float32 weights plus the tokenizer from the file's
metadata, and write F32, F16, Q8_0 or Q4_0 files that llama.cpp loads. `gguf_file` parses the header;
the `gguf` package writes files and knows the block formats."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import torch
from torch import Tensor

from ..errors import LaminaError
from ..files import atomic_file
from ..gguf_file import TensorInfo, open_gguf
from ..model import ModelConfig, RopeScaling
from ..model.rope import rope_inv_freq
from ..tokenizer import Tokenizer, gguf_metadata, tokenizer_from_gguf
from ..tokenizer.gguf_vocab import UNUSED
from .base import Checkpoint, check_weights, config_error
from .layout import from_lamina, interleaved_to_halves, is_key, is_query, latent_rope_rows, qk_rows, to_lamina

Q = gguf.GGMLQuantizationType
V = gguf.GGUFValueType
WRITE_TYPES = {"f32": Q.F32, "f16": Q.F16, "q8_0": Q.Q8_0, "q4_0": Q.Q4_0}
# what a Q4_0 file keeps in 8 bits, as llama.cpp's quantizer keeps the embedding and the head wider
_WIDER_IN_Q4 = ("tok_embeddings.weight", "output.weight")
ARCHITECTURES = ("llama", "qwen3", "qwen3moe", "llama4", "deepseek2")     # llama.cpp's, that lamina reads and writes
# those whose query/key rows hold RoPE pairs interleaved, as Meta's do; Qwen3's rotate halves as
# lamina's do, and deepseek2's rotated rows are DeepSeek's own (`latent_rope_rows`)
INTERLEAVED_ROWS = ("llama", "llama4")
# those that state the experts' width in `expert_feed_forward_length` (llama's, Mixtral's, in `feed_forward_length`)
OWN_EXPERT_WIDTH = ("qwen3moe", "llama4", "deepseek2")


@dataclass
class Blocks:
    """One tensor's llama.cpp blocks as the file holds them: (rows, bytes per row), memory-mapped."""
    type: Q
    data: np.ndarray
    heads: int = 0      # its rows interleave RoPE pairs within this many heads (lamina's are halves)


# llama.cpp block types lamina's QuantizedLinear holds exactly: (bits, bytes of a block of 32)
EXACT_BLOCKS = {Q.Q8_0: (8, 34), Q.Q4_0: (4, 18), Q.Q4_1: (4, 20)}


def block_codes(b: Blocks) -> tuple[int, Tensor, Tensor, Tensor | None]:
    """(bits, codes (rows, cols), scales and offsets (rows, cols / 32)) of Q8_0 (w = q * d), Q4_0
    (w = (q - 8) * d) or Q4_1 (w = q * d + m) blocks; a block's 4-bit codes hold elements 0-15 in
    their low nibbles and 16-31 in their high ones."""
    bits, size = EXACT_BLOCKS[b.type]
    raw = torch.from_numpy(np.array(b.data)).view(b.data.shape[0], -1, size)   # (rows, blocks, bytes)
    scales = raw[..., :2].contiguous().view(torch.float16)[..., 0].float()
    offsets = None
    if b.type == Q.Q8_0:
        codes = raw[..., 2:].contiguous().view(torch.int8)
    else:
        packed = raw[..., 2:] if b.type == Q.Q4_0 else raw[..., 4:]
        codes = torch.cat((packed & 15, packed >> 4), -1)
        offsets = -8 * scales if b.type == Q.Q4_0 else raw[..., 2:4].contiguous().view(torch.float16)[..., 0].float()
    codes = codes.reshape(codes.shape[0], -1)
    if b.heads:
        codes, scales = interleaved_to_halves(codes, b.heads), interleaved_to_halves(scales, b.heads)
        offsets = None if offsets is None else interleaved_to_halves(offsets, b.heads)
    return bits, codes, scales, offsets


def _dequantize(t: TensorInfo) -> np.ndarray:
    """Float32 values of one tensor in numpy order (outermost first); `gguf.quants` knows the
    block formats. t.data: (rows, bytes per row)."""
    return gguf.quants.dequantize(t.data, t.type).reshape(tuple(reversed(t.shape)))


# ModelConfig field -> the GGUF metadata key it comes from, to name the key a refusal is about
GGUF_KEYS = {"dim": "llama.embedding_length", "n_layers": "llama.block_count",
             "n_heads": "llama.attention.head_count", "n_kv_heads": "llama.attention.head_count_kv",
             "head_dim": "llama.attention.key_length", "ffn_dim": "llama.feed_forward_length",
             "vocab_size": "the rows of token_embd.weight",
             "norm_eps": "llama.attention.layer_norm_rms_epsilon", "rope_theta": "llama.rope.freq_base",
             "max_seq_len": "llama.context_length", "bos_token_id": "tokenizer.ggml.bos_token_id",
             "eos_token_id": "tokenizer.ggml.eos_token_id",
             "rope_scaling.original_max_position_embeddings": "llama.rope.scaling.original_context_length",
             "rope_scaling.factor": "rope_freqs.weight"}


def config_from_gguf(meta: dict, shapes: dict[str, tuple[int, ...]], where: Path) -> ModelConfig:
    """The architecture from the `llama.*` keys; like llama.cpp, the vocabulary size is the
    embedding's row count, and a missing output.weight means tied embeddings."""
    arch = meta.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise LaminaError(f"{where}: architecture {repr(arch)[:40]} is not supported (lamina runs "
                          f"{', '.join(ARCHITECTURES)})")

    def get(key, default=None):
        value = meta.get(f"{arch}.{key}", default)
        if value is None:
            raise LaminaError(f"{where}: missing metadata {arch}.{key}")
        return value

    if "token_embd.weight" not in shapes:
        raise LaminaError(f"{where}: missing tensor token_embd.weight")
    # head_dim 0 lets ModelConfig derive dim // n_heads once it has checked both are integers
    head_dim = meta.get(f"{arch}.attention.key_length", meta.get(f"{arch}.rope.dimension_count", 0))
    experts = {"qk_norm": arch.startswith("qwen3")}
    if meta.get(f"{arch}.expert_count"):
        experts |= {"n_experts": get("expert_count"), "n_active_experts": get("expert_used_count")}
        if arch in OWN_EXPERT_WIDTH:
            experts["expert_ffn_dim"] = get("expert_feed_forward_length")
    if arch == "deepseek2":
        key_length = get("attention.key_length_mla")
        rope = get("rope.dimension_count")
        experts |= {"kv_lora_rank": get("attention.kv_lora_rank"), "q_lora_rank": meta.get(f"{arch}.attention.q_lora_rank", 0),
                    "qk_rope_head_dim": rope, "qk_nope_head_dim": key_length - rope,
                    "v_head_dim": get("attention.value_length_mla"), "n_kv_heads": 0}
        head_dim = 0
        if experts.get("n_experts"):
            sigmoid = meta.get(f"{arch}.expert_gating_func") == int(gguf.ExpertGatingFuncType.SIGMOID)
            experts |= {"dense_layers": get("leading_dense_block_count", 0),
                        "n_shared_experts": get("expert_shared_count", 0), "router": "sigmoid" if sigmoid else "softmax",
                        "route_scale": _float32_value(get("expert_weights_scale", 1.0)),
                        "norm_topk": bool(get("expert_weights_norm", False)),
                        "expert_groups": get("expert_group_count", 1), "topk_groups": get("expert_group_used_count", 1),
                        "expert_bias": any(name.endswith("exp_probs_b.bias") for name in shapes)}
    if arch == "llama4":
        experts |= {"moe_every": get("interleave_moe_layer_step"), **_llama4_fixed(experts.get("n_experts", 0))}
    try:
        return ModelConfig(**{
            "n_kv_heads": get("attention.head_count_kv", get("attention.head_count")), "head_dim": head_dim,
            **experts},
            dim=get("embedding_length"), n_layers=get("block_count"),
            n_heads=get("attention.head_count"), ffn_dim=get("feed_forward_length"),
            vocab_size=shapes["token_embd.weight"][0],
            norm_eps=_float32_value(get("attention.layer_norm_rms_epsilon", 1e-5)),
            rope_theta=_float32_value(get("rope.freq_base", 10000.0)),
            max_seq_len=get("context_length", 2048),
            tie_embeddings="output.weight" not in shapes,
            bos_token_id=meta.get("tokenizer.ggml.bos_token_id"),
            eos_token_id=meta.get("tokenizer.ggml.eos_token_id"))
    except ValueError as e:
        raise config_error(e, where, GGUF_KEYS) from None


def _float32_value(x):
    """A float32 metadata value as the decimal it was written from (1e-05, not 9.99999974e-06);
    anything but a float is left for ModelConfig to refuse by name (and one past float32's range
    by its value, inf)."""
    if not isinstance(x, float):
        return x
    with np.errstate(over="ignore"):
        return float(str(np.float32(x)))


def _rope_scaling_from_factors(config: ModelConfig, factors: np.ndarray, meta: dict,
                               where: Path) -> RopeScaling:
    """llama.cpp stores Llama 3.1 scaling as per-frequency divisors (rope_freqs.weight); recover
    the parameters that produce exactly those divisors."""
    if factors.shape != (config.head_dim // 2,):
        raise LaminaError(f"{where}: tensor rope_freqs.weight has shape {factors.shape} but the "
                          f"GGUF metadata implies ({config.head_dim // 2},)")
    original = meta.get("llama.rope.scaling.original_context_length", 8192)
    try:
        scaling = RopeScaling(factor=_float32_value(float(factors.max())),
                              original_max_position_embeddings=original)
    except ValueError as e:
        raise config_error(e, where, GGUF_KEYS) from None
    base = rope_inv_freq(config.head_dim, config.rope_theta)
    ours = (base / rope_inv_freq(config.head_dim, config.rope_theta, scaling)).numpy()
    if not np.allclose(ours, factors, rtol=1e-4):
        raise LaminaError(f"{where}: rope_freqs.weight is not a llama3 RoPE scaling lamina can express")
    return scaling


def read_gguf(path: str | Path) -> Checkpoint:
    path = Path(path)
    meta, tensors = open_gguf(path)
    config = config_from_gguf(meta, {t.name: tuple(reversed(t.shape)) for t in tensors}, path)
    names = {}
    for t in tensors:
        try:   # one row: is the type readable at all, before any shape is judged
            gguf.quants.dequantize(t.data[:1], t.type)
        except NotImplementedError:
            raise LaminaError(f"{path}: tensor {t.name} uses {t.type.name}, a type lamina "
                              "cannot read") from None
        names[t.name] = to_lamina(t.name, "gguf") if t.name != "rope_freqs.weight" else None
        if names[t.name] is None and t.name != "rope_freqs.weight":
            raise LaminaError(f"{path}: unexpected tensor {t.name}")
    # Shapes first, from the tensor table: nothing is dequantized or permuted for a config that
    # does not fit the file (meta tensors carry the shapes without memory).
    shapes = {names[t.name]: torch.empty(tuple(reversed(t.shape)), device="meta") for t in tensors if names[t.name]}
    deepseek2 = meta.get("general.architecture") == "deepseek2"
    if deepseek2:
        try:
            shapes = _deepseek2_from_gguf(config, shapes)
        except (KeyError, RuntimeError) as e:
            raise LaminaError(f"{path}: the latent's key and value up-projections (attn_k_b, attn_v_b) do not "
                              f"fit the config ({e})") from None
    check_weights(config, shapes, path, "gguf")
    weights: dict[str, Tensor] = {}
    blocks: dict[str, Blocks] = {}
    types: Counter = Counter()
    interleaved = meta.get("general.architecture") in INTERLEAVED_ROWS
    for t in tensors:
        array = _dequantize(t)
        if t.name == "rope_freqs.weight":
            config = config.replace(rope_scaling=_rope_scaling_from_factors(config, array, meta, path))
            continue
        name = names[t.name]
        w = torch.from_numpy(np.array(array, dtype=np.float32))   # own, writable memory
        weights[name] = qk_rows(config, name, w, to_halves=True) if interleaved else w
        types[t.type.name] += 1
        if t.type in EXACT_BLOCKS and len(t.shape) == 2 and not deepseek2:
            heads = config.n_heads if is_query(name) else config.n_kv_heads if is_key(name) else 0
            blocks[name] = Blocks(t.type, t.data, heads if interleaved else 0)
    if deepseek2:
        weights = _deepseek2_from_gguf(config, weights)
    tokenizer = _tokenizer(meta, path) if "tokenizer.ggml.model" in meta else None
    general = {k: v for k, v in meta.items() if k.startswith("general.")}
    return Checkpoint(config, weights, tokenizer, path, "gguf", dict(types), general, blocks)


def _tokenizer(meta: dict, path: Path) -> Tokenizer:
    """The tokenizer from the metadata; a vocabulary the tokenizers library refuses (values of
    the wrong type, ids out of range) is said in one line."""
    try:
        return tokenizer_from_gguf(meta)
    except LaminaError as e:
        raise LaminaError(f"{path}: {e}") from None
    except Exception as e:   # the tokenizers library's own errors on malformed vocabularies
        detail = (str(e).splitlines() or [type(e).__name__])[0][:200]
        raise LaminaError(f"{path}: tokenizer metadata lamina cannot read ({detail})") from None


def write_gguf(dst: str | Path, config: ModelConfig, weights: dict[str, Tensor],
               tokenizer: Tokenizer | None, *, dtype: str = "f16", name: str = "lamina") -> Path:
    """A GGUF file llama.cpp loads: llama architecture keys, the tokenizer, Meta-ordered Q/K rows.
    Norms stay F32 (llama.cpp requires it); a matrix whose rows do not split into blocks of 32
    falls back to F16, as llama.cpp's converter does; q4_0 keeps the embedding and head Q8_0."""
    dst = Path(dst)
    if dtype not in WRITE_TYPES:
        raise LaminaError(f"GGUF dtype {dtype!r} cannot be written (choose {', '.join(WRITE_TYPES)})")
    if tokenizer is None:
        raise LaminaError("a GGUF file must carry its tokenizer, and this model has none")
    arch = gguf_arch(config)
    if dst.exists() or dst.is_symlink():
        raise LaminaError(f"{dst}: already exists; choose a new path or remove it first")
    check_weights(config, dict(weights), dst)
    vocab = _vocab_metadata(tokenizer, config.vocab_size)
    qtype = WRITE_TYPES[dtype]
    file_type = {Q.F32: gguf.LlamaFileType.ALL_F32, Q.F16: gguf.LlamaFileType.MOSTLY_F16,
                 Q.Q8_0: gguf.LlamaFileType.MOSTLY_Q8_0, Q.Q4_0: gguf.LlamaFileType.MOSTLY_Q4_0}[qtype]
    with atomic_file(dst) as tmp:
        w = gguf.GGUFWriter(tmp, arch)
        w.add_name(name)
        w.add_context_length(config.max_seq_len)
        w.add_embedding_length(config.dim)
        w.add_block_count(config.n_layers)
        w.add_feed_forward_length(config.expert_ffn_dim if config.n_experts and arch == "llama" else config.ffn_dim)
        if config.n_experts:
            w.add_expert_count(config.n_experts)
            w.add_expert_used_count(config.n_active_experts)
            if arch in OWN_EXPERT_WIDTH:
                w.add_expert_feed_forward_length(config.expert_ffn_dim)
            if arch == "deepseek2":
                w.add_leading_dense_block_count(config.dense_layers)
                w.add_expert_shared_count(config.n_shared_experts)
                w.add_expert_weights_scale(config.route_scale)
                w.add_expert_weights_norm(config.norm_topk)
                w.add_expert_gating_func(gguf.ExpertGatingFuncType.SIGMOID if config.router == "sigmoid"
                                         else gguf.ExpertGatingFuncType.SOFTMAX)
                w.add_expert_group_count(config.expert_groups)
                w.add_expert_group_used_count(config.topk_groups)
            if arch == "llama4":
                w.add_interleave_moe_layer_step(config.moe_every)
        w.add_head_count(config.n_heads)
        if arch == "deepseek2":     # attention over the latent: one key/value head of it (llama.cpp's MLA)
            w.add_head_count_kv(1)
            w.add_key_length(config.kv_lora_rank + config.qk_rope_head_dim)
            w.add_value_length(config.kv_lora_rank)
            w.add_key_length_mla(config.head_dim)
            w.add_value_length_mla(config.v_head_dim)
            w.add_kv_lora_rank(config.kv_lora_rank)
            if config.q_lora_rank:
                w.add_q_lora_rank(config.q_lora_rank)
            w.add_rope_dimension_count(config.qk_rope_head_dim)
        else:
            w.add_head_count_kv(config.n_kv_heads)
            w.add_rope_dimension_count(config.head_dim)
            if config.head_dim != config.dim // config.n_heads:
                w.add_key_length(config.head_dim)
                w.add_value_length(config.head_dim)
        w.add_rope_freq_base(config.rope_theta)
        w.add_layer_norm_rms_eps(config.norm_eps)
        w.add_vocab_size(config.vocab_size)
        w.add_file_type(file_type)
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        for key, value in vocab.items():
            w.add_key_value(key, value, _value_type(value))
        if config.rope_scaling is not None:   # as llama.cpp's converter: divisors per frequency
            base = rope_inv_freq(config.head_dim, config.rope_theta)
            factors = base / rope_inv_freq(config.head_dim, config.rope_theta, config.rope_scaling)
            w.add_tensor("rope_freqs.weight", factors.numpy().astype(np.float32))
            w.add_rope_scaling_orig_ctx_len(config.rope_scaling.original_max_position_embeddings)
        for lamina_name, t in (_deepseek2_tensors(config, weights) if arch == "deepseek2" else weights).items():
            if config.tie_embeddings and lamina_name == "output.weight":
                continue
            t = t.detach().float().cpu()
            if arch in INTERLEAVED_ROWS:
                t = qk_rows(config, lamina_name, t, to_halves=False)
            array = t.numpy()
            kind = Q.F32 if array.ndim == 1 else Q.Q8_0 if qtype == Q.Q4_0 and lamina_name in _WIDER_IN_Q4 else qtype
            if kind in (Q.Q8_0, Q.Q4_0) and array.shape[-1] % gguf.GGML_QUANT_SIZES[kind][0]:
                kind = Q.F16
            w.add_tensor(from_lamina(lamina_name, "gguf", arch), gguf.quants.quantize(array, kind),
                         raw_dtype=kind)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    return dst


def gguf_arch(config: ModelConfig) -> str:
    """The llama.cpp architecture a model is written as: `llama` (dense, or Mixtral's routing),
    `qwen3` or `qwen3moe` (per-head query/key norms; softmax top-k renormalised, every layer
    sparse), `llama4` or `deepseek2` (latent attention); or LaminaError saying what llama.cpp's
    architectures cannot hold, before any file is made."""
    if config.mtp_depth:
        raise LaminaError("GGUF holds no multi-token prediction modules; drop them (`lamina convert --drop-mtp`): "
                          "next-token inference never runs them")
    if config.rope_scaling is not None and (config.rope_scaling.rope_type != "llama3" or config.qk_norm):
        raise LaminaError("GGUF is written with llama's llama3 RoPE scaling only; this model's scaling is "
                          "not expressed there")
    if config.latent:
        return _deepseek2_arch(config)
    if config.expert_input_scaled or config.nope_every or config.attention_chunk or config.qk_l2_norm:
        return _llama4_arch(config)
    if config.n_experts:
        from .hf_config import mixtral_config
        # the same routing limits as Mixtral's layout: softmax, renormalised top-k, no shared experts
        mixtral_config(config.replace(qk_norm=False, expert_bias=False))
        if config.expert_bias:
            raise LaminaError("llama.cpp's llama and qwen3moe architectures have no balancing bias; "
                              "write this model in the Hugging Face layout")
    if config.qk_norm:
        return "qwen3moe" if config.n_experts else "qwen3"
    return "llama"


def _deepseek2_arch(c: ModelConfig) -> str:
    """llama.cpp's deepseek2 (DeepSeek-V2 and V3): latent attention, and a dense model or experts
    after the dense first layers, the shared ones of the experts' width."""
    if c.qk_norm or c.expert_input_scaled or c.moe_every != 1:
        raise LaminaError("llama.cpp's deepseek2 has no query/key norm or Llama 4 routing; write this model in "
                          "the Hugging Face layout")
    if not c.q_lora_rank and c.n_layers not in (26, 27):
        # llama.cpp knows a model without the query bottleneck as DeepSeek-V2-Lite by its layer count
        raise LaminaError(f"llama.cpp's deepseek2 reads queries without a bottleneck (q_lora_rank 0) only in "
                          f"models of 26 or 27 layers (V2-Lite's); this one has {c.n_layers}")
    return "deepseek2"


def _deepseek2_tensors(config: ModelConfig, weights: dict[str, Tensor]) -> dict[str, Tensor]:
    """lamina's latent attention as llama.cpp's deepseek2 keeps it: RoPE rows interleaved again
    (DeepSeek's order), and each head's key and value up-projections apart (layout.py)."""
    H, nope, v = config.n_heads, config.qk_nope_head_dim, config.v_head_dim
    out = {}
    for name, t in weights.items():
        t = latent_rope_rows(config, name, t, to_halves=False)
        if name.endswith("attention.wkv_b.weight"):
            k_b, v_b = t.view(H, nope + v, -1).split([nope, v], dim=1)
            out[name.replace("wkv_b.weight", "wk_b")] = k_b.transpose(1, 2).contiguous()   # (H, rank, nope)
            out[name.replace("wkv_b.weight", "wv_b")] = v_b.contiguous()                   # (H, v, rank)
        else:
            out[name] = t
    return out


def _deepseek2_from_gguf(config: ModelConfig, weights: dict[str, Tensor]) -> dict[str, Tensor]:
    """The inverse of `_deepseek2_tensors`."""
    out = {}
    for name, t in weights.items():
        if name.endswith("attention.wk_b"):
            k_b, v_b = t.transpose(1, 2), weights[name.replace("wk_b", "wv_b")]       # (H, nope, rank), (H, v, rank)
            out[name.replace("wk_b", "wkv_b.weight")] = torch.cat((k_b, v_b), dim=1).reshape(-1, t.shape[1])
        elif not name.endswith("attention.wv_b"):
            out[name] = latent_rope_rows(config, name, t, to_halves=True)
    return out


def _llama4_fixed(n_experts: int) -> dict:
    """What llama.cpp's llama4 fixes rather than reads (llama-model.cpp), as ModelConfig fields: a
    RoPE-free layer every fourth, chunks of 8192, attention temperature 0.1 over 8192 positions,
    the query/key L2 norm unless there are 128 experts, one shared expert, Llama 4's routing.
    The file states only the experts, their width and the sparse layers' step."""
    return {"nope_every": 4, "attention_chunk": 8192, "attn_temperature": 0.1, "attn_floor": 8192,
            "qk_l2_norm": n_experts != 128, "n_shared_experts": 1, "expert_input_scaled": True,
            "router": "sigmoid", "norm_topk": False}


def _llama4_arch(c: ModelConfig) -> str:
    fixed = _llama4_fixed(c.n_experts) | {"route_scale": 1.0, "expert_groups": 1, "dense_layers": 0,
                                          "expert_bias": False, "qk_norm": False}
    unlike = [f"{k} {getattr(c, k)!r} (llama.cpp's llama4: {v!r})" for k, v in fixed.items() if getattr(c, k) != v]
    if unlike or not c.n_experts:
        raise LaminaError("llama.cpp's llama4 architecture fixes what this model sets otherwise: "
                          + ", ".join(unlike or ["no experts"]) + "; write it in the Hugging Face layout")
    if c.rope_scaling is not None:
        raise LaminaError("llama.cpp's llama4 takes its RoPE scaling from rope_freqs, which lamina "
                          "does not write for it yet; write this model in the Hugging Face layout")
    return "llama4"


def _vocab_metadata(tokenizer: Tokenizer, vocab_size: int) -> dict:
    """The tokenizer's GGUF keys, its token list padded to the embedding rows as llama.cpp's
    converter pads it ("[PAD<id>]", unused): llama.cpp sizes the vocabulary by the token list."""
    meta = gguf_metadata(tokenizer)
    tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    if len(tokens) > vocab_size:
        raise LaminaError(f"the tokenizer has {len(tokens)} tokens but the model only "
                          f"{vocab_size} embeddings; they do not belong together")
    pad = range(len(tokens), vocab_size)
    meta["tokenizer.ggml.tokens"] = tokens + [f"[PAD{i}]" for i in pad]
    meta["tokenizer.ggml.token_type"] = types + [UNUSED] * len(pad)
    return meta


def _value_type(value) -> gguf.GGUFValueType:
    if isinstance(value, bool):
        return V.BOOL
    if isinstance(value, int):
        return V.UINT32
    if isinstance(value, float):
        return V.FLOAT32
    if isinstance(value, str):
        return V.STRING
    return V.ARRAY
