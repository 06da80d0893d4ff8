"""Progress for every command: `show_progress(label, total)` is a rich bar on a terminal and plain
lines anywhere else. In a log file, under nohup or in CI a bar draws nothing until it ends (or
fills the log with escape codes), so an hour-long evaluation or a training run would say nothing.
`Lines` says the same as a bar in plain lines: one when the work starts, about one a minute while
it runs (done, elapsed, the time left) and one at the end. The time left goes by the rate since
the first unit was done, so that setup before it (loading, tokenizing 14k MMLU prompts,
compiling) does not count as work that the remaining units will repeat. Work whose size is not
known ahead (documents of a source) has no total: it shows a count and the time elapsed."""

from __future__ import annotations

import sys
import time
from typing import TextIO

EVERY_S = 60.0     # seconds between lines


def clock(seconds: float) -> str:
    """12m05s, or 1h04m from an hour on."""
    m, s = divmod(round(seconds), 60)
    return f"{m // 60}h{m % 60:02d}m" if m >= 60 else f"{m}m{s:02d}s"


class Display:
    """What every progress display does; a `with` block closes it."""
    done = 0

    def update(self, done: int, note: str = "") -> None:
        """Now `done` units are done; `note` (the latest numbers) goes beside the count."""

    def advance(self, n: int = 1) -> None:
        self.update(self.done + n)

    def print(self, text: str) -> None:
        """A line of text above the display."""

    def close(self) -> None:
        """Stop drawing; the last state stays on screen or in the log."""

    def __enter__(self) -> Display:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Lines(Display):
    """Plain progress lines for `total` units of work (None: not known ahead), `done` of them
    already (a resumed run)."""

    def __init__(self, stream: TextIO, label: str, total: int | None, done: int = 0, unit: str = ""):
        self.stream, self.label, self.total, self.unit = stream, label, total, unit
        self.first = self.done = self.said = done
        self.note = ""
        self.t0 = self.last = time.monotonic()
        self.since: tuple[float, int] | None = None     # (time, done) when the first unit was done
        self._say(f"{label}: {self._count(done)}")

    def update(self, done: int, note: str = "") -> None:
        self.done, self.note = done, note
        now = time.monotonic()
        if self.since is None and done > self.first:
            self.since = (now, done)
        if (self.total is None or done < self.total) and now - self.last < EVERY_S:
            return
        self._report(now)

    def print(self, text: str) -> None:
        self._say(text)

    def close(self) -> None:
        """The last line, unless it has been said (work with a total says it when it is done)."""
        if self.done != self.said:
            self._report(time.monotonic())

    def _report(self, now: float) -> None:
        done, total = self.done, self.total
        self.last, self.said, elapsed = now, done, now - self.t0
        line = f"{self.label}: {self._count(done)}"
        line += f" ({100 * done / max(total, 1):.0f}%)" if total is not None else ""
        line += f", {self.note}" if self.note else ""
        line += f", {clock(elapsed)} elapsed"
        if total is not None and self.since and self.since[1] < done < total:
            t, n = self.since
            line += f", about {clock((now - t) * (total - done) / (done - n))} left"
        self._say(line)

    def _count(self, done: int) -> str:
        count = f"{done:,}" if self.total is None else f"{done:,}/{self.total:,}"
        return f"{count} {self.unit}" if self.unit else count

    def _say(self, line: str) -> None:
        print(line, file=self.stream, flush=True)


class Bar(Display):
    """A rich bar on a terminal: the label, the bar, done/total, the latest note and the time
    left; without a total, a spinner, the count and the time elapsed. `keep=False` erases it
    when it closes (what follows, a results table, says more)."""

    def __init__(self, stream: TextIO, label: str, total: int | None, done: int = 0, unit: str = "",
                 keep: bool = True):
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)
        name = TextColumn(label, markup=False)
        count = [MofNCompleteColumn() if total is not None else TextColumn("{task.completed:,.0f}")]
        count += [TextColumn(unit, markup=False)] if unit else []
        note = TextColumn("{task.description}", markup=False)
        columns = [SpinnerColumn(), name, *count, note, TimeElapsedColumn()] if total is None else \
            [name, BarColumn(), *count, note, TextColumn("eta"), TimeRemainingColumn()]
        self.rich = Progress(*columns, transient=not keep, console=Console(file=stream))
        self.task = self.rich.add_task("", total=total, completed=done)
        self.done = done
        self.rich.start()

    def update(self, done: int, note: str = "") -> None:
        self.done = done
        self.rich.update(self.task, completed=done, description=note)

    def print(self, text: str) -> None:
        self.rich.console.print(text, markup=False, highlight=False)

    def close(self) -> None:
        self.rich.stop()


class Quiet(Display):
    """No display (--quiet); printed text still goes to the stream."""

    def __init__(self, stream: TextIO):
        self.stream = stream

    def print(self, text: str) -> None:
        print(text, file=self.stream, flush=True)


def show_progress(label: str, total: int | None = None, *, enabled: bool = True, stream: TextIO | None = None,
                  done: int = 0, unit: str = "", keep: bool = True) -> Display:
    """The progress display of one piece of work, on `stream` (default stderr): a rich `Bar` on
    a terminal, `Lines` elsewhere, `Quiet` when not `enabled`. Each has `update(done, note)`,
    `advance(n)`, `print(text)` and `close()`."""
    stream = stream or sys.stderr
    if not enabled:
        return Quiet(stream)
    if stream.isatty():
        return Bar(stream, label, total, done, unit, keep)
    return Lines(stream, label, total, done, unit)

