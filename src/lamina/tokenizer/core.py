"""`Tokenizer`: one interface over two fast engines, with lamina's rules for special tokens:
control tokens are only ever produced by lamina's own renderers, never parsed out of text unless
the caller allows it.

A tokenizer read from a tiktoken rank file (Llama 3 and 4, and lamina's own) encodes with `tiktoken`;
every other one (tokenizer.json, SentencePiece, GGUF) with HF `tokenizers`. The rank-file kind
also has an HF view, `backend`, built on first use: it is what gets saved as tokenizer.json or
written to GGUF, and it is tested to give the same ids."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer as Backend
from tokenizers import processors

from ..errors import LaminaError
from .ranks import Ranks, byte_to_char, unspell

BYTE_LEVEL = frozenset(byte_to_char())      # the characters GPT-2 style byte-level BPE spells bytes with

# Tokens that end an assistant turn in the chat formats lamina knows (Llama 3, Llama 4, ChatML, Llama 2).
TURN_END_TOKENS = ("<|eot_id|>", "<|eom_id|>", "<|eot|>", "<|eom|>", "<|im_end|>", "<|end_of_text|>", "</s>",
                   "<|endoftext|>")


def valid_unicode(text: str) -> str:
    """`text` with lone surrogates (which no UTF-8 encoder accepts) replaced by U+FFFD and
    surrogate pairs joined, as tiktoken does, so both engines see the same characters."""
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


class Tokenizer:
    def __init__(self, backend: Backend | None = None, *, ranks: Ranks | None = None,
                 bos_token: str | None = None, eos_token: str | None = None, add_bos: bool = False,
                 chat_template: str | None = None):
        if (backend is None) == (ranks is None):
            raise ValueError("a Tokenizer needs exactly one of an HF backend or tiktoken ranks")
        self._backend, self.ranks = backend, ranks
        self.encoding = ranks.encoding() if ranks is not None else None   # tiktoken, when ranks
        self.bos_token, self.eos_token = bos_token, eos_token
        self.add_bos = add_bos
        self.chat_template = chat_template
        self._plain: Backend | None = None   # same vocabulary, special tokens read as text
        self._specials: dict[str, int] | None = None
        self._special_split: re.Pattern | None = None

    @property
    def backend(self) -> Backend:
        """The HF `tokenizers` form of this tokenizer (built from the ranks on first use)."""
        if self._backend is None:
            self._backend = self.ranks.backend()
        return self._backend

    # -- ids ---------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        if self.encoding is not None:
            return self.encoding.n_vocab
        return self.backend.get_vocab_size(with_added_tokens=True)

    def token_id(self, token: str) -> int | None:
        """The id of a special token, or of text that is exactly one token (HF spelling)."""
        if self.encoding is not None:
            if token in self.special_tokens:
                return self.special_tokens[token]
            try:
                return self.encoding.encode_single_token(token)
            except KeyError:
                return None
        return self.backend.token_to_id(token)

    def __getitem__(self, token: str) -> int:
        """`tok["<|eot_id|>"]`: a special token's id by name."""
        return self._required_id(token, repr(token))

    @property
    def bos_id(self) -> int | None:
        return self.token_id(self.bos_token) if self.bos_token else None

    @property
    def eos_id(self) -> int | None:
        return self.token_id(self.eos_token) if self.eos_token else None

    @property
    def special_tokens(self) -> dict[str, int]:
        """Control tokens by name: what `allowed_special="all"` parses and plain text never does."""
        if self._specials is None:
            if self.encoding is not None:
                self._specials = dict(self.ranks.specials)
            else:
                self._specials = {t.content: i for i, t in self.backend.get_added_tokens_decoder().items()
                                  if t.special}
        return self._specials

    def token_bytes(self) -> list[int]:
        """How many bytes of text each id stands for (0 for special tokens): the denominator of
        bits per byte, which compares models across tokenizers."""
        special = set(self.special_tokens.values())
        return [0 if i in special else len(self.piece(i)) for i in range(self.vocab_size)]

    def piece(self, i: int) -> bytes:
        """The bytes of text id `i` stands for (a special token: its name), whole even where they are
        only part of a character: what an API reports as a token's `bytes`."""
        if self.ranks is not None:
            try:
                return self.encoding.decode_single_token_bytes(i)
            except KeyError:                                        # an id no token has
                return b""
        piece = self.backend.id_to_token(i)
        if piece is None:
            return b""
        if piece in self.special_tokens:
            return piece.encode()
        if re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", piece):             # SentencePiece byte fallback
            return bytes([int(piece[3:5], 16)])
        if set(piece) <= BYTE_LEVEL:                                # GPT-2 style byte-level BPE
            return unspell(piece)
        return piece.replace("\u2581", " ").encode()              # SentencePiece: ▁ is a space

    @property
    def stop_ids(self) -> tuple[int, ...]:
        """Ids that end generation: EOS and the end-of-turn tokens of chat formats."""
        ids = {self.eos_id} | {self.token_id(t) for t in TURN_END_TOKENS}
        return tuple(sorted(i for i in ids if i is not None))

    # -- text ----------------------------------------------------------------------------------
    def encode(self, text: str, *, bos: bool | None = None, eos: bool = False,
               allowed_special: str | Iterable[str] = ()) -> list[int]:
        """Token ids of `text`. Text that spells a special token is encoded as ordinary text
        unless `allowed_special` is "all" (trusted text, e.g. a rendered template) or names it."""
        if self.encoding is not None:
            if not allowed_special:
                ids = self.encoding.encode_ordinary(text)
            else:
                allowed = "all" if allowed_special == "all" else set(allowed_special)
                ids = self.encoding.encode(text, allowed_special=allowed, disallowed_special=())
        elif allowed_special == "all":
            ids = self._hf_encode(self.backend, text)
        elif allowed_special:
            ids = self._encode_allowing(text, set(allowed_special))
        else:
            ids = self._hf_encode(self.plain_backend, text)
        return self._add_bos_eos(ids, bos, eos)

    def encode_batch(self, texts: list[str], *, bos: bool | None = None, eos: bool = False,
                     num_threads: int = 8) -> list[list[int]]:
        """Plain text of many documents (no special tokens parsed), encoded in parallel: tiktoken
        on `num_threads` threads, HF tokenizers on its own thread pool (RAYON_NUM_THREADS)."""
        if self.encoding is not None:
            batch = self.encoding.encode_ordinary_batch(texts, num_threads=num_threads)
        else:
            try:
                encodings = self.plain_backend.encode_batch(texts, add_special_tokens=False)
            except TypeError:   # a lone surrogate somewhere
                encodings = self.plain_backend.encode_batch([valid_unicode(t) for t in texts],
                                                            add_special_tokens=False)
            batch = [e.ids for e in encodings]
        if (self.add_bos if bos is None else bos) or eos:
            batch = [self._add_bos_eos(ids, bos, eos) for ids in batch]
        return batch

    def decode(self, ids: Iterable[int], *, skip_special: bool = False) -> str:
        if self.encoding is not None:
            ids = list(ids)
            if skip_special:
                specials = set(self.special_tokens.values())
                ids = [i for i in ids if i not in specials]
            return self.encoding.decode(ids)
        return self.backend.decode(list(ids), skip_special_tokens=skip_special)

    def split_special(self, text: str) -> list[str | int]:
        """`text` cut at each special token it spells: plain stretches (str) and token ids (int).
        For trusted text only, such as the parts of a chat format lamina wrote itself."""
        if self._special_split is None:
            names = sorted(self.special_tokens, key=len, reverse=True)
            self._special_split = re.compile("|".join(map(re.escape, names))) if names else re.compile("(?!)")
        parts: list[str | int] = []
        pos = 0
        for m in self._special_split.finditer(text):
            if m.start() > pos:
                parts.append(text[pos:m.start()])
            parts.append(self.special_tokens[m.group()])
            pos = m.end()
        if pos < len(text):
            parts.append(text[pos:])
        return parts

    @property
    def plain_backend(self) -> Backend:
        if self._plain is None:
            self._plain = Backend.from_str(self.backend.to_str())
            self._plain.encode_special_tokens = True
        return self._plain

    @staticmethod
    def _hf_encode(backend: Backend, text: str) -> list[int]:
        try:
            return backend.encode(text, add_special_tokens=False).ids
        except TypeError:   # HF refuses lone surrogates; read them as tiktoken does
            return backend.encode(valid_unicode(text), add_special_tokens=False).ids

    def _add_bos_eos(self, ids: list[int], bos: bool | None, eos: bool) -> list[int]:
        if self.add_bos if bos is None else bos:
            ids = [self._required_id(self.bos_token, "BOS")] + ids
        if eos:
            ids = ids + [self._required_id(self.eos_token, "EOS")]
        return ids

    def _encode_allowing(self, text: str, allowed: set[str]) -> list[int]:
        ids: list[int] = []
        rest = text
        while rest:
            hits = [(rest.find(t), t) for t in allowed if t in rest]
            if not hits:
                break
            at, tok = min(hits)
            ids += self._hf_encode(self.plain_backend, rest[:at])
            ids.append(self._required_id(tok, tok))
            rest = rest[at + len(tok):]
        return ids + self._hf_encode(self.plain_backend, rest)

    def _required_id(self, token: str | None, what: str) -> int:
        i = self.token_id(token) if token else None
        if i is None:
            raise LaminaError(f"this tokenizer has no {what} token")
        return i

    # -- files ---------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> None:
        """tokenizer.json + tokenizer_config.json, as transformers' AutoTokenizer reads them."""
        directory = Path(directory)
        backend = self.backend
        if self.add_bos and self.bos_id is not None:   # so transformers adds BOS too, as Llama 3's does
            backend = Backend.from_str(backend.to_str())
            backend.post_processor = processors.TemplateProcessing(
                single=f"{self.bos_token}:0 $A:0", pair=f"{self.bos_token}:0 $A:0 {self.bos_token}:1 $B:1",
                special_tokens=[(self.bos_token, self.bos_id)])
        backend.save(str(directory / "tokenizer.json"))
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
        if not (directory / "tokenizer.json").is_file():
            raise LaminaError(f"{directory}: no tokenizer.json")
        return cls.from_json(directory / "tokenizer.json")

    @classmethod
    def from_json(cls, path: str | Path) -> Tokenizer:
        """A tokenizer.json, with the tokenizer_config.json beside it when there is one."""
        path = Path(path)
        try:
            backend = Backend.from_file(str(path))
        except Exception as e:
            raise LaminaError(f"{path}: not a readable tokenizer.json ({e})") from None
        config = {}
        config_path = path.parent / "tokenizer_config.json"
        if config_path.is_file():
            try:
                config = json.loads(config_path.read_text())
            except ValueError as e:
                raise LaminaError(f"{config_path}: not valid JSON ({e})") from None
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
