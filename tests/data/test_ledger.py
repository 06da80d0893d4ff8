"""The ledger at scale (issue 25): a finished ledger (indexes, summary tables, the digest kept)
answers exactly what an unfinished or older one computes on the fly; documents are found by
their path's last components; a record's own license counts before its source's."""

import json
import shutil
import sqlite3

import numpy as np
import pytest
from safetensors.numpy import save_file

from lamina.data import Ledger, build_corpus, report, trace, why
from lamina.data.ledger import INDEXES, SUMMARIES
from lamina.data.provenance import who_saw
from lamina.data.report import why_source
from lamina.errors import LaminaError

from .conftest import prose


@pytest.fixture
def corpus(make_source, config, tmp_path):
    docs = {f"a/doc{i}.txt": prose(i) for i in range(6)} | {"b/doc0.txt": prose(50), "b/Doc_0.txt": prose(51),
                                                            "dup.txt": prose(1), "short.txt": "Too short.\n"}
    build = build_corpus([make_source("mit-src", "MIT", docs), make_source("gpl-src", "GPL-3.0-only",
                                                                            {"g.txt": prose(100)})],
                         config=config, out=tmp_path / "c")
    build.ledger.close()
    return build.out


def _copy(corpus, to, *, finish: bool, records: bool = True):
    """The corpus with its ledger finished, or bare: without what finish() adds (and, as a ledger
    older than the table, without `records`)."""
    shutil.copytree(corpus, to)
    db = sqlite3.connect(to / Ledger.FILE)
    for name in [*SUMMARIES, "summary"]:
        db.execute(f"DROP TABLE IF EXISTS {name}")
    for line in filter(None, INDEXES.splitlines()):
        db.execute(f"DROP INDEX IF EXISTS {line.split()[5]}")
    if not records:
        db.execute("DROP TABLE records")
    db.commit()
    ledger = Ledger(db, to / Ledger.FILE)
    if finish:
        ledger.finish()
    ledger.close()
    return to


def _checkpoint(folder, at):
    n = sqlite3.connect(folder / Ledger.FILE).execute("SELECT MAX(id) FROM documents").fetchone()[0] + 1
    (at / "train_state").mkdir(parents=True)
    save_file({"doc_tokens": np.arange(n, dtype=np.int64) * 7}, str(at / "train_state" / "state.safetensors"))
    (at / "lamina.json").write_text(json.dumps({"made_by": {"data": {"data": str(folder)}}}))
    return at


def answers(folder, tmp_path) -> dict:
    db = sqlite3.connect(folder / Ledger.FILE)
    docs = db.execute("SELECT id, path, content_hash FROM documents ORDER BY id").fetchall()
    shards = db.execute("SELECT name, tokens FROM shards ORDER BY name").fetchall()
    sources = [s for (s,) in db.execute("SELECT id FROM sources")]
    run = _checkpoint(folder, tmp_path / f"run-{folder.name}")
    out = {"report": {k: v for k, v in report(folder).items() if k != "data"},
           "why_source": {s: {k: v for k, v in why_source(folder, s).items() if k != "data"} for s in sources},
           "trace": [trace(folder, name, offset) for name, tokens in shards for offset in (0, tokens // 2, tokens - 1)],
           "who_saw": {ref: [{k: v for k, v in row.items() if k not in ("checkpoint", "data")}
                             for row in who_saw(ref, [run])] for ref in [*sources, docs[0][2], "doc2.txt"]}}
    refs = [str(i) for i, _, _ in docs] + [p for _, p, _ in docs] + [h for _, _, h in docs if h]
    out["why"] = {ref: why(folder, ref) for ref in refs + ["doc0.txt", "doc3.txt"]}
    return out


def test_a_finished_ledger_answers_what_an_unfinished_or_older_one_computes(corpus, tmp_path):
    finished = _copy(corpus, tmp_path / "finished", finish=True)
    bare = _copy(corpus, tmp_path / "bare", finish=False)
    assert Ledger.open(finished).finished and not Ledger.open(bare).finished
    assert answers(finished, tmp_path) == answers(bare, tmp_path)
    older = _copy(corpus, tmp_path / "older", finish=False, records=False)     # no records table: equal digest
    assert Ledger.open(older).content_digest() == Ledger.open(finished).content_digest()
    Ledger(sqlite3.connect(older / Ledger.FILE), older / Ledger.FILE).finish()   # an older ledger, finished later
    assert Ledger.open(older).finished
    assert report(older)["by_source"] == report(finished)["by_source"]


def test_documents_by_the_last_components_of_their_path(corpus):
    def paths(ref):
        return [d["path"] for d in why(corpus, ref)]
    assert paths("doc0.txt") == ["a/doc0.txt", "b/doc0.txt"]
    assert paths("b/doc0.txt") == ["b/doc0.txt"] and paths("Doc_0.txt") == ["b/Doc_0.txt"]
    for ref in ("oc0.txt", "DOC0.TXT", "doc_0.txt", "%0.txt"):      # whole components, exactly: no wildcards
        with pytest.raises(LaminaError, match="no such document"):
            why(corpus, ref)


@pytest.mark.parametrize("finish", [True, False])
def test_a_records_own_license_counts_before_its_sources(corpus, tmp_path, finish):
    folder = _copy(corpus, tmp_path / "records", finish=False)
    db = sqlite3.connect(folder / Ledger.FILE)
    (a, tokens_a), (b, _) = db.execute("SELECT d.id, SUM(r.end - r.start) FROM documents d JOIN ranges r ON "
                                       "r.doc_id = d.id GROUP BY d.id ORDER BY d.id LIMIT 2").fetchall()
    db.executemany("INSERT INTO records VALUES (?,?,?,?)", [(a, "r1", "CC0-1.0", "https://example.org/1"),
                                                           (b, "r2", None, None)])      # b: no license of its own
    db.commit()
    ledger = Ledger(db, folder / Ledger.FILE)
    if finish:
        ledger.finish()
    ledger.close()
    before, after = report(corpus), report(folder)
    assert after["tokens_by_license"] == {"CC0-1.0": tokens_a, "MIT": before["tokens_by_license"]["MIT"] - tokens_a}
    assert after["by_license"]["CC0-1.0"]["documents"] == 1
    assert after["by_license"]["MIT"]["documents"] == before["by_license"]["MIT"]["documents"] - 1
    assert after["tokens_by_source"] == before["tokens_by_source"]
