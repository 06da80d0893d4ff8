"""Duplicates: exact (by content hash) and near (MinHash over word 5-grams, LSH banding).

MinHash (Broder 1997) estimates the Jaccard similarity of two documents' shingle sets; LSH with
b bands of r rows flags a pair as candidates with probability 1 - (1 - s^r)^b. With 112
permutations in 14 bands of 8 rows the threshold (1/b)^(1/r) is about 0.72: documents sharing
roughly three quarters of their 5-grams are near duplicates, as in Lee et al. 2022 (0.8) and
FineWeb (0.75). The first document seen is kept; later ones are dropped with a reason naming it."""

from __future__ import annotations

import hashlib
import re

import numpy as np

class NearDuplicates:
    """Remembers the documents it has seen; `check` says which earlier one a new one nearly repeats."""

    def __init__(self, *, num_perm: int = 112, bands: int = 14, ngram: int = 5, seed: int = 0) -> None:
        if num_perm % bands:
            raise ValueError(f"{bands} bands do not divide {num_perm} permutations")
        rng = np.random.default_rng(seed)
        # multiply-shift hashing (Dietzfelbinger et al. 1997): odd multipliers, wrap-around uint64
        self.a = rng.integers(1, 1 << 63, num_perm, dtype=np.uint64) | np.uint64(1)
        self.b = rng.integers(0, 1 << 63, num_perm, dtype=np.uint64)
        self.bands, self.rows, self.ngram = bands, num_perm // bands, ngram
        self.buckets: list[dict[bytes, str]] = [{} for _ in range(bands)]

    def signature(self, text: str) -> np.ndarray:
        words = re.findall(r"\w+", text.lower())
        vocab = {w: int.from_bytes(hashlib.blake2b(w.encode(), digest_size=8).digest(), "little") for w in set(words)}
        ids = np.array([vocab[w] for w in words] or [0], dtype=np.uint64)                  # (W,)
        n = max(1, len(ids) - self.ngram + 1)
        with np.errstate(over="ignore"):
            h = np.zeros(n, dtype=np.uint64)                                              # (S,) one per 5-gram
            for k in range(min(self.ngram, len(ids))):        # polynomial hash of the n-gram's word hashes
                h = h * np.uint64(0x100000001B3) + ids[k:k + n]
        h = np.unique(h)                                                                  # the shingle set
        sig = np.full(len(self.a), np.iinfo(np.uint64).max, dtype=np.uint64)               # (P,)
        for chunk in np.array_split(h, -(-len(h) // 8192)):     # bound memory: (8192, P) at a time
            with np.errstate(over="ignore"):
                permuted = (chunk[:, None] * self.a[None, :] + self.b[None, :]) >> np.uint64(32)  # (S, P)
            np.minimum(sig, permuted.min(axis=0), out=sig)
        return sig

    def check(self, key: str, text: str, signature: np.ndarray | None = None) -> str | None:
        """The key of an earlier near duplicate of `text`, or None (then `text` is remembered).
        `signature`, when given, is `self.signature(text)` computed elsewhere (in a worker)."""
        sig = (self.signature(text) if signature is None else signature).reshape(self.bands, self.rows)  # (bands, rows)
        keys = [row.tobytes() for row in sig]
        for band, k in zip(self.buckets, keys):
            if k in band:
                return band[k]
        for band, k in zip(self.buckets, keys):
            band[k] = key
        return None
