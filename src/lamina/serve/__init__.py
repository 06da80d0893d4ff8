"""Serving: batched generation with a KV cache, sampling, and the `LLM` object behind
`lamina.load`. Imports model, checkpoint and tokenizer only."""

from .engine import Engine
from .llm import LLM, load
from .sampling import SamplingParams

__all__ = ["Engine", "LLM", "load", "SamplingParams"]
