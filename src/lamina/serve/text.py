"""From tokens to the text a client sees: `TextStream` decodes as tokens arrive without splitting
a UTF-8 character, and `StopMatcher` ends a reply at the first stop string, holding back text that
might be the start of one so that a stop string never reaches the client, even in pieces."""

from __future__ import annotations

from ..tokenizer import Tokenizer


class TextStream:
    """Turns tokens into text as they arrive, holding back bytes of an unfinished UTF-8
    character (the prefix/read-offset scheme of HF text-generation-inference)."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix = self.read = 0

    def push(self, token: int) -> str:
        self.ids.append(token)
        before = self.tokenizer.decode(self.ids[self.prefix:self.read])
        text = self.tokenizer.decode(self.ids[self.prefix:])
        if len(text) > len(before) and not text.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return text[len(before):]
        return ""

    def flush(self) -> str:
        before = self.tokenizer.decode(self.ids[self.prefix:self.read])
        return self.tokenizer.decode(self.ids[self.prefix:])[len(before):]


class StopMatcher:
    """Cuts the text at the earliest occurrence of any stop string (the stop string itself is
    not part of the reply, as in the OpenAI API)."""

    def __init__(self, stops: tuple[str, ...] = ()):
        self.stops = tuple(s for s in stops if s)
        self.pending = ""   # text that could still turn out to begin a stop string
        self.matched: str | None = None   # the stop string found, once found

    def feed(self, text: str) -> tuple[str, bool]:
        """(text safe to show now, whether a stop string was found)."""
        if not self.stops:
            return text, False
        self.pending += text
        hits = [(i, s) for i, s in ((self.pending.find(s), s) for s in self.stops) if i >= 0]
        if hits:
            at, self.matched = min(hits, key=lambda hit: hit[0])
            out, self.pending = self.pending[:at], ""
            return out, True
        hold = max((n for s in self.stops for n in range(min(len(s) - 1, len(self.pending)), 0, -1)
                    if self.pending.endswith(s[:n])), default=0)
        out, self.pending = self.pending[:len(self.pending) - hold], self.pending[len(self.pending) - hold:]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out
