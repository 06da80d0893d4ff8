"""LoRA (Hu et al. 2021): low-rank adapters on chosen projections of a frozen model, saved and
loaded in PEFT's format so that `peft` loads lamina's adapters and lamina loads PEFT's.

Each chosen `Linear` (by lamina name: `wq wk wv wo w1 w2 w3`) becomes a `LoRALinear`, which keeps
the same frozen `weight` (so the model's tensor names do not change) and adds A (r, in) and
B (out, r): y = x W^T + (alpha / r) * dropout(x) A^T B^T. A starts as nn.Linear's own init
(kaiming-uniform, as PEFT does) and B at zero, so an adapted model starts equal to its base. The
output head stays plain: the fused loss (`model(x, targets=y)`) reads its weight directly.

The interface for a trainer:

    params = apply_lora(model, LoRAConfig(r=16, alpha=32))   # all else frozen; optimize these
    with adapters_disabled(model): ...                       # the base model, e.g. DPO's reference
    save_adapter(model, "out/adapter", base_ref="smollm2-135m-instruct")
    params = load_adapter(model, "out/adapter")              # onto a base model without adapters
    merge_lora(model)                                        # W += (alpha / r) B A; plain model

On disk an adapter is a folder of `adapter_config.json` (`peft_type` LORA, `r`, `lora_alpha`,
`target_modules` by Hugging Face name, ...) and `adapter_model.safetensors` with PEFT's names
(`base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`). lamina keeps wq/wk in
Hugging Face's RoPE row order (two halves, not Meta's interleaving; `checkpoint.layout`), so B's
rows are saved as they are (the folder's reader is `lamina.checkpoint.peft`, which the server
uses too). `lamina lora merge BASE ADAPTER OUT` writes the merged model."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor, nn

from ..checkpoint import load_checkpoint, write_hf
from ..checkpoint.peft import (CONFIG_FILE, PEFT_PREFIX, PROJECTIONS, WEIGHTS_FILE, PeftAdapter, hf_module, hf_target,
                               read_peft, read_peft_config)
from ..errors import LaminaError
from ..fields import InvalidField, check_fields
from ..files import atomic_directory
from ..model import from_state_dict, weights
from ..model.layers import Linear, linear
from ..version import __version__



@dataclass(frozen=True, kw_only=True)
class LoRAConfig:
    """Which projections get adapters, and their shape; written as adapter_config.json."""
    r: int = 16                          # rank of each adapter
    alpha: float = 32.0                  # the update is scaled by alpha / r (alpha / sqrt(r) with rslora)
    dropout: float = 0.0                 # dropout on the adapter's input while training
    targets: tuple[str, ...] = PROJECTIONS   # lamina names: wq wk wv wo (attention), w1 w2 w3 (feed-forward)
    rslora: bool = False                 # rank-stabilised scaling alpha / sqrt(r) (Kalajdzievski 2023)
    seed: int = 0                        # initialisation of the A matrices

    def __post_init__(self) -> None:
        check_fields(self)
        object.__setattr__(self, "targets", tuple(self.targets))   # TOML and JSON give lists
        if self.r < 1:
            raise InvalidField("r", self.r, "must be at least 1")
        if self.alpha <= 0:
            raise InvalidField("alpha", self.alpha, "must be positive")
        if not 0 <= self.dropout < 1:
            raise InvalidField("dropout", self.dropout, "must be in [0, 1)")
        unknown = [t for t in self.targets if t not in PROJECTIONS]
        if unknown or not self.targets or len(set(self.targets)) != len(self.targets):
            raise InvalidField("targets", self.targets,
                               f"must be distinct names among {', '.join(PROJECTIONS)}")

    @property
    def scale(self) -> float:
        return self.alpha / (math.sqrt(self.r) if self.rslora else self.r)


class LoRALinear(Linear):
    """A frozen `Linear` plus a low-rank update. It holds the base layer's own `weight` tensor, so
    the model's state dict keeps its names and gains `...wq.lora_A` and `...wq.lora_B`."""

    def __init__(self, base: Linear, config: LoRAConfig, generator: torch.Generator):
        nn.Module.__init__(self)      # not Linear.__init__: the weight is the base's, not a new one
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.register_parameter("bias", None)
        self.config, self.scale, self.enabled = config, config.scale, True
        a = torch.empty(config.r, self.in_features)
        nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=generator)   # as nn.Linear and PEFT
        # float32 whatever the base's dtype, as PEFT keeps them: small updates survive rounding
        self.lora_A = nn.Parameter(a.to(base.weight.device))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, config.r, device=base.weight.device))

    def forward(self, x: Tensor) -> Tensor:
        y = linear(x, self.weight)
        if not self.enabled:
            return y
        h = F.dropout(x, self.config.dropout, self.training) if self.config.dropout else x
        update = linear(linear(h.to(self.lora_A.dtype), self.lora_A), self.lora_B)   # (..., out)
        return y + (self.scale * update).to(y.dtype)

    def delta(self) -> Tensor:
        """The update to the weight, scale * B @ A (out, in), in float32."""
        return self.scale * (self.lora_B.float() @ self.lora_A.float())


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    """The adapted layers by lamina module name (`layers.0.attention.wq`)."""
    prefix = "_orig_mod."     # a torch.compile'd model names its modules under this
    return {name.removeprefix(prefix): m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def adapter_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The A and B of every adapter, in module order: what a trainer optimizes."""
    return [p for m in lora_modules(model).values() for p in (m.lora_A, m.lora_B)]


def _projection_names(model: nn.Module, targets: tuple[str, ...]) -> list[str]:
    return [name for name, m in model.named_modules()
            if type(m) is Linear and name.rpartition(".")[2] in targets and name.startswith("layers.")]


def _wrap(model: nn.Module, names: list[str], config: LoRAConfig) -> list[nn.Parameter]:
    generator = torch.Generator().manual_seed(config.seed)
    for p in model.parameters():
        p.requires_grad_(False)
    for name in names:
        parent, _, attr = name.rpartition(".")
        owner = model.get_submodule(parent)
        setattr(owner, attr, LoRALinear(getattr(owner, attr), config, generator))
    return adapter_parameters(model)


def apply_lora(model: nn.Module, config: LoRAConfig) -> list[nn.Parameter]:
    """Put adapters on the `config.targets` projections of every layer of a lamina Transformer
    (uncompiled: compile after), freeze everything else, and return the adapters' parameters."""
    if lora_modules(model):
        raise LaminaError("the model already has LoRA adapters; merge them (merge_lora) before adding others")
    names = _projection_names(model, config.targets)
    if not names:
        raise LaminaError(f"no layers named {', '.join(config.targets)} to adapt; is this a lamina Transformer?")
    return _wrap(model, names, config)


@contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block the model computes as its base, without the adapters (no copy made)."""
    modules = list(lora_modules(model).values())
    before = [m.enabled for m in modules]
    for m in modules:
        m.enabled = False
    try:
        yield model
    finally:
        for m, was in zip(modules, before):
            m.enabled = was


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold each adapter into its base weight (W + scale * B @ A, summed in float32) and put a
    plain `Linear` back in its place: the same model, with no adapter left to save or disable."""
    for name, m in lora_modules(model).items():
        m.weight.copy_((m.weight.float() + m.delta()).to(m.weight.dtype))
        with torch.device("meta"):     # the new layer's own weight is replaced at once
            plain = Linear(m.in_features, m.out_features)
        plain.weight = m.weight
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent), attr, plain)
    return model


