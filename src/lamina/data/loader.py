"""Training batches from token shards: memory-mapped, so a corpus larger than memory costs only
the pages a batch touches. Training samples windows at random (seeded, so a resumed run that
restores the generator's state sees the same batches); evaluation walks each split once, in order."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import LaminaError
from .shards import open_shard, read_manifest


class TokenShards:
    """The shards of one split, read as (inputs, targets) windows of `seq_len` tokens."""

    def __init__(self, data_dir: str | Path, split: str = "train") -> None:
        names = sorted(n for n, s in read_manifest(data_dir)["shards"].items() if s["split"] == split)
        if not names:
            raise LaminaError(f"{data_dir}: no {split} shards; more documents or a larger validation_fraction gives some")
        self.names = names
        self.shards = [open_shard(data_dir, n) for n in names]
        self.tokens = sum(len(s) for s in self.shards)

    def random_batch(self, rng: np.random.Generator, batch_size: int, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
        """`batch_size` windows from uniformly random token positions; targets are inputs shifted by one."""
        return self.batch(self.random_windows(rng, batch_size, seq_len), seq_len)

    def random_windows(self, rng: np.random.Generator, batch_size: int, seq_len: int) -> list[tuple[int, int]]:
        """(shard index, start) of `batch_size` windows of seq_len + 1 tokens, uniform over positions."""
        usable = np.array([max(0, len(s) - seq_len) for s in self.shards], dtype=np.float64)   # window starts
        if usable.sum() == 0:
            raise LaminaError(f"every shard is shorter than seq_len + 1 = {seq_len + 1} tokens")
        which = rng.choice(len(self.shards), size=batch_size, p=usable / usable.sum())
        return [(int(i), int(rng.integers(0, usable[i]))) for i in which]

    def batch(self, windows: list[tuple[int, int]], seq_len: int) -> tuple[np.ndarray, np.ndarray]:
        """The (inputs, targets) of these windows, each (B, T)."""
        xy = np.stack([self._window(shard, start, seq_len) for shard, start in windows])   # (B, T + 1)
        return xy[:, :-1], xy[:, 1:]

    def sequential_batches(self, batch_size: int, seq_len: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Every whole window of every shard once, in order (a shard's tail shorter than a window is skipped)."""
        rows = (self._window(i, start, seq_len) for i, s in enumerate(self.shards)
                for start in range(0, len(s) - seq_len, seq_len))
        batch = []
        for row in rows:
            batch.append(row)
            if len(batch) == batch_size:
                xy = np.stack(batch)                                     # (B, T + 1)
                yield xy[:, :-1], xy[:, 1:]
                batch = []
        if batch:
            xy = np.stack(batch)
            yield xy[:, :-1], xy[:, 1:]

    def _window(self, shard: int, start: int, seq_len: int) -> np.ndarray:
        return np.asarray(self.shards[shard][start:start + seq_len + 1], dtype=np.int64)   # (T + 1,)
