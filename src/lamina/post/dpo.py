"""Preference training: `lamina dpo MODEL --data FILE...` teaches a loaded model to prefer the
chosen reply of each pair over the rejected one, without a reward model.

Each pair (`prompt`, `chosen`, `rejected`; strings or message lists, read and checked by
`chat_data`) is rendered twice with the model's chat template, prompt plus chosen turn and prompt
plus rejected turn; the completion is what rendering the turn adds to the prompt with its
generation prompt (its end-of-turn token included), found as SFT finds assistant tokens. A
completion's log-probability is the sum of its tokens' log-probabilities. The loss compares the
policy's log-ratios to a frozen reference, log pi(y|x) - log pi_ref(y|x), for chosen and rejected:

    sigmoid  -log sigmoid(beta * (r_c - r_r))          DPO (Rafailov et al. 2023); with
             label_smoothing e, (1 - e) times that plus e times the flipped pair (cDPO)
    ipo      ((r_c / n_c - r_r / n_r) - 1 / (2 beta))^2  IPO (Azar et al. 2023, eq. 17), on
             per-token mean log-ratios (n: completion tokens) as TRL computes it
    hinge    max(0, 1 - beta * (r_c - r_r))              SLiC (Zhao et al. 2023)

The reference log-probabilities are computed once, before the first step, by the starting model
(with LoRA: the same model with its adapters off, so no second copy is held), and kept in
OUT/reference_logps.npy, which `--resume` reads back. Each step then runs only the policy. The
step reports TRL's figures to metrics.jsonl: rewards/chosen and rewards/rejected (beta times
the log-ratios), rewards/margins, rewards/accuracies (share of pairs whose chosen reward is the
higher), logps/chosen and logps/rejected.

Everything else is SFT's (`post.sft`): the trainer loop, bit-exact resume, the data ledger by
source and license, the base model's provenance in lamina.json, and with LoRA the PEFT adapter
in OUT/adapter beside the merged model in OUT/model."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..data.ledger import Ledger
from ..errors import LaminaError
from ..fields import InvalidField
from ..model import from_state_dict
from ..model.loss import IGNORE_INDEX
from ..train import distributed, state
from ..train.loop import (Inputs, Run, RunResult, StepResult, clip_and_step, grad_sync, run_loop, say, setup,
                          stop_if_diverged)
from ..train.sizing import compute_dtype
from .chat_data import ChatFile, Preference, Tokenized, read_chat, render_with_mask
from .config import DataConfig, config_from_flags
from .lora import adapters_disabled, apply_lora
from .packing import pack
from .sft import (ChatLedger, base_record, chat_sources, count_documents,
                  load_base, write_ledger, write_lora)

LOSSES = ("sigmoid", "ipo", "hinge")
REFERENCE_FILE = "reference_logps.npy"


@dataclass(frozen=True, kw_only=True)
class DPOConfig(DataConfig):
    """One preference-training run; saved as dpo_config.json in the run directory."""
    data: tuple[str, ...] = ()           # preference data files (.jsonl, .parquet): prompt, chosen, rejected
    out: str = "runs/dpo"                # run directory: checkpoints/, data/ledger.sqlite, reference_logps.npy, metrics.jsonl
    loss: Literal["sigmoid", "ipo", "hinge"] = "sigmoid"   # DPO, IPO or SLiC's hinge
    beta: float = 0.1                    # how far from the reference the policy may move (lower: further)
    label_smoothing: float = 0.0         # sigmoid only: the share of pairs assumed mislabelled (cDPO)
    seq_len: int = 1024                  # most tokens of prompt + completion; longer pairs are skipped
    batch_size: int = 8                  # pairs per optimizer step
    micro_batch_size: int = 0            # pairs per forward/backward (0: all of them)
    epochs: float = 0.0                  # if set, the step budget is this many passes over the pairs
    lr: float = 1e-6                     # peak learning rate (AdamW); LoRA wants far more (1e-4)
    seed: int = 0                        # the order of the pairs
    lora: bool = False                   # train LoRA adapters; the reference is then the base with them off

    POSITIVE = DataConfig.POSITIVE + ("beta",)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.label_smoothing < 0.5:
            raise InvalidField("label_smoothing", self.label_smoothing, "must be in [0, 0.5)")
        if self.label_smoothing and self.loss != "sigmoid":
            raise InvalidField("label_smoothing", self.label_smoothing,
                               f"applies to the sigmoid loss only, not {self.loss}")


def dpo_config(overrides: list[str] = (), **fields) -> DPOConfig:
    """A DPOConfig from flags (`fields`, None where not given) and `key=value` overrides."""
    return config_from_flags(DPOConfig, overrides, **fields)


# ---- the loss ----

def dpo_loss(logratios: Tensor, lengths: Tensor, loss: str = "sigmoid", beta: float = 0.1,
             label_smoothing: float = 0.0) -> Tensor:
    """The loss of each pair (B,) from the policy-minus-reference log-probabilities of its
    completions, logratios (B, 2) as (chosen, rejected), and their token counts lengths (B, 2)."""
    if loss == "ipo":
        # per-token means: IPO's reported results use them (TRL's note, confirmed by its authors)
        mean = logratios / lengths.clamp(min=1)
        return (mean[:, 0] - mean[:, 1] - 1 / (2 * beta)) ** 2
    delta = logratios[:, 0] - logratios[:, 1]
    if loss == "hinge":
        return torch.relu(1 - beta * delta)
    if loss == "sigmoid":
        return -(1 - label_smoothing) * F.logsigmoid(beta * delta) - label_smoothing * F.logsigmoid(-beta * delta)
    raise ValueError(f"unknown DPO loss {loss!r}; known: {', '.join(LOSSES)}")


def reward_metrics(logratios: Tensor, beta: float) -> dict[str, Tensor]:
    """TRL's reward figures of a batch, each a per-pair tensor (B,) to be averaged: the implicit
    rewards beta * log-ratio of chosen and rejected, their margin, and whether it is positive."""
    rewards = beta * logratios.detach()
    return {"rewards/chosen": rewards[:, 0], "rewards/rejected": rewards[:, 1],
            "rewards/margins": rewards[:, 0] - rewards[:, 1],
            "rewards/accuracies": (rewards[:, 0] > rewards[:, 1]).float()}


# ---- pairs ----

@dataclass(frozen=True)
class Pair:
    """A rendered preference pair: prompt + chosen and prompt + rejected, the completion marked."""
    chosen: Tokenized               # `assistant` marks the chosen turn's tokens only
    rejected: Tokenized
    doc: int = 0                    # its document id in the ledger

    @property
    def lengths(self) -> tuple[int, int]:
        """Completion tokens of (chosen, rejected)."""
        return sum(self.chosen.assistant), sum(self.rejected.assistant)


def completion_start(mask: list[bool]) -> int:
    """Where an assistant mask's final stretch starts: the completion, not earlier turns of a
    multi-turn prompt."""
    start = len(mask)
    while start and mask[start - 1]:
        start -= 1
    return start


def render_pair(tok, pair: Preference, template: str | None = None, source: int = 0, doc: int = 0) -> Pair:
    """Both sides of a pair rendered with the chat template. A side's completion is what its turn
    adds to the prompt rendered with the generation prompt (SFT's mask); where a reply's first
    characters merge into one token with the template's text before them (a reply that starts
    with a newline), that token starts the completion of both sides, as in TRL, so that both are
    scored after the same prompt tokens."""
    rendered = [render_with_mask(tok, pair.prompt + reply, template) for reply in (pair.chosen, pair.rejected)]
    start = min(completion_start(mask) for _, mask in rendered)
    chosen, rejected = (Tokenized(ids, [i >= start for i in range(len(ids))], source, doc) for ids, _ in rendered)
    return Pair(chosen, rejected, doc=doc)


def tokenize_pairs(tok, chat: ChatFile, max_tokens: int, template: str | None = None, source: int = 0,
                   first_doc: int = 0) -> list[Pair]:
    """The file's pairs rendered, skipping (into its summary) those with a side of more than
    `max_tokens` ids; document ids count from `first_doc` in record order."""
    out = []
    for doc, record in enumerate(chat.records, first_doc):
        if not isinstance(record, Preference):
            raise LaminaError(f"{chat.path}: preference training needs prompt/chosen/rejected records")
        pair = render_pair(tok, record, template, source, doc)
        if max(len(pair.chosen.ids), len(pair.rejected.ids)) > max_tokens:
            chat.summary.skip(record.record, "longer than the context")
            continue
        out.append(pair)
    chat.summary.kept = len(out)
    if not out:
        raise LaminaError(f"{chat.path}: every pair is longer than the context ({max_tokens} tokens); raise seq_len")
    return out


def read_pairs(path: str | Path, tok, max_tokens: int, template: str | None = None, source: int = 0,
               first_doc: int = 0) -> tuple[ChatFile, list[Pair]]:
    """A preference file read, checked and rendered: (the file with its summary, its pairs)."""
    chat = read_chat(path, "preference")
    return chat, tokenize_pairs(tok, chat, max_tokens, template, source, first_doc)


def pair_batch(pairs: list[Pair]) -> tuple[Tensor, Tensor]:
    """Inputs and targets (2B, T) of B pairs, all chosen sides then all rejected ones (TRL's
    order), each side a row padded to the longest; targets are the completion's next tokens."""
    sides = [[p.chosen] for p in pairs] + [[p.rejected] for p in pairs]
    packed = pack(sides, max(len(s[0].ids) for s in sides) - 1)
    return packed.tokens, packed.targets