def lora_config(model: nn.Module) -> LoRAConfig:
    """The configuration the model's adapters were made with, targets as found."""
    modules = lora_modules(model)
    if not modules:
        raise LaminaError("the model has no LoRA adapters to save")
    configs = {m.config for m in modules.values()}
    if len(configs) > 1:
        raise LaminaError("the model's adapters were made with different configurations")
    found = {name.rpartition(".")[2] for name in modules}
    config = configs.pop()
    return LoRAConfig(r=config.r, alpha=config.alpha, dropout=config.dropout, rslora=config.rslora,
                      seed=config.seed, targets=tuple(t for t in PROJECTIONS if t in found))


# ---------------------------------------------------------------------------------------------
# PEFT's files (read by lamina.checkpoint.peft, which the server uses too)


def peft_config(config: LoRAConfig, base_ref: str) -> dict:
    """adapter_config.json as PEFT writes it for a plain LoRA (the keys PEFT reads back)."""
    return {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_ref,
        "r": config.r, "lora_alpha": config.alpha, "lora_dropout": config.dropout,
        "use_rslora": config.rslora, "target_modules": sorted(hf_target(t) for t in config.targets),
        "bias": "none", "use_dora": False, "fan_in_fan_out": False, "init_lora_weights": True,
        "modules_to_save": None, "layers_to_transform": None, "layers_pattern": None,
        "rank_pattern": {}, "alpha_pattern": {}, "inference_mode": True, "revision": None,
    }


