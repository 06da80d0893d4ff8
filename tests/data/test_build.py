"""What must hold for a corpus build (issue 4): license policy, token accounting, traceability,
determinism, crash safety, malformed inputs."""

import hashlib
import subprocess
import sys
import textwrap
from dataclasses import replace

import numpy as np
import pytest

from lamina.data import BuildConfig, Ledger, folder_source, Policy, build_corpus, open_shard, read_manifest, report, trace, why
from lamina.errors import LaminaError

from .conftest import corpus_files as _files, ledger_content as _content, prose


@pytest.fixture
def sources(make_source):
    return [make_source("mit-src", "MIT", {f"doc{i}.txt": prose(i) for i in range(6)}),
            make_source("gpl-src", "GPL-3.0-only", {f"g{i}.txt": prose(100 + i) for i in range(3)}),
            make_source("no-license", "", {"n.txt": prose(200)}),
            make_source("bsd-src", "BSD-3-Clause", {"b.md": prose(300), "secret.txt": prose(301)})]


def shard_ranges(ledger: Ledger, name: str) -> list[tuple[int, int, int]]:
    return ledger.q("SELECT start, end, doc_id FROM ranges WHERE shard=? ORDER BY start", name)


def test_gpl_source_never_reaches_a_shard(sources, config, tmp_path):
    secret = hashlib.sha256(prose(301).encode()).hexdigest()
    build = build_corpus(sources, policy=Policy.permissive(deny_hashes=frozenset({secret})), config=config,
                         out=tmp_path / "c")
    assert build.ledger.tokens_by_license().keys() == {"MIT", "BSD-3-Clause"}
    assert build.ledger.source("gpl-src")["reason"] == "copyleft license GPL-3.0-only not allowed by policy"
    assert build.ledger.source("no-license")["reason"] == "license unknown or missing"
    [doc] = why(tmp_path / "c", "n.txt")
    assert not doc["in_corpus"] and doc["reason"] == "license: license unknown or missing"
    [doc] = why(tmp_path / "c", secret)
    assert doc["reason"].startswith("deny-list: content hash") and not doc["in_corpus"]
    kept_sources = {s for (s,) in build.ledger.q(
        "SELECT DISTINCT d.source_id FROM ranges r JOIN documents d ON d.id = r.doc_id")}
    assert kept_sources == {"mit-src", "bsd-src"}
    rejected = {(r["source"], r["documents"]) for r in report(tmp_path / "c")["rejected"]}
    assert {("gpl-src", 3), ("no-license", 1), ("bsd-src", 1)} <= rejected


def test_flipping_the_policy_changes_only_what_it_should(sources, config, tmp_path):
    strict = build_corpus(sources, config=config, out=tmp_path / "strict").ledger
    open_ = build_corpus(sources, policy=Policy.permissive(allow=Policy().allow | {"GPL-3.0-only"}),
                         config=config, out=tmp_path / "open").ledger
    docs = "SELECT id, source_id, path, status, tokens, split FROM documents ORDER BY id"
    changed = [(a, b) for a, b in zip(strict.q(docs), open_.q(docs)) if a != b]
    assert {a[1] for a, _ in changed} == {"gpl-src"}
    assert all(a[3] == "rejected" and b[3] == "kept" for a, b in changed)
    assert open_.tokens_by_license()["MIT"] == strict.tokens_by_license()["MIT"]
    assert "NOASSERTION" not in open_.tokens_by_license()


def test_ledger_token_sums_equal_tokens_on_disk(sources, config, tmp_path):
    build = build_corpus(sources, config=config, out=tmp_path / "c")
    manifest = read_manifest(build.out)
    assert len(manifest["shards"]) > 2 and {s["split"] for s in manifest["shards"].values()} == {"train", "validation"}
    for name in manifest["shards"]:
        tokens = open_shard(build.out, name)
        assert tokens.dtype == np.uint16
        ranges = shard_ranges(build.ledger, name)
        assert sum(e - s for s, e, _ in ranges) == len(tokens) == manifest["shards"][name]["tokens"]
        assert build.ledger.q("SELECT tokens FROM shards WHERE name=?", name) == [(len(tokens),)]
        assert all(tokens[s] == manifest["bos_id"] for s, _, _ in ranges)          # each document opens with BOS
        assert (tokens == manifest["bos_id"]).sum() == len(ranges)
    per_doc = build.ledger.q("SELECT d.tokens, r.end - r.start FROM ranges r JOIN documents d ON d.id = r.doc_id")
    assert all(a == b for a, b in per_doc)


def test_every_token_traces_to_exactly_one_document(sources, config, tmp_path):
    build = build_corpus(sources, config=config, out=tmp_path / "c")
    splits = {}
    for name in read_manifest(build.out)["shards"]:
        ranges = shard_ranges(build.ledger, name)
        assert [s for s, _, _ in ranges] == [0] + [e for _, e, _ in ranges[:-1]]   # contiguous, no overlap
        for offset in (0, len(open_shard(build.out, name)) - 1):
            t = trace(build.out, name, offset)
            assert t["document"]["status"] == "kept"
            assert t["source"]["license"] in ("MIT", "BSD-3-Clause")
        for _, _, doc in ranges:
            splits.setdefault(doc, set()).add(name.split("-")[0])
    assert all(len(s) == 1 for s in splits.values())         # split by document: never in both
    with pytest.raises(LaminaError, match="outside"):
        trace(build.out, name, 10**9)