def sequence_logps(logits: Tensor, targets: Tensor) -> Tensor:
    """The summed log-probability (N,) of each row's targets under logits (N, T, vocab)."""
    per_token = -F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX,
                                 reduction="none")
    return per_token.view(targets.shape).sum(dim=1)


@torch.no_grad()
def score_pairs(model, pairs: list[Pair], batch_size: int, autocast=None) -> Tensor:
    """log p(completion | prompt) of every pair's (chosen, rejected) under `model`: (n, 2)
    float32 on the CPU. The reference of a run, and a held-out set's measure."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(pairs), batch_size):
        tokens, targets = pair_batch(pairs[start:start + batch_size])
        with autocast() if autocast else contextlib.nullcontext():
            logits = model(tokens.to(device))
        out.append(sequence_logps(logits, targets.to(device)).view(2, -1).T.float().cpu())   # (b, 2)
    model.train(was_training)
    return torch.cat(out)


# ---- batches and the step ----

class PreferenceData:
    """The pairs with their reference log-probabilities, in one seeded order per pass: the pairs
    of a step depend on the step alone, so resuming needs no state of its own."""

    def __init__(self, pairs: list[Pair], reference: Tensor, seed: int) -> None:
        self.pairs, self.reference, self.seed = pairs, reference, seed
        self.lengths = torch.tensor([p.lengths for p in pairs], dtype=torch.float32)   # (n, 2)
        self._orders: dict[int, np.ndarray] = {}

    def order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            self._orders[epoch] = np.random.default_rng([self.seed, epoch]).permutation(len(self.pairs))
        return self._orders[epoch]

    def batch(self, step: int, size: int) -> list[int]:
        """Indices of the pairs of step `step` in the endless stream of passes."""
        n = len(self.pairs)
        return [int(self.order(k // n)[k % n]) for k in range(step * size, (step + 1) * size)]


def dpo_step(run: Run, data: PreferenceData, config: DPOConfig) -> StepResult:
    """One optimizer step on a batch of pairs: the policy's log-probabilities of both sides
    against the stored reference, the loss the mean over the batch's pairs."""
    cluster, plan = run.cluster, run.plan
    batch = data.batch(run.progress.step, config.batch_size)
    mine = batch[cluster.rank * plan.per_rank:(cluster.rank + 1) * plan.per_rank]
    loss_sum, figures = 0.0, {}
    for i in range(plan.accum):
        part = mine[i * plan.micro:(i + 1) * plan.micro]
        tokens, targets = (t.to(run.device) for t in pair_batch([data.pairs[k] for k in part]))
        with grad_sync(run, last=i == plan.accum - 1):
            with run.autocast():
                logits = run.forward(tokens)                               # (2b, T, vocab)
            logps = sequence_logps(logits, targets).view(2, -1).T          # (b, 2): chosen, rejected
            logratios = logps - data.reference[part].to(logps.device)
            losses = dpo_loss(logratios, data.lengths[part].to(logps.device), config.loss, config.beta,
                              config.label_smoothing)
            (losses.sum() / plan.per_rank).backward()
        loss_sum += float(losses.detach().sum())
        extra = reward_metrics(logratios, config.beta) | {"logps/chosen": logps.detach()[:, 0],
                                                          "logps/rejected": logps.detach()[:, 1]}
        for name, values in extra.items():
            figures[name] = figures.get(name, 0.0) + float(values.sum())
    loss_value = distributed.mean(loss_sum / plan.per_rank, cluster, run.device)
    stop_if_diverged(run, loss_value)
    grad_norm = clip_and_step(run)
    pairs = [data.pairs[k] for k in batch]
    if cluster.main:
        run.ledger.add_conversations([side for p in pairs for side in (p.chosen, p.rejected)])
    tokens = sum(len(p.chosen.ids) + len(p.rejected.ids) - 2 for p in pairs)
    metrics = {name: distributed.mean(total / plan.per_rank, cluster, run.device) for name, total in figures.items()}
    return StepResult(loss_value, grad_norm, tokens, metrics)


