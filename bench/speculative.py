"""Self-speculative decoding with a model's multi-token prediction modules against plain greedy
decoding of the same model, in one run (shared/BENCHMARKS.md): batch 1, eager, the same prompts
and lengths, the two alternated each round, the first round dropped, medians reported.

    .venv/bin/python -m bench.speculative MODEL_DIR [--rounds 5] [--new-tokens 128] [--draft 1]

MODEL_DIR is a checkpoint trained with modules (`lamina train speedrun model_overrides.mtp_depth=1`).
Reported: tokens per second of each, the speed-up, the share of proposals kept, tokens per
forward, and whether the outputs are equal (they must be). The prompts are of two kinds, both
reported: text the corpus has many of (verse, code) and the model continues predictably, and
plain starts. Rows go to bench/results/speculative.json."""

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

from lamina.serve import load  # noqa: E402
from lamina.serve.engine import Engine  # noqa: E402
from lamina.serve.sampling import SamplingParams  # noqa: E402
from lamina.serve.speculative import Speculation, speculate  # noqa: E402

RESULTS = Path(__file__).parent / "results"
PROMPTS = {
    "verse": "ROMEO:\nBut soft, what light through yonder window breaks?\nIt is the east, and",
    "code": "def read_config(path):\n    with open(path) as f:\n        return json.load(f)\n\n\ndef ",
    "plain start": "The",
    "a question": "What is the best way to",
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--draft", type=int, default=1, help="tokens the modules propose a step")
    args = p.parse_args()
    llm = load(args.model)
    model = llm.model.eval()
    ids = {name: llm.tokenizer.encode(text) for name, text in PROMPTS.items()}
    params = SamplingParams(max_new_tokens=args.new_tokens, temperature=0, stop_token_ids=())
    plain_engine = Engine(model)
    times = {(name, kind): [] for name in PROMPTS for kind in ("plain", "speculative")}
    outputs, stats = {}, {name: Speculation() for name in PROMPTS}
    with torch.inference_mode():
        for r in range(args.rounds + 1):
            for name, prompt in ids.items():
                order = ("plain", "speculative") if r % 2 == 0 else ("speculative", "plain")
                for kind in order:
                    start = time.perf_counter()
                    if kind == "plain":
                        out = [step[0] for step in plain_engine.generate([prompt], params)]
                    else:
                        counted = stats[name] if r else Speculation()
                        out = list(speculate(model, prompt, args.new_tokens, n_tokens=args.draft, stats=counted))
                    elapsed = time.perf_counter() - start
                    outputs[(name, kind)] = out
                    if r:
                        times[(name, kind)].append(elapsed)
    rows = {}
    for name in PROMPTS:
        plain = statistics.median(times[(name, "plain")])
        spec = statistics.median(times[(name, "speculative")])
        s = stats[name]
        rows[name] = {"prompt": PROMPTS[name], "plain_tokens_per_s": args.new_tokens / plain,
                      "speculative_tokens_per_s": args.new_tokens / spec, "speedup": plain / spec,
                      "acceptance": s.acceptance, "tokens_per_forward": args.new_tokens * args.rounds / max(s.forwards, 1),
                      "outputs_equal": outputs[(name, "plain")] == outputs[(name, "speculative")],
                      "continuation": llm.tokenizer.decode(outputs[(name, "plain")][:40])}
    result = {"date": datetime.date.today().isoformat(), "host": platform.processor() or platform.machine(),
              "torch": torch.__version__, "threads": torch.get_num_threads(), "model": str(args.model),
              "mtp_depth": model.config.mtp_depth, "draft": args.draft, "new_tokens": args.new_tokens,
              "rounds": args.rounds, "prompts": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "speculative.json").write_text(json.dumps(result, indent=2) + "\n")
    for name, r in rows.items():
        print(f"{name:12s} plain {r['plain_tokens_per_s']:6.1f} tok/s  speculative {r['speculative_tokens_per_s']:6.1f} "
              f"tok/s  ({r['speedup']:.2f}x)  kept {r['acceptance']:.0%}  {r['tokens_per_forward']:.2f} tokens/forward  "
              f"equal: {r['outputs_equal']}")


if __name__ == "__main__":
    main()
