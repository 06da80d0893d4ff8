"""The pretraining loop: batches from token shards, forward/backward with gradient accumulation,
clipping, the optimizer step on a schedule; validation loss and bits per byte, samples,
checkpoints and metrics at intervals; compute and data accounting throughout.

Everything random is drawn from generators seeded by the config and carried in the checkpoint,
so a run stopped at any point and resumed from its last checkpoint ends with the same weights,
bit for bit on CPU, as one that never stopped."""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .. import __version__
from ..data.loader import TokenShards
from ..data.shards import tokenizer_ref
from ..errors import LaminaError
from ..model import ModelConfig, Transformer, count_params, init_weights
from ..tokenizer import load_tokenizer
from . import distributed, state
from .accounting import Compute, EnergyMeter, TokenLedger, flops_per_token, measure_matmul_flops
from .config import TrainConfig
from .metrics import Bar, MetricsLog, plot_loss
from .optim import build_optimizers, lr_factor, set_lr


@dataclass
class RunResult:
    run: Path
    checkpoint: Path
    step: int
    val_loss: float | None
    val_bpb: float | None
    samples: list[str]
    made_by: dict


@dataclass
class Plan:
    """The batch arithmetic of a run on this many ranks."""
    per_rank: int        # sequences per rank per step
    micro: int           # sequences per forward/backward
    accum: int           # micro-batches per step


def plan_batches(config: TrainConfig, world: int) -> Plan:
    if config.batch_size % world:
        raise LaminaError(f"batch_size {config.batch_size} does not divide over {world} ranks")
    per_rank = config.batch_size // world
    micro = config.micro_batch_size or per_rank
    if per_rank % micro:
        raise LaminaError(f"batch_size {config.batch_size} over {world} rank(s) is {per_rank} sequences per rank, "
                          f"which micro_batch_size {micro} does not divide")
    return Plan(per_rank, micro, per_rank // micro)


def compute_dtype(config: TrainConfig, device: torch.device) -> torch.dtype:
    """What the matmuls run in: bf16 autocast when asked, or by default ("auto") on GPUs."""
    bf16 = config.dtype == "bfloat16" or (config.dtype == "auto" and device.type == "cuda")
    return torch.bfloat16 if bf16 else torch.float32


def estimate_memory_gb(c: ModelConfig, config: TrainConfig, plan: Plan, world: int,
                       dtype: torch.dtype = torch.float32) -> float:
    """A deliberately rough upper estimate: fp32 weights, gradients and optimizer state (two
    AdamW moments; sharded under FSDP), plus activations — about 34·T·dim bytes per layer per
    sequence in 16-bit (Korthikanti et al. 2022, with attention fused), doubled for fp32 — and the
    fp32 logits with their gradient."""
    params = count_params(c)
    shard = world if config.parallel == "fsdp" else 1
    states = params * 4 * 4 / shard
    per_layer = 34 * config.seq_len * c.dim * (1 if dtype == torch.bfloat16 else 2)
    layers = c.n_layers if not config.activation_checkpointing else 1
    activations = plan.micro * (per_layer * layers + 3 * 4 * config.seq_len * c.vocab_size)
    return (states + activations) / 2 ** 30


def available_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[1] / 2 ** 30
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) / 2 ** 20
    except (OSError, KeyError, ValueError):
        return float("inf")


def checkpoint_blocks(model: Transformer) -> None:
    """Recompute each block's activations in the backward pass instead of keeping them."""
    for layer in model.layers:
        layer.forward = partial(checkpoint, layer.forward, use_reentrant=False)


def train(config: TrainConfig, *, resume: bool = False, progress: bool = True) -> RunResult:
    """Run `config` to its step budget (or from its last checkpoint, with `resume`)."""
    cluster = distributed.start(config.device)
    try:
        return _train(config, cluster, resume, progress and cluster.main)
    finally:
        distributed.stop()


