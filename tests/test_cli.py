"""The command line, driven as a user would: generate, chat, convert, info."""

import hashlib
import io
import json

import pytest

from lamina.checkpoint import resolve
from lamina.cli import main

MODEL = "smollm2-135m-instruct"


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_greedy_generate_is_deterministic_and_streams_the_prompt_first(capsys):
    args = ("generate", MODEL, "The capital of France is", "--temperature", "0", "--max-new-tokens", "12")
    code, first, _ = _run(capsys, *args)
    assert code == 0
    assert first.startswith("The capital of France is") and len(first) > len("The capital of France is") + 5
    assert _run(capsys, *args)[1] == first


def test_generate_with_chat_template(capsys):
    code, out, _ = _run(capsys, "generate", MODEL, "What is the capital of France?", "--chat",
                        "--temperature", "0", "--max-new-tokens", "30")
    assert code == 0 and "Paris" in out


def test_chat_keeps_history_across_turns(capsys, monkeypatch, smollm2_llm):
    turns = ["My name is Ada. Say hello to me.", "What is my name?"]
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(turns) + "\n/exit\n"))
    code, out, err = _run(capsys, "chat", MODEL, "--temperature", "0", "--max-new-tokens", "24")
    assert code == 0
    replies = [part.removesuffix("you> ").strip() for part in out.split("assistant> ")[1:]]
    assert len(replies) == 2
    # the second reply is the model's answer to the whole conversation, not to the last line alone
    history = [{"role": "user", "content": turns[0]}, {"role": "assistant", "content": replies[0]},
               {"role": "user", "content": turns[1]}]
    expected = smollm2_llm.chat(history, temperature=0, max_new_tokens=24).strip()
    assert replies[1] == expected
    assert expected != smollm2_llm.chat(history[2:], temperature=0, max_new_tokens=24).strip()


def test_info_reports_architecture_parameters_and_hashes(capsys):
    code, out, _ = _run(capsys, "info", MODEL, "--json")
    info = json.loads(out)
    assert code == 0
    assert info["parameters"] == 134_515_008
    assert info["stored_dtypes"] == {"Q8_0": 1, "F32": 61, "Q4_1": 210}
    path, _ = resolve(MODEL)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert info["files"][path.name]["sha256"] == digest


@pytest.mark.slow
def test_convert_gguf_to_hf_and_back_generates_the_same_text(capsys, tmp_path):
    greedy = ("--temperature", "0", "--max-new-tokens", "10")
    _, reference, _ = _run(capsys, "generate", MODEL, "Llamas live in", *greedy)
    assert _run(capsys, "convert", MODEL, str(tmp_path / "hf"), "--to", "hf")[0] == 0
    assert _run(capsys, "generate", str(tmp_path / "hf"), "Llamas live in", *greedy)[1] == reference
    assert _run(capsys, "convert", str(tmp_path / "hf"), str(tmp_path / "m.gguf"), "--to", "gguf",
                "--dtype", "f32")[0] == 0
    assert _run(capsys, "generate", str(tmp_path / "m.gguf"), "Llamas live in", *greedy)[1] == reference


def test_bad_model_reference_is_one_clear_line(capsys):
    code, out, err = _run(capsys, "generate", "no/such/model", "hi")
    assert code == 1
    assert err.count("\n") == 1 and err.startswith("lamina: error: no/such/model")
    assert "Traceback" not in err
