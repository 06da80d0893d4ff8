"""Meta's original checkpoints: `params.json` + `consolidated.NN.pth`, one file per model-parallel
rank, for Llama 1 to 3 here and Llama 4 in meta_llama4.py. Loaded with
`torch.load(weights_only=True)` only, so a file that would run code on unpickling is refused,
never executed."""

from __future__ import annotations

import io
import json
import math
import pickle
import zipfile
from pathlib import Path

import torch
from torch import Tensor

from ..errors import LaminaError
from ..files import atomic_directory
from ..model import ModelConfig, RopeScaling, llama_ffn_dim
from ..model.config import check_float, check_int
from . import meta_llama4
from .base import Checkpoint, check_weights, config_error, null_as_zero, read_json
from .layout import qk_rows

# How model-parallel ranks split each tensor (Meta's fairscale layers): column-parallel layers
# split their output rows (dim 0), row-parallel ones their input columns (dim 1).
_ROW_PARALLEL = ("attention.wo.weight", "feed_forward.w2.weight")
_REPLICATED = ("norm.weight",)
# Meta's reference code fixes these llama3 RoPE scaling parameters (only the factor is read from
# params.json); lamina writes its own extra keys when a model uses other values, so they survive
# a round trip through lamina.
_META_SCALING = RopeScaling(factor=8.0)
_EXTRA_SCALING_KEYS = ("low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


def _split_dim(name: str, shard: Tensor, config_dim: int) -> int | None:
    if name.endswith(_REPLICATED):
        return None
    if name.endswith(_ROW_PARALLEL):
        return 1
    if name == "tok_embeddings.weight":   # Llama 1/2 split the embedding dim, Llama 3 the vocab
        return 1 if shard.shape[1] != config_dim else 0
    return 0


# ModelConfig field -> the params.json key (or what) it comes from, to name it in a refusal
_PARAMS_KEYS = {"ffn_dim": "the ffn size from multiple_of and ffn_dim_multiplier",
                "vocab_size": "vocab_size (the rows of tok_embeddings.weight)",
                **{f"rope_scaling.{k}": f"rope_scaling_{k}" for k in ("factor", *_EXTRA_SCALING_KEYS)}}


def config_from_params(p: dict, vocab_size: int, has_output: bool, where: Path) -> ModelConfig:
    try:
        dim = p["dim"]
        check_int("dim", dim)   # before the arithmetic of llama_ffn_dim
        check_int("multiple_of", p.get("multiple_of", 256))
        if p.get("ffn_dim_multiplier") is not None:
            check_float("ffn_dim_multiplier", p["ffn_dim_multiplier"])
        llama3 = vocab_size >= 128000
        scaling = None
        if p.get("use_scaled_rope"):
            extra = {k: p[f"rope_scaling_{k}"] for k in _EXTRA_SCALING_KEYS if f"rope_scaling_{k}" in p}
            scaling = RopeScaling(factor=p.get("rope_scaling_factor", 8.0), **extra)
        return ModelConfig(
            dim=dim, n_layers=p["n_layers"], n_heads=p["n_heads"],
            n_kv_heads=null_as_zero(p.get("n_kv_heads")), head_dim=null_as_zero(p.get("head_dim")),
            ffn_dim=llama_ffn_dim(dim, p.get("multiple_of", 256), p.get("ffn_dim_multiplier")),
            vocab_size=vocab_size, norm_eps=p.get("norm_eps", 1e-5),
            rope_theta=p.get("rope_theta", 10000.0), rope_scaling=scaling,
            max_seq_len=p.get("max_seq_len", 8192 if llama3 else 2048),
            tie_embeddings=not has_output,
            bos_token_id=128000 if llama3 else 1, eos_token_id=128001 if llama3 else 2)
    except KeyError as e:
        raise LaminaError(f"{where}: missing field {e.args[0]}") from None
    except ValueError as e:
        raise config_error(e, where, _PARAMS_KEYS) from None


def _load_shard(file: Path) -> dict[str, Tensor]:
    try:   # mmap needs torch.save's zip format; older plain-pickle files load without it
        # Llama 4's files keep Transformer Engine state as io.BytesIO (bytes, no code), dropped here
        with torch.serialization.safe_globals([io.BytesIO]):
            state = torch.load(file, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(file))
    except pickle.UnpicklingError as e:
        raise LaminaError(f"{file}: refused: the pickle asks to run code or build objects "
                          f"beyond plain tensors ({_unpickler_reason(e)})") from None
    except Exception as e:
        raise LaminaError(f"{file}: not a readable PyTorch checkpoint ({e})") from None
    if isinstance(state, dict):
        state = {k: v for k, v in state.items() if not (isinstance(k, str) and k.endswith("._extra_state"))}
    if not isinstance(state, dict) or not all(isinstance(t, Tensor) for t in state.values()):
        raise LaminaError(f"{file}: expected a dict of named tensors (Meta's consolidated format)")
    return state


def _unpickler_reason(e: pickle.UnpicklingError) -> str:
    """The line of torch's message that names what was refused, without its advice to turn the
    safety check off (lamina never does)."""
    _, _, after = str(e).partition("WeightsUnpickler error:")
    lines = [line.strip() for line in after.splitlines() if line.strip()]
    return lines[0].split(". ")[0] if lines else "torch.load(weights_only=True) refused it"


def read_meta(path: str | Path) -> Checkpoint:
    """`path` is the checkpoint folder, or its params.json or one of its .pth files."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    params_file = folder / "params.json"
    if not params_file.is_file():
        raise LaminaError(f"{params_file}: file not found (a Meta checkpoint needs params.json)")
    params = read_json(params_file)
    if not isinstance(params, dict):
        raise LaminaError(f"{params_file}: expected a JSON object of model parameters")
    files = sorted(folder.glob("consolidated.*.pth"))
    if not files:
        raise LaminaError(f"{folder}: no consolidated.*.pth files")
    shards = [_load_shard(f) for f in files]
    params = meta_llama4.model_params(params)
    if meta_llama4.is_llama4(params, shards[0]):
        return _read_llama4(params, params_file, shards)
    names = [n for n in shards[0] if n != "rope.freqs"]   # Llama 1/2 saved a buffer; recomputed
    for f, s in zip(files[1:], shards[1:]):
        if set(s) - {"rope.freqs"} != set(names):
            raise LaminaError(f"{f}: holds different tensors than {files[0].name}")
    if "tok_embeddings.weight" in names and shards[0]["tok_embeddings.weight"].dim() != 2:
        raise LaminaError(f"{files[0]}: tensor tok_embeddings.weight is not a matrix")
    dim = params.get("dim", 0)
    weights = {}
    for name in names:
        parts = [s[name] for s in shards]
        axis = _split_dim(name, parts[0], dim)
        try:
            weights[name] = parts[0] if axis is None or len(parts) == 1 else torch.cat(parts, axis)
        except RuntimeError:
            raise LaminaError(f"{folder}: the shards of tensor {name} do not fit together "
                              f"({', '.join(str(tuple(t.shape)) for t in parts)})") from None
    if "tok_embeddings.weight" not in weights:
        raise LaminaError(f"{files[0]}: missing tensor tok_embeddings.weight")
    config = config_from_params(params, weights["tok_embeddings.weight"].shape[0],
                                "output.weight" in weights, params_file)
    check_weights(config, weights, folder, "meta")   # before the permutation, which needs the right shapes
    return _checkpoint(config, weights, folder, params)


def _read_llama4(params: dict, params_file: Path, shards: list[dict[str, Tensor]]) -> Checkpoint:
    folder = params_file.parent
    try:
        meta_llama4.check_params(params)
        weights, vision = meta_llama4.unshard(params, shards, folder)
        if "tok_embeddings.weight" not in weights:
            raise LaminaError(f"{folder}: missing tensor tok_embeddings.weight")
        config = meta_llama4.config_from_params(params, weights["tok_embeddings.weight"].shape[0],
                                                "output.weight" in weights)
    except KeyError as e:
        raise LaminaError(f"{params_file}: missing field {e.args[0]}") from None
    except ValueError as e:
        raise config_error(e, params_file, _PARAMS_KEYS) from None
    check_weights(config, weights, folder, "meta")
    return _checkpoint(config, weights, folder, params, vision_tensors_left_out=vision)


def _checkpoint(config: ModelConfig, weights: dict[str, Tensor], folder: Path, params: dict, **extra) -> Checkpoint:
    """lamina's rows of the queries and keys (Meta's are RoPE pairs interleaved)."""
    weights = {name: qk_rows(config, name, t, to_halves=True) for name, t in weights.items()}
    dtypes = {str(t.dtype).removeprefix("torch."): len(weights) for t in list(weights.values())[:1]}
    return Checkpoint(config, weights, None, folder, "meta", dtypes, {"params": params, **extra})


def write_meta(dst: str | Path, config: ModelConfig, weights: dict[str, Tensor], *,
               shards: int = 1, dtype: torch.dtype = torch.bfloat16) -> Path:
    """Meta's layout, split over `shards` model-parallel files the way Meta's code splits them:
    Llama 4's for a model with its features (experts, iRoPE, the query/key L2 norm), else Llama 3's."""
    if config.mtp_depth:
        raise LaminaError("Meta's original layout holds no multi-token prediction modules; drop them "
                          "(`lamina convert --drop-mtp`): next-token inference never runs them")
    if _llama4_shaped(config):
        params = meta_llama4.params_from_config(config)
        parts = meta_llama4.shard(config, weights, shards, dtype, dst)
        return _write(dst, params, parts)
    if config.latent or config.qk_norm:
        raise LaminaError("Meta's original layout holds dense Llamas and Llama 4; write latent attention or "
                          "Qwen3's query/key norms in the Hugging Face layout")
    if config.rope_scaling is not None and config.rope_scaling.rope_type != "llama3":
        raise LaminaError("Meta's original layout holds llama3 RoPE scaling only; this model has YaRN")
    multiple_of = 256
    if llama_ffn_dim(config.dim, multiple_of) != config.ffn_dim:
        # params.json cannot say ffn_dim directly; express it through ffn_dim_multiplier
        multiple_of = 1
    params = {"dim": config.dim, "n_layers": config.n_layers, "n_heads": config.n_heads,
              "n_kv_heads": config.n_kv_heads, "vocab_size": config.vocab_size,
              "multiple_of": multiple_of, "norm_eps": config.norm_eps,
              "rope_theta": config.rope_theta, "max_seq_len": config.max_seq_len}
    if multiple_of == 1:
        params["ffn_dim_multiplier"] = _ffn_dim_multiplier(config.dim, config.ffn_dim)
    if config.head_dim != config.dim // config.n_heads:
        params["head_dim"] = config.head_dim   # lamina's key; Meta's code derives dim // n_heads
    if config.rope_scaling is not None:
        params.update(use_scaled_rope=True, rope_scaling_factor=config.rope_scaling.factor)
        for k in _EXTRA_SCALING_KEYS:
            if getattr(config.rope_scaling, k) != getattr(_META_SCALING, k):
                params[f"rope_scaling_{k}"] = getattr(config.rope_scaling, k)
    full = {name: qk_rows(config, name, t.detach().to(dtype), to_halves=False) for name, t in weights.items()}
    if config.tie_embeddings:
        full.pop("output.weight", None)
    axes = {name: _split_dim(name, t, config.dim) for name, t in full.items()}   # Llama 3 layout
    for name, axis in axes.items():
        if axis is not None and full[name].shape[axis] % shards:
            raise LaminaError(f"{dst}: tensor {name} {tuple(full[name].shape)} does not split "
                              f"into {shards} equal model-parallel shards")
    return _write(dst, params, [{name: t if axes[name] is None else t.chunk(shards, axes[name])[rank].clone()
                                 for name, t in full.items()} for rank in range(shards)])


def _llama4_shaped(c: ModelConfig) -> bool:
    return bool(c.n_experts or c.nope_every or c.qk_l2_norm or c.attention_chunk or c.attn_temperature)


def _write(dst: str | Path, params: dict, parts: list[dict[str, Tensor]]) -> Path:
    with atomic_directory(dst) as tmp:
        (tmp / "params.json").write_text(json.dumps(params, indent=2))
        for rank, part in enumerate(parts):
            torch.save(part, tmp / f"consolidated.{rank:02d}.pth")
    return Path(dst)


def _ffn_dim_multiplier(dim: int, ffn_dim: int) -> float:
    """The ffn_dim_multiplier for which Meta's `int(multiplier * hidden)` gives exactly ffn_dim
    (plain ffn_dim / hidden can land a hair below it and lose one unit)."""
    hidden = int(2 * 4 * dim / 3)
    multiplier = ffn_dim / hidden
    while int(multiplier * hidden) < ffn_dim:
        multiplier = math.nextafter(multiplier, math.inf)
    return multiplier
