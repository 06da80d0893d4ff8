"""Preallocated key/value caches, written in place, so a decode step has static shapes (what
`torch.compile` needs) and never reallocates.

`KVCache` holds one batch that advances together: every row writes the same cache positions.
`SlotCache` holds `n_slots` independent sequences for continuous batching: each row writes at its
own positions, a request prefills into a free slot while others decode, and a finished request's
slot is reused. Both answer `update(layer_id, k, v, slots)` with the layer's cache to attend over."""

from __future__ import annotations

import torch
from torch import Tensor

from .config import ModelConfig


def cached_dims(config: ModelConfig, expanded: bool = False) -> tuple[tuple[int, int], tuple[int, int]]:
    """(heads, channels) of what a layer caches per token, as "k" and "v": the keys and values of
    grouped-query attention, or, for latent attention, the normed latent and the rotated RoPE key,
    each one shared by every head (the up-projections are absorbed at attention time); or, when
    `expanded`, latent attention's keys and values expanded per head, the naive cache that the
    latent one is measured against (bench/moe.py)."""
    if config.latent and expanded:
        return (config.n_heads, config.head_dim), (config.n_heads, config.v_head_dim)
    if config.latent:
        return (1, config.kv_lora_rank), (1, config.qk_rope_head_dim)
    return (config.n_kv_heads, config.head_dim), (config.n_kv_heads, config.head_dim)


def _layers(config: ModelConfig, rows: int, max_len: int, dtype, device, layers: int | None = None,
            expanded: bool = False) -> tuple[list[Tensor], list[Tensor]]:
    # One tensor per layer rather than one stacked buffer: under torch.compile an in-place write
    # into a view of a shared buffer makes inductor copy the whole buffer every step.
    return tuple([torch.zeros((rows, heads, max_len, dim), dtype=dtype, device=device)
                  for _ in range(layers or config.n_layers)] for heads, dim in cached_dims(config, expanded))


class KVCache:
    """`layers` defaults to the model's; self-speculative decoding adds its multi-token prediction
    modules (n_layers + mtp_depth). `expanded`: latent attention's naive cache (`cached_dims`)."""

    def __init__(self, config: ModelConfig, batch_size: int, max_len: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu", layers: int | None = None,
                 expanded: bool = False):
        self.expanded = expanded and config.latent
        self.k, self.v = _layers(config, batch_size, max_len, dtype, device, layers, expanded)

    @property
    def max_len(self) -> int:
        return self.k[0].shape[2]

    def update(self, layer_id: int, k: Tensor, v: Tensor, slots: Tensor) -> tuple[Tensor, Tensor]:
        """Write k, v (B, KV, T, D) at cache positions `slots` (T,); return the layer's whole
        cache, (B, KV, S, D). Unwritten slots must be masked out by the caller."""
        k_cache, v_cache = self.k[layer_id], self.v[layer_id]
        k_cache.index_copy_(2, slots, k)
        v_cache.index_copy_(2, slots, v)
        return k_cache, v_cache

    def take_rows(self, rows: Tensor) -> None:
        """Make the cache's row b a copy of its row rows[b] (it then holds len(rows) rows): a prompt
        prefilled once, then continued by several rows."""
        self.k = [t.index_select(0, rows) for t in self.k]
        self.v = [t.index_select(0, rows) for t in self.v]


class SlotCache:
    """`n_slots` sequences of up to `max_len` tokens each, (n_slots, KV, max_len, D) per layer.

    `update` writes a batch of B rows into slots 0..B-1, each row at its own positions: the
    scheduler keeps the running requests in the first slots, so a decode step reads a prefix of
    the cache (a view, no gather). `rows(start, count)` is a run of slots seen alone, for
    prefilling the requests that join."""

    def __init__(self, config: ModelConfig, n_slots: int, max_len: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
        self.expanded = False
        self.k, self.v = _layers(config, n_slots, max_len, dtype, device)

    @property
    def n_slots(self) -> int:
        return self.k[0].shape[0]

    @property
    def max_len(self) -> int:
        return self.k[0].shape[2]

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.k + self.v)

    @staticmethod
    def bytes_per_token(config: ModelConfig, dtype: torch.dtype) -> int:
        (kh, kd), (vh, vd) = cached_dims(config)
        return config.n_layers * (kh * kd + vh * vd) * dtype.itemsize

    def update(self, layer_id: int, k: Tensor, v: Tensor, slots: Tensor) -> tuple[Tensor, Tensor]:
        """Write row b of k, v (B, KV, T, D) into slot b at positions `slots[b]` (slots: (B, T));
        return slots 0..B-1 of the layer's cache, (B, KV, max_len, D)."""
        return SlotRows(self, 0, k.shape[0]).update(layer_id, k, v, slots)

    def rows(self, start: int, count: int) -> "SlotRows":
        return SlotRows(self, start, count)

    def move(self, src: int, dst: int, length: int) -> None:
        """Copy the first `length` positions of slot `src` into slot `dst` (compaction)."""
        for t in self.k + self.v:
            t[dst, :, :length] = t[src, :, :length]


class SlotRows:
    """Slots start..start+count-1 of a SlotCache as a cache of their own: requests that join
    together prefill into consecutive free slots in one forward."""

    def __init__(self, cache: SlotCache, start: int, count: int):
        self.cache, self.start, self.count = cache, start, count

    @property
    def max_len(self) -> int:
        return self.cache.max_len

    @property
    def expanded(self) -> bool:
        return self.cache.expanded

    def update(self, layer_id: int, k: Tensor, v: Tensor, slots: Tensor) -> tuple[Tensor, Tensor]:
        """Write k, v (count, KV, T, D) at positions `slots` (count, T) of these slots; return
        them, (count, KV, max_len, D)."""
        rows = torch.arange(self.start, self.start + self.count, device=k.device)[:, None]
        k_cache, v_cache = self.cache.k[layer_id], self.cache.v[layer_id]
        k_cache[rows, :, slots] = k.transpose(1, 2)                             # (B, T, KV, D)
        v_cache[rows, :, slots] = v.transpose(1, 2)
        return k_cache[self.start:self.start + self.count], v_cache[self.start:self.start + self.count]


Cache = KVCache | SlotCache | SlotRows   # what the model's cache path accepts
