"""SentencePiece BPE (Llama 2, Mistral): read a `.model` file (a protobuf ModelProto, parsed here
from its wire format so no protobuf library is needed) into an HF `tokenizers` BPE that encodes
exactly as the sentencepiece library does. GGUF "llama" vocabularies use the same builder."""

from __future__ import annotations

import struct
from pathlib import Path

from tokenizers import AddedToken, decoders, models, normalizers
from tokenizers import Tokenizer as Backend

from ..errors import LaminaError

# SentencePiece's piece types (sentencepiece_model.proto; llama.cpp's llama_token_type copies them)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
BPE_MODEL = 2   # TrainerSpec.model_type: UNIGRAM=1, BPE=2, WORD=3, CHAR=4


def sentencepiece_bpe(tokens, scores, types, unk_id, add_space_prefix) -> Backend:
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


def add_typed_tokens(backend: Backend, tokens, types) -> None:
    """Control pieces become special tokens (never parsed from plain text); user-defined pieces
    are matched whole in text, as SentencePiece and llama.cpp do."""
    backend.add_tokens([AddedToken(t, special=ty == CONTROL, normalized=False)
                        for t, ty in zip(tokens, types) if ty in (CONTROL, USER_DEFINED)])


# -- the .model file ----------------------------------------------------------------------------

def _varint(buf: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i
        shift += 7


def _fields(buf: bytes):
    """(field number, value) of each field of a protobuf message: an int for varints, bytes for
    length-delimited and fixed-width fields (https://protobuf.dev/programming-guides/encoding/)."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        wire = key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 2:
            n, i = _varint(buf, i)
            value, i = buf[i:i + n], i + n
        elif wire in (1, 5):
            n = 8 if wire == 1 else 4
            value, i = buf[i:i + n], i + n
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if i > len(buf):
            raise ValueError("truncated")
        yield key >> 3, value


def _int32(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v   # negative int32s are 10-byte varints


def read_sentencepiece(path: str | Path) -> dict:
    """The parts of a SentencePiece ModelProto lamina needs (field numbers from
    sentencepiece_model.proto), with the proto's defaults."""
    path = Path(path)
    pieces, trainer, normalizer = [], {}, {}
    try:
        for field, value in _fields(path.read_bytes()):
            if field == 1:     # SentencePiece {piece = 1; score = 2; type = 3}
                piece = {"piece": "", "score": 0.0, "type": NORMAL}
                for f, v in _fields(value):
                    if f == 1:
                        piece["piece"] = v.decode()
                    elif f == 2:
                        piece["score"] = struct.unpack("<f", v)[0]
                    elif f == 3:
                        piece["type"] = v
                pieces.append(piece)
            elif field == 2:   # TrainerSpec
                trainer = {f: v for f, v in _fields(value)}
            elif field == 3:   # NormalizerSpec
                normalizer = {f: v for f, v in _fields(value)}
    except (ValueError, IndexError, UnicodeDecodeError, struct.error) as e:
        raise LaminaError(f"{path}: not a readable SentencePiece model ({e})") from None
    if not pieces:
        raise LaminaError(f"{path}: not a SentencePiece model (no pieces)")
    return {
        "pieces": pieces,
        "model_type": trainer.get(3, 1),
        "byte_fallback": bool(trainer.get(35, 0)),
        "treat_whitespace_as_suffix": bool(trainer.get(24, 0)),
        "unk_id": _int32(trainer.get(40, 0)), "bos_id": _int32(trainer.get(41, 1)),
        "eos_id": _int32(trainer.get(42, 2)),
        "normalizer": normalizer.get(1, b"nmt_nfkc").decode(),
        "precompiled_charsmap": normalizer.get(2, b""),
        "add_dummy_prefix": bool(normalizer.get(3, 1)),
        "remove_extra_whitespaces": bool(normalizer.get(4, 1)),
    }


def sentencepiece_backend(path: str | Path) -> tuple[Backend, str | None, str | None]:
    """An HF backend for a SentencePiece BPE `.model`, and its BOS and EOS pieces."""
    spec = read_sentencepiece(path)
    unsupported = [
        ("it is not a BPE model", spec["model_type"] != BPE_MODEL),
        ("it has no byte fallback", not spec["byte_fallback"]),
        (f"it normalizes text ({spec['normalizer']})", spec["precompiled_charsmap"]
         or spec["normalizer"] not in ("identity", "")),
        ("it removes extra whitespace", spec["remove_extra_whitespaces"]),
        ("it puts whitespace after words", spec["treat_whitespace_as_suffix"])]
    reasons = [why for why, bad in unsupported if bad]
    if reasons:
        raise LaminaError(f"{path}: lamina reads SentencePiece models like Llama 2's and Mistral's "
                          f"(BPE, byte fallback, text as is), and this one differs: {'; '.join(reasons)}")
    tokens = [p["piece"] for p in spec["pieces"]]
    types = [p["type"] for p in spec["pieces"]]
    unk = spec["unk_id"] if 0 <= spec["unk_id"] < len(tokens) else None
    backend = sentencepiece_bpe(tokens, [p["score"] for p in spec["pieces"]], types, unk,
                                spec["add_dummy_prefix"])
    add_typed_tokens(backend, tokens, types)

    def piece(i):
        return tokens[i] if 0 <= i < len(tokens) else None

    return backend, piece(spec["bos_id"]), piece(spec["eos_id"])
