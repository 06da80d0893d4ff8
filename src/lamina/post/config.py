"""What every post-training run is configured by, said once: the model it starts from, the
optimizer, schedule and loop bookkeeping it hands to the trainer, LoRA, and — for the methods
that read data files (SFT, DPO) — the files, their licenses and the license policy they pass.
`SFTConfig`, `DPOConfig` and `GRPOConfig` add their own fields and checks to these."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar, Literal

from ..data.licenses import PERMISSIVE, Policy, normalize_license
from ..errors import LaminaError
from ..fields import InvalidField, check_fields
from ..train.config import TrainConfig, parse_override
from .lora import LoRAConfig

LORA_TARGETS = ("wq", "wk", "wv", "wo", "w1", "w2", "w3")


@dataclass(frozen=True, kw_only=True)
class PostConfig:
    """The fields every post-training method has (each subclass sets its own `out` and defaults)."""
    model: str = ""                      # the model to train: a model directory, GGUF file or packaged name
    chat_format: str = ""                # render with this lamina format (chatml, llama3, ...) instead of the model's template
    out: str = "runs/post"               # run directory: checkpoints/, metrics.jsonl, ...
    max_steps: int = 100
    micro_batch_size: int = 0            # rows per forward/backward (0: all of a step's)
    lr: float = 2e-5                     # peak learning rate (AdamW)
    weight_decay: float = 0.0
    warmup_steps: int = 10
    schedule: Literal["cosine", "wsd", "constant"] = "cosine"
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0                        # data order and LoRA initialisation
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    compile: Literal["auto", "on", "off"] = "auto"
    save_every: int = 0                  # steps between checkpoints (0: only at the end)
    keep_checkpoints: int = 2
    log_every: int = 10
    lora: bool = False                   # train LoRA adapters instead of every weight
    lora_r: int = 16
    lora_alpha: float = 32.0
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = LORA_TARGETS

    # fields that must be above zero, and that must not be below it (subclasses add theirs)
    POSITIVE: ClassVar[tuple[str, ...]] = ("max_steps", "lr", "log_every", "keep_checkpoints")
    NOT_NEGATIVE: ClassVar[tuple[str, ...]] = ("micro_batch_size", "warmup_steps", "save_every", "weight_decay",
                                               "grad_clip")

    def __post_init__(self) -> None:
        check_fields(self)
        for f in dataclasses.fields(self):             # lists (TOML, JSON) become the tuples the types say
            if isinstance(getattr(self, f.name), list):
                object.__setattr__(self, f.name, tuple(getattr(self, f.name)))
        for name in self.POSITIVE:
            if getattr(self, name) <= 0:
                raise InvalidField(name, getattr(self, name), "must be positive")
        for name in self.NOT_NEGATIVE:
            if getattr(self, name) < 0:
                raise InvalidField(name, getattr(self, name), "must not be negative")
        if self.lora:
            self.lora_config()

    def lora_config(self) -> LoRAConfig:
        try:
            return LoRAConfig(r=self.lora_r, alpha=self.lora_alpha, dropout=self.lora_dropout,
                              targets=self.lora_targets, seed=self.seed)
        except InvalidField as e:
            raise e.came_from(e.source, prefix="lora_") from None

    def loop_config(self, steps: int, *, seq_len: int, batch_size: int, eval_every: int = 0) -> TrainConfig:
        """The trainer loop's settings for `steps` optimizer steps of `batch_size` rows of at most
        `seq_len` tokens (the model preset is unused: the run starts from `model`)."""
        return TrainConfig(out=self.out, seq_len=seq_len, batch_size=batch_size,
                           micro_batch_size=self.micro_batch_size, max_steps=steps, lr=self.lr,
                           weight_decay=self.weight_decay, warmup_steps=self.warmup_steps, schedule=self.schedule,
                           min_lr_ratio=self.min_lr_ratio, grad_clip=self.grad_clip, seed=self.seed,
                           device=self.device, dtype=self.dtype, compile=self.compile,
                           save_every=self.save_every or steps, eval_every=eval_every or self.save_every or steps,
                           keep_checkpoints=self.keep_checkpoints, log_every=self.log_every, samples=())

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True, kw_only=True)
class DataConfig(PostConfig):
    """A method trained on data files (SFT's conversations, DPO's preference pairs), each a source
    with a license that the policy must allow, as pretraining's sources must."""
    data: tuple[str, ...] = ()           # data files (.jsonl, .parquet)
    licenses: tuple[str, ...] = ()       # SPDX license of each data file (one for all), else FILE.license
    allow_licenses: tuple[str, ...] = ()   # licenses allowed beyond pretraining's permissive ones (e.g. CC-BY-SA-4.0)
    seq_len: int = 1024                  # most tokens of an example; longer ones are skipped
    batch_size: int = 8                  # rows per optimizer step
    epochs: float = 0.0                  # if set, the step budget is this many passes over the data

    POSITIVE = PostConfig.POSITIVE + ("seq_len", "batch_size")
    NOT_NEGATIVE = PostConfig.NOT_NEGATIVE + ("epochs",)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.licenses and len(self.licenses) not in (1, len(self.data)):
            raise InvalidField("licenses", self.licenses, f"give one license for all files or one per file "
                                                          f"({len(self.data)})")

    def train_config(self, steps: int) -> TrainConfig:
        return self.loop_config(steps, seq_len=self.seq_len, batch_size=self.batch_size)

    def policy(self) -> Policy:
        """What the data files' licenses must pass: pretraining's permissive list, and any allowed here."""
        return Policy(allow=PERMISSIVE | {normalize_license(x) for x in self.allow_licenses})


def config_from_flags(cls, overrides: list[str] = (), prefix: str = "", **fields):
    """A config of the dataclass `cls` (any post-training method's) from flags (`fields`, None
    where not given) and `key=value` overrides, written `{prefix}key=value` on the command line
    (the speedrun's chat stage takes `sft.max_steps=4`); a bad value is one line that says where
    it came from."""
    values = {k: v for k, v in fields.items() if v is not None}
    sources = {k: f"from --{k.replace('_', '-')}" for k in values}
    for item in overrides:
        key, value = parse_override(item)
        values[key], sources[key] = value, f"from the command line: {prefix}{item}"
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise LaminaError(f"unknown {prefix and 'chat-stage '}settings {[prefix + k for k in unknown]}; known: "
                          + ", ".join(prefix + k for k in sorted(known)))
    try:
        return cls(**values)
    except InvalidField as e:
        raise e.came_from(sources.get(e.name, e.source), prefix=prefix) from None
