"""Corpus recipes: which sources, which policy, which build settings. Built-in ones by name
(`clean-small`), or a TOML file of the user's:

    name = "my-corpus"
    sources = ["shakespeare", "py:packaging"]         # built-in sources (lamina.data.sources.builtin)
    [[folders]]                                       # the user's own, under a license they declare
    path = "notes/"                                   # relative to the recipe file
    id = "my-notes"
    license = "CC-BY-4.0"
    kind = "prose"                                    # prose, code or dialogue
    [config]                                          # BuildConfig fields
    seed = 1
    [policy]                                          # Policy fields: allow, deny_sources, deny_hashes
    deny_hashes = ["<sha256>"]
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import LaminaError
from .build import BuildConfig
from .licenses import Policy
from .sources import Source, builtin, folder_source


@dataclass(frozen=True)
class Recipe:
    name: str
    sources: tuple[str, ...]     # built-in source refs (sources.builtin)
    config: BuildConfig
    policy: Policy
    folders: tuple[dict, ...] = field(default=())   # folder_source arguments: path, id, license, kind, ...

    def load_sources(self) -> list[Source]:
        return [builtin(ref) for ref in self.sources] + [folder_source(**f) for f in self.folders]


RECIPES = {
    # The small clean corpus of the main job: public-domain literature, BSD dialogues, and the code
    # of a few installed distributions, two of which the permissive policy must keep out
    # (certifi is MPL-2.0, tqdm MPL-2.0 AND MIT) so every build shows the policy at work.
    "clean-small": Recipe(
        name="clean-small",
        sources=("shakespeare", "milton", "chatterbot-corpus", "py:packaging", "py:idna", "py:pluggy",
                 "py:iniconfig", "py:markupsafe", "py:jinja2", "py:certifi", "py:tqdm"),
        config=BuildConfig(weights={"dialogue": 2.0}),
        policy=Policy.permissive()),
}


def recipe(ref: str) -> Recipe:
    """A built-in recipe by name, or a recipe TOML file."""
    if ref in RECIPES:
        return RECIPES[ref]
    if ref.endswith(".toml"):
        return load_recipe(ref)
    raise LaminaError(f"unknown data recipe {ref!r}; built-in: {', '.join(RECIPES)}, or a .toml recipe file")


def load_recipe(path: str | Path) -> Recipe:
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise LaminaError(f"{path}: no such recipe file") from None
    except tomllib.TOMLDecodeError as e:
        raise LaminaError(f"{path}: not valid TOML: {e}") from None
    unknown = set(raw) - {"name", "sources", "folders", "config", "policy"}
    if unknown:
        raise LaminaError(f"{path}: unknown recipe keys {sorted(unknown)}; use name, sources, folders, config, policy")
    folders = []
    for f in raw.get("folders", []):
        missing = {"path", "id", "license"} - set(f)
        if missing:
            raise LaminaError(f"{path}: a [[folders]] entry lacks {sorted(missing)}")
        folders.append({**f, "path": str((path.parent / f["path"]).resolve())})
    return Recipe(name=raw.get("name", path.stem), sources=tuple(raw.get("sources", [])),
                  config=_fields(BuildConfig, raw.get("config", {}), path),
                  policy=_fields(Policy, {k: frozenset(v) for k, v in raw.get("policy", {}).items()}, path),
                  folders=tuple(folders))


def _fields(cls, values: dict, path: Path):
    names = {f.name for f in dataclasses.fields(cls)}
    if set(values) - names:
        raise LaminaError(f"{path}: unknown {cls.__name__} fields {sorted(set(values) - names)}; "
                          f"known: {', '.join(sorted(names))}")
    return cls(**values)
