"""`lamina speedrun`, the main job: from nothing to a trained model on the license-clean built-in
corpus, in one command — data build (policy, cleaning, dedup, ledger) → a BPE tokenizer trained on
the corpus's own training documents → pretraining → validation bits per byte and samples → a short
markdown report (loss curve, data consumed by license and source, compute, samples)."""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

from .data import build_corpus, data_recipe
from .errors import LaminaError
from .fields import check_fields
from .train import RunResult, train, train_recipe

DATA_RECIPE = "clean-small"


@dataclass(frozen=True, kw_only=True)
class SpeedrunConfig:
    out: str = ""                       # run folder to create ("": runs/speedrun-<time>)
    recipe: str = "speedrun"            # the training recipe
    vocab_size: int = 4096              # the tokenizer trained on the corpus
    overrides: tuple[str, ...] = ()     # key=value changes to the training recipe
    progress: bool = True

    def __post_init__(self) -> None:
        check_fields(self)


def speedrun(config: SpeedrunConfig) -> Path:
    """Run every stage into config.out and return the report's path."""
    out = Path(config.out or time.strftime("runs/speedrun-%Y%m%d-%H%M%S"))
    if out.exists():
        raise LaminaError(f"{out}: already exists; choose a new --out")
    train_config = train_recipe(config.recipe, list(config.overrides), data=str(out / "data"),
                                out=str(out / "train"))          # a bad recipe fails before any work
    started = time.perf_counter()
    print(f"[1/3] data: building the {DATA_RECIPE} corpus with a {config.vocab_size}-token BPE trained on it")
    corpus = data_recipe(DATA_RECIPE)
    build_config = dataclasses.replace(corpus.config, tokenizer=f"bpe:{config.vocab_size}")
    build = build_corpus(corpus.load_sources(), out=out / "data", policy=corpus.policy, config=build_config,
                         recipe=f"{DATA_RECIPE} (speedrun)", progress=config.progress)
    print(f"      {build.stats['tokens']:,} tokens from {build.stats['kept']} of {build.stats['documents']} documents")
    data_seconds = time.perf_counter() - started
    print(f"[2/3] pretraining: {train_config.model}, {train_config.total_steps} steps of "
        f"{train_config.batch_size} x {train_config.seq_len} tokens")
    result = train(train_config, progress=config.progress)
    print("[3/3] report")
    report = write_report(out, result, build.ledger, data_seconds, time.perf_counter() - started)
    build.ledger.close()
    return report


def write_report(out: Path, result: RunResult, corpus_ledger, data_seconds: float, total_seconds: float) -> Path:
    m = result.made_by
    data, compute = m["data"], m["compute"]
    lines = [
        "# lamina speedrun",
        "",
        f"A {m['parameters'] / 1e6:.1f}M-parameter Llama ({m['train_config']['model']}) trained from scratch on "
        f"{m['tokens']:,} tokens of the license-clean `{DATA_RECIPE}` corpus in {total_seconds / 60:.1f} minutes "
        f"(data and tokenizer {data_seconds:.0f} s).",
        "",
        f"**Validation: {result.val_loss:.4f} nats per token, {result.val_bpb:.4f} bits per byte.**",
        "",
        "![loss curve](train/loss.png)",
        "",
        "## Data the model consumed (from the ledger)",
        "",
        "| license | tokens | share |",
        "|---|---:|---:|",
        *[f"| {lic} | {n:,} | {n / max(1, data['tokens']):.1%} |" for lic, n in data["tokens_by_license"].items()],
        "",
        "| source | tokens |",
        "|---|---:|",
        *[f"| {src} | {n:,} |" for src, n in data["tokens_by_source"].items()],
        "",
        f"{data['documents']} documents were read; ledger digest `{data['ledger_digest'][:16]}`. "
        "Kept out of the corpus by the license policy and filters:",
        "",
        "| source | reason | documents |",
        "|---|---|---:|",
        *[f"| {r['source']} | {r['reason']} | {r['documents']} |" for r in corpus_ledger.rejected()],
        "",
        "## Compute",
        "",
        f"- model FLOPs: {compute['model_flops']:.3g} ({compute['flops_per_token']:,} per token, 6N + attention)",
        "- device time: " + ", ".join(f"{k} {v:.0f} s" for k, v in compute["device_seconds"].items()),
        f"- energy: {compute['energy_kwh'] * 1000:.2f} Wh ({compute['energy_method']})",
        f"- CO2e: {compute['co2e_kg'] * 1000:.2f} g at {compute['grid_intensity_g_per_kwh']:g} g/kWh",
        "",
        "## Samples",
        "",
        *[f"```\n{s}\n```\n" for s in result.samples],
        f"The model: `{result.checkpoint}` (a Hugging Face model directory; "
        "`lamina generate` and transformers load it as it is).",
        "",
    ]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    (out / "report.json").write_text(json.dumps({"validation": {"loss": result.val_loss, "bits_per_byte": result.val_bpb},
                                                 "seconds": total_seconds, "made_by": m}, indent=2) + "\n")
    return path
