"""The recipes that ship inside lamina, as package data: training recipes in `train/` (TrainConfig
fields, read by `lamina.train.train_recipe`) and corpus recipes in `data/` (sources, config and
policy, read by `lamina.data.data_recipe`). They are found with `importlib.resources`, so a wheel
install has them as a source checkout does; a user's own recipe is a path to a `.toml` file."""

from __future__ import annotations

from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path

from ..errors import LaminaError

KINDS = {"train": "training", "data": "data"}


def builtin_recipes(kind: str) -> dict[str, Traversable]:
    """The built-in recipes of one kind ("train" or "data"), by name (the file name without .toml)."""
    if kind not in KINDS:
        raise ValueError(f"recipe kind {kind!r} is not one of {', '.join(KINDS)}")
    folder = files(__name__) / kind
    return {f.name.removesuffix(".toml"): f for f in sorted(folder.iterdir(), key=lambda f: f.name)
            if f.name.endswith(".toml")}


def recipe_file(kind: str, ref: str) -> Traversable:
    """A recipe: a path to a .toml file, or the name of a built-in recipe of `kind`."""
    if ref.endswith(".toml"):
        path = Path(ref)
        if not path.is_file():
            raise LaminaError(f"{path}: no such recipe file")
        return path
    builtin = builtin_recipes(kind)
    if ref not in builtin:
        raise LaminaError(f"unknown {KINDS[kind]} recipe {ref!r}; built-in: {', '.join(builtin) or 'none found'}; "
                          "or a path to a .toml file")
    return builtin[ref]