def _train(config: TrainConfig, cluster: distributed.Cluster, resume: bool, show: bool) -> RunResult:
    device = cluster.device
    if not config.data:
        raise LaminaError("no data: give --data DIR (a corpus made by `lamina data build`)")
    train_data = TokenShards(config.data, "train")
    try:
        val_data = TokenShards(config.data, "validation")
    except LaminaError:
        val_data = None
    tokenizer = load_tokenizer(tokenizer_ref(config.data))
    model_config = config.model_config(tokenizer.vocab_size, tokenizer.bos_id, tokenizer.eos_id)
    plan = plan_batches(config, cluster.world)
    dtype = compute_dtype(config, device)
    need = estimate_memory_gb(model_config, config, plan, cluster.world, dtype)
    have = config.max_memory_gb or available_memory_gb(device)
    if need > have:
        raise LaminaError(f"this run needs about {need:.1f} GiB per device and {have:.1f} GiB is allowed; "
                          "lower micro_batch_size or seq_len, turn on activation_checkpointing, or use a smaller model")
    if max(len(s) for s in train_data.shards) <= config.seq_len:
        raise LaminaError(f"{config.data}: every training shard is shorter than seq_len + 1 = {config.seq_len + 1}")
    run = Path(config.out)
    done = state.list_checkpoints(run)
    if done and not resume:
        raise LaminaError(f"{run} already holds checkpoints; pass --resume to continue it, or choose another --out")

    # the model, on every rank from the same seed
    model = init_weights(Transformer(model_config), seed=config.seed, std=config.init_std).to(device)
    model.train()
    if config.activation_checkpointing:
        checkpoint_blocks(model)
    wrapped = distributed.wrap(model, cluster, config.parallel)
    compiled = config.compile == "on" or (config.compile == "auto" and device.type == "cuda")
    forward = torch.compile(wrapped) if compiled else wrapped
    optimizers = build_optimizers(model, config, device)
    ledger = TokenLedger(config.data, train_data.names)

    if resume and done:
        progress = state.load(done[-1], model, optimizers, ledger.n_docs)
        ledger.tokens = progress.doc_tokens
    else:
        torch.manual_seed(config.seed)          # nothing in training draws from it yet; a resumed run restores it
        progress = state.Progress(0, np.random.default_rng(config.seed), 0, ledger.tokens,
                                  asdict(Compute()), None)
    compute = Compute(**progress.compute)
    if cluster.main:
        state.remove_partial(run)
        run.mkdir(parents=True, exist_ok=True)
        (run / "train_config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    log = MetricsLog(run, progress.step if resume and done else None, config.tensorboard) if cluster.main else None

    autocast = (partial(torch.autocast, device.type, dtype=torch.bfloat16) if dtype == torch.bfloat16
                else contextlib.nullcontext)
    peak = measure_matmul_flops(device, dtype)
    per_token = flops_per_token(model_config, config.seq_len)
    cores = torch.get_num_threads()
    meter = EnergyMeter(device, cluster.local_rank, cores, config.device_power_watts)
    token_bytes = torch.tensor(tokenizer.token_bytes(), dtype=torch.float64)
    total = config.total_steps
    bar = Bar(total, progress.step, show)
    say = bar.print if cluster.main else (lambda text: None)
    if resume and done and cluster.main:
        say(f"resumed from {done[-1]} at step {progress.step}")
    tokens_per_step = config.batch_size * config.seq_len
    val_loss = val_bpb = None
    samples: list[str] = []

    def made_by() -> dict:
        return {"tool": "lamina train", "lamina_version": __version__, "train_config": config.to_dict(),
                "step": progress.step, "tokens": progress.tokens, "parameters": count_params(model_config),
                "compute": compute.record(config.grid_intensity) | {"flops_per_token": per_token},
                "data": ledger.summary(), "validation": {"loss": val_loss, "bits_per_byte": val_bpb},
                "samples": samples}

    def save() -> Path | None:
        model_state, optim_state = state.full_state(model, optimizers)
        path = None
        if cluster.main:
            progress.compute = asdict(compute)
            path = state.save(run, model_config, model_state, optim_state, progress, tokenizer, made_by(),
                              config.keep_checkpoints)
        distributed.barrier(cluster)
        return path

    last_saved = done[-1] if resume and done else None
    window_seconds = 0.0
    window_tokens = 0
    try:
        while progress.step < total:
            step_start = time.perf_counter()
            set_lr(optimizers, lr_factor(progress.step, config))
            windows = train_data.random_windows(progress.rng, config.batch_size, config.seq_len)
            mine = windows[cluster.rank * plan.per_rank:(cluster.rank + 1) * plan.per_rank]
            x, y = (torch.from_numpy(a).to(device) for a in train_data.batch(mine, config.seq_len))
            loss_sum = 0.0
            for i in range(plan.accum):
                rows = slice(i * plan.micro, (i + 1) * plan.micro)
                sync = (contextlib.nullcontext() if i == plan.accum - 1 or cluster.world == 1
                        or config.parallel == "fsdp" else wrapped.no_sync())
                with sync:
                    with autocast():                           # the forward only, as torch.amp advises
                        loss = forward(x[rows], targets=y[rows])   # fused head + cross-entropy (model/loss.py)
                    (loss / plan.accum).backward()
                loss_sum += loss.item()
            loss_value = distributed.mean(loss_sum / plan.accum, cluster, device)
            if not math.isfinite(loss_value):
                where = f"; the last good checkpoint is {last_saved}" if last_saved else "; no checkpoint was saved yet"
                raise LaminaError(f"loss became {loss_value} at step {progress.step + 1}{where}. "
                                  "Lower lr, raise warmup_steps or check the data")
            grad_norm = (float(nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip))
                         if config.grad_clip else 0.0)
            for opt in optimizers:
                opt.step()
            for opt in optimizers:
                opt.zero_grad(set_to_none=True)
            progress.step += 1
            progress.tokens += tokens_per_step
            if cluster.main:
                ledger.add(windows, config.seq_len + 1)
            seconds = time.perf_counter() - step_start
            compute.model_flops += per_token * tokens_per_step
            compute.device_seconds[device.type] = compute.device_seconds.get(device.type, 0.0) + seconds * cluster.world
            compute.wall_seconds += seconds
            window_tokens += tokens_per_step
            window_seconds += seconds

            last = progress.step == total
            if progress.step % config.log_every == 0 or last:
                tps = window_tokens / window_seconds      # training steps only, not evaluation or saving
                mfu = tps * per_token / (peak * cluster.world)
                window_seconds, window_tokens = 0.0, 0
                bar.update(progress.step, loss_value, tps, mfu)
                if log:
                    log.write({"step": progress.step, "tokens": progress.tokens, "loss": loss_value,
                               "lr": optimizers[0].param_groups[0]["lr"], "grad_norm": grad_norm,
                               "tokens_per_s": tps, "mfu": mfu})
            if val_data is not None and (progress.step % config.eval_every == 0 or last):
                val_loss, val_bpb = evaluate(model, val_data, config, plan.micro, token_bytes, device, autocast)
                progress.best_val_loss = min(val_loss, progress.best_val_loss or val_loss)
                if log:
                    log.write({"step": progress.step, "tokens": progress.tokens, "val_loss": val_loss,
                               "val_bpb": val_bpb})
                say(f"step {progress.step}: validation loss {val_loss:.4f}, {val_bpb:.4f} bits per byte")
            if (config.sample_every and progress.step % config.sample_every == 0) or last:
                samples = generate_samples(model, tokenizer, config, device)
                if log:
                    log.write({"step": progress.step, "tokens": progress.tokens, "samples": samples})
                if last:
                    for s in samples:
                        say(f"sample: {s!r}")
            if progress.step % config.save_every == 0 or last:
                compute.energy_joules += distributed.total(meter.joules(), cluster, device)
                compute.energy_method = meter.method
                meter = EnergyMeter(device, cluster.local_rank, cores, config.device_power_watts)
                last_saved = save()
                if cluster.main:
                    plot_loss(run)
    finally:
        bar.close()
        if log:
            log.close()
    final = state.checkpoint_dir(run, progress.step)
    if cluster.main:
        say(f"checkpoint: {final}")
    return RunResult(run, final, progress.step, val_loss, val_bpb, samples, made_by())


@torch.no_grad()
def evaluate(model: Transformer, data: TokenShards, config: TrainConfig, batch: int, token_bytes: torch.Tensor,
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