# ---- the run ----

def prepare_pairs(config: DPOConfig, tokenizer, template: str, show):
    """Read, check and render every data file, saying per file what was kept and skipped:
    (sources, files, pairs)."""
    if not config.data:
        raise LaminaError("no data: give --data FILE... (preference pairs in JSONL or Parquet: "
                          "prompt, chosen, rejected)")
    sources = chat_sources(config)                 # no license: refused before any reading
    files, pairs, doc = [], [], 0
    for i, source in enumerate(sources):
        chat, found = read_pairs(source.path, tokenizer, config.seq_len + 1, template, source=i, first_doc=doc)
        pairs += found
        doc += len(chat.records)
        files.append(chat)
        show(chat.summary.line())
    return sources, files, pairs


def reference_logps(model, pairs: list[Pair], config: DPOConfig, device: torch.device, path: Path,
                    resume: bool, main: bool) -> Tensor:
    """The starting model's log-probabilities of every pair (adapters off), computed once and
    kept at `path`; a resumed run reads them back."""
    if resume and path.is_file():
        stored = torch.from_numpy(np.load(path))
        if stored.shape == (len(pairs), 2):
            return stored
    autocast = (partial(torch.autocast, device.type, dtype=torch.bfloat16)
                if compute_dtype(config.train_config(1), device) == torch.bfloat16 else None)
    with adapters_disabled(model):
        reference = score_pairs(model.to(device), pairs, config.micro_batch_size or config.batch_size, autocast)
    if main:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, reference.numpy())
    return reference


