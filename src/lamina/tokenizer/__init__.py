"""Tokenizers: one `Tokenizer` interface over fast backends (tiktoken, HF tokenizers), `load_tokenizer` for
every format the Llama family ships (tiktoken ranks, SentencePiece, tokenizer.json, GGUF), chat
formats rendered so user text can never forge a control token, and BPE training."""

from .chat import render_chat, template_parts
from .core import Tokenizer
from .formats import CHAT_FORMATS, CHATML, LLAMA2, LLAMA3, LLAMA4, SMOLLM2, ChatFormat, chat_format, encode_parts
from .gguf_vocab import gguf_metadata, tokenizer_from_gguf
from .load import load_ranks, load_tokenizer, load_sentencepiece
from .ranks import Ranks

__all__ = ["CHATML", "CHAT_FORMATS", "LLAMA2", "LLAMA3", "LLAMA4", "SMOLLM2", "ChatFormat", "Ranks", "Tokenizer",
           "chat_format", "encode_parts", "gguf_metadata", "load_ranks", "load_sentencepiece", "load_tokenizer",
           "render_chat", "template_parts", "tokenizer_from_gguf"]
