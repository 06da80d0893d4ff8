"""Evaluation speed: items/s on HellaSwag and MMLU (5-shot), lamina against lm-eval's HF
transformers backend on the same model, items and batch size, side by side in one run; then the
table of SmolLM2-135M-Instruct's scores on the suite (shared/BENCHMARKS.md).

    .venv/bin/python -m bench.eval [--items 500] [--runs 3] [--batch-size 16] [--score-limit N]
        [--tasks hellaswag mmlu] [--skip-speed] [--skip-scores] [--count-only] [--device cuda]

Both systems get the same requests: lamina builds its items (lamina.eval.tasks), lm-eval builds
the same documents from its own task YAMLs (pointed at the packaged data); what is timed is
scoring them (tokenizing included): lamina's prefix-sharing scorer, and `HFLM.loglikelihood`.
Systems alternate within each round (A B A B ...), a small warm-up round is dropped, the table
shows medians. Each round also checks that both give the same accuracy, and each row says how
much its system computed (`work`: token positions and weight-matmul FLOPs per item, counted).
MMLU takes the first ceil(items / 57) questions of every subject, cut to `--items`. Then
`lamina eval` runs the suite (`--score-limit` items per task; none = every item) for the score
table. Rows go to
bench/results/eval.json; on a GPU (`--device cuda`, the default where one is visible; both
systems there, float32 as on CPU) to bench/results/eval-cuda.json."""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from lamina.eval import EvalConfig, Scorer, evaluate, load_model  # noqa: E402
from lamina.eval.harness import encode_requests, item_metrics, score_items  # noqa: E402
from lamina.eval.tasks import MMLU_SUBJECTS, TASKS  # noqa: E402
from lamina.train.accounting import matmul_params  # noqa: E402

MODEL = "smollm2-135m-instruct"
RESULTS = Path(__file__).parent / "results"
SUITE = ("boolq", "piqa", "siqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa",
         "mmlu", "lambada", "gsm8k")


def workload(task: str, n: int):
    """The same n items for both systems: lamina's items and lm-eval's instances, by document."""
    from lamina.eval.lm_eval_model import reference_task
    if task == "hellaswag":
        items = TASKS["hellaswag"].items(limit=n)
        ref = reference_task("hellaswag")
        ref.build_all_requests(limit=n, rank=0, world_size=1)
        return items, [ref.instances]
    per = math.ceil(n / len(MMLU_SUBJECTS))
    items = TASKS["mmlu"].items(limit=per)[:n]
    instances, left = [], n
    for subject in MMLU_SUBJECTS:
        if left <= 0:
            break
        ref = reference_task(f"mmlu_{subject}")
        ref.build_all_requests(limit=min(per, left), rank=0, world_size=1)
        instances.append(ref.instances)
        left -= len({i.doc_id for i in ref.instances})
    return items, instances


def time_lamina(scorer, llm, items) -> tuple[float, float]:
    t = time.perf_counter()
    results = score_items(scorer, llm, items)
    seconds = time.perf_counter() - t
    return seconds, sum(item_metrics(it, r)["acc"] for it, r in zip(items, results)) / len(items)


def time_lm_eval(hf, instance_lists) -> tuple[float, float]:
    t = time.perf_counter()
    responses = [hf.loglikelihood(instances, disable_tqdm=True) for instances in instance_lists]
    seconds = time.perf_counter() - t
    correct = total = 0
    for instances, resp in zip(instance_lists, responses):
        docs: dict[int, list] = {}
        for inst, (ll, _) in zip(instances, resp):
            docs.setdefault(inst.doc_id, []).append((inst.idx, ll, inst.doc))
        for choices in docs.values():
            lls = [ll for _, ll, _ in sorted(choices, key=lambda c: c[0])]
            doc = choices[0][2]
            gold = int(doc["gold"] if "gold" in doc else doc.get("label", doc.get("answer")))
            correct += max(range(len(lls)), key=lambda i: (lls[i], -i)) == gold
            total += 1
    return seconds, correct / total


def work(scorer, llm, items) -> dict:
    """What each system computes for these items, counted from their token ids without running
    the model: token positions per item through the blocks (padding included) and through the
    output layer, and the FLOPs of the weight matmuls (2 per weight per position; attention's
    few percent left out). lamina's rows come from the scorer's own plan; lm-eval's HF backend
    runs each request as a row (context + continuation - 1 tokens, cut at the model's length),
    sorted longest first and padded to the longest of each batch, with logits at every
    position; requests whose input tokens are equal (MMLU's one-token answers after one question)
    share a row, as lm-eval's logits cache does."""
    c = llm.model.config
    head = c.vocab_size * c.dim
    body = matmul_params(c) - head
    requests = encode_requests(llm, items)
    ours = scored = theirs = 0
    for preamble, batches in scorer.plan(requests):
        ours += len(preamble) + sum(len(b) * b[0].length for b in batches)
        scored += sum(it.width + 1 for b in batches for it in b)   # the context's last + each suffix token
        block = [requests[i] for b in batches for it in b for i in it.index]
        rows = {(r.context + r.continuation)[-(c.max_seq_len + 1):-1] for r in block}  # equal inputs share a row
        lengths = sorted(map(len, rows), reverse=True)
        theirs += sum(len(lengths[k:k + scorer.batch_size]) * lengths[k]
                      for k in range(0, len(lengths), scorer.batch_size))
    n = len(items)
    flops_ours, flops_theirs = 2 * (ours * body + scored * head), 2 * theirs * (body + head)
    return {"positions_per_item": {"lamina": ours / n, "lm-eval (HF)": theirs / n},
            "output_positions_per_item": {"lamina": scored / n, "lm-eval (HF)": theirs / n},
            "gflop_per_item": {"lamina": flops_ours / n / 1e9, "lm-eval (HF)": flops_theirs / n / 1e9},
            "flop_ratio": flops_theirs / flops_ours}


