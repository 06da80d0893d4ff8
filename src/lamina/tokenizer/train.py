"""Train a byte-level BPE tokenizer for lamina's own models: Llama 3's split pattern, HF
`tokenizers`' trainer, Llama 3's special tokens (named ones, then reserved slots) after the BPE
vocabulary. The result is a rank file (tiktoken's format, like Llama 3's tokenizer.model) plus the
same tokenizer as tokenizer.json + tokenizer_config.json, which transformers loads as is."""

from __future__ import annotations

import json
import sys
from itertools import chain
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Regex, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as Backend

from ..errors import LaminaError
from ..fields import check_fields
from ..files import atomic_directory
from ..progress import Display, show_progress
from .core import Tokenizer
from .formats import LLAMA3
from .ranks import (
    LLAMA3_NAMED_SPECIALS,
    LLAMA3_PATTERN,
    LLAMA3_SPECIAL_SLOTS,
    Ranks,
    llama3_special_tokens,
    ranks_from_backend,
)

TEXT_SUFFIXES = (".txt", ".md", ".jsonl")
RANK_FILE = "tokenizer.model"   # the name Meta gives Llama 3's rank file


@dataclass(frozen=True, kw_only=True)
class TokenizerTrainConfig:
    """What `lamina tokenizer train` does; saved beside the tokenizer as lamina_tokenizer.json."""
    inputs: tuple[str, ...]         # text files, .jsonl files, or directories of them
    corpora: tuple[str, ...] = ()   # corpora (`lamina data build`) whose training documents are handed in
    vocab_size: int                 # all tokens: 256 bytes + merges + special-token slots
    out: str                        # directory to create
    special_slots: int = LLAMA3_SPECIAL_SLOTS   # special tokens after the BPE vocabulary (Llama 3: 256)
    min_frequency: int = 2          # a pair must occur this often to be merged
    text_field: str = "text"        # the field of each .jsonl record that holds the text
    progress: bool = True

    def __post_init__(self) -> None:
        check_fields(self)
        if not self.inputs and not self.corpora:
            raise LaminaError("no training input given (--input FILE ...)")
        if self.special_slots < len(LLAMA3_NAMED_SPECIALS):
            raise LaminaError(f"--special-slots must be at least {len(LLAMA3_NAMED_SPECIALS)}, "
                              "for Llama 3's named special tokens")
        least = 256 + self.special_slots
        if self.vocab_size < least:
            raise LaminaError(f"vocab size {self.vocab_size} is smaller than the 256 byte tokens plus "
                              f"{self.special_slots} special tokens; use --vocab-size {least} or more")


def input_files(inputs) -> list[Path]:
    files: list[Path] = []
    for name in inputs:
        path = Path(name)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES)
        elif path.is_file():
            files.append(path)
        else:
            raise LaminaError(f"{path}: no such file or directory")
    if not files:
        raise LaminaError(f"no .txt, .md or .jsonl files in {', '.join(map(str, inputs))}")
    return files


def read_texts(files: list[Path], text_field: str = "text", chunk_chars: int = 1 << 20) -> Iterator[str]:
    """Documents of .jsonl files (their `text_field`), and other files in chunks of whole lines."""
    for path in files:
        with open(path, encoding="utf-8", errors="replace") as f:
            if path.suffix == ".jsonl":
                for n, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        text = json.loads(line)[text_field]
                    except (ValueError, KeyError, TypeError):
                        raise LaminaError(f"{path}: line {n} is not a JSON object with a "
                                          f"{text_field!r} string") from None
                    if not isinstance(text, str):
                        raise LaminaError(f"{path}: line {n}: {text_field!r} is not a string")
                    yield text
            else:
                while chunk := f.read(chunk_chars):
                    yield chunk + f.readline()


def train_bpe(texts, vocab_size: int, *, min_frequency: int = 2, progress: bool = False) -> dict[bytes, int]:
    """BPE ranks learned from `texts` with HF tokenizers' trainer and Llama 3's split pattern."""
    backend = Backend(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)   # lamina's display, plain lines off a terminal
    with show_progress("tokenizer", unit="texts read", enabled=progress) as display:
        backend.train_from_iterator(_counted(texts, display), trainer=trainer)
    # the trainer numbers the byte alphabet first, then each new token in the order it merged,
    # which is what a rank is
    return ranks_from_backend(backend)


def _counted(texts, display: Display) -> Iterator[str]:
    """The texts, counted on `display` as the trainer reads them."""
    for text in texts:
        yield text
        display.advance()


def bpe_tokenizer(texts, vocab_size: int, *, special_slots: int = LLAMA3_SPECIAL_SLOTS,
                  min_frequency: int = 2, progress: bool = False) -> Tokenizer:
    """A Llama 3-style tokenizer (BPE ranks, then named and reserved special tokens, BOS added,
    Llama 3's chat format) learned from `texts`; deterministic for the same texts."""
    ranks = train_bpe(texts, vocab_size - special_slots, min_frequency=min_frequency, progress=progress)
    tok = Tokenizer(ranks=Ranks(ranks, LLAMA3_PATTERN, llama3_special_tokens(len(ranks), special_slots)),
                    bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>", add_bos=True,
                    chat_template=LLAMA3.template)
    if tok.vocab_size < vocab_size:
        print(f"lamina: the input only supports {len(ranks)} BPE tokens; the vocabulary has "
              f"{tok.vocab_size} tokens, not {vocab_size}", file=sys.stderr)
    return tok


def write_tokenizer(tok: Tokenizer, folder: Path, record: dict) -> None:
    """tokenizer.model (ranks), tokenizer.json, tokenizer_config.json and lamina_tokenizer.json
    (what made it) into an existing folder."""
    tok.ranks.save(folder / RANK_FILE)
    tok.save(folder)
    (folder / "lamina_tokenizer.json").write_text(json.dumps(record | {"vocab_size": tok.vocab_size}, indent=2))


def train_tokenizer(config: TokenizerTrainConfig, corpus_texts: Iterable[str] = ()) -> Tokenizer:
    """Train on `corpus_texts` (the documents of the corpora in config.corpora, which the caller
    reads: `lamina.data.documents`) and the files of config.inputs, then write config.out:
    tokenizer.model (ranks), tokenizer.json, tokenizer_config.json."""
    files = input_files(config.inputs) if config.inputs else []
    texts = chain(corpus_texts, read_texts(files, config.text_field))
    tok = bpe_tokenizer(texts, config.vocab_size, special_slots=config.special_slots,
                        min_frequency=config.min_frequency, progress=config.progress)
    with atomic_directory(config.out) as tmp:
        write_tokenizer(tok, tmp, {"made_by": "lamina tokenizer train",
                                   "config": vars(config) | {"inputs": list(config.inputs),
                                                             "corpora": list(config.corpora)},
                                   "files": [str(f) for f in files] + list(config.corpora)})
    return tok
