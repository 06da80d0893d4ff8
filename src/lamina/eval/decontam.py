"""Decontamination: which benchmark items a model may have seen in training.

An item is contaminated when it shares a run of `n` words (13 by default, as GPT-3's and
lm-eval's decontamination do) with a training document. The documents are (id, text) pairs from
whoever knows the training data: for a pretraining corpus, the ones its ledger records in its
train shards (`corpus_texts`: each document's token range read back from its shard and decoded
with the corpus's tokenizer, so what is checked is exactly what the model was fed, not a guess
from source names); for post-training data, the conversations, which the command line reads
(`lamina.post.documents`), since evaluation does not import the post-training stage. Words are lower-cased runs of letters and digits, so punctuation and
spacing do not hide a match. An item shorter than `n` words counts as contaminated when all of
its words appear in a row in a document.

The item n-grams are collected first (small), then the corpus is streamed once, document by
document, so memory does not grow with the corpus."""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Iterator

from ..data.documents import corpus_documents
from ..errors import LaminaError

WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def ngrams(ws: list[str], n: int) -> Iterator[str]:
    for i in range(len(ws) - n + 1):
        yield " ".join(ws[i:i + n])


def corpus_texts(corpus: str | Path) -> Iterator[tuple[int, str]]:
    """(ledger document id, text) of every train document of a corpus built by `lamina data build`."""
    return ((doc.id, doc.text) for doc in corpus_documents(corpus, "train"))


def find_contamination(texts: list[str], documents: Iterable[tuple[object, str]] | str | Path,
                       n: int = 13) -> list[list]:
    """For each text, the ids of the training documents it shares an `n`-word run with: (id, text)
    pairs, streamed once, or a corpus directory (its train documents)."""
    if n < 1:
        raise LaminaError(f"the n-gram length must be at least 1, not {n}")
    if isinstance(documents, (str, Path)):
        documents = corpus_texts(documents)
    wanted: dict[int, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))   # length -> gram -> items
    for i, text in enumerate(texts):
        ws = words(text)
        if not ws:
            continue
        m = min(n, len(ws))
        for gram in set(ngrams(ws, m)):
            wanted[m][gram].append(i)
    hits: list[list[int]] = [[] for _ in texts]
    for doc_id, text in documents:
        ws = words(text)
        found: set[int] = set()
        for m, grams in wanted.items():
            for gram in ngrams(ws, m):
                if gram in grams:
                    found.update(grams[gram])
        for i in sorted(found):
            hits[i].append(doc_id)
    return hits
