"""What the API's features cost `lamina serve` in aggregate throughput:

- **`n` choices against separate requests**: each prompt asks for 4 sampled choices in one request
  (`n=4`: the prompt is prefilled once, the other choices copy its cache slot) against the same 4
  samples asked as 4 separate requests sent at once.
- **Constrained JSON against unconstrained**: `--json-clients` greedy chat requests at once, each
  held to a JSON schema (`response_format`), against the same requests without one made to
  generate exactly as many tokens as each constrained reply had (`min_tokens`, `max_tokens`), so
  both ways do the same work; completion tokens/s (the issue's target: under 15% overhead at
  concurrency 8).
- **LoRA adapters per request against the base model**: `--lora-clients` greedy chat requests at
  once, half to each of two rank-16 adapters on every projection (`--lora`, made here with
  lamina's `apply_lora` and saved in PEFT's format), so rows of both adapters share each decode
  step, against the same requests to the base model; every reply is exactly `--lora-tokens`
  tokens (`min_tokens`), completion tokens/s. The physical limit is the adapters' extra
  arithmetic: r (in + out) per token and projection beside the base's in x out, printed beside.

    .venv/bin/python -m bench.serve_api [--prompts 2] [--prompt-tokens 256] [--max-tokens 64] [--runs 3]

One `lamina serve` process (SmolLM2-135M-Instruct, fp32, eager, 8 slots, `--threads` threads);
the load client is the official `openai` SDK (async), all requests of a round in flight at once,
temperature 1 with seeds, so both ways sample the same number of tokens' worth of work.
Aggregate completion tokens/s = the `usage.completion_tokens` of every answer / wall time of the
round. The ways alternate, one warm-up round is dropped, medians over rounds. Rows go to
bench/results/serve_api.json."""

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

RESULTS = Path(__file__).parent / "results" / "serve_api.json"
N = 4
SCHEMA = {"type": "object", "properties": {
    "title": {"type": "string", "maxLength": 40}, "year": {"type": "integer", "minimum": 1000, "maximum": 2100},
    "genres": {"type": "array", "items": {"enum": ["drama", "comedy", "history", "science", "travel"]}, "maxItems": 3},
    "summary": {"type": "string", "maxLength": 200}},
    "required": ["title", "year", "genres", "summary"], "additionalProperties": False}
TOPICS = ["a book about llamas", "a film about the Andes", "a history of wool", "a guide to Peru",
          "a novel set in a lighthouse", "a documentary about bees", "a play about sailors", "an atlas of rivers"]


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


async def lora_round(url: str, models: list[str], tokens: int) -> tuple[int, float]:
    """(completion tokens, wall seconds) of one greedy chat request per entry of `models`, at once,
    each exactly `tokens` long."""
    import openai
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="bench", max_retries=0, timeout=600)
    start = time.perf_counter()
    answers = await asyncio.gather(*(client.chat.completions.create(
        model=m, max_tokens=tokens, temperature=0, extra_body={"min_tokens": tokens},
        messages=[{"role": "user", "content": f"Tell me about {TOPICS[i % len(TOPICS)]}."}])
        for i, m in enumerate(models)))
    wall = time.perf_counter() - start
    await client.close()
    return sum(a.usage.completion_tokens for a in answers), wall


def make_adapters(root: Path, rank: int) -> tuple[list[str], float]:
    """Two PEFT adapter folders on MODEL (every projection, rank `rank`, B drawn at random so the
    update is not zero), as `--lora` flags; and the fraction of extra multiply-adds per token."""
    import torch

    from lamina.model import from_state_dict
    from lamina.post.lora import LoRAConfig, adapter_parameters, apply_lora, lora_modules, save_adapter
    ck = load_checkpoint(MODEL)
    flags = []
    for i, name in enumerate(["lora-a", "lora-b"]):
        model = from_state_dict(ck.config, ck.weights)
        apply_lora(model, LoRAConfig(r=rank, alpha=2 * rank, seed=i))
        with torch.no_grad():
            for b in adapter_parameters(model)[1::2]:
                b.normal_(0, 0.01)
        save_adapter(model, root / name, base_ref=MODEL)
        flags += ["--lora", f"{name}={root / name}"]
    # per token: every projection (all adapted) and the output head; attention's own is small here
    layers = lora_modules(model).values()
    base = sum(m.weight.numel() for m in layers) + ck.config.vocab_size * ck.config.dim
    extra = sum(m.lora_A.numel() + m.lora_B.numel() for m in layers)
    return flags, extra / base


