"""The one typed configuration of a training run, and the recipes that fill it in.

A recipe is a TOML file whose top-level keys are `TrainConfig` fields (a `[model_overrides]`
table changes fields of the model preset); built-in recipes live in the repository's `recipes/`
folder and are named without `.toml`. `key=value` overrides from the command line apply last,
with values read as TOML (`lr=3e-4`, `optimizer="muon"`, `model_overrides.dim=128`)."""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import LaminaError
from ..model import PRESETS, ModelConfig, preset

RECIPES_DIR = Path(__file__).resolve().parents[3] / "recipes"   # the repository's recipes/


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Everything one run needs; saved in every checkpoint's lamina.json and training state."""
    # what to train, on what
    model: str = "debug"                 # a model preset (lamina.model.PRESETS)
    model_overrides: dict = field(default_factory=dict)   # preset fields to change; vocab_size follows the data
    data: str = ""                       # a corpus directory made by `lamina data build`
    out: str = "runs/train"              # run directory: checkpoints/, metrics.jsonl, loss.png
    # batch and budget
    seq_len: int = 256
    batch_size: int = 16                 # sequences per optimizer step, over all ranks and micro-batches
    micro_batch_size: int = 0            # sequences per forward/backward on one rank (0: batch_size / ranks)
    max_steps: int = 1000
    max_tokens: int = 0                  # if set, the step budget is max_tokens / (batch_size * seq_len)
    # optimization
    optimizer: str = "adamw"             # "adamw", or "muon" (Muon on 2-D matrices, AdamW on the rest)
    lr: float = 3e-3                     # AdamW peak learning rate
    muon_lr: float = 0.02                # Muon peak learning rate (matrices)
    weight_decay: float = 0.1            # matrices only; embeddings, norms and head are not decayed
    betas: tuple[float, float] = (0.9, 0.95)
    schedule: str = "cosine"             # "cosine", "wsd" (warmup-stable-decay) or "constant"
    warmup_steps: int = 100
    decay_fraction: float = 0.2          # wsd: the final fraction of steps that decays to min_lr
    min_lr_ratio: float = 0.1            # the schedule ends at lr * min_lr_ratio
    grad_clip: float = 1.0               # global gradient-norm clip (0: none)
    seed: int = 0                        # weights, batch order
    init_std: float = 0.02
    # execution
    device: str = "auto"                 # "auto" (cuda if present), "cpu", "cuda"
    dtype: str = "auto"                  # autocast: "auto" (bfloat16 on GPU, float32 on CPU), "float32", "bfloat16"
    compile: str = "auto"                # torch.compile: "auto" (on GPU), "on", "off"
    activation_checkpointing: bool = False
    parallel: str = "ddp"                # under torchrun: "ddp", or "fsdp" (FSDP2 fully_shard) for big models
    max_memory_gb: float = 0.0           # refuse to start above this estimate (0: the device's memory)
    # evaluation, samples, checkpoints, logs
    eval_every: int = 200                # steps between validation passes (and at the end)
    eval_tokens: int = 1 << 17           # validation tokens per pass
    sample_every: int = 0                # steps between sample generations (0: only at the end)
    samples: tuple[str, ...] = ("",)     # prompts ("" starts from BOS alone)
    sample_tokens: int = 64
    sample_temperature: float = 0.8
    save_every: int = 500                # steps between checkpoints (and at the end)
    keep_checkpoints: int = 2            # the newest this many are kept
    log_every: int = 10
    tensorboard: bool = False            # also write TensorBoard event files under out/tensorboard
    # compute accounting
    grid_intensity: float = 475.0        # gCO2e per kWh; IEA's 2019 world average
    device_power_watts: float = 0.0      # when power cannot be measured: watts per device (0: a stated default)

    def __post_init__(self) -> None:
        if not isinstance(self.model_overrides, dict):
            raise LaminaError("model_overrides must be a table of ModelConfig fields")
        object.__setattr__(self, "betas", tuple(self.betas))
        object.__setattr__(self, "samples", tuple(self.samples))
        if self.model not in PRESETS:
            raise LaminaError(f"unknown model preset {self.model!r}; known: {', '.join(PRESETS)}")
        unknown = set(self.model_overrides) - {f.name for f in dataclasses.fields(ModelConfig)}
        if unknown:
            raise LaminaError(f"model_overrides: unknown ModelConfig fields {sorted(unknown)}")
        positive = ("seq_len", "batch_size", "max_steps", "eval_every", "eval_tokens", "save_every",
                    "log_every", "keep_checkpoints")
        bad = [f"{n}={getattr(self, n)}" for n in positive if getattr(self, n) <= 0]
        if bad or self.micro_batch_size < 0 or self.max_tokens < 0 or self.warmup_steps < 0:
            raise LaminaError(f"these must be positive: {', '.join(bad) or 'micro_batch_size, max_tokens, warmup_steps'}")
        choices = {"optimizer": ("adamw", "muon"), "schedule": ("cosine", "wsd", "constant"),
                   "device": ("auto", "cpu", "cuda"), "dtype": ("auto", "float32", "bfloat16"),
                   "compile": ("auto", "on", "off"), "parallel": ("ddp", "fsdp")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise LaminaError(f"{name} = {getattr(self, name)!r}; choose one of {', '.join(allowed)}")
        if not 0 < self.decay_fraction <= 1 or not 0 <= self.min_lr_ratio <= 1:
            raise LaminaError("decay_fraction must be in (0, 1] and min_lr_ratio in [0, 1]")
        if self.lr <= 0 or self.muon_lr <= 0 or self.grad_clip < 0 or self.weight_decay < 0:
            raise LaminaError("lr and muon_lr must be positive; grad_clip and weight_decay not negative")

    @property
    def total_steps(self) -> int:
        if self.max_tokens:
            return max(1, math.ceil(self.max_tokens / (self.batch_size * self.seq_len)))
        return self.max_steps

    def model_config(self, vocab_size: int, bos_id: int | None, eos_id: int | None) -> ModelConfig:
        """The preset with the overrides, sized to the data's tokenizer and at least seq_len long."""
        base = preset(self.model)
        changes = {"max_seq_len": max(base.max_seq_len, self.seq_len), **self.model_overrides,
                   "vocab_size": vocab_size, "bos_token_id": bos_id, "eos_token_id": eos_id}
        try:
            return base.replace(**changes)
        except (TypeError, ValueError) as e:
            raise LaminaError(f"model {self.model} with {self.model_overrides}: {e}") from None

    def replace(self, **changes) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def recipe_path(ref: str) -> Path:
    """A recipe file, or the name of a built-in one in recipes/."""
    path = Path(ref)
    if path.suffix == ".toml":
        if not path.is_file():
            raise LaminaError(f"{path}: no such recipe file")
        return path
    builtin = RECIPES_DIR / f"{ref}.toml"
    if builtin.is_file():
        return builtin
    known = ", ".join(sorted(p.stem for p in RECIPES_DIR.glob("*.toml"))) or "none found"
    raise LaminaError(f"unknown recipe {ref!r}; built-in: {known}; or a path to a .toml file")


def load_recipe(ref: str, overrides: list[str] = (), **fields) -> TrainConfig:
    """A TrainConfig from a recipe, then `fields` (from flags), then `key=value` overrides."""
    path = recipe_path(ref)
    try:
        values = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise LaminaError(f"{path}: not valid TOML: {e}") from None
    values.update({k: v for k, v in fields.items() if v is not None})
    for item in overrides:
        key, value = parse_override(item)
        if key.startswith("model_overrides."):
            values.setdefault("model_overrides", {})[key.split(".", 1)[1]] = value
        else:
            values[key] = value
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise LaminaError(f"{path}: unknown settings {unknown}; known: {', '.join(sorted(known))}")
    try:
        return TrainConfig(**values)
    except TypeError as e:
        raise LaminaError(f"{path}: {e}") from None


def parse_override(item: str) -> tuple[str, object]:
    """`key=value` with the value read as TOML, or as a plain string when it is not TOML."""
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise LaminaError(f"override {item!r}: write key=value, e.g. lr=3e-4")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.strip(), value
