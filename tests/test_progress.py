"""One progress helper for every command: a rich bar on a terminal, plain lines anywhere else."""

import io
import types

from lamina import progress
from lamina.progress import Bar, Lines, Quiet, show_progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_display_is_a_bar_on_a_terminal_lines_elsewhere_and_nothing_when_quiet():
    with show_progress("x", 3, stream=Terminal()) as display:
        assert isinstance(display, Bar)
    assert isinstance(show_progress("x", 3, stream=io.StringIO()), Lines)
    quiet = io.StringIO()
    with show_progress("x", 3, stream=quiet, enabled=False) as display:
        assert isinstance(display, Quiet)
        display.advance(3)
    assert quiet.getvalue() == ""


def test_work_of_unknown_size_counts_and_ends_with_one_line(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(progress, "time", types.SimpleNamespace(monotonic=lambda: now[0]))
    stream = io.StringIO()
    with show_progress("shakespeare", unit="documents", stream=stream) as display:
        display.advance(64)
        now[0] = 75.0
        display.advance(64)                                 # a minute has passed: a line
        display.advance(10)
    assert stream.getvalue().splitlines() == ["shakespeare: 0 documents",
                                              "shakespeare: 128 documents, 1m15s elapsed",
                                              "shakespeare: 138 documents, 1m15s elapsed"]
