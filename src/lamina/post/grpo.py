"""Reinforcement learning from verifiable rewards: `lamina grpo MODEL --task arithmetic` samples
groups of answers to templated questions, scores them with plain Python rewards, and pushes the
model toward the answers that scored above their group's mean (GRPO, Shao et al. 2024).

A step: `prompts_per_step` training problems of the task (`lamina.post.tasks`), each rendered with
the model's chat template and sampled `group_size` times by lamina's batched KV-cache engine
(`lamina.serve.engine`); every completion scored by the rewards (`exact_answer`, `format`:
`lamina.post.rewards`); advantages are the rewards minus their group's mean, divided by the
group's standard deviation (`scale_rewards`); then the policy's log-probabilities of the
completion tokens in a training forward, and the clipped surrogate with DAPO's separate low and
high clip (Yu et al. 2025, "clip-higher"), `num_iterations` optimizer updates on the same samples
(the first one's old log-probabilities are the forward's own, detached, as TRL does). The loss is
normalised as `grpo` (mean per sequence, then over sequences), `dr_grpo` (sum over tokens divided by
sequences × max_new_tokens: Liu et al. 2025, "Dr. GRPO") or `dapo` (sum over tokens divided by the
tokens). With `beta` > 0 a k3 estimate of the KL divergence to the reference (the base with LoRA's
adapters off, or a frozen copy of it) is added per token, weighted by the importance ratio as
DeepSeek-V3.2 does (`kl_correction`, TRL's default too). The loss of each type equals TRL's
GRPOTrainer's on the same completions (tests/post/test_grpo.py).

Every `eval_every` steps (before the first and after the last too) the model answers
`eval_problems` held-out problems of the task, never trained on (`tasks.split_of`): greedy
accuracy, and pass@1 and pass@k of `pass_k` samples each (Chen et al. 2021's unbiased estimator),
written to metrics.jsonl and drawn as OUT/heldout.png.

It runs in the pretraining loop (`lamina.train.loop`): schedule, checkpoints, bit-exact resume
(the samples of step s are drawn from a seed of (seed, s)), metrics, progress and compute
accounting. One device: the log-probabilities are computed by the model's own `body` and only at
the completion positions, which a DDP wrapper would not see."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Literal

import torch
from torch import Tensor

from ..data.ledger import Ledger
from ..data.sources import Source
from ..errors import LaminaError
from ..fields import InvalidField
from ..model import from_state_dict
from ..serve.engine import Engine
from ..serve.sampling import SamplingParams
from ..tokenizer import render_chat
from ..train import distributed, state
from ..train.config import TrainConfig
from ..train.loop import Inputs, Run, RunResult, StepResult, clip_and_step, run_loop, say, setup, stop_if_diverged
from ..train.metrics import read_metrics
from .config import PostConfig, config_from_flags
from .grpo_loss import (CompletionBatch, LossType, clipped_surrogate, completion_batch, completion_logprobs,
                        group_advantages, k3_kl, kl_penalty, pass_at_k, reduce_loss)
from .lora import adapters_disabled, apply_lora
from .rewards import exact_answer_reward, format_reward
from .sft import ChatLedger, base_record, load_base, write_lora
from .synth import LAMINA_LICENSE
from .tasks import Problem, get_task, problems

# A reward is a plain function of (reply, problem) -> float; the names are what `rewards` takes.
REWARDS: dict[str, Callable[[str, Problem], float]] = {
    "exact_answer": lambda reply, problem: exact_answer_reward(reply, problem.answer),
    "format": lambda reply, problem: format_reward(reply),
}
TRAIN_POOL = 2000         # most distinct training problems drawn; steps cycle through them
CURVE_FILE = "heldout.png"


@dataclass(frozen=True, kw_only=True)
class GRPOConfig(PostConfig):
    """One GRPO run; saved as grpo_config.json in the run directory."""
    model: str = ""                      # the policy to train: a model directory, GGUF file or packaged name
    task: str = "arithmetic"             # a task of lamina.post.tasks, optionally at a level: countdown:2
    out: str = "runs/grpo"               # run directory: checkpoints/, metrics.jsonl, heldout.png
    instruction: str = ""                # added after each question (e.g. the answer format asked for)
    system: str = ""                     # a system message before each question ("": the template's own)
    rewards: tuple[str, ...] = ("exact_answer",)   # exact_answer, format; summed with reward_weights
    reward_weights: tuple[float, ...] = ()          # one per reward (default: all 1)
    group_size: int = 8                  # G: completions sampled per prompt
    prompts_per_step: int = 4            # prompts (groups) per optimizer step
    max_new_tokens: int = 128            # the longest completion; dr_grpo divides by it
    temperature: float = 1.0             # sampling temperature; log-probabilities use it too, as TRL's
    top_p: float = 1.0
    loss_type: LossType = "dapo"         # grpo: mean per sequence; dr_grpo: / (G x max_new_tokens); dapo: per token
    epsilon_low: float = 0.2             # the ratio is clipped to [1 - epsilon_low, 1 + epsilon_high]
    epsilon_high: float = 0.28           # DAPO's clip-higher (Yu et al. 2025)
    beta: float = 0.0                    # weight of the k3 KL to the reference (0: no reference at all)
    kl_correction: bool = True           # weight the KL by the importance ratio (DeepSeek-V3.2; TRL's default)
    scale_rewards: bool = True           # divide advantages by the group's std (off: Dr. GRPO)
    num_iterations: int = 1              # μ: optimizer updates on each batch of samples
    max_steps: int = 100                 # steps, each a batch of groups sampled and trained on
    lr: float = 1e-6                     # peak learning rate (AdamW), TRL's default
    warmup_steps: int = 0
    schedule: Literal["cosine", "wsd", "constant"] = "constant"
    micro_batch_size: int = 0            # completions per forward/backward (0: all of a step's)
    generation_batch: int = 64           # rows the engine samples at once
    seed: int = 0                        # problems, samples and LoRA initialisation
    compile: Literal["auto", "on", "off"] = "off"
    eval_every: int = 10                 # steps between held-out evaluations (and before the first, after the last)
    eval_problems: int = 50              # held-out problems answered at each evaluation (0: none)
    pass_k: int = 4                      # samples per held-out problem for pass@1 and pass@k (0: greedy only)
    log_every: int = 1

    POSITIVE = PostConfig.POSITIVE + ("group_size", "prompts_per_step", "max_new_tokens", "num_iterations",
                                      "generation_batch", "eval_every")
    NOT_NEGATIVE = PostConfig.NOT_NEGATIVE + ("beta", "temperature", "eval_problems", "pass_k", "epsilon_low",
                                              "epsilon_high")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.group_size < 2:
            raise InvalidField("group_size", self.group_size, "must be at least 2: advantages compare a group")
        if not 0 < self.top_p <= 1:
            raise InvalidField("top_p", self.top_p, "must be in (0, 1]")
        if self.temperature < 1e-5:
            raise InvalidField("temperature", self.temperature, "must be above 0: the groups are sampled")
        if self.epsilon_low >= 1:
            raise InvalidField("epsilon_low", self.epsilon_low, "must be below 1")
        unknown = [r for r in self.rewards if r not in REWARDS]
        if unknown or not self.rewards:
            raise InvalidField("rewards", self.rewards, f"must be names among {', '.join(REWARDS)}")
        if self.reward_weights and len(self.reward_weights) != len(self.rewards):
            raise InvalidField("reward_weights", self.reward_weights, f"give one per reward ({len(self.rewards)})")
        if self.micro_batch_size and (self.prompts_per_step * self.group_size) % self.micro_batch_size:
            raise InvalidField("micro_batch_size", self.micro_batch_size,
                               f"must divide the {self.prompts_per_step * self.group_size} completions of a step")
        get_task(self.task)

    @property
    def completions_per_step(self) -> int:
        return self.prompts_per_step * self.group_size

    def sampling(self, seed: int | None, stops: tuple[int, ...], greedy: bool = False) -> SamplingParams:
        return SamplingParams(max_new_tokens=self.max_new_tokens, temperature=0.0 if greedy else self.temperature,
                              top_p=self.top_p, top_k=0, stop_token_ids=stops, seed=seed)

    def train_config(self, seq_len: int) -> TrainConfig:
        """The loop's settings: a batch is a step's completions, each at most `seq_len` tokens."""
        return self.loop_config(self.max_steps, seq_len=seq_len, batch_size=self.completions_per_step,
                                eval_every=self.eval_every)


def grpo_config(overrides: list[str] = (), **fields) -> GRPOConfig:
    """A GRPOConfig from flags (`fields`, None where not given) and `key=value` overrides."""
    return config_from_flags(GRPOConfig, overrides, **fields)


# ---- sampling ----

@torch.no_grad()
def sample(model, prompts: list[list[int]], params: SamplingParams, batch: int) -> list[list[int]]:
    """Each prompt's completion ids from the KV-cache engine, `batch` rows at once, the stop token
    kept where the model stopped (it is trained on, as TRL's completion mask keeps EOS)."""
    was_training = model.training
    engine = Engine(model)                     # puts the model in eval mode
    out: list[list[int]] = []
    try:
        for start in range(0, len(prompts), batch):
            chunk = prompts[start:start + batch]
            seeded = params if params.seed is None else dataclasses.replace(params, seed=params.seed + start)
            rows: list[list[int]] = [[] for _ in chunk]
            for step in engine.generate(chunk, seeded, include_stop=True):
                for row, token in zip(rows, step):
                    if token is not None:
                        row.append(token)
            out += rows
    finally:
        model.train(was_training)
    return out


def step_seed(seed: int, *parts) -> int:
    """A sampling seed for (seed, parts): the same on every machine, different for each part."""
    return int.from_bytes(hashlib.sha256(":".join(map(str, (seed, *parts))).encode()).digest()[:7], "big")


def reply_text(tokenizer, ids: list[int]) -> str:
    return tokenizer.decode([i for i in ids if i not in tokenizer.stop_ids], skip_special=True)


# ---- the policy's task ----

@dataclass
class Questions:
    """What a GRPO run asks: its training and held-out problems, each as prompt token ids."""
    config: GRPOConfig
    tokenizer: object                # carries the chat template the prompts are rendered with
    train: list[Problem]
    heldout: list[Problem]

    def prompt(self, problem: Problem) -> list[int]:
        question = problem.question + (f"\n{self.config.instruction}" if self.config.instruction else "")
        system = [{"role": "system", "content": self.config.system}] if self.config.system else []
        return render_chat(self.tokenizer, system + [{"role": "user", "content": question}])

    def step_problems(self, step: int) -> list[Problem]:
        n = self.config.prompts_per_step
        return [self.train[(step * n + i) % len(self.train)] for i in range(n)]

    def rewards(self, replies: list[str], asked: list[Problem]) -> tuple[Tensor, dict[str, float]]:
        """The weighted sum of the rewards of each reply (N,), and each reward's mean."""
        weights = self.config.reward_weights or (1.0,) * len(self.config.rewards)
        each = torch.tensor([[REWARDS[name](r, p) for name in self.config.rewards] for r, p in zip(replies, asked)],
                            dtype=torch.float32)                                     # (N, rewards)
        return each @ torch.tensor(weights), {f"reward_{n}": float(each[:, i].mean())
                                              for i, n in enumerate(self.config.rewards)}


def open_task(config: GRPOConfig, tokenizer) -> Questions:
    n = min(config.max_steps * config.prompts_per_step, TRAIN_POOL)     # a prefix of a longer run's
    heldout = (problems(config.task, config.eval_problems, seed=config.seed, split="heldout")
               if config.eval_problems else [])
    return Questions(config, tokenizer, problems(config.task, n, seed=config.seed, split="train"), heldout)


def heldout_scores(model, task: Questions) -> dict[str, float]:
    """Held-out accuracy of greedy answers, and pass@1 and pass@k of `pass_k` samples each."""
    config, stops = task.config, task.tokenizer.stop_ids
    prompts = [task.prompt(p) for p in task.heldout]
    greedy = sample(model, prompts, config.sampling(None, stops, greedy=True), config.generation_batch)
    right = [p.check(reply_text(task.tokenizer, c)) for p, c in zip(task.heldout, greedy)]
    result = {"heldout_accuracy": sum(right) / len(right), "heldout_problems": float(len(right)),
              "heldout_completion_length": sum(map(len, greedy)) / len(greedy)}
    k = config.pass_k
    if k:
        many = sample(model, [p for p in prompts for _ in range(k)], config.sampling(step_seed(config.seed, "eval"),
                                                                                     stops), config.generation_batch)
        correct = [sum(task.heldout[i].check(reply_text(task.tokenizer, c)) for c in many[i * k:(i + 1) * k])
                   for i in range(len(prompts))]
        result["heldout_pass@1"] = sum(pass_at_k(k, c, 1) for c in correct) / len(correct)
        result[f"heldout_pass@{k}"] = sum(pass_at_k(k, c, k) for c in correct) / len(correct)
    return result


# ---- one step ----

@dataclass
class GRPOState:
    """What `grpo_step` holds beside the run: the task and, with beta > 0, the reference model
    (None with LoRA: the policy with its adapters off)."""
    task: Questions
    reference: torch.nn.Module | None = None
    evaluated: int = -1                         # the step last evaluated

    def reference_logprobs(self, run: Run, batch: CompletionBatch) -> Tensor:
        with torch.no_grad(), run.autocast():
            if self.reference is not None:
                return completion_logprobs(self.reference, batch, self.task.config.temperature)[0]
            with adapters_disabled(run.model):
                return completion_logprobs(run.model, batch, self.task.config.temperature)[0]


def evaluate_and_log(run: Run, grpo_state: GRPOState, step: int) -> None:
    if not grpo_state.task.heldout or grpo_state.evaluated == step:
        return
    grpo_state.evaluated = step
    result = heldout_scores(run.model, grpo_state.task)
    if run.log:
        run.log.write({"step": step, "tokens": run.progress.tokens} | result)
    k = grpo_state.task.config.pass_k
    passed = f", pass@1 {result['heldout_pass@1']:.1%}, pass@{k} {result[f'heldout_pass@{k}']:.1%}" if k else ""
    say(run, f"step {step}: held-out accuracy {result['heldout_accuracy']:.1%} (greedy){passed}")


def grpo_step(run: Run, grpo_state: GRPOState) -> StepResult:
    """Sample a group per prompt, score and normalise, then `num_iterations` clipped-surrogate
    updates on the completions (micro-batches add up to the step's loss, `reduce_loss`)."""
    config, step, task = grpo_state.task.config, run.progress.step, grpo_state.task
    if step % config.eval_every == 0:
        evaluate_and_log(run, grpo_state, step)
    asked = [p for p in task.step_problems(step) for _ in range(config.group_size)]
    prompts = [task.prompt(p) for p in asked]
    completions = sample(run.model, prompts, config.sampling(step_seed(config.seed, step), task.tokenizer.stop_ids),
                         config.generation_batch)
    replies = [reply_text(task.tokenizer, c) for c in completions]
    rewards, by_reward = task.rewards(replies, asked)
    advantages = group_advantages(rewards, config.group_size, config.scale_rewards)
    # A completion whose advantage is 0 (its whole group scored alike) adds exactly nothing to the
    # loss or its gradient unless the KL term is on: it is left out of the forward, not the normalisers.
    trained = list(range(len(asked))) if config.beta else torch.nonzero(advantages).flatten().tolist()
    advantages = advantages[trained].to(run.device)
    n, all_tokens = len(asked), sum(map(len, completions))
    parts = [slice(i, i + run.plan.micro) for i in range(0, len(trained), run.plan.micro)]
    batches = [completion_batch([prompts[i] for i in trained[s]], [completions[i] for i in trained[s]], run.device)
               for s in parts]
    ref = [grpo_state.reference_logprobs(run, b) for b in batches] if config.beta else None
    old = None
    if config.num_iterations > 1:          # the samples' own log-probabilities, before any update
        with torch.no_grad(), run.autocast():
            old = [completion_logprobs(run.model, b, config.temperature)[0] for b in batches]
    figures = {"loss": 0.0, "clipped": 0.0, "kl": 0.0, "entropy": 0.0}
    for _ in range(config.num_iterations):
        figures = dict.fromkeys(figures, 0.0)
        for j, (s, part) in enumerate(zip(parts, batches)):
            with run.autocast():
                logps, entropy = completion_logprobs(run.model, part, config.temperature)
            sampled = logps.detach() if old is None else old[j]     # the log-probs the samples were drawn with
            per_token, clipped = clipped_surrogate(logps, sampled, advantages[s], config.epsilon_low,
                                                   config.epsilon_high)
            if config.beta:
                kl = kl_penalty(logps, sampled, ref[j], config.kl_correction)
                per_token = per_token + config.beta * kl
                figures["kl"] += float((k3_kl(logps, ref[j]).detach() * part.mask).sum())
            loss = reduce_loss(per_token, part.mask, config.loss_type, sequences=n, tokens=all_tokens,
                               max_new_tokens=config.max_new_tokens)
            loss.backward()
            figures["loss"] += float(loss.detach())
            figures["clipped"] += float((clipped & part.mask).sum())
            figures["entropy"] += float(entropy.sum())
        stop_if_diverged(run, figures["loss"])
        grad_norm = clip_and_step(run)
    tokens = sum(int(b.tokens.numel()) for b in batches)        # each group's prompt once
    if run.cluster.main:
        run.ledger.tokens[0] += tokens
        run.ledger.chain(torch.cat([b.tokens.flatten() for b in batches]).cpu().numpy())   # the prompts read
    if step + 1 == run.config.total_steps:                   # and after the last update
        evaluate_and_log(run, grpo_state, step + 1)
    lengths = torch.tensor([len(c) for c in completions], dtype=torch.float32)
    stops = set(task.tokenizer.stop_ids)
    per_group = rewards.view(-1, config.group_size)
    m = max(sum(b.n_tokens for b in batches), 1)      # the trained tokens
    return StepResult(figures["loss"], grad_norm, tokens * config.num_iterations, {
        "reward": float(rewards.mean()), "reward_std": float(rewards.std()), **by_reward,
        "accuracy": sum(p.check(r) for p, r in zip(asked, replies)) / n,
        "completion_length": float(lengths.mean()),
        "ended": sum(bool(c) and c[-1] in stops for c in completions) / n,
        "clip_fraction": figures["clipped"] / m, "entropy": figures["entropy"] / m,
        **({"kl": figures["kl"] / m} if config.beta else {}),
        "groups_all_alike": float((per_group.std(dim=1) == 0).float().mean()),
        "completions": float(n), "trained_completions": float(len(trained))})


# ---- the run ----

def write_task_ledger(path: Path, config: GRPOConfig) -> None:
    """The run's data ledger: one source, the task's templates (lamina's own text), one document."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    ledger = Ledger.create(path)
    task = get_task(config.task)
    source = f"task:{task.name}:{task.level}"
    ledger.add_source(Source(id=source, kind="dialogue", origin="lamina.post.tasks", license=LAMINA_LICENSE,
                             license_from="lamina's own templates", read=lambda: iter(())),
                      True, "prompts of a templated task; completions are the policy's own samples")
    ledger.add_document(0, source, f"{source}#seed={config.seed}", None, 0, "kept", "", [], {})
    ledger.commit()
    ledger.close()


def grpo(config: GRPOConfig, *, resume: bool = False, progress: bool = True) -> RunResult:
    """Train `config.model` on `config.task` with GRPO. The final checkpoint is the trained model;
    with LoRA it is OUT/model (adapters merged) and the adapter is OUT/adapter (PEFT's format)."""
    out = Path(config.out)
    if state.list_checkpoints(out) and not resume:
        raise LaminaError(f"{out} already holds checkpoints; pass --resume to continue it, or choose another --out")
    cluster = distributed.start(config.device)
    try:
        run, step = prepare(config, cluster, resume, progress and cluster.main)
        result = run_loop(run, step)
        plot_heldout(out)
        if config.lora:
            result = write_lora(run, result, config)
        return result
    finally:
        distributed.stop()


def prepare(config: GRPOConfig, cluster: distributed.Cluster, resume: bool, show: bool):
    """The run (model, optimizer, ledger, metrics: `lamina.train.loop.setup`) and its step."""
    if cluster.world > 1:
        raise LaminaError("lamina grpo runs on one device; start it without torchrun")
    out = Path(config.out)
    ck = load_base(config)[0]
    task = open_task(config, ck.tokenizer)
    longest = max(len(task.prompt(p)) for p in task.train + task.heldout) + config.max_new_tokens
    if longest > ck.config.max_seq_len:
        raise LaminaError(f"a prompt and its completion may take {longest} tokens; {config.model} takes "
                          f"{ck.config.max_seq_len}: lower max_new_tokens")
    ledger_path = out / "data" / Ledger.FILE
    write_task_ledger(ledger_path, config)
    model = from_state_dict(ck.config, ck.weights, dtype=torch.float32)
    reference = None
    if config.lora:
        apply_lora(model, config.lora_config())
    elif config.beta:
        reference = copy.deepcopy(model).eval().requires_grad_(False)
    train_config = config.train_config(longest)
    provenance = {"tool": "lamina grpo", "grpo_config": config.to_dict(),
                  "train_config": {k: v for k, v in train_config.to_dict().items()
                                   if k not in ("model", "model_overrides", "data")},
                  "base_model": base_record(config.model, ck.metadata)}
    inputs = Inputs(tokenizer=ck.tokenizer, model_config=ck.config, train_data=task, val_data=None,
                    ledger=ChatLedger(ledger_path.parent, 1), model=model, provenance=provenance)
    run = setup(train_config, cluster, resume, show, inputs)
    if reference is not None:
        reference.to(run.device)
    (out / "grpo_config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    say(run, f"{config.task}: {len(task.train)} training problems, {len(task.heldout)} held out; {config.max_steps} "
             f"steps of {config.prompts_per_step} prompts x {config.group_size} completions")
    evaluated = [r["step"] for r in read_metrics(out) if "heldout_accuracy" in r]    # kept on resume
    return run, partial(grpo_step, grpo_state=GRPOState(task, reference, evaluated[-1] if evaluated else -1))


def plot_heldout(run: Path) -> Path | None:
    """Held-out accuracy (greedy, pass@1, pass@k) and the training reward against steps, as
    run/heldout.png."""
    rows = read_metrics(run)
    evals = [r for r in rows if "heldout_accuracy" in r]
    if not evals:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4))
    for key in [k for k in evals[0] if k.startswith("heldout_") and k not in ("heldout_problems",
                                                                              "heldout_completion_length")]:
        label = "greedy accuracy" if key == "heldout_accuracy" else key.removeprefix("heldout_")
        ax.plot([r["step"] for r in evals], [100 * r[key] for r in evals], "o-", markersize=4, label=label)
    train = [(r["step"], 100 * r["accuracy"]) for r in rows if "accuracy" in r]
    if train:
        ax.plot(*zip(*train), linewidth=0.8, alpha=0.5, label="training samples' accuracy")
    ax.set_xlabel("step")
    ax.set_ylabel(f"% right ({int(evals[0]['heldout_problems'])} held-out problems)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = run / CURVE_FILE
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
