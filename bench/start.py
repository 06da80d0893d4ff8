"""Start to finish: whole `lamina generate` runs of SmolLM2-135M-Instruct (fp32, greedy, 2 threads)
by the decode step's compile mode, on an empty and on a warm compile cache, for a short reply and
a long one: what a user waits for, the fast-by-default question of issue 22.

    .venv/bin/python -m bench.start [--rounds 3] [--tokens 8,256]

Modes: `--no-compile` (eager) and the default (the decode step compiled at the first token). Cold: a fresh
compile cache ($XDG_CACHE_HOME in a temporary folder), one run per mode (a cold run fills the
cache, so it cannot repeat). Warm: the cache a cold run of that mode left, `--rounds` runs,
modes alternated, medians (a warm round whose cache length the cold run did not reach, 8 new tokens
after a 256-token cold run, compiles that shape once: the median leaves it out). Times are wall clock from the process's start to its exit, measured
around `subprocess.run`. Rows go to bench/results/start.json."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lamina.tokenizer import load_tokenizer

RESULTS = Path(__file__).parent / "results" / "start.json"
TOKENIZER = load_tokenizer("smollm2-135m-instruct")
PROMPT = "The history of the river begins"      # a plain continuation: greedy SmolLM2 runs long on it
MODES = {"eager": ["--no-compile"], "compiled (default)": []}


def run(mode: str, tokens: int, cache: Path) -> tuple[float, int]:
    """Seconds from start to exit of one `lamina generate`, and the tokens it generated."""
    env = {**os.environ, "XDG_CACHE_HOME": str(cache), "HF_HUB_OFFLINE": "1"}
    env.pop("LAMINA_COMPILE", None)
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "lamina.cli", "generate", "smollm2-135m-instruct", PROMPT,
                           "--max-new-tokens", str(tokens), "--temperature", "0", *MODES[mode]],
                          env=env, check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    return seconds, len(TOKENIZER.encode(done.stdout.strip())) - len(TOKENIZER.encode(PROMPT))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--tokens", default="8,256", help="reply lengths, comma-separated")
    args = p.parse_args(argv)
    lengths = [int(t) for t in args.tokens.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        caches = {mode: Path(tmp) / mode.split()[0] for mode in MODES}
        for mode, cache in caches.items():          # cold: each mode once, on an empty cache of its own
            cache.mkdir()
            seconds, made = run(mode, lengths[-1], cache)
            rows.append({"mode": mode, "cache": "cold", "new_tokens": made, "seconds": round(seconds, 1)})
            print(f"{mode:<16} cold {made:>4} tokens {seconds:7.1f} s", flush=True)
        size = sum(f.stat().st_size for f in caches["compiled (default)"].rglob("*") if f.is_file())
        for n in lengths:
            times: dict[str, list[float]] = {m: [] for m in MODES}
            for _ in range(args.rounds):
                for mode in MODES:
                    seconds, made = run(mode, n, caches[mode])
                    times[mode].append(seconds)
            for mode, ts in times.items():
                rows.append({"mode": mode, "cache": "warm", "new_tokens": made, "seconds": round(statistics.median(ts), 1),
                             "runs": [round(t, 2) for t in ts]})
                print(f"{mode:<16} warm {made:>4} tokens {statistics.median(ts):7.1f} s  {ts}", flush=True)
    RESULTS.write_text(json.dumps({"date": datetime.date.today().isoformat(), "machine": platform.machine(),
                                   "cpus": os.cpu_count(), "cache_bytes": size, "rows": rows}, indent=2) + "\n")
    print(f"\ncompile cache after one compiled run: {size / 1e6:.1f} MB; wrote {RESULTS}")
    print("| mode | cache | new tokens | seconds, start to exit |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['cache']} | {r['new_tokens']} | {r['seconds']} |")


if __name__ == "__main__":
    main()
