"""The corpus build on Ray (issue 25): the same shards and ledger as the local build, records
decided by their own licenses, a killed worker and a killed driver recovered from."""

import gzip
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from lamina.data import BuildConfig, Policy, build_corpus, data_recipe, folder_source, why
from lamina.data.distributed import work_folder

from .conftest import corpus_files, ledger_content, prose, write_docs

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster of two CPUs for the module's builds, stopped at its end."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def _records(n0: int, n: int, licenses: list[str]) -> list[dict]:
    return [{"id": f"rec-{i}", "text": prose(1000 + i), "meta": {"license": licenses[i % len(licenses)],
                                                           "url": f"https://example.org/{i}"}}
            for i in range(n0, n0 + n)]


@pytest.fixture
def shards(tmp_path):
    """A folder of record shards as openly licensed corpora publish them: Parquet, JSONL, gzip
    and zstd, each record naming its own license and origin (some copyleft, one without a license)."""
    root = tmp_path / "pile"
    root.mkdir()
    pq.write_table(pa.Table.from_pylist(_records(0, 12, ["CC-BY-4.0", "MIT"])), root / "a.parquet")
    recs = _records(12, 10, ["CC0-1.0", "GPL-3.0-only"])
    recs[3]["meta"].pop("license")
    recs.append({"id": "copy", "text": prose(1001), "meta": {"license": "MIT"}})                    # exact copy
    recs.append({"id": "near", "text": prose(1002).replace("mill", "mills", 1), "meta": {"license": "MIT"}})
    (root / "b.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs) + "not json\n")
    (root / "c.jsonl.gz").write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in
                                                            _records(30, 6, ["Apache-2.0"])).encode()))
    (root / "d.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(
        "".join(json.dumps(r) + "\n" for r in _records(40, 6, ["CC-BY-SA-4.0"])).encode()))
    return folder_source(root, id="pile", text_field="text", id_field="id", license_field="meta.license",
                         origin_field="meta.url")


def _chain(tmp_path):
    """Near duplicates in a chain: b nearly repeats a, c nearly repeats b but not a. A single pass
    in document order drops b (a was kept) and keeps c (b, its only twin, was dropped)."""
    a = prose(51, words=120)
    words = a.split()
    b = " ".join(words[:100] + ["zzz" + w for w in words[100:]])
    c = " ".join(words[:78] + ["yyy" + w for w in words[78:100]] + ["zzz" + w for w in words[100:]])
    docs = {f"{i:02d}.txt": prose(i) for i in range(20)}
    docs.update({"50a.txt": a, "51b.txt": b, "52c.txt": c, "53copy.txt": prose(4)})
    return folder_source(write_docs(tmp_path / "chain", docs), id="chain", license="MIT")


def _both(sources, config, tmp_path, **kw):
    local = build_corpus(sources, config=config, out=tmp_path / "local", **kw)
    on_ray = build_corpus(sources, config=config, out=tmp_path / "ray", executor="ray", **kw)
    assert local.stats == on_ray.stats
    assert corpus_files(local.out) == corpus_files(on_ray.out)
    assert ledger_content(local.out) == ledger_content(on_ray.out)
    assert not work_folder(on_ray.out).exists()
    return local


def test_ray_build_equals_the_local_build(cluster, shards, tmp_path):
    chain = _chain(tmp_path)
    gpl = folder_source(write_docs(tmp_path / "gpl", {"g.txt": prose(90)}), id="gpl", license="GPL-3.0-only")
    config = BuildConfig(shard_tokens=400, validation_fraction=0.2, canaries=(2,), canaries_each=2)
    local = _both([chain, shards, gpl], config, tmp_path)
    reasons = dict(local.ledger.q("SELECT path, reason FROM documents WHERE status != 'kept'"))
    assert reasons["51b.txt"] == "near-dedup: near duplicate of document 21"
    assert "52c.txt" not in reasons and reasons["53copy.txt"] == "exact-dedup: same text as document 5"
    assert reasons["b.jsonl:11"] == "exact-dedup: same text as document 26"       # a.parquet's record 1
    assert reasons["b.jsonl:12"] == "near-dedup: near duplicate of document 27"


