"""What every checkpoint reader returns: the architecture, the weights under lamina's names and
layout, and the tokenizer when the format carries one."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from torch import Tensor

from ..errors import LaminaError
from ..model import ModelConfig, first_mismatch
from ..model.config import FieldError
from ..tokenizer import Tokenizer
from .layout import from_lamina, from_mtp


@dataclass
class Checkpoint:
    config: ModelConfig
    weights: dict[str, Tensor]          # lamina names, RoPE halves layout, no tied copy
    tokenizer: Tokenizer | None
    path: Path
    format: str                         # "hf", "gguf" or "meta"
    dtypes: dict[str, int] = field(default_factory=dict)   # stored dtype/quantization -> count
    metadata: dict = field(default_factory=dict)           # lamina.json, GGUF general.*, ...
    # GGUF's Q8_0/Q4_0/Q4_1 tensors as stored (gguf.Blocks, read on demand by gguf.block_codes):
    # `lamina.load(quantize=...)` takes their codes as they are instead of rounding the floats again
    blocks: dict = field(default_factory=dict)


_IMPLIED_BY = {"hf": "config.json", "gguf": "the GGUF metadata", "meta": "params.json"}
_LAYER = re.compile(r"layers\.(\d+)\.")


def read_json(path: Path):
    """A JSON file's value; a missing, undecodable or absurdly nested file is one clear line."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise LaminaError(f"{path}: file not found") from None
    except ValueError as e:   # JSONDecodeError, UnicodeDecodeError, an integer of 5,000 digits
        raise LaminaError(f"{path}: not valid JSON ({e})") from None
    except RecursionError:
        raise LaminaError(f"{path}: not valid JSON (nested too deeply)") from None


def null_as_zero(value):
    """A null head count or head_dim means "derive it", which ModelConfig spells 0."""
    return 0 if value is None else value


def config_error(e: ValueError, where: Path, names: dict[str, str] | None = None) -> LaminaError:
    """A ModelConfig refusal as one line naming the file and, for a field, the key the file uses."""
    if isinstance(e, FieldError) and names:
        key = names.get(e.field, e.field)
        return LaminaError(f"{where}: {key} {e.problem}")
    return LaminaError(f"{where}: {e}")


def check_sizes(config: ModelConfig, weights: dict[str, Tensor], where: Path,
                fmt: str | None = None) -> None:
    """Refuse a config that asks for more than the files hold, before anything is built from
    it: building the expected shapes costs Python objects per layer, so a million layers in a
    config file would otherwise run the machine out of memory rather than fail."""
    layers = len({m.group(1) for name in weights if (m := _LAYER.match(name))})
    implied_by = _IMPLIED_BY.get(fmt, "the config")
    if config.n_layers > layers:
        raise LaminaError(f"{where}: {implied_by} asks for {config.n_layers:,} layers but the "
                          f"weights hold {layers}")
    # Every expected tensor is dim wide on one side; none can hold more than all the weights
    # together, which also keeps the expected sizes far from overflowing int64.
    total = sum(t.numel() for t in weights.values())
    widths = {"vocab_size": config.vocab_size, "ffn_dim": config.ffn_dim,
              "n_heads * head_dim": config.n_heads * config.head_dim,
              "n_kv_heads * head_dim": config.n_kv_heads * config.head_dim}
    for what, width in widths.items():
        if config.dim * width > total:
            raise LaminaError(f"{where}: {implied_by} implies a tensor of {config.dim:,} x "
                              f"{width:,} (dim x {what}), more than the {total:,} values in the weights")


def check_weights(config: ModelConfig, weights: dict[str, Tensor], where: Path,
                  fmt: str | None = None) -> None:
    """One clear line for the first tensor that does not fit the config, naming the tensor as
    the file names it when `fmt` ("hf", "gguf") says how. Drops a tied copy of the embeddings.
    `weights` may hold tensors on the meta device: only their shapes are read."""
    if config.tie_embeddings:
        weights.pop("output.weight", None)
    check_sizes(config, weights, where, fmt)
    mismatch = first_mismatch(config, weights)
    if mismatch is None:
        return
    name, got, want = mismatch
    try:
        shown = from_lamina(from_mtp(name, config.n_layers), fmt, "llama") if fmt in ("hf", "gguf") else name
    except KeyError:        # a name only another layout has
        shown = name
    implied_by = _IMPLIED_BY.get(fmt, "the config")
    if got is None:
        raise LaminaError(f"{where}: missing tensor {shown}")
    if want is None:
        raise LaminaError(f"{where}: tensor {shown} does not belong to this architecture")
    raise LaminaError(f"{where}: tensor {shown} has shape {got} but {implied_by} implies {want}")
