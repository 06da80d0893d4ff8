"""LoRA adapter folders in PEFT's format, read into lamina's names; what `post.lora` trains and
saves and what `lamina serve --lora` serves.

A folder holds `adapter_config.json` (`peft_type` LORA, `r`, `lora_alpha`, `target_modules` by
Hugging Face name, ...) and `adapter_model.safetensors` with PEFT's tensor names
(`base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`). lamina keeps wq/wk in Hugging
Face's RoPE row order (`checkpoint.layout`), so B's rows need no permutation. Anything lamina
cannot apply exactly (DoRA, biases, per-module ranks, ...) is refused in one line."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from safetensors import safe_open
from torch import Tensor

from ..errors import LaminaError
from .layout import from_lamina, to_lamina

PROJECTIONS = ("wq", "wk", "wv", "wo", "w1", "w2", "w3")     # the lamina layers an adapter may hold
CONFIG_FILE, WEIGHTS_FILE = "adapter_config.json", "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."     # PeftModel -> LoraModel -> the transformers model
# adapter_config.json keys naming PEFT features lamina does not implement; each must be unset
UNSUPPORTED = ("use_dora", "lora_bias", "modules_to_save", "rank_pattern", "alpha_pattern",
               "fan_in_fan_out", "layer_replication", "target_parameters", "trainable_token_indices",
               "alora_invocation_tokens", "use_qalora", "use_bdlora")


@dataclass(frozen=True)
class PeftAdapter:
    """One adapter folder as read: its shape and scaling, and (A, B) in float32 by lamina module
    name (`layers.0.attention.wq`), A (r, in) and B (out, r)."""
    path: Path
    r: int
    alpha: float
    dropout: float
    rslora: bool
    pairs: dict[str, tuple[Tensor, Tensor]]
    raw: dict = field(repr=False)         # adapter_config.json as written

    @property
    def scale(self) -> float:
        """The update is scale * B A x: alpha / r, or alpha / sqrt(r) with rank-stabilised LoRA."""
        return self.alpha / (math.sqrt(self.r) if self.rslora else self.r)

    @property
    def targets(self) -> tuple[str, ...]:
        """The projections adapted in some layer, in PROJECTIONS order."""
        return tuple(t for t in PROJECTIONS if any(n.endswith(f".{t}") for n in self.pairs))

    def check_fits(self, shapes: dict[str, tuple[int, int]]) -> None:
        """Refuse an adapter of another model: every module it adapts must be among `shapes`
        (lamina name -> the base layer's (out, in)), with A and B to match."""
        for name, (a, b) in self.pairs.items():
            if name not in shapes:
                raise LaminaError(f"{self.path}: adapts {hf_module(name)}, which this model does not have")
            out, inp = shapes[name]
            want_a, want_b = (self.r, inp), (out, self.r)
            if tuple(a.shape) != want_a or tuple(b.shape) != want_b:
                raise LaminaError(f"{self.path}: the adapter of {hf_module(name)} has shapes {tuple(a.shape)} "
                                  f"and {tuple(b.shape)}; this model needs {want_a} and {want_b} "
                                  "(an adapter of another base model?)")


def hf_module(name: str) -> str:
    """lamina module name -> Hugging Face's: layers.0.attention.wq -> model.layers.0.self_attn.q_proj"""
    return from_lamina(f"{name}.weight", "hf").removesuffix(".weight")


def hf_target(target: str) -> str:
    """A projection's name in PEFT's target_modules: wq -> q_proj, w1 -> gate_proj."""
    block = "feed_forward" if target in ("w1", "w2", "w3") else "attention"
    return hf_module(f"layers.0.{block}.{target}").rpartition(".")[2]


def read_peft(path: str | Path) -> PeftAdapter:
    """A PEFT LoRA folder, checked: plain LoRA only, every tensor an adapter of a projection, both
    halves present, ranks as the config says."""
    path = Path(path)
    raw = read_peft_config(path)
    where = path / CONFIG_FILE
    for key in UNSUPPORTED:
        if raw.get(key) not in (None, False, {}, [], "none"):
            raise LaminaError(f"{where}: {key} = {json.dumps(raw[key])[:60]} is not supported "
                              "(lamina applies plain LoRA)")
    if raw.get("bias", "none") != "none":
        raise LaminaError(f"{where}: bias = {json.dumps(raw['bias'])[:40]} is not supported (only \"none\")")
    try:
        r, alpha = raw["r"], raw["lora_alpha"]
        dropout, rslora = raw.get("lora_dropout", 0.0), raw.get("use_rslora", False)
    except KeyError as e:
        raise LaminaError(f"{where}: missing field {e.args[0]}") from None
    if type(r) is not int or r < 1:
        raise LaminaError(f"{where}: r = {json.dumps(r)[:40]} must be a whole number of at least 1")
    if type(alpha) not in (int, float) or not alpha > 0 or not math.isfinite(alpha):
        raise LaminaError(f"{where}: lora_alpha = {json.dumps(alpha)[:40]} must be a positive number")
    if type(dropout) not in (int, float) or not 0 <= dropout < 1:
        raise LaminaError(f"{where}: lora_dropout = {json.dumps(dropout)[:40]} must be in [0, 1)")
    if type(rslora) is not bool:
        raise LaminaError(f"{where}: use_rslora = {json.dumps(rslora)[:40]} must be true or false")
    pairs = _read_pairs(path / WEIGHTS_FILE)
    for name, (a, b) in pairs.items():
        if a.shape[0] != r or b.shape[1] != r:
            raise LaminaError(f"{path / WEIGHTS_FILE}: the adapter of {hf_module(name)} has rank "
                              f"{a.shape[0]}x{b.shape[1]}, adapter_config.json says r = {r}")
    return PeftAdapter(path, r, float(alpha), float(dropout), rslora, pairs, raw)


def read_peft_config(path: Path) -> dict:
    """adapter_config.json of a LoRA folder, as a dict."""
    where = path / CONFIG_FILE
    if not where.is_file():
        raise LaminaError(f"{path}: no {CONFIG_FILE}; not a PEFT adapter folder")
    try:
        raw = json.loads(where.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LaminaError(f"{where}: not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise LaminaError(f"{where}: expected a JSON object")
    if raw.get("peft_type") != "LORA":
        raise LaminaError(f"{where}: peft_type {str(raw.get('peft_type'))[:40]} is not LORA")
    return raw


def _read_pairs(file: Path) -> dict[str, tuple[Tensor, Tensor]]:
    """lamina module name -> (A, B) in float32, from PEFT's tensor names."""
    if not file.is_file():
        raise LaminaError(f"{file}: file not found (adapters saved as .bin are not read; resave with safetensors)")
    found: dict[str, dict[str, Tensor]] = {}
    try:
        with safe_open(file, "pt") as f:
            for key in f.keys():
                stem, _, which = key.removeprefix(PEFT_PREFIX).rpartition(".lora_")
                ours = to_lamina(f"{stem}.weight", "hf") if which in ("A.weight", "B.weight") else None
                module = ours.removesuffix(".weight") if ours else ""
                if module.rpartition(".")[2] not in PROJECTIONS:
                    raise LaminaError(f"{file}: tensor {key[:80]} is not an adapter of a projection "
                                      f"lamina adapts ({', '.join(PROJECTIONS)})")
                found.setdefault(module, {})[which[0]] = f.get_tensor(key).float()
    except LaminaError:
        raise
    except Exception as e:     # safetensors' own errors: truncated, bad header, ...
        raise LaminaError(f"{file}: not a readable safetensors file ({e})") from None
    if not found:
        raise LaminaError(f"{file}: holds no adapters")
    for module, ab in found.items():
        if set(ab) != {"A", "B"}:
            raise LaminaError(f"{file}: {hf_module(module)} has lora_{'A' if 'B' in ab else 'B'} missing")
        a, b = ab["A"], ab["B"]
        if a.ndim != 2 or b.ndim != 2:
            raise LaminaError(f"{file}: the adapter of {hf_module(module)} is not a pair of matrices")
    return {m: (ab["A"], ab["B"]) for m, ab in found.items()}
