"""The ledger: an SQLite file that says where every training token came from.

Tables: `sources` (id, kind, origin, SPDX license and where it was read, attribution, the policy's
decision and reason),
`documents` (source, path, content hash, byte and token counts, status, split, reason; status is
kept, rejected, quarantined (could not be read or decoded) or skipped (not read at all: a link out of
its folder, with no hash and 0 bytes)),
`verdicts` (every filter's verdict on every document, with its reason), `scrubs` (PII
replacements by kind), `records` (for a document that is a record of a source whose records
name their own license: the record's id, SPDX license and origin), `shards` (file, split, dtype, tokens) and `ranges` (which token range of
which shard holds which document, its BOS included), `runs` (what built it, when), and `removals` (what `lamina data forget` took out of the corpus this
one was rebuilt from, why, when, and that corpus's digest). Rows are written in a deterministic
order, so the same inputs and seed give the same content.

At billions of tokens (tens of millions of documents) the questions lamina asks must not scan the
content: `finish()`, once the content is whole, adds the indexes lookups need and `summary_*`
tables derived from the content (counts by source, license and status; tokens; what was kept out,
by reason and by rule; scrubs; each source's runs of document ids; paths reversed, for lookups by
their last components) and the content digest. A ledger without them (older, or never finished)
answers the same, computing each on the fly. bench/ledger.py times the questions on 10 million
documents."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import numpy as np

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
CREATE TABLE records (doc_id INTEGER PRIMARY KEY REFERENCES documents(id), record_id TEXT, license TEXT,
                      origin TEXT);
CREATE TABLE runs (id INTEGER PRIMARY KEY, recipe TEXT, config TEXT, started TEXT, finished TEXT);
CREATE TABLE removals (ref TEXT, what TEXT, documents INTEGER, reason TEXT, requested TEXT, from_corpus TEXT,
                       from_digest TEXT);
CREATE INDEX documents_by_path ON documents(path);
CREATE INDEX documents_by_hash ON documents(content_hash);
CREATE INDEX ranges_by_shard ON ranges(shard, start);
"""
REMOVAL_KEYS = ("ref", "what", "documents", "reason", "requested", "from_corpus", "from_digest")
# the content that must be identical for identical inputs and seed (runs hold wall-clock times)
CONTENT_TABLES = ("sources", "documents", "verdicts", "scrubs", "records", "shards", "ranges")
# written by finish(): built once by sorting rather than row by row, and absent from older ledgers
INDEXES = """
CREATE INDEX IF NOT EXISTS verdicts_by_doc ON verdicts(doc_id);
CREATE INDEX IF NOT EXISTS scrubs_by_doc ON scrubs(doc_id);
"""
LICENSE = "COALESCE(rec.license, s.license)"      # a document's license: its record's own, else its source's
JOINS = "LEFT JOIN sources s ON s.id = d.source_id LEFT JOIN {records} rec ON rec.doc_id = d.id"
REASONS_LISTED = 10         # of each source and status in `rejected()`; dedup reasons name their twin, so most differ
# derived from the content, so not in CONTENT_TABLES: finish() writes each, a ledger without it computes it
SUMMARIES = {
    "summary_documents": f"SELECT d.source_id, {LICENSE} AS license, d.status, COUNT(*) AS documents, "
                         f"SUM(d.bytes) AS bytes FROM documents d {JOINS} GROUP BY 1, 2, 3",
    # ranges summed by document first: the documents are then read in id order, not shard order
    "summary_tokens": f"SELECT d.source_id, {LICENSE} AS license, SUM(g.tokens) AS tokens FROM (SELECT doc_id, "
                      f"SUM(end - start) AS tokens FROM ranges GROUP BY doc_id) g JOIN documents d ON d.id = g.doc_id "
                      f"{JOINS} GROUP BY 1, 2",
    "summary_rejected": f"SELECT source_id, status, CASE WHEN n <= {REASONS_LISTED} THEN reason END AS reason, "
                        f"CASE WHEN n <= {REASONS_LISTED} THEN 0 ELSE COUNT(*) END AS others, "
                        "SUM(documents) AS documents, SUM(bytes) AS bytes FROM ("
                        "SELECT source_id, status, reason, COUNT(*) AS documents, SUM(bytes) AS bytes, ROW_NUMBER() "
                        "OVER (PARTITION BY source_id, status ORDER BY COUNT(*) DESC, reason) AS n FROM documents "
                        f"WHERE status != 'kept' GROUP BY 1, 2, 3) GROUP BY 1, 2, MIN(n, {REASONS_LISTED + 1})",
    # each document kept out has exactly one failed verdict: the rule that stopped it; the rule's
    # status and example are its first document's (SQLite takes bare columns from the MIN() row)
    "summary_rules": "SELECT d.source_id, v.filter AS rule, d.status, COUNT(*) AS documents, SUM(d.bytes) AS bytes, "
                     "MIN(d.id) AS example FROM verdicts v JOIN documents d ON d.id = v.doc_id WHERE v.passed = 0 "
                     "GROUP BY 1, 2",
    "summary_reasons": "SELECT source_id, rule, reason, documents FROM (SELECT d.source_id, v.filter AS rule, "
                       "d.reason, COUNT(*) AS documents, ROW_NUMBER() OVER (PARTITION BY d.source_id, v.filter "
                       "ORDER BY COUNT(*) DESC, d.reason) AS n FROM verdicts v JOIN documents d ON d.id = v.doc_id "
                       "WHERE v.passed = 0 GROUP BY 1, 2, 3) WHERE n <= 5",
    "summary_scrubs": "SELECT kind, SUM(count) AS count FROM scrubs GROUP BY kind",
    # a build numbers documents source by source: one run of ids each
    "summary_spans": "SELECT source_id, MIN(id) AS first, MAX(id) AS last FROM (SELECT id, source_id, "
                     "id - ROW_NUMBER() OVER (PARTITION BY source_id ORDER BY id) AS run FROM documents) GROUP BY "
                     "source_id, run",
    "summary_paths": "SELECT reverse(path) AS rpath, id AS doc_id FROM documents ORDER BY 1, 2",
}
SUMMARY_TABLES = {"summary_paths": "(rpath TEXT, doc_id INTEGER, PRIMARY KEY (rpath, doc_id)) WITHOUT ROWID"}
EMPTY = {"records": "SELECT NULL AS doc_id, NULL AS record_id, NULL AS license, NULL AS origin LIMIT 0"}


