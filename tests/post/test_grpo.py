"""GRPO: the loss of each type (grpo, dr_grpo, dapo, with and without the KL term) and the
group-normalised advantages equal TRL's GRPOTrainer's on the same completions and weights;
sampling through the KV-cache engine keeps the stop token; `lamina grpo` end to end writes a
checkpoint, metrics and the held-out curve, and resumes bit-exact."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from lamina.cli import main
from lamina.post import grpo as grpo_module
from lamina.post.grpo import GRPOConfig, sample
from lamina.post.grpo_loss import completion_batch, completion_logprobs, group_advantages, grpo_loss, pass_at_k
from lamina.serve.sampling import SamplingParams

from .conftest import lamina_model

QUESTIONS = ["What is 12 + 30?", "Reverse the word apple.", "Name a colour.", "What is 7 times 6?"]
GROUP = 4


@pytest.fixture(scope="module")
def trl_batch(base, tmp_path_factory):
    """TRL's GRPOTrainer (beta 0.1, two iterations, so it computes old and reference log-probs)
    samples groups for QUESTIONS and scores them; then its policy moves (noise on every weight), as
    after an update. Returns the trainer, its inputs, the rewards its reward function gave, and
    the moved policy as a model directory."""
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import GRPOConfig as TRLConfig
    from trl import GRPOTrainer
    path = base[0]
    out = tmp_path_factory.mktemp("trl")
    given: list[float] = []

    def reward_by_length(completions, **kwargs):     # varied, with ties, so some groups are all alike
        scores = [float(len(c[0]["content"]) % 3) for c in completions]
        given.extend(scores)
        return scores

    # bf16=False: transformers' TrainingArguments turns bf16 autocast on by default where the CPU has it
    args = TRLConfig(output_dir=str(out), report_to=[], use_cpu=True, bf16=False, num_generations=GROUP,
                     per_device_train_batch_size=len(QUESTIONS) * GROUP, max_completion_length=6, num_iterations=2,
                     beta=0.1, epsilon=0.2, epsilon_high=0.28, seed=0, logging_steps=1)
    trainer = GRPOTrainer(model=str(path), reward_funcs=reward_by_length, args=args,
                          processing_class=AutoTokenizer.from_pretrained(path),
                          train_dataset=Dataset.from_list([{"prompt": [{"role": "user", "content": q}]}
                                                           for q in QUESTIONS]))
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1     # what its training loop sets before a step
    rows = [{"prompt": [{"role": "user", "content": q}]} for q in QUESTIONS for _ in range(GROUP)]
    inputs = trainer._generate_and_score_completions(rows)
    # completions of different lengths, as if several had stopped early (same masks on both sides)
    n, c = inputs["completion_mask"].shape
    inputs["completion_mask"] = (torch.arange(c)[None] < 1 + torch.arange(n)[:, None] % c).long()
    inputs["num_items_in_batch"] = inputs["completion_mask"].sum()      # dapo's count of completion tokens
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    moved = out / "moved"
    trainer.model.save_pretrained(moved)
    return trainer, inputs, given, moved


def lamina_side(trl_batch, base):
    """lamina's batch of TRL's prompts and completions, and its log-probabilities of them under the
    moved policy and the reference (the base)."""
    _, inputs, _, moved = trl_batch
    prompts = [ids[m.bool()].tolist() for ids, m in zip(inputs["prompt_ids"], inputs["prompt_mask"])]
    completions = [ids[m.bool()].tolist() for ids, m in zip(inputs["completion_ids"], inputs["completion_mask"])]
    batch = completion_batch(prompts, completions)
    with torch.no_grad():
        new = completion_logprobs(lamina_model(moved), batch)[0]
        ref = completion_logprobs(lamina_model(base[0]), batch)[0]
    return batch, new, ref


def test_advantages_are_group_normalised_as_trls(trl_batch):
    _, inputs, given, _ = trl_batch
    ours = group_advantages(torch.tensor(given), GROUP)
    assert torch.allclose(ours, inputs["advantages"], atol=1e-5)
    alike = torch.tensor(given).view(-1, GROUP).std(dim=1) == 0
    assert torch.equal(ours.view(-1, GROUP)[alike], torch.zeros_like(ours.view(-1, GROUP)[alike]))


def test_reference_logprobs_equal_trls(trl_batch, base):
    _, inputs, _, _ = trl_batch
    batch, _, ref = lamina_side(trl_batch, base)
    mask = batch.mask
    assert torch.allclose(ref[mask], inputs["ref_per_token_logps"][:, :mask.shape[1]][mask], atol=1e-4)


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo"])
@pytest.mark.parametrize("beta", [0.0, 0.1])
def test_grpo_loss_equals_trls(trl_batch, base, loss_type, beta):
    """TRL's own `_compute_loss` (its log-probs of the moved policy, its clipping, KL and
    normalisation) against lamina's on the same completions, advantages and old log-probs."""
    trainer, inputs, _, _ = trl_batch
    trainer.loss_type, trainer.beta = loss_type, beta
    with torch.no_grad():
        theirs = float(trainer._compute_loss(trainer.model, inputs))
    batch, new, ref = lamina_side(trl_batch, base)
    C = batch.mask.shape[1]
    old = inputs["old_per_token_logps"][:, :C]
    ours = grpo_loss(new, old, inputs["advantages"], batch.mask, loss_type=loss_type, epsilon_low=0.2,
                     epsilon_high=0.28, max_new_tokens=6, beta=beta, ref_logps=ref)
    assert float(ours) == pytest.approx(theirs, rel=1e-4, abs=1e-6)
    assert trainer._metrics["train"]["clip_ratio/region_mean"][-1] > 0     # the clip was exercised


