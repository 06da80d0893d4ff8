"""`Tokenizer`: one interface over a fast HF `tokenizers` backend, with lamina's rules for special
tokens: control tokens are only ever produced by lamina's own renderers, never parsed out of text
unless the caller allows it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer as Backend

from ..errors import LaminaError

# Tokens that end an assistant turn in the chat formats lamina knows (Llama 3, ChatML, Llama 2).
TURN_END_TOKENS = ("<|eot_id|>", "<|im_end|>", "<|end_of_text|>", "</s>", "<|endoftext|>")


class Tokenizer:
    def __init__(self, backend: Backend, *, bos_token: str | None = None,
                 eos_token: str | None = None, add_bos: bool = False,
                 chat_template: str | None = None):
        self.backend = backend
        self.bos_token, self.eos_token = bos_token, eos_token
        self.add_bos = add_bos
        self.chat_template = chat_template
        self._plain: Backend | None = None   # same vocabulary, special tokens read as text

    # -- ids ---------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def token_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    @property
    def bos_id(self) -> int | None:
        return self.token_id(self.bos_token) if self.bos_token else None

    @property
    def eos_id(self) -> int | None:
        return self.token_id(self.eos_token) if self.eos_token else None

    @property
    def special_tokens(self) -> dict[str, int]:
        return {t.content: i for i, t in self.backend.get_added_tokens_decoder().items() if t.special}

    @property
    def stop_ids(self) -> tuple[int, ...]:
        """Ids that end generation: EOS and the end-of-turn tokens of chat formats."""
        ids = {self.eos_id} | {self.token_id(t) for t in TURN_END_TOKENS}
        return tuple(sorted(i for i in ids if i is not None))

    # -- text ----------------------------------------------------------------------------------
    def encode(self, text: str, *, bos: bool | None = None, eos: bool = False,
               allowed_special: str | Iterable[str] = ()) -> list[int]:
        """Token ids of `text`. Text that spells a special token is encoded as ordinary text
        unless `allowed_special` is "all" (trusted text, e.g. a rendered template)."""
        if allowed_special == "all":
            ids = self.backend.encode(text, add_special_tokens=False).ids
        elif allowed_special:
            ids = self._encode_allowing(text, set(allowed_special))
        else:
            ids = self.plain_backend.encode(text, add_special_tokens=False).ids
        if self.add_bos if bos is None else bos:
            ids = [self._required_id(self.bos_token, "BOS")] + ids
        if eos:
            ids = ids + [self._required_id(self.eos_token, "EOS")]
        return ids

    def encode_batch(self, texts: list[str], **kw) -> list[list[int]]:
        return [self.encode(t, **kw) for t in texts]

    def decode(self, ids: Iterable[int], *, skip_special: bool = False) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special)

    @property
    def plain_backend(self) -> Backend:
        if self._plain is None:
            self._plain = Backend.from_str(self.backend.to_str())
            self._plain.encode_special_tokens = True
        return self._plain

    def _encode_allowing(self, text: str, allowed: set[str]) -> list[int]:
        ids: list[int] = []
        rest = text
        while rest:
            hits = [(rest.find(t), t) for t in allowed if t in rest]
            if not hits:
                break
            at, tok = min(hits)
            ids += self.plain_backend.encode(rest[:at], add_special_tokens=False).ids
            ids.append(self._required_id(tok, tok))
            rest = rest[at + len(tok):]
        return ids + self.plain_backend.encode(rest, add_special_tokens=False).ids

    def _required_id(self, token: str | None, what: str) -> int:
        i = self.token_id(token) if token else None
        if i is None:
            raise LaminaError(f"this tokenizer has no {what} token")
        return i

    # -- files ---------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> None:
        """tokenizer.json + tokenizer_config.json, as transformers' AutoTokenizer reads them."""
        directory = Path(directory)
        self.backend.save(str(directory / "tokenizer.json"))
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": self.bos_token, "eos_token": self.eos_token,
            "add_bos_token": self.add_bos, "add_eos_token": False,
            "clean_up_tokenization_spaces": False,
            "model_max_length": 1 << 30,
        }
        if self.chat_template:
            config["chat_template"] = self.chat_template
        (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))

    @classmethod
    def from_dir(cls, directory: str | Path) -> Tokenizer:
        directory = Path(directory)
        path = directory / "tokenizer.json"
        if not path.is_file():
            raise LaminaError(f"{directory}: no tokenizer.json")
        try:
            backend = Backend.from_file(str(path))
        except Exception as e:
            raise LaminaError(f"{path}: not a readable tokenizer.json ({e})") from None
        config = {}
        if (directory / "tokenizer_config.json").is_file():
            config = json.loads((directory / "tokenizer_config.json").read_text())
        bos, eos = (_token_text(config.get(k)) for k in ("bos_token", "eos_token"))
        if "add_bos_token" in config:
            add_bos = bool(config["add_bos_token"])
        else:   # e.g. Llama 3: the post-processor adds BOS; lamina adds it itself instead
            probe = backend.encode("", add_special_tokens=True).ids
            add_bos = bool(probe) and bos is not None and probe[0] == backend.token_to_id(bos)
        backend.post_processor = None
        return cls(backend, bos_token=bos, eos_token=eos, add_bos=add_bos,
                   chat_template=_chat_template_text(config.get("chat_template")))


def _token_text(value) -> str | None:
    return value.get("content") if isinstance(value, dict) else value


def _chat_template_text(value) -> str | None:
    if isinstance(value, list):   # [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in value}
        return named.get("default") or next(iter(named.values()), None)
    return value
