"""Training throughput on CPU: lamina's training step against transformers' LlamaForCausalLM
forward + backward + AdamW step on identical shapes, side by side in one run
(shared/BENCHMARKS.md).

    .venv/bin/python -m bench.train [--presets lamina-speedrun,smollm2-135m] [--steps 6] [--rounds 3]

Both systems start from the same weights (lamina's init, written as an HF directory), see the
same batches (random token ids), and take the same optimizer (AdamW, same hyperparameters);
lamina runs its trainer's step as `lamina train` does on CPU — eager, fused AdamW — and once more
with the model torch.compile'd (`compile = "on"`); transformers runs its eager model with
torch.optim.AdamW's defaults. Systems alternate
each round, the first (warm-up, compile) round is dropped, medians are reported. MFU is model
FLOPs (6N + attention, lamina.train.accounting) per second over a matmul measured in the same
run. Rows go to bench/results/train.json."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from lamina.checkpoint import write_hf  # noqa: E402
from lamina.model import Transformer, init_weights, preset, weights  # noqa: E402
from lamina.train import TrainConfig  # noqa: E402
from lamina.train.accounting import flops_per_token, measure_matmul_flops  # noqa: E402
from lamina.train.optim import build_optimizers  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "train.json"
SHAPES = {"lamina-speedrun": (16, 256), "smollm2-135m": (4, 256)}   # (batch, seq_len) per preset


def lamina_step(model, optimizers, forward):
    def step(x, y):
        loss = forward(x, targets=y)   # the trainer's loss: fused head + cross-entropy
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        for opt in optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)
        return loss.item()
    return step


def hf_step(model, opt):
    def step(x, y):
        logits = model(input_ids=x).logits
        loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()
    return step


def build(name: str, tmp: Path):
    from transformers import LlamaForCausalLM
    config = preset(name).replace(vocab_size=4096 if name == "lamina-speedrun" else preset(name).vocab_size)
    ours = init_weights(Transformer(config), seed=0).train()
    hf_dir = tmp / name
    if not hf_dir.exists():
        write_hf(hf_dir, config, weights(ours))
    theirs = LlamaForCausalLM.from_pretrained(hf_dir, dtype=torch.float32, attn_implementation="sdpa").train()
    train_config = TrainConfig(optimizer="adamw", lr=1e-3, weight_decay=0.1)
    compiled = init_weights(Transformer(config), seed=0).train()
    decay = [p for n, p in theirs.named_parameters() if p.ndim == 2 and "embed" not in n and "lm_head" not in n]
    rest = [p for n, p in theirs.named_parameters() if not (p.ndim == 2 and "embed" not in n and "lm_head" not in n)]
    hf_opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                               lr=1e-3, betas=(0.9, 0.95), eps=1e-8)
    cpu = torch.device("cpu")
    return config, {
        "lamina": lamina_step(ours, build_optimizers(ours, train_config, cpu), ours),
        "lamina+compile": lamina_step(compiled, build_optimizers(compiled, train_config, cpu), torch.compile(compiled)),
        "transformers": hf_step(theirs, hf_opt)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="lamina-speedrun,smollm2-135m")
    ap.add_argument("--steps", type=int, default=6, help="training steps per system per round")
    ap.add_argument("--rounds", type=int, default=3, help="measured rounds (after one warm-up round)")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    peak = measure_matmul_flops(torch.device("cpu"), torch.float32, seconds=2.0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.presets.split(","):
            batch, seq = SHAPES.get(name, (4, 256))
            config, steps = build(name, Path(tmp))
            g = torch.Generator().manual_seed(0)
            x = torch.randint(0, config.vocab_size, (batch, seq + 1), generator=g)
            x, y = x[:, :-1].contiguous(), x[:, 1:].contiguous()
            times: dict[str, list[float]] = {k: [] for k in steps}
            for round_ in range(args.rounds + 1):
                for system, step in steps.items():
                    start = time.perf_counter()
                    for _ in range(args.steps):
                        step(x, y)
                    if round_:                                    # round 0 warms up (and compiles)
                        times[system].append((time.perf_counter() - start) / args.steps)
            per_token = flops_per_token(config, seq)
            base = statistics.median(times["transformers"])
            for system, ts in times.items():
                s = statistics.median(ts)
                tps = batch * seq / s
                rows.append({"system": system, "preset": name, "batch": batch, "seq_len": seq,
                             "step_s": s, "tokens_per_s": tps, "mfu": tps * per_token / peak,
                             "ratio_vs_transformers": base / s,
                             "setting": "fp32, " + ("torch.compile" if "compile" in system else "eager")
                             + (", AdamW (default)" if system == "transformers" else ", fused AdamW")})
    print(f"matmul: {peak / 1e9:.0f} GFLOP/s fp32 on {args.threads} threads")
    print(f"{'system':<15} {'preset':<16} {'setting':<34} {'tokens/s':>9} {'MFU':>6} {'vs transformers':>16}")
    for r in rows:
        print(f"{r['system']:<15} {r['preset']:<16} {r['setting']:<34} {r['tokens_per_s']:9.0f} "
              f"{r['mfu']:6.1%} {r['ratio_vs_transformers']:15.2f}x")
    record = {"date": datetime.date.today().isoformat(), "machine": platform.processor() or platform.machine(),
              "threads": args.threads, "torch": torch.__version__, "matmul_gflops": peak / 1e9,
              "steps": args.steps, "rounds": args.rounds, "rows": rows}
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
