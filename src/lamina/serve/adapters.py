"""Several LoRA adapters served on one base model, chosen per request (`lamina serve --lora NAME=DIR`).

Each adapted projection becomes a `MultiLoRALinear`: the base layer's own weight, plus every
adapter's (A, B) for that layer. Before a forward, the engine says which adapter each batch row
uses (`Adapters.select`); the layer computes the base product for the whole batch, then, for
each adapter present, the low-rank update of its rows alone, added in place:

    y = x W^T;  y[rows of k] += scale_k * (x[rows of k] A_k^T) B_k^T

so rows with different adapters share one batch and one read of the base weights, a row without
an adapter pays nothing, and a batch that is all one adapter needs no gather. The update is
computed in float32 whatever the model's dtype, as PEFT and `post.lora.LoRALinear` do, so a row
equals that adapter loaded alone. Nothing is merged into the base weights, so adding an adapter
never changes another's (or the base model's) answers. The selection is Python state read by the
layers, so the adapted model runs eagerly (the server refuses `--compile` with `--lora`)."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor, nn

from ..checkpoint.peft import PROJECTIONS, read_peft
from ..errors import LaminaError
from ..model.llama import Linear, linear

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}")   # what a client can send as `model`


class MultiLoRALinear(Linear):
    """A frozen `Linear` with the low-rank updates of several adapters, applied per batch row."""

    def __init__(self, base: Linear, adapters: Adapters):
        nn.Module.__init__(self)     # the weight stays the base layer's own tensor (same name)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.register_parameter("bias", None)
        self.adapters = [adapters]   # in a list: not a submodule, not in the state dict
        self.updates: dict[int, tuple[Tensor, Tensor, float]] = {}   # adapter index -> (A, B, scale)

    def forward(self, x: Tensor) -> Tensor:
        y = linear(x, self.weight)
        for k, rows in self.adapters[0].groups:
            if k not in self.updates:          # this adapter leaves this layer as it is
                continue
            a, b, scale = self.updates[k]
            h = x if rows is None else x.index_select(0, rows)
            update = (scale * linear(linear(h.to(a.dtype), a), b)).to(y.dtype)
            if rows is None:
                y += update
            else:
                y.index_add_(0, rows, update)
        return y


class Adapters:
    """The adapters on a served model, by name; index 0 is the base model itself.

    `select(rows)` sets, for the forwards inside the block, which adapter each row of the batch
    (dimension 0) uses; outside a block every row is the base model. The selection is the calling
    thread's own, so an `LLM` and a server's engine may share one adapted model."""

    def __init__(self, model: nn.Module, folders: dict[str, str | Path]):
        self.names: list[str] = []
        self.paths: dict[str, Path] = {}
        self._selected = threading.local()
        self.device = model.tok_embeddings.weight.device
        if not folders:
            return
        for name in folders:
            check_name(name)
        found = {name: read_peft(path) for name, path in folders.items()}   # all read before any change
        layers = {name: m for name, m in model.named_modules()
                  if type(m) is Linear and name.startswith("layers.") and name.rpartition(".")[2] in PROJECTIONS}
        shapes = {name: tuple(m.weight.shape) for name, m in layers.items()}
        for adapter in found.values():
            adapter.check_fits(shapes)
        wrapped: dict[str, MultiLoRALinear] = {}
        for k, (name, adapter) in enumerate(found.items(), start=1):
            self.names.append(name)
            self.paths[name] = adapter.path
            for module, (a, b) in adapter.pairs.items():
                if module not in wrapped:
                    parent, _, attr = module.rpartition(".")
                    wrapped[module] = MultiLoRALinear(layers[module], self)
                    setattr(model.get_submodule(parent), attr, wrapped[module])
                wrapped[module].updates[k] = (a.to(self.device), b.to(self.device), adapter.scale)

    @property
    def groups(self) -> list[tuple[int, Tensor | None]]:
        """This thread's selection: (adapter, its rows; None = every row) for each adapter used."""
        return getattr(self._selected, "groups", ())

    def __len__(self) -> int:
        return len(self.names)

    def index(self, name: str) -> int:
        """1 + the position of adapter `name` (0 is the base model)."""
        return self.names.index(name) + 1

    @contextmanager
    def select(self, rows: list[int]) -> Iterator[None]:
        """Within the block, row i of every batch is computed with adapter rows[i] (0: none)."""
        if not any(rows):
            yield
            return
        if len(set(rows)) == 1:
            groups = [(rows[0], None)]
        else:
            groups = [(k, torch.tensor([i for i, r in enumerate(rows) if r == k], device=self.device))
                      for k in sorted(set(rows)) if k]
        self._selected.groups = groups
        try:
            yield
        finally:
            self._selected.groups = ()


def check_name(name: str) -> None:
    if not NAME.fullmatch(name):
        raise LaminaError(f"adapter name {name[:60]!r}: use letters, digits and . _ : / - (at most 128, "
                          "starting with a letter or digit)")


def parse_lora_flags(values: list[str]) -> dict[str, Path]:
    """`--lora NAME=DIR ...` as {name: folder}, refusing a malformed or repeated one."""
    out: dict[str, Path] = {}
    for v in values:
        name, eq, path = v.partition("=")
        if not eq or not name or not path:
            raise LaminaError(f"--lora {v}: give NAME=DIR (the name clients send as `model`, a PEFT adapter folder)")
        check_name(name)
        if name in out:
            raise LaminaError(f"--lora: the name {name!r} is given twice")
        out[name] = Path(path)
    return out
