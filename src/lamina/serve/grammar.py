"""Structured output: a reply held to a JSON schema (or to any JSON object) while it is decoded.

Before each token of a constrained request, the grammar says which tokens may come next, and the
others get no probability; the token chosen is then fed to the grammar. The library is
llguidance (Microsoft's Rust engine behind Guidance, also in vLLM and llama.cpp): it works from
lamina's own vocabularies — a `tokenizers` JSON or tiktoken ranks, as `lamina.tokenizer` holds
them — and computes a mask of SmolLM2's 49k tokens in tens of microseconds; the choice between
it, outlines-core and xgrammar was measured (bench/grammar.py, README). A request without a
grammar never touches any of this, so unconstrained rows in the same batch are unchanged.

JSON is compiled with fixed separators (", " and ": ") and no free whitespace: a small model
given the freedom tends to spend its tokens on spaces and newlines and run out before closing
the object."""

from __future__ import annotations

import functools
import json

import numpy as np
import torch
from torch import Tensor

from ..errors import LaminaError
from ..tokenizer import Tokenizer

JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


class GrammarError(LaminaError):
    """A schema or grammar that cannot be enforced (HTTP 400, naming response_format)."""


@functools.lru_cache(maxsize=4)
def ll_tokenizer(tok: Tokenizer):
    """llguidance's view of a lamina tokenizer (about a second to build: cached per tokenizer).
    The stop tokens are its end-of-sequence tokens: the grammar allows them once it is complete."""
    import llguidance
    stops = list(tok.stop_ids) or None
    if tok.ranks is not None:
        enc = tok.encoding
        return llguidance.LLTokenizer.from_tiktoken(encoder=enc._mergeable_ranks, special_tokens=enc._special_tokens,
                                                    pattern=enc._pat_str, eos_token=stops, n_vocab=tok.vocab_size)
    return llguidance.LLTokenizer(tok.backend.to_str(), n_vocab=tok.vocab_size, eos_token=stops)


def json_schema_grammar(schema: dict) -> str:
    """The grammar of JSON values that validate against `schema` ({"type": "object"}: any object)."""
    import llguidance
    try:
        return llguidance.LLMatcher.grammar_from_json_schema(json.dumps(schema), overrides=JSON_OPTIONS)
    except (ValueError, TypeError) as e:
        raise GrammarError(f"not a usable JSON schema: {e}") from None


class Constraint:
    """One request's grammar as it is decoded: which tokens may come next, and the tokens taken."""

    def __init__(self, grammar: str, tok: Tokenizer):
        import llguidance
        self.vocab = tok.vocab_size
        self.matcher = llguidance.LLMatcher(ll_tokenizer(tok), grammar, log_level=0)
        if self.matcher.is_error():
            raise GrammarError(self.matcher.get_error())

    def allowed(self) -> Tensor:
        """(V,) bool: the tokens the grammar takes next."""
        bits = np.frombuffer(self.matcher.compute_bitmask(), dtype=np.uint8)
        return torch.from_numpy(np.unpackbits(bits, bitorder="little")[:self.vocab].astype(bool))

    def take(self, token: int) -> None:
        self.matcher.consume_token(token)
        if self.matcher.is_error():
            raise GrammarError(self.matcher.get_error())

    @property
    def finished(self) -> bool:
        """The grammar is complete and takes nothing more (the reply is whole)."""
        return self.matcher.is_stopped()


def check_grammar(grammar: str, tok: Tokenizer) -> None:
    """GrammarError, before a request is queued, when `grammar` cannot be enforced."""
    import llguidance
    message = llguidance.LLMatcher.validate_grammar(grammar, ll_tokenizer(tok))
    if message and not message.startswith("WARNING"):
        raise GrammarError(message)
