"""Post-training throughput: lamina's SFT and GRPO steps against TRL's SFTTrainer and
GRPOTrainer, same model, data and settings, alternated in one run (shared/BENCHMARKS.md).

    .venv/bin/python -m bench.post [--rounds 3] [--sft-batch 8] [--group-size 8] [--max-new-tokens 64]
    python -m bench.post --device cuda             # on a GPU: bf16 autocast on both sides

Model: SmolLM2-135M-Instruct (the packaged GGUF, dequantized to fp32 once and written as an HF
directory that both sides load). Data: conversations of lamina's templated tasks (a question, its
worked answer), the same ones for both systems.

- **SFT tokens/s.** One optimizer step on the same `--sft-batch` conversations: lamina as
  `lamina sft` runs it (packed rows of `--seq-len`, attention per conversation, loss on the
  assistant's tokens through the fused head, which only they pass through; fused AdamW), TRL as its SFTTrainer runs one
  (`training_step` on a batch of its own collator, padded to the longest, with the same objective
  — `assistant_only_loss`, SmolLM2's template marked where the assistant speaks, as TRL needs —
  then the Trainer's optimizer step). Tokens/s counts the conversations' tokens.
- **GRPO completions/s.** One whole step on the same `--grpo-prompts` problems × `--group-size`
  completions of up to `--max-new-tokens` (temperature 1, top-p 1, exact-answer reward, dapo loss,
  clip 0.2/0.28, beta 0): lamina's `grpo_step` (sampling with its batched KV-cache engine) against
  TRL's GRPOTrainer `training_step` (sampling with transformers' `generate`) plus its optimizer
  step. Both sample, so completion lengths differ a little: the table gives the mean length
  beside each, and completion tokens/s as a second metric.

One warm-up round, then `--rounds` rounds alternating lamina and TRL; medians. Rows go to
bench/results/post.json (post-cuda.json on a GPU)."""

from __future__ import annotations

import argparse
import contextlib
import datetime
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

from lamina.checkpoint import load_checkpoint, write_hf  # noqa: E402
from lamina.model import from_state_dict  # noqa: E402
from lamina.post.chat_data import Tokenized, render_with_mask  # noqa: E402
from lamina.post.packing import epoch_rows, pack  # noqa: E402
from lamina.post.tasks import problems  # noqa: E402
from lamina.train import TrainConfig, distributed  # noqa: E402
from lamina.train.optim import build_optimizers  # noqa: E402

RESULTS = Path(__file__).parent / "results"
MODEL = "smollm2-135m-instruct"
TASKS = ("arithmetic", "word_problems", "units", "lists")


