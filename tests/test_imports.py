"""The import rules of shared/DESIGN.md, checked: data flows one way through the stages, and no
module imports itself back through others. Every import counts, the ones inside functions too
(a lazy import hides an arrow from a reader; it does not remove it).

Floors, from the ground up: the ground floor (errors, files, assets, gguf_file, progress, version,
dtypes, devices) imports nothing above it; `model` imports nothing of lamina at all; then tokenizer;
checkpoint and data; train and serve; post and eval; report; the speedrun and the CLI on top."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "lamina"

GROUND = {"errors", "files", "assets", "gguf_file", "progress", "version", "dtypes", "devices", "fields", "recipes"}
BELOW_TRAIN = {"ground", "model", "tokenizer", "checkpoint", "data"}
# stage -> the stages it may import (besides itself)
ALLOWED = {
    "ground": {"ground"},
    "model": set(),                                     # nothing else of lamina
    "tokenizer": {"ground"},
    "checkpoint": {"ground", "model", "tokenizer"},
    "data": {"ground", "tokenizer"},                    # never model, train or serve
    "train": BELOW_TRAIN,
    "serve": {"ground", "model", "tokenizer", "checkpoint"},   # never train, post or data
    "post": BELOW_TRAIN | {"train", "serve"},
    "eval": BELOW_TRAIN | {"serve"},
    "report": BELOW_TRAIN | {"train", "serve", "post", "eval"},
    "speedrun": BELOW_TRAIN | {"train", "serve", "post", "eval", "report"},
    "cli": BELOW_TRAIN | {"train", "serve", "post", "eval", "report", "speedrun"},   # only cli knows every stage
    "root": {"ground", "serve"},                        # `lamina.load`, `lamina.__version__`
}


def module_name(root: Path, path: Path) -> str:
    parts = [root.name, *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def stage(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "root"
    return "ground" if parts[1] in GROUND else parts[1]


def imports(root: Path, path: Path) -> list[tuple[str, int]]:
    """The lamina modules `path` imports, anywhere in it, with their line numbers."""
    package = module_name(root, path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    known = {module_name(root, p) for p in root.rglob("*.py")}
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name.split(".")[0] == root.name]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.split(".")[0] == root.name:
                target = node.module
            else:
                continue
            # `from . import clean` names a module; `from .build import X` a module's contents
            subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in known]
            found += [(m, node.lineno) for m in subs] or [(target, node.lineno)]
    return [(m, line) for m, line in found if m in known]


def import_graph(root: Path) -> dict[str, list[tuple[str, int]]]:
    return {module_name(root, p): imports(root, p) for p in sorted(root.rglob("*.py"))}


def forbidden_arrows(graph: dict[str, list[tuple[str, int]]]) -> list[str]:
    bad = []
    for module, targets in graph.items():
        here = stage(module)
        for target, line in targets:
            there = stage(target)
            if there != here and there not in ALLOWED.get(here, set()):
                bad.append(f"{module}:{line} imports {target} ({here} may not import {there})")
    return bad


def cycles(graph: dict[str, list[tuple[str, int]]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w, _ in graph.get(v, []):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_stage_imports_a_stage_it_must_not():
    assert forbidden_arrows(import_graph(SRC)) == []


def test_no_module_imports_itself_back_through_others():
    assert cycles(import_graph(SRC)) == []


def test_every_top_level_module_has_a_floor():
    for p in SRC.glob("*.py"):
        assert stage(module_name(SRC, p)) in ALLOWED, f"{p.name}: add it to GROUND or to ALLOWED"
    for p in SRC.iterdir():
        if p.is_dir() and (p / "__init__.py").is_file():
            assert p.name in ALLOWED or p.name in GROUND, f"{p.name}/: give the new stage its place in ALLOWED"


@pytest.fixture
def planted(tmp_path):
    """A small tree shaped like lamina's, with one forbidden arrow and one cycle planted in it."""
    root = tmp_path / "lamina"
    files = {
        "__init__.py": "",
        "errors.py": "class LaminaError(Exception): ...\n",
        "model/__init__.py": "from .llama import Transformer\n",
        "model/llama.py": "def helper():\n    from ..train.loop import train   # hidden in a function\n",
        "train/__init__.py": "",
        "train/loop.py": "from ..model import Transformer\nfrom ..errors import LaminaError\n",
        "data/__init__.py": "",
        "data/a.py": "from . import b\n",
        "data/b.py": "from .a import x\n",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_a_planted_forbidden_import_is_caught_even_inside_a_function(planted):
    assert forbidden_arrows(import_graph(planted)) == [
        "lamina.model.llama:2 imports lamina.train.loop (model may not import train)"]


def test_a_planted_cycle_is_caught(planted):
    assert ["lamina.data.a", "lamina.data.b"] in cycles(import_graph(planted))
