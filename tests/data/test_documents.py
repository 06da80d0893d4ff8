"""One reader of a built corpus's documents (`lamina.data.documents`), and every stage that reads a
corpus back — tokenizer training, perplexity, decontamination — reads the same documents through it."""

import json

import pytest

from lamina.cli import main
from lamina.data import BuildConfig, Ledger, build_corpus
from lamina.data.documents import corpus_documents, is_corpus
from lamina.errors import LaminaError
from lamina.eval.decontam import find_contamination
from lamina.eval.perplexity import validation_documents
from lamina.tokenizer import load_tokenizer

from .conftest import prose


@pytest.fixture
def mixed(make_source, tmp_path):
    """A corpus where mixing puts every dialogue document in twice."""
    sources = [make_source("talk", "MIT", {f"t{i}.txt": prose(i) for i in range(6)}, kind="dialogue"),
               make_source("notes", "MIT", {f"n{i}.txt": prose(50 + i) for i in range(6)})]
    build = build_corpus(sources, config=BuildConfig(shard_tokens=400, validation_fraction=0.25,
                                                     weights={"dialogue": 2.0}), out=tmp_path / "c")
    build.ledger.close()
    return tmp_path / "c"


def kept_documents(corpus, split: str) -> set[int]:
    """The ids of the documents the ledger says went into `split`."""
    ledger = Ledger.open(corpus)
    try:
        ids = ledger.q("SELECT id FROM documents WHERE status = 'kept' AND split = ? ORDER BY id", split)
    finally:
        ledger.close()
    return {i for (i,) in ids}


def test_each_document_comes_once_though_mixing_put_it_in_twice(mixed):
    ledger = Ledger.open(mixed)
    ranges = ledger.split_ranges("train")
    ledger.close()
    docs = list(corpus_documents(mixed, "train"))
    assert len(ranges) > len(docs)                                    # the copies are there ...
    assert sorted(d.id for d in docs) == sorted(kept_documents(mixed, "train"))   # ... each read once
    tok = load_tokenizer("smollm2-135m-instruct")
    assert all(d.text == tok.decode(d.tokens) and d.tokens[0] != tok.bos_id for d in docs)


def test_tokenizer_training_perplexity_and_decontamination_read_the_same_documents(mixed, tmp_path):
    train_texts = [d.text for d in corpus_documents(mixed, "train")]
    # decontamination: a training document's own words are found in exactly that document
    hits = find_contamination(train_texts, mixed, n=13)
    assert [len(set(h)) for h in hits] == [1] * len(train_texts)
    # perplexity reads the validation split through the same reader, each document once
    tok = load_tokenizer("smollm2-135m-instruct")
    assert [text for _, text in validation_documents(mixed, tok)] == \
        [d.text for d in corpus_documents(mixed, "validation")]
    # tokenizer training: the CLI hands the corpus's training documents to the trainer
    assert main(["tokenizer", "train", "--input", str(mixed), "--vocab-size", "600", "--special-slots", "16",
                 "--out", str(tmp_path / "tok"), "--quiet"]) == 0
    record = json.loads((tmp_path / "tok" / "lamina_tokenizer.json").read_text())
    assert record["config"]["corpora"] == [str(mixed)] and record["config"]["inputs"] == []


def test_a_corpus_is_recognised_and_another_tokenizer_is_refused(mixed, tmp_path):
    assert is_corpus(mixed) and not is_corpus(tmp_path)
    with pytest.raises(LaminaError, match="another tokenizer"):
        next(corpus_documents(mixed, "train", tokenizer=load_tokenizer("llama-3")))
