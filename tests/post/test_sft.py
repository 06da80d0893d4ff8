"""Supervised fine-tuning: packing without cross-contamination, the loss equal to TRL's SFT loss on
the same batch and weights, and `lamina sft` end to end — a model directory that transformers and
`lamina chat` load, with its chat template and the provenance of its data and base."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lamina.cli import main
from lamina.errors import LaminaError
from lamina.model import from_state_dict
from lamina.model.loss import IGNORE_INDEX
from lamina.post.chat_data import Tokenized, render_with_mask
from lamina.post.packing import epoch_rows, fill_rows, pack
from lamina.post.sft import SFTConfig, file_license

from .conftest import lamina_model
from .test_chat_data import CONVERSATIONS, SMOLLM2_WITH_GENERATION


def examples(tok) -> list[Tokenized]:
    return [Tokenized(*render_with_mask(tok, c)) for c in CONVERSATIONS]


def nats(model, batch) -> tuple[float, int]:
    """Summed cross-entropy over a packed batch's trained targets, and their count."""
    with torch.no_grad():
        loss = model(batch.tokens, positions=batch.positions, mask=batch.mask, targets=batch.targets)
    return float(loss) * batch.trained, batch.trained


def test_a_packed_row_computes_what_its_conversations_compute_one_at_a_time(base):
    model, chats = lamina_model(base[0]), examples(base[2])
    packed = pack([chats], seq_len=256)
    assert packed.positions[0, :len(chats[0].ids) - 1].tolist() == list(range(len(chats[0].ids) - 1))
    assert packed.positions[0, len(chats[0].ids) - 1] == 0                  # restarts for the next one
    together, count = nats(model, packed)
    alone = [nats(model, pack([[c]], seq_len=256)) for c in chats]
    assert count == sum(n for _, n in alone)
    assert together == pytest.approx(sum(s for s, _ in alone), rel=1e-5)
    # no conversation sees another: change the first one's tokens, the others' logits stay
    changed = pack([[Tokenized([1] + [42] * (len(chats[0].ids) - 1), chats[0].assistant), *chats[1:]]], 256)
    with torch.no_grad():
        a = model(packed.tokens, positions=packed.positions, mask=packed.mask)
        b = model(changed.tokens, positions=changed.positions, mask=changed.mask)
    later = packed.segments[0] >= 1
    assert torch.allclose(a[0, later], b[0, later], atol=1e-5)
    assert not torch.allclose(a[0, ~later], b[0, ~later])


def test_labels_are_ignored_off_the_assistant_turns_and_across_boundaries(base):
    chats = examples(base[2])
    packed = pack([chats[:2]], seq_len=128)
    n0 = len(chats[0].ids) - 1
    assert packed.targets[0, n0 - 1] != IGNORE_INDEX          # the first conversation's last target is its own
    assert packed.tokens[0, n0] == chats[1].ids[0]             # the next starts fresh, with nothing predicting it
    trained = (packed.targets[0] != IGNORE_INDEX).sum()
    assert trained == sum(sum(c.assistant[1:]) for c in chats[:2])
    assert (packed.targets[0, packed.segments[0] < 0] == IGNORE_INDEX).all()
    assert packed.segments[0, n0 - 1] == 0 and packed.segments[0, n0] == 1


def test_rows_hold_every_conversation_once_a_pass_in_an_order_fixed_by_the_seed():
    lengths = [5, 9, 3, 7, 2, 8, 1, 10, 4]
    rows = fill_rows(lengths, 10, range(len(lengths)))
    assert sorted(i for r in rows for i in r) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in r) <= 10 for r in rows)
    # each into the fullest row with room: 3 joins 5 (not the 9's row), 1 fills the 9's row, 4 fits nowhere
    assert rows == [[0, 2, 4], [1, 6], [3], [5], [7], [8]]
    chats = [Tokenized(list(range(n + 1)), [True] * (n + 1)) for n in lengths]
    assert epoch_rows(chats, 10, seed=3, epoch=1) == epoch_rows(chats, 10, seed=3, epoch=1)
    assert epoch_rows(chats, 10, seed=3, epoch=0) != epoch_rows(chats, 10, seed=3, epoch=1)


