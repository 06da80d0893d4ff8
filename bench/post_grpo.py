"""The GRPO demonstration: SmolLM2-135M-Instruct trained with `lamina grpo` (LoRA) on a templated
task it partly solves, its held-out accuracy measured before, during and after.

    .venv/bin/python -m bench.post_grpo [--task arithmetic:1] [--steps 30] [KEY=VALUE ...]

`--resume --out RUN --steps N` continues a run to N steps (bit-exact, as if it had not stopped),
adding its seconds to the record's. Runs the same code path as
`lamina grpo smollm2-135m-instruct --task arithmetic:1 --lora ...`, then writes the held-out
curve, wall and CPU seconds and the settings to bench/results/post_grpo.json and the plot to
bench/results/post_grpo.png."""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import resource
import shutil
import tempfile
import time
from pathlib import Path

import torch

from lamina.post.grpo import CURVE_FILE, grpo, grpo_config
from lamina.train.metrics import read_metrics

RESULTS = Path(__file__).parent / "results"
DEMO = ["lora=true", "lr=3e-4", "group_size=8", "prompts_per_step=4", "max_new_tokens=96", "temperature=0.7",
        "eval_every=10", "eval_problems=100", "pass_k=0", "log_every=1"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--task", default="arithmetic:1")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--out", help="run directory (default: a temporary one)")
    ap.add_argument("--resume", action="store_true",
                    help="continue the run in --out (to more --steps); seconds add to those in post_grpo.json")
    ap.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="GRPOConfig settings beyond the demo's")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or Path(tmp) / "run")
        config = grpo_config(DEMO + args.overrides, model=args.model, task=args.task, max_steps=args.steps,
                             out=str(out))
        start, cpu0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
        grpo(config, resume=args.resume, progress=False)
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        wall = time.perf_counter() - start
        rows = read_metrics(out)
        curve = [{"step": r["step"], "heldout_accuracy": r["heldout_accuracy"]}
                 for r in rows if "heldout_accuracy" in r]
        steps = [{k: r[k] for k in ("step", "reward", "accuracy", "completion_length", "clip_fraction", "loss")}
                 for r in rows if "reward" in r]
        RESULTS.mkdir(exist_ok=True)
        shutil.copy(out / CURVE_FILE, RESULTS / "post_grpo.png")
    before = json.loads((RESULTS / "post_grpo.json").read_text()) if args.resume else {}
    segments = before.get("segments", [{k: before[k] for k in ("wall_seconds", "cpu_seconds", "date")}]
                          if before else []) + [{"wall_seconds": wall, "cpu_seconds": cpu1.ru_utime + cpu1.ru_stime
                                                 - cpu0.ru_utime - cpu0.ru_stime,
                                                 "date": datetime.date.today().isoformat()}]
    record = {"date": datetime.date.today().isoformat(), "model": args.model, "task": args.task,
              "machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
              "wall_seconds": sum(s["wall_seconds"] for s in segments),
              "cpu_seconds": sum(s["cpu_seconds"] for s in segments), "segments": segments,
              "settings": config.to_dict(), "heldout": curve,
              "gain_points": 100 * (curve[-1]["heldout_accuracy"] - curve[0]["heldout_accuracy"]) if curve else None,
              "steps": steps}
    (RESULTS / "post_grpo.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({k: record[k] for k in ("wall_seconds", "cpu_seconds", "heldout", "gain_points")}, indent=1))


if __name__ == "__main__":
    main()
