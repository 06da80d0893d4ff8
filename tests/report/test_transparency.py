"""`lamina report`: the model card and transparency report, from records. One small real chain,
shared by the tests: a corpus of Shakespeare passages with canaries (its own BPE), the debug
preset pretrained on it, then fine-tuned (`lamina sft`) on MIT chat data into which an ARC-Easy
question was planted (the decontamination tests' data); `lamina eval` decontaminated against both stages' data; then the report.

Its numbers are checked against a recount that shares no code with it: the training state's
per-document token counts and the ledger read with sqlite3, the shards read with numpy."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

from lamina.cli import main
from lamina.data import build_corpus
from lamina.data.build import BuildConfig
from lamina.errors import LaminaError
from lamina.fields import InvalidField
from lamina.report.transparency import ReportConfig, collect

from eval.test_decontam import planted_chat  # tests/ is on the path: its folders are packages
from eval.test_memorization import passages

@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """{corpus, pretrained, sft run, tuned model, evals file, report folder}, the report written by the CLI."""
    from lamina.train import train, train_recipe
    root = tmp_path_factory.mktemp("report")
    build_corpus([passages(60)], out=root / "corpus",
                 config=BuildConfig(tokenizer="bpe:512", validation_fraction=0.1, near_dedup=False,
                                    canaries=(1, 8), canaries_each=1))
    pretrained = train(train_recipe("debug", ["eval_every=20", "save_every=20"], data=str(root / "corpus"),
                                     out=str(root / "pretrain"), max_steps=20), progress=False).checkpoint
    data = planted_chat(root / "chat")          # MIT chat data that asks and answers an ARC-Easy question
    assert main(["sft", str(pretrained), "--data", str(data), "--out", str(root / "sft"), "--max-steps", "4",
                 "--seq-len", "256", "--batch-size", "2", "--quiet"]) == 0
    tuned = next((root / "sft" / "checkpoints").iterdir())
    evals = root / "evals.json"
    assert main(["eval", str(tuned), "--tasks", "arc_easy", "--limit", "8", "--decontaminate", str(root / "sft"),
                 str(root / "corpus"), "--out", str(evals), "--quiet"]) == 0
    assert main(["report", str(tuned), "--out", str(root / "report"), "--eval", str(evals), "--quiet"]) == 0
    return {"root": root, "corpus": root / "corpus", "pretrained": pretrained, "sft": root / "sft", "tuned": tuned,
            "evals": evals, "out": root / "report"}


def recount_consumed(checkpoint: Path, ledger: Path) -> tuple[dict, dict]:
    """Tokens consumed by source and by license: the checkpoint's per-document counts joined,
    in SQL of our own, with the ledger's documents and sources."""
    with safe_open(checkpoint / "train_state" / "state.safetensors", "np") as f:
        per_doc = f.get_tensor("doc_tokens")
    db = sqlite3.connect(ledger / "ledger.sqlite")
    by_source: dict[str, int] = {}
    by_license: dict[str, int] = {}
    for doc, source, license in db.execute("SELECT d.id, s.id, s.license FROM documents d, sources s "
                                           "WHERE s.id = d.source_id"):
        if doc < len(per_doc) and per_doc[doc]:
            by_source[source] = by_source.get(source, 0) + int(per_doc[doc])
            by_license[license] = by_license.get(license, 0) + int(per_doc[doc])
    db.close()
    return by_source, by_license


def test_the_reports_numbers_equal_a_recount_from_the_ledger_and_the_shards(made):
    record = json.loads((made["out"] / "report.json").read_text())
    pre, sft = record["stages"]
    assert (pre["name"], sft["name"]) == ("pretraining", "SFT")
    for stage, checkpoint, ledger in ((pre, made["pretrained"], made["corpus"]), (sft, made["tuned"], made["sft"] / "data")):
        by_source, by_license = recount_consumed(checkpoint, ledger)
        assert stage["data"]["tokens_by_source"] == by_source and stage["data"]["tokens_by_license"] == by_license
        assert stage["data"]["tokens"] == sum(by_source.values()) > 0
    assert sft["data"]["tokens_by_license"].keys() == {"MIT"}
    # the corpus: its tokens are the shards' lengths, its documents the ledger's rows
    manifest = json.loads((made["corpus"] / "manifest.json").read_text())
    shard_tokens = sum(len(np.fromfile(made["corpus"] / name, dtype=manifest["dtype"])) for name in manifest["shards"])
    assert pre["corpus"]["tokens"] == shard_tokens
    db = sqlite3.connect(made["corpus"] / "ledger.sqlite")
    assert pre["corpus"]["documents"] == dict(db.execute("SELECT status, COUNT(*) FROM documents GROUP BY status"))
    assert pre["corpus"]["canaries"] == db.execute("SELECT COUNT(*) FROM sources WHERE kind = 'canary'").fetchone()[0] == 2
    db.close()
    # compute: each stage's FLOPs are its tokens times its FLOPs per token; CO2e and water follow from energy
    c = record["compute"]
    recorded = [json.loads((p / "lamina.json").read_text())["made_by"] for p in (made["pretrained"], made["tuned"])]
    assert c["model_flops"] == pytest.approx(sum(m["tokens"] * m["compute"]["flops_per_token"] for m in recorded))
    energy = sum(m["compute"]["energy_kwh"] for m in recorded)
    assert c["energy_kwh"] == pytest.approx(energy) and c["water_litres"] == pytest.approx(energy * 1.8)
    assert c["co2e_kg"] == pytest.approx(energy * 475 / 1000)
    # the Markdown shows the same figures
    report = (made["out"] / "report.md").read_text()
    for lic, n in pre["data"]["tokens_by_license"].items():
        assert f"| {lic} | {n:,} |" in report
    assert f"{pre['data']['tokens']:,} tokens of" in report and f"{sft['data']['tokens']:,} tokens of" in report


