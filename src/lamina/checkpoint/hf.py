"""Hugging Face model directories, lamina's native format: config.json (LlamaConfig fields, or
another family's: `hf_config.py`), model.safetensors or shards with model.safetensors.index.json,
tokenizer files, and lamina.json."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from ..errors import LaminaError
from ..files import atomic_directory, sha256
from ..model import ModelConfig
from ..tokenizer import Tokenizer
from ..version import __version__
from .base import Checkpoint, check_weights, read_json
from .hf_config import config_from_hf, config_to_hf, hf_layout, multimodal_llama4
from .layout import MTP_COPIES, from_lamina, from_mtp, latent_rope_rows, qk_rows, split_name, to_mtp

INDEX = "model.safetensors.index.json"
VISION_PREFIXES = ("vision_model.", "multi_modal_projector.")   # a multimodal Llama 4's, left out


def _weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a model directory: the ones its index names, or model.safetensors.
    A name that leaves the directory (absolute, `..`) is refused before anything opens it: an
    index from elsewhere must not make lamina read /etc/passwd. A file of the directory that is a
    link is read where it points, as a Hugging Face cache snapshot's links into its blob store are:
    whoever made the directory chose those links, while the index's names are only text."""
    if not (folder / INDEX).is_file():
        names = ["model.safetensors"]
    else:
        index = read_json(folder / INDEX)
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise LaminaError(f"{folder / INDEX}: weight_map must be an object of tensor name -> file name")
        names = sorted(set(weight_map.values()))
    files = []
    for name in names:
        file = folder / name
        if "\0" in name or Path(name).is_absolute() or ".." in Path(name).parts:
            raise LaminaError(f"{folder}: weight file {repr(name)[:60]} lies outside the model "
                              "directory; refused")
        files.append(file)
    return files


def read_hf(path: str | Path) -> Checkpoint:
    path = Path(path)
    raw = read_json(path / "config.json")
    config = config_from_hf(raw, path / "config.json")
    multimodal = isinstance(raw, dict) and multimodal_llama4(raw)
    weights: dict[str, Tensor] = {}
    experts: dict[str, dict[int, Tensor]] = {}      # a stacked lamina tensor's experts, by index
    dtypes: Counter = Counter()
    for file in _weight_files(path):
        if not file.is_file():
            raise LaminaError(f"{file}: file not found")
        try:
            with safe_open(file, "pt") as f:
                for key in f.keys():
                    if multimodal:
                        if key.startswith(VISION_PREFIXES):
                            continue
                        key_name = key.removeprefix("language_model.")
                    else:
                        key_name = key
                    ours, expert = split_name(key_name, "hf")
                    if ours is None:
                        if key.endswith("rotary_emb.inv_freq"):
                            continue   # a buffer older exporters saved; recomputed from config
                        raise LaminaError(f"{file}: unexpected tensor {key}")
                    tensor = f.get_tensor(key)
                    if expert is None:
                        weights[ours] = tensor
                    else:
                        experts.setdefault(ours, {})[expert] = tensor
                    dtypes[str(tensor.dtype).removeprefix("torch.")] += 1
        except LaminaError:
            raise
        except Exception as e:   # safetensors' own errors: truncated, bad header, ...
            raise LaminaError(f"{file}: not a readable safetensors file ({e})") from None
    weights |= _stack_experts(experts, config.n_experts, path)
    if config.latent:
        weights = {k: latent_rope_rows(config, k, v, to_halves=True) for k, v in weights.items()}
    if hf_layout(config) == "llama4":
        weights = _llama4_tensors(config, weights, to_hf=False)
    config, weights = _mtp_from_hf(config, weights)
    check_weights(config, weights, path, "hf")
    tokenizer = Tokenizer.from_dir(path) if (path / "tokenizer.json").is_file() else None
    meta = read_json(path / "lamina.json") if (path / "lamina.json").is_file() else {}
    if not isinstance(meta, dict):
        raise LaminaError(f"{path / 'lamina.json'}: expected a JSON object")
    return Checkpoint(config, weights, tokenizer, path, "hf", dict(dtypes), meta)