def _reverse(text: str | None) -> str | None:
    return text[::-1] if text is not None else None


class Ledger:
    FILE = "ledger.sqlite"

    def __init__(self, db: sqlite3.Connection, path: Path) -> None:
        self.db, self.path = db, path
        db.create_function("reverse", 1, _reverse, deterministic=True)
        self.tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}

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
                     scrubs: dict[str, int], record=None) -> None:
        self.db.execute("INSERT INTO documents VALUES (?,?,?,?,?,0,?,NULL,?)",
                        (doc_id, source_id, path, content_hash, nbytes, status, reason))
        self.db.executemany("INSERT INTO verdicts VALUES (?,?,?,?)",
                            [(doc_id, name, int(ok), why) for name, ok, why in verdicts])
        self.db.executemany("INSERT INTO scrubs VALUES (?,?,?)", [(doc_id, k, n) for k, n in sorted(scrubs.items())])
        if record is not None:
            self.db.execute("INSERT INTO records VALUES (?,?,?,?)", (doc_id, record.id, record.license or None,
                                                                    record.origin))

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

    def finish(self) -> None:
        """Add the indexes and summary tables (see the module's docstring) and the content digest,
        and commit. Call it once the content is whole: the content tables are not written after it.
        Finishing again, or finishing an older ledger opened for writing, writes them afresh."""
        self.db.commit()
        self.db.executescript(INDEXES)
        self.db.execute("BEGIN")
        for name, sql in SUMMARIES.items():
            self.db.execute(f"DROP TABLE IF EXISTS {name}")
            if name in SUMMARY_TABLES:
                self.db.execute(f"CREATE TABLE {name} {SUMMARY_TABLES[name]}")
                self.db.execute(f"INSERT INTO {name} {self._sql(sql)}")
            else:
                self.db.execute(f"CREATE TABLE {name} AS {self._sql(sql)}")
        self.db.execute("DROP TABLE IF EXISTS summary")
        self.db.execute("CREATE TABLE summary (key TEXT PRIMARY KEY, value)")
        self.db.execute("INSERT INTO summary VALUES ('content_digest', ?)", (self._digest(),))
        self.db.commit()
        self.tables |= {*SUMMARIES, "summary"}

    @property
    def finished(self) -> bool:
        return "summary" in self.tables

    # -- reading -----------------------------------------------------------------------------
    def q(self, sql: str, *args) -> list[tuple]:
        return self.db.execute(sql, args).fetchall()

    def table(self, name: str) -> str:
        """`name` for a FROM clause: the table, or where this ledger lacks it (older, or not
        finished), a subquery giving the same rows."""
        if name in self.tables:
            return name
        return f"({EMPTY[name]})" if name in EMPTY else f"({self._sql(SUMMARIES[name])})"

    def _sql(self, sql: str) -> str:
        return sql.format(records=self.table("records"))

    def split_ranges(self, split: str) -> list[tuple[str, int, int, int]]:
        """(shard, start, end, doc id) of every document range in the `split` shards, in shard order."""
        return self.q("SELECT r.shard, r.start, r.end, r.doc_id FROM ranges r JOIN shards s ON s.name = r.shard "
                      "WHERE s.split = ? ORDER BY r.shard, r.start", split)

    def tokens_by(self, column: str) -> dict[str, int]:
        """Tokens in the shards (every copy) by license (a record's own, else its source's), source or kind."""
        col = {"license": "t.license", "source": "t.source_id", "kind": "s.kind"}[column]
        rows = self.q(f"SELECT {col}, SUM(t.tokens) FROM {self.table('summary_tokens')} t JOIN sources s "
                      f"ON s.id = t.source_id GROUP BY {col} ORDER BY {col}")
        return dict(rows)

    def tokens_by_license(self) -> dict[str, int]:
        return self.tokens_by("license")

    def tokens_by_source(self) -> dict[str, int]:
        return self.tokens_by("source")

    def rejected(self) -> list[dict]:
        """Documents kept out, grouped by source and reason: the commonest REASONS_LISTED reasons
        of each source and status, and the rest counted together ("N other reasons")."""
        rows = self.q(f"SELECT source_id, status, reason, others, documents, bytes FROM "
                      f"{self.table('summary_rejected')} ORDER BY source_id, others > 0, documents DESC, reason")
        return [{"source": s, "status": st, "reason": f"{others:,} other reasons" if others else r, "documents": n,
                 "bytes": b} for s, st, r, others, n, b in rows]

    def source(self, source_id: str) -> dict | None:
        keys = ("id", "kind", "origin", "license", "license_from", "attribution", "allowed", "reason")
        rows = self.q(f"SELECT {', '.join(keys)} FROM sources WHERE id=?", source_id)
        if not rows:
            return None
        return dict(zip(keys, rows[0]))

    def documents_named(self, ref: str) -> list[int]:
        """Ids of the documents `ref` names: a content sha256, a file on disk (hashed), or a path
        as recorded (whole, or its last components: the reversed paths that begin with "/ref" reversed)."""
        digest = ref.lower() if len(ref) == 64 and all(c in "0123456789abcdef" for c in ref.lower()) else None
        if digest is None and Path(ref).is_file():
            digest = hashlib.sha256(Path(ref).read_bytes()).hexdigest()
        tail = ref[::-1] + "/"
        return [i for (i,) in self.q(f"SELECT id FROM documents WHERE content_hash = ? UNION SELECT id FROM documents "
                                     f"WHERE path = ? UNION SELECT doc_id FROM {self.table('summary_paths')} "
                                     f"WHERE rpath >= ? AND rpath < ? ORDER BY 1", digest or "", ref, tail,
                                     tail[:-1] + "0")]      # "0" follows "/"

    def source_documents(self, source_id: str) -> np.ndarray:
        """Ids of a source's documents, ascending, from its runs of consecutive ids."""
        runs = self.q(f"SELECT first, last FROM {self.table('summary_spans')} WHERE source_id = ? ORDER BY first",
                      source_id)
        return np.concatenate([np.arange(a, b + 1, dtype=np.int64) for a, b in runs]) if runs else \
            np.zeros(0, np.int64)

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
        doc["record"] = self.record(doc_id)
        return doc

    def record(self, doc_id: int) -> dict | None:
        """A record's own id, license and origin (None: not a record, or a ledger older than the table)."""
        try:
            rows = self.q("SELECT record_id, license, origin FROM records WHERE doc_id=?", doc_id)
        except sqlite3.OperationalError:
            return None
        return dict(zip(("id", "license", "origin"), rows[0])) if rows else None

    def removals(self) -> list[dict]:
        """What was forgotten on the way to this corpus, oldest first (none in a ledger older than the table)."""
        try:
            return [dict(zip(REMOVAL_KEYS, row)) for row in self.q("SELECT * FROM removals ORDER BY rowid")]
        except sqlite3.OperationalError:
            return []

    def content_digest(self) -> str:
        """sha256 over every content table's rows in order: equal digests, equal ledgers. A
        finished ledger keeps the digest finish() computed, its content unchanged since."""
        if self.finished:
            return self.q("SELECT value FROM summary WHERE key = 'content_digest'")[0][0]
        return self._digest()

    def _digest(self) -> str:
        h = hashlib.sha256()
        for table in CONTENT_TABLES:
            if table not in self.tables:
                continue            # a table newer than the ledger (records): empty, as its rows would be
            rows = self.db.execute(f"SELECT * FROM {table} ORDER BY rowid")
            while batch := rows.fetchmany(1 << 16):          # one update a batch: the same digest, sooner
                h.update("".join(map(repr, batch)).encode())
        return h.hexdigest()
