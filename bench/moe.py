"""A mixture of experts, lamina against transformers' Mixtral on the same weights and batch in one
run (shared/BENCHMARKS.md): one training step (forward, backward, AdamW), and batch-1 greedy
decoding.

    .venv/bin/python -m bench.moe [--rounds 5] [--steps 3] [--device cpu|cuda] [--caches-only]

and the caches of latent attention against multi-head and grouped-query attention at the same
width (dense feed-forward, lamina's engine for all three), and the latent model's absorbed cache
against its naive expanded one: bytes per token, greedy decoding of a batch of long prompts, and
a decode step alone.

The model is a small Mixtral-layout MoE (8 experts, top-2; lamina writes it, transformers loads
the directory). lamina computes the experts with grouped matmuls (`F.grouped_mm`, tokens sorted by
expert); transformers' Mixtral loops over the experts that received tokens. Systems alternate
each round; the first round is dropped (warm-up); medians are reported, with the model FLOPs per
second of each (6 × active parameters per token, lamina.train.accounting) beside the matmul rate
measured in the same run. Decoding: lamina's KV-cache engine against `generate` with its cache,
greedy, the same prompt and length. Rows go to bench/results/moe.json."""

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

from lamina.checkpoint import write_hf  # noqa: E402
from lamina.model import ModelConfig, Transformer, init_weights, weights  # noqa: E402
from lamina.serve.engine import Engine  # noqa: E402
from lamina.serve.sampling import SamplingParams  # noqa: E402
from lamina.train.accounting import flops_per_token, measure_matmul_flops  # noqa: E402

RESULTS = Path(__file__).parent / "results"
CONFIG = ModelConfig(dim=256, n_layers=4, n_heads=4, n_kv_heads=2, ffn_dim=512, vocab_size=4096, max_seq_len=512,
                     tie_embeddings=False, rope_theta=10000.0, n_experts=32, n_active_experts=4, expert_ffn_dim=256)
BATCH, SEQ, NEW_TOKENS = 8, 256, 64
_DENSE = dict(dim=256, n_layers=4, n_heads=4, ffn_dim=704, vocab_size=4096, max_seq_len=1024, rope_theta=10000.0)
ATTENTIONS = {     # the same width and heads; latent: DeepSeek's proportions (rank 2 x head width, RoPE half a head)
    "multi-head": ModelConfig(**_DENSE, n_kv_heads=4),
    "grouped-query (2 kv heads)": ModelConfig(**_DENSE, n_kv_heads=2),
    "latent (rank 128 + RoPE 32)": ModelConfig(**_DENSE, kv_lora_rank=128, qk_nope_head_dim=64, qk_rope_head_dim=32,
                                               v_head_dim=64),
}
NAIVE = "latent, naive expanded cache"


def lamina_step(model, opt, x):
    loss = model(x[:, :-1], targets=x[:, 1:])
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.item()


def hf_step(model, opt, x):
    loss = model(input_ids=x[:, :-1], labels=x[:, :-1].clone()).loss   # transformers shifts the labels itself
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.item()


def lamina_decode(model, prompt):
    out = []
    for step in Engine(model).generate([prompt], SamplingParams(max_new_tokens=NEW_TOKENS, temperature=0,
                                                                stop_token_ids=())):
        out += [t for t in step if t is not None]
    return out


def hf_decode(model, prompt):
    ids = model.generate(torch.tensor([prompt]), max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                         do_sample=False)
    return ids[0, len(prompt):].tolist()


def caches(rounds: int, device: torch.device) -> dict:
    """Bytes per token and batched decode speed of each attention's cache, models alternated: the
    whole generation (a prefill of 8 x 512 tokens, then NEW_TOKENS steps) and a decode step alone
    (the generation less one of a single token, over the steps between). The latent model runs
    twice: over its latent cache (absorbed) and over every head's keys and values (the naive
    cache, `Engine(expand_latent=True)`)."""
    from lamina.model.kv_cache import cached_dims
    models = {name: init_weights(Transformer(c), seed=0).to(device).eval() for name, c in ATTENTIONS.items()}
    latent = next(name for name in ATTENTIONS if name.startswith("latent"))
    runs = {name: (name, {}) for name in models} | {NAIVE: (latent, {"expand_latent": True})}
    prompts = torch.randint(0, 4096, (8, 512)).tolist()
    params = SamplingParams(max_new_tokens=NEW_TOKENS, temperature=0, stop_token_ids=())
    first = SamplingParams(max_new_tokens=1, temperature=0, stop_token_ids=())
    times: dict[str, list[float]] = {name: [] for name in runs}
    steps: dict[str, list[float]] = {name: [] for name in runs}
    with torch.no_grad():
        for r in range(rounds + 1):
            for name, (model, kw) in (runs.items() if r % 2 == 0 else reversed(runs.items())):
                engine = Engine(models[model], **kw)
                whole = timed(lambda: [None for _ in engine.generate(prompts, params)])
                prefill = timed(lambda: [None for _ in engine.generate(prompts, first)])
                if r:
                    times[name].append(whole)
                    steps[name].append((whole - prefill) / (NEW_TOKENS - 1))

    def bytes_per_token(name: str) -> int:
        model, kw = runs[name]
        (kh, kd), (vh, vd) = cached_dims(ATTENTIONS[model], kw.get("expand_latent", False))
        return ATTENTIONS[model].n_layers * (kh * kd + vh * vd) * 2
    return {name: {"cache_bytes_per_token_bf16": bytes_per_token(name),
                   "parameters": sum(p.numel() for p in models[runs[name][0]].parameters()),
                   "decode_tokens_per_s": 8 * NEW_TOKENS / statistics.median(times[name]),
                   "decode_step_ms": 1000 * statistics.median(steps[name])} for name in runs}


def timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=3, help="training steps per round")
    p.add_argument("--device", default="cpu")
    p.add_argument("--caches-only", action="store_true",
                   help="measure the attention caches alone, into the results file's last run")
    args = p.parse_args()
    from transformers import MixtralForCausalLM
    device = torch.device(args.device)
    if args.caches_only:
        result = json.loads((RESULTS / "moe.json").read_text())
        result["attention_caches"] = caches(args.rounds, device)
        result["attention_caches_date"] = datetime.date.today().isoformat()
        (RESULTS / "moe.json").write_text(json.dumps(result, indent=2) + "\n")
        show_caches(result["attention_caches"])
        return
    torch.manual_seed(0)
    ours = init_weights(Transformer(CONFIG), seed=0).to(device)
    with tempfile.TemporaryDirectory() as tmp:
        write_hf(Path(tmp) / "m", CONFIG, weights(ours))
        theirs = MixtralForCausalLM.from_pretrained(Path(tmp) / "m", dtype=torch.float32).to(device)
    x = torch.randint(0, CONFIG.vocab_size, (BATCH, SEQ + 1), device=device)
    with torch.no_grad():       # the same model: equal logits before any step
        ours.eval(), theirs.eval()
        gap = float((ours(x[:1, :32]) - theirs(x[:1, :32]).logits).abs().max())
    prompt = x[0, :32].tolist()
    with torch.no_grad():
        same = lamina_decode(ours, prompt) == hf_decode(theirs, prompt)
    ours.train(), theirs.train()
    opts = {"lamina": torch.optim.AdamW(ours.parameters(), lr=1e-4, fused=device.type == "cpu" or None),
            "transformers": torch.optim.AdamW(theirs.parameters(), lr=1e-4)}
    steps = {"lamina": lambda: [lamina_step(ours, opts["lamina"], x) for _ in range(args.steps)],
             "transformers": lambda: [hf_step(theirs, opts["transformers"], x) for _ in range(args.steps)]}
    train_times: dict[str, list[float]] = {k: [] for k in steps}
    for r in range(args.rounds + 1):
        for name, fn in (steps.items() if r % 2 == 0 else reversed(steps.items())):
            t = timed(fn) / args.steps
            if r:
                train_times[name].append(t)
    ours.eval(), theirs.eval()
    with torch.no_grad():
        decode_times: dict[str, list[float]] = {"lamina": [], "transformers": []}
        fns = {"lamina": lambda: lamina_decode(ours, prompt), "transformers": lambda: hf_decode(theirs, prompt)}
        for r in range(args.rounds + 1):
            for name, fn in (fns.items() if r % 2 == 0 else reversed(fns.items())):
                t = timed(fn)
                if r:
                    decode_times[name].append(t)
    matmul = measure_matmul_flops(device, torch.float32)
    per_token = flops_per_token(CONFIG, SEQ)
    rows = {}
    for name in steps:
        step = statistics.median(train_times[name])
        flops = per_token * BATCH * SEQ / step
        rows[name] = {"train_step_s": step, "train_tokens_per_s": BATCH * SEQ / step, "model_flop_per_s": flops,
                      "of_matmul": flops / matmul, "decode_tokens_per_s": NEW_TOKENS / statistics.median(decode_times[name])}
    result = {"date": datetime.date.today().isoformat(), "host": platform.processor() or platform.machine(),
              "device": str(device), "torch": torch.__version__, "config": CONFIG.to_dict(),
              "batch": BATCH, "seq_len": SEQ, "rounds": args.rounds, "logit_gap_before": gap,
              "greedy_outputs_equal": same, "matmul_flop_per_s": matmul, "systems": rows,
              "train_speedup": rows["transformers"]["train_step_s"] / rows["lamina"]["train_step_s"],
              "decode_speedup": rows["lamina"]["decode_tokens_per_s"] / rows["transformers"]["decode_tokens_per_s"]}
    result["attention_caches"] = caches(args.rounds, device)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "moe.json").write_text(json.dumps(result, indent=2) + "\n")
    for name, r in rows.items():
        print(f"{name:13s} train step {r['train_step_s'] * 1000:7.1f} ms ({r['train_tokens_per_s']:,.0f} tok/s, "
              f"{r['of_matmul']:.0%} of matmul)   decode {r['decode_tokens_per_s']:6.1f} tok/s")
    print(f"lamina/transformers: training {result['train_speedup']:.2f}x, decoding {result['decode_speedup']:.2f}x; "
          f"logits before training differ by {gap:.1e}; greedy outputs equal: {same}")
    show_caches(result["attention_caches"])


def show_caches(rows: dict) -> None:
    for name, r in rows.items():
        print(f"{name:30s} cache {r['cache_bytes_per_token_bf16']:6,} bytes/token   {r['parameters']:,} parameters   "
              f"decode (8 prompts of 512) {r['decode_tokens_per_s']:6.1f} tok/s, a step {r['decode_step_ms']:5.1f} ms")


if __name__ == "__main__":
    main()
