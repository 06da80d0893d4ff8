"""Checkpoints of a run: a lamina model directory (HF config.json + model.safetensors + tokenizer
+ lamina.json, loadable by transformers as it is) with the training state beside the weights in
`train_state/` — optimizer tensors in safetensors, step, generator states, token counts and
compute totals in JSON — so `--resume` continues exactly where the run stopped.

Each checkpoint is written under a temporary name and renamed into place whole (see
`lamina.files.atomic_directory`); a save killed at any moment leaves no directory
named `step-*` that could be mistaken for a finished one."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from ..files import atomic_directory
from ..checkpoint.hf import read_hf, write_hf_files
from ..checkpoint.hf_config import hf_layout
from ..checkpoint.layout import from_lamina, from_mtp
from ..errors import LaminaError
from ..model import ModelConfig

STATE_DIR = "train_state"
STEP_DIR = re.compile(r"^step-(\d{6,})$")
_TUPLES = ("betas", "ns_coefficients")   # optimizer settings that JSON would turn into lists


@dataclass
class Progress:
    """Where a run is, beyond its tensors."""
    step: int                         # optimizer steps done
    rng: np.random.Generator          # draws the batches
    tokens: int                       # training tokens consumed
    doc_tokens: np.ndarray            # tokens consumed per ledger document
    compute: dict                     # accounting.Compute fields
    best_val_loss: float | None = None
    data_order: np.ndarray = field(default_factory=lambda: np.zeros(32, dtype=np.uint8))   # TokenLedger.order


def checkpoint_dir(run: Path, step: int) -> Path:
    return run / "checkpoints" / f"step-{step:06d}"


def full_state(model: nn.Module, optimizers: list[torch.optim.Optimizer]) -> tuple[dict, dict]:
    """Whole (unsharded, CPU) model and optimizer state dicts, on every rank."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return (get_model_state_dict(model, options=options),
            get_optimizer_state_dict(model, optimizers, options=options))


def save(run: Path, model_config: ModelConfig, model_state: dict, optim_state: dict, progress: Progress,
         tokenizer, made_by: dict, keep: int) -> Path:
    """Write checkpoints/step-N whole or not at all, then drop all but the newest `keep`."""
    dst = checkpoint_dir(run, progress.step)
    tensors, groups = _flatten_optimizer(optim_state)
    named, extra = _split_model_state(model_state, model_config)
    tensors |= {f"model/{k}": v.contiguous() for k, v in extra.items()}
    with atomic_directory(dst) as tmp:
        write_hf_files(tmp, model_config, named, tokenizer, made_by=made_by)
        state = tmp / STATE_DIR
        state.mkdir()
        tensors["torch_rng"] = torch.get_rng_state()
        tensors["doc_tokens"] = torch.from_numpy(progress.doc_tokens)
        tensors["data_order"] = torch.from_numpy(progress.data_order)
        save_file(tensors, state / "state.safetensors")
        (state / "state.json").write_text(json.dumps({
            "step": progress.step, "tokens": progress.tokens, "rng": progress.rng.bit_generator.state,
            "compute": progress.compute, "best_val_loss": progress.best_val_loss,
            "param_groups": groups}, indent=2))
    for old in list_checkpoints(run)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return dst


def _split_model_state(model_state: dict, config: ModelConfig) -> tuple[dict, dict]:
    """The tensors a model directory has names for, and the others (LoRA adapters, say), which
    are kept with the training state instead."""
    named, extra = {}, {}
    for k, v in model_state.items():
        try:
            from_lamina(from_mtp(k, config.n_layers), "hf", hf_layout(config))
            named[k] = v
        except KeyError:
            extra[k] = v
    return named, extra


def remove_partial(run: Path) -> None:
    """Drop what killed saves left behind (hidden `.step-*.partial-*` folders)."""
    folder = run / "checkpoints"
    if folder.is_dir():
        for p in folder.glob(".step-*.partial-*"):
            shutil.rmtree(p, ignore_errors=True)


def list_checkpoints(run: Path) -> list[Path]:
    """Finished checkpoints of a run, oldest first (partial ones have hidden names)."""
    folder = run / "checkpoints"
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if STEP_DIR.match(p.name) and (p / STATE_DIR / "state.json").is_file()]
    return sorted(found, key=lambda p: int(STEP_DIR.match(p.name).group(1)))


def load(path: Path, model: nn.Module, optimizers: list[torch.optim.Optimizer], n_docs: int) -> Progress:
    """Restore weights, optimizer and generators from a checkpoint into a freshly built run."""
    try:
        meta = json.loads((path / STATE_DIR / "state.json").read_text())
        tensors = load_file(path / STATE_DIR / "state.safetensors")
        weights = read_hf(path).weights
    except (OSError, ValueError) as e:
        raise LaminaError(f"{path}: cannot resume from this checkpoint ({e})") from None
    options = StateDictOptions(full_state_dict=True, strict=True)
    model_state = dict(weights) | {k.removeprefix("model/"): t for k, t in tensors.items() if k.startswith("model/")}
    if "output.weight" not in model_state:          # tied: the checkpoint keeps one copy
        model_state["output.weight"] = model_state["tok_embeddings.weight"]
    set_model_state_dict(model, model_state, options=options)
    set_optimizer_state_dict(model, optimizers, _unflatten_optimizer(tensors, meta["param_groups"]), options=options)
    torch.set_rng_state(tensors["torch_rng"])
    rng = np.random.default_rng()
    rng.bit_generator.state = meta["rng"]
    doc_tokens = tensors["doc_tokens"].numpy().copy()
    if len(doc_tokens) != n_docs:
        raise LaminaError(f"{path}: was trained on a different corpus ({len(doc_tokens)} documents, "
                          f"the data has {n_docs})")
    order = tensors["data_order"].numpy().copy() if "data_order" in tensors else np.zeros(32, dtype=np.uint8)
    return Progress(meta["step"], rng, meta["tokens"], doc_tokens, meta["compute"], meta.get("best_val_loss"), order)


def _flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], list[dict]]:
    tensors = {}
    for name, values in state["state"].items():
        for key, t in values.items():
            tensors[f"optim/{name}/{key}"] = torch.as_tensor(t).contiguous()
    return tensors, state["param_groups"]


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], groups: list[dict]) -> dict:
    state: dict[str, dict] = {}
    for key, t in tensors.items():
        if key.startswith("optim/"):
            name, field = key[len("optim/"):].rsplit("/", 1)
            state.setdefault(name, {})[field] = t
    for g in groups:
        for k in _TUPLES:
            if isinstance(g.get(k), list):
                g[k] = tuple(g[k])
    return {"state": state, "param_groups": groups}