def test_sft_loss_and_labels_equal_trls_on_the_same_batch_and_weights(base, tmp_path):
    """TRL's SFTTrainer with assistant_only_loss (its own tokenization, labels, collator and
    compute_loss) on transformers' Llama holding the same weights."""
    from datasets import Dataset
    from transformers import AutoTokenizer, LlamaForCausalLM
    from trl import SFTConfig as TRLConfig
    from trl import SFTTrainer
    path, _, tok = base
    hf_tok = AutoTokenizer.from_pretrained(path)
    hf_tok.chat_template = SMOLLM2_WITH_GENERATION
    trainer = SFTTrainer(model=LlamaForCausalLM.from_pretrained(path, dtype=torch.float32),
                         processing_class=hf_tok,
                         train_dataset=Dataset.from_list([{"messages": c} for c in CONVERSATIONS]),
                         args=TRLConfig(output_dir=str(tmp_path), assistant_only_loss=True, report_to=[],
                                        use_cpu=True, max_length=None, per_device_train_batch_size=3))
    chats = examples(tok)
    prepared = [trainer.train_dataset[i] for i in range(len(chats))]
    for c, theirs in zip(chats, prepared):
        assert theirs["labels"] == [i if m else IGNORE_INDEX for i, m in zip(c.ids, c.assistant)]
    trainer.model.train()         # dropout is 0: train mode only as in training
    with torch.no_grad():
        theirs = float(trainer.compute_loss(trainer.model, dict(trainer.data_collator(prepared))))
    packed = pack([chats], seq_len=256)
    ours, _ = nats(lamina_model(base[0]), packed)
    assert ours / packed.trained == pytest.approx(theirs, rel=1e-5)
    unpacked = pack([[c] for c in chats], seq_len=128)            # one a row, padded, as TRL's batch
    assert nats(lamina_model(base[0]), unpacked)[0] / unpacked.trained == pytest.approx(theirs, rel=1e-5)


