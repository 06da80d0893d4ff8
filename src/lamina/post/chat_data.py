"""Chat data for post-training: the formats people hold, read into one shape, each record checked,
and conversations rendered into token ids with the mask of the assistant's tokens.

Formats (one per file, recognised from its first record or named): OpenAI `messages`, ShareGPT
(`conversations` of `from`/`value`: human, gpt, system), Alpaca (`instruction`, `input`,
`output`), prompt/completion pairs and preference pairs (`prompt`, `chosen`, `rejected`); the
last two take strings or message lists. Files are JSONL or Parquet. A record that cannot be
trained on (no assistant turn, empty content, an unknown role, roles out of order, longer than
the context) is counted under its reason and skipped; the reader returns that summary beside
what it kept and refuses a file that leaves nothing usable. Nothing is dropped silently.

The assistant mask comes from lamina's own rendering of the model's chat template: a
conversation rendered up to an assistant turn, with the generation prompt, is a prefix of it
rendered with that turn, and what the turn adds (its end-of-turn token included) is what the
model learns to say. So no template needs `{% generation %}` markup; a template for which the
prefix property fails is refused, since no mask could then be trusted."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import LaminaError
from ..tokenizer import Tokenizer, encode_parts, template_parts

FORMATS = ("messages", "sharegpt", "alpaca", "prompt_completion", "preference")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system"}
ROLES = ("system", "user", "assistant")
# the keys each format needs, in the order `detect_format` tries them
_KEYS = {"messages": ("messages",), "sharegpt": ("conversations",), "preference": ("chosen", "rejected"),
         "alpaca": ("instruction", "output"), "prompt_completion": ("prompt", "completion")}


class Malformed(ValueError):
    """A record that cannot be trained on; its message is the reason the summary counts."""


@dataclass(frozen=True)
class Conversation:
    messages: tuple[dict, ...]      # {"role", "content"}: system?, then user/assistant alternating, assistant last
    record: int                     # its line (JSONL) or row (Parquet), from 1


@dataclass(frozen=True)
class Preference:
    prompt: tuple[dict, ...]        # the conversation so far, ending on a user turn
    chosen: tuple[dict, ...]        # the preferred assistant turn(s)
    rejected: tuple[dict, ...]
    record: int


@dataclass
class Summary:
    """What a reader kept and what it skipped, by reason, for one file."""
    path: str
    format: str
    kept: int = 0
    skipped: list[tuple[int, str]] = field(default_factory=list)   # (record, reason)

    def skip(self, record: int, reason: str) -> None:
        self.skipped.append((record, reason))

    def by_reason(self) -> dict[str, int]:
        return dict(Counter(reason for _, reason in self.skipped).most_common())

    def line(self) -> str:
        """`chat.jsonl (sharegpt): 98 kept, 2 skipped: no assistant turn 1 (first: record 7), ...`"""
        text = f"{self.path} ({self.format}): {self.kept} kept, {len(self.skipped)} skipped"
        if not self.skipped:
            return text
        first = {}
        for record, reason in self.skipped:
            first.setdefault(reason, record)
        return text + ": " + ", ".join(f"{reason} {n} (first: record {first[reason]})"
                                       for reason, n in self.by_reason().items())

    def record(self) -> dict:
        return {"path": self.path, "format": self.format, "kept": self.kept, "skipped": self.by_reason()}


@dataclass(frozen=True)
class ChatFile:
    path: Path
    format: str
    records: list[Conversation] | list[Preference]
    summary: Summary


# ---- reading ----

def read_chat(path: str | Path, format: str | None = None) -> ChatFile:
    """The usable records of a JSONL or Parquet file in `format` (recognised when not given),
    with a summary of the rest. Raises LaminaError when nothing usable is left."""
    path = Path(path)
    if format is not None and format not in FORMATS:
        raise LaminaError(f"unknown chat data format {format!r}; known: {', '.join(FORMATS)}")
    raw = list(read_records(path))
    format = format or detect_format(path, raw)
    summary = Summary(str(path), format)
    records = []
    for number, value in raw:
        try:
            if isinstance(value, Malformed):
                raise value
            if not isinstance(value, dict):
                raise Malformed("not a JSON object")
            missing = [k for k in _KEYS[format] if k not in value]
            if missing:
                raise Malformed(f"not a record of the {format} format (no {', '.join(missing)})")
            records.append(_READERS[format](value, number))
        except Malformed as e:
            summary.skip(number, str(e))
    summary.kept = len(records)
    if not records:
        reasons = "; ".join(f"{r}: {n}" for r, n in summary.by_reason().items()) or "the file is empty"
        raise LaminaError(f"{path}: no usable {format} records ({reasons})")
    return ChatFile(path, format, records, summary)


def read_records(path: Path) -> list[tuple[int, object]]:
    """(record number from 1, the record or the Malformed reason it could not be read)."""
    if not path.is_file():
        raise LaminaError(f"{path}: no such file")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq
        try:
            rows = pq.read_table(path).to_pylist()
        except Exception as e:            # pyarrow's own errors: truncated, not Parquet, ...
            raise LaminaError(f"{path}: not a readable Parquet file ({e})") from None
        # a Parquet row has every column of the file; a null is a key the record does not have
        return [(n, {k: v for k, v in row.items() if v is not None}) for n, row in enumerate(rows, 1)]
    if path.suffix not in (".jsonl", ".json"):
        raise LaminaError(f"{path}: chat data must be .jsonl (one JSON record a line) or .parquet")
    out: list[tuple[int, object]] = []
    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    out.append((number, json.loads(line)))
                except (json.JSONDecodeError, RecursionError):
                    out.append((number, Malformed("not valid JSON")))
    except UnicodeDecodeError:
        raise LaminaError(f"{path}: not UTF-8 text; chat data must be JSONL or Parquet") from None
    return out


def detect_format(path: Path, raw: list[tuple[int, object]]) -> str:
    """The format whose keys the first JSON object has."""
    first = next((value for _, value in raw if isinstance(value, dict)), None)
    if first is None:
        raise LaminaError(f"{path}: no JSON object records to read")
    for format, keys in _KEYS.items():
        if all(k in first for k in keys):
            return format
    raise LaminaError(f"{path}: cannot tell the format from the keys {sorted(first)[:8]}; expected one of "
                      "messages, conversations (ShareGPT), instruction/output (Alpaca), prompt/completion, "
                      "prompt/chosen/rejected (or name it with --format)")


# ---- the formats ----

def _messages(value, record: int) -> Conversation:
    return Conversation(check_conversation(_message_list(value["messages"])), record)


def _sharegpt(value, record: int) -> Conversation:
    turns = value["conversations"]
    if not isinstance(turns, list):
        raise Malformed("not a sharegpt record (conversations is not a list)")
    messages = []
    for t in turns:
        if not isinstance(t, dict):
            raise Malformed("not a sharegpt record (a turn is not an object)")
        role = SHAREGPT_ROLES.get(t.get("from"))
        if role is None:
            raise Malformed("unknown role")
        messages.append({"role": role, "content": t.get("value")})
    return Conversation(check_conversation(messages), record)


def _alpaca(value, record: int) -> Conversation:
    instruction, extra, output = value["instruction"], value.get("input") or "", value["output"]
    if not all(isinstance(v, str) for v in (instruction, extra, output)):
        raise Malformed("content is not text")
    user = instruction + ("\n\n" + extra if extra.strip() else "")
    system = [{"role": "system", "content": value["system"]}] if value.get("system") else []
    return Conversation(check_conversation(system + [{"role": "user", "content": user},
                                                     {"role": "assistant", "content": output}]), record)


def _prompt_completion(value, record: int) -> Conversation:
    prompt = _turns(value["prompt"], "user")
    return Conversation(check_conversation(prompt + _turns(value["completion"], "assistant")), record)


def _preference(value, record: int) -> Preference:
    chosen, rejected = _turns(value["chosen"], "assistant"), _turns(value["rejected"], "assistant")
    if "prompt" in value:
        prompt = _turns(value["prompt"], "user")
    else:                        # implicit prompt: both sides carry the conversation; it is their common start
        n = 0
        while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
            n += 1
        prompt, chosen, rejected = chosen[:n], chosen[n:], rejected[n:]
    check_conversation(prompt + chosen)
    check_conversation(prompt + rejected)
    if any(m["role"] != "assistant" for m in chosen + rejected):
        raise Malformed("roles out of order")
    return Preference(tuple(prompt), tuple(chosen), tuple(rejected), record)


_READERS = {"messages": _messages, "sharegpt": _sharegpt, "alpaca": _alpaca,
            "prompt_completion": _prompt_completion, "preference": _preference}


def _turns(value, role: str) -> list[dict]:
    """A string as one turn of `role`, or a message list."""
    return [{"role": role, "content": value}] if isinstance(value, str) else _message_list(value)


def _message_list(value) -> list[dict]:
    if not isinstance(value, list) or not all(isinstance(m, dict) for m in value):
        raise Malformed("messages are not a list of objects")
    return [{"role": m.get("role"), "content": m.get("content")} for m in value]


def check_conversation(messages: list[dict]) -> tuple[dict, ...]:
    """The conversation if it can be trained on: known roles, text in every turn, an optional
    system message first, then user and assistant alternating, user first, assistant last."""
    if any(m["role"] not in ROLES for m in messages):
        raise Malformed("unknown role")
    if any(not isinstance(m["content"], str) for m in messages):
        raise Malformed("content is not text")
    if any(not m["content"].strip() for m in messages):
        raise Malformed("empty content")
    if not any(m["role"] == "assistant" for m in messages):
        raise Malformed("no assistant turn")
    turns = messages[1:] if messages[0]["role"] == "system" else messages
    if turns[-1]["role"] != "assistant" or any(m["role"] != ("user", "assistant")[i % 2] for i, m in enumerate(turns)):
        raise Malformed("roles out of order")
    return tuple(messages)


# ---- rendering with the assistant mask ----

@dataclass(frozen=True)
class Tokenized:
    """A rendered conversation: its ids, and which of them the assistant said (the trained ones)."""
    ids: list[int]
    assistant: list[bool]
    source: int = 0                 # which file (ledger source) it came from
    doc: int = 0                    # its document id in the ledger


def render_with_mask(tok: Tokenizer, messages: list[dict] | tuple[dict, ...],
                     template: str | None = None) -> tuple[list[int], list[bool]]:
    """Ids of the whole conversation and, for each, whether it belongs to an assistant turn: what
    rendering messages[:i + 1] adds to messages[:i] with its generation prompt, for every
    assistant message i. The rendered text must grow by prefixes (else LaminaError: the template
    is not prefix-stable). The ids nearly always do too; where a turn's first characters merge
    into one token with the template's text before them (content that starts with a newline),
    that token counts as the assistant's, as it does for transformers' assistant mask."""
    messages = list(messages)

    def render(upto: int, generation_prompt: bool) -> tuple[str, list[int]]:
        parts = template_parts(tok, messages[:upto], add_generation_prompt=generation_prompt, template=template)
        return "".join(text for text, _ in parts), encode_parts(tok, parts)

    text, full = render(len(messages), False)
    mask = [False] * len(full)
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        (before_text, before), (through_text, through) = render(i, True), render(i + 1, False)
        if not (len(before_text) < len(through_text) and text.startswith(through_text)
                and through_text.startswith(before_text)):
            raise LaminaError("the chat template does not render conversations prefix by prefix (the text up to an "
                              "assistant turn is not a prefix of the text with it), so lamina cannot tell which "
                              "tokens are the assistant's; give another template (chat_format=chatml, llama3, ...)")
        start = common_prefix(before, full)
        end = common_prefix(through, full)
        if end < len(through):        # the turn's last characters share a token with what follows
            end += 1
        mask[start:end] = [True] * (end - start)
    return full, mask


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def tokenize_conversations(tok: Tokenizer, chat: ChatFile, max_tokens: int, template: str | None = None,
                           source: int = 0, first_doc: int = 0) -> list[Tokenized]:
    """The file's conversations rendered, skipping (into its summary) those of more than
    `max_tokens` ids; document ids count from `first_doc` in record order."""
    out = []
    for doc, conv in enumerate(chat.records, first_doc):
        if not isinstance(conv, Conversation):
            raise LaminaError(f"{chat.path}: preference pairs are for preference training (`lamina dpo`); "
                              "supervised fine-tuning needs conversations")
        ids, mask = render_with_mask(tok, conv.messages, template)
        if len(ids) > max_tokens:
            chat.summary.skip(conv.record, "longer than the context")
            continue
        out.append(Tokenized(ids, mask, source, doc))
    chat.summary.kept = len(out)
    if not out:
        raise LaminaError(f"{chat.path}: every conversation is longer than the context ({max_tokens} tokens); "
                          "raise seq_len")
    return out
