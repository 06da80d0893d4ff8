"""The pretraining loop: batches from token shards, forward/backward with gradient accumulation,
clipping, the optimizer step on a schedule; validation loss and bits per byte, samples,
checkpoints and metrics at intervals; compute and data accounting throughout.

A run is three parts. `setup` builds a `Run`: the model (wrapped and perhaps compiled), its
optimizers, data, token ledger, progress, compute totals, energy meter, metrics log and bar.
`run_loop(run, step_fn)` repeats `step_fn(run) -> StepResult` until the step budget is spent and
does the periodic work between steps: `log_step`, `validate_and_log`, `sample_and_log`,
`save_checkpoint`. `pretrain_step` is the step of this module: draw a batch, forward/backward
over the micro-batches, clip, step the optimizers.

That is the seam for post-training (SFT, DPO, GRPO): a stage passes its own step function to the
same loop and keeps the schedule, accounting, logging, checkpoints and resume. A step function
draws its batch from whatever it holds (a callable object or a `functools.partial` can carry its
own data), sets no learning rate (the loop does, from the schedule), calls `stop_if_diverged`
before stepping the optimizers, and returns the mean loss, the gradient norm, the tokens it
trained on and any extra figures for metrics.jsonl. A stage that starts from a loaded model and
reads other data gives `setup` its own `Inputs` (model, tokenizer, data, ledger, provenance).

Everything random is drawn from generators seeded by the config and carried in the checkpoint,
so a run stopped at any point and resumed from its last checkpoint ends with the same weights,
bit for bit on CPU, as one that never stopped."""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..checkpoint.hf_config import config_to_hf
from ..data.loader import TokenShards
from ..data.shards import tokenizer_ref
from ..errors import LaminaError
from ..model import ModelConfig, Transformer, count_params, init_weights
from ..model.moe import moe_layers, update_expert_bias
from ..tokenizer import load_tokenizer
from ..version import __version__
from . import distributed, state
from .accounting import Compute, EnergyMeter, TokenLedger, flops_per_token, measure_matmul_flops
from .config import TrainConfig
from .metrics import Bar, MetricsLog, plot_loss
from .optim import build_optimizers, lr_factor, set_lr
from .sizing import Plan, check_fits, compute_dtype, plan_batches


@dataclass
class RunResult:
    run: Path
    checkpoint: Path
    step: int
    val_loss: float | None
    val_bpb: float | None
    samples: list[str]
    made_by: dict


@dataclass(frozen=True, kw_only=True)
class Inputs:
    """What a run trains, and on what. Pretraining builds them from its config
    (`pretraining_inputs`); a post-training stage brings its own: a loaded model, its tokenizer,
    its data, a ledger of that data, and what lamina.json should say made the run."""
    tokenizer: object
    model_config: ModelConfig
    train_data: object                      # TokenShards for pretraining; whatever the stage's step reads
    val_data: TokenShards | None
    ledger: TokenLedger                     # tokens consumed by document: n_docs, tokens, summary()
    model: Transformer | None = None        # start from this model (weights loaded) instead of the seed's init
    provenance: dict = field(default_factory=dict)   # lamina.json "made_by" entries of the stage's own


@dataclass(kw_only=True)
class Run:
    """What a run holds while it goes: built by `setup`, advanced by `run_loop` and a step."""
    config: TrainConfig
    cluster: distributed.Cluster
    out: Path                               # the run directory
    model_config: ModelConfig
    tokenizer: object
    model: Transformer                      # the parameters: saved, validated, sampled from
    wrapped: nn.Module                      # the model under DDP or FSDP (or itself)
    forward: Callable                       # `wrapped`, compiled where the config asks
    optimizers: list[torch.optim.Optimizer]
    plan: Plan
    dtype: torch.dtype                      # what the matmuls run in
    autocast: Callable                      # makes the forward's context: bf16 autocast or nothing
    train_data: TokenShards
    val_data: TokenShards | None
    token_bytes: torch.Tensor               # bytes of text per token id, for bits per byte
    ledger: TokenLedger
    progress: state.Progress
    compute: Compute
    per_token: int                          # training FLOPs per token
    matmul_flops: float                     # MFU's yardstick: the fastest matmul FLOP/s seen this run
    meter: EnergyMeter
    log: MetricsLog | None                  # the main rank's only
    bar: Bar
    provenance: dict = field(default_factory=dict)   # made_by entries a stage adds or replaces
    last_saved: Path | None = None
    val_loss: float | None = None
    val_bpb: float | None = None
    samples: list[str] = field(default_factory=list)
    window_seconds: float = 0.0             # in training steps since the last log line
    window_tokens: int = 0

    @property
    def device(self) -> torch.device:
        return self.cluster.device


