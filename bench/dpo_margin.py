"""DPO raises the chosen-vs-rejected margin on held-out pairs: `lamina dpo` with LoRA on
SmolLM2-135M-Instruct, on preference pairs made from lamina's templated tasks.

    .venv/bin/python -m bench.dpo_margin [--train 48 --heldout 32 --steps 20] [--out runs/dpo-margin]

Each pair asks a task's question (`lamina.post.tasks`: level-3 arithmetic, five-digit + and -
and three-digit ×, and word problems; whole-number answers). The chosen reply is the task's
worked answer; the rejected one is the same worked answer with its result and final answer
changed to a wrong number (one digit off by 1-9, up or down alike, with as many digits, so that
no length or size tells the two apart). Training pairs come from the training split, held-out
pairs from the held-out split (problems never seen in any phrasing).

The script writes both files (Apache-2.0: lamina's own templates), scores the held-out pairs with
the base model, runs `lamina dpo` (the command line, in this process), scores them again with the
trained model (OUT/model, adapters merged) and writes bench/results/post_dpo.json: per side, the
mean log-probability margin log p(chosen) - log p(rejected), the share of pairs where the chosen
side is the likelier one, and after training DPO's implicit reward margin beta * (policy - base
log-ratio margin) with its accuracy; plus the command, the timings and the machine."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import re
import shlex
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

from lamina.checkpoint import load_checkpoint  # noqa: E402
from lamina.cli import main  # noqa: E402
from lamina.model import from_state_dict  # noqa: E402
from lamina.post.dpo import read_pairs, score_pairs  # noqa: E402
from lamina.post.tasks import Problem, problems  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "post_dpo.json"
MODEL = "smollm2-135m-instruct"
TASKS = ("arithmetic:3", "word_problems")   # ones SmolLM2-135M partly gets right (base pair accuracy 62% and 88%)


def wrong_number(answer: int, rng: random.Random) -> int:
    """The answer with one of its digits moved by 1-9, up or down, keeping its number of digits
    (so that no length tells the two apart)."""
    while True:
        place = 10 ** rng.randrange(len(str(answer)))
        wrong = answer + rng.choice([-1, 1]) * rng.randint(1, 9) * place
        if wrong >= 0 and wrong != answer and len(str(wrong)) == len(str(answer)):
            return wrong


def rejected_solution(p: Problem, rng: random.Random) -> str:
    """The worked answer with its result and final answer (the answer's last two mentions)
    replaced by a wrong number."""
    wrong = str(wrong_number(int(p.answer), rng))
    spots = [m.span() for m in re.finditer(rf"(?<!\d){re.escape(p.answer)}(?!\d)", p.solution)][-2:]
    text = p.solution
    for start, end in reversed(spots):
        text = text[:start] + wrong + text[end:]
    assert p.check(p.solution) and not p.check(text), (p, text)
    return text


def pair_records(n: int, split: str, seed: int) -> list[dict]:
    rng = random.Random(f"dpo-margin:{split}:{seed}")
    per_task = [problems(task, n // len(TASKS) + (i < n % len(TASKS)), seed=seed, split=split)
                for i, task in enumerate(TASKS)]
    return [{"prompt": p.question, "chosen": p.solution, "rejected": rejected_solution(p, rng),
             "meta": {"task": p.task, "template": p.template, "index": p.index, "split": split}}
            for row in zip(*per_task) for p in row]


def write_pairs(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    path.with_name(path.name + ".license").write_text("SPDX-License-Identifier: Apache-2.0\n")
    return path


def summary(logps: torch.Tensor) -> dict:
    """Mean log p(chosen) - log p(rejected), and the share of pairs where it is positive."""
    margin = logps[:, 0] - logps[:, 1]
    return {"logp_margin_mean": float(margin.mean()), "pair_accuracy": float((margin > 0).float().mean())}


def main_() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train", type=int, default=48, help="training pairs")
    ap.add_argument("--heldout", type=int, default=32, help="held-out pairs")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--out", default="runs/dpo-margin")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(0)
    out = Path(args.out)
    train = write_pairs(out / "pairs-train.jsonl", pair_records(args.train, "train", args.seed))
    heldout = write_pairs(out / "pairs-heldout.jsonl", pair_records(args.heldout, "heldout", args.seed))
    base = load_checkpoint(MODEL)
    _, held = read_pairs(heldout, base.tokenizer, 1024)

    started = time.perf_counter()
    before = score_pairs(from_state_dict(base.config, base.weights, dtype=torch.float32), held, 8)
    scored_before = time.perf_counter() - started

    command = ["dpo", MODEL, "--data", str(train), "--out", str(out / "run"), "--max-steps", str(args.steps),
               "--batch-size", str(args.batch_size), "--beta", str(args.beta), "--lr", str(args.lr), "--seq-len", "256",
               "lora=true", "lora_r=16", "lora_alpha=32", "warmup_steps=2", "log_every=4", "--quiet"]
    started = time.perf_counter()
    if main(command) != 0:
        raise SystemExit("lamina dpo failed")
    trained_s = time.perf_counter() - started

    trained = load_checkpoint(out / "run" / "model")
    after = score_pairs(from_state_dict(trained.config, trained.weights, dtype=torch.float32), held, 8)
    reward_margin = args.beta * ((after - before)[:, 0] - (after - before)[:, 1])
    steps = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    result = {
        "what": "held-out preference pairs (templated tasks, wrong final answer rejected) before and after "
                "`lamina dpo` with LoRA on SmolLM2-135M-Instruct",
        "command": "lamina " + shlex.join(command),
        "made_by": f"python -m bench.dpo_margin --train {args.train} --heldout {args.heldout} --steps {args.steps}",
        "pairs": {"train": args.train, "heldout": args.heldout, "tasks": list(TASKS)},
        "heldout_before": summary(before),
        "heldout_after": summary(after),
        "heldout_reward_margin_mean": float(reward_margin.mean()),
        "heldout_reward_accuracy": float((reward_margin > 0).float().mean()),
        "train_log": [{k: s[k] for k in ("step", "loss", "rewards/margins", "rewards/accuracies")} for s in steps],
        "seconds": {"dpo_command": trained_s, "score_heldout_once": scored_before},
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                    "torch": torch.__version__},
        "date": datetime.date.today().isoformat(),
    }
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("heldout_before", "heldout_after", "heldout_reward_margin_mean",
                                             "heldout_reward_accuracy", "seconds")}, indent=2))


if __name__ == "__main__":
    main_()
