"""Results as a table in the layout of the LLaMA paper's table 3: one row per model, one column
per benchmark (accuracy in %, ± standard error), with the clean-subset score and the share of
items seen in training beneath a score when decontamination ran."""

from __future__ import annotations

from .tasks import TASKS


def cell(result: dict, metric: str) -> str:
    value, err = result.get(metric), result.get(f"{metric}_stderr")
    if value is None:
        return "-"
    if metric in ("perplexity", "bits_per_byte", "byte_perplexity", "word_perplexity"):
        text = f"{value:.2f}" + (f" ±{err:.2f}" if err is not None else "")
    else:
        text = f"{100 * value:.1f}" + (f" ±{100 * err:.1f}" if err is not None else "")
    seen = result.get("contamination")
    if seen and seen["clean"].get("n"):
        clean = seen["clean"].get(metric)
        text += f"\nclean {100 * clean:.1f}, {100 * seen['fraction']:.1f}% seen" if clean is not None else ""
    return text


def columns(runs: list[dict]) -> list[tuple[str, str, str]]:
    """(result key, header, metric) for every result of any run, in the order they ran."""
    cols: list[tuple[str, str, str]] = []
    for run in runs:
        for key, result in run["results"].items():
            if any(c[0] == key for c in cols) or key.startswith("mmlu_"):
                continue
            if key in TASKS:
                task = TASKS[key]
                cols.append((key, task.title + ("" if task.headline == "acc" else f" ({task.headline})"), task.headline))
                if key == "lambada":
                    cols.append((key, "LAMBADA ppl", "perplexity"))
            else:
                cols.append((key, key.replace("perplexity:", "bpb "), "bits_per_byte"))
    return cols


def render(runs: list[dict]) -> None:
    """Print the table of one or several models' results (rich)."""
    from rich.console import Console
    from rich.table import Table
    cols = columns(runs)
    table = Table(title="zero- and few-shot results (%, ± standard error)", show_lines=True)
    table.add_column("model")
    for _, header, _ in cols:
        table.add_column(header, justify="right")
    for run in runs:
        table.add_row(run["config"]["model"], *[cell(run["results"].get(k, {}), m) for k, _, m in cols])
    Console().print(table)
    ns = {k: r.get("n") for run in runs for k, r in run["results"].items() if not k.startswith("mmlu_")}
    Console().print("items: " + ", ".join(f"{k} {n}" for k, n in ns.items()), style="dim")
