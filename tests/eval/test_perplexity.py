"""Perplexity and bits per byte: lm-eval's rolling windows, checked against a direct computation,
on a text file and on a corpus's validation shards."""

import math

import pytest
import torch

from lamina.errors import LaminaError
from lamina.eval import EvalConfig, Scorer, evaluate
from lamina.eval.perplexity import rolling_windows, score_documents, text_documents

TEXT = ("Llamas are social animals and live with others as a herd. Their wool is soft and contains "
        "only a small amount of lanolin. Llamas can learn simple tasks after a few repetitions.\n")


@pytest.mark.parametrize("n,window", [(1, 4), (7, 4), (8, 4), (9, 4), (30, 7), (5, 16)])
def test_rolling_windows_equal_lm_eval(n, window):
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
    tokens = list(range(100, 100 + n))
    theirs = [tuple(map(tuple, make_disjoint_window(w)))
              for w in get_rolling_token_windows(tokens, prefix_token=1, max_seq_len=window, context_len=1)]
    assert rolling_windows(tokens, 1, window) == theirs
    assert [t for _, cont in rolling_windows(tokens, 1, window) for t in cont] == tokens


def test_bits_per_byte_of_a_text_equals_the_direct_computation(smollm2_llm, tmp_path):
    path = tmp_path / "llamas.txt"
    path.write_text(TEXT)
    tok = smollm2_llm.tokenizer
    docs = text_documents(path, tok)
    small_windows = score_documents(Scorer(smollm2_llm.model, max_len=16), docs, tok.bos_id)
    ids = [tok.bos_id] + tok.encode(TEXT)
    with torch.no_grad():   # log-softmax in float64: exact given the logits (float32's is 2e-5 nats a token off)
        logp = torch.log_softmax(smollm2_llm.model(torch.tensor([ids[:-1]])).double(), -1)[0]
    nll = -float(logp.gather(1, torch.tensor(ids[1:])[:, None]).sum())
    whole = score_documents(Scorer(smollm2_llm.model), docs, tok.bos_id)
    assert whole["bits_per_byte"] == pytest.approx(nll / math.log(2) / len(TEXT.encode()), rel=1e-5)
    assert whole["perplexity"] == pytest.approx(math.exp(nll / (len(ids) - 1)), rel=1e-5)
    assert small_windows["perplexity"] > whole["perplexity"]     # 16-token windows see less context


def test_perplexity_on_a_corpus_validation_split_and_bad_paths(smollm2_llm, tmp_path):
    from lamina.data import BuildConfig, build_corpus, folder_source
    src = tmp_path / "src"
    src.mkdir()
    for i in range(6):
        (src / f"d{i}.txt").write_text(" ".join(f"{w}{i}" if j % 7 == 0 else w for j, w in
                                                enumerate((TEXT * 3).split())) + "\n")
    build_corpus([folder_source(src, id="llamas", license="MIT")], out=tmp_path / "c",
                 config=BuildConfig(validation_fraction=0.5, near_dedup=False)).ledger.close()
    out = evaluate(smollm2_llm, EvalConfig(perplexity=(str(tmp_path / "c"),)))["results"]["perplexity:c"]
    assert out["split"] == "validation" and out["n"] >= 1 and 0 < out["bits_per_byte"] < 3
    with pytest.raises(LaminaError, match="no such text file"):
        evaluate(smollm2_llm, EvalConfig(perplexity=(str(tmp_path / "missing.txt"),)))
