import json
import subprocess
import sys

import pytest

from lamina.cli import main
from lamina.tokenizer import load_tokenizer


@pytest.mark.slow
def test_speedrun_goes_from_nothing_to_a_report(tmp_path):
    """The main job end to end, cut short: corpus with its own BPE, pretraining, validation
    bits per byte, samples, and a report of data by license, compute and samples."""
    out = tmp_path / "speedrun"
    subprocess.run([sys.executable, "-m", "lamina.cli", "speedrun", "--out", str(out), "--quiet",
                    "max_steps=6", "eval_every=3", "eval_tokens=4096", "save_every=3", "sample_tokens=8",
                    "batch_size=8"], check=True)
    report = (out / "report.md").read_text()
    record = json.loads((out / "report.json").read_text())
    bpb = record["validation"]["bits_per_byte"]
    assert 0 < bpb < 10 and f"{bpb:.4f} bits per byte" in report
    licenses = record["made_by"]["data"]["tokens_by_license"]
    assert licenses and all(f"| {lic} |" in report for lic in licenses)
    assert not any("GPL" in lic or "MPL" in lic for lic in licenses)       # the policy kept them out
    assert "certifi" in report                                              # ... and the report says so
    assert "```" in report and "energy" in report and (out / "train" / "loss.png").is_file()
    assert load_tokenizer(out / "data" / "tokenizer").vocab_size == 4096
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
