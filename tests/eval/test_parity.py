"""lamina's scores equal lm-eval's (its HF transformers backend, on transformers' own reading of
the same SmolLM2-135M-Instruct GGUF) per item: every request's log-likelihood within float
tolerance and every item's acc/acc_norm the same. A few items per task here (CI budget); the
few-hundred-items comparison is `python -m bench.eval_parity` (README)."""

import pytest

from lamina.eval import TASKS, Scorer
from lamina.eval.harness import item_metrics, score_items

pytest.importorskip("lm_eval")

ITEMS = 3


@pytest.fixture(scope="module")
def hf_lm():
    from lamina.eval.lm_eval_model import hf_reference
    return hf_reference("smollm2-135m-instruct", batch_size=8)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["boolq", "piqa", "siqa", "hellaswag", "winogrande", "arc_easy",
                                  "arc_challenge", "openbookqa", "lambada", "mmlu_college_biology"])
def test_every_request_and_item_score_equals_lm_eval_hf(name, smollm2_llm, hf_lm):
    from lamina.eval.lm_eval_model import reference_scores
    if name.startswith("mmlu_"):
        items = [it for it in TASKS["mmlu"].items(limit=ITEMS) if it.block == name[5:]]
    else:
        items = TASKS[name].items(limit=ITEMS)
    ours = score_items(Scorer(smollm2_llm.model, batch_size=4), smollm2_llm, items)
    theirs = reference_scores(name, hf_lm, ITEMS)
    assert len(ours) == len(theirs) == ITEMS
    for item, mine, ref in zip(items, ours, theirs):
        for (ll, greedy), (ref_ll, ref_greedy) in zip(mine, ref["results"], strict=True):
            assert ll == pytest.approx(ref_ll, abs=2e-3, rel=1e-4)
            assert greedy == ref_greedy
        ours_metrics = item_metrics(item, mine)
        for metric, value in ref["metrics"].items():      # what lm-eval reports for this task
            if metric == "perplexity":   # per item lm-eval keeps the log-likelihood; exp(-mean) comes later
                assert float(value) == pytest.approx(mine[0][0], abs=2e-3, rel=1e-4)
            else:
                assert ours_metrics[metric] == float(value), metric
