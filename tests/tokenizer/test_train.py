"""`lamina tokenizer train`: byte-level BPE with Llama 3's pattern and special tokens, the same
tokenizer every time for the same input, written as a tiktoken rank file and a tokenizer.json that
transformers loads with the same ids; decode(encode(s)) == s for any Unicode."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lamina.cli import main
from lamina.errors import LaminaError
from lamina.tokenizer import load_tokenizer
from lamina.tokenizer.train import TokenizerTrainConfig, train_tokenizer

from .test_load import ARABIC, CJK, CODE, CORPUS, EMOJI, PROSE, RUSSIAN

TEXT = "\n\n".join([PROSE, CODE, ARABIC, RUSSIAN, CJK, EMOJI] * 8)
RECORDS = [{"text": PROSE.upper(), "id": 1}, {"text": CODE.replace("fib", "fibonacci"), "id": 2}] * 8


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    (root / "a.txt").write_text(TEXT)
    (root / "b.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    return root


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("trained") / "tok"
    train_tokenizer(TokenizerTrainConfig(inputs=(str(corpus / "a.txt"), str(corpus / "b.jsonl")), vocab_size=1200,
                                out=str(out), progress=False))
    return out


def test_training_writes_ranks_tokenizer_json_and_config(trained):
    assert sorted(p.name for p in trained.iterdir()) == [
        "lamina_tokenizer.json", "tokenizer.json", "tokenizer.model", "tokenizer_config.json"]
    tok = load_tokenizer(trained / "tokenizer.model")   # the rank file alone, read with Llama 3's conventions
    assert tok.encoding is not None and tok.vocab_size == 1200
    assert tok["<|begin_of_text|>"] == 1200 - 256 and tok["<|eot_id|>"] == 1200 - 256 + 9
    assert tok["<|reserved_special_token_245|>"] == 1199


def test_the_rank_file_and_tokenizer_json_give_the_same_ids(trained):
    fast, hf_engine = load_tokenizer(trained / "tokenizer.model"), load_tokenizer(trained)
    assert hf_engine.encoding is None and hf_engine.vocab_size == fast.vocab_size
    for text in CORPUS:
        assert fast.encode(text) == hf_engine.encode(text), text[:40]
        assert fast.encode(text, allowed_special="all") == hf_engine.encode(text, allowed_special="all")
    # what it learned: frequent words of the input are single tokens
    assert len(fast.encode(" llama", bos=False)) == 1


def test_a_trained_tokenizer_loads_in_transformers_with_the_same_ids(trained):
    from transformers import AutoTokenizer
    hf = AutoTokenizer.from_pretrained(trained)
    tok = load_tokenizer(trained / "tokenizer.model")
    for text in CORPUS:
        assert hf(text).input_ids == tok.encode(text, allowed_special="all"), text[:40]   # BOS too
    messages = [{"role": "user", "content": "Name a camelid."}]
    assert hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                  return_dict=False) == tok.encode(
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nName a camelid.<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n", bos=False, allowed_special="all")


def test_training_is_deterministic(corpus, trained, tmp_path):
    again = tmp_path / "again"
    train_tokenizer(TokenizerTrainConfig(inputs=(str(corpus / "a.txt"), str(corpus / "b.jsonl")), vocab_size=1200,
                                out=str(again), progress=False))
    for name in ("tokenizer.model", "tokenizer.json", "tokenizer_config.json"):
        assert (again / name).read_bytes() == (trained / name).read_bytes(), name


def test_cli_trains_from_a_directory(corpus, tmp_path, capsys):
    assert main(["tokenizer", "train", "--input", str(corpus), "--vocab-size", "600", "--special-slots", "16",
                 "--out", str(tmp_path / "tok"), "--quiet"]) == 0
    assert "600 tokens (584 BPE, 16 special)" in capsys.readouterr().out
    assert load_tokenizer(tmp_path / "tok").special_tokens["<|eot_id|>"] == 584 + 9
    assert main(["tokenizer", "encode", str(tmp_path / "tok"), "<|eot_id|>", "--special"]) == 0
    assert capsys.readouterr().out.strip() == "[584, 593]"


@pytest.mark.parametrize("argv, error", [
    (["--vocab-size", "511"], ("vocab size 511 is smaller than the 256 byte tokens plus 256 special tokens; "
                               "use --vocab-size 512 or more")),
    (["--vocab-size", "1000", "--special-slots", "4"], "--special-slots must be at least 12, for Llama 3's named special tokens"),
])
def test_bad_vocab_sizes_are_one_clear_error(corpus, tmp_path, capsys, argv, error):
    code = main(["tokenizer", "train", "--input", str(corpus), "--out", str(tmp_path / "x"), *argv])
    assert code == 1
    assert capsys.readouterr().err.strip() == f"lamina: error: {error}"
    assert not (tmp_path / "x").exists()


def test_bad_inputs_are_one_clear_error(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"body": "no text field"}\n')
    with pytest.raises(LaminaError, match="line 2 is not a JSON object with a 'text' string"):
        train_tokenizer(TokenizerTrainConfig(inputs=(str(bad),), vocab_size=600, out=str(tmp_path / "o"), progress=False))
    with pytest.raises(LaminaError, match="no such file"):
        train_tokenizer(TokenizerTrainConfig(inputs=(str(tmp_path / "missing.txt"),), vocab_size=600,
                                    out=str(tmp_path / "o"), progress=False))
    assert not (tmp_path / "o").exists()


@pytest.fixture(scope="module")
def engines(trained):
    return {"trained (tiktoken)": load_tokenizer(trained / "tokenizer.model"), "trained (HF)": load_tokenizer(trained),
            "llama-3": load_tokenizer("llama-3")}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=80))
def test_decode_inverts_encode_for_any_unicode(engines, text):
    for tok in engines.values():
        assert tok.decode(tok.encode(text)[1:]) == text
    assert engines["trained (tiktoken)"].encode(text) == engines["trained (HF)"].encode(text)
