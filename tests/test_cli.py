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


def _subcommands(parser):
    """(name, parser) of every subcommand, nested ones (`data build`) too."""
    import argparse
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield name, sub
                for nested, subsub in _subcommands(sub):
                    yield f"{name} {nested}", subsub


def test_cli_sampling_defaults_are_the_configs_and_the_servers():
    from lamina.cli import _sampling, build_parser
    from lamina.serve.protocol import ChatBody, CompletionBody
    from lamina.serve.sampling import SamplingParams
    defaults = SamplingParams()
    for argv in (["generate", "M", "P"], ["chat", "M"]):
        assert SamplingParams(**_sampling(build_parser().parse_args(argv))) == defaults
    # a request that leaves temperature and top_p out samples as `lamina generate` and LLM.generate do
    chat = ChatBody(model="m", messages=[{"role": "user", "content": "hi"}])
    completion = CompletionBody(model="m", prompt="hi")
    assert (chat.temperature, chat.top_p) == (completion.temperature, completion.top_p) == \
        (defaults.temperature, defaults.top_p)


def test_serve_eval_and_tokenizer_flags_leave_the_defaults_to_their_configs():
    from lamina.cli import build_parser, eval_config, serve_config
    from lamina.eval import EvalConfig
    from lamina.serve import BatcherConfig
    from lamina.serve.api import ServeConfig
    parse = build_parser().parse_args
    assert serve_config(parse(["serve", "M"])) == ServeConfig(model_name="M")
    assert serve_config(parse(["serve", "M", "--max-concurrency", "2", "--timeout", "5"])) == \
        ServeConfig(model_name="M", request_timeout_s=5.0, engine=BatcherConfig(max_slots=2))
    assert eval_config(parse(["eval", "M", "--tasks", "boolq"])) == EvalConfig(tasks=("boolq",), progress=True)
    flags = parse(["tokenizer", "train", "--input", "x", "--vocab-size", "600", "--out", "o"])
    assert (flags.special_slots, flags.min_frequency, flags.text_field) == (None, None, None)
    assert parse(["speedrun"]).out is None and parse(["speedrun"]).recipe is None


def test_help_shows_each_default_as_its_config_holds_it(capsys):
    from lamina.cli import build_parser
    from lamina.serve import BatcherConfig, SamplingParams
    commands = dict(_subcommands(build_parser()))
    generate = " ".join(commands["generate"].format_help().split())
    assert f"nucleus: the likeliest tokens that hold this much probability (1: all) " \
           f"(default: {SamplingParams().top_p})" in generate
    assert f"(default: {SamplingParams().temperature})" in generate
    serve = " ".join(commands["serve"].format_help().split())
    assert f"(default: {BatcherConfig().max_slots})" in serve
    for name, sub in commands.items():       # every flag's help renders: each config it names exists
        assert sub.format_help(), name


def test_top_level_help_keeps_its_whole_description(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "calls a function of the stage it belongs to; a `LaminaError` ends in one clear line, not a traceback." in out
