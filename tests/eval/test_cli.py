"""`lamina eval`: lm-eval-shaped JSON, the paper-layout table, and one clear line for bad input."""

import json

import pytest

from lamina.cli import main


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main(["eval", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_unknown_task_is_one_clear_error(capsys):
    code, out, err = run(capsys, "smollm2-135m-instruct", "--tasks", "arc_easy,hellaswagg")
    assert code == 1 and out == ""
    assert err.startswith("lamina: error: unknown task 'hellaswagg'; known tasks:") and err.count("\n") == 1


def test_a_model_that_cannot_load_is_one_clear_error(capsys, tmp_path):
    code, _, err = run(capsys, str(tmp_path / "nothing-here"), "--tasks", "boolq")
    assert code == 1 and err.startswith("lamina: error: ") and err.count("\n") == 1
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all")
    code, _, err = run(capsys, str(bad), "--tasks", "boolq")
    assert code == 1 and err.startswith("lamina: error: ") and err.count("\n") == 1


def test_nothing_to_do_and_a_bad_corpus_are_clear_errors(capsys, tmp_path):
    code, _, err = run(capsys, "smollm2-135m-instruct")
    assert code == 1 and "nothing to evaluate" in err
    code, _, err = run(capsys, "smollm2-135m-instruct", "--tasks", "boolq", "--decontaminate", str(tmp_path))
    assert code == 1 and "no ledger.sqlite" in err


@pytest.mark.slow
def test_json_has_lm_eval_shape_with_standard_errors(capsys, tmp_path):
    out_file = tmp_path / "r.json"
    code, out, err = run(capsys, "smollm2-135m-instruct", "--tasks", "arc_easy", "boolq", "--limit", "4",
                         "--json", "--out", str(out_file))
    assert code == 0
    # stderr is not a terminal here: progress comes as plain lines, a start and an end per task
    lines = err.splitlines()
    assert lines[:2] == ["arc_easy: 0/4", lines[1]] and lines[1].startswith("arc_easy: 4/4 (100%), 0m")
    assert lines[2] == "boolq: 0/4" and lines[3].startswith("boolq: 4/4 (100%)") and len(lines) == 4
    results = json.loads(out)
    assert json.loads(out_file.read_text()) == results
    arc = results["results"]["arc_easy"]
    assert set(arc) == {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr", "n", "split"}
    assert arc["n"] == 4 and arc["split"] == "validation" and 0 <= arc["acc"] <= 1
    assert set(results["results"]["boolq"]) == {"acc", "acc_stderr", "n", "split"}
    assert results["config"]["model"] == "smollm2-135m-instruct" and results["config"]["limit"] == 4


def test_table_puts_models_in_rows_and_benchmarks_in_columns(capsys):
    from lamina.eval import render
    runs = [{"config": {"model": m}, "results": {
        "boolq": {"acc": a, "acc_stderr": 0.01, "n": 100, "split": "validation"},
        "hellaswag": {"acc": 0.3, "acc_norm": a, "acc_norm_stderr": 0.02, "n": 100, "split": "validation",
                      "contamination": {"ngram": 13, "contaminated": 5, "fraction": 0.05,
                                        "clean": {"acc_norm": a - 0.01, "n": 95}}}}}
            for m, a in (("model-a", 0.625), ("model-b", 0.5))]
    render(runs)
    out = capsys.readouterr().out
    assert "BoolQ" in out and "HellaSwag (acc_norm)" in out
    assert out.index("model-a") < out.index("model-b")
    assert "62.5 ±1.0" in out and "62.5 ±2.0" in out and "clean 61.5, 5.0% seen" in out


@pytest.mark.slow
def test_gsm8k_generates_until_the_next_question_and_scores_the_extracted_answer(smollm2_llm, monkeypatch):
    from lamina.eval import EvalConfig
    from lamina.eval.harness import aggregate, run_task
    from lamina.eval.metrics import extract_gsm8k
    from lamina.eval.scoring import Scorer
    from lamina.eval.tasks import TASKS
    import lamina.eval.harness as harness
    monkeypatch.setattr(harness, "GSM8K_MAX_NEW_TOKENS", 80)     # CI budget; lm-eval's is 256
    config = EvalConfig(tasks=("gsm8k",), limit=2, num_fewshot=2)
    run = run_task(smollm2_llm, Scorer(smollm2_llm.model), TASKS["gsm8k"], config, None)
    assert len(run.outputs) == 2 and all("Q:" not in o for o in run.outputs)
    for item, text, score in zip(run.items, run.outputs, run.scores):
        strict = extract_gsm8k(text)["strict-match"]
        assert score["exact_match"] == float(strict.rstrip(".").replace(",", "") == item.answer)
    result = aggregate(run)
    assert set(result) == {"exact_match", "exact_match_stderr", "exact_match_flexible",
                           "exact_match_flexible_stderr", "n", "split"} and result["n"] == 2


def test_progress_off_a_terminal_is_plain_lines_with_the_time_left(monkeypatch):
    import io
    import types

    from lamina import progress
    from lamina.eval import harness
    monkeypatch.setattr(progress, "EVERY_S", 0.0)        # a line at every advance
    now = [0.0]
    monkeypatch.setattr(progress, "time", types.SimpleNamespace(monotonic=lambda: now[0]))
    stream = io.StringIO()                               # not a terminal
    with harness.progress_bar(True, stream) as start:
        advance = start("mmlu", 10)
        now[0] = 600.0                                   # ten minutes of setup before the first item
        advance(4)
        now[0] = 630.0
        advance(3)                                       # 3 items in 30 s: the last 3 take 30 s more
        now[0] = 660.0
        advance(3)
    lines = stream.getvalue().splitlines()
    assert lines == ["mmlu: 0/10", "mmlu: 4/10 (40%), 10m00s elapsed",
                     "mmlu: 7/10 (70%), 10m30s elapsed, about 0m30s left", "mmlu: 10/10 (100%), 11m00s elapsed"]
    with harness.progress_bar(False, stream) as start:
        assert start is None
