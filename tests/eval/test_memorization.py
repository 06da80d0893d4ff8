"""The memorization audits on a model lamina trained: canaries planted at 1, 4, 16 and 64
repetitions, and exposure rising with the count; extractable memorization finding the documents the
build repeated far more often than the validation documents the model never saw.

One small real run, shared by the tests: a corpus of 120 passages of a Shakespeare play, with the
canaries the build plants, cut with a 512-token BPE trained on it; the debug preset trained on it
for 800 steps (about 30 s on 2 cores)."""

from __future__ import annotations

import json

import pytest

from lamina.cli import main
from lamina.data import build_corpus, builtin
from lamina.data.build import BuildConfig
from lamina.data.canaries import read_canaries
from lamina.data.sources import RawDocument, Source
from lamina.errors import LaminaError

REPETITIONS = (1, 4, 16, 64)


def passages(n: int, words: int = 120) -> Source:
    """`n` consecutive passages of `words` words from the first play of the built-in Shakespeare."""
    plays = builtin("shakespeare")

    def read():
        text = next(iter(plays.documents())).data.decode(errors="ignore").split()[3000:]
        for i in range(n):
            yield RawDocument(path=f"passage-{i:03d}.txt", data=" ".join(text[words * i:words * (i + 1)]).encode())
    return Source(id="shakespeare-passages", kind="prose", origin=plays.origin, license=plays.license, read=read)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(corpus directory, model directory) of the small run."""
    from lamina.train import train, train_recipe
    root = tmp_path_factory.mktemp("memorization")
    build_corpus([passages(120)], out=root / "corpus",
                 config=BuildConfig(tokenizer="bpe:512", validation_fraction=0.1, near_dedup=False,
                                    canaries=REPETITIONS, canaries_each=2))
    result = train(train_recipe("debug", ["lr=1e-2", "eval_every=800", "save_every=800"], data=str(root / "corpus"),
                                out=str(root / "run"), max_steps=800), progress=False)
    return root / "corpus", result.checkpoint


def test_the_build_plants_canaries_in_training_only(trained):
    from lamina.data.ledger import Ledger
    corpus, _ = trained
    record = read_canaries(corpus)
    assert [c["repetitions"] for c in record["canaries"]] == [r for r in REPETITIONS for _ in range(2)]
    assert len({c["secret"] for c in record["canaries"]}) == 8 and record["secret_space"] == 10 ** 6
    ledger = Ledger.open(corpus)
    try:
        for c in record["canaries"]:
            [(doc, split, status)] = ledger.q("SELECT d.id, d.split, d.status FROM documents d WHERE d.source_id = ? "
                                              "AND d.path = ?", c["source"], f"{c['name']}.txt")
            assert (split, status) == ("train", "kept")
            copies = ledger.q("SELECT COUNT(*) FROM ranges WHERE doc_id = ?", doc)[0][0]
            assert copies == c["repetitions"]
        license = ledger.q("SELECT DISTINCT license FROM sources WHERE kind = 'canary'")
        assert license == [("CC0-1.0",)]
    finally:
        ledger.close()


def test_exposure_rises_with_repetitions(trained):
    from lamina.checkpoint import read_hf
    from lamina.eval.memorization import canary_exposure
    from lamina.model import from_state_dict
    corpus, model_dir = trained
    ck = read_hf(model_dir)
    result = canary_exposure(from_state_dict(ck.config, ck.weights), ck.tokenizer, corpus, candidates=1000)
    # measured within the 1001 secrets ranked: at most log2(1001) = 9.97, reached by the most repeated
    means = result["mean_exposure_by_repetitions"]
    assert list(means) == list(REPETITIONS)
    assert all(a <= b for a, b in zip(means.values(), list(means.values())[1:])), means
    assert means[1] < 2 and means[64] > 8
    assert result["max_exposure"] == pytest.approx(9.967, abs=1e-3)
    # extrapolated to the whole space of 10^6 secrets (Carlini et al.'s method): it keeps rising
    # past the cap, at most log2(10^6) = 19.9
    beyond = result["mean_exposure_extrapolated_by_repetitions"]
    assert all(a < b for a, b in zip(beyond.values(), list(beyond.values())[1:])), beyond
    assert beyond[1] < 3 and beyond[64] > 10


def test_extraction_finds_the_repeated_documents_not_the_control(trained, tmp_path, capsys):
    corpus, model_dir = trained
    assert main(["audit", str(model_dir), "--data", str(corpus), "--k", "32", "--m", "16",
                 "--candidates", "200", "--out", str(tmp_path / "audit.json")]) == 0
    shown = capsys.readouterr().out
    assert "exposure" in shown and "extractable" in shown
    audit = json.loads((tmp_path / "audit.json").read_text())
    extraction = audit["extraction"]
    assert (extraction["k"], extraction["m"]) == (32, 16)
    repeated = [v for copies, v in extraction["by_copies"].items() if int(copies) >= 4]
    rate = sum(v["extracted"] for v in repeated) / sum(v["sampled"] for v in repeated)
    control = extraction["by_split"]["validation"]
    assert control["sampled"] >= 8 and rate >= 0.5 and control["rate"] <= 0.1, (extraction["by_copies"], control)
    assert extraction["examples"] and extraction["examples"][0]["copies"] >= 4
    assert audit["exposure"]["mean_exposure_by_repetitions"]["64"] > audit["exposure"]["mean_exposure_by_repetitions"]["1"]


def test_bad_canary_settings_and_sources_are_refused(tmp_path):
    with pytest.raises(LaminaError, match="repetition counts"):
        BuildConfig(canaries=(0, 4))
    with pytest.raises(LaminaError, match="repeat"):
        BuildConfig(canaries=(4, 4))
    fake = Source(id="mine", kind="canary", origin="x", license="MIT", read=lambda: iter(()))
    with pytest.raises(LaminaError, match="the build's own"):
        build_corpus([fake], out=tmp_path / "c", config=BuildConfig(tokenizer="bpe:512"))
    assert not (tmp_path / "c").exists()
    with pytest.raises(LaminaError, match="no canaries"):
        read_canaries(tmp_path)