def test_same_inputs_and_seed_give_byte_identical_shards_and_ledger(sources, config, tmp_path):
    a = build_corpus(sources, config=config, out=tmp_path / "a")
    b = build_corpus(sources, config=config, out=tmp_path / "b")
    assert _files(a.out) == _files(b.out)
    assert _content(a.out) == _content(b.out)
    assert a.ledger.content_digest() == b.ledger.content_digest()
    parallel = build_corpus(sources, config=replace(config, workers=2), out=tmp_path / "parallel")
    assert [f for n, f in _files(parallel.out).items() if n != "build.json"] == \
        [f for n, f in _files(a.out).items() if n != "build.json"]
    assert _content(parallel.out) == _content(a.out)
    other = build_corpus(sources, config=BuildConfig(shard_tokens=400, validation_fraction=0.2, seed=1),
                         out=tmp_path / "seed1")
    assert _files(other.out) != _files(a.out)


def test_mixing_weights_repeat_or_drop_documents_deterministically(sources, config, tmp_path):
    build = build_corpus(sources, config=replace(config, weights={"mit-src": 2.0, "bsd-src": 0.0}),
                         out=tmp_path / "c")
    copies = build.ledger.q("SELECT d.source_id, COUNT(*) FROM ranges r JOIN documents d ON d.id = r.doc_id "
                            "GROUP BY r.doc_id")
    assert {s for s, _ in copies} == {"mit-src"} and all(n == 2 for _, n in copies)


def test_malformed_inputs_are_quarantined_and_counted(make_source, config, tmp_path):
    src = make_source("messy", "MIT", {
        "good.txt": prose(1), "empty.txt": "", "binary.bin": b"\x00\x01\x02" * 50,
        "latin1.txt": ("caf\xe9 " * 60).encode("latin-1"), "huge.txt": prose(2, words=3000),
        "records.jsonl": '{"text": "%s"}\nnot json\n' % prose(3).strip()})
    build = build_corpus([src], config=BuildConfig(max_bytes=10_000), out=tmp_path / "c")
    status = dict(build.ledger.q("SELECT path, reason FROM documents WHERE status='quarantined'"))
    assert status["empty.txt"] == "decode: empty"
    assert status["binary.bin"] == "decode: binary: NUL bytes"
    assert status["latin1.txt"].startswith("decode: bad encoding")
    assert status["huge.txt"].startswith("decode: huge")
    assert status["records.jsonl:2"] == "read: jsonl: line 2 is not valid JSON (Expecting value)"
    assert report(build.out)["documents"] == {"kept": 2, "quarantined": 5}


def test_duplicates_and_pii_are_recorded(make_source, config, tmp_path):
    dup = prose(7)
    src = make_source("dups", "MIT", {"a.txt": dup, "b.txt": dup, "c.txt": dup.replace("mill", "mills", 1),
                                      "d.txt": prose(8) + "write to jo@example.com\n"})
    build = build_corpus([src], config=config, out=tmp_path / "c")
    reasons = dict(build.ledger.q("SELECT path, reason FROM documents"))
    assert reasons["b.txt"] == "exact-dedup: same text as document 1"
    assert reasons["c.txt"] == "near-dedup: near duplicate of document 1"
    assert report(build.out)["scrubbed"] == {"email": 1}


KILLED_BUILD = """
import os, signal, sys
from lamina.data import BuildConfig, build_corpus, folder_source
src = folder_source(sys.argv[1], id="mit-src", license="MIT")
read = src.read
def dying():
    for i, doc in enumerate(read()):
        if i == 4 and sys.argv[3] == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        yield doc
object.__setattr__(src, "read", dying)
build_corpus([src], config=BuildConfig(shard_tokens=400, validation_fraction=0.2), out=sys.argv[2])
"""


def test_killed_build_then_rerun_equals_uninterrupted_build(make_source, tmp_path):
    folder = make_source("mit-src", "MIT", {f"doc{i}.txt": prose(i) for i in range(8)}).origin.split(" ", 1)[1]
    run = lambda out, mode: subprocess.run([sys.executable, "-c", textwrap.dedent(KILLED_BUILD), folder,
                                            str(tmp_path / out), mode], capture_output=True, text=True)
    killed = run("c", "kill")
    assert killed.returncode == -9
    assert not (tmp_path / "c").exists() and any(tmp_path.glob(".c.partial-*"))
    assert run("c", "ok").returncode == 0
    reference = folder_source(folder, id="mit-src", license="MIT")
    build_corpus([reference], config=BuildConfig(shard_tokens=400, validation_fraction=0.2), out=tmp_path / "reference")
    assert not any(tmp_path.glob(".c.partial-*"))
    assert _files(tmp_path / "c") == _files(tmp_path / "reference")
    assert _content(tmp_path / "c") == _content(tmp_path / "reference")


def test_an_existing_corpus_is_never_overwritten(sources, config, tmp_path):
    build_corpus(sources[:1], config=config, out=tmp_path / "c")
    with pytest.raises(LaminaError, match="already exists"):
        build_corpus(sources[:1], config=config, out=tmp_path / "c")


def test_workers_find_the_same_duplicates_across_batches(make_source, config, tmp_path):
    docs = {f"d{i:03d}.txt": prose(i) for i in range(150)}              # several batches of 64
    docs.update({"x-copy.txt": prose(3), "y-near.txt": prose(7).replace("mill", "mills", 1)})
    src = make_source("many", "MIT", docs)
    one = build_corpus([src], config=config, out=tmp_path / "one")
    two = build_corpus([src], config=replace(config, workers=2), out=tmp_path / "two")
    reasons = dict(two.ledger.q("SELECT path, reason FROM documents WHERE status != 'kept'"))
    assert reasons == {"x-copy.txt": "exact-dedup: same text as document 4",
                       "y-near.txt": "near-dedup: near duplicate of document 8"}
    assert _content(one.out) == _content(two.out)
    assert [f for n, f in _files(one.out).items() if n != "build.json"] == \
        [f for n, f in _files(two.out).items() if n != "build.json"]