def conversations(n: int) -> list[list[dict]]:
    """n chats of a templated question and its worked answer, mixed over a few tasks."""
    each = [problems(t, -(-n // len(TASKS)), seed=7) for t in TASKS]
    mixed = [p for group in zip(*each) for p in group][:n]
    return [[{"role": "user", "content": p.question}, {"role": "assistant", "content": p.solution}] for p in mixed]


# ---- SFT ----

def lamina_sft(hf_dir: Path, chats: list[list[dict]], seq_len: int, device, autocast):
    """A step of `lamina sft` (post.sft.sft_step's work) on the same conversations every time."""
    ck = load_checkpoint(hf_dir)
    model = from_state_dict(ck.config, ck.weights, dtype=torch.float32).to(device).train()
    optimizers = build_optimizers(model, TrainConfig(lr=2e-5, weight_decay=0.0), device)
    examples = [Tokenized(*render_with_mask(ck.tokenizer, c)) for c in chats]
    batch = pack([[examples[i] for i in row] for row in epoch_rows(examples, seq_len, 0, 0)], seq_len).to(device)
    layout = batch.mask

    def step() -> None:
        with autocast():
            loss = model(batch.tokens, positions=batch.positions, mask=layout, targets=batch.targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        for opt in optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)
        loss.item()
    return step, sum(len(e.ids) for e in examples), {"rows": len(batch.tokens), "seq_len": seq_len,
                                                     "trained_tokens": batch.trained}


def trl_sft(hf_dir: Path, chats: list[list[dict]], out: Path, device, bf16: bool):
    """A step of TRL's SFTTrainer on the same conversations with the same objective (loss on the
    assistant's tokens: `assistant_only_loss`), batched by its collator (padded to the longest)."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from tests.post.test_chat_data import SMOLLM2_WITH_GENERATION
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    tokenizer.chat_template = SMOLLM2_WITH_GENERATION      # SmolLM2's, marked where the assistant speaks
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32),
                         processing_class=tokenizer,
                         train_dataset=Dataset.from_list([{"messages": c} for c in chats]),
                         args=SFTConfig(output_dir=str(out), report_to=[], use_cpu=device.type == "cpu", bf16=bf16,
                                        assistant_only_loss=True,
                                        per_device_train_batch_size=len(chats), learning_rate=2e-5, max_grad_norm=1.0,
                                        max_length=None, shuffle_dataset=False))
    trainer.create_optimizer()
    trainer.current_gradient_accumulation_steps = 1
    inputs = next(iter(trainer.get_train_dataloader()))
    trainer.model.train()
    real = int(inputs["attention_mask"].sum())

    def step() -> None:
        loss = trainer.training_step(trainer.model, inputs, None)
        torch.nn.utils.clip_grad_norm_(trainer.model.parameters(), 1.0)
        trainer.optimizer.step()
        trainer.model.zero_grad(set_to_none=True)
        loss.item()
    return step, real, {"padded_tokens": int(inputs["input_ids"].numel()), "optimizer": trainer.args.optim,
                        "trained_tokens": int((inputs["labels"][:, 1:] != -100).sum())}


# ---- GRPO ----

def lamina_grpo(hf_dir: Path, out: Path, args, device):
    """lamina's GRPO step (`lamina grpo`'s): sample with the KV-cache engine, score, update."""
    from lamina.post.grpo import grpo_config, prepare
    config = grpo_config(model=str(hf_dir), task=args.grpo_task, out=str(out), group_size=args.group_size,
                         prompts_per_step=args.grpo_prompts, max_new_tokens=args.max_new_tokens, temperature=1.0,
                         top_p=1.0, loss_type="dapo", epsilon_low=0.2, epsilon_high=0.28, beta=0.0, lr=1e-6,
                         max_steps=1000, eval_problems=0, device=device.type, generation_batch=256)
    run, grpo_step = prepare(config, distributed.start(config.device), False, False)
    state = {}

    def step() -> None:
        state["result"] = grpo_step(run)
        run.progress.step += 1
    return step, state, run


def trl_grpo(hf_dir: Path, out: Path, args, device, bf16: bool, asked):
    """TRL's GRPOTrainer step on the same problems: transformers generate, reward, loss, update."""
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from lamina.post.rewards import exact_answer_reward

    def exact_answer(completions, answer, **kwargs):
        return [exact_answer_reward(c[0]["content"], a) for c, a in zip(completions, answer)]

    n = args.grpo_prompts * args.group_size
    trainer = GRPOTrainer(model=str(hf_dir), reward_funcs=exact_answer,
                          processing_class=AutoTokenizer.from_pretrained(hf_dir),
                          train_dataset=Dataset.from_list([{"prompt": [{"role": "user", "content": p.question}],
                                                            "answer": p.answer} for p in asked]),
                          args=GRPOConfig(output_dir=str(out), report_to=[], use_cpu=device.type == "cpu", bf16=bf16,
                                          num_generations=args.group_size, per_device_train_batch_size=n,
                                          max_completion_length=args.max_new_tokens, temperature=1.0, top_p=1.0,
                                          loss_type="dapo", epsilon=0.2, epsilon_high=0.28, beta=0.0,
                                          learning_rate=1e-6, max_grad_norm=1.0, seed=0))
    trainer.create_optimizer()
    trainer.current_gradient_accumulation_steps = 1
    trainer.model.train()
    lengths = []

    def step(round_: int) -> None:
        problems_now = asked[round_ * args.grpo_prompts:(round_ + 1) * args.grpo_prompts]
        rows = [{"prompt": [{"role": "user", "content": p.question}], "answer": p.answer}
                for p in problems_now for _ in range(args.group_size)]
        trainer.training_step(trainer.model, rows, None)
        torch.nn.utils.clip_grad_norm_(trainer.model.parameters(), 1.0)
        trainer.optimizer.step()
        trainer.model.zero_grad(set_to_none=True)
        lengths.append(trainer._metrics["train"]["completions/mean_length"][-1])
    return step, lengths


def median_row(system: str, bench: str, metric: str, values: list[float], setting: str, **extra) -> dict:
    return {"system": system, "benchmark": bench, "metric": metric, "median": statistics.median(values),
            "runs": values, "setting": setting, **extra}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--rounds", type=int, default=3, help="measured rounds (after one warm-up round)")
    ap.add_argument("--sft-batch", type=int, default=16, help="conversations per SFT step")
    ap.add_argument("--seq-len", type=int, default=1024, help="lamina's packed row length")
    ap.add_argument("--grpo-task", default="arithmetic:1")
    ap.add_argument("--grpo-prompts", type=int, default=2, help="prompts per GRPO step")
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--skip", choices=("sft", "grpo"), help="leave one benchmark out")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--out", help="results file (default bench/results/post.json, post-cuda.json on GPU)")
    args = ap.parse_args()
    device = torch.device(args.device)
    bf16 = device.type == "cuda"
    autocast = partial(torch.autocast, device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext
    out = Path(args.out or RESULTS / ("post.json" if device.type == "cpu" else f"post-{device.type}.json"))
    torch.set_num_threads(args.threads)
    precision = "bf16 autocast" if bf16 else "fp32"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ck = load_checkpoint(MODEL)
        hf_dir = write_hf(tmp / "model", ck.config, ck.weights, ck.tokenizer, dtype=torch.float32)
        del ck
        if args.skip != "sft":
            chats = conversations(args.sft_batch)
            ours, our_tokens, our_info = lamina_sft(hf_dir, chats, args.seq_len, device, autocast)
            theirs, their_tokens, their_info = trl_sft(hf_dir, chats, tmp / "trl-sft", device, bf16)
            assert our_tokens == their_tokens, (our_tokens, their_tokens)   # the same conversations, tokenized alike
            assert our_info["trained_tokens"] == their_info["trained_tokens"], (our_info, their_info)   # and objective
            times = {"lamina": [], "trl": []}
            for round_ in range(args.rounds + 1):
                for system, step in (("lamina", ours), ("trl", theirs)):
                    start = time.perf_counter()
                    step()
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    if round_:
                        times[system].append(our_tokens / (time.perf_counter() - start))
            base = statistics.median(times["trl"])
            rows.append(median_row("lamina", "sft", "tokens/s", times["lamina"],
                                   f"{precision}, packed {our_info['rows']}x{args.seq_len}, attention per conversation, assistant-only loss",
                                   ratio_vs_trl=statistics.median(times["lamina"]) / base, **our_info))
            rows.append(median_row("trl", "sft", "tokens/s", times["trl"],
                                   f"{precision}, SFTTrainer, padded, assistant-only loss", ratio_vs_trl=1.0,
                                   **their_info))
            del ours, theirs
        if args.skip != "grpo":
            ours, state, run = lamina_grpo(hf_dir, tmp / "lamina-grpo", args, device)
            asked = [p for s in range(args.rounds + 1) for p in run.train_data.step_problems(s)]
            theirs, their_lengths = trl_grpo(hf_dir, tmp / "trl-grpo", args, device, bf16, asked)
            n = args.grpo_prompts * args.group_size
            per_s = {"lamina": [], "trl": []}
            tokens_per_s = {"lamina": [], "trl": []}
            our_lengths = []
            for round_ in range(args.rounds + 1):
                for system in ("lamina", "trl"):
                    start = time.perf_counter()
                    ours() if system == "lamina" else theirs(round_)
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    seconds = time.perf_counter() - start
                    if system == "lamina":
                        our_lengths.append(state["result"].metrics["completion_length"])
                    length = our_lengths[-1] if system == "lamina" else their_lengths[-1]
                    if round_:
                        per_s[system].append(n / seconds)
                        tokens_per_s[system].append(n * length / seconds)
            for metric, values in (("completions/s", per_s), ("completion tokens/s", tokens_per_s)):
                base = statistics.median(values["trl"])
                for system, setting in (("lamina", f"{precision}, KV-cache engine sampling"),
                                        ("trl", f"{precision}, GRPOTrainer, transformers generate")):
                    lengths = our_lengths[1:] if system == "lamina" else their_lengths[1:]
                    rows.append(median_row(system, "grpo", metric, values[system], setting,
                                           ratio_vs_trl=statistics.median(values[system]) / base,
                                           completions=n, mean_completion_length=statistics.mean(lengths)))
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{args.threads} threads"
    print(f"{MODEL}, {precision} on {where}")
    print(f"{'system':<8} {'bench':<6} {'metric':<20} {'median':>9} {'vs TRL':>7}  setting")
    for r in rows:
        print(f"{r['system']:<8} {r['benchmark']:<6} {r['metric']:<20} {r['median']:9.1f} {r['ratio_vs_trl']:6.2f}x  "
              f"{r['setting']}" + (f" (mean length {r['mean_completion_length']:.0f})" if "mean_completion_length" in r
                                   else ""))
    import transformers
    import trl
    record = {"date": datetime.date.today().isoformat(), "model": MODEL,
              "machine": where if device.type == "cuda" else platform.processor() or platform.machine(),
              "device": device.type, "precision": precision, "threads": args.threads, "torch": torch.__version__,
              "transformers": transformers.__version__, "trl": trl.__version__, "rounds": args.rounds,
              "settings": {k: v for k, v in vars(args).items() if k not in ("out", "device")}, "rows": rows}
    out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
