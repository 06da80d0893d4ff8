"""Prefix caching: time to first token of chat requests that share a 1,000-token system prompt,
cold (the batcher computes the whole prompt) against warm (an earlier request left the system
prompt's keys and values in the prefix cache), in one run, alternated, medians
(shared/BENCHMARKS.md).

    .venv/bin/python -m bench.prefix [--rounds 5] [--system-tokens 1000] [--threads 2]

SmolLM2-135M-Instruct, fp32, eager, through `lamina.serve.Batcher` (no HTTP: the prefill is what
changes). Each round asks a new question: cold on a batcher without a prefix cache, warm on one
whose cache holds the system prompt from an earlier question. Time to first token is from
`submit` to the request's first output. Then chunked prefill: a stream decoding while that cold
prompt joins, its longest wait between two tokens with the prompt prefilled whole against 256
tokens a step. Rows go to bench/results/prefix.json."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from lamina.serve import Batcher, BatcherConfig, SamplingParams, load  # noqa: E402
from lamina.serve.batcher import Request  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "prefix.json"
RULES = ("You are the help desk of a llama farm in the Andes. Answer visitors briefly and kindly. "
         "Llamas are social animals and live in herds; they carry 25 to 30 percent of their weight. "
         "Opening hours are 9 to 17, every day but Monday. Tickets cost 12 dollars, children under "
         "twelve enter free. Do not feed the animals anything but the pellets sold at the entrance. ")
QUESTIONS = ["When do you open on Sunday?", "How much is a ticket for a child of ten?",
             "Can I feed the llamas carrots?", "How much can a llama carry?", "Are you open on Monday?",
             "Do llamas live alone?", "Is there parking?", "Can I bring my dog?"]


def first_token_time(batcher: Batcher, prompt: list[int]) -> float:
    """Seconds from submit to the request's first output, the batcher stepped on this thread."""
    seen: list[float] = []
    start = time.perf_counter()
    r = batcher.submit(Request(prompt, SamplingParams(temperature=0, max_new_tokens=8),
                               on_output=lambda out: seen or seen.append(time.perf_counter())))
    while r.finish_reason is None:
        batcher.step()
    return seen[0] - start


def longest_stall(llm, prompt: list[int], chunk: int) -> float:
    """The longest gap between two tokens of a running stream while `prompt` joins and is
    prefilled (no prefix cache), with prompts prefilled `chunk` tokens a step (0: whole)."""
    b = Batcher(llm.model, llm.tokenizer, BatcherConfig(max_slots=2, max_len=2048, prefix_cache_mb=0,
                                                        prefill_chunk=chunk))
    stamps: list[float] = []
    stream = b.submit(Request(llm.tokenizer.encode("Once upon a time"),
                              SamplingParams(temperature=0, max_new_tokens=400),
                              on_output=lambda out: stamps.append(time.perf_counter())))
    for _ in range(5):
        b.step()
    joined = b.submit(Request(prompt, SamplingParams(temperature=0, max_new_tokens=4)))
    before = len(stamps)
    while joined.finish_reason is None:
        b.step()
    b.cancel(stream)
    b.step()
    gaps = [t1 - t0 for t0, t1 in zip(stamps[before - 1:], stamps[before:])]
    return max(gaps)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--system-tokens", type=int, default=1000)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    llm = load("smollm2-135m-instruct")
    system = RULES
    while len(llm.tokenizer.encode(system)) < args.system_tokens:
        system += RULES
    prompts = [llm.encode_prompt([{"role": "system", "content": system}, {"role": "user", "content": q}])
               for q in QUESTIONS]
    shared = next(i for i, (a, b) in enumerate(zip(prompts[0], prompts[1])) if a != b)
    config = dict(max_slots=1, max_len=2048)
    cold = Batcher(llm.model, llm.tokenizer, BatcherConfig(**config, prefix_cache_mb=0))
    warm = Batcher(llm.model, llm.tokenizer, BatcherConfig(**config))
    first_token_time(warm, prompts[-1])                       # leaves the system prompt cached
    times = {"cold": [], "warm": []}
    for r in range(args.rounds + 1):
        prompt = prompts[r % (len(prompts) - 1)]
        for name in (("cold", "warm") if r % 2 == 0 else ("warm", "cold")):
            t = first_token_time(cold if name == "cold" else warm, prompt)
            if r:
                times[name].append(t)
    row = {k: statistics.median(v) for k, v in times.items()}
    stalls = {name: [] for name in ("whole", "chunks of 256")}
    for r in range(3):
        for name, chunk in (("whole", 0), ("chunks of 256", 256)):
            stalls[name].append(longest_stall(llm, prompts[r], chunk))
    stall = {k: statistics.median(v) for k, v in stalls.items()}
    result = {"benchmark": "prefix", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "host": platform.processor() or platform.machine(), "torch": torch.__version__, "threads": args.threads,
              "prompt_tokens": len(prompts[0]), "shared_tokens": shared,
              "ttft_cold_s": row["cold"], "ttft_warm_s": row["warm"], "speedup": row["cold"] / row["warm"],
              "runs": times, "prefix_cache": warm.prefixes.stats,
              "longest_stall_s": stall, "stall_runs": stalls}
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"prompt {len(prompts[0])} tokens, {shared} shared: time to first token cold {row['cold'] * 1000:.0f} ms, "
          f"warm {row['warm'] * 1000:.0f} ms ({row['cold'] / row['warm']:.1f}x)")
    print("a running stream's longest wait between tokens while that prompt joins cold: " +
          ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in stall.items()))


if __name__ == "__main__":
    main()
