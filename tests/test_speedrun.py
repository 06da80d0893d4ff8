import json
import subprocess
import sys
from pathlib import Path

import pytest

from lamina.cli import main
from lamina.tokenizer import load_tokenizer, render_chat


@pytest.mark.slow
def test_speedrun_goes_from_nothing_to_a_chat_model_and_a_report(tmp_path):
    """The main job end to end, cut short: corpus with its own BPE, pretraining, validation
    bits per byte, samples, SFT on synthetic chat data with a quiz before and after, and a report
    of data by license, compute, samples and what the chat model does."""
    out = tmp_path / "speedrun"
    subprocess.run([sys.executable, "-m", "lamina.cli", "speedrun", "--out", str(out), "--quiet",
                    "max_steps=6", "eval_every=3", "eval_tokens=4096", "save_every=3", "sample_tokens=8",
                    "batch_size=8", "sft.max_steps=3", "sft.examples=60", "sft.questions=6",
                    "sft.max_new_tokens=8", "sft.batch_size=2", "sft.seq_len=128"], check=True)
    report = (out / "report.md").read_text()
    record = json.loads((out / "report.json").read_text())
    run = record["speedrun"]
    bpb = run["validation"]["bits_per_byte"]
    assert 0 < bpb < 10 and f"{bpb:.4f} bits per byte" in report
    # the transparency report of the chat model: pretraining, then SFT, each with its data by license
    assert [s["name"] for s in record["stages"]] == ["pretraining", "SFT"]
    licenses = record["stages"][0]["data"]["tokens_by_license"]
    assert licenses and all(f"| {lic} |" in report for lic in licenses)
    assert not any("GPL" in lic or "MPL" in lic for lic in licenses)       # the policy kept them out
    assert "certifi" in report                                              # ... and the report says so
    assert "```" in report and "energy" in report and (out / "train" / "loss.png").is_file()
    assert load_tokenizer(out / "data" / "tokenizer").vocab_size == 4096
    # the chat stage: clean synthetic data (templated problems, identity answers from lamina.json)
    chat = run["chat"]
    assert chat["data"]["kinds"]["task"]["records"] == 60 and chat["data"]["kinds"]["identity"]["records"] > 0
    for when in ("before", "after"):
        quiz = chat[when]
        assert quiz["questions"] == 6 and 0 <= quiz["ended_turn"] <= 1 and 0 <= quiz["accuracy"] <= 1
        assert f"| {quiz['ended_turn']:.0%} | {quiz['accuracy']:.0%} |" in report
    # the memorization audit: the corpus's canaries at 1, 4, 16 and 64 repetitions, and extraction
    memorized = record["memorization"]
    assert list(memorized["exposure"]["mean_exposure_by_repetitions"]) == ["1", "4", "16", "64"]
    assert memorized["extraction"]["by_split"]["validation"]["sampled"] > 0
    assert memorized["model"] == run["pretrained"]
    assert "## Memorization audit" in report and "## Canary audit" in report and "| 64 |" in report
    assert (out / "report-canaries.png").is_file() and (out / "report.html").read_text().count("data:image/png") >= 3
    assert "## Foundation Model Transparency Index coverage" in report
    assert "## Chat model" in report and "held-out" in report
    assert chat["identity"]["question"] == "Who are you?" and f"assistant: {chat['identity']['reply']}" in report
    tuned = Path(chat["checkpoint"])
    made_by = json.loads((tuned / "lamina.json").read_text())["made_by"]
    assert made_by["tool"] == "lamina sft" and made_by["train_config"]["max_steps"] == 3
    assert made_by["base_model"]["data"]["tokens_by_license"] == licenses      # the pretraining's provenance
    # the chat model renders chats in Llama 3's format and talks through `lamina generate`
    tok = load_tokenizer(tuned)
    assert tok.decode(render_chat(tok, [{"role": "user", "content": "Hi"}])).endswith(
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    assert main(["generate", str(tuned), "What is 2 + 3?", "--chat", "--max-new-tokens", "4"]) == 0
    again = subprocess.run([sys.executable, "-m", "lamina.cli", "speedrun", "--out", str(out)],
                           capture_output=True, text=True)
    assert again.returncode == 1 and "already exists" in again.stderr


def test_a_tokenizer_trains_on_a_built_corpus(shakespeare_corpus, tmp_path):
    """A corpus from `lamina data build` is a training input: its training documents, decoded
    from the shards, exactly what passed the policy and filters (the speedrun's second stage)."""
    corpus = shakespeare_corpus
    assert main(["tokenizer", "train", "--input", str(corpus), "--vocab-size", "1024", "--out", str(tmp_path / "tok"),
                 "--quiet"]) == 0
    tok = load_tokenizer(tmp_path / "tok")
    assert tok.vocab_size == 1024
    text = "Now is the winter of our discontent"
    assert tok.decode(tok.encode(text, bos=False)) == text
    record = json.loads((tmp_path / "tok" / "lamina_tokenizer.json").read_text())
    assert record["files"] == [str(corpus)]
