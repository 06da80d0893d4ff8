"""Perplexity and bits per byte of a model on any text file, or on the validation shards of a
corpus built by `lamina data build`.

A text is scored as lm-eval's `loglikelihood_rolling` scores it: the first window is conditioned
on the BOS token (the prefix token; EOS when there is none), each later window of up to the
model's context predicts the tokens after the previous one, so every token is predicted exactly
once. A corpus is scored document by document, each from its own BOS, as training saw it.

bits per byte = total negative log-likelihood / ln 2 / UTF-8 bytes of the text: comparable
across tokenizers, unlike token perplexity."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

from ..data import documents
from ..errors import LaminaError
from ..tokenizer import Tokenizer
from .scoring import ScoringRequest, Scorer


def rolling_windows(tokens: list[int], prefix: int, window: int) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """(context, continuation) pairs that together predict every token once, each input at most
    `window` tokens (lm-eval's get_rolling_token_windows + make_disjoint_window, context_len=1)."""
    out = []
    first = min(window, len(tokens))
    out.append(((prefix,), tuple(tokens[:first])))
    done = first
    while done < len(tokens):
        n = min(len(tokens) - done, window)
        end = done + n
        inputs = tokens[max(0, end - window - 1):end - 1]          # window tokens before the last
        out.append((tuple(inputs[:len(inputs) - (n - 1)]), tuple(tokens[done:end])))
        done = end
    return out


def score_documents(scorer: Scorer, docs: list[tuple[list[int], str]], prefix: int,
                    progress: Callable[[int], None] | None = None) -> dict:
    """Perplexity metrics over documents given as (token ids without BOS, text)."""
    window = scorer.max_len
    requests = []
    for d, (tokens, _) in enumerate(docs):
        for ctx, cont in rolling_windows(tokens, prefix, window):
            requests.append(ScoringRequest(ctx, cont, item=len(requests), block=d))
    lls = [ll for ll, _ in scorer.loglikelihood(requests, progress)] if requests else []
    nll = -sum(lls)
    n_tokens = sum(len(t) for t, _ in docs)
    n_bytes = sum(len(text.encode("utf-8")) for _, text in docs)
    n_words = sum(len(text.split()) for _, text in docs)
    if not n_tokens or not n_bytes:
        raise LaminaError("nothing to score: the text is empty")
    return {"perplexity": math.exp(nll / n_tokens), "bits_per_byte": nll / math.log(2) / n_bytes,
            "byte_perplexity": math.exp(nll / n_bytes), "word_perplexity": math.exp(nll / max(n_words, 1)),
            "tokens": n_tokens, "bytes": n_bytes, "n": len(docs)}


def text_documents(path: str | Path, tokenizer: Tokenizer) -> list[tuple[list[int], str]]:
    """One document: the whole UTF-8 text file."""
    path = Path(path)
    if not path.is_file():
        raise LaminaError(f"{path}: no such text file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise LaminaError(f"{path}: not UTF-8 text") from None
    return [(tokenizer.encode(text, bos=False), text)]


def validation_documents(corpus: str | Path, tokenizer: Tokenizer, limit: int | None = None,
                     split: str = "validation") -> list[tuple[list[int], str]]:
    """The documents of a corpus's validation split (the first `limit`), each once, in shard
    order (`lamina.data.documents`). The model must use the corpus's tokenizer: the shards hold
    token ids."""
    docs = [(d.tokens, d.text) for d in documents.corpus_documents(corpus, split, tokenizer=tokenizer, limit=limit)]
    if not docs:
        raise LaminaError(f"{corpus}: no {split} documents; build it with a larger validation_fraction")
    return docs
