"""The lm-eval adapter: lm-eval's own evaluator, driving a lamina model through the `lamina`
model type, gives the scores lamina's harness gives; rolling log-likelihood and generation work."""

import pytest

from lamina.eval import TASKS, EvalConfig, evaluate

lm_eval = pytest.importorskip("lm_eval")


@pytest.fixture(scope="module")
def lamina_lm(smollm2_llm):
    from lamina.eval.lm_eval_model import LaminaLM
    return LaminaLM(pretrained=smollm2_llm, batch_size=8)


def test_lamina_is_a_registered_lm_eval_model_type():
    import lamina.eval.lm_eval_model as adapter
    from lm_eval.api.registry import get_model
    assert get_model("lamina") is adapter.LaminaLM


@pytest.mark.slow
def test_lm_eval_evaluator_on_lamina_equals_lamina_harness(lamina_lm, smollm2_llm):
    from lm_eval.evaluator import evaluate as lm_evaluate
    from lamina.eval.lm_eval_model import reference_task
    out = lm_evaluate(lm=lamina_lm, task_dict={"arc_easy": reference_task("arc_easy"),
                                                "winogrande": reference_task("winogrande")}, limit=6)
    ours = evaluate(smollm2_llm, EvalConfig(tasks=("arc_easy", "winogrande"), limit=6))["results"]
    assert out["results"]["arc_easy"]["acc,none"] == ours["arc_easy"]["acc"]
    assert out["results"]["arc_easy"]["acc_norm,none"] == ours["arc_easy"]["acc_norm"]
    assert out["results"]["arc_easy"]["acc_stderr,none"] == pytest.approx(ours["arc_easy"]["acc_stderr"])
    assert out["results"]["winogrande"]["acc,none"] == ours["winogrande"]["acc"]


@pytest.mark.slow
def test_rolling_loglikelihood_and_greedy_generation_through_the_adapter(lamina_lm, smollm2_llm):
    import torch
    from lm_eval.api.instance import Instance
    text = "The llama is a domesticated South American camelid, widely used as a meat and pack animal."
    [ll] = lamina_lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)])
    ids = [smollm2_llm.tokenizer.bos_id] + smollm2_llm.tokenizer.encode(text)
    with torch.no_grad():
        logp = torch.log_softmax(smollm2_llm.model(torch.tensor([ids[:-1]])), -1)[0]
    assert ll == pytest.approx(float(logp.gather(1, torch.tensor(ids[1:])[:, None]).sum()), abs=1e-3)
    prompt = TASKS["gsm8k"].items(limit=1, num_fewshot=2)[0].requests[0][0]
    [reply] = lamina_lm.generate_until([Instance("generate_until", {}, (prompt, {"until": ["Q:"], "max_gen_toks": 48}), 0)])
    assert "Q:" not in reply and reply == smollm2_llm.generate(prompt, temperature=0, max_new_tokens=48).split("Q:")[0]
