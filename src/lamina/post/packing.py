"""Packing: several conversations to a row of `seq_len` tokens, none of them seeing another.

Padding every conversation to the longest wastes most of a batch on short chats; packing fills
each row, but plain concatenation would let a conversation attend to the one before it and start
its positions where that one ended. Here each conversation keeps its own world: its positions
restart at 0, attention is causal within it and never across it (`lamina.model.segments`: each
conversation attends on its own, at its own length's cost, not the row's), and no target crosses
a boundary. So a packed row computes the same losses as its conversations one at a time. Rows
are filled best-fit in an order drawn per epoch from the seed."""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..model.loss import IGNORE_INDEX
from ..model.segments import Segments
from .chat_data import Tokenized


@dataclass(frozen=True)
class Packed:
    """A batch of packed rows, ready for `Transformer.forward(tokens, positions, mask=mask, targets=targets)`."""
    tokens: Tensor          # (B, T) long: inputs, padding after the last conversation
    targets: Tensor         # (B, T) long: the next token where the assistant said it, else IGNORE_INDEX
    positions: Tensor       # (B, T) long: from 0 in every conversation
    segments: Tensor        # (B, T) long: which conversation of the row (-1 for padding)

    def to(self, device: torch.device) -> Packed:
        return Packed(*(t.to(device) for t in (self.tokens, self.targets, self.positions, self.segments)))

    @property
    def mask(self) -> Segments:
        """The attention layout: causal within each conversation, nothing across."""
        return Segments.from_ids(self.segments)

    @property
    def trained(self) -> int:
        """Targets that count in the loss."""
        return int((self.targets != IGNORE_INDEX).sum())

    @property
    def real(self) -> int:
        """Input tokens that are not padding."""
        return int((self.segments >= 0).sum())


def length(example: Tokenized) -> int:
    """Row positions a conversation takes: its ids but the last, which is only ever a target."""
    return len(example.ids) - 1


def fill_rows(lengths: Sequence[int], seq_len: int, order: Sequence[int]) -> list[list[int]]:
    """Indices of conversations per row, taken in `order`, each into the fullest row that still
    has room for it (best fit), else a new row. Every length must be at most `seq_len`."""
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []             # (room left, row), sorted
    for i in order:
        n = lengths[i]
        at = bisect.bisect_left(free, (n, -1))
        if at < len(free):
            room, row = free.pop(at)
        else:
            room, row = seq_len, len(rows)
            rows.append([])
        rows[row].append(int(i))
        if room - n > 0:
            bisect.insort(free, (room - n, row))
    return rows


def epoch_rows(examples: Sequence[Tokenized], seq_len: int, seed: int, epoch: int) -> list[list[int]]:
    """The rows of one pass over the examples, in an order drawn from (seed, epoch) alone, so
    that a resumed run packs exactly as one that never stopped."""
    order = np.random.default_rng([seed, epoch]).permutation(len(examples))
    return fill_rows([length(e) for e in examples], seq_len, order)


def pack(rows: Sequence[Sequence[Tokenized]], seq_len: int, pad_id: int = 0) -> Packed:
    """Rows of conversations -> one batch of `seq_len` columns."""
    B = len(rows)
    tokens = np.full((B, seq_len), pad_id, dtype=np.int64)
    targets = np.full((B, seq_len), IGNORE_INDEX, dtype=np.int64)
    positions = np.zeros((B, seq_len), dtype=np.int64)
    segments = np.full((B, seq_len), -1, dtype=np.int64)
    for b, row in enumerate(rows):
        at = 0
        for s, ex in enumerate(row):
            n = length(ex)
            if at + n > seq_len:
                raise ValueError(f"conversations of {at + n} positions do not fit a row of {seq_len}")
            ids, trained = np.asarray(ex.ids), np.asarray(ex.assistant, dtype=bool)
            tokens[b, at:at + n] = ids[:-1]
            targets[b, at:at + n] = np.where(trained[1:], ids[1:], IGNORE_INDEX)
            positions[b, at:at + n] = np.arange(n)
            segments[b, at:at + n] = s
            at += n
        positions[b, at:] = np.arange(seq_len - at)
    return Packed(*(torch.from_numpy(a) for a in (tokens, targets, positions, segments)))