def write_chat(path, n: int = 24):
    rows = [{"messages": [{"role": "user", "content": f"What is {i} + {i}?"},
                          {"role": "assistant", "content": f"{i} + {i} = {2 * i}."}]} for i in range(n)]
    rows.append({"messages": [{"role": "user", "content": "no reply"}]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def sft_args(base_path, data, out, *extra):
    return ["sft", str(base_path), "--data", str(data), "--license", "MIT", "--out", str(out), "--seq-len", "96",
            "--batch-size", "4", "--quiet", "lr=3e-3", "warmup_steps=0", "log_every=1", *extra]


def test_lamina_sft_writes_a_chat_model_with_its_template_and_provenance(base, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lamina.checkpoint import read_hf
    from lamina.files import sha256
    from lamina.serve import load
    from lamina.tokenizer import render_chat
    data = write_chat(tmp_path / "chat.jsonl")
    assert main(sft_args(base[0], data, tmp_path / "run", "--max-steps", "6", "save_every=3")) == 0
    printed = capsys.readouterr().out
    assert "24 kept, 1 skipped: no assistant turn 1 (first: record 25)" in printed
    model_dir = tmp_path / "run" / "checkpoints" / "step-000006"
    assert f"model: {model_dir}" in printed
    steps = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
             if '"loss"' in line]
    assert len(steps) == 6 and steps[-1]["loss"] < steps[0]["loss"]

    made_by = json.loads((model_dir / "lamina.json").read_text())["made_by"]
    assert made_by["tool"] == "lamina sft"
    trained = made_by["data"]["tokens"]          # every id of every conversation seen, the last one included
    assert trained == made_by["tokens"] + sum(step["conversations"] for step in steps)
    assert made_by["data"]["tokens_by_source"] == {"chat.jsonl": trained}
    assert made_by["data"]["tokens_by_license"] == {"MIT": trained}
    assert made_by["base_model"]["weights_sha256"] == {"model.safetensors": sha256(base[0] / "model.safetensors")}
    assert made_by["data_files"][0]["skipped"] == {"no assistant turn": 1}

    messages = [{"role": "user", "content": "What is 3 + 3?"}]
    hf_tok = AutoTokenizer.from_pretrained(model_dir)
    llm = load(str(model_dir))
    assert render_chat(llm.tokenizer, messages) == hf_tok.apply_chat_template(messages, add_generation_prompt=True,
                                                                             tokenize=True, return_dict=False)
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    ids = torch.tensor([render_chat(llm.tokenizer, messages)])
    ours = from_state_dict(read_hf(model_dir).config, read_hf(model_dir).weights)
    with torch.no_grad():
        assert torch.allclose(ours(ids), hf(ids).logits, atol=1e-4)


def test_sft_resumed_from_a_checkpoint_ends_bit_exact(base, tmp_path):
    from lamina.checkpoint import read_hf
    data = write_chat(tmp_path / "chat.jsonl")
    assert main(sft_args(base[0], data, tmp_path / "straight", "--max-steps", "4")) == 0
    assert main(sft_args(base[0], data, tmp_path / "stopped", "--max-steps", "4", "save_every=2")) == 0
    stopped = tmp_path / "stopped" / "checkpoints"
    import shutil
    shutil.rmtree(stopped / "step-000004")
    assert main(sft_args(base[0], data, tmp_path / "stopped", "--max-steps", "4", "save_every=2", "--resume")) == 0
    a = read_hf(tmp_path / "straight" / "checkpoints" / "step-000004").weights
    b = read_hf(stopped / "step-000004").weights
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_two_gloo_ranks_train_as_one_process_does(base, tmp_path):
    """Rows with very different numbers of assistant tokens on the two ranks: the loss is still
    the mean over the whole batch's tokens (not the mean of each rank's mean), so the curve and
    the weights are one process's."""
    import os
    import subprocess
    import sys

    from lamina.checkpoint import read_hf
    rows = [{"messages": [{"role": "user", "content": f"What is {i} + {i}?"},
                          {"role": "assistant", "content": f"{i} + {i} = {2 * i}." + " Yes." * (7 * (i % 2))}]}
            for i in range(16)]
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = sft_args(base[0], data, tmp_path / "one", "--max-steps", "3", "lr=1e-3", "compile=off")
    assert main(args) == 0
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "lamina.cli"]
    two = [a if a != str(tmp_path / "one") else str(tmp_path / "two") for a in args]
    subprocess.run([*torchrun, *two], check=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)

    def curve(run):
        return [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert len(curve(tmp_path / "two")) == 3
    np.testing.assert_allclose(curve(tmp_path / "two"), curve(tmp_path / "one"), rtol=1e-5)
    a, b = (read_hf(tmp_path / run / "checkpoints" / "step-000003").weights for run in ("one", "two"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


def test_data_without_a_license_is_refused_unless_one_is_given_or_beside_it(tmp_path, base, capsys):
    data = write_chat(tmp_path / "chat.jsonl")
    args = [a for a in sft_args(base[0], data, tmp_path / "run") if a not in ("--license", "MIT")]
    assert main(args) == 1
    assert "chat.jsonl: no license; give one with --license" in capsys.readouterr().err
    (tmp_path / "chat.jsonl.license").write_text("SPDX-FileCopyrightText: 2025 someone\nSPDX-License-Identifier: CC0-1.0\n")
    assert file_license(data, None) == ("CC0-1.0", str(tmp_path / "chat.jsonl.license"))
    assert file_license(data, "Apache-2.0") == ("Apache-2.0", "given with --license")
    with pytest.raises(LaminaError, match="not an SPDX license"):
        file_license(data, "whatever I like")


def test_data_under_a_license_the_policy_refuses_is_refused_before_anything_is_written(tmp_path, base, capsys):
    """Post-training data passes pretraining's policy: share-alike (copyleft) data is refused in
    one line that says how to allow it, and nothing is written; allowed, it trains."""
    data = write_chat(tmp_path / "chat.jsonl")
    args = [a if a != "MIT" else "CC-BY-SA-4.0" for a in sft_args(base[0], data, tmp_path / "run", "--max-steps", "1")]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "chat.jsonl: copyleft license CC-BY-SA-4.0 not allowed by policy" in err
    assert "--allow-license CC-BY-SA-4.0" in err
    assert not (tmp_path / "run").exists()
    assert main(args + ["--allow-license", "CC-BY-SA-4.0"]) == 0
    made_by = json.loads((tmp_path / "run" / "checkpoints" / "step-000001" / "lamina.json").read_text())["made_by"]
    assert made_by["data"]["tokens_by_license"] == {"CC-BY-SA-4.0": made_by["data"]["tokens"]}


def test_sft_config_names_a_bad_setting_and_where_it_came_from():
    from lamina.post.sft import sft_config
    with pytest.raises(LaminaError, match=r"seq_len = 0 \(from the command line: seq_len=0\): must be positive"):
        sft_config(["seq_len=0"], model="m", data=("a.jsonl",))
    with pytest.raises(LaminaError, match="one license for all files or one per file"):
        SFTConfig(model="m", data=("a.jsonl", "b.jsonl", "c.jsonl"), licenses=("MIT", "MIT"))
    with pytest.raises(LaminaError, match="unknown settings"):
        sft_config(["learning_rate=1"], model="m")
    assert np.isclose(sft_config(["lr=1e-4"], model="m").lr, 1e-4)


def test_lora_sft_trains_only_adapters_resumes_bit_exact_and_writes_adapter_and_merged_model(base, tmp_path):
    import shutil

    from lamina.checkpoint import read_hf
    from lamina.post.lora import read_adapter
    data, out = write_chat(tmp_path / "chat.jsonl"), tmp_path / "run"
    args = sft_args(base[0], data, out, "--max-steps", "4", "save_every=2", "lora=true", "lora_r=4",
                    "lora_targets=['wq', 'wv', 'w2']", "lr=1e-2")
    assert main(args) == 0
    merged = read_hf(out / "model").weights
    config, pairs, _ = read_adapter(out / "adapter")
    assert (config.r, config.targets) == (4, ("wq", "wv", "w2")) and len(pairs) == 3 * 2
    before, kept = read_hf(base[0]).weights, read_hf(out / "checkpoints" / "step-000004").weights
    assert all(torch.equal(before[k], kept[k]) for k in before)              # the base stays frozen
    assert not torch.equal(merged["layers.0.attention.wq.weight"], before["layers.0.attention.wq.weight"])
    assert torch.equal(merged["layers.0.attention.wk.weight"], before["layers.0.attention.wk.weight"])
    made_by = json.loads((out / "model" / "lamina.json").read_text())["made_by"]
    assert made_by["lora"]["r"] == 4 and made_by["data"]["tokens_by_license"].keys() == {"MIT"}
    shutil.rmtree(out / "checkpoints" / "step-000004")
    assert main([*args, "--resume"]) == 0                                     # from step 2's adapters
    again = read_hf(out / "model").weights
    assert all(torch.equal(merged[k], again[k]) for k in merged)
