"""Greedy generation until a stop string, for generative tasks (GSM8K): lm-eval's
`generate_until` on lamina's batched engine. Prompts are sorted by length and batched; a batch
stops once every row has produced a stop string or an end-of-sequence token, and each text is
cut before its first stop string."""

from __future__ import annotations

from typing import Callable

from ..serve import Engine, SamplingParams
from ..tokenizer import Tokenizer


def cut_at_stop(text: str, stops: tuple[str, ...]) -> str:
    """`text` up to its first stop string (lm-eval splits on each stop string in turn)."""
    for s in stops:
        text = text.split(s)[0]
    return text


def generate_until(engine: Engine, tokenizer: Tokenizer, prompts: list[str], stops: tuple[str, ...],
                   max_new_tokens: int, batch_size: int,
                   progress: Callable[[int], None] | None = None) -> list[str]:
    """The greedy continuation of each prompt, cut at the first of `stops`."""
    eos = tokenizer.decode([tokenizer.eos_id]) if tokenizer.eos_id is not None else None
    stops = tuple(dict.fromkeys(stops + ((eos,) if eos else ())))
    context = engine.config.max_seq_len - max_new_tokens
    encoded = [tokenizer.encode(p)[-context:] for p in prompts]     # lm-eval truncates left
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    params = SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens,
                            stop_token_ids=(tokenizer.eos_id,) if tokenizer.eos_id is not None else ())
    out: list[str] = [""] * len(prompts)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        tokens: list[list[int]] = [[] for _ in rows]
        finished = [False] * len(rows)
        for step in engine.generate([encoded[i] for i in rows], params):
            for j, t in enumerate(step):
                if t is None:
                    finished[j] = True
                elif not finished[j]:
                    tokens[j].append(t)
                    # a stop string can only complete in the text's tail
                    tail = tokenizer.decode(tokens[j][-8:])
                    finished[j] = any(s in tail for s in stops)
            if all(finished):
                break
        for j, i in enumerate(rows):
            out[i] = cut_at_stop(tokenizer.decode(tokens[j], skip_special=True), stops)
        if progress:
            progress(len(rows))
    return out
