"""The ledger: an SQLite file that says where every training token came from.

Tables: `sources` (id, kind, origin, SPDX license and where it was read, attribution, the policy's
decision and reason),
`documents` (source, path, content hash, byte and token counts, status, split, reason; status is
kept, rejected, quarantined (could not be read or decoded) or skipped (not read at all: a link out of
its folder, with no hash and 0 bytes)),
`verdicts` (every filter's verdict on every document, with its reason), `scrubs` (PII
replacements by kind), `shards` (file, split, dtype, tokens) and `ranges` (which token range of
which shard holds which document, its BOS included), `runs` (what built it, when), and `removals` (what `lamina data forget` took out of the corpus this
one was rebuilt from, why, when, and that corpus's digest). Rows are written in a deterministic
order, so the same inputs and seed give the same content."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

from ..errors import LaminaError

SCHEMA = """
CREATE TABLE sources (id TEXT PRIMARY KEY, kind TEXT, origin TEXT, license TEXT, license_from TEXT,
                      attribution TEXT, allowed INTEGER, reason TEXT);
CREATE TABLE documents (id INTEGER PRIMARY KEY, source_id TEXT REFERENCES sources(id), path TEXT,
                        content_hash TEXT, bytes INTEGER, tokens INTEGER, status TEXT, split TEXT,
                        reason TEXT);
CREATE TABLE verdicts (doc_id INTEGER REFERENCES documents(id), filter TEXT, passed INTEGER, reason TEXT);
CREATE TABLE scrubs (doc_id INTEGER REFERENCES documents(id), kind TEXT, count INTEGER);
CREATE TABLE shards (name TEXT PRIMARY KEY, split TEXT, dtype TEXT, tokens INTEGER);
CREATE TABLE ranges (shard TEXT REFERENCES shards(name), start INTEGER, end INTEGER,
                     doc_id INTEGER REFERENCES documents(id));
CREATE TABLE runs (id INTEGER PRIMARY KEY, recipe TEXT, config TEXT, started TEXT, finished TEXT);
CREATE TABLE removals (ref TEXT, what TEXT, documents INTEGER, reason TEXT, requested TEXT, from_corpus TEXT,
                       from_digest TEXT);
