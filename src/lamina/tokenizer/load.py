"""`load_tokenizer(REF)`: a tokenizer from whatever names it — a tiktoken rank file, a SentencePiece `.model`,
a `tokenizer.json`, a GGUF file, a model directory, or a packaged name — recognised by content,
not by file name (Llama 3's rank file and Llama 2's SentencePiece model are both `tokenizer.model`)."""

from __future__ import annotations

import re
from pathlib import Path

from ..assets import MODELS, TOKENIZERS
from ..errors import LaminaError
from ..gguf_file import read_gguf_metadata
from .core import Tokenizer
from .formats import LLAMA3
from .gguf_vocab import tokenizer_from_gguf
from .ranks import LLAMA3_PATTERN, Ranks, llama3_special_tokens, read_ranks
from .spm import sentencepiece_backend



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


def load_ranks(path: str | Path, *, pattern: str = LLAMA3_PATTERN,
               special_tokens: dict[str, int] | None = None) -> Tokenizer:
    """A tiktoken rank file. Rank files carry no pattern or special tokens, so Llama 3's are
    assumed (lamina writes its own tokenizers that way too); pass others for other families."""
    ranks = read_ranks(path)
    specials = special_tokens if special_tokens is not None else llama3_special_tokens(len(ranks))
    llama3 = pattern == LLAMA3_PATTERN and "<|begin_of_text|>" in specials
    return Tokenizer(ranks=Ranks(ranks, pattern, specials, Path(path).name),
                     bos_token="<|begin_of_text|>" if llama3 else None,
                     eos_token="<|end_of_text|>" if llama3 else None,
                     add_bos=llama3, chat_template=LLAMA3.template if llama3 else None)


def load_sentencepiece(path: str | Path) -> Tokenizer:
    """A SentencePiece BPE `.model` (Llama 2, Mistral). Like Llama 2, it adds BOS to plain text."""
    backend, bos, eos = sentencepiece_backend(path)
    return Tokenizer(backend, bos_token=bos, eos_token=eos, add_bos=bos is not None)
