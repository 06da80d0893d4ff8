"""What a run shows and leaves behind: a progress bar (step, loss, tokens/s, MFU, ETA; plain lines
off a terminal), metrics as JSON lines, a loss-curve PNG, and optionally TensorBoard event files."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import TextIO

from ..files import atomic_file
from ..progress import show_progress

METRICS_FILE = "metrics.jsonl"
CURVE_FILE = "loss.png"


class MetricsLog:
    """Appends one JSON object per line to run/metrics.jsonl; on resume, lines from steps after
    the restored checkpoint (written before the crash) are dropped first."""

    def __init__(self, run: Path, resume_step: int | None, tensorboard: bool) -> None:
        self.path = run / METRICS_FILE
        if resume_step is None:
            self.path.write_text("")
        elif self.path.is_file():
            kept = [line for line in self.path.read_text().splitlines()
                    if line and json.loads(line).get("step", 0) <= resume_step]
            self.path.write_text("".join(line + "\n" for line in kept))
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                from ..errors import LaminaError
                raise LaminaError("tensorboard = true needs the tensorboard package "
                                  "(pip install tensorboard)") from None
            self.writer = SummaryWriter(str(run / "tensorboard"), purge_step=resume_step)

    def write(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                    self.writer.add_scalar(key, value, record["step"])
            self.writer.flush()

    def close(self) -> None:
        if self.writer:
            self.writer.close()


def read_metrics(run: Path) -> list[dict]:
    path = run / METRICS_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.is_file() else []


def plot_loss(run: Path) -> Path:
    """Training and validation loss against tokens seen, as run/loss.png; for a mixture of experts
    a second panel: the worst layer's max/mean expert load and the balancing bias's spread."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = read_metrics(run)
    train = [(r["tokens"], r["loss"]) for r in rows if "loss" in r]
    val = [(r["tokens"], r["val_loss"]) for r in rows if "val_loss" in r]
    load = [(r["tokens"], r["expert_load_max_over_mean"], r["expert_bias_spread"]) for r in rows
            if "expert_load_max_over_mean" in r]
    fig, axes = plt.subplots(2 if load else 1, 1, figsize=(7, 6.5 if load else 4), sharex=True, squeeze=False)
    ax = axes[0, 0]
    if train:
        ax.plot(*zip(*train), label="train", linewidth=1)
    if val:
        ax.plot(*zip(*val), "o-", label="validation", markersize=4)
    ax.set_xlabel("tokens")
    ax.set_ylabel("loss (nats per token)")
    ax.grid(alpha=0.3)
    if train or val:
        ax.legend()
    if load:
        tokens, ratio, spread = zip(*load)
        ax = axes[1, 0]
        ax.plot(tokens, ratio, linewidth=1, label="max/mean expert load (worst layer)")
        ax.axhline(1.0, color="grey", linestyle=":")
        ax.set_ylabel("expert load")
        ax.set_xlabel("tokens")
        ax.grid(alpha=0.3)
        twin = ax.twinx()
        twin.plot(tokens, spread, color="tab:orange", linewidth=1, label="bias spread")
        twin.set_ylabel("bias spread (max - min)")
        ax.legend(loc="upper left", fontsize=8)
        twin.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    out = run / CURVE_FILE
    with atomic_file(out, overwrite=True) as tmp:      # redrawn at every save: never half a PNG
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return out


def format_mfu(mfu: float) -> str:
    """MFU as a percentage. Above 100% the yardstick is what is wrong (a matmul timed while the
    machine was busy, or one the model's larger matmuls outrun), so it shows as a doubt, not as a
    figure; metrics.jsonl keeps the raw value beside the yardstick."""
    return f"{mfu:.0%}" if mfu <= 1.0 else ">100%?"


class Bar:
    """Training progress (`lamina.progress`): a rich bar whose note carries the latest numbers on
    a terminal, plain lines with the same numbers elsewhere."""

    def __init__(self, total: int, start: int, enabled: bool, stream: TextIO | None = None) -> None:
        self.display = show_progress("train", total, enabled=enabled, stream=stream or sys.stdout, done=start)

    def update(self, step: int, loss: float, tokens_per_s: float, mfu: float) -> None:
        self.display.update(step, f"loss {loss:.3f}, {tokens_per_s:,.0f} tok/s, MFU {format_mfu(mfu)}")

    def print(self, text: str) -> None:
        self.display.print(text)

    def close(self) -> None:
        self.display.close()