@pytest.mark.slow
def test_the_built_in_corpus_on_ray_equals_the_local_build(cluster, tmp_path):
    """clean-small, the main job's corpus: literature, dialogues and the code of installed
    distributions (two kept out by their licenses), as the recipe builds it."""
    recipe = data_recipe("clean-small")
    local = _both(recipe.load_sources(), recipe.config, tmp_path, policy=recipe.policy)
    assert local.stats["tokens"] > 1_000_000


def test_records_are_decided_by_their_own_license(cluster, shards, tmp_path):
    build = _both([shards], BuildConfig(shard_tokens=400, validation_fraction=0.2), tmp_path)
    refused = dict(build.ledger.q("SELECT r.record_id, d.reason FROM documents d JOIN records r ON r.doc_id = d.id "
                                  "WHERE d.reason LIKE 'record-license%'"))
    copyleft = "record-license: copyleft license {} not allowed by policy"
    assert refused == {"rec-13": copyleft.format("GPL-3.0-only"), "rec-15": "record-license: license unknown or missing",
                       **{f"rec-{i}": copyleft.format("GPL-3.0-only") for i in (17, 19, 21)},
                       **{f"rec-{i}": copyleft.format("CC-BY-SA-4.0") for i in range(40, 46)}}
    in_shards = {r for (r,) in build.ledger.q("SELECT DISTINCT c.license FROM ranges g JOIN records c "
                                               "ON c.doc_id = g.doc_id")}
    assert in_shards == {"CC-BY-4.0", "MIT", "CC0-1.0", "Apache-2.0"}
    [doc] = why(build.out, "a.parquet:0")
    assert doc["record"] == {"id": "rec-0", "license": "CC-BY-4.0", "origin": "https://example.org/0"}
    strict = build_corpus([shards], config=BuildConfig(shard_tokens=400), out=tmp_path / "strict", executor="ray",
                          policy=Policy(allow=frozenset({"MIT"})))
    assert {r for (r,) in strict.ledger.q("SELECT DISTINCT c.license FROM ranges g JOIN records c "
                                          "ON c.doc_id = g.doc_id")} == {"MIT"}


def test_a_trained_tokenizer_and_no_near_dedup_match_too(cluster, tmp_path):
    chain = _chain(tmp_path)
    _both([chain], BuildConfig(tokenizer="bpe:600", shard_tokens=2000, near_dedup=False), tmp_path)
    # the same folder again, with another vocabulary: the cluster's workers must not reuse the
    # tokenizer they loaded from the same path for the first build
    shutil.rmtree(tmp_path / "ray")
    config = BuildConfig(tokenizer="bpe:800", shard_tokens=2000, near_dedup=False)
    again = build_corpus([chain], config=config, out=tmp_path / "ray", executor="ray")
    local = build_corpus([chain], config=config, out=tmp_path / "local800")
    assert (local.out / "tokenizer" / "tokenizer.json").read_bytes() != \
        (tmp_path / "local" / "tokenizer" / "tokenizer.json").read_bytes()
    assert corpus_files(again.out) == corpus_files(local.out)


def _ray_workers() -> list[int]:
    """The pids of Ray worker processes now running a judging task (Ray titles each worker by its task)."""
    pids = []
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if f.read().startswith(b"ray::judge_part"):
                    pids.append(int(pid))
        except OSError:
            pass
    return pids


def test_a_killed_worker_is_retried_and_nothing_is_lost(cluster, tmp_path):
    docs = {f"{i:03d}.jsonl": "".join(json.dumps({"text": prose(100 * i + j, words=400)}) + "\n" for j in range(30))
            for i in range(12)}
    src = folder_source(write_docs(tmp_path / "big", docs), id="big", license="MIT")
    config = BuildConfig(shard_tokens=4000)
    killed = []

    def kill():
        while not killed and not stop.is_set():
            pids = _ray_workers()
            if pids:
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
            time.sleep(0.01)
    stop = threading.Event()
    killer = threading.Thread(target=kill)
    killer.start()
    try:
        on_ray = build_corpus([src], config=config, out=tmp_path / "ray", executor="ray")
    finally:
        stop.set()
        killer.join()
    assert killed
    local = build_corpus([src], config=config, out=tmp_path / "local")
    assert on_ray.stats["documents"] == 360
    assert corpus_files(local.out) == corpus_files(on_ray.out)
    assert ledger_content(local.out) == ledger_content(on_ray.out)


