"""Rebuild a tokenizer from a GGUF file's `tokenizer.ggml.*` metadata, the way llama.cpp reads it:
"gpt2" (byte-level BPE with explicit merges and a named pre-tokenizer) and "llama" (SentencePiece
BPE: scores instead of merges, byte fallback, "▁" for spaces). The inverse, `gguf_metadata`, is
what lamina writes into its own GGUF files."""

from __future__ import annotations

import json

from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers
from tokenizers import Tokenizer as Backend

from ..errors import LaminaError
from .core import Tokenizer

# llama.cpp's token types (llama_token_type)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# The split patterns llama.cpp uses for each `tokenizer.ggml.pre` (src/llama-vocab.cpp).
GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
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
        backend = _sentencepiece_bpe(tokens, meta.get("tokenizer.ggml.scores"), types,
                                     meta.get("tokenizer.ggml.unknown_token_id"),
                                     meta.get("tokenizer.ggml.add_space_prefix", True))
    else:
        raise LaminaError(f"GGUF tokenizer model {kind!r} is not supported (known: gpt2, llama)")
    backend.add_tokens([AddedToken(t, special=ty == CONTROL, normalized=False)
                        for t, ty in zip(tokens, types) if ty in (CONTROL, USER_DEFINED)])

    def name(key: str) -> str | None:
        i = meta.get(f"tokenizer.ggml.{key}_token_id")
        return tokens[i] if i is not None and 0 <= i < len(tokens) else None

    add_bos = meta.get("tokenizer.ggml.add_bos_token", kind == "llama")
    return Tokenizer(backend, bos_token=name("bos"), eos_token=name("eos"), add_bos=bool(add_bos),
                     chat_template=meta.get("tokenizer.chat_template"))


def _sentencepiece_bpe(tokens, scores, types, unk_id, add_space_prefix) -> Backend:
    if scores is None:
        raise LaminaError("GGUF SentencePiece vocabulary has no tokenizer.ggml.scores")
    vocab = {t: i for i, t in enumerate(tokens)}
    # SentencePiece BPE stores no merges: merging a+b is allowed when a, b and ab are all pieces,
    # and the best-scored result merges first (as llama.cpp's SPM tokenizer does).
    candidates = []
    for t, ty, score in zip(tokens, types, scores):
        if ty != NORMAL:
            continue
        for cut in range(1, len(t)):
            left, right = t[:cut], t[cut:]
            if left in vocab and right in vocab:
                candidates.append((-score, vocab[left], vocab[right], left, right))
    merges = [(left, right) for *_, left, right in sorted(candidates)]
    unk = tokens[unk_id] if unk_id is not None else None
    backend = Backend(models.BPE(vocab, merges, unk_token=unk, byte_fallback=True, fuse_unk=True))
    # SentencePiece (and llama.cpp) put a "▁" before the text even when it already starts with a
    # space, and turn every space into "▁"; HF's Metaspace would skip the first. Added tokens are
    # split off before normalizing, so the prefix also follows each special token, as in llama.cpp.
    backend.normalizer = normalizers.Sequence(
        [*([normalizers.Prepend("▁")] if add_space_prefix else []), normalizers.Replace(" ", "▁")])
    backend.decoder = decoders.Sequence([
        decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
        *([decoders.Strip(" ", 1, 0)] if add_space_prefix else [])])
    return backend


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
