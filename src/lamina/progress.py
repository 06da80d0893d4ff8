"""Progress off a terminal. On a terminal the stages show rich bars; in a log file, under nohup or
in CI a bar draws nothing until it ends, so an hour-long evaluation or a training run would say
nothing. `Lines` says the same as a bar in plain lines: one when the work starts, about one a
minute while it runs (done, elapsed, the time left) and one at the end. The time left goes by
the rate since the first unit was done, so that setup before it (loading, tokenizing 14k MMLU
prompts, compiling) does not count as work that the remaining units will repeat."""

from __future__ import annotations

import time
from typing import TextIO

EVERY_S = 60.0     # seconds between lines


def clock(seconds: float) -> str:
    """12m05s, or 1h04m from an hour on."""
    m, s = divmod(round(seconds), 60)
    return f"{m // 60}h{m % 60:02d}m" if m >= 60 else f"{m}m{s:02d}s"


class Lines:
    """Plain progress lines for `total` units of work, `done` of them already (a resumed run)."""

    def __init__(self, stream: TextIO, label: str, total: int, done: int = 0):
        self.stream, self.label, self.total = stream, label, total
        self.first = self.done = done
        self.t0 = self.last = time.monotonic()
        self.since: tuple[float, int] | None = None     # (time, done) when the first unit was done
        self._say(f"{label}: {done:,}/{total:,}")

    def update(self, done: int, note: str = "") -> None:
        """Now `done` units are done; `note` (the latest numbers) goes in the line."""
        self.done = done
        now = time.monotonic()
        if self.since is None and done > self.first:
            self.since = (now, done)
        if done < self.total and now - self.last < EVERY_S:
            return
        self.last, elapsed = now, now - self.t0
        line = f"{self.label}: {done:,}/{self.total:,} ({100 * done / max(self.total, 1):.0f}%)"
        line += f", {note}" if note else ""
        line += f", {clock(elapsed)} elapsed"
        if self.since and self.since[1] < done < self.total:
            t, n = self.since
            line += f", about {clock((now - t) * (self.total - done) / (done - n))} left"
        self._say(line)

    def advance(self, n: int) -> None:
        self.update(self.done + n)

    def _say(self, line: str) -> None:
        print(line, file=self.stream, flush=True)