def test_the_report_is_markdown_one_self_contained_html_page_and_json(made):
    out = made["out"]
    names = {p.name for p in out.iterdir()}
    assert {"report.md", "report.html", "report.json", "report-data-mix.png", "report-canaries.png",
            "report-extraction.png"} <= names
    page = (out / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == 3 and "report-data-mix.png" not in page.split("<body>")[1]
    assert "<table>" in page and "Foundation Model Transparency Index" in page
    record = json.loads((out / "report.json").read_text())
    assert record["format"] == "lamina-report/1" and record["model"]["layers"] > 0
    # the data order is pinned: a digest chained over every step's reads, for both stages
    assert all(len(s["data"]["order_digest"]) == 64 for s in record["stages"])


def test_every_score_sits_beside_its_decontamination(made):
    record = json.loads((made["out"] / "report.json").read_text())
    [row] = record["evaluations"]
    assert row["task"] == "arc_easy" and row["n"] == 8
    seen = row["contamination"]
    assert seen["items"] == 1 and seen["clean_n"] == 7 and seen["ngram"] == 13     # the planted question
    result = json.loads(made["evals"].read_text())["results"]["arc_easy"]
    assert row["value"] == result[row["metric"]] and seen["clean"] == result["contamination"]["clean"][row["metric"]]
    assert "| 1 (12.5%, 13-grams) |" in (made["out"] / "report.md").read_text()


def test_the_memorization_and_canary_audits_are_in_the_report(made):
    record = json.loads((made["out"] / "report.json").read_text())
    audit = record["memorization"]
    assert audit["model"] == str(made["tuned"]) and audit["extraction"]["k"] == 32
    assert list(audit["exposure"]["mean_exposure_by_repetitions"]) == ["1", "8"]
    assert {"train", "validation"} <= audit["extraction"]["by_split"].keys()
    assert audit["extraction"]["by_source"] and audit["extraction"]["by_license"]
    report = (made["out"] / "report.md").read_text()
    assert "## Memorization audit" in report and "| 8 | 1 |" in report


def test_fmti_coverage_answers_from_the_record_and_lists_what_is_not_covered(made):
    record = json.loads((made["out"] / "report.json").read_text())
    rows = {r["indicator"]: r for r in record["fmti"]}
    assert len(rows) == 32
    assert rows["Data license status"]["covered"] and "MIT" in rows["Data license status"]["answer"]
    assert rows["Energy usage"]["covered"] and "kWh" in rows["Energy usage"]["answer"]
    assert rows["Model stages"]["answer"] == "pretraining → SFT"
    assert not rows["Wages"]["covered"] and not rows["Hardware owner"]["covered"]
    assert "| Data labor | Wages | not covered |" in (made["out"] / "report.md").read_text()


def test_a_base_model_whose_directory_is_gone_is_reported_from_the_fine_tunes_record(made, tmp_path):
    """The fine-tune carries its base's data record: the report still shows it, and says the
    base's compute is not counted."""
    moved = tmp_path / "tuned"
    shutil.copytree(made["tuned"], moved)
    record = json.loads((moved / "lamina.json").read_text())
    record["made_by"]["base_model"]["path"] = str(tmp_path / "gone")
    (moved / "lamina.json").write_text(json.dumps(record))
    report = collect(moved, ReportConfig(run_audit=False))
    pre = report["stages"][0]
    assert pre["name"] == "pretraining" and pre["compute"] is None and "not here" in pre["note"]
    assert pre["data"]["tokens_by_source"] == record["made_by"]["base_model"]["data"]["tokens_by_source"]
    assert report["compute"]["missing"] == ["pretraining"] and report["memorization"] is None


def test_a_release_signs_the_report(made, tmp_path):
    from lamina.report import release
    model = tmp_path / "model"
    shutil.copytree(made["tuned"], model)
    assert main(["report", str(model), "--no-audit", "--quiet"]) == 0
    release.keygen(tmp_path / "key")
    manifest = release.release(model, tmp_path / "key")
    assert manifest["report"]["file"] == "report.json"
    assert release.verify(model, tmp_path / "key.pub")["report"] == manifest["report"]


def test_bad_inputs_are_one_clear_error(made, tmp_path):
    (tmp_path / "plain").mkdir()
    with pytest.raises(LaminaError, match="no lamina.json"):
        collect(tmp_path / "plain", ReportConfig(run_audit=False))
    (tmp_path / "bad.json").write_text('{"x": 1}')
    with pytest.raises(LaminaError, match="not a `lamina eval --out` file"):
        collect(made["tuned"], ReportConfig(evals=(str(tmp_path / "bad.json"),), run_audit=False))
    with pytest.raises(LaminaError, match="not a `lamina audit --out` file"):
        collect(made["tuned"], ReportConfig(audit=str(made["evals"]), run_audit=False))
    with pytest.raises(InvalidField, match="pue"):
        ReportConfig(pue=0.5)
