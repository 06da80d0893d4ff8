"""The documents of a built corpus, read back from its token shards: the one reader that tokenizer
training, perplexity and decontamination all use, so they agree on what "the corpus" holds.

Each document of a split comes once, in shard order, even when mixing put several copies of it in
the shards (a dialogue weighted 2.0 appears twice): its first range is read, BOS dropped, and
decoded with the corpus's own tokenizer, so what is read is exactly what the model was fed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..errors import LaminaError
from ..tokenizer import Tokenizer, load_tokenizer
from .ledger import Ledger
from .shards import MANIFEST, open_shard, read_manifest, tokenizer_ref


@dataclass(frozen=True)
class Document:
    id: int                 # the ledger's document id
    tokens: list[int]       # without the BOS that starts it in the shard
    text: str


def is_corpus(path: str | Path) -> bool:
    """Whether `path` is a corpus directory made by `lamina data build`."""
    return (Path(path) / MANIFEST).is_file()


def corpus_documents(corpus: str | Path, split: str = "train", *, tokenizer: Tokenizer | None = None,
                     limit: int | None = None) -> Iterator[Document]:
    """Every document of `split` once (the first `limit`), decoded with `tokenizer` (default:
    the corpus's own, which must be the one its shards were cut with)."""
    corpus = Path(corpus)
    manifest = read_manifest(corpus)
    bos = manifest["bos_id"]
    if tokenizer is None:
        tokenizer = load_tokenizer(tokenizer_ref(corpus))
    elif tokenizer.bos_id != bos or tokenizer.vocab_size < manifest.get("vocab_size", 0):
        raise LaminaError(f"{corpus}: its shards use another tokenizer ({manifest['tokenizer']}) than this model")
    ledger = Ledger.open(corpus)
    try:
        ranges = ledger.split_ranges(split)
    finally:
        ledger.close()
    seen: set[int] = set()
    shards: dict[str, object] = {}
    for shard, start, end, doc_id in ranges:
        if doc_id in seen:
            continue
        if limit is not None and len(seen) >= limit:
            return
        seen.add(doc_id)
        if shard not in shards:
            shards[shard] = open_shard(corpus, shard)
        tokens = shards[shard][start:end].tolist()
        if tokens and tokens[0] == bos:
            tokens = tokens[1:]
        yield Document(doc_id, tokens, tokenizer.decode(tokens))
