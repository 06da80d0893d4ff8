"""Benchmarks (shared/BENCHMARKS.md): each module runs as `python -m bench.NAME`."""


def print_table(head: tuple[str, ...], rows: list[tuple]) -> None:
    """`rows` under `head`, each column as wide as its widest cell, cells joined by " | "."""
    cells = [head, *rows]
    widths = [max(len(str(c[i])) for c in cells) for i in range(len(head))]
    for line in cells:
        print(" | ".join(str(c).ljust(w) for c, w in zip(line, widths)))
