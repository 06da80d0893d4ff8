"""Decontamination: which benchmark items a model may have seen in training.

An item is contaminated when it shares a run of `n` words (13 by default, as GPT-3's and
lm-eval's decontamination do) with a training document. The documents are the ones the corpus's
ledger records in its train shards: each document's token range is read back from its shard and
decoded with the corpus's tokenizer, so what is checked is exactly what the model was fed, not a
guess from source names. Words are lower-cased runs of letters and digits, so punctuation and
spacing do not hide a match. An item shorter than `n` words counts as contaminated when all of
its words appear in a row in a document.

The item n-grams are collected first (small), then the corpus is streamed once, document by
document, so memory does not grow with the corpus."""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import Iterator

from ..data import Ledger, open_shard, read_manifest
from ..data.shards import tokenizer_ref
from ..errors import LaminaError
from ..tokenizer import load_tokenizer

WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def ngrams(ws: list[str], n: int) -> Iterator[str]:
    for i in range(len(ws) - n + 1):
        yield " ".join(ws[i:i + n])


def training_documents(corpus: str | Path, split: str = "train") -> Iterator[tuple[int, str]]:
    """(document id, text) of every document in the corpus's `split` shards, once each, read
    from the shards through the ledger's token ranges (BOS dropped) and decoded."""
    corpus = Path(corpus)
    manifest = read_manifest(corpus)
    tokenizer = load_tokenizer(tokenizer_ref(corpus))      # a packaged name, or the corpus's own tokenizer/
    ledger = Ledger.open(corpus)
    try:
        ranges = ledger.split_ranges(split)
    finally:
        ledger.close()
    seen: set[int] = set()
    shards: dict[str, object] = {}
    for shard, start, end, doc_id in ranges:
        if doc_id in seen:              # a document mixed in more than once
            continue
        seen.add(doc_id)
        if shard not in shards:
            shards[shard] = open_shard(corpus, shard)
        tokens = shards[shard][start:end].tolist()
        if tokens and tokens[0] == manifest["bos_id"]:
            tokens = tokens[1:]
        yield doc_id, tokenizer.decode(tokens)


def find_contamination(texts: list[str], corpus: str | Path, n: int = 13) -> list[list[int]]:
    """For each text, the ids of the training documents it shares an `n`-word run with."""
    if n < 1:
        raise LaminaError(f"the n-gram length must be at least 1, not {n}")
    wanted: dict[int, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))   # length -> gram -> items
    for i, text in enumerate(texts):
        ws = words(text)
        if not ws:
            continue
        m = min(n, len(ws))
        for gram in set(ngrams(ws, m)):
            wanted[m][gram].append(i)
    hits: list[list[int]] = [[] for _ in texts]
    for doc_id, text in training_documents(corpus):
        ws = words(text)
        found: set[int] = set()
        for m, grams in wanted.items():
            for gram in ngrams(ws, m):
                if gram in grams:
                    found.update(grams[gram])
        for i in sorted(found):
            hits[i].append(doc_id)
    return hits
