"""What every checkpoint reader returns: the architecture, the weights under lamina's names and
layout, and the tokenizer when the format carries one."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from torch import Tensor

from ..errors import LaminaError
from ..model import ModelConfig, first_mismatch
from ..tokenizer import Tokenizer
from .layout import from_lamina


@dataclass
class Checkpoint:
    config: ModelConfig
    weights: dict[str, Tensor]          # lamina names, RoPE halves layout, no tied copy
    tokenizer: Tokenizer | None
    path: Path
    format: str                         # "hf", "gguf" or "meta"
    dtypes: dict[str, int] = field(default_factory=dict)   # stored dtype/quantization -> count
    metadata: dict = field(default_factory=dict)           # lamina.json, GGUF general.*, ...


def check_weights(config: ModelConfig, weights: dict[str, Tensor], where: Path,
                  fmt: str | None = None) -> None:
    """One clear line for the first tensor that does not fit the config, naming the tensor as
    the file names it when `fmt` ("hf", "gguf") says how. Drops a tied copy of the embeddings."""
    if config.tie_embeddings:
        weights.pop("output.weight", None)
    mismatch = first_mismatch(config, weights)
    if mismatch is None:
        return
    name, got, want = mismatch
    shown = from_lamina(name, fmt) if fmt in ("hf", "gguf") else name
    implied_by = {"hf": "config.json", "gguf": "the GGUF metadata",
                  "meta": "params.json"}.get(fmt, "the config")
    if got is None:
        raise LaminaError(f"{where}: missing tensor {shown}")
    if want is None:
        raise LaminaError(f"{where}: tensor {shown} does not belong to this architecture")
    raise LaminaError(f"{where}: tensor {shown} has shape {got} but {implied_by} implies {want}")
