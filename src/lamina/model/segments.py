"""Attention over packed rows, one sequence at a time ("varlen" attention without a varlen kernel).

A packed row holds several sequences that must not see each other. A block-diagonal mask says so,
but attention under it still costs the whole row squared: a row of 1024 holding eight chats of
128 computes 8x the attention the chats need, and a dense mask keeps SDPA off its causal fast
path (on CPU and on GPUs alike). `Segments` instead gathers each sequence's queries, keys and
values into a batch of its own (sequences of like length together, right-padded), runs plain
causal attention there, and scatters the results back: the attention costs what the sequences
cost, and everything else in the model (projections, feed-forward, norms) still runs on the
dense packed rows. Right padding is safe under a causal mask: a real query never sees a later
key, and padded queries are dropped. Positions outside every sequence (row padding) get zeros.

A sequence may also continue a shared prefix held once in the batch (`Sequence.prefix`): GRPO's
completions of one prompt attend to a single copy of it, so the prompt's tokens run through the
model once per group instead of once per completion, with the same result."""

from __future__ import annotations

from collections.abc import Sequence as Seq
from dataclasses import dataclass

import torch
from torch import Tensor

from .layers import attend

# Sequences are grouped by their length rounded up to a power of two, no shorter than this: a
# group's padding is less than its own length, and a row of short chats is one or two groups.
MIN_GROUP_LEN = 64


@dataclass(frozen=True)
class Sequence:
    """Flat (B*T) positions: the sequence's own tokens (its queries, in order), after the keys of a
    `prefix` it continues but does not compute (positions another sequence holds)."""
    own: range
    prefix: range = range(0)


@dataclass(frozen=True)
class Group:
    queries: Tensor   # (G, Lq) long: the flat position of each sequence's own tokens, 0 past the end
    keys: Tensor      # (G, Lk) long: of its prefix then its own tokens (the same as queries without prefixes)
    mask: Tensor | None   # (G, 1, Lq, Lk) bool where a prefix shifts the causal diagonal, else None
    kept: Tensor      # (M,) long: the real entries of queries, flattened over (G*Lq)
    target: Tensor    # (M,) long: their flat positions (queries at `kept`)


@dataclass(frozen=True)
class Segments:
    """Where the sequences of a packed (B, T) batch lie; built once per batch, used by every layer."""
    groups: tuple[Group, ...]

    @classmethod
    def from_ids(cls, segments: Tensor) -> Segments:
        """From (B, T) sequence ids: each row's sequences are numbered from 0 and contiguous,
        -1 marks row padding (the layout `lamina.post.packing.pack` writes)."""
        T = segments.shape[1]
        sequences, at = [], 0
        for value, run in zip(*torch.unique_consecutive(segments.flatten().cpu(), return_counts=True)):
            if value >= 0:
                # a run crossing a row boundary is two sequences (the next row starts at 0 again)
                begin, end = at, at + int(run)
                while begin < end:
                    stop = min(end, (begin // T + 1) * T)
                    sequences.append(Sequence(range(begin, stop)))
                    begin = stop
            at += int(run)
        return cls.of(sequences, segments.device)

    @classmethod
    def of(cls, sequences: Seq[Sequence], device: torch.device | str = "cpu") -> Segments:
        """From the sequences themselves (each at least one own token; every flat position the own
        token of one sequence at most)."""
        buckets: dict[int, list[Sequence]] = {}
        for s in sequences:
            n = len(s.prefix) + len(s.own)
            buckets.setdefault(max(MIN_GROUP_LEN, 1 << (n - 1).bit_length()), []).append(s)
        groups = []
        for _, members in sorted(buckets.items()):
            groups.append(_group(members, device))
        return cls(tuple(groups))

    def attend(self, q: Tensor, k: Tensor, v: Tensor, enable_gqa: bool = False, scale: float | None = None) -> Tensor:
        """Causal attention within each sequence: q, k (B, H or KV, T, D), v (B, KV, T, Dv) -> (B, H, T, Dv)."""
        B, H, T, _ = q.shape
        Dv = v.shape[-1]
        flat = [t.transpose(1, 2).reshape(B * T, t.shape[1], t.shape[-1]) for t in (q, k, v)]   # (B*T, heads, *)
        out = q.new_zeros(B * T, H, Dv)
        for g in self.groups:
            qg = flat[0][g.queries].transpose(1, 2)                                         # (G, H, Lq, D)
            kg, vg = (t[g.keys].transpose(1, 2) for t in flat[1:])                          # (G, KV, Lk, D)
            y = attend(qg, kg, vg, g.mask, scale, enable_gqa)
            out = out.index_copy(0, g.target, y.transpose(1, 2).flatten(0, 1).index_select(0, g.kept))
        return out.view(B, T, H, Dv).transpose(1, 2)


def _group(members: list[Sequence], device) -> Group:
    Lq = max(len(s.own) for s in members)
    Lk = max(len(s.prefix) + len(s.own) for s in members)
    queries = torch.zeros(len(members), Lq, dtype=torch.long)
    keys = torch.zeros(len(members), Lk, dtype=torch.long)
    real = torch.zeros(len(members), Lq, dtype=torch.bool)
    for i, s in enumerate(members):
        queries[i, :len(s.own)] = torch.tensor(s.own)
        keys[i, :len(s.prefix) + len(s.own)] = torch.tensor([*s.prefix, *s.own])
        real[i, :len(s.own)] = True
    mask = None
    if any(s.prefix for s in members):
        # query j of a sequence with a prefix of p sees keys up to p + j (its own j-th token); padded
        # queries see every key, so no row of the softmax is empty
        shift = torch.tensor([len(s.prefix) for s in members])[:, None, None]
        mask = (torch.arange(Lk)[None, None, :] <= torch.arange(Lq)[None, :, None] + shift)[:, None]
    kept = real.flatten().nonzero().squeeze(1)
    return Group(queries.to(device), keys.to(device), None if mask is None else mask.to(device),
                 kept.to(device), queries.flatten()[kept].to(device))
