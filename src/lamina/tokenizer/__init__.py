"""Tokenizers: one `Tokenizer` interface over fast backends, loading from model directories and
GGUF metadata, and chat formats rendered so user text can never forge a control token."""

from .chat import render_chat
from .core import Tokenizer
from .gguf_vocab import gguf_metadata, tokenizer_from_gguf

__all__ = ["Tokenizer", "render_chat", "tokenizer_from_gguf", "gguf_metadata"]
