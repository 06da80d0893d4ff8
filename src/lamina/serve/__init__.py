"""Serving: batched generation with a KV cache, sampling, the `LLM` object behind `lamina.load`,
continuous batching (`Batcher`) and the OpenAI-compatible server (`lamina.serve.api`, imported on
demand: it needs FastAPI). Imports model, checkpoint and tokenizer only."""

from .batcher import Batcher, BatcherConfig
from .engine import Engine
from .llm import LLM, load
from .sampling import SamplingParams

__all__ = ["Batcher", "BatcherConfig", "Engine", "LLM", "load", "SamplingParams"]