CREATE INDEX documents_by_path ON documents(path);
CREATE INDEX documents_by_hash ON documents(content_hash);
CREATE INDEX ranges_by_shard ON ranges(shard, start);
"""
REMOVAL_KEYS = ("ref", "what", "documents", "reason", "requested", "from_corpus", "from_digest")
# the content that must be identical for identical inputs and seed (runs hold wall-clock times)
CONTENT_TABLES = ("sources", "documents", "verdicts", "scrubs", "shards", "ranges")


class Ledger:
    FILE = "ledger.sqlite"

    def __init__(self, db: sqlite3.Connection, path: Path) -> None:
        self.db, self.path = db, path

    @classmethod
    def create(cls, path: str | Path) -> Ledger:
        path = Path(path)
        db = sqlite3.connect(path)
        db.executescript(SCHEMA)
        return cls(db, path)

    @classmethod
    def open(cls, data_dir: str | Path) -> Ledger:
        path = Path(data_dir) / cls.FILE
        if not path.is_file():
            raise LaminaError(f"{data_dir}: no {cls.FILE} here; build a corpus with `lamina data build clean-small --out DIR`")
        return cls(sqlite3.connect(f"file:{path}?mode=ro", uri=True), path)

    def close(self) -> None:
        self.db.close()

    # -- writing -----------------------------------------------------------------------------
    def add_source(self, source, allowed: bool, reason: str) -> None:
        self.db.execute("INSERT INTO sources VALUES (?,?,?,?,?,?,?,?)", (source.id, source.kind, source.origin,
                        source.license, source.license_from, source.attribution, int(allowed), reason))

    def add_document(self, doc_id: int, source_id: str, path: str, content_hash: str | None, nbytes: int,
                     status: str, reason: str, verdicts: list[tuple[str, bool, str]],
                     scrubs: dict[str, int]) -> None:
        self.db.execute("INSERT INTO documents VALUES (?,?,?,?,?,0,?,NULL,?)",
                        (doc_id, source_id, path, content_hash, nbytes, status, reason))
        self.db.executemany("INSERT INTO verdicts VALUES (?,?,?,?)",
                            [(doc_id, name, int(ok), why) for name, ok, why in verdicts])
        self.db.executemany("INSERT INTO scrubs VALUES (?,?,?)", [(doc_id, k, n) for k, n in sorted(scrubs.items())])

    def set_tokens(self, doc_id: int, tokens: int, split: str) -> None:
        self.db.execute("UPDATE documents SET tokens=?, split=? WHERE id=?", (tokens, split, doc_id))

    def add_shard(self, name: str, split: str, dtype: str, ranges: list[tuple[int, int, int]]) -> None:
        tokens = ranges[-1][1] if ranges else 0
        self.db.execute("INSERT INTO shards VALUES (?,?,?,?)", (name, split, dtype, tokens))
        self.db.executemany("INSERT INTO ranges VALUES (?,?,?,?)", [(name, s, e, d) for s, e, d in ranges])

    def add_run(self, recipe: str, config: str, started: str, finished: str) -> None:
        self.db.execute("INSERT INTO runs (recipe, config, started, finished) VALUES (?,?,?,?)",
                        (recipe, config, started, finished))

    def add_removal(self, removal: dict) -> None:
        self.db.execute("INSERT INTO removals VALUES (?,?,?,?,?,?,?)", tuple(removal[k] for k in REMOVAL_KEYS))

    def commit(self) -> None:
        self.db.commit()

    # -- reading -----------------------------------------------------------------------------
    def q(self, sql: str, *args) -> list[tuple]:
        return self.db.execute(sql, args).fetchall()

    def split_ranges(self, split: str) -> list[tuple[str, int, int, int]]:
        """(shard, start, end, doc id) of every document range in the `split` shards, in shard order."""
        return self.q("SELECT r.shard, r.start, r.end, r.doc_id FROM ranges r JOIN shards s ON s.name = r.shard "
                      "WHERE s.split = ? ORDER BY r.shard, r.start", split)

    def tokens_by(self, column: str) -> dict[str, int]:
        col = {"license": "s.license", "source": "s.id", "kind": "s.kind"}[column]
        rows = self.q(f"SELECT {col}, SUM(r.end - r.start) FROM ranges r JOIN documents d ON d.id = r.doc_id "
                      f"JOIN sources s ON s.id = d.source_id GROUP BY {col} ORDER BY {col}")
        return dict(rows)

    def tokens_by_license(self) -> dict[str, int]:
        return self.tokens_by("license")

    def tokens_by_source(self) -> dict[str, int]:
        return self.tokens_by("source")

    def rejected(self) -> list[dict]:
        """Documents kept out, grouped by source and reason."""
        rows = self.q("SELECT source_id, status, reason, COUNT(*), SUM(bytes) FROM documents WHERE status != 'kept' "
                      "GROUP BY source_id, status, reason ORDER BY source_id, COUNT(*) DESC, reason")
        return [{"source": s, "status": st, "reason": r, "documents": n, "bytes": b} for s, st, r, n, b in rows]

    def source(self, source_id: str) -> dict | None:
        keys = ("id", "kind", "origin", "license", "license_from", "attribution", "allowed", "reason")
        rows = self.q(f"SELECT {', '.join(keys)} FROM sources WHERE id=?", source_id)
        if not rows:
            return None
        return dict(zip(keys, rows[0]))

    def documents_named(self, ref: str) -> list[int]:
        """Ids of the documents `ref` names: a content sha256, a file on disk (hashed), or a path
        as recorded (whole, or its last components)."""
        digest = ref.lower() if len(ref) == 64 and all(c in "0123456789abcdef" for c in ref.lower()) else None
        if digest is None and Path(ref).is_file():
            digest = hashlib.sha256(Path(ref).read_bytes()).hexdigest()
        return [i for (i,) in self.q("SELECT id FROM documents WHERE content_hash=? OR path=? OR path LIKE ? "
                                     "ORDER BY id", digest or "", ref, f"%/{ref}")]

    def document(self, doc_id: int) -> dict:
        keys = ("id", "source_id", "path", "content_hash", "bytes", "tokens", "status", "split", "reason")
        row = self.q(f"SELECT {', '.join(keys)} FROM documents WHERE id=?", doc_id)
        if not row:
            raise LaminaError(f"no document {doc_id} in {self.path}")
        doc = dict(zip(keys, row[0]))
        doc["verdicts"] = [{"filter": f, "passed": bool(p), "reason": r}
                           for f, p, r in self.q("SELECT filter, passed, reason FROM verdicts WHERE doc_id=? "
                                                 "ORDER BY rowid", doc_id)]
        doc["scrubbed"] = dict(self.q("SELECT kind, count FROM scrubs WHERE doc_id=? ORDER BY kind", doc_id))
        return doc

    def removals(self) -> list[dict]:
        """What was forgotten on the way to this corpus, oldest first (none in a ledger older than the table)."""
        try:
            return [dict(zip(REMOVAL_KEYS, row)) for row in self.q("SELECT * FROM removals ORDER BY rowid")]
        except sqlite3.OperationalError:
            return []

    def content_digest(self) -> str:
        """sha256 over every content table's rows in order: equal digests, equal ledgers."""
        h = hashlib.sha256()
        for table in CONTENT_TABLES:
            for row in self.db.execute(f"SELECT * FROM {table} ORDER BY rowid"):
                h.update(repr(row).encode())
        return h.hexdigest()
