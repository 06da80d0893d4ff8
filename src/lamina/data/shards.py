"""Token shards: flat arrays of token ids on disk (uint16 when the vocabulary fits, else uint32),
each document preceded by BOS, memory-mapped for training. `manifest.json` names the dtype and
the shards; the ledger says which token range of each shard is which document."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import LaminaError

MANIFEST = "manifest.json"


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def write_shard(path: Path, docs: list[np.ndarray], dtype: np.dtype) -> list[tuple[int, int]]:
    """Write the documents (BOS already in front of each) back to back; their (start, end) ranges."""
    lengths = np.array([len(d) for d in docs], dtype=np.int64)
    ends = np.cumsum(lengths)
    with open(path, "wb") as f:    # not ndarray.tofile: its failed writes lose errno (disk full), small ones even pass
        f.write(np.concatenate(docs).astype(dtype, copy=False).data)
    return list(zip((ends - lengths).tolist(), ends.tolist()))


def read_manifest(data_dir: str | Path) -> dict:
    path = Path(data_dir) / MANIFEST
    if not path.is_file():
        raise LaminaError(f"{data_dir}: no {MANIFEST}; is this a corpus built by `lamina data build`?")
    return json.loads(path.read_text())


def open_shard(data_dir: str | Path, name: str) -> np.memmap:
    """A shard as a read-only memory map of token ids."""
    manifest = read_manifest(data_dir)
    if name not in manifest["shards"]:
        raise LaminaError(f"{name}: not a shard of {data_dir}; it has {', '.join(manifest['shards']) or 'none'}")
    return np.memmap(Path(data_dir) / name, dtype=np.dtype(manifest["dtype"]), mode="r")


def tokenizer_ref(data_dir: str | Path) -> str:
    """The tokenizer a corpus was cut with: its own tokenizer/ folder when the build trained one,
    else the packaged name or path it was given."""
    ref = read_manifest(data_dir)["tokenizer"]
    local = Path(data_dir) / ref
    return str(local) if local.exists() else ref
