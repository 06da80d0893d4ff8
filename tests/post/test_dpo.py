"""Preference training: the DPO, IPO and hinge losses equal TRL's DPOTrainer on the same batch and
weights, the reference is computed once (the base with adapters off under LoRA), `lamina dpo`
resumes bit-exact and records its data and base, and bad data or settings are one clear line."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch

from lamina.cli import main
from lamina.errors import LaminaError
from lamina.model import Transformer
from lamina.post.dpo import dpo_config, dpo_loss, read_pairs, reward_metrics, score_pairs

from .conftest import lamina_model, tiny_model_dir

# conversational pairs, as TRL takes them: a system message, a multi-turn prompt, a reply that
# starts with a newline (its first token merges with the template's)
PAIRS = [
    {"prompt": [{"role": "user", "content": "What is 2 + 3?"}],
     "chosen": [{"role": "assistant", "content": "2 + 3 = 5."}],
     "rejected": [{"role": "assistant", "content": "2 + 3 = 6, I believe."}]},
    {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"}],
     "chosen": [{"role": "assistant", "content": "Paris."}],
     "rejected": [{"role": "assistant", "content": "\n Lyon."}]},
    {"prompt": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
                {"role": "user", "content": "Count to three."}],
     "chosen": [{"role": "assistant", "content": "1, 2, 3"}],
     "rejected": [{"role": "assistant", "content": "1, 3, 2 🙂"}]},
]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two tiny Llamas with SmolLM2's tokenizer and chat template: a policy and a reference."""
    from lamina.tokenizer import load_tokenizer
    tok = load_tokenizer("smollm2-135m-instruct")
    root = tmp_path_factory.mktemp("dpo")
    return tiny_model_dir(root / "policy", tok, seed=1), tiny_model_dir(root / "reference", tok, seed=2), tok


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture(scope="module")
def trl_trainer(models, tmp_path_factory):
    """TRL's DPOTrainer on transformers' Llama holding the policy's weights, with a reference
    holding other weights; float32 throughout (TRL's own default is bf16 autocast)."""
    from datasets import Dataset
    from transformers import AutoTokenizer, LlamaForCausalLM
    from trl import DPOConfig as TRLConfig
    from trl import DPOTrainer
    policy, reference, _ = models
    return DPOTrainer(model=LlamaForCausalLM.from_pretrained(policy, dtype=torch.float32),
                      ref_model=LlamaForCausalLM.from_pretrained(reference, dtype=torch.float32),
                      processing_class=AutoTokenizer.from_pretrained(policy), train_dataset=Dataset.from_list(PAIRS),
                      args=TRLConfig(output_dir=str(tmp_path_factory.mktemp("trl")), beta=0.3, report_to=[],
                                     use_cpu=True, bf16=False, max_length=None, per_device_train_batch_size=len(PAIRS)))


@pytest.mark.parametrize("loss", ["sigmoid", "ipo", "hinge"])
def test_dpo_loss_and_rewards_equal_trls_on_the_same_batch_and_weights(models, trl_trainer, tmp_path, loss):
    """TRL's own tokenization, collator, log-probabilities, compute_loss and logged rewards."""
    policy, reference, tok = models
    trainer, beta = trl_trainer, trl_trainer.beta
    trainer.loss_types = [loss]             # what DPOTrainer reads from DPOConfig.loss_type, one trainer for all three
    _, pairs = read_pairs(write_jsonl(tmp_path / "pairs.jsonl", PAIRS), tok, 256)
    prepared = [trainer.train_dataset[i] for i in range(len(PAIRS))]
    for pair, theirs in zip(pairs, prepared):      # the same tokens, the same completions
        for side, key in ((pair.chosen, "chosen_ids"), (pair.rejected, "rejected_ids")):
            assert side.ids == theirs["prompt_ids"] + theirs[key]
            assert side.assistant == [False] * len(theirs["prompt_ids"]) + [True] * len(theirs[key])
    batch = dict(trainer.data_collator(prepared))
    trainer.model.train()
    with torch.no_grad():
        their_loss = float(trainer.compute_loss(trainer.model, batch))
        their_logps = [torch.stack(trainer.compute_ref_log_probs(m, batch), dim=1) for m in (trainer.model,
                                                                                          trainer.ref_model)]
    lengths = torch.tensor([p.lengths for p in pairs], dtype=torch.float32)
    # the loss of the same log-ratios, and TRL's logged rewards
    their_logratios = their_logps[0] - their_logps[1]
    assert float(dpo_loss(their_logratios, lengths, loss, beta).mean()) == pytest.approx(their_loss, rel=1e-6)
    logged = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    for name, values in reward_metrics(their_logratios, beta).items():
        assert float(values.mean()) == pytest.approx(logged[name], rel=1e-6, abs=1e-7), name
    # lamina's own log-probabilities, and its loss from them
    ours = [score_pairs(lamina_model(path), pairs, 2) for path in (policy, reference)]
    for mine, theirs in zip(ours, their_logps):
        assert torch.allclose(mine, theirs, rtol=0, atol=1e-4)
    assert float(dpo_loss(ours[0] - ours[1], lengths, loss, beta).mean()) == pytest.approx(their_loss, rel=1e-5)


