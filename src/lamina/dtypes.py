"""Floating-point types by the names people type (`--dtype bf16`), on the ground floor: loading a
model to serve it and converting a checkpoint both take one."""

from __future__ import annotations

import torch

from .errors import LaminaError

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    try:
        return DTYPES[name]
    except KeyError:
        raise LaminaError(f"unknown dtype {name!r}; choose one of {', '.join(DTYPES)}") from None