def dpo(config: DPOConfig, *, resume: bool = False, progress: bool = True) -> RunResult:
    """Train `config.model` on the preference pairs of `config.data`. The final checkpoint is the
    trained model; with LoRA it is OUT/model (adapters merged), the adapter OUT/adapter."""
    out = Path(config.out)
    if state.list_checkpoints(out) and not resume:
        raise LaminaError(f"{out} already holds checkpoints; pass --resume to continue it, or choose another --out")
    cluster = distributed.start(config.device)
    try:
        show = print if cluster.main else (lambda *_: None)
        ck, template = load_base(config)
        sources, files, pairs = prepare_pairs(config, ck.tokenizer, template, show)
        steps = (max(1, int(np.ceil(config.epochs * len(pairs) / config.batch_size))) if config.epochs
                 else config.max_steps)
        ledger_path = out / "data" / Ledger.FILE
        if cluster.main:
            write_ledger(ledger_path, sources, files,
                         [Tokenized(p.chosen.ids + p.rejected.ids, [], 0, p.doc) for p in pairs])
        train_config = config.train_config(steps)
        model = from_state_dict(ck.config, ck.weights, dtype=torch.float32)
        if config.lora:
            apply_lora(model, config.lora_config())
        show(f"reference log-probabilities of {len(pairs)} pairs ...")
        reference = reference_logps(model, pairs, config, cluster.device, out / REFERENCE_FILE, resume, cluster.main)
        provenance = {"tool": "lamina dpo", "dpo_config": config.to_dict(),
                      "train_config": {k: v for k, v in train_config.to_dict().items()
                                       if k not in ("model", "model_overrides", "data")},
                      "base_model": base_record(config.model, ck.metadata),
                      "data_files": [f.summary.record() | {"license": s.license} for s, f in zip(sources, files)]}
        data = PreferenceData(pairs, reference, config.seed)
        inputs = Inputs(tokenizer=ck.tokenizer, model_config=ck.config, train_data=data, val_data=None,
                        ledger=ChatLedger(ledger_path.parent, count_documents(files)), model=model,
                        provenance=provenance)
        run = setup(train_config, cluster, resume, progress and cluster.main, inputs)
        if cluster.main:
            (out / "dpo_config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
        say(run, f"{len(pairs)} pairs, {config.loss} loss, beta {config.beta}; "
                 f"{steps} steps of {config.batch_size} pairs")
        result = run_loop(run, partial(dpo_step, data=data, config=config))
        if config.lora and cluster.main:
            result = write_lora(run, result, config)
        return result
    finally:
        distributed.stop()