def test_pass_at_k_is_the_unbiased_estimator():
    assert pass_at_k(4, 0, 4) == 0.0 and pass_at_k(4, 1, 4) == 1.0
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(10, 3, 2) == pytest.approx(1 - (7 * 6) / (10 * 9))


def test_sampled_completions_keep_the_stop_token(base):
    from lamina.tokenizer import render_chat
    model, tok = lamina_model(base[0]).train(), base[2]
    prompt = render_chat(tok, [{"role": "user", "content": QUESTIONS[0]}])
    (free,) = sample(model, [prompt], SamplingParams(temperature=0, max_new_tokens=6), batch=4)
    stop = free[2]
    stopped = sample(model, [prompt, prompt], SamplingParams(temperature=0, max_new_tokens=6,
                                                             stop_token_ids=(stop,)), batch=4)
    assert stopped == [free[:free.index(stop) + 1]] * 2
    assert model.training                              # sampling leaves the training mode as it found it


def grpo_args(base_path, out, *extra):
    return ["grpo", str(base_path), "--task", "arithmetic:1", "--out", str(out), "--max-steps", "2",
            "--group-size", "4", "--prompts-per-step", "2", "--max-new-tokens", "8", "--quiet", "lr=1e-2",
            "rewards=['length', 'exact_answer']", "eval_every=1", "eval_problems=3", "pass_k=2", *extra]


@pytest.fixture
def length_reward(monkeypatch):
    """A reward any reply earns some of (a random tiny model never answers right), so the tiny
    runs below really move their weights."""
    monkeypatch.setitem(grpo_module.REWARDS, "length", lambda reply, problem: len(reply) / 40)


def test_lamina_grpo_writes_a_checkpoint_metrics_and_the_heldout_curve(base, tmp_path, capsys, length_reward):
    from lamina.checkpoint import read_hf
    assert main(grpo_args(base[0], tmp_path / "run", "lora=true", "beta=0.05", "micro_batch_size=4")) == 0
    printed = capsys.readouterr().out
    assert "step 0: held-out accuracy" in printed and "step 2: held-out accuracy" in printed
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2]
    for key in ("reward", "reward_std", "reward_length", "accuracy", "completion_length", "clip_fraction", "kl",
                "entropy"):
        assert all(key in r for r in steps), key
    assert steps[0]["reward_std"] > 0 and steps[1]["kl"] > 0
    evals = [r for r in rows if "heldout_accuracy" in r]
    assert [r["step"] for r in evals] == [0, 1, 2] and all("heldout_pass@2" in r for r in evals)
    assert (tmp_path / "run" / "heldout.png").is_file()
    made_by = json.loads((tmp_path / "run" / "checkpoints" / "step-000002" / "lamina.json").read_text())["made_by"]
    assert made_by["tool"] == "lamina grpo" and made_by["grpo_config"]["task"] == "arithmetic:1"
    assert made_by["data"]["tokens_by_license"] == {"Apache-2.0": made_by["data"]["tokens"]} and made_by["tokens"] > 0
    assert (tmp_path / "run" / "adapter" / "adapter_config.json").is_file()
    merged, plain = read_hf(tmp_path / "run" / "model").weights, read_hf(base[0]).weights
    assert any(not torch.equal(merged[k], plain[k]) for k in plain)


def test_grpo_resumed_from_a_checkpoint_ends_bit_exact(base, tmp_path, length_reward):
    from lamina.checkpoint import read_hf
    assert main(grpo_args(base[0], tmp_path / "straight", "eval_problems=0", "save_every=1")) == 0
    shutil.copytree(tmp_path / "straight", tmp_path / "stopped")
    shutil.rmtree(tmp_path / "stopped" / "checkpoints" / "step-000002")
    assert main(grpo_args(base[0], tmp_path / "stopped", "eval_problems=0", "save_every=1", "--resume")) == 0
    a = read_hf(tmp_path / "straight" / "checkpoints" / "step-000002").weights
    b = read_hf(tmp_path / "stopped" / "checkpoints" / "step-000002").weights
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], read_hf(base[0]).weights[k]) for k in a)


def test_a_config_that_cannot_work_is_refused_in_one_line():
    from lamina.fields import InvalidField
    with pytest.raises(InvalidField, match="group_size = 1: must be at least 2"):
        GRPOConfig(group_size=1)
    with pytest.raises(InvalidField, match="rewards"):
        GRPOConfig(rewards=("accuracy",))
    with pytest.raises(InvalidField, match="micro_batch_size = 3"):
        GRPOConfig(micro_batch_size=3)
