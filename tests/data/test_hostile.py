"""A corpus build against hostile inputs and a hostile machine (issue 19, items 7-11): bad files
are quarantined and the build goes on, malformed lines keep their own reason, hash and size,
links out of a folder are never read, a killed build takes its workers with it, and a full disk
(or a file size limit) is one line that says where and how much, through the one shared writer."""

import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from lamina.data import BuildConfig, build_corpus, folder_source, report, why
from lamina.data.shards import write_shard
from lamina.errors import LaminaError
from lamina.files import atomic_directory, atomic_file

from .conftest import prose, write_docs

ON_LINUX = Path("/proc/self/stat").exists()


def parquet(path: Path, **columns) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.table(columns), path)
    return path.read_bytes()


def test_bad_files_are_quarantined_and_the_build_goes_on(tmp_path):
    folder = write_docs(tmp_path / "hostile", {"good.txt": prose(1),
                                                "deep.jsonl": "[" * 100_000 + "]" * 100_000 + "\n"
                                                              + json.dumps({"text": prose(2)}) + "\n",
                                                "garbage.parquet": b"PAR1 not really" * 20})
    whole = parquet(folder / "whole.parquet", text=[prose(3), prose(4)])
    (folder / "truncated.parquet").write_bytes(whole[:len(whole) // 2])
    parquet(folder / "no-text.parquet", body=[prose(5)])
    parquet(folder / "numbers.parquet", text=[1, 2, 3])
    build = build_corpus([folder_source(folder, id="hostile", license="MIT")], out=tmp_path / "c",
                         config=BuildConfig(shard_tokens=400))
    reasons = dict(build.ledger.q("SELECT path, reason FROM documents WHERE status = 'quarantined'"))
    assert reasons == {
        "deep.jsonl:1": "read: jsonl: line 1 is nested too deeply to parse",
        "garbage.parquet": reasons["garbage.parquet"],
        "truncated.parquet": reasons["truncated.parquet"],
        "no-text.parquet": "read: parquet: has no 'text' column (columns: body)",
        "numbers.parquet": "read: parquet: has a 'text' column of int64, not strings"}
    assert reasons["garbage.parquet"].startswith("read: parquet: cannot be read: ")
    assert reasons["truncated.parquet"].startswith("read: parquet: cannot be read: ")
    assert str(folder) not in reasons["truncated.parquet"]                       # the recorded path, not the absolute one
    kept = {p for (p,) in build.ledger.q("SELECT path FROM documents WHERE status = 'kept'")}
    assert kept == {"good.txt", "deep.jsonl:2", "whole.parquet:0", "whole.parquet:1"}
    assert build.stats["quarantined"] == 5 and report(build.out)["documents"] == {"kept": 4, "quarantined": 5}
    truncated = build.ledger.q("SELECT content_hash, bytes FROM documents WHERE path = 'truncated.parquet'")
    assert truncated == [(hashlib.sha256(whole[:len(whole) // 2]).hexdigest(), len(whole) // 2)]


def test_a_malformed_jsonl_line_keeps_its_own_reason_hash_and_size(tmp_path):
    lines = [json.dumps({"text": prose(1)}), json.dumps({"body": "no text here"}), '{"text": "unfinished',
             json.dumps({"text": 42}), json.dumps(["a", "list"]), json.dumps({"text": "\ud800 lone"})]
    folder = write_docs(tmp_path / "lines", {"records.jsonl": "\n".join(lines) + "\n"})
    build = build_corpus([folder_source(folder, id="lines", license="MIT")], out=tmp_path / "c")
    rows = build.ledger.q("SELECT path, status, reason, content_hash, bytes FROM documents ORDER BY id")
    assert [(p, s, r) for p, s, r, _, _ in rows] == [
        ("records.jsonl:1", "kept", "passed every filter"),
        ("records.jsonl:2", "quarantined", "read: jsonl: line 2 has no 'text' field"),
        ("records.jsonl:3", "quarantined", "read: jsonl: line 3 is not valid JSON (Unterminated string starting at)"),
        ("records.jsonl:4", "quarantined", "read: jsonl: line 4 has a 'text' that is int, not a string"),
        ("records.jsonl:5", "quarantined", "read: jsonl: line 5 is not a JSON object but list"),
        ("records.jsonl:6", "quarantined", "read: jsonl: line 6 has a 'text' with a lone surrogate, which is not text")]
    for (_, _, _, content_hash, nbytes), line in zip(rows[1:], lines[1:]):
        assert (content_hash, nbytes) == (hashlib.sha256(line.encode()).hexdigest(), len(line.encode()))
    [doc] = why(build.out, hashlib.sha256(lines[2].encode()).hexdigest())
    assert doc["path"] == "records.jsonl:3" and not doc["in_corpus"]


def test_links_out_of_a_folder_are_skipped_never_read(tmp_path):
    outside = write_docs(tmp_path / "elsewhere", {"secret.txt": prose(9), "sub/more.txt": prose(10)})
    folder = write_docs(tmp_path / "mine", {"a.txt": prose(1), "sub/b.txt": prose(2)})
    (folder / "secret-link.txt").symlink_to(outside / "secret.txt")
    (folder / "dir-link").symlink_to(outside / "sub")
    (folder / "relative-escape.txt").symlink_to(Path("..") / "elsewhere" / "secret.txt")
    (folder / "inner-link.txt").symlink_to(folder / "sub" / "b.txt")            # inside the folder: read
    build = build_corpus([folder_source(folder, id="mine", license="MIT")], out=tmp_path / "c")
    rows = {p: (s, r, h, n) for p, s, r, h, n in
            build.ledger.q("SELECT path, status, reason, content_hash, bytes FROM documents")}
    target = (outside / "secret.txt").resolve()
    assert rows["secret-link.txt"] == ("skipped", f"read: link to {target}, outside the folder: "
                                                  "not covered by its license", None, 0)
    assert rows["relative-escape.txt"][:2] == rows["secret-link.txt"][:2]
    assert rows["dir-link"][0] == "skipped" and str((outside / "sub").resolve()) in rows["dir-link"][1]
    assert rows["inner-link.txt"][0] == rows["a.txt"][0] == "kept"                 # read under the link's name
    assert rows["sub/b.txt"][1] == "exact-dedup: same text as document 3"       # ... so its target repeats it
    secret = hashlib.sha256(prose(9).encode()).hexdigest()
    assert not build.ledger.q("SELECT 1 FROM documents WHERE content_hash = ?", secret)
    assert build.stats["skipped"] == 3 and report(build.out)["documents"]["skipped"] == 3


# -- a killed build's workers -----------------------------------------------------------------------

def children(pid: int) -> list[int]:
    """Processes whose parent is `pid` (from /proc)."""
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state_and_parent = stat.read_text().rsplit(")", 1)[1].split()[:2]
        except (OSError, IndexError):
            continue
        if int(state_and_parent[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"   # a zombie is dead
    except OSError:
        return False


def folder_recipe(tmp_path: Path, docs: int, config: str = "") -> Path:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "many.jsonl").write_text("".join(json.dumps({"text": prose(i)}) + "\n" for i in range(docs)))
    recipe = tmp_path / "many.toml"
    recipe.write_text(f'name = "many"\n[[folders]]\npath = "docs"\nid = "many"\nlicense = "MIT"\n[config]\n{config}')
    return recipe


@pytest.mark.skipif(not ON_LINUX, reason="reads /proc")
def test_a_killed_build_takes_its_workers_with_it(tmp_path):
    recipe = folder_recipe(tmp_path, 20_000)
    build = subprocess.Popen([sys.executable, "-m", "lamina.cli", "data", "build", str(recipe),
                              "--out", str(tmp_path / "c"), "--workers", "2", "--quiet"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while len(workers) < 2 and build.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
            workers = children(build.pid)
        assert len(workers) >= 2, build.stderr.read().decode() if build.poll() is not None else "no workers started"
        build.send_signal(signal.SIGKILL)
        assert build.wait(10) == -signal.SIGKILL
        deadline = time.monotonic() + 5
        while any(map(running, workers)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [pid for pid in workers if running(pid)]
        assert not (tmp_path / "c").exists()
    finally:
        build.kill()
        for pid in workers:                    # what a failing run would leave behind
            if running(pid):
                os.kill(pid, signal.SIGKILL)


# -- no room to write -------------------------------------------------------------------------------

@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_disk_is_one_line_from_the_shared_writer(tmp_path):
    """/dev/full answers every write with ENOSPC: the writer's partial is linked to it."""
    with pytest.raises(LaminaError, match=r"model\.gguf: not written, the disk is full on /.* free some space") as e:
        with atomic_file(tmp_path / "model.gguf") as partial:
            partial.symlink_to("/dev/full")
            partial.write_bytes(b"\0" * 100_000)
    assert "\n" not in str(e.value) and isinstance(e.value.__cause__, OSError)
    with pytest.raises(LaminaError, match=r"corpus: not written, the disk is full on "):
        with atomic_directory(tmp_path / "corpus") as partial:
            (partial / "train-00000.bin").symlink_to("/dev/full")
            write_shard(partial / "train-00000.bin", [np.arange(10)], np.dtype(np.uint16))
    assert list(tmp_path.iterdir()) == []                                 # nothing finished-looking, no partial


def build_in_subprocess(recipe: Path, out: Path, preexec_fn=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lamina.cli", "data", "build", str(recipe), "--out", str(out),
                           "--workers", "1", "--quiet"], capture_output=True, text=True, preexec_fn=preexec_fn)


@pytest.mark.skipif(not ON_LINUX, reason="RLIMIT_FSIZE semantics are Linux's")
def test_a_file_size_limit_is_one_line_too(tmp_path):
    """A real EFBIG from the kernel: the build's shard outgrows `ulimit -f` (Python ignores SIGXFSZ)."""
    recipe = folder_recipe(tmp_path, 1000)
    limit = lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
    result = build_in_subprocess(recipe, tmp_path / "out" / "corpus", preexec_fn=limit)
    assert result.returncode == 1, result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith(f"lamina: error: {tmp_path / 'out' / 'corpus'}: not written, a file outgrew the "
                           "largest size allowed (the file system's, or `ulimit -f`) on /")
    assert "written" in line and "needs more than" in line
    assert list((tmp_path / "out").iterdir()) == []


TINY_DISK = """
import contextlib, io, json, os, sys
from pathlib import Path
import torch
from lamina.checkpoint import write_hf, write_meta
from lamina.cli import main
from lamina.errors import LaminaError
from lamina.model import ModelConfig, expected_shapes
disk, recipe = Path(sys.argv[1]), sys.argv[2]
said = {}
err = io.StringIO()
with contextlib.redirect_stderr(err):
    said["data build"] = [main(["data", "build", recipe, "--out", str(disk / "corpus"), "--workers", "1", "--quiet"]),
                          err.getvalue()]
config = ModelConfig(dim=64, n_layers=2, n_heads=2, ffn_dim=128, vocab_size=256, max_seq_len=64)
weights = {k: torch.randn(shape) for k, shape in expected_shapes(config).items()}
for name, write in (("meta", write_meta), ("hf", write_hf)):
    try:
        write(disk / name, config, weights)
        said[name] = "written"
    except LaminaError as e:
        said[name] = str(e)
said["left"] = sorted(os.listdir(disk))
print(json.dumps(said))
"""


def tiny_disk_works(mountpoint: Path) -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "--mount", "--user", "--map-root-user", "mount", "-t", "tmpfs",
                            "-o", "size=64k", "tmpfs", str(mountpoint)], capture_output=True)
    return probe.returncode == 0


def test_a_build_and_a_checkpoint_on_a_full_disk_say_so_in_one_line(tmp_path):
    """A real full disk: a 64 KiB tmpfs, mounted in a private mount namespace (where allowed)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if not tiny_disk_works(disk):
        pytest.skip("cannot mount a tmpfs here (needs unshare and user namespaces)")
    recipe = folder_recipe(tmp_path, 300)
    (tmp_path / "tiny_disk.py").write_text(textwrap.dedent(TINY_DISK))
    result = subprocess.run(["unshare", "--mount", "--user", "--map-root-user", "sh", "-c",
                             'mount -t tmpfs -o size=64k tmpfs "$1" && exec "$2" "$3" "$1" "$4"', "sh",
                             str(disk), sys.executable, str(tmp_path / "tiny_disk.py"), str(recipe)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    said = json.loads(result.stdout.splitlines()[-1])
    rc, stderr = said["data build"]
    assert rc == 1 and stderr.count("\n") == 1, stderr
    assert stderr.startswith(f"lamina: error: {disk / 'corpus'}: not written, the disk is full on {disk} (")
    for name in ("meta", "hf"):
        assert said[name].startswith(f"{disk / name}: not written, the disk is full on {disk} ("), said[name]
        assert "free; it needs " in said[name]
    assert said["left"] == []                                   # no corpus, no checkpoint, no partial
