"""What every checkpoint reader returns: the architecture, the weights under lamina's names and
layout, and the tokenizer when the format carries one."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from torch import Tensor

from ..model import ModelConfig
from ..tokenizer import Tokenizer


@dataclass
class Checkpoint:
    config: ModelConfig
    weights: dict[str, Tensor]          # lamina names, RoPE halves layout, no tied copy
    tokenizer: Tokenizer | None
    path: Path
    format: str                         # "hf", "gguf" or "meta"
    dtypes: dict[str, int] = field(default_factory=dict)   # stored dtype/quantization -> count
    metadata: dict = field(default_factory=dict)           # lamina.json, GGUF general.*, ...
