"""Tokenizer speed: lamina's `Tokenizer` against the libraries it wraps, side by side in one run, as
shared/BENCHMARKS.md asks.

    .venv/bin/python -m bench.tokenizer [--runs 5] [--threads 1,2] [--mb 2]

Encode: Llama 3's tokenizer encodes the same documents (Python's own docs and source, from the
standard library, a few MB) as one batch of plain text, through lamina (`load_tokenizer("llama-3")`, on
tiktoken), tiktoken directly (an Encoding built from the same rank file), and HF tokenizers
directly (built from the same file by transformers' converter), plus lamina on its HF engine to
show its wrapper cost there. Each thread count runs in its own process (HF tokenizers sizes its
thread pool once, from RAYON_NUM_THREADS); systems alternate within each round, one warm-up round
is dropped, the table shows medians of MB/s (UTF-8 bytes in). The ratio is against the fastest
library lamina wraps at that thread count.

Training: `lamina tokenizer train` (HF tokenizers' trainer, then the rank file and tokenizer.json)
against HF tokenizers' trainer alone (train and save tokenizer.json), same text and vocabulary size.
Rows go to bench/results/tokenizer.json."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "tokenizer.json"
STDLIB_DIRS = ("pydoc_data", "email", "json", "http", "asyncio", "logging", "unittest")


def documents(mb: float) -> list[str]:
    """Python's documentation text and library source: the same on every machine with this Python."""
    root = Path(sysconfig.get_paths()["stdlib"])
    docs, size = [], 0
    for name in STDLIB_DIRS:
        for path in sorted((root / name).rglob("*.py")):
            text = path.read_text(encoding="utf-8", errors="replace")
            docs.append(text)
            size += len(text.encode())
            if size >= mb * 1e6:
                return docs
    return docs


def encode_systems(threads: int):
    """name -> function(documents) for each system, all on Llama 3's tokenizer."""
    import tiktoken
    from llama_models.llama3.tokenizer import Tokenizer as Meta
    from llama_models.tokenizer_utils import load_bpe_file
    from transformers.convert_slow_tokenizer import TikTokenConverter

    from lamina.tokenizer import Tokenizer, load_tokenizer
    from lamina.assets import TOKENIZERS

    path = TOKENIZERS["llama-3"].path()
    meta = Meta(path)
    enc = tiktoken.Encoding("llama3", pat_str=meta.pat_str, mergeable_ranks=load_bpe_file(path),
                            special_tokens=meta.special_tokens)
    hf = TikTokenConverter(vocab_file=str(path), pattern=meta.pat_str,
                           extra_special_tokens=sorted(meta.special_tokens, key=meta.special_tokens.get)).converted()
    hf.encode_special_tokens = True
    ours = load_tokenizer("llama-3")
    ours_hf = Tokenizer(ours.backend)
    return {
        "lamina (tiktoken engine)": lambda d: ours.encode_batch(d, bos=False, num_threads=threads),
        "tiktoken": lambda d: enc.encode_ordinary_batch(d, num_threads=threads),
        "HF tokenizers": lambda d: [e.ids for e in hf.encode_batch(d, add_special_tokens=False)],
        "lamina (HF engine)": lambda d: ours_hf.encode_batch(d, bos=False),
    }


def worker(threads: int, runs: int, mb: float, train: bool) -> dict:
    docs = documents(mb)
    size = sum(len(d.encode()) for d in docs)
    systems = encode_systems(threads)
    out = {name: [] for name in systems}
    reference = None
    for round_ in range(runs + 1):   # round 0 warms up
        for name, encode in systems.items():
            start = time.perf_counter()
            ids = encode(docs)
            seconds = time.perf_counter() - start
            reference = reference or ids
            if ids != reference:
                raise SystemExit(f"{name} gave different ids than the first system")
            if round_:
                out[name].append(size / seconds / 1e6)
    result = {"encode MB/s": out, "bytes": size, "documents": len(docs),
              "tokens": sum(len(i) for i in reference)}
    if train:
        result["train s"] = train_times(docs, min(runs, 3))
    return result