DRIVER = """
import sys
from lamina.data import BuildConfig, build_corpus, folder_source
src = folder_source(sys.argv[1], id="big", license="MIT")
build_corpus([src], config=BuildConfig(shard_tokens=4000, workers=2), out=sys.argv[2], executor="ray")
"""


def test_a_killed_driver_reruns_and_reuses_finished_parts(tmp_path):
    docs = {f"{i:03d}.jsonl": "".join(json.dumps({"text": prose(100 * i + j, words=300)}) + "\n" for j in range(20))
            for i in range(24)}
    folder = write_docs(tmp_path / "big", docs)
    out, work = tmp_path / "ray", work_folder(tmp_path / "ray")
    run = lambda: subprocess.Popen([sys.executable, "-c", textwrap.dedent(DRIVER), str(folder), str(out)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    driver = run()
    deadline = time.time() + 120
    while len(list(work.glob("part-*.parquet"))) < 4 and time.time() < deadline and driver.poll() is None:
        time.sleep(0.05)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    finished = {p.name: p.stat().st_mtime_ns for p in work.glob("part-*.parquet")}
    assert 4 <= len(finished) < 24 and not out.exists()
    again = run()
    assert again.wait(timeout=300) == 0
    said = re.search(r"reusing (\d+) of 24 parts judged by an earlier run", again.stderr.read().decode())
    assert said and len(finished) <= int(said[1]) < 24     # (its workers may finish a part as it dies)
    assert not work.exists()
    local = build_corpus([folder_source(folder, id="big", license="MIT")],
                         config=BuildConfig(shard_tokens=4000, workers=2), out=tmp_path / "local")
    assert corpus_files(local.out) == corpus_files(out)
    assert ledger_content(local.out) == ledger_content(out)


RECIPE = """
name = "pile"
[[folders]]
path = "pile"
id = "pile"
text_field = "text"
id_field = "id"
license_field = "meta.license"
origin_field = "meta.url"
[config]
shard_tokens = 400
"""


def test_the_command_line_builds_a_recipe_of_record_shards_on_ray(shards, tmp_path):
    (tmp_path / "pile.toml").write_text(RECIPE)
    lamina = lambda *args: subprocess.run([sys.executable, "-m", "lamina.cli", "data", "build", str(tmp_path / "pile.toml"),
                                           "--workers", "2", "--quiet", *args], capture_output=True, text=True)
    ran = lamina("--out", str(tmp_path / "ray"), "--executor", "ray")
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert ran.stdout.startswith(f"wrote {tmp_path / 'ray'}: ")
    assert lamina("--out", str(tmp_path / "local")).returncode == 0
    assert corpus_files(tmp_path / "local") == corpus_files(tmp_path / "ray")
    assert ledger_content(tmp_path / "local") == ledger_content(tmp_path / "ray")
    wrong = lamina("--out", str(tmp_path / "x"), "--address", "auto")
    assert wrong.returncode != 0 and "--address names a Ray cluster: add --executor ray" in wrong.stderr


def test_without_ray_the_build_says_how_to_install_it(shards, tmp_path):
    (tmp_path / "pile.toml").write_text(RECIPE)
    code = ("import sys; sys.modules['ray'] = None; from lamina.cli import main; raise SystemExit("
            f"main(['data', 'build', {str(tmp_path / 'pile.toml')!r}, '--out', {str(tmp_path / 'c')!r}, "
            "'--executor', 'ray']))")
    ran = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert ran.returncode == 1 and "pip install 'lamina[ray]'" in ran.stderr and "Traceback" not in ran.stderr
    assert not (tmp_path / "c").exists() and not list(tmp_path.glob(".c*"))
