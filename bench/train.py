"""Training throughput: lamina's training step against transformers' LlamaForCausalLM
forward + backward + AdamW step on identical shapes, side by side in one run
(shared/BENCHMARKS.md).

    .venv/bin/python -m bench.train [--presets lamina-speedrun,smollm2-135m] [--steps 6] [--rounds 3]
    python -m bench.train --device cuda            # on a GPU: llama-3.2-1b, bf16 autocast

Both systems start from the same weights (lamina's init, written as an HF directory), see the
same batches (random token ids), and take the same optimizer (AdamW, same hyperparameters);
lamina runs its trainer's step as `lamina train` does — fused AdamW, eager on CPU — and once more
with the model torch.compile'd (`compile = "on"`, the trainer's default on GPU); transformers
runs its eager model with torch.optim.AdamW's defaults. On a GPU both compute under bf16
autocast with float32 weights, as `lamina train` does there. Systems alternate each round on
CPU; on a GPU, where three copies of a 1B model and their optimizer states would not fit at
once, they run one after another (`--sequential`). The first (warm-up, compile) round is
dropped, medians are reported. MFU is model FLOPs (6N + attention, lamina.train.accounting) per
second over a matmul measured in the same run, and on a GPU also over the card's nominal dense
bf16 peak (the figure nanochat's and torchtitan's MFU are quoted against). Rows go to
bench/results/train.json (train-cuda.json on a GPU)."""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import os
import platform
import statistics
import tempfile
import time
from functools import partial
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

RESULTS = Path(__file__).parent / "results"
SHAPES = {"lamina-speedrun": (16, 256), "smollm2-135m": (4, 256),   # (batch, seq_len) per preset
          "llama-3.2-1b": (4, 2048)}
PRESETS = {"cpu": "lamina-speedrun,smollm2-135m", "cuda": "llama-3.2-1b"}
SYSTEMS = ("lamina", "lamina+compile", "transformers")
# Dense (no sparsity) bf16 tensor-core peaks from NVIDIA's datasheets, FLOP/s; first match wins.
NOMINAL_BF16 = (("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H200 NVL", 835e12),
                ("H100", 989.4e12), ("H200", 989.4e12), ("GH200", 989.4e12),
                ("A100", 312e12), ("L40S", 362e12), ("A10G", 70e12))


def nominal_peak(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in NOMINAL_BF16 if key in name), None)


def lamina_step(model, optimizers, forward, autocast=contextlib.nullcontext):
    def step(x, y):
        with autocast():
            loss = forward(x, targets=y)   # the trainer's loss: fused head + cross-entropy
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        for opt in optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)
        return loss.item()
    return step


def hf_step(model, opt, autocast=contextlib.nullcontext):
    def step(x, y):
        with autocast():
            logits = model(input_ids=x).logits
        loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()
    return step


def bench_config(name: str):
    return preset(name).replace(vocab_size=4096) if name == "lamina-speedrun" else preset(name)


