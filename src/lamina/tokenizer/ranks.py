"""tiktoken-style byte-level BPE: a rank file (one `base64(token bytes) rank` per line), the regex
that splits text before BPE, and special tokens numbered after the ranks. Llama 3 ships its
tokenizer this way, and lamina writes its own trained tokenizers the same way.

`Ranks` builds both engines from the same data: a `tiktoken.Encoding` (fast encoding) and the
equivalent HF `tokenizers` BPE (for tokenizer.json, GGUF and transformers)."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import tiktoken
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as Backend

from ..errors import LaminaError

# Llama 3's split pattern (Meta's llama3/tokenizer.py `pat_str`; llama.cpp's "llama-bpe").
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                  r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# Llama 3's named special tokens, in id order right after the ranks; the remaining slots of its
# 256 are `<|reserved_special_token_{2..}|>` (Meta's llama3/tokenizer.py).
LLAMA3_NAMED_SPECIALS = (
    "<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>", "<|step_id|>",
    "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>",
    "<|image|>")
LLAMA3_SPECIAL_SLOTS = 256


def llama3_special_tokens(n_ranks: int, slots: int = LLAMA3_SPECIAL_SLOTS) -> dict[str, int]:
    """Llama 3's special tokens after `n_ranks` BPE tokens: the named ones, then reserved ones
    up to `slots` in all."""
    if slots < len(LLAMA3_NAMED_SPECIALS):
        raise LaminaError(f"{slots} special-token slots cannot hold Llama 3's "
                          f"{len(LLAMA3_NAMED_SPECIALS)} named special tokens")
    reserved = [f"<|reserved_special_token_{i}|>" for i in range(2, 2 + slots - len(LLAMA3_NAMED_SPECIALS))]
    return {t: n_ranks + i for i, t in enumerate([*LLAMA3_NAMED_SPECIALS, *reserved])}


@cache
def byte_to_char() -> tuple[str, ...]:
    """GPT-2's byte-level alphabet, which HF tokenizers use to spell bytes as printable text:
    printable Latin-1 bytes stand for themselves, the other 68 get code points from 256 on."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return tuple(chars[b] for b in range(256))


def spell(token: bytes) -> str:
    table = byte_to_char()
    return "".join(table[b] for b in token)


def unspell(text: str) -> bytes:
    table = {c: b for b, c in enumerate(byte_to_char())}
    return bytes(table[c] for c in text)


@dataclass(frozen=True, eq=False)
class Ranks:
    ranks: dict[bytes, int]              # token bytes -> rank; ranks run 0..len-1
    pattern: str = LLAMA3_PATTERN
    special_tokens: dict[str, int] | None = None   # name -> id (ids after the ranks)
    name: str = "lamina"

    @property
    def specials(self) -> dict[str, int]:
        return self.special_tokens if self.special_tokens is not None else llama3_special_tokens(len(self.ranks))

    def encoding(self) -> tiktoken.Encoding:
        try:
            return tiktoken.Encoding(self.name, pat_str=self.pattern, mergeable_ranks=self.ranks,
                                     special_tokens=self.specials)
        except ValueError as e:   # e.g. a pattern fancy-regex cannot compile
            raise LaminaError(f"{self.name}: tiktoken cannot use these ranks ({e})") from None

    def backend(self) -> Backend:
        """The same tokenizer in HF `tokenizers`. tiktoken merges, at each step, the adjacent pair
        whose concatenation has the lowest rank, and takes a whole piece as one token when it is
        in the vocabulary. So the merges list holds every split of every token into two tokens,
        in the order of the rank of what they make, and `ignore_merges` keeps whole pieces."""
        merges = []
        for token, _ in sorted(self.ranks.items(), key=lambda kv: kv[1]):
            for cut in range(1, len(token)):
                left, right = token[:cut], token[cut:]
                if left in self.ranks and right in self.ranks:
                    merges.append((spell(left), spell(right)))
        vocab = {spell(token): rank for token, rank in self.ranks.items()}
        backend = Backend(models.BPE(vocab, merges, ignore_merges=True))
        backend.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(self.pattern), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        backend.decoder = decoders.ByteLevel()
        specials = sorted(self.specials.items(), key=lambda kv: kv[1])
        if [i for _, i in specials] != list(range(len(self.ranks), len(self.ranks) + len(specials))):
            raise LaminaError("special tokens must be numbered right after the ranks to build an "
                              "HF tokenizer from them")
        backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, _ in specials])
        return backend

    def save(self, path: str | Path) -> None:
        """The rank file, in the format of Llama 3's tokenizer.model (and tiktoken's .tiktoken)."""
        lines = (f"{base64.b64encode(t).decode()} {r}\n" for t, r in sorted(self.ranks.items(), key=lambda kv: kv[1]))
        Path(path).write_text("".join(lines))


def read_ranks(path: str | Path) -> dict[bytes, int]:
    """A rank file's ranks, checked: every line `base64 rank`, ranks 0..n-1 once each, and every
    single byte a token (or byte-level BPE could not encode all text)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        raise LaminaError(f"{path}: file not found") from None
    except UnicodeDecodeError:
        raise LaminaError(f"{path}: not a tiktoken rank file (not ASCII text)") from None
    ranks: dict[bytes, int] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line:
            continue
        try:
            token, rank = line.split(" ")
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except (ValueError, binascii.Error):
            raise LaminaError(f"{path}: line {n} is not `<base64 token> <rank>`; the rank file "
                              "is corrupt or not a tiktoken rank file") from None
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise LaminaError(f"{path}: ranks are not 0..{len(ranks) - 1} once each (duplicate tokens "
                          "or ranks); the rank file is corrupt")
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        raise LaminaError(f"{path}: {len(missing)} single bytes are not tokens (first: {missing[0]:#04x}); "
                          "a byte-level BPE rank file needs all 256")
    return ranks


def ranks_from_backend(backend: Backend) -> dict[bytes, int]:
    """The ranks of a byte-level HF BPE (as its trainer makes it: ids in merge order)."""
    vocab = backend.get_vocab(with_added_tokens=False)
    return {unspell(t): i for t, i in vocab.items()}
