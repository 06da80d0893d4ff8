"""Speculative decoding against plain greedy decoding of the same model, in one run
(shared/BENCHMARKS.md): batch 1, eager, the same prompts and lengths, the two alternated each
round, the first round dropped, medians reported.

    .venv/bin/python -m bench.speculative MODEL_DIR [--drafter mtp] [--rounds 5] [--new-tokens 128] [--draft 1]
    .venv/bin/python -m bench.speculative smollm2-135m-instruct --drafter lookup --draft 8 --prompts chat
    .venv/bin/python -m bench.speculative smollm2-135m-instruct --drafter layers:10 --draft 4 --prompts chat

Drafters: `mtp`, the model's multi-token prediction modules (MODEL_DIR trained with them:
`lamina train speedrun model_overrides.mtp_depth=1`); `lookup`, prompt lookup; `layers:K`, a draft
model made of the model's own first K layers and its head (self-speculation by layer skipping,
Zhang et al. 2023), any lamina-loadable draft being the same to the decoder. Prompt sets:
`speedrun` (text the small corpus has much of, and plain starts: continued as base text) and
`chat` (rendered with the chat template, ending at the model's stop token): two repetitive
tasks (editing given code, summarising a given text) and two open ones, all reported. Reported:
tokens per second of each, the speed-up, the share of proposals kept, tokens per forward, and
whether the outputs are equal (they must be). Rows go to bench/results/speculative[-NAME].json."""

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

from lamina.model import Transformer, weights  # noqa: E402
from lamina.serve import load  # noqa: E402
from lamina.serve.engine import Engine  # noqa: E402
from lamina.serve.sampling import SamplingParams  # noqa: E402
from lamina.serve.speculative import Speculation, speculate  # noqa: E402

RESULTS = Path(__file__).parent / "results"
CODE = '''def read_config(path):
    """Read a JSON configuration file and fill in the defaults."""
    with open(path) as f:
        config = json.load(f)
    config.setdefault("host", "127.0.0.1")
    config.setdefault("port", 8000)
    config.setdefault("workers", 2)
    return config


def start(path):
    config = read_config(path)
    server = Server(config["host"], config["port"], workers=config["workers"])
    server.run()
'''
TEXT = ("The llama is a domesticated South American camelid, widely used as a meat and pack animal by "
        "Andean cultures since the pre-Columbian era. Llamas are social animals and live with others as a "
        "herd. Their wool is soft and contains only a small amount of lanolin. Llamas can learn simple "
        "tasks after a few repetitions. When using a pack, they can carry about 25 to 30% of their body "
        "weight for 8 to 13 km.")
PROMPTS = {
    "speedrun": {
        "verse": "ROMEO:\nBut soft, what light through yonder window breaks?\nIt is the east, and",
        "code": "def read_config(path):\n    with open(path) as f:\n        return json.load(f)\n\n\ndef ",
        "plain start": "The",
        "a question": "What is the best way to",
    },
    "chat": {
        "edit code": f"Rename the function read_config to load_settings everywhere in this code, and "
                     f"reply with the whole code:\n\n{CODE}",
        "summarise": f"Summarise this text in two sentences:\n\n{TEXT}",
        "open: dinner": "What should I cook for dinner tonight?",
        "open: story": "Tell me a short story about a llama.",
    },
}


def layer_draft(model: Transformer, k: int) -> Transformer:
    """The model's first k layers, its final norm and its head, as a model of their own."""
    from lamina.model import from_state_dict
    state = {n: t for n, t in weights(model).items()
             if not n.startswith("layers.") or int(n.split(".")[1]) < k}
    return from_state_dict(model.config.replace(n_layers=k), state).eval()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model")
    p.add_argument("--drafter", default="mtp", help="mtp, lookup or layers:K")
    p.add_argument("--prompts", default="speedrun", choices=list(PROMPTS))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--draft", type=int, default=1, help="tokens proposed a step")
    args = p.parse_args()
    llm = load(args.model)
    model = llm.model.eval()
    draft = args.drafter
    if draft.startswith("layers:"):
        draft = layer_draft(model, int(draft.split(":")[1]))
    chat = args.prompts == "chat"
    prompts = PROMPTS[args.prompts]
    ids = {name: llm.encode_prompt(text, chat=chat) for name, text in prompts.items()}
    stops = llm.tokenizer.stop_ids if chat else ()
    params = SamplingParams(max_new_tokens=args.new_tokens, temperature=0, stop_token_ids=stops)
    plain_engine = Engine(model)
    times = {(name, kind): [] for name in prompts for kind in ("plain", "speculative")}
    outputs, stats = {}, {name: Speculation() for name in prompts}
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
                        out = list(speculate(model, prompt, args.new_tokens, n_tokens=args.draft, draft=draft,
                                             stop_token_ids=stops, stats=counted))
                    elapsed = time.perf_counter() - start
                    outputs[(name, kind)] = out
                    if r:
                        times[(name, kind)].append((len(out), elapsed))
    rows = {}
    for name in prompts:
        plain = statistics.median(n / t for n, t in times[(name, "plain")])
        spec = statistics.median(n / t for n, t in times[(name, "speculative")])
        s = stats[name]
        made = sum(n for n, _ in times[(name, "speculative")])
        rows[name] = {"prompt": prompts[name], "tokens": len(outputs[(name, "plain")]),
                      "plain_tokens_per_s": plain, "speculative_tokens_per_s": spec, "speedup": spec / plain,
                      "acceptance": s.acceptance, "tokens_per_forward": made / max(s.forwards + args.rounds, 1),
                      "outputs_equal": outputs[(name, "plain")] == outputs[(name, "speculative")],
                      "continuation": llm.tokenizer.decode(outputs[(name, "plain")][:40])}
    result = {"date": datetime.date.today().isoformat(), "host": platform.processor() or platform.machine(),
              "torch": torch.__version__, "threads": torch.get_num_threads(), "model": str(args.model),
              "drafter": args.drafter, "mtp_depth": model.config.mtp_depth, "draft": args.draft,
              "new_tokens": args.new_tokens, "rounds": args.rounds, "prompt_set": args.prompts, "prompts": rows}
    RESULTS.mkdir(exist_ok=True)
    suffix = "" if args.drafter == "mtp" else f"-{args.drafter.replace(':', '')}-{args.prompts}"
    (RESULTS / f"speculative{suffix}.json").write_text(json.dumps(result, indent=2) + "\n")
    for name, r in rows.items():
        print(f"{name:12s} plain {r['plain_tokens_per_s']:6.1f} tok/s  speculative {r['speculative_tokens_per_s']:6.1f} "
              f"tok/s  ({r['speedup']:.2f}x)  kept {r['acceptance']:.0%}  {r['tokens_per_forward']:.2f} tokens/forward  "
              f"equal: {r['outputs_equal']}  ({r['tokens']} tokens)")


if __name__ == "__main__":
    main()
