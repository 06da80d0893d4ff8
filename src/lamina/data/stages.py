"""The build's stages one document at a time, and its deterministic draws: what the local
executor (`build.py`) and the Ray executor (`distributed.py`) share, so that both make the same
corpus. `BuildConfig` is how a corpus is made; `_filter` judges one document (a pure function,
run on any core), `_dedup` drops repeats in document order, `_split` and `_copies` draw a
document's split and mixing copies from the seed and its content hash, `_groups` cuts shards."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from ..errors import LaminaError
from . import canaries, clean
from .canaries import make_canaries
from .dedup import NearDuplicates
from .licenses import Policy
from .sources import RawDocument, Source

TOKENIZER_DIR = "tokenizer"   # where a corpus keeps the tokenizer it trained ("bpe:N")


@dataclass(frozen=True, kw_only=True)
class BuildConfig:
    """How a corpus is made; saved as build.json beside the shards."""
    # a packaged tokenizer name, a tokenizer path, or "bpe:VOCAB": train a byte-level BPE of that
    # size on this build's training documents (after policy, filters and dedup), kept in tokenizer/
    tokenizer: str = "smollm2-135m-instruct"
    seed: int = 0
    validation_fraction: float = 0.02          # of documents, chosen by content hash and seed
    shard_tokens: int = 1 << 24                # a shard closes once it holds this many tokens
    max_bytes: int = clean.MAX_BYTES           # larger inputs are quarantined as huge
    min_words: dict[str, int] = field(default_factory=lambda: {"prose": 50, "dialogue": 20})
    weights: dict[str, float] = field(default_factory=dict)   # source id or kind → copies (0.5, 2, ...)
    near_dedup: bool = True
    # plant random secrets to audit memorization with (lamina.data.canaries): these repetition
    # counts, `canaries_each` canaries of `canary_digits` digits at each; [] plants none
    canaries: tuple[int, ...] = ()
    canaries_each: int = 4
    canary_digits: int = 6
    workers: int = 1                           # processes for the per-document filters (1: this one)

    def __post_init__(self) -> None:
        if not 0 <= self.validation_fraction < 1:
            raise LaminaError(f"validation_fraction {self.validation_fraction} must be in [0, 1)")
        if self.shard_tokens < 1:
            raise LaminaError(f"shard_tokens {self.shard_tokens} must be positive")
        if self.workers < 1:
            raise LaminaError(f"workers {self.workers} must be at least 1")
        if self.tokenizer.startswith("bpe:") and not self.tokenizer[4:].isdigit():
            raise LaminaError(f"tokenizer {self.tokenizer!r}: write bpe:VOCAB_SIZE, e.g. bpe:8192")
        if any(w < 0 for w in self.weights.values()):
            raise LaminaError(f"mixing weights must not be negative: {self.weights}")
        object.__setattr__(self, "canaries", tuple(self.canaries))   # TOML gives a list
        make_canaries(self.canaries, self.canaries_each, self.canary_digits, self.seed)   # checks them


def _split(config: BuildConfig, source: Source, content_hash: str) -> str:
    """A document's split, by its content hash and the seed; canaries always train."""
    if source.kind == canaries.KIND:
        return "train"
    return "validation" if _unit(config.seed, "split", content_hash) < config.validation_fraction else "train"


