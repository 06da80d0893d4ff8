"""`load_tokenizer(REF)`: a tokenizer from whatever names it — a tiktoken rank file, a SentencePiece `.model`,
a `tokenizer.json`, a GGUF file, a model directory, or a packaged name — recognised by content,
not by file name (Llama 3's and 4's rank files and Llama 2's SentencePiece model are all `tokenizer.model`)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..assets import MODELS, TOKENIZERS
from ..errors import LaminaError
from ..gguf_file import read_gguf_metadata
from .core import Tokenizer
from .formats import LLAMA3, LLAMA4, ChatFormat
from .gguf_vocab import tokenizer_from_gguf
from .ranks import (LLAMA3_PATTERN, LLAMA4_PATTERN, LLAMA4_RANK_COUNT, LLAMA4_RANKS_SHA256, Ranks,
                    llama3_special_tokens, llama4_special_tokens, read_ranks)
from .spm import sentencepiece_backend


@dataclass(frozen=True)
class RankFamily:
    """What a Meta rank file leaves out: the split pattern, the special tokens after the ranks,
    and the chat format. Both families begin text with `<|begin_of_text|>`."""
    pattern: str
    special_tokens: Callable[[int], dict[str, int]]   # n_ranks -> name -> id
    chat: ChatFormat


LLAMA3_RANKS = RankFamily(LLAMA3_PATTERN, llama3_special_tokens, LLAMA3)
LLAMA4_RANKS = RankFamily(LLAMA4_PATTERN, llama4_special_tokens, LLAMA4)

_RANK_LINE = re.compile(rb"[A-Za-z0-9+/]+=* \d+\r?\n")


def load_tokenizer(ref: str | Path) -> Tokenizer:
    """The tokenizer at `ref`: a file, a model directory, or a packaged tokenizer or model name."""
    name = str(ref)
    if name in TOKENIZERS:
        return load_file(TOKENIZERS[name].path())
    if name in MODELS:                  # a packaged model's GGUF file carries its tokenizer
        return load_file(MODELS[name].path())
    path = Path(ref)
    if path.is_dir():
        if (path / "tokenizer.json").is_file():
            return Tokenizer.from_dir(path)
        if (path / "tokenizer.model").is_file():   # Meta's original layout
            return load_file(path / "tokenizer.model")
        raise LaminaError(f"{path}: no tokenizer.json or tokenizer.model in this directory")
    if not path.is_file():
        known = ", ".join([*TOKENIZERS, *MODELS])
        raise LaminaError(f"{ref}: no such file or directory, and not a packaged name ({known})")
    return load_file(path)


def load_file(path: Path) -> Tokenizer:
    with open(path, "rb") as f:
        head = f.read(4096)
    if head[:4] == b"GGUF":
        meta = read_gguf_metadata(path)
        if "tokenizer.ggml.model" not in meta:
            raise LaminaError(f"{path}: this GGUF file carries no tokenizer")
        return tokenizer_from_gguf(meta)
    if path.suffix == ".json" or head.lstrip()[:1] == b"{":
        return Tokenizer.from_json(path)
    if _RANK_LINE.match(head):
        return load_ranks(path)
    if head[:1] == b"\x0a":   # protobuf field 1 (a piece), length-delimited: SentencePiece
        return load_sentencepiece(path)
    if not head:
        raise LaminaError(f"{path}: empty file")
    raise LaminaError(f"{path}: not a tokenizer lamina can read (a tiktoken rank file, SentencePiece "
                      ".model, tokenizer.json or GGUF)")


def load_ranks(path: str | Path, *, pattern: str | None = None,
               special_tokens: dict[str, int] | None = None) -> Tokenizer:
    """A tiktoken rank file. Rank files carry no pattern or special tokens, so a family's are
    assumed: Llama 4's for Meta's Llama 4 file (known by its digest), Llama 3's for any other
    (lamina writes its own tokenizers that way too); pass others for other families."""
    ranks = read_ranks(path)
    llama4 = (len(ranks) == LLAMA4_RANK_COUNT
              and hashlib.sha256(Path(path).read_bytes()).hexdigest() == LLAMA4_RANKS_SHA256)
    family = LLAMA4_RANKS if llama4 else LLAMA3_RANKS
    pattern = family.pattern if pattern is None else pattern
    specials = family.special_tokens(len(ranks)) if special_tokens is None else special_tokens
    meta = pattern == family.pattern and "<|begin_of_text|>" in specials
    return Tokenizer(ranks=Ranks(ranks, pattern, specials, Path(path).name),
                     bos_token="<|begin_of_text|>" if meta else None,
                     eos_token="<|end_of_text|>" if meta else None,
                     add_bos=meta, chat_template=family.chat.template if meta else None)


def load_sentencepiece(path: str | Path) -> Tokenizer:
    """A SentencePiece BPE `.model` (Llama 2, Mistral). Like Llama 2, it adds BOS to plain text."""
    backend, bos, eos = sentencepiece_backend(path)
    return Tokenizer(backend, bos_token=bos, eos_token=eos, add_bos=bos is not None)
