"""Rebuild a tokenizer from a GGUF file's `tokenizer.ggml.*` metadata, the way llama.cpp reads it:
"gpt2" (byte-level BPE with explicit merges and a named pre-tokenizer) and "llama" (SentencePiece
BPE: scores instead of merges, byte fallback, "▁" for spaces). The inverse, `gguf_metadata`, is
what lamina writes into its own GGUF files."""

from __future__ import annotations

import json

from tokenizers import Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as Backend

from ..errors import LaminaError
from .core import Tokenizer
from .ranks import LLAMA3_PATTERN
from .spm import BYTE, CONTROL, NORMAL, UNKNOWN, UNUSED, USER_DEFINED, add_typed_tokens, sentencepiece_bpe

# llama.cpp's token types (llama_token_type) are SentencePiece's piece types, re-exported here
__all__ = ["BYTE", "CONTROL", "NORMAL", "UNKNOWN", "UNUSED", "USER_DEFINED", "gguf_metadata",
           "tokenizer_from_gguf"]

# The split patterns llama.cpp uses for each `tokenizer.ggml.pre` (src/llama-vocab.cpp).
GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
LLAMA3_SPLIT = LLAMA3_PATTERN
# What llama.cpp applies when the name is missing or "default" (older files): punctuation runs,
# the GPT-2 pattern, digit runs, then digits in threes, each splitting the pieces of the last.
DEFAULT_SPLITS = (r"[\p{P}\$\+<=>\^~\|]+", GPT2_SPLIT, r"\p{N}+", r"[0-9][0-9][0-9]")


def _splits_then_bytes(*patterns: str):
    return pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(p), behavior="isolated") for p in patterns]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


def _pre_tokenizer(pre: str | None):
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)   # GPT-2 pattern
    if pre in ("gpt2", "gpt-2"):
        return byte_level
    if pre in (None, "default"):
        return _splits_then_bytes(*DEFAULT_SPLITS)
    if pre == "smollm":   # single digits, then the GPT-2 pattern
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    if pre in ("llama3", "llama-v3", "llama-bpe", "smaug-bpe"):
        return _splits_then_bytes(LLAMA3_SPLIT)
    raise LaminaError(f"GGUF pre-tokenizer {pre!r} is not supported (known: default, gpt-2, "
                      "smollm, llama-bpe)")


def tokenizer_from_gguf(meta: dict) -> Tokenizer:
    """`meta` maps GGUF keys ("tokenizer.ggml.tokens", ...) to their decoded values."""
    kind = meta.get("tokenizer.ggml.model")
    tokens: list[str] = meta.get("tokenizer.ggml.tokens") or []
    if not tokens:
        raise LaminaError("GGUF file has no tokenizer vocabulary (tokenizer.ggml.tokens)")
    types = meta.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens)
    if kind == "gpt2":
        merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges", [])]
        pre = meta.get("tokenizer.ggml.pre")
        backend = Backend(models.BPE({t: i for i, t in enumerate(tokens)}, merges,
                                     ignore_merges=pre in ("llama3", "llama-v3", "llama-bpe")))
        backend.pre_tokenizer = _pre_tokenizer(pre)
        backend.decoder = decoders.ByteLevel()
    elif kind == "llama":
        if meta.get("tokenizer.ggml.scores") is None:
            raise LaminaError("GGUF SentencePiece vocabulary has no tokenizer.ggml.scores")
        backend = sentencepiece_bpe(tokens, meta["tokenizer.ggml.scores"], types,
                                    meta.get("tokenizer.ggml.unknown_token_id"),
                                    meta.get("tokenizer.ggml.add_space_prefix", True))
    else:
        raise LaminaError(f"GGUF tokenizer model {kind!r} is not supported (known: gpt2, llama)")
    add_typed_tokens(backend, tokens, types)

    def name(key: str) -> str | None:
        i = meta.get(f"tokenizer.ggml.{key}_token_id")
        return tokens[i] if i is not None and 0 <= i < len(tokens) else None

    add_bos = meta.get("tokenizer.ggml.add_bos_token", kind == "llama")
    return Tokenizer(backend, bos_token=name("bos"), eos_token=name("eos"), add_bos=bool(add_bos),
                     chat_template=meta.get("tokenizer.chat_template"))


def gguf_metadata(tok: Tokenizer) -> dict:
    """The `tokenizer.ggml.*` keys describing a byte-level BPE tokenizer, for writing a GGUF."""
    spec = json.loads(tok.backend.to_str())
    model = spec["model"]
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        raise LaminaError("only byte-level BPE tokenizers can be written to GGUF so far")
    vocab = dict(model["vocab"])
    for added in spec.get("added_tokens", []):
        vocab[added["content"]] = added["id"]
    tokens = [None] * (max(vocab.values()) + 1)
    for t, i in vocab.items():
        tokens[i] = t
    if any(t is None for t in tokens):
        raise LaminaError("tokenizer vocabulary has holes; cannot write it to GGUF")
    specials = {a["content"]: a["special"] for a in spec.get("added_tokens", [])}
    types = [CONTROL if specials.get(t) else USER_DEFINED if t in specials else NORMAL for t in tokens]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    meta = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": _pre_name(spec.get("pre_tokenizer")),
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.add_bos_token": tok.add_bos,
    }
    for key, token in (("bos", tok.bos_token), ("eos", tok.eos_token)):
        if token is not None and token in vocab:
            meta[f"tokenizer.ggml.{key}_token_id"] = vocab[token]
    if tok.chat_template:
        meta["tokenizer.chat_template"] = tok.chat_template
    return meta


def _pre_name(pre: dict | None) -> str:
    """The llama.cpp name of a pre-tokenizer (a tokenizer.json "pre_tokenizer" entry): the name
    whose layout `_pre_tokenizer` builds splits text the same way."""
    ours = _layout(pre)
    for name in ("gpt-2", "smollm", "llama-bpe", "default"):
        backend = Backend(models.BPE())
        backend.pre_tokenizer = _pre_tokenizer(name)
        if _layout(json.loads(backend.to_str())["pre_tokenizer"]) == ours:
            return name
    kinds = [part[0] for part in ours]
    raise LaminaError(f"pre-tokenizer {kinds} has no llama.cpp name; cannot write it to GGUF")


def _layout(pre: dict | None) -> list[tuple]:
    """The fields of each pre-tokenizer step that change how text splits."""
    parts = [] if not pre else pre.get("pretokenizers", [pre])
    keys = {"Split": ("pattern", "behavior", "invert"), "Digits": ("individual_digits",),
            "ByteLevel": ("add_prefix_space", "use_regex")}
    return [(p.get("type"), *(json.dumps(p.get(k), sort_keys=True) for k in keys.get(p.get("type"), ())))
            for p in parts]