def train_times(docs: list[str], runs: int, vocab_size: int = 8192) -> dict[str, list[float]]:
    from tokenizers import Regex, models, pre_tokenizers, trainers
    from tokenizers import Tokenizer as Backend

    from lamina.tokenizer.ranks import LLAMA3_PATTERN
    from lamina.tokenizer.train import TokenizerTrainConfig, train_tokenizer

    def hf_alone(out: Path) -> None:
        backend = Backend(models.BPE())
        backend.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        trainer = trainers.BpeTrainer(vocab_size=vocab_size - 256, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        backend.train_from_iterator([text_file.read_text()], trainer=trainer)
        out.mkdir()
        backend.save(str(out / "tokenizer.json"))

    def lamina(out: Path) -> None:
        train_tokenizer(TokenizerTrainConfig(inputs=(str(text_file),), vocab_size=vocab_size, out=str(out),
                                    progress=False))

    times = {"lamina tokenizer train": [], "HF tokenizers trainer": []}
    with tempfile.TemporaryDirectory() as tmp:
        text_file = Path(tmp) / "corpus.txt"
        text_file.write_text("\n".join(docs))
        for round_ in range(runs + 1):
            for name, train in (("lamina tokenizer train", lamina), ("HF tokenizers trainer", hf_alone)):
                start = time.perf_counter()
                train(Path(tmp) / f"{name.split()[0]}-{round_}")
                if round_:
                    times[name].append(time.perf_counter() - start)
    return times


def rows_from(results: dict[int, dict]) -> list[dict]:
    rows = []
    for threads, r in results.items():
        medians = {name: statistics.median(v) for name, v in r["encode MB/s"].items()}
        fastest_wrapped = max(medians["tiktoken"], medians["HF tokenizers"])
        for name, values in r["encode MB/s"].items():
            rows.append({"system": name, "setting": f"Llama 3, {threads} thread{'s' * (threads > 1)}",
                         "metric": "encode MB/s", "median": round(medians[name], 2),
                         "ratio_vs_peer": round(medians[name] / fastest_wrapped, 2),
                         "runs": [round(v, 2) for v in values]})
        if "train s" in r:
            peer = statistics.median(r["train s"]["HF tokenizers trainer"])
            for name, values in r["train s"].items():
                rows.append({"system": name, "setting": f"BPE 8192, {r['bytes'] / 1e6:.1f} MB, {threads} threads",
                             "metric": "train s", "median": round(statistics.median(values), 2),
                             "ratio_vs_peer": round(statistics.median(values) / peer, 2),
                             "runs": [round(v, 2) for v in values]})
    return rows


def print_table(rows: list[dict]) -> None:
    head = ("system", "setting", "metric", "median", "ratio vs peer")
    cells = [[r["system"], r["setting"], r["metric"], f"{r['median']:.2f}", f"{r['ratio_vs_peer']:.2f}x"]
             for r in rows]
    widths = [max(len(str(c)) for c in col) for col in zip(head, *cells)]
    for line in [head, ["-" * w for w in widths], *cells]:
        print(" | ".join(str(c).ljust(w) for c, w in zip(line, widths)))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=5, help="recorded rounds after one warm-up round")
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    p.add_argument("--mb", type=float, default=2.0, help="megabytes of text to encode")
    p.add_argument("--no-train", action="store_true", help="skip the training comparison")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--train", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker is not None:
        print(json.dumps(worker(args.worker, args.runs, args.mb, args.train)))
        return
    thread_counts = [int(t) for t in args.threads.split(",")]
    results = {}
    for threads in thread_counts:
        print(f"[{threads} thread(s)] encoding, then training" if threads == max(thread_counts) and not args.no_train
              else f"[{threads} thread(s)] encoding", flush=True)
        env = dict(os.environ, RAYON_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="true",
                   HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        cmd = [sys.executable, "-m", "bench.tokenizer", "--worker", str(threads), "--runs", str(args.runs),
               "--mb", str(args.mb)] + (["--train"] if threads == max(thread_counts) and not args.no_train else [])
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False, cwd=Path(__file__).parent.parent)
        if done.returncode:
            raise SystemExit(done.stderr)
        results[threads] = json.loads(done.stdout.splitlines()[-1])
    rows = rows_from(results)
    print()
    print_table(rows)
    import tiktoken
    import tokenizers
    first = results[thread_counts[0]]
    record = {"benchmark": "tokenizer", "text": {"bytes": first["bytes"], "documents": first["documents"],
                                                 "llama3_tokens": first["tokens"], "source": "Python stdlib: "
                                                 + ", ".join(STDLIB_DIRS)},
              "machine": {"cpu": platform.processor() or platform.machine(), "logical_cpus": os.cpu_count(),
                          "python": platform.python_version(), "tiktoken": tiktoken.__version__,
                          "tokenizers": tokenizers.__version__,
                          "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")},
              "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
                       if k not in ("worker", "train", "out")},
              "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
