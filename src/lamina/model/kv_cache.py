"""A preallocated key/value cache, written in place at given slots, so a decode step has static
shapes (what `torch.compile` needs) and never reallocates."""

from __future__ import annotations

import torch
from torch import Tensor

from .config import ModelConfig


class KVCache:
    def __init__(self, config: ModelConfig, batch_size: int, max_len: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
        # One tensor per layer rather than one stacked buffer: under torch.compile an in-place
        # write into a view of a shared buffer makes inductor copy the whole buffer every step.
        shape = (batch_size, config.n_kv_heads, max_len, config.head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.n_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.n_layers)]

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