def build(name: str, system: str, hf_dir: Path, device: torch.device, autocast):
    """One system's training step for preset `name`, its weights lamina's init with seed 0."""
    config = bench_config(name)
    if system == "transformers":
        from transformers import LlamaForCausalLM
        if not hf_dir.exists():
            write_hf(hf_dir, config, weights(init_weights(Transformer(config), seed=0)))
        theirs = LlamaForCausalLM.from_pretrained(hf_dir, dtype=torch.float32,
                                                  attn_implementation="sdpa").to(device).train()
        named = list(theirs.named_parameters())
        is_decayed = [p.ndim == 2 and "embed" not in n and "lm_head" not in n for n, p in named]
        decay = [p for (_, p), d in zip(named, is_decayed) if d]
        rest = [p for (_, p), d in zip(named, is_decayed) if not d]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                                lr=1e-3, betas=(0.9, 0.95), eps=1e-8)
        return hf_step(theirs, opt, autocast)
    ours = init_weights(Transformer(config), seed=0).to(device).train()
    optimizers = build_optimizers(ours, TrainConfig(optimizer="adamw", lr=1e-3, weight_decay=0.1), device)
    forward = torch.compile(ours) if system == "lamina+compile" else ours
    return lamina_step(ours, optimizers, forward, autocast)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto",
                    help="auto: bf16 autocast on GPU, float32 on CPU (as lamina train)")
    ap.add_argument("--presets", help=f"comma-separated (default: {PRESETS['cpu']} on CPU, "
                    f"{PRESETS['cuda']} on GPU)")
    ap.add_argument("--shape", help="BATCHxSEQ for every preset, e.g. 8x2048 (default: per preset)")
    ap.add_argument("--steps", type=int, default=6, help="training steps per system per round")
    ap.add_argument("--rounds", type=int, default=3, help="measured rounds (after one warm-up round)")
    ap.add_argument("--sequential", action=argparse.BooleanOptionalAction, default=None,
                    help="one system on the device at a time (default on GPU)")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--out", help="results file (default bench/results/train.json, train-cuda.json on GPU)")
    args = ap.parse_args()
    device = torch.device(args.device)
    bf16 = args.dtype == "bfloat16" or (args.dtype == "auto" and device.type == "cuda")
    autocast = partial(torch.autocast, device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext
    sequential = device.type == "cuda" if args.sequential is None else args.sequential
    out = Path(args.out or RESULTS / ("train.json" if device.type == "cpu" else f"train-{device.type}.json"))
    torch.set_num_threads(args.threads)
    peak = measure_matmul_flops(device, torch.bfloat16 if bf16 else torch.float32, seconds=2.0)
    nominal = nominal_peak(device)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in (args.presets or PRESETS.get(device.type, PRESETS["cpu"])).split(","):
            batch, seq = (tuple(int(n) for n in args.shape.split("x")) if args.shape
                          else SHAPES.get(name, (4, 256)))
            config = bench_config(name)
            g = torch.Generator().manual_seed(0)
            x = torch.randint(0, config.vocab_size, (batch, seq + 1), generator=g)
            x, y = x[:, :-1].contiguous().to(device), x[:, 1:].contiguous().to(device)
            times: dict[str, list[float]] = {k: [] for k in SYSTEMS}
            for group in ([[s] for s in SYSTEMS] if sequential else [list(SYSTEMS)]):
                steps = {s: build(name, s, Path(tmp) / name, device, autocast) for s in group}
                for round_ in range(args.rounds + 1):
                    for system, step in steps.items():
                        start = time.perf_counter()
                        for _ in range(args.steps):
                            step(x, y)                            # returns loss.item(): synchronised
                        if round_:                                # round 0 warms up (and compiles)
                            times[system].append((time.perf_counter() - start) / args.steps)
                del steps
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            per_token = flops_per_token(config, seq)
            base = statistics.median(times["transformers"])
            for system, ts in times.items():
                s = statistics.median(ts)
                tps = batch * seq / s
                row = {"system": system, "preset": name, "batch": batch, "seq_len": seq,
                       "step_s": s, "tokens_per_s": tps, "mfu": tps * per_token / peak,
                       "ratio_vs_transformers": base / s,
                       "setting": ("bf16 autocast, " if bf16 else "fp32, ")
                       + ("torch.compile" if "compile" in system else "eager")
                       + (", AdamW (default)" if system == "transformers" else ", fused AdamW")}
                if nominal:
                    row["mfu_nominal"] = tps * per_token / nominal
                rows.append(row)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{args.threads} threads"
    print(f"matmul: {peak / 1e9:.0f} GFLOP/s {'bf16' if bf16 else 'fp32'} on {where}"
          + (f"; nominal bf16 peak {nominal / 1e12:.0f} TFLOP/s" if nominal else ""))
    print(f"{'system':<15} {'preset':<16} {'setting':<42} {'tokens/s':>9} {'MFU':>6}"
          + (f" {'MFU(nom)':>8}" if nominal else "") + f" {'vs transformers':>16}")
    for r in rows:
        print(f"{r['system']:<15} {r['preset']:<16} {r['setting']:<42} {r['tokens_per_s']:9.0f} {r['mfu']:6.1%}"
              + (f" {r['mfu_nominal']:8.1%}" if nominal else "") + f" {r['ratio_vs_transformers']:15.2f}x")
    record = {"date": datetime.date.today().isoformat(),
              "machine": where if device.type == "cuda" else platform.processor() or platform.machine(),
              "device": device.type, "dtype": "bfloat16" if bf16 else "float32",
              "threads": args.threads, "torch": torch.__version__, "matmul_gflops": peak / 1e9,
              "nominal_bf16_tflops": nominal / 1e12 if nominal else None,
              "steps": args.steps, "rounds": args.rounds, "sequential": sequential, "rows": rows}
    out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
