"""tiktoken-style byte-level BPE: a rank file (one `base64(token bytes) rank` per line), the regex
that splits text before BPE, and special tokens numbered after the ranks. Llama 3 and Llama 4 ship
their tokenizers this way, and lamina writes its own trained tokenizers the same way.

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

# Llama 4's split pattern (Meta's llama4/tokenizer.py `O200K_PATTERN`, tiktoken's o200k_base):
# unlike Llama 3's, a word splits before an upper-case letter that follows lower-case ones
# ("CamelCase" is two pieces), a contraction stays on its word, and "/" may trail punctuation.
_WORD_TAIL = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
LLAMA4_PATTERN = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+" + _WORD_TAIL +
                  r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*" + _WORD_TAIL +
                  r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def reserved_specials(start: int, stop: int, group: str = "") -> list[str]:
    """Meta's placeholder names, `<|{group}_reserved_special_token_{i}|>` for i in start..stop-1."""
    prefix = f"{group}_" if group else ""
    return [f"<|{prefix}reserved_special_token_{i}|>" for i in range(start, stop)]


# Llama 4's named special tokens, in id order right after its 200,000 ranks, as Meta's
# llama4/tokenizer.py numbers them; the remaining slots of its 2048 are
# `<|reserved_special_token_{0..}|>`. Each group keeps its own reserved placeholders in place.
LLAMA4_NAMED_SPECIALS = (
    "<|begin_of_text|>", "<|end_of_text|>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
    # text post-training (ids 200005..200079); Meta's list skips placeholders 6 and 7
    "<|header_start|>", "<|header_end|>", "<|eom|>", "<|eot|>", "<|step|>",
    *reserved_specials(0, 6, "text_post_train"), "<|python_start|>", "<|python_end|>",
    "<|finetune_right_pad|>", *reserved_specials(8, 69, "text_post_train"),
    # vision (200080..201133)
    "<|image_start|>", "<|image_end|>", *reserved_specials(0, 2, "vision"), "<|tile_x_separator|>",
    "<|tile_y_separator|>", *reserved_specials(2, 6, "vision"), "<|image|>",
    *reserved_specials(6, 7, "vision"), "<|patch|>", *reserved_specials(7, 1048, "vision"),
    # reasoning (201134..201143)
    *reserved_specials(0, 8, "reasoning"), "<|reasoning_thinking_start|>", "<|reasoning_thinking_end|>")
LLAMA4_SPECIAL_SLOTS = 2048
# Meta's Llama 4 rank file (llama_models/llama4/tokenizer.model), known by its digest (checked only
# for a file of its size): a rank file says nothing of its family, and any other is read as Llama 3's
LLAMA4_RANK_COUNT = 200_000
LLAMA4_RANKS_SHA256 = "d0bdbaf59b0762c8c807617e2d8ea51420eb1b1de266df2495be755c8e0ed6ed"


def special_tokens(n_ranks: int, named: tuple[str, ...], slots: int, *, first_reserved: int = 0) -> dict[str, int]:
    """Meta's layout of special tokens after `n_ranks` BPE tokens: the `named` ones, then
    `<|reserved_special_token_{first_reserved..}|>` up to `slots` in all."""
    if slots < len(named):
        raise LaminaError(f"{slots} special-token slots cannot hold the {len(named)} named special tokens")
    reserved = reserved_specials(first_reserved, first_reserved + slots - len(named))
    return {t: n_ranks + i for i, t in enumerate([*named, *reserved])}


def llama3_special_tokens(n_ranks: int, slots: int = LLAMA3_SPECIAL_SLOTS) -> dict[str, int]:
    """Llama 3's special tokens (its reserved ones go on from the two it names)."""
    return special_tokens(n_ranks, LLAMA3_NAMED_SPECIALS, slots, first_reserved=2)


def llama4_special_tokens(n_ranks: int) -> dict[str, int]:
    return special_tokens(n_ranks, LLAMA4_NAMED_SPECIALS, LLAMA4_SPECIAL_SLOTS)


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
