"""What a runtime install (`scripts/setup.sh`, the README's first line) must hold. The tests run in
the test environment, which has far more installed; these checks read the declarations instead."""

import ast
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import lamina
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).parents[1]
SRC = Path(lamina.__file__).parent
# Modules that import a reference library at module level, and that lamina itself never imports:
# lm-eval loads the adapter when asked for `--model lamina`.
OPTIONAL_MODULES = {"eval/lm_eval_model.py"}


def _name(requirement: str) -> str:
    """The normalised distribution name of a requirement line ("Jinja2==3.1", "a_b; extra")."""
    return canonicalize_name(Requirement(requirement).name)


def _assets() -> set[str]:
    """The packages requirements/assets.txt installs (without their own dependencies)."""
    return {_name(line) for line in (ROOT / "requirements" / "assets.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")}


def _runtime_closure() -> set[str]:
    """Distributions a runtime install has: pyproject's dependencies and all that they require,
    and the asset packages."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    todo = [_name(r) for r in project["dependencies"]]
    have = _assets()
    while todo:
        name = todo.pop()
        if name in have:
            continue
        have.add(name)
        for text in metadata.requires(name) or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):   # this Python, no extras
                todo.append(canonicalize_name(req.name))
    return have


def _module_level_imports(path: Path) -> set[str]:
    """Top-level packages a module imports when it is imported (not inside functions)."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_every_module_level_import_is_a_runtime_dependency():
    closure = _runtime_closure()
    providers = metadata.packages_distributions()
    missing = {}
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC).as_posix()
        if rel in OPTIONAL_MODULES:
            continue
        for module in _module_level_imports(path) - set(sys.stdlib_module_names) - {"lamina"}:
            dists = {canonicalize_name(d) for d in providers.get(module, [])}
            if not dists & closure:
                missing.setdefault(module, []).append(rel)
    assert not missing, f"imported at module level but not installed by scripts/setup.sh: {missing}"


def test_the_check_sees_a_test_only_import(tmp_path):
    # the check above would catch a runtime module importing a reference library
    module = tmp_path / "m.py"
    module.write_text("import torch\nfrom transformers import AutoModel\n\ndef f():\n    import pytest\n")
    imported = _module_level_imports(module)
    assert imported == {"torch", "transformers"}
    closure = _runtime_closure()
    assert "torch" in closure and "fastapi" in closure and "starlette" in closure
    assert "transformers" not in closure and "pytest" not in closure


def test_built_in_recipes_only_read_distributions_the_assets_list():
    # The clean-small corpus reads the code of installed distributions; pluggy and iniconfig once
    # came only with pytest, and the main job stopped at its data step on a runtime install.
    from lamina.data import data_recipe
    from lamina.data.fetch import needed_distributions
    from lamina.recipes import builtin_recipes
    wanted = {canonicalize_name(n) for name in builtin_recipes("data") for n in needed_distributions(data_recipe(name))}
    assert wanted and wanted <= _assets(), f"add {sorted(wanted - _assets())} to requirements/assets.txt"