def with_work(row: dict, counted: dict) -> dict:
    """A speed row's share of `work`'s counts, and the FLOP rate its timing implies."""
    system = row["system"]
    return {"positions_per_item": counted["positions_per_item"][system],
            "output_positions_per_item": counted["output_positions_per_item"][system],
            "gflop_per_item": counted["gflop_per_item"][system],
            "gflop_per_s": counted["gflop_per_item"][system] * row["items_per_s"]}


def speed(args, llm, hf) -> list[dict]:
    scorer = Scorer(llm.model, batch_size=args.batch_size)
    rows = []
    for task in args.tasks:
        items, instances = workload(task, args.items)
        warm_items, warm_inst = workload(task, 8)
        time_lamina(scorer, llm, warm_items)
        time_lm_eval(hf, warm_inst)
        times: dict[str, list[float]] = {"lamina": [], "lm-eval (HF)": []}
        accs: dict[str, float] = {}
        for _ in range(args.runs):
            s, accs["lamina"] = time_lamina(scorer, llm, items)
            times["lamina"].append(s)
            s, accs["lm-eval (HF)"] = time_lm_eval(hf, instances)
            times["lm-eval (HF)"].append(s)
            print(f"  {task}: lamina {times['lamina'][-1]:.1f} s, lm-eval {times['lm-eval (HF)'][-1]:.1f} s", flush=True)
        peer = len(items) / statistics.median(times["lm-eval (HF)"])
        counted = work(scorer, llm, items)
        for system, ts in times.items():
            rate = len(items) / statistics.median(ts)
            row = {"system": system, "task": task, "items": len(items), "batch_size": args.batch_size,
                   "items_per_s": rate, "seconds": ts, "ratio_vs_lm_eval": rate / peer, "acc": accs[system]}
            rows.append(row | with_work(row, counted))
        print(f"  {task}: lm-eval computes {counted['flop_ratio']:.2f}x lamina's matmul FLOPs", flush=True)
    return rows


def scores(args, llm) -> dict:
    out = evaluate(llm, EvalConfig(tasks=SUITE, limit=args.score_limit, batch_size=args.batch_size,
                                   progress=False), model_name=MODEL)
    return {k: v for k, v in out["results"].items() if not k.startswith("mmlu_")} | {"limit": args.score_limit}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=500, help="items per task for the speed comparison")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--tasks", nargs="+", default=["hellaswag", "mmlu"], choices=["hellaswag", "mmlu"])
    ap.add_argument("--batch-size", type=int, default=16, help="the same for both systems")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", help="results file (default bench/results/eval.json, eval-cuda.json on GPU)")
    ap.add_argument("--score-limit", type=int, default=None, help="items per task for the score table (default all)")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--skip-scores", action="store_true")
    ap.add_argument("--count-only", action="store_true",
                    help="only count each system's work on the items (no timing), print it and add it "
                         "to the timed rows of the same items in the results")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from lamina.eval.lm_eval_model import hf_reference
    device = torch.device(args.device)
    llm = load_model(MODEL, device=args.device)
    results = Path(args.out or RESULTS / ("eval.json" if device.type == "cpu" else f"eval-{device.type}.json"))
    if args.count_only:
        old = json.loads(results.read_text()) if results.is_file() else None
        for task in args.tasks:
            counted = work(Scorer(llm.model, batch_size=args.batch_size), llm, workload(task, args.items)[0])
            print(task, json.dumps(counted, indent=1))
            for row in old["speed"] if old else []:   # the timed rows of the same work get the counts too
                if row["task"] == task and row["items"] == args.items and row["batch_size"] == args.batch_size:
                    row.update(with_work(row, counted))
        if old:
            results.write_text(json.dumps(old, indent=2) + "\n")
        return
    record = {"model": MODEL, "dtype": "float32", "threads": args.threads,
              "machine": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine(),
              "device": device.type, "date": datetime.date.today().isoformat()}
    if not args.skip_speed:
        record["speed"] = speed(args, llm, hf_reference(MODEL, batch_size=args.batch_size, device=args.device))
        print(f"\n{'system':14s} | {'task':9s} | items | items/s | ratio vs lm-eval | acc")
        for r in record["speed"]:
            print(f"{r['system']:14s} | {r['task']:9s} | {r['items']:5d} | {r['items_per_s']:7.2f} | "
                  f"{r['ratio_vs_lm_eval']:16.2f} | {100 * r['acc']:.1f}")
    if not args.skip_scores:
        record["scores"] = scores(args, llm)
        print(f"\nSmolLM2-135M-Instruct (limit {args.score_limit or 'none'}):")
        for task in SUITE:
            r = record["scores"][task]
            m = TASKS[task].headline
            print(f"  {TASKS[task].title:10s} {m:12s} {100 * r[m]:5.1f} ±{100 * r[m + '_stderr']:.1f}  (n={r['n']})")
    # keep rows of earlier runs for what this run skipped (e.g. --tasks mmlu, --skip-scores)
    old = json.loads(results.read_text()) if results.is_file() else {}
    fresh = {(r["system"], r["task"]) for r in record.get("speed", [])}
    record["speed"] = [r for r in old.get("speed", []) if (r["system"], r["task"]) not in fresh] + record.get("speed", [])
    if "scores" not in record and "scores" in old:
        record["scores"] = old["scores"]
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
