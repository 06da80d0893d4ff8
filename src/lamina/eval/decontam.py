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

from ..data.documents import corpus_documents
from ..errors import LaminaError

WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def ngrams(ws: list[str], n: int) -> Iterator[str]:
    for i in range(len(ws) - n + 1):
        yield " ".join(ws[i:i + n])


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
    for doc in corpus_documents(corpus, "train"):
        ws = words(doc.text)
        found: set[int] = set()
        for m, grams in wanted.items():
            for gram in ngrams(ws, m):
                if gram in grams:
                    found.update(grams[gram])
        for i in sorted(found):
            hits[i].append(doc.id)
    return hits