def _mtp_from_hf(config: ModelConfig, weights: dict[str, Tensor]) -> tuple[ModelConfig, dict[str, Tensor]]:
    """The layers past the last as multi-token prediction modules (DeepSeek-V3's way, in every
    layout), their copies of the embedding and output head dropped (lamina's modules share the
    model's). transformers drops
    the modules when it loads and keeps `num_nextn_predict_layers` in the config it saves: a
    checkpoint without their tensors has none."""
    if not config.mtp_depth:
        return config, weights
    if not any(k.startswith(f"layers.{config.n_layers}.") for k in weights):
        return config.replace(mtp_depth=0), weights
    weights = {to_mtp(k, config.n_layers): v for k, v in weights.items()}
    return config, {k: v for k, v in weights.items() if k.rpartition(".")[2] not in MTP_COPIES}


def _llama4_tensors(config: ModelConfig, weights: dict[str, Tensor], to_hf: bool) -> dict[str, Tensor]:
    """Llama 4's tensors to lamina's or back: its experts fused (gate and up side by side, E x dim
    x 2F; down, E x F x dim) against lamina's three (E, F, dim) and (E, dim, F); and the query
    and key rows, which it rotates in interleaved pairs (complex RoPE) like Meta's checkpoints."""
    out = {}
    for k, v in weights.items():
        if k.endswith("experts.gate_up") and not to_hf:
            w1, w3 = v.chunk(2, dim=-1)
            out[k.replace("gate_up", "w1")], out[k.replace("gate_up", "w3")] = w1.transpose(1, 2), w3.transpose(1, 2)
        elif k.endswith("experts.down") and not to_hf:
            out[k.replace("down", "w2")] = v.transpose(1, 2)
        elif k.endswith("experts.w1") and to_hf:
            out[k.replace("w1", "gate_up")] = torch.cat((v, weights[k.replace("w1", "w3")]), dim=1).transpose(1, 2)
        elif k.endswith("experts.w2") and to_hf:
            out[k.replace("w2", "down")] = v.transpose(1, 2)
        elif k.endswith("experts.w3") and to_hf:
            continue
        else:
            out[k] = qk_rows(config, k, v, to_halves=not to_hf)
    return out


def _stack_experts(experts: dict[str, dict[int, Tensor]], n: int, path: Path) -> dict[str, Tensor]:
    """Each layer's per-expert tensors as one (n, ...) tensor, or LaminaError naming a missing expert."""
    stacked = {}
    for name, parts in experts.items():
        missing = sorted(set(range(n)) - set(parts))
        if missing or len(parts) != n:
            which = f"expert {missing[0]}" if missing else f"{len(parts)} experts where the config has {n}"
            raise LaminaError(f"{path}: {from_lamina(name, 'hf').replace('{e}', '*')} lacks {which}")
        stacked[name] = torch.stack([parts[e] for e in range(n)])
    return stacked



def _hf_tensors(config: ModelConfig, weights: dict[str, Tensor], dtype: torch.dtype) -> dict[str, Tensor]:
    """lamina's tensors under their Hugging Face names; a stacked experts tensor as one per expert."""
    layout = hf_layout(config)
    weights = dict(weights)
    weights = {from_mtp(k, config.n_layers): v for k, v in weights.items()}
    blocks = range(config.n_layers, config.n_layers + config.mtp_depth)
    weights |= {f"layers.{i}.{copy}": weights.get(ours, weights["tok_embeddings.weight"]).clone()   # tied: the embedding
                for i in blocks for copy, ours in MTP_COPIES.items()}
    if layout == "llama4":
        weights = _llama4_tensors(config, weights, to_hf=True)
    if layout.startswith("deepseek"):
        weights = {k: latent_rope_rows(config, k, v, to_halves=False) for k, v in weights.items()}
    if layout == "deepseek_v3":
        if config.n_experts and not config.expert_bias:     # DeepSeek-V3 always has the bias: a zero one
            weights |= {f"layers.{i}.feed_forward.expert_bias": torch.zeros(config.n_experts)
                        for i in range(config.dense_layers, config.n_layers + config.mtp_depth)}
    out = {}
    for k, v in weights.items():
        if config.tie_embeddings and k == "output.weight":
            continue
        name = from_lamina(k, "hf", layout)
        if "{e}" in name:
            out.update({name.replace("{e}", str(e)): t.to(dtype).contiguous() for e, t in enumerate(v)})
        else:
            out[name] = v.to(dtype).contiguous()
    return out


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
    hf_config = config_to_hf(config, dtype)            # a config no layout holds fails before any tensor moves
    tensors = _hf_tensors(config, weights, dtype)
    shards: list[dict[str, Tensor]] = [{}]
    size = 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    (folder / "config.json").write_text(json.dumps(hf_config, indent=2))
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
