"""Corpus recipes: which sources, which policy, which build settings. Built-in ones by name
(`clean-small`, shipped in lamina/recipes/data/), or a TOML file of the user's:

    name = "my-corpus"
    sources = ["shakespeare", "py:packaging"]         # built-in sources (lamina.data.sources.builtin)
    [[folders]]                                       # the user's own, under a license they declare
    path = "notes/"                                   # relative to the recipe file
    id = "my-notes"
    license = "CC-BY-4.0"
    kind = "prose"                                    # prose, code or dialogue
    [[folders]]                                       # shards whose records carry their own license
    path = "/data/common-pile/"                       # .parquet, .jsonl, .jsonl.gz, .jsonl.zst
    id = "common-pile"
    text_field = "text"                               # the field map (dotted: nested fields)
    id_field = "id"
    license_field = "metadata.license"                # each record decided by its own license
    origin_field = "metadata.url"
    [config]                                          # BuildConfig fields
    seed = 1
    [policy]                                          # Policy fields: allow, deny_sources, deny_hashes
    deny_hashes = ["<sha256>"]
"""

from __future__ import annotations

import dataclasses
import inspect
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import LaminaError
from ..fields import InvalidField, check_field, check_value
from ..recipes import recipe_file
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

    def rebuild_record(self) -> dict:
        """The sources by reference, as build.json keeps them (with its config and policy, the recipe again)."""
        return {"name": self.name, "sources": list(self.sources), "folders": [dict(f) for f in self.folders]}

    @classmethod
    def from_build(cls, built: dict, where: str | Path) -> Recipe:
        """The recipe a corpus was built from, read back from its build.json."""
        rebuild = built.get("rebuild") if isinstance(built, dict) else None
        if not isinstance(rebuild, dict):
            raise LaminaError(f"{where}: its build.json does not say how to build it again (built by `build_corpus` "
                              "without a recipe, or by an older lamina); rebuild it from its recipe with the source "
                              "or document in the recipe's [policy] deny_sources or deny_hashes")
        if not isinstance(built.get("policy"), dict) or not isinstance(built.get("config"), dict):
            raise LaminaError(f"{where}: its config or policy is missing or not a table")
        _check_arguments(Policy, built["policy"], where, "policy")
        policy = {k: frozenset(v) for k, v in built["policy"].items()}
        return cls(name=rebuild["name"], sources=tuple(rebuild["sources"]), config=_build_config(built["config"], where),
                   policy=Policy(**policy), folders=tuple(rebuild["folders"]))


# what each top-level key of a recipe file holds (the tables are checked field by field below)
RECIPE_KEYS = {"name": str, "sources": tuple[str, ...], "folders": tuple[dict, ...], "config": dict, "policy": dict}


def data_recipe(ref: str) -> Recipe:
    """A corpus recipe: a built-in one by name, or a recipe .toml file. A value of the wrong type
    or range is one error naming its key and the file."""
    path = recipe_file("data", ref)
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise LaminaError(f"{path}: not valid TOML: {e}") from None
    except RecursionError:
        raise LaminaError(f"{path}: nested too deeply to read") from None
    unknown = set(raw) - set(RECIPE_KEYS)
    if unknown:
        raise LaminaError(f"{path}: unknown recipe keys {sorted(unknown)}; use name, sources, folders, config, policy")
    for key, value in raw.items():
        check_value(key, value, RECIPE_KEYS[key], source=f"from {path}")
    folders = []
    for f in raw.get("folders", []):
        missing = {"path", "id"} - set(f) | ({"license"} - set(f) if "license_field" not in f else set())
        if missing:
            raise LaminaError(f"{path}: a [[folders]] entry lacks {sorted(missing)}")
        _check_arguments(folder_source, f, path, "folders")
        folders.append({**f, "path": str((Path(str(path)).parent / f["path"]).resolve())})
    policy = raw.get("policy", {})
    _check_arguments(Policy, policy, path, "policy")      # before the lists become sets: frozenset("MIT") is letters
    return Recipe(name=raw.get("name", path.name.removesuffix(".toml")), sources=tuple(raw.get("sources", [])),
                  config=_build_config(raw.get("config", {}), path),
                  policy=Policy(**{k: frozenset(v) for k, v in policy.items()}), folders=tuple(folders))


def _check_arguments(cls, values: dict, path, table: str) -> None:
    """Unknown keys and values of the wrong type in one table of the recipe: `cls` is the
    dataclass (or function) the table's keys are fields (or keywords) of."""
    if dataclasses.is_dataclass(cls):
        names, kind = [f.name for f in dataclasses.fields(cls)], f"{cls.__name__} fields"
    else:
        names, kind = list(inspect.signature(cls).parameters), f"[{table}] keys"
    if set(values) - set(names):
        raise LaminaError(f"{path}: unknown {kind} {sorted(set(values) - set(names))}; "
                          f"known: {', '.join(sorted(names))}")
    for name, value in values.items():
        try:
            check_field(cls, name, value)
        except InvalidField as e:
            raise e.came_from(f"from {path}", f"{table}.") from None


def _build_config(values: dict, path) -> BuildConfig:
    """The [config] table as a BuildConfig, with any error said as coming from the recipe file."""
    _check_arguments(BuildConfig, values, path, "config")
    try:
        return BuildConfig(**values)
    except InvalidField as e:
        raise e.came_from(f"from {path}", "config.") from None
    except LaminaError as e:
        raise LaminaError(f"{path} [config]: {e}") from None