def save_adapter(model: nn.Module, path: str | Path, base_ref: str) -> Path:
    """Write the model's adapters as a PEFT adapter folder (atomically: whole or absent).
    `base_ref` names the base model, recorded as base_model_name_or_path."""
    modules, config = lora_modules(model), lora_config(model)
    tensors = {}
    for name, m in modules.items():
        theirs = PEFT_PREFIX + hf_module(name)
        tensors[f"{theirs}.lora_A.weight"] = m.lora_A.detach().float().contiguous().cpu()
        tensors[f"{theirs}.lora_B.weight"] = m.lora_B.detach().float().contiguous().cpu()
    with atomic_directory(path) as tmp:
        (tmp / CONFIG_FILE).write_text(json.dumps(peft_config(config, str(base_ref)), indent=2) + "\n")
        save_file(tensors, tmp / WEIGHTS_FILE, metadata={"format": "pt", "lamina_version": __version__})
    return Path(path)


def read_adapter(path: str | Path) -> tuple[LoRAConfig, dict[str, tuple[Tensor, Tensor]], dict]:
    """(the config, lamina module name -> (A, B), the raw adapter_config.json) of a PEFT LoRA
    folder; anything lamina cannot apply exactly is refused in one line."""
    found = read_peft(path)
    return _config_of(found), found.pairs, found.raw


def _config_of(found: PeftAdapter) -> LoRAConfig:
    return LoRAConfig(r=found.r, alpha=found.alpha, dropout=found.dropout, rslora=found.rslora,
                      targets=found.targets)


def load_adapter(model: nn.Module, path: str | Path) -> list[nn.Parameter]:
    """Put the adapters of a PEFT LoRA folder on a lamina Transformer that has none (on the
    modules the file names, which may be fewer than every layer's) and return their parameters,
    trainable, with the rest frozen, as `apply_lora` does."""
    found = read_peft(path)
    config, pairs = _config_of(found), found.pairs
    if lora_modules(model):
        raise LaminaError("the model already has LoRA adapters; merge them (merge_lora) before adding others")
    names = _projection_names(model, config.targets)
    found.check_fits({n: tuple(model.get_submodule(n).weight.shape) for n in names})   # before the model changes
    params = _wrap(model, [n for n in names if n in pairs], config)
    modules = lora_modules(model)
    with torch.no_grad():
        for name, (a, b) in pairs.items():
            modules[name].lora_A.copy_(a)
            modules[name].lora_B.copy_(b)
    return params


def merge_adapter(base_ref: str | Path, adapter: str | Path, out: str | Path,
                  dtype: torch.dtype | None = None) -> Path:
    """`lamina lora merge`: the base model with the adapter folded in, as a plain model directory
    (in the base's dtype unless `dtype`), carrying the base's tokenizer and chat template."""
    base = load_checkpoint(base_ref)
    model = from_state_dict(base.config, base.weights)
    load_adapter(model, adapter)
    merge_lora(model)
    raw = read_peft_config(Path(adapter))
    made_by = {"command": "lamina lora merge", "base": str(base.path), "base_format": base.format,
               "adapter": str(adapter), "adapter_base_model": raw.get("base_model_name_or_path"),
               "lora": {k: raw.get(k) for k in ("r", "lora_alpha", "use_rslora", "target_modules")}}
    return write_hf(out, base.config, weights(model), base.tokenizer, dtype=dtype, made_by=made_by)