def test_label_smoothing_makes_a_finite_margin_the_optimum():
    """cDPO: with a share e of labels assumed flipped, the loss stops pushing once the policy
    prefers the chosen side with probability 1 - e; plain DPO pushes on forever."""
    beta, e = 0.5, 0.1
    best = math.log((1 - e) / e) / beta                  # sigmoid(beta * delta) = 1 - e
    delta = torch.tensor([best, 0.0], requires_grad=True)
    logratios = torch.stack([delta, torch.zeros(2)], dim=1)
    lengths = torch.ones(2, 2)
    dpo_loss(logratios, lengths, "sigmoid", beta, label_smoothing=e).sum().backward()
    assert abs(float(delta.grad[0])) < 1e-6 and float(delta.grad[1]) < 0
    delta.grad = None
    dpo_loss(logratios, lengths, "sigmoid", beta).sum().backward()
    assert float(delta.grad[0]) < -1e-3


def write_pairs(path, n: int = 12):
    rows = [{"prompt": f"What is {i} + {i}?", "chosen": f"{i} + {i} = {2 * i}.", "rejected": f"{i} + {i} = {2 * i + 1}."}
            for i in range(n)]
    return write_jsonl(path, rows)


def dpo_args(model, data, out, *extra):
    return ["dpo", str(model), "--data", str(data), "--license", "MIT", "--out", str(out), "--seq-len", "96",
            "--batch-size", "4", "--quiet", "warmup_steps=0", "log_every=1", *extra]


class SequenceCounter:
    """Counts the sequences that go through a lamina Transformer's forward, by a PyTorch hook."""

    def __enter__(self):
        self.sequences = 0

        def count(module, args):
            if isinstance(module, Transformer):
                self.sequences += args[0].shape[0]
        self.handle = torch.nn.modules.module.register_module_forward_pre_hook(count)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


@pytest.fixture(scope="module")
def lora_run(models, tmp_path_factory):
    """A LoRA run of 4 steps of 4 pairs over 12 pairs, checkpoints at 2 and 4, its forward
    passes counted."""
    root = tmp_path_factory.mktemp("lora-dpo")
    data, out = write_pairs(root / "pairs.jsonl"), root / "run"
    args = dpo_args(models[0], data, out, "--max-steps", "4", "save_every=2", "lora=true", "lora_r=4", "lr=2e-2")
    with SequenceCounter() as counter:
        assert main(args) == 0
    return out, args, counter.sequences


def test_reference_is_computed_once_and_never_per_step(lora_run):
    out, args, sequences = lora_run
    # one reference pass over both sides of the 12 pairs, then only the policy: 4 steps x 4 pairs x 2 sides
    assert sequences == 2 * 12 + 4 * 4 * 2
    assert np.load(out / "reference_logps.npy").shape == (12, 2)
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    # at the first step the policy is the reference (up to the rounding of other batch shapes)
    assert steps[0]["rewards/margins"] == pytest.approx(0, abs=1e-5) and steps[0]["loss"] == pytest.approx(math.log(2))
    for s in steps:                                                    # TRL's figures, per step
        assert s["rewards/margins"] == pytest.approx(s["rewards/chosen"] - s["rewards/rejected"], abs=1e-6)
        assert 0 <= s["rewards/accuracies"] <= 1 and s["logps/chosen"] < 0 and s["logps/rejected"] < 0


