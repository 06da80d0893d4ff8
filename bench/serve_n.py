"""`n` choices against separate requests: `lamina serve`'s aggregate throughput when each prompt
asks for 4 sampled choices in one request (`n=4`: the prompt is prefilled once, the other choices
copy its cache slot) against the same 4 samples asked as 4 separate requests sent at once.

    .venv/bin/python -m bench.serve_n [--prompts 2] [--prompt-tokens 256] [--max-tokens 64] [--runs 3]

One `lamina serve` process (SmolLM2-135M-Instruct, fp32, eager, 8 slots, `--threads` threads);
the load client is the official `openai` SDK (async), all requests of a round in flight at once,
temperature 1 with seeds, so both ways sample the same number of tokens' worth of work.
Aggregate completion tokens/s = the `usage.completion_tokens` of every answer / wall time of the
round. The two ways alternate, one warm-up round is dropped, medians over rounds. Rows go to
bench/results/serve_n.json."""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.decode import machine
from bench.serve import MODEL, Server, free_port, prompts
from lamina.checkpoint import load_checkpoint

RESULTS = Path(__file__).parent / "results" / "serve_n.json"
N = 4


async def round_(url: str, texts: list[str], together: bool, max_tokens: int, seed: int) -> tuple[int, float]:
    """(completion tokens, wall seconds) of every prompt's N samples, asked one way or the other."""
    import openai
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="bench", max_retries=0, timeout=600)
    kw = dict(model=MODEL, max_tokens=max_tokens, temperature=1.0, top_p=1.0)
    start = time.perf_counter()
    if together:
        calls = [client.completions.create(prompt=t, n=N, seed=seed, **kw) for t in texts]
    else:
        calls = [client.completions.create(prompt=t, seed=seed + j, **kw) for t in texts for j in range(N)]
    answers = await asyncio.gather(*calls)
    wall = time.perf_counter() - start
    await client.close()
    return sum(a.usage.completion_tokens for a in answers), wall


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts", type=int, default=2, help="prompts per round, each asked for 4 choices")
    p.add_argument("--prompt-tokens", type=int, default=256)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--runs", type=int, default=3, help="recorded rounds after one warm-up round")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if args.prompts * N > 8:
        raise SystemExit("at most 2 prompts: 8 slots hold 2 x 4 choices")
    texts = prompts(load_checkpoint(MODEL).tokenizer, args.prompts, args.prompt_tokens)
    port = free_port()
    argv_ = [sys.executable, "-m", "lamina.cli", "serve", MODEL, "--port", str(port), "--dtype", "float32",
             "--threads", str(args.threads), "--max-concurrency", "8", "--max-len", "512",
             "--served-model-name", MODEL]
    with tempfile.TemporaryDirectory() as tmp:
        server = Server("lamina", argv_, port, MODEL, Path(tmp) / "lamina.log")
        try:
            server.wait("/health", timeout=600)
            rates = {"n=4": [], "4 requests": []}
            for run in range(args.runs + 1):
                for name in rates:
                    tokens, wall = asyncio.run(round_(server.url, texts, name == "n=4", args.max_tokens, 1000 * run))
                    if run:
                        rates[name].append(tokens / wall)
        finally:
            server.stop()
    base = statistics.median(rates["4 requests"])
    rows = [{"system": "lamina", "way": name, "metric": "completion tokens/s", "median": statistics.median(v),
             "runs": v, "ratio_vs_separate": statistics.median(v) / base} for name, v in rates.items()]
    for r in rows:
        print(f"{r['way']:<11} {r['median']:8.1f} completion tokens/s  {r['ratio_vs_separate']:.2f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"benchmark": "serve_n", "model": MODEL, "machine": machine(args.threads),
                                    "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                                    "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
