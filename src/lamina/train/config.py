"""The one typed configuration of a training run, and the recipes that fill it in.

A recipe is a TOML file whose top-level keys are `TrainConfig` fields (a `[model_overrides]`
table changes fields of the model preset); built-in recipes ship inside the package
(`lamina/recipes/train/`, see `lamina.recipes`) and are named without `.toml`. `key=value`
overrides from the command line apply last, with values read as TOML (`lr=3e-4`,
`optimizer="muon"`, `model_overrides.dim=128`). Every field is checked against its annotation and
its range, and an error names the field, the value and where it was written: the recipe file, a
flag, or the override as typed."""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass, field
from typing import Literal

from ..errors import LaminaError
from ..fields import InvalidField, check_fields, shown
from ..model import PRESETS, ModelConfig, preset
from ..recipes import recipe_file

POSITIVE = ("seq_len", "batch_size", "max_steps", "eval_every", "eval_tokens", "save_every", "log_every",
            "keep_checkpoints", "lr", "muon_lr")
NOT_NEGATIVE = ("micro_batch_size", "max_tokens", "warmup_steps", "seed", "sample_every", "sample_tokens",
                "sample_temperature", "grad_clip", "weight_decay", "init_std", "max_memory_gb",
                "grid_intensity", "device_power_watts", "expert_bias_rate", "mtp_weight")   # 0 is "none" or "the default" for several


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
    optimizer: Literal["adamw", "muon"] = "adamw"   # muon: Muon on 2-D matrices, AdamW on the rest
    lr: float = 3e-3                     # AdamW peak learning rate
    muon_lr: float = 0.02                # Muon peak learning rate (matrices)
    weight_decay: float = 0.1            # matrices only; embeddings, norms and head are not decayed
    betas: tuple[float, float] = (0.9, 0.95)
    schedule: Literal["cosine", "wsd", "constant"] = "cosine"   # wsd: warmup-stable-decay
    warmup_steps: int = 100
    decay_fraction: float = 0.2          # wsd: the final fraction of steps that decays to min_lr
    min_lr_ratio: float = 0.1            # the schedule ends at lr * min_lr_ratio
    grad_clip: float = 1.0               # global gradient-norm clip (0: none)
    expert_bias_rate: float = 1e-3       # mixture of experts with expert_bias: the balancing bias's step (DeepSeek-V3: 0.001)
    mtp_weight: float = 0.3              # multi-token prediction: the modules' mean loss counts this much (DeepSeek-V3: 0.3)
    seed: int = 0                        # weights, batch order
    init_std: float = 0.02
    # execution
    device: Literal["auto", "cpu", "cuda"] = "auto"             # auto: cuda if present
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"      # autocast; auto: bfloat16 on GPU, float32 on CPU
    compile: Literal["auto", "on", "off"] = "auto"              # torch.compile; auto: on GPU
    activation_checkpointing: bool = False
    parallel: Literal["ddp", "fsdp"] = "ddp"     # under torchrun; fsdp (FSDP2 fully_shard) for big models
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
        check_fields(self)          # types first: the checks below compare values
        object.__setattr__(self, "betas", tuple(self.betas))
        object.__setattr__(self, "samples", tuple(self.samples))
        if self.model not in PRESETS:
            raise InvalidField("model", self.model, f"unknown model preset; known: {', '.join(PRESETS)}")
        for name in POSITIVE:
            if getattr(self, name) <= 0:
                raise InvalidField(name, getattr(self, name), "must be positive")
        for name in NOT_NEGATIVE:
            if getattr(self, name) < 0:
                raise InvalidField(name, getattr(self, name), "must not be negative")
        if not 0 < self.decay_fraction <= 1:
            raise InvalidField("decay_fraction", self.decay_fraction, "must be in (0, 1]")
        if not 0 <= self.min_lr_ratio <= 1:
            raise InvalidField("min_lr_ratio", self.min_lr_ratio, "must be in [0, 1]")
        if not all(0 <= b < 1 for b in self.betas):      # torch.optim.AdamW refuses others
            raise InvalidField("betas", self.betas, "each must be in [0, 1)")
        preset_sized = preset(self.model)
        self.model_config(preset_sized.vocab_size, preset_sized.bos_token_id, preset_sized.eos_token_id)

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
        known = [f.name for f in dataclasses.fields(ModelConfig)]
        for name, value in self.model_overrides.items():
            if name not in known:
                raise InvalidField(f"model_overrides.{name}", value,
                                   f"not a ModelConfig field; known: {', '.join(known)}")
        try:
            return base.replace(**changes)
        except (TypeError, ValueError) as e:
            # lamina.model.config.FieldError names the field; max_seq_len follows seq_len unless overridden
            name = str(getattr(e, "field", "")).partition(".")[0]
            if name in self.model_overrides:
                raise InvalidField(f"model_overrides.{name}", self.model_overrides[name],
                                   getattr(e, "problem", str(e))) from None
            if name == "max_seq_len":
                raise InvalidField("seq_len", self.seq_len, getattr(e, "problem", str(e))) from None
            raise InvalidField("model_overrides", self.model_overrides, f"model {self.model}: {e}") from None

    def replace(self, **changes) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def train_recipe(ref: str, overrides: list[str] = (), **fields) -> TrainConfig:
    """A TrainConfig from a recipe (a built-in name or a .toml file), then `fields` (from flags),
    then `key=value` overrides. A bad value is reported with where it was written."""
    path = recipe_file("train", ref)
    try:
        values = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise LaminaError(f"{path}: not valid TOML: {e}") from None
    except RecursionError:
        raise LaminaError(f"{path}: nested too deeply to read") from None
    sources = {key: f"from {path}" for key in values}        # key -> where its value was written
    for key, value in fields.items():
        if value is not None:
            values[key], sources[key] = value, f"from --{key.replace('_', '-')}"
    for item in overrides:
        key, value = parse_override(item)
        sources[key] = f"from the command line: {item if item.isprintable() and len(item) < 80 else shown(item)}"
        if key.startswith("model_overrides."):
            table = values.setdefault("model_overrides", {})
            if not isinstance(table, dict):
                raise InvalidField("model_overrides", table, "must be a table", sources["model_overrides"])
            table[key.split(".", 1)[1]] = value
        else:
            values[key] = value
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise LaminaError(f"unknown settings {unknown} ({'; '.join(sorted({sources[k] for k in unknown}))}); "
                          f"known: {', '.join(sorted(known))}")
    try:
        return TrainConfig(**values)
    except InvalidField as e:
        raise e.came_from(_source(sources, e.name)) from None


def _source(sources: dict[str, str], name: str) -> str:
    """Where field `name` (or `model_overrides.dim`) was written: its own entry, its table's, or
    those of the keys inside it; nothing for a default."""
    head = name.partition(".")[0]
    if name in sources or head in sources:
        return sources.get(name) or sources[head]
    return "; ".join(sorted({s for key, s in sources.items() if key.startswith(head + ".")}))


def parse_override(item: str) -> tuple[str, object]:
    """`key=value` with the value read as TOML, or as a plain string when it is not TOML."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise LaminaError(f"override {item!r}: write key=value, e.g. lr=3e-4")
    try:
        parsed = tomllib.loads(f"v = {raw}")
    except (tomllib.TOMLDecodeError, RecursionError):
        parsed = {}
    value = parsed["v"] if len(parsed) == 1 else raw     # `1\nseq_len = 2` is not one value
    return key.strip(), value