async def json_round(url: str, lengths: list[int], constrained: bool) -> tuple[list[int], float]:
    """(completion tokens of each, wall seconds) of len(lengths) greedy chat requests at once: held
    to SCHEMA with at most lengths[i] tokens, or unconstrained with exactly lengths[i] tokens
    (`min_tokens`), so that both ways generate the same tokens' worth of work."""
    import openai
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="bench", max_retries=0, timeout=600)

    def extra(n: int) -> dict:
        if constrained:
            return {"response_format": {"type": "json_schema", "json_schema": {"name": "work", "schema": SCHEMA}}}
        return {"extra_body": {"min_tokens": n}}
    start = time.perf_counter()
    answers = await asyncio.gather(*(client.chat.completions.create(
        model=MODEL, max_tokens=n, temperature=0,
        messages=[{"role": "user", "content": f"Describe {TOPICS[i % len(TOPICS)]} as JSON with a title, year, "
                                              "genres and summary."}], **extra(n)) for i, n in enumerate(lengths)))
    wall = time.perf_counter() - start
    await client.close()
    return [a.usage.completion_tokens for a in answers], wall


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts", type=int, default=2, help="prompts per round, each asked for 4 choices")
    p.add_argument("--prompt-tokens", type=int, default=256)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--runs", type=int, default=3, help="recorded rounds after one warm-up round")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json-clients", type=int, default=8, help="concurrent chat requests in the JSON comparison")
    p.add_argument("--json-max-tokens", type=int, default=96)
    p.add_argument("--lora-clients", type=int, default=8, help="concurrent chat requests in the LoRA comparison")
    p.add_argument("--lora-tokens", type=int, default=64)
    p.add_argument("--lora-rank", type=int, default=16)
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
        lora_flags, lora_work = make_adapters(Path(tmp), args.lora_rank)
        server = Server("lamina", argv_ + lora_flags, port, MODEL, Path(tmp) / "lamina.log")
        try:
            server.wait("/health", timeout=600)
            rates = {"n=4": [], "4 requests": []}
            json_rates = {"json_schema": [], "unconstrained": []}
            lora_ways = {"2 adapters mixed": ["lora-a", "lora-b"] * (args.lora_clients // 2),
                         "base model": [MODEL] * (args.lora_clients // 2 * 2)}
            lora_rates = {name: [] for name in lora_ways}
            # the constrained replies' own lengths (greedy: the same every round) set the work
            lengths, _ = asyncio.run(json_round(server.url, [args.json_max_tokens] * args.json_clients, True))
            for run in range(args.runs + 1):
                for name in rates:
                    tokens, wall = asyncio.run(round_(server.url, texts, name == "n=4", args.max_tokens, 1000 * run))
                    if run:
                        rates[name].append(tokens / wall)
                for name in json_rates:
                    tokens, wall = asyncio.run(json_round(server.url, lengths, name == "json_schema"))
                    if run:
                        json_rates[name].append(sum(tokens) / wall)
                for name, models in lora_ways.items():
                    tokens, wall = asyncio.run(lora_round(server.url, models, args.lora_tokens))
                    if run:
                        lora_rates[name].append(tokens / wall)
        finally:
            server.stop()
    base = statistics.median(rates["4 requests"])
    rows = [{"system": "lamina", "way": name, "metric": "completion tokens/s", "median": statistics.median(v),
             "runs": v, "ratio": statistics.median(v) / base, "against": "4 requests"} for name, v in rates.items()]
    base = statistics.median(json_rates["unconstrained"])
    rows += [{"system": "lamina", "way": name, "metric": "completion tokens/s", "median": statistics.median(v),
              "runs": v, "ratio": statistics.median(v) / base, "against": "unconstrained",
              "concurrency": args.json_clients} for name, v in json_rates.items()]
    base = statistics.median(lora_rates["base model"])
    rows += [{"system": "lamina", "way": name, "metric": "completion tokens/s", "median": statistics.median(v),
              "runs": v, "ratio": statistics.median(v) / base, "against": "base model",
              "concurrency": len(lora_ways[name]), "lora_rank": args.lora_rank,
              "limit_ratio": 1 / (1 + lora_work)} for name, v in lora_rates.items()]
    for r in rows:
        print(f"{r['way']:<16} {r['median']:8.1f} completion tokens/s  {r['ratio']:.2f}x {r['against']}"
              + (f" (arithmetic limit {r['limit_ratio']:.2f}x)" if "limit_ratio" in r else ""))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"benchmark": "serve_api", "model": MODEL, "machine": machine(args.threads),
                                    "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                                    "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