def _unit(seed: int, *parts: object) -> float:
    """A deterministic number in [0, 1) from the seed and the parts."""
    digest = hashlib.sha256(repr((seed,) + parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2**64


@dataclass
class Judged:
    """One document's fate: status (kept, rejected, quarantined, skipped), reason, every filter's verdict."""
    status: str
    reason: str
    verdicts: list[tuple[str, bool, str]]
    scrubs: dict[str, int] = field(default_factory=dict)
    text: str | None = None                     # the cleaned text, while it may still be kept
    text_hash: str | None = None                # sha256 of `text`, for exact dedup
    signature: np.ndarray | None = None         # MinHash of `text`, for near dedup
    planted: bool = False                       # a canary: never near-deduplicated against its kin

    def fail(self, status: str, name: str, why: str) -> Judged:
        self.verdicts.append((name, False, why))
        self.status, self.reason, self.text = status, f"{name}: {why}", None
        return self


def _filter(kind: str, raw: RawDocument, policy: Policy, config: BuildConfig,
            near: NearDuplicates | None = None) -> Judged:
    """Every per-document stage (read, deny list, decode, normalise, clean, quality, PII) and the
    hashes dedup compares (text sha256, MinHash signature when `near` is given): a pure function
    of the document, so it runs on any core; dedup itself, which needs state, comes after."""
    j = Judged("kept", "passed every filter", [])
    if raw.skipped:
        return j.fail("skipped", "read", raw.skipped)
    if raw.unreadable:
        return j.fail("quarantined", "read", raw.unreadable)
    if raw.record is not None and raw.record.license:      # a record published under its own license
        v = policy.decide_license(raw.record.license)
        if not v.allowed:
            return j.fail("rejected", "record-license", v.reason)
        j.verdicts.append(("record-license", True, v.reason))
    data = raw.data
    v = policy.decide_hash(hashlib.sha256(data).hexdigest())
    if not v.allowed:
        return j.fail("rejected", "deny-list", v.reason)
    j.verdicts.append(("deny-list", True, v.reason))
    text, check = clean.decode(data, config.max_bytes)
    if text is None:
        return j.fail("quarantined", "decode", check.reason)
    j.verdicts.append(("decode", True, check.reason))
    text = clean.normalize(text)
    if kind == canaries.KIND:        # lamina's own sentence: its digits must stay exactly as drawn
        j.verdicts.append(("canary", True, "planted by the build; no prose filters or scrubbing"))
        j.text, j.text_hash, j.planted = text, hashlib.sha256(text.encode()).hexdigest(), True
        return j
    if kind == "prose":
        text = clean.strip_gutenberg(text)
    name = "code-rules" if kind == "code" else "quality"
    check = clean.check_code(text) if kind == "code" else \
        clean.check_quality(text, min_words=config.min_words.get(kind, 50))
    if not check.passed:
        return j.fail("rejected", name, check.reason)
    j.verdicts.append((name, True, check.reason))
    j.text, j.scrubs = clean.scrub_pii(text)
    j.verdicts.append(("pii", True, ", ".join(f"{n} {k}" for k, n in sorted(j.scrubs.items())) or "nothing to scrub"))
    j.text_hash = hashlib.sha256(j.text.encode()).hexdigest()
    j.signature = near.signature(j.text) if near is not None else None
    return j


def _dedup(j: Judged, key: str, seen: dict[str, str], near: NearDuplicates | None) -> Judged:
    """Drop `j` if its text repeats (exactly, or nearly) a document kept before it."""
    if j.text is None:
        return j
    text_hash = j.text_hash or hashlib.sha256(j.text.encode()).hexdigest()
    if text_hash in seen:
        return _dedup_verdicts(j, seen[text_hash], None, False)
    seen[text_hash] = key
    checked = near is not None and not j.planted
    return _dedup_verdicts(j, None, near.check(key, j.text, j.signature) if checked else None, checked)


def _dedup_verdicts(j: Judged, first: str | int | None, twin: str | int | None, near_checked: bool) -> Judged:
    """The dedup verdicts on `j`, however they were found (here in one pass, or on a cluster):
    `first`, the earlier document of its text; `twin`, the kept one it nearly repeats."""
    if first is not None:
        return j.fail("rejected", "exact-dedup", f"same text as document {first}")
    j.verdicts.append(("exact-dedup", True, "first of its text"))
    if near_checked:
        if twin is not None:
            return j.fail("rejected", "near-dedup", f"near duplicate of document {twin}")
        j.verdicts.append(("near-dedup", True, "no near duplicate seen before"))
    return j


def _copies(config: BuildConfig, source: Source, content_hash: str) -> int:
    """How many times a kept document goes into the mix: floor(w), plus one with probability frac(w)."""
    w = config.weights.get(source.id, config.weights.get(source.kind, 1.0))
    whole = int(w)
    return whole + (_unit(config.seed, "mix", content_hash) < w - whole)


def _groups(lengths: list[int], order: list[int], limit: int) -> list[list[int]]:
    """Documents (in `order`) cut into shards that close once they hold `limit` tokens."""
    groups, current, size = [], [], 0
    for i in order:
        current.append(i)
        size += lengths[i]
        if size >= limit:
            groups.append(current)
            current, size = [], 0
    return groups + [current] if current else groups