@dataclass(frozen=True)
class StepResult:
    """What one optimizer step reports to the loop."""
    loss: float                             # the mean over the batch and the ranks
    grad_norm: float                        # before clipping; 0.0 with clipping off
    tokens: int                             # tokens trained on, over all ranks
    metrics: dict[str, float] = field(default_factory=dict)   # a stage's own figures, for metrics.jsonl


StepFn = Callable[[Run], StepResult]


def train(config: TrainConfig, *, resume: bool = False, progress: bool = True) -> RunResult:
    """Run `config` to its step budget (or from its last checkpoint, with `resume`)."""
    cluster = distributed.start(config.device)
    try:
        return run_loop(setup(config, cluster, resume, progress and cluster.main), pretrain_step)
    finally:
        distributed.stop()


# ---- setup ----

def setup(config: TrainConfig, cluster: distributed.Cluster, resume: bool, show: bool,
          inputs: Inputs | None = None) -> Run:
    """Check that the run can go, then build everything it holds, from the last checkpoint with
    `resume`. A bad config fails here, before any work and before the run directory exists.
    Pretraining reads its `inputs` from the config; another stage passes its own."""
    device = cluster.device
    inputs = inputs or pretraining_inputs(config)
    tokenizer, model_config = inputs.tokenizer, inputs.model_config
    plan = plan_batches(config, cluster.world)
    dtype = compute_dtype(config, device)
    shards = inputs.train_data if isinstance(inputs.train_data, TokenShards) else None
    check_fits(config, model_config, plan, cluster.world, dtype, device, shards)
    config_to_hf(model_config, dtype)       # a model no checkpoint layout holds fails now, not at the first save
    out = Path(config.out)
    done = state.list_checkpoints(out)
    if done and not resume:
        raise LaminaError(f"{out} already holds checkpoints; pass --resume to continue it, or choose another --out")
    resumed = done[-1] if resume and done else None

    model, wrapped, forward = build_model(config, model_config, cluster, inputs.model)
    optimizers = build_optimizers(model, config, device)
    ledger = inputs.ledger
    progress = start_progress(config, resumed, model, optimizers, ledger)
    log = None
    if cluster.main:
        state.remove_partial(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
        log = MetricsLog(out, progress.step if resumed else None, config.tensorboard)
    run = Run(config=config, cluster=cluster, out=out, model_config=model_config, tokenizer=tokenizer,
              model=model, wrapped=wrapped, forward=forward, optimizers=optimizers, plan=plan, dtype=dtype,
              autocast=(partial(torch.autocast, device.type, dtype=torch.bfloat16) if dtype == torch.bfloat16
                        else contextlib.nullcontext),
              train_data=inputs.train_data, val_data=inputs.val_data,
              token_bytes=torch.tensor(tokenizer.token_bytes(), dtype=torch.float64),
              ledger=ledger, progress=progress, compute=Compute(**progress.compute),
              per_token=flops_per_token(model_config, config.seq_len, mtp=config.mtp_weight > 0),
              matmul_flops=measure_matmul_flops(device, dtype),
              meter=new_meter(config, cluster), log=log, bar=Bar(config.total_steps, progress.step, show),
              provenance=inputs.provenance, last_saved=resumed)
    if resumed:
        say(run, f"resumed from {resumed} at step {progress.step}")
    return run


def pretraining_inputs(config: TrainConfig) -> Inputs:
    """A freshly initialised model of the config's preset, sized to its corpus's tokenizer."""
    train_data, val_data = open_splits(config)
    tokenizer = load_tokenizer(tokenizer_ref(config.data))
    model_config = config.model_config(tokenizer.vocab_size, tokenizer.bos_id, tokenizer.eos_id)
    return Inputs(tokenizer=tokenizer, model_config=model_config, train_data=train_data, val_data=val_data,
                  ledger=TokenLedger(config.data, train_data.names))


def open_splits(config: TrainConfig) -> tuple[TokenShards, TokenShards | None]:
    """The training split and, where the corpus has one, the validation split."""
    if not config.data:
        raise LaminaError("no data: give --data DIR (a corpus made by `lamina data build`)")
    train_data = TokenShards(config.data, "train")
    try:
        return train_data, TokenShards(config.data, "validation")
    except LaminaError:
        return train_data, None


def build_model(config: TrainConfig, model_config: ModelConfig, cluster: distributed.Cluster,
                start: Transformer | None = None) -> tuple[Transformer, nn.Module, Callable]:
    """The model on every rank from the same seed (or `start`, already holding its weights);
    wrapped for the ranks; compiled where asked."""
    model = start if start is not None else init_weights(Transformer(model_config), seed=config.seed,
                                                         std=config.init_std)
    model = model.to(cluster.device)
    model.train()
    if config.activation_checkpointing:
        checkpoint_blocks(model)
    wrapped = distributed.wrap(model, cluster, config.parallel)
    compiled = config.compile == "on" or (config.compile == "auto" and cluster.device.type == "cuda")
    return model, wrapped, torch.compile(wrapped) if compiled else wrapped


def checkpoint_blocks(model: Transformer) -> None:
    """Recompute each block's activations in the backward pass instead of keeping them."""
    for block in model.blocks():
        block.forward = partial(checkpoint, block.forward, use_reentrant=False)


def start_progress(config: TrainConfig, resumed: Path | None, model: Transformer,
                   optimizers: list[torch.optim.Optimizer], ledger: TokenLedger) -> state.Progress:
    """Step 0 from the config's seed, or the state of checkpoint `resumed` loaded into the model,
    optimizers and ledger."""
    if resumed:
        progress = state.load(resumed, model, optimizers, ledger.n_docs)
        ledger.tokens, ledger.order = progress.doc_tokens, progress.data_order
        return progress
    torch.manual_seed(config.seed)          # nothing in training draws from it yet; a resumed run restores it
    return state.Progress(0, np.random.default_rng(config.seed), 0, ledger.tokens, asdict(Compute()), None,
                          ledger.order)


def new_meter(config: TrainConfig, cluster: distributed.Cluster) -> EnergyMeter:
    return EnergyMeter(cluster.device, cluster.local_rank, torch.get_num_threads(), config.device_power_watts)


# ---- the loop ----

def run_loop(run: Run, step_fn: StepFn) -> RunResult:
    """Step until the budget is spent, with the periodic work between steps (all of it after the
    last step); then say where the final checkpoint is and return what the run made."""
    config, progress = run.config, run.progress
    try:
        while progress.step < config.total_steps:
            start = time.perf_counter()
            set_lr(run.optimizers, lr_factor(progress.step, config))
            result = step_fn(run)
            result.metrics.update(balance_experts(run))
            account_step(run, result, time.perf_counter() - start)
            last = progress.step == config.total_steps
            if due(progress.step, config.eval_every, last):
                remeasure_matmul(run)
            if due(progress.step, config.log_every, last):
                log_step(run, result)
            if run.val_data is not None and due(progress.step, config.eval_every, last):
                validate_and_log(run)
            if due(progress.step, config.sample_every, last):
                sample_and_log(run, last)
            if due(progress.step, config.save_every, last):
                save_checkpoint(run)
    finally:
        run.bar.close()
        if run.log:
            run.log.close()
    final = state.checkpoint_dir(run.out, progress.step)
    say(run, f"checkpoint: {final}")
    return RunResult(run.out, final, progress.step, run.val_loss, run.val_bpb, run.samples, made_by(run))


def balance_experts(run: Run) -> dict[str, float]:
    """After a step of a mixture of experts: the tokens each expert received, summed over the
    ranks, move the selection biases (auxiliary-loss-free balancing, the same on every rank) and
    give the load figures logged: the worst layer's max/mean expert load, and the bias's spread."""
    layers = moe_layers(run.model)
    if not layers:
        return {}
    loads = distributed.summed(torch.stack([m.load for m in layers]), run.cluster)     # (layers, experts)
    update_expert_bias(run.model, run.config.expert_bias_rate, list(loads))
    ratio = (loads.max(1).values / loads.mean(1).clamp(min=1e-9)).max()
    biases = [m.expert_bias for m in layers if m.expert_bias is not None]
    spread = max(float(b.max() - b.min()) for b in biases) if biases else 0.0
    return {"expert_load_max_over_mean": float(ratio), "expert_bias_spread": spread}


def due(step: int, every: int, last: bool) -> bool:
    """Whether work done every `every` steps (never, for 0), and always after the last, is due."""
    return last or (every > 0 and step % every == 0)


def account_step(run: Run, result: StepResult, seconds: float) -> None:
    """Add a step to the progress, the compute totals and the throughput window."""
    run.progress.step += 1
    run.progress.tokens += result.tokens
    compute, kind = run.compute, run.device.type
    compute.model_flops += run.per_token * result.tokens
    compute.device_seconds[kind] = compute.device_seconds.get(kind, 0.0) + seconds * run.cluster.world
    compute.wall_seconds += seconds
    run.window_tokens += result.tokens
    run.window_seconds += seconds


# ---- one step ----

def pretrain_step(run: Run) -> StepResult:
    """Next-token prediction on a batch of random windows: the batch split over the ranks and into
    micro-batches whose gradients accumulate, then clipped and applied."""
    config, cluster, plan = run.config, run.cluster, run.plan
    windows = run.train_data.random_windows(run.progress.rng, config.batch_size, config.seq_len)
    mine = windows[cluster.rank * plan.per_rank:(cluster.rank + 1) * plan.per_rank]
    x, y = (torch.from_numpy(a).to(run.device) for a in run.train_data.batch(mine, config.seq_len))
    loss_sum = 0.0
    ahead = run.model_config.mtp_depth > 0 and config.mtp_weight > 0
    parts = torch.zeros(1 + run.model_config.mtp_depth, device=run.device)
    for i in range(plan.accum):
        rows = slice(i * plan.micro, (i + 1) * plan.micro)
        with grad_sync(run, last=i == plan.accum - 1):
            with run.autocast():                               # the forward only, as torch.amp advises
                # fused head + cross-entropy (model/loss.py), and the multi-token prediction's
                loss = run.forward(x[rows], targets=y[rows], mtp_weight=config.mtp_weight)
            (loss / plan.accum).backward()
        loss_sum += loss.item()
        if ahead:
            parts += run.model.last_losses
    loss_value = distributed.mean(loss_sum / plan.accum, cluster, run.device)
    stop_if_diverged(run, loss_value)
    grad_norm = clip_and_step(run)
    if cluster.main:
        run.ledger.add(windows, config.seq_len + 1)
    if not ahead:
        return StepResult(loss_value, grad_norm, config.batch_size * config.seq_len)
    # The logged loss is the next-token one, comparable with a model without the modules.
    parts = distributed.summed(parts, cluster) / (plan.accum * cluster.world)
    depths = {f"mtp_loss_{k}": float(v) for k, v in enumerate(parts[1:].tolist(), 1)}
    return StepResult(float(parts[0]), grad_norm, config.batch_size * config.seq_len, depths)


def grad_sync(run: Run, last: bool) -> contextlib.AbstractContextManager:
    """Under DDP, all-reduce gradients only on a step's last micro-batch (FSDP always reduces)."""
    if last or run.cluster.world == 1 or run.config.parallel == "fsdp":
        return contextlib.nullcontext()
    return run.wrapped.no_sync()


def stop_if_diverged(run: Run, loss: float) -> None:
    """End the run on a loss that is not finite, before it reaches the weights."""
    if not math.isfinite(loss):
        where = f"; the last good checkpoint is {run.last_saved}" if run.last_saved else "; no checkpoint was saved yet"
        raise LaminaError(f"loss became {loss} at step {run.progress.step + 1}{where}. "
                          "Lower lr, raise warmup_steps or check the data")


def clip_and_step(run: Run) -> float:
    """Clip the accumulated gradients (returning their norm before clipping), step and clear."""
    grad_norm = (float(nn.utils.clip_grad_norm_(run.model.parameters(), run.config.grad_clip))
                 if run.config.grad_clip else 0.0)
    for opt in run.optimizers:
        opt.step()
    for opt in run.optimizers:
        opt.zero_grad(set_to_none=True)
    return grad_norm


# ---- the periodic work ----

def remeasure_matmul(run: Run) -> None:
    """Time the matmul again, briefly, and keep the fastest rate seen: a yardstick measured while
    the machine was busy is too low and would put MFU above what the device can do."""
    run.matmul_flops = max(run.matmul_flops, measure_matmul_flops(run.device, run.dtype, seconds=0.1, rounds=2))


def log_step(run: Run, result: StepResult) -> None:
    """The progress line and a metrics record, with throughput over the steps since the last one
    (training steps only, not validation or saving)."""
    tps = run.window_tokens / run.window_seconds
    mfu = tps * run.per_token / (run.matmul_flops * run.cluster.world)
    run.window_seconds, run.window_tokens = 0.0, 0
    run.bar.update(run.progress.step, result.loss, tps, mfu)
    if run.log:
        run.log.write({"step": run.progress.step, "tokens": run.progress.tokens, "loss": result.loss,
                       "lr": run.optimizers[0].param_groups[0]["lr"], "grad_norm": result.grad_norm,
                       "tokens_per_s": tps, "mfu": mfu, "matmul_flop_per_s": run.matmul_flops} | result.metrics)


def validate_and_log(run: Run) -> None:
    run.val_loss, run.val_bpb = validate(run.model, run.val_data, run.config, run.plan.micro, run.token_bytes,
                                         run.device, run.autocast)
    progress = run.progress
    progress.best_val_loss = min(run.val_loss, progress.best_val_loss or run.val_loss)
    if run.log:
        run.log.write({"step": progress.step, "tokens": progress.tokens, "val_loss": run.val_loss,
                       "val_bpb": run.val_bpb})
    say(run, f"step {progress.step}: validation loss {run.val_loss:.4f}, {run.val_bpb:.4f} bits per byte")


def sample_and_log(run: Run, last: bool) -> None:
    run.samples = generate_samples(run.model, run.tokenizer, run.config, run.device)
    if run.log:
        run.log.write({"step": run.progress.step, "tokens": run.progress.tokens, "samples": run.samples})
    if last:
        for s in run.samples:
            say(run, f"sample: {s!r}")


def save_checkpoint(run: Run) -> None:
    """Close the energy meter's period into the totals, write checkpoints/step-N (the main rank,
    once every rank has gathered the full state) and redraw the loss curve."""
    compute, cluster = run.compute, run.cluster
    compute.energy_joules += distributed.total(run.meter.joules(), cluster, run.device)
    compute.energy_method = run.meter.method
    run.meter = new_meter(run.config, cluster)
    model_state, optim_state = state.full_state(run.model, run.optimizers)
    if cluster.main:
        run.progress.compute = asdict(compute)
        run.last_saved = state.save(run.out, run.model_config, model_state, optim_state, run.progress,
                                    run.tokenizer, made_by(run), run.config.keep_checkpoints)
    distributed.barrier(cluster)
    if cluster.main:
        plot_loss(run.out)


def made_by(run: Run) -> dict:
    """The provenance written into every checkpoint's lamina.json and returned with the result."""
    config, progress = run.config, run.progress
    return {"tool": "lamina train", "lamina_version": __version__, "train_config": config.to_dict(),
            "step": progress.step, "tokens": progress.tokens, "parameters": count_params(run.model_config),
            "active_parameters": count_params(run.model_config, active=True),
            "compute": run.compute.record(config.grid_intensity) | {"flops_per_token": run.per_token},
            "data": run.ledger.summary(), "validation": {"loss": run.val_loss, "bits_per_byte": run.val_bpb},
            "samples": run.samples} | run.provenance


def say(run: Run, text: str) -> None:
    """A line above the progress bar, from the main rank only."""
    if run.cluster.main:
        run.bar.print(text)


@torch.no_grad()
def validate(model: Transformer, data: TokenShards, config: TrainConfig, batch: int, token_bytes: torch.Tensor,
             device: torch.device, autocast) -> tuple[float, float]:
    """Mean loss per token and bits per byte over the first eval_tokens of the validation split.
    Bits per byte counts only targets that are text (special tokens such as BOS stand for no
    bytes), so it compares models with different tokenizers."""
    model.eval()
    nats = text_nats = tokens = nbytes = 0.0
    for x, y in data.sequential_batches(batch, config.seq_len):
        x, y = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
        with autocast():
            logits = model(x)
        losses = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), reduction="none").double()
        weights = token_bytes.to(device)[y.flatten()]
        nats += float(losses.sum())
        text_nats += float(losses[weights > 0].sum())
        tokens += y.numel()
        nbytes += float(weights.sum())
        if tokens >= config.eval_tokens:
            break
    model.train()
    if tokens == 0:
        raise LaminaError(f"the validation split is shorter than seq_len + 1 = {config.seq_len + 1} tokens")
    return nats / tokens, text_nats / (math.log(2) * max(nbytes, 1.0))


@torch.no_grad()
def generate_samples(model: Transformer, tokenizer, config: TrainConfig, device: torch.device) -> list[str]:
    """Continuations of the configured prompts, from a generator seeded by the config alone (so
    sampling never disturbs the training randomness)."""
    model.eval()
    g = torch.Generator(device=device).manual_seed(config.seed)
    out = []
    for prompt in config.samples:
        ids = tokenizer.encode(prompt, bos=True)
        start = len(ids)
        for _ in range(config.sample_tokens):
            context = torch.tensor([ids[-config.seq_len:]], device=device)
            logits = model(context)[0, -1].float() / max(config.sample_temperature, 1e-5)
            token = int(torch.multinomial(torch.softmax(logits, -1), 1, generator=g))
            if token in tokenizer.stop_ids:
                break
            ids.append(token)
        out.append(prompt + tokenizer.decode(ids[start:], skip_special=True))
    model.train()
    return out


def default_threads() -> None:
    """Leave torch's thread count to OMP_NUM_THREADS when set; under torchrun on CPU, split the
    cores between the ranks so they do not fight over them."""
    world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if "OMP_NUM_THREADS" not in os.environ and world > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
