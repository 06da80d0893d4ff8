"""Decontamination against a real corpus built with lamina.data, and against post-training data
(chat files, a `lamina sft` run): an eval item planted in training data is flagged, the others
are not, and the harness reports the clean-subset score beside the full one."""

import json

import pytest

from lamina.cli import main
from lamina.data import BuildConfig, build_corpus, folder_source
from lamina.eval import TASKS, EvalConfig, evaluate
from lamina.data.documents import corpus_documents
from lamina.eval.decontam import corpus_texts, find_contamination
from lamina.post.documents import training_documents


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
    hits = find_contamination([it.text for it in items], corpus_texts(corpus), n=13)
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
    assert [bool(h) for h in find_contamination([inside, scrambled], corpus_texts(corpus), n=13)] == [True, False]


@pytest.mark.slow
def test_harness_reports_the_seen_share_and_the_clean_score_beside_the_full_one(corpus, smollm2_llm):
    out = evaluate(smollm2_llm, EvalConfig(tasks=("arc_easy",), limit=8, decontaminate=(str(corpus),)))
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


# ---- post-training data ----

def planted_chat(folder):
    """SFT data (OpenAI messages JSONL, MIT) whose record 3 asks ARC-Easy item PLANTED and answers it,
    as a chat dataset scraped from a quiz site would; the other records are ordinary chat."""
    item = TASKS["arc_easy"].items(limit=PLANTED + 1)[PLANTED]
    question, answer = item.requests[0][0], item.requests[item.gold][1]
    chats = [[{"role": "user", "content": f"Tell me something about {w}."},
              {"role": "assistant", "content": prose(i, 30)}] for i, w in enumerate(["rivers", "mills"])]
    chats.insert(2, [{"role": "user", "content": question}, {"role": "assistant", "content": answer.strip()}])
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "quiz-chat.jsonl"
    path.write_text("".join(json.dumps({"messages": m}) + "\n" for m in chats))
    (folder / "quiz-chat.jsonl.license").write_text("SPDX-License-Identifier: MIT\n")
    return path


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """A tiny Llama with SmolLM2's tokenizer fine-tuned for one step (`lamina sft`) on the planted
    chat data: (its run directory, the data file)."""
    from lamina.checkpoint import write_hf
    from lamina.model import ModelConfig, Transformer, init_weights, weights
    from lamina.tokenizer import load_tokenizer
    root = tmp_path_factory.mktemp("decontam-sft")
    tok = load_tokenizer("smollm2-135m-instruct")
    config = ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=176, vocab_size=tok.vocab_size,
                         max_seq_len=512, tie_embeddings=True, rope_theta=10000.0, bos_token_id=tok.bos_id,
                         eos_token_id=tok.eos_id)
    write_hf(root / "base", config, weights(init_weights(Transformer(config), seed=1)), tok)
    data = planted_chat(root / "chat")
    assert main(["sft", str(root / "base"), "--data", str(data), "--out", str(root / "run"), "--max-steps", "1",
                 "--seq-len", "512", "--batch-size", "2", "--quiet"]) == 0
    return root / "run", data


def test_an_eval_item_planted_in_sft_chat_data_is_flagged(tuned):
    run, data = tuned
    texts = [it.text for it in TASKS["arc_easy"].items(limit=30)]
    hits = find_contamination(texts, training_documents(data), n=13)
    assert [i for i, h in enumerate(hits) if h] == [PLANTED] and hits[PLANTED] == ["quiz-chat.jsonl#3"]
    # the run directory: the conversations its ledger says it trained on, read from the recorded file
    assert find_contamination(texts, training_documents(run), n=13) == hits


def test_eval_reports_the_score_without_the_item_planted_in_post_training_data(tuned, capsys, tmp_path):
    run, data = tuned
    model = next(p for p in (run / "checkpoints").iterdir() if p.is_dir())
    out = tmp_path / "results.json"
    assert main(["eval", str(model), "--tasks", "arc_easy", "--limit", "8", "--decontaminate", str(run),
                 "--out", str(out), "--quiet"]) == 0
    result = json.loads(out.read_text())["results"]["arc_easy"]
    seen = result["contamination"]
    assert seen["contaminated"] == 1 and seen["documents"] == ["quiz-chat.jsonl#3"]
    assert seen["clean"]["n"] == 7
    planted = result["acc"] * 8 - seen["clean"]["acc"] * 7
    assert planted == pytest.approx(round(planted)) and round(planted) in (0, 1)
    assert "seen" in capsys.readouterr().out.lower()          # the table says it, beneath the score


def test_training_data_that_is_none_of_the_three_kinds_is_one_clear_error(tmp_path):
    from lamina.errors import LaminaError
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(LaminaError, match="no ledger.sqlite, nor chat data"):
        EvalConfig(tasks=("arc_easy",), decontaminate=(str(tmp_path / "notes.txt"),))
    with pytest.raises(LaminaError, match="not training data"):
        list(training_documents(tmp_path))
