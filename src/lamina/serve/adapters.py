"""Several LoRA adapters served on one base model, chosen per request (`lamina serve --lora NAME=DIR`).

Each adapted projection becomes a `MultiLoRALinear`: the base layer's own weight, plus every
adapter's (A, B) for that layer. Before a forward, the engine says which adapter each batch row
uses (`Adapters.select`); the layer computes the base product for the whole batch, then, for
each row, the low-rank update of its own adapter:

    y = x W^T;  y[row] += scale_k * (x[row] A_k^T) B_k^T      for row's adapter k

so rows with different adapters share one batch and one read of the base weights, and a batch
of the base model alone pays nothing. The update is
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
from ..model.layers import Linear, linear

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}")   # what a client can send as `model`


class MultiLoRALinear(Linear):
    """A frozen `Linear` with the low-rank updates of several adapters, applied per batch row."""

    def __init__(self, base: Linear, adapters: Adapters):
        nn.Module.__init__(self)     # the weight stays the base layer's own tensor (same name)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.register_parameter("bias", None)
        self.adapters = [adapters]   # in a list: not a submodule, not in the state dict
        self.a_all = self.b_all = None   # every adapter's A stacked (R, in), scale * B side by side (out, R)
        self.columns: tuple[tuple[int, int], ...] = ()   # (adapter, rank) of each block of R, in order
        self.blocks: dict[int, slice] = {}               # adapter index -> its block of R

    def add(self, k: int, a: Tensor, b: Tensor, scale: float) -> None:
        """Append adapter k (added in increasing k) to the stacks."""
        start = self.a_all.shape[0] if self.a_all is not None else 0
        self.a_all = a if self.a_all is None else torch.cat([self.a_all, a])
        self.b_all = scale * b if self.b_all is None else torch.cat([self.b_all, scale * b], dim=1)
        self.blocks[k] = slice(start, start + a.shape[0])
        self.columns += ((k, a.shape[0]),)

    def forward(self, x: Tensor) -> Tensor:
        y = linear(x, self.weight)
        chosen = self.adapters[0].chosen
        if chosen is None:                     # every row is the base model
            return y
        # Each step runs this in hundreds of layers on a handful of rows, where the time is in
        # launching kernels, not in arithmetic: so the fewest kernels, B pre-scaled and the
        # second product added in place (addmm).
        x = x if x.dtype == self.a_all.dtype else x.to(self.a_all.dtype)
        if chosen.single is not None:          # every row one adapter: its own two products
            if chosen.single in self.blocks:
                block = self.blocks[chosen.single]
                _add_product(y, linear(x, self.a_all[block]), self.b_all[:, block])
            return y
        # Rows of several adapters: every row through every adapter's A at once, each row's
        # product kept only in its own adapter's block (zero elsewhere, and for rows of the base
        # model), then through the B matrices side by side: three kernels for any number of adapters.
        h = linear(x, self.a_all).mul_(chosen.weights(self.columns))    # (rows, T, R) * (rows, 1, R)
        _add_product(y, h, self.b_all)
        return y


def _add_product(y: Tensor, h: Tensor, b: Tensor) -> None:
    """y += h @ b^T in place, for y (..., out), h (..., r), b (out, r)."""
    if y.dtype == h.dtype:
        y.view(-1, y.shape[-1]).addmm_(h.reshape(-1, h.shape[-1]), b.t())
    else:
        y += linear(h, b).to(y.dtype)


class Chosen:
    """One selection of adapters by row, with the per-row column masks each layer asks for (made
    once per step for each arrangement of adapters the layers hold)."""

    def __init__(self, rows: list[int], device: torch.device):
        self.rows, self.device = rows, device
        self.single = rows[0] if len(set(rows)) == 1 else None
        self._weights: dict[tuple[tuple[int, int], ...], Tensor] = {}

    def weights(self, columns: tuple[tuple[int, int], ...]) -> Tensor:
        """(rows, 1, R): 1 in the columns of row i's adapter, 0 elsewhere."""
        w = self._weights.get(columns)
        if w is None:
            w = torch.zeros(len(self.rows), 1, sum(r for _, r in columns))
            at = 0
            for k, r in columns:
                for i, row in enumerate(self.rows):
                    if row == k:
                        w[i, 0, at:at + r] = 1.0
                at += r
            w = self._weights[columns] = w.to(self.device)
        return w


class Adapters:
    """The adapters on a served model, by name; index 0 is the base model itself.

    `select(rows)` sets, for the forwards inside the block, which adapter each row of the batch
    (dimension 0) uses; outside a block every row is the base model. The selection is the calling
    thread's own, so an `LLM` and a server's engine may share one adapted model."""

    def __init__(self, model: nn.Module, folders: dict[str, str | Path]):
        self.names: list[str] = []
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
            for module, (a, b) in adapter.pairs.items():
                if module not in wrapped:
                    parent, _, attr = module.rpartition(".")
                    wrapped[module] = MultiLoRALinear(layers[module], self)
                    setattr(model.get_submodule(parent), attr, wrapped[module])
                wrapped[module].add(k, a.to(self.device), b.to(self.device), adapter.scale)

    @property
    def chosen(self) -> Chosen | None:
        """This thread's selection, or None when every row is the base model."""
        return getattr(self._selected, "chosen", None)

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
        self._selected.chosen = Chosen(list(rows), self.device)
        try:
            yield
        finally:
            self._selected.chosen = None


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
