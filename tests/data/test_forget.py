"""`lamina data forget`: the corpus built again without a document or a source (same recipe, same
seed), the removal and its reason in the new ledger, the old corpus untouched, and the checkpoints
that consumed the forgotten tokens listed for retraining. On a real recipe: a folder of the
user's own passages (CC0) beside a built-in package source, and the debug preset trained on it."""

from __future__ import annotations

import json
from contextlib import closing

import pytest

from lamina.cli import main
from lamina.data.documents import corpus_documents
from lamina.data.ledger import Ledger
from lamina.data.provenance import consumed
from lamina.errors import LaminaError

from eval.test_memorization import passages  # tests/ is on the path: its folders are packages


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(root, corpus, pretraining run): `lamina data build` of a recipe file, then 6 training steps."""
    from lamina.train import train, train_recipe
    root = tmp_path_factory.mktemp("forget")
    notes = root / "notes"
    notes.mkdir()
    for doc in passages(30).read():
        (notes / doc.path).write_bytes(doc.data)
    (root / "recipe.toml").write_text('name = "mine"\nsources = ["py:iniconfig"]\n'
                                      '[[folders]]\npath = "notes"\nid = "my-notes"\nlicense = "CC0-1.0"\nkind = "prose"\n'
                                      '[config]\ntokenizer = "bpe:512"\nvalidation_fraction = 0.1\nnear_dedup = false\n')
    assert main(["data", "build", str(root / "recipe.toml"), "--out", str(root / "corpus"), "--workers", "1",
                 "--quiet"]) == 0
    train(train_recipe("debug", ["save_every=6", "eval_every=6"], data=str(root / "corpus"), out=str(root / "run"),
                       max_steps=6), progress=False)
    return root, root / "corpus", root / "run"


def texts(corpus) -> list[str]:
    return [d.text for d in corpus_documents(corpus)]


def test_forgetting_a_document_rebuilds_without_it_and_records_why(built, capsys):
    root, corpus, run = built
    with closing(Ledger.open(corpus)) as ledger:
        before = ledger.content_digest()
        [(doc, digest)] = ledger.q("SELECT id, content_hash FROM documents WHERE path = 'passage-007.txt'")
        kept = ledger.q("SELECT COUNT(*) FROM documents WHERE status = 'kept'")[0][0]
    [checkpoint] = (run / "checkpoints").iterdir()
    seen = int(consumed(checkpoint)[doc])
    text = (root / "notes" / "passage-007.txt").read_text()
    assert main(["data", "forget", str(root / "notes" / "passage-007.txt"), "--data", str(corpus), "--reason",
                 "the author asked for it to be taken down", "--out", str(root / "c2"), "--runs", str(run),
                 "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "forgot document" in out and str(checkpoint.resolve()) in out
    new = root / "c2"
    with closing(Ledger.open(new)) as ledger:
        [(status, reason)] = ledger.q("SELECT status, reason FROM documents WHERE content_hash = ?", digest)
        assert status == "rejected" and "deny list" in reason
        assert ledger.q("SELECT COUNT(*) FROM documents WHERE status = 'kept'")[0][0] == kept - 1
        [removal] = ledger.removals()
    assert removal["reason"] == "the author asked for it to be taken down" and removal["what"] == "document"
    assert removal["from_digest"] == before and removal["documents"] == 1
    # nothing of it is left in the shards; every other document is; the recipe and seed are the same
    first_words = " ".join(text.split()[:12])
    assert not any(first_words in t for t in texts(new)) and any(first_words in t for t in texts(corpus))
    old_build, new_build = (json.loads((c / "build.json").read_text()) for c in (corpus, new))
    assert new_build["config"] == old_build["config"] and new_build["rebuild"] == old_build["rebuild"]
    assert new_build["policy"]["deny_hashes"] == [digest]
    # the corpus the checkpoint trained on is untouched: its digest still names it
    with closing(Ledger.open(corpus)) as ledger:
        assert ledger.content_digest() == before
    # the checkpoint that consumed it must be retrained
    assert main(["data", "forget", str(root / "notes" / "passage-007.txt"), "--data", str(corpus), "--reason", "again",
                 "--out", str(root / "c2b"), "--runs", str(run), "--json", "--quiet"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["retrain"] == [{"checkpoint": str(checkpoint.resolve()), "tokens": seen, "inherited": 0}] and seen > 0


def test_forgetting_a_source_and_then_another_keeps_both_removals(built, capsys):
    root, corpus, _ = built
    assert main(["data", "forget", "py:iniconfig", "--data", str(corpus), "--reason", "license found wrong",
                 "--out", str(root / "s1"), "--quiet"]) == 0
    assert "give --runs" in capsys.readouterr().out
    with closing(Ledger.open(root / "s1")) as ledger:
        statuses = ledger.q("SELECT DISTINCT status, reason FROM documents WHERE source_id = 'py:iniconfig'")
        assert statuses == [("rejected", "license: source py:iniconfig is on the deny list")]
        assert "py:iniconfig" not in ledger.tokens_by_source()
    assert main(["data", "forget", "passage-003.txt", "--data", str(root / "s1"), "--reason", "takedown",
                 "--out", str(root / "s2"), "--quiet"]) == 0
    with closing(Ledger.open(root / "s2")) as ledger:
        assert [(r["ref"], r["reason"]) for r in ledger.removals()] == [("py:iniconfig", "license found wrong"),
                                                                        ("passage-003.txt", "takedown")]
        assert "py:iniconfig" not in ledger.tokens_by_source()
    # the transparency report of a model trained on it says what was forgotten and why
    from lamina.report.render import _data_section
    from lamina.report.transparency import _corpus
    corpus_record = _corpus(root / "s2", None)
    lines = "\n".join(_data_section({"stages": [{"name": "pretraining", "data": {
        "tokens": 0, "documents": 0, "tokens_by_license": {}, "tokens_by_source": {}, "ledger_digest": ""},
        "corpus": corpus_record, "note": ""}]}, {}))
    assert "| source py:iniconfig |" in lines and "| license found wrong |" in lines and "| takedown |" in lines


def test_what_cannot_be_forgotten_is_one_clear_error(built, shakespeare_corpus, tmp_path):
    from lamina.data.forget import forget
    _, corpus, _ = built
    with pytest.raises(LaminaError, match="names no source or document"):
        forget(corpus, "no-such-thing.txt", reason="x", out=tmp_path / "x")
    with pytest.raises(LaminaError, match="--reason"):
        forget(corpus, "py:iniconfig", reason="  ", out=tmp_path / "y")
    with pytest.raises(LaminaError, match="deny_sources or deny_hashes"):   # built without a recipe record
        forget(shakespeare_corpus, "shakespeare", reason="x", out=tmp_path / "z")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists() and not (tmp_path / "z").exists()
