"""Decontamination against a real corpus built with lamina.data: an eval item planted in a training
source is flagged, the others are not, and the harness reports the clean-subset score beside the
full one."""

import pytest

from lamina.data import BuildConfig, build_corpus, folder_source
from lamina.eval import TASKS, EvalConfig, evaluate
from lamina.data.documents import corpus_documents
from lamina.eval.decontam import find_contamination


def prose(n: int, words: int = 80) -> str:
    """A distinct, clean paragraph (distinct enough that near-dedup keeps every one)."""
    import random
    rng = random.Random(n)
    vocab = ("the river ran past the old mill where the miller kept his accounts in a green book and "
             "every evening the children of the village came down to watch the water turn the wheel").split()
    vocab += [f"word{n}x{i}" for i in range(40)]
    return " ".join(rng.choice(vocab) for _ in range(words)).capitalize() + ".\n"


def write_docs(folder, docs: dict[str, str]):
    folder.mkdir(parents=True)
    for name, body in docs.items():
        (folder / name).write_text(body)
    return folder

PLANTED = 3     # the ARC-Easy item copied into a training document


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A user folder source whose second document quotes ARC-Easy item 3 (question and answer)
    inside ordinary prose, as a web page reprinting a quiz would."""
    item = TASKS["arc_easy"].items(limit=PLANTED + 1)[PLANTED]
    question, answer = item.requests[0][0], item.requests[item.gold][1]
    root = tmp_path_factory.mktemp("decontam")
    docs = {f"doc{i}.txt": prose(i) for i in range(5)}
    docs["quiz.txt"] = prose(10) + f"\nA quiz from class today. {question}{answer}\n" + prose(11)
    source = folder_source(write_docs(root / "src", docs), id="notes", license="MIT")
    build = build_corpus([source], out=root / "corpus",
                         config=BuildConfig(validation_fraction=0.0, shard_tokens=400))
    build.ledger.close()
    return root / "corpus"


def test_training_documents_are_read_back_from_the_shards_through_the_ledger(corpus):
    texts = [d.text for d in corpus_documents(corpus)]
    assert len(texts) == 6
    assert any("A quiz from class today." in t for t in texts)


def test_planted_eval_item_is_flagged_and_the_others_are_not(corpus):
    items = TASKS["arc_easy"].items(limit=30)
    hits = find_contamination([it.text for it in items], corpus, n=13)
    assert [i for i, h in enumerate(hits) if h] == [PLANTED]
    # the ledger names the document it came from
    from lamina.data import Ledger
    ledger = Ledger.open(corpus)
    assert ledger.document(hits[PLANTED][0])["path"].endswith("quiz.txt")
    ledger.close()


def test_an_item_shorter_than_n_words_counts_only_when_it_appears_whole(corpus):
    from lamina.eval.decontam import words
    doc = words(next(corpus_documents(corpus)).text)
    inside = " ".join(doc[4:9]).upper() + "!"          # case and punctuation do not hide it
    scrambled = " ".join(doc[4:9][::-1] + ["zebra"])
    assert [bool(h) for h in find_contamination([inside, scrambled], corpus, n=13)] == [True, False]


@pytest.mark.slow
def test_harness_reports_the_seen_share_and_the_clean_score_beside_the_full_one(corpus, smollm2_llm):
    out = evaluate(smollm2_llm, EvalConfig(tasks=("arc_easy",), limit=8, decontaminate=str(corpus)))
    result = out["results"]["arc_easy"]
    seen = result["contamination"]
    assert seen["contaminated"] == 1 and seen["fraction"] == 1 / 8 and seen["ngram"] == 13
    assert seen["clean"]["n"] == 7
    full = out["results"]["arc_easy"]["acc"] * 8
    planted_acc = full - seen["clean"]["acc"] * 7
    assert planted_acc in (0.0, 1.0)    # the clean score is the full score without exactly that item


def test_a_corpus_with_its_own_tokenizer_reads_back_its_documents(shakespeare_corpus):
    """A corpus that trained its own BPE (`bpe:N`, kept in DIR/tokenizer/) is read back with it."""
    docs = [d.text for d in corpus_documents(shakespeare_corpus)]
    assert docs and all(isinstance(text, str) for text in docs)
    assert sum("Enter" in text for text in docs) > len(docs) // 2      # stage directions: the plays, decoded
