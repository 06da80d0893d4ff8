"""`lamina data who-saw`: which checkpoints consumed a source or a document, read from each
checkpoint's own consumed-data record, on a real pretraining run and a fine-tune of it."""

from __future__ import annotations

import json
from contextlib import closing

import pytest

from lamina.cli import main
from lamina.data.ledger import Ledger
from lamina.data.provenance import consumed, find_checkpoints, who_saw
from lamina.errors import LaminaError


@pytest.fixture(scope="module")
def runs(shakespeare_corpus, tmp_path_factory):
    """(pretraining run, its checkpoints at steps 2 and 4, an SFT run from step 4) on the
    Shakespeare corpus, with the debug preset: seconds."""
    from lamina.post.sft import sft, sft_config
    from lamina.post.synth import SynthConfig, synth
    from lamina.train import train, train_recipe
    root = tmp_path_factory.mktemp("provenance")
    result = train(train_recipe("debug", ["save_every=2", "eval_every=4", "keep_checkpoints=4"],
                                data=str(shakespeare_corpus), out=str(root / "pre"), max_steps=4), progress=False)
    synth(root / "chat.jsonl", SynthConfig(tasks=("arithmetic:1",), n=24))
    tuned = sft(sft_config(["seq_len=128", "batch_size=2"], model=str(result.checkpoint), data=(str(root / "chat.jsonl"),),
                           out=str(root / "sft"), max_steps=2), progress=False)
    return root / "pre", sorted((root / "pre" / "checkpoints").iterdir()), root / "sft", tuned.checkpoint


def test_who_saw_a_source_equals_each_checkpoints_own_record(runs, shakespeare_corpus):
    pre, checkpoints, _, _ = runs
    rows = {r["checkpoint"]: r for r in who_saw("shakespeare", [pre])}
    assert len(rows) == len(checkpoints) == 2
    for ck in checkpoints:
        made_by = json.loads((ck / "lamina.json").read_text())["made_by"]
        row = rows[str(ck.resolve())]
        assert row["matches"] == "source" and row["step"] == made_by["step"]
        assert row["tokens"] == made_by["data"]["tokens_by_source"]["shakespeare"] > 0
        assert row["inherited"] == [] and row["total"] == row["tokens"] and not row["note"]
    early, late = (rows[str(c.resolve())]["tokens"] for c in checkpoints)
    assert late > early                        # a later checkpoint has read more
    # a recount from the ledger: the tokens of every document of the source, from the record
    with closing(Ledger.open(shakespeare_corpus)) as ledger:
        ids = [i for (i,) in ledger.q("SELECT id FROM documents WHERE source_id = 'shakespeare'")]
    assert int(consumed(checkpoints[-1])[ids].sum()) == late


def test_a_document_by_its_hash_and_a_fine_tune_inherits(runs, shakespeare_corpus, capsys):
    pre, checkpoints, sft_run, tuned = runs
    counts = consumed(checkpoints[-1])
    with closing(Ledger.open(shakespeare_corpus)) as ledger:
        doc = int(counts.argmax())
        [(digest,)] = ledger.q("SELECT content_hash FROM documents WHERE id = ?", doc)
    rows = {r["checkpoint"]: r for r in who_saw(digest, [pre, sft_run])}
    assert rows[str(checkpoints[-1].resolve())]["tokens"] == int(counts[doc])
    assert rows[str(checkpoints[-1].resolve())]["matches"] == "document"
    # the chat model read none of it itself, but its base did
    chat = rows[str(tuned.resolve())]
    assert chat["tokens"] == 0 and chat["tool"] == "lamina sft"
    assert chat["inherited"][0]["checkpoint"] == str(checkpoints[-1].resolve())
    assert chat["inherited"][0]["tokens"] == chat["total"] == int(counts[doc])
    assert main(["data", "who-saw", "shakespeare", "--runs", str(pre), str(sft_run)]) == 0
    out = capsys.readouterr().out
    assert "who saw shakespeare" in out and "before it in" in out
    assert set(find_checkpoints([pre, sft_run])) == {*(c.resolve() for c in checkpoints), tuned.resolve()}


def test_unknown_refs_and_folders_are_one_error(runs, tmp_path, capsys):
    pre, *_ = runs
    with pytest.raises(LaminaError, match="names no source or document"):
        who_saw("no-such-source", [pre])
    with pytest.raises(LaminaError, match="no checkpoints"):
        who_saw("shakespeare", [tmp_path])
    assert main(["data", "who-saw", "shakespeare", "--runs", str(tmp_path / "absent")]) == 1
    assert "no such folder" in capsys.readouterr().err
