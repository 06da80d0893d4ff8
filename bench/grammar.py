"""Which grammar library enforces structured output: llguidance against outlines-core, measured on
lamina's own SmolLM2 vocabulary (49,152 tokens) on this machine, for what a server pays per request
and per token.

    .venv/bin/python -m bench.grammar [--schemas 50] [--repeats 5]

- **vocabulary**: building the library's view of the tokenizer once (llguidance from the
  `tokenizers` JSON lamina holds; outlines-core from each token's bytes, `Tokenizer.piece`).
- **compile**: a request's JSON schema to something that can mask tokens (llguidance: grammar and
  matcher, lazily; outlines-core: its regex, then the token index, eagerly), for `--schemas` of
  tests/serve/test_structured.py's generated schemas: median and max.
- **mask per token**: walking a valid document token by token, the allowed-token mask as the
  batcher needs it (a (V,) bool tensor) and the advance, median over `--repeats`.

xgrammar is not measured: its wheel requires torch, transformers and triton at run time, which a
CPU serving install should not pull in. Rows go to bench/results/grammar.json."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bench.decode import machine
from lamina.serve.grammar import JSON_OPTIONS, Constraint, json_schema_grammar, ll_tokenizer
from lamina.tokenizer import load_tokenizer

RESULTS = Path(__file__).parent / "results" / "grammar.json"
DOC_SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 12}, "count": {"type": "integer", "minimum": 0, "maximum": 50},
    "tags": {"type": "array", "items": {"enum": ["red", "green", "blue"]}, "maxItems": 3},
    "place": {"type": "object", "properties": {"city": {"type": "string"}, "zip": {"type": "string",
                                                                                  "pattern": "^[0-9]{5}$"}},
              "required": ["city"], "additionalProperties": False}},
    "required": ["name", "count"], "additionalProperties": False}
DOC = '{"name": "Llama farm", "count": 7, "tags": ["red", "blue"], "place": {"city": "Cusco", "zip": "08000"}}'


def outlines_vocabulary(tok):
    import outlines_core as oc
    special, pieces = set(tok.special_tokens.values()), {}
    for i in range(tok.vocab_size):
        if i not in special:
            pieces.setdefault(tok.piece(i), []).append(i)
    return oc.Vocabulary(tok.eos_id, pieces)


class OutlinesConstraint:
    """The batcher's Constraint interface over outlines-core (for this measurement only)."""

    def __init__(self, schema: dict, vocabulary, vocab_size: int):
        import outlines_core as oc
        # the same separators as lamina's llguidance options, so both accept the same documents
        regex = oc.json_schema.build_regex_from_schema(json.dumps(schema), whitespace_pattern=r" ?")
        self.guide, self.vocab = oc.Guide(oc.Index(regex, vocabulary)), vocab_size

    def allowed(self) -> torch.Tensor:
        # its fastest path: a 32-bit-word bitmask written in place (get_tokens builds a Python
        # list, as long as the vocabulary inside a string)
        words = torch.zeros((self.vocab + 31) // 32, dtype=torch.int32)
        self.guide.write_mask_into(words.data_ptr(), words.numel(), 4)
        bits = np.unpackbits(words.numpy().view(np.uint8), bitorder="little")[:self.vocab]
        return torch.from_numpy(bits.astype(bool))

    def take(self, token: int) -> None:
        self.guide.advance(token)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--schemas", type=int, default=50)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).parent.parent))
    from tests.serve.test_structured import schemas
    tok = load_tokenizer("smollm2-135m-instruct")
    tests = schemas(args.schemas, seed=1)
    ids = tok.encode(DOC)
    rows = []

    ll_tokenizer.cache_clear()
    vocab_s = timed(lambda: ll_tokenizer(tok))
    compile_s = [timed(lambda s=s: Constraint(json_schema_grammar(s), tok).allowed()) for s in tests]

    def walk_ll():
        c = Constraint(json_schema_grammar(DOC_SCHEMA), tok)
        for i in ids:
            assert c.allowed()[i]
            c.take(i)
    per_token = statistics.median(timed(walk_ll) for _ in range(args.repeats)) / len(ids)
    rows.append({"library": "llguidance", "vocabulary_s": vocab_s, "compile_median_ms": 1e3 * statistics.median(compile_s),
                 "compile_max_ms": 1e3 * max(compile_s), "mask_per_token_us": 1e6 * per_token})

    vocabulary = None

    def build():
        nonlocal vocabulary
        vocabulary = outlines_vocabulary(tok)
    vocab_s = timed(build)
    compile_s = [timed(lambda s=s: OutlinesConstraint(s, vocabulary, tok.vocab_size).allowed()) for s in tests]

    def walk_outlines():
        c = OutlinesConstraint(DOC_SCHEMA, vocabulary, tok.vocab_size)
        for i in ids:
            assert c.allowed()[i]
            c.take(i)
    per_token = statistics.median(timed(walk_outlines) for _ in range(args.repeats)) / len(ids)
    rows.append({"library": "outlines-core", "vocabulary_s": vocab_s,
                 "compile_median_ms": 1e3 * statistics.median(compile_s), "compile_max_ms": 1e3 * max(compile_s),
                 "mask_per_token_us": 1e6 * per_token})
    print(f"{'library':<14} {'vocabulary s':>12} {'compile ms (median / max)':>26} {'mask+advance us/token':>22}")
    for r in rows:
        print(f"{r['library']:<14} {r['vocabulary_s']:12.2f} {r['compile_median_ms']:12.1f} / {r['compile_max_ms']:9.1f}"
              f" {r['mask_per_token_us']:22.0f}")
    import llguidance
    import outlines_core
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"benchmark": "grammar", "machine": machine(torch.get_num_threads()),
                                    "vocabulary": "smollm2-135m-instruct (49,152 tokens)",
                                    "versions": {"llguidance": llguidance.__version__ if hasattr(llguidance, "__version__")
                                                 else llguidance.get_version(),
                                                 "outlines_core": getattr(outlines_core, "__version__", "0.2.14")},
                                    "json_options": JSON_OPTIONS, "schemas": args.schemas, "document_tokens": len(ids),
                                    "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