def test_lora_reference_is_the_base_with_its_adapters_off(lora_run, models, tmp_path):
    from lamina.post.lora import adapters_disabled, load_adapter
    out, _, _ = lora_run
    _, pairs = read_pairs(write_pairs(tmp_path / "pairs.jsonl"), models[2], 97)
    reference = torch.from_numpy(np.load(out / "reference_logps.npy"))
    model = lamina_model(models[0])
    assert torch.equal(score_pairs(model, pairs, 4), reference)            # the base model's own
    load_adapter(model, out / "adapter")
    trained = score_pairs(model, pairs, 4)
    with adapters_disabled(model):
        assert torch.equal(score_pairs(model, pairs, 4), reference)        # no second copy needed
    assert not torch.allclose(trained, reference)
    margin = (trained - reference) @ torch.tensor([1.0, -1.0])
    assert float(margin.mean()) > 0                                        # chosen moved up against rejected


def test_dpo_resumed_from_a_checkpoint_ends_bit_exact_without_a_second_reference_pass(lora_run):
    from lamina.checkpoint import read_hf
    out, args, _ = lora_run
    finished = read_hf(out / "model").weights
    shutil.rmtree(out / "checkpoints" / "step-000004")
    with SequenceCounter() as counter:
        assert main([*args, "--resume"]) == 0
    assert counter.sequences == 2 * 4 * 2                                  # steps 3 and 4 only
    again = read_hf(out / "model").weights
    assert all(torch.equal(finished[k], again[k]) for k in finished)


def test_lamina_dpo_full_fine_tune_records_its_data_and_base(models, tmp_path, capsys):
    from lamina.files import sha256
    data = write_pairs(tmp_path / "pairs.jsonl")
    with data.open("a") as f:
        f.write(json.dumps({"prompt": "Hi", "chosen": "", "rejected": "Go away."}) + "\n")
    assert main(dpo_args(models[0], data, tmp_path / "run", "--max-steps", "2", "--loss", "ipo", "lr=1e-3")) == 0
    printed = capsys.readouterr().out
    assert "12 kept, 1 skipped: empty content 1 (first: record 13)" in printed
    made_by = json.loads((tmp_path / "run" / "checkpoints" / "step-000002" / "lamina.json").read_text())["made_by"]
    assert made_by["tool"] == "lamina dpo" and made_by["dpo_config"]["loss"] == "ipo"
    assert made_by["data"]["tokens_by_license"] == {"MIT": made_by["data"]["tokens"]} and made_by["data"]["tokens"] > 0
    assert made_by["base_model"]["weights_sha256"] == {"model.safetensors": sha256(models[0] / "model.safetensors")}
    assert made_by["data_files"][0]["skipped"] == {"empty content": 1}


def test_bad_data_or_settings_are_one_clear_line(models, tmp_path, capsys):
    chat = write_jsonl(tmp_path / "chat.jsonl", [{"messages": [{"role": "user", "content": "Hi"},
                                                                {"role": "assistant", "content": "Hello"}]}])
    assert main(dpo_args(models[0], chat, tmp_path / "run")) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "chat.jsonl: no usable preference records (not a record of the preference format" in err
    with pytest.raises(LaminaError, match=r"label_smoothing = 0.1 \(from the command line: label_smoothing=0.1\): "
                                          "applies to the sigmoid loss only, not ipo"):
        dpo_config(["loss=ipo", "label_smoothing=0.1"], model="m")
    with pytest.raises(LaminaError, match=r"beta = 0 \(from --beta\): must be positive"):
        dpo_config(beta=0, model="m")
    with pytest.raises(SystemExit):                                        # argparse: invalid choice
        main(dpo_args(models[0], write_pairs(tmp_path / "pairs.jsonl"), tmp_path / "run", "--loss", "kto"))
    assert "argument --loss: invalid choice: 'kto'" in capsys.readouterr().err
