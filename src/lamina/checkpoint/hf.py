"""Hugging Face model directories, lamina's native format: config.json (LlamaConfig fields),
model.safetensors or shards with model.safetensors.index.json, tokenizer files, and lamina.json."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from .. import __version__
from ..errors import LaminaError
from ..model import ModelConfig, RopeScaling
from ..tokenizer import Tokenizer
from .base import Checkpoint, check_weights
from .files import atomic_directory, sha256
from .layout import from_lamina, to_lamina

INDEX = "model.safetensors.index.json"


def config_from_hf(d: dict, where: Path | str = "config.json") -> ModelConfig:
    if not isinstance(d, dict):
        raise LaminaError(f"{where}: expected a JSON object of LlamaConfig fields")
    archs = d.get("architectures") or []
    if d.get("model_type") != "llama" and "LlamaForCausalLM" not in archs:
        found = ", ".join(archs) or d.get("model_type") or "none stated"
        raise LaminaError(f"{where}: architecture {found} is not supported (lamina runs LlamaForCausalLM)")
    if d.get("attention_bias") or d.get("mlp_bias"):
        raise LaminaError(f"{where}: Llama variants with biases are not supported")
    rope = dict(d.get("rope_parameters") or d.get("rope_scaling") or {})   # transformers 5 / 4
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", "llama3"):
        raise LaminaError(f"{where}: RoPE scaling {rope_type!r} is not supported (default, llama3)")
    scaling = None
    if rope_type == "llama3":
        scaling = RopeScaling(factor=rope["factor"], low_freq_factor=rope["low_freq_factor"],
                              high_freq_factor=rope["high_freq_factor"],
                              original_max_position_embeddings=rope["original_max_position_embeddings"])
    try:
        return ModelConfig(
            dim=d["hidden_size"], n_layers=d["num_hidden_layers"], n_heads=d["num_attention_heads"],
            n_kv_heads=d.get("num_key_value_heads") or 0, head_dim=d.get("head_dim") or 0,
            ffn_dim=d["intermediate_size"], vocab_size=d["vocab_size"],
            norm_eps=d.get("rms_norm_eps", 1e-6),
            rope_theta=rope.get("rope_theta", d.get("rope_theta", 10000.0)), rope_scaling=scaling,
            max_seq_len=d.get("max_position_embeddings", 2048),
            tie_embeddings=d.get("tie_word_embeddings", False),
            bos_token_id=d.get("bos_token_id"), eos_token_id=d.get("eos_token_id"))
    except KeyError as e:
        raise LaminaError(f"{where}: missing field {e.args[0]}") from None
    except ValueError as e:
        raise LaminaError(f"{where}: {e}") from None


def config_to_hf(c: ModelConfig, dtype: torch.dtype) -> dict:
    eos = list(c.eos_token_ids) if len(c.eos_token_ids) > 1 else c.eos_token_id
    scaling = None if c.rope_scaling is None else {
        "rope_type": "llama3", "factor": c.rope_scaling.factor,
        "low_freq_factor": c.rope_scaling.low_freq_factor,
        "high_freq_factor": c.rope_scaling.high_freq_factor,
        "original_max_position_embeddings": c.rope_scaling.original_max_position_embeddings}
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
    }


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise LaminaError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LaminaError(f"{path}: not valid JSON ({e})") from None


def read_hf(path: str | Path) -> Checkpoint:
    path = Path(path)
    config = config_from_hf(_read_json(path / "config.json"), path / "config.json")
    if (path / INDEX).is_file():
        weight_map = _read_json(path / INDEX).get("weight_map") or {}
        files = sorted(set(weight_map.values()))
    else:
        files = ["model.safetensors"]
    weights: dict[str, Tensor] = {}
    dtypes: Counter = Counter()
    for name in files:
        file = path / name
        if not file.is_file():
            raise LaminaError(f"{file}: file not found")
        try:
            with safe_open(file, "pt") as f:
                for key in f.keys():
                    ours = to_lamina(key, "hf")
                    if ours is None:
                        if key.endswith("rotary_emb.inv_freq"):
                            continue   # a buffer older exporters saved; recomputed from config
                        raise LaminaError(f"{file}: unexpected tensor {key}")
                    weights[ours] = f.get_tensor(key)
                    dtypes[str(weights[ours].dtype).removeprefix("torch.")] += 1
        except LaminaError:
            raise
        except Exception as e:   # safetensors' own errors: truncated, bad header, ...
            raise LaminaError(f"{file}: not a readable safetensors file ({e})") from None
    check_weights(config, weights, path, "hf")
    tokenizer = Tokenizer.from_dir(path) if (path / "tokenizer.json").is_file() else None
    meta = _read_json(path / "lamina.json") if (path / "lamina.json").is_file() else {}
    return Checkpoint(config, weights, tokenizer, path, "hf", dict(dtypes), meta)


def write_hf(dst: str | Path, config: ModelConfig, weights: dict[str, Tensor],
             tokenizer: Tokenizer | None = None, *, dtype: torch.dtype | None = None,
             max_shard_bytes: int = 4 << 30, made_by: dict | None = None) -> Path:
    """Write a model directory that transformers, vLLM and llama.cpp's converter read as is.
    The directory appears whole or not at all."""
    with atomic_directory(dst) as tmp:
        write_hf_files(tmp, config, weights, tokenizer, dtype=dtype, max_shard_bytes=max_shard_bytes,
                       made_by=made_by)
    return Path(dst)


def write_hf_files(folder: Path, config: ModelConfig, weights: dict[str, Tensor],
                   tokenizer: Tokenizer | None = None, *, dtype: torch.dtype | None = None,
                   max_shard_bytes: int = 4 << 30, made_by: dict | None = None) -> None:
    """The files of a model directory, into an existing (temporary) folder; lamina.json last,
    with the hashes of everything before it."""
    dtype = dtype or next(iter(weights.values())).dtype
    tensors = {from_lamina(k, "hf"): v.to(dtype).contiguous() for k, v in weights.items()
               if not (config.tie_embeddings and k == "output.weight")}
    shards: list[dict[str, Tensor]] = [{}]
    size = 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    (folder / "config.json").write_text(json.dumps(config_to_hf(config, dtype), indent=2))
    gen = {"bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id,
           "do_sample": False}
    (folder / "generation_config.json").write_text(json.dumps(gen, indent=2))
    if len(shards) == 1:
        save_file(shards[0], folder / "model.safetensors", metadata={"format": "pt"})
    else:
        weight_map = {}
        for n, shard in enumerate(shards, 1):
            name = f"model-{n:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, folder / name, metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(shard, name))
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        (folder / INDEX).write_text(json.dumps(
            {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    if tokenizer is not None:
        tokenizer.save(folder)
    files = {f.name: sha256(f) for f in sorted(folder.iterdir()) if f.is_file()}
    record = {"lamina_version": __version__, "made_by": made_by or {}, "files": files}
    (folder / "lamina.json").write_text(json.dumps(record, indent=2))
