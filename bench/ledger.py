"""The ledger at scale: `lamina data trace`, `why`, `why SOURCE`, `report` and `who-saw` on a
synthetic corpus of 10 million documents and 10 billion tokens, through lamina's own functions.

    .venv/bin/python -m bench.ledger [--documents 10000000] [--out /tmp/lamina-bench-ledger] [--runs 5]

The corpus (`generate`): the real ledger schema, filled in bulk from numpy draws with a fixed
seed. 200 sources with Zipf-distributed sizes (the largest holds about a sixth of the documents),
about 6% of them under licenses the permissive policy keeps out, and sources whose records name
their own license (jsonl shards, paths like `crawl/part-00123.jsonl.zst:4567`, a `records` row
each, about half the documents; a few record licenses are kept out). Three quarters of the
documents are kept; the rest fail one rule each, with the reasons a build writes (numbers in them,
and the dedup reasons naming their twin, so most reasons are distinct). Every document has the
verdicts a build writes, rule by rule up to the one that stopped it (6.7 a document); kept ones with
PII have scrub counts. Kept documents are shuffled into uint16 shards that close at 16M tokens;
the shard files are sparse (all zeros, no disk). Two checkpoints of a run on it record the tokens
they consumed of each document (`doc_tokens`, a fifth and half of the training documents).

Then `Ledger.finish()` (indexes, summary tables, content digest), timed apart; a folder already
generated with the same --documents is reused (and finished if it is not). Each query runs once
cold (the folder's files dropped from the page cache first, posix_fadvise) and --runs times warm;
the table shows the cold time and the warm median. Rows go to bench/results/ledger.json."""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import shutil
import sqlite3
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from lamina.data.ledger import Ledger
from lamina.data.licenses import Policy
from lamina.data.provenance import who_saw
from lamina.data.report import report, trace, why, why_source

from bench import print_table

RESULTS = Path(__file__).parent / "results" / "ledger.json"
SOURCES = 200
SHARD_TOKENS = 1 << 24
TOKENS_PER_DOCUMENT = 1000          # over all documents: 10B tokens for 10M
# the rules in the order a build applies them; a document has a verdict for each that applies, up to its failure
STAGES = (("license", None), ("read", None), ("record-license", None), ("deny-list", "content hash not denied"),
          ("decode", "utf-8"), ("quality", "quality rules passed"), ("code-rules", "code rules passed"),
          ("pii", None), ("exact-dedup", "first of its text"), ("near-dedup", "no near duplicate seen before"))
STAGE = {name: i for i, (name, _) in enumerate(STAGES)}
KEPT = len(STAGES)                  # the "failed stage" of a kept document
RECORD_LICENSES = ("CC-BY-4.0", "CC0-1.0", "MIT", "Apache-2.0", "LicenseRef-Public-Domain", "CC-BY-SA-4.0",
                   "CC-BY-NC-4.0", None)
SOURCE_LICENSES = ("MIT", "Apache-2.0", "BSD-3-Clause", "CC-BY-4.0", "CC0-1.0", "LicenseRef-Public-Domain", "ISC",
                   "BSD-2-Clause")
DENIED_LICENSES = ("GPL-3.0-only", "NOASSERTION", "MPL-2.0", "CC-BY-NC-4.0")
SCRUB_KINDS = ("email", "ip", "phone", "secret")


def content_hash(seed: int, doc_id: int) -> str:
    return hashlib.sha256(f"{seed}:{doc_id}".encode()).hexdigest()


def _sources(rng: np.random.Generator, documents: int) -> list[SimpleNamespace]:
    """200 sources: Zipf sizes in shuffled order, a kind, a license or records, the policy's decision."""
    weights = 1 / np.arange(1, SOURCES + 1)
    sizes = np.floor(documents * weights / weights.sum()).astype(np.int64)
    sizes[: documents - sizes.sum()] += 1
    sizes = sizes[rng.permutation(SOURCES)]
    records, plain = 0, 0                # record-carrying sources: about half the documents, greedily
    carries = np.zeros(SOURCES, bool)
    for i in np.argsort(-sizes, kind="stable"):
        carries[i] = records <= plain
        records, plain = (records + sizes[i], plain) if carries[i] else (records, plain + sizes[i])
    policy, out = Policy.permissive(), []
    for i, n in enumerate(sizes.tolist()):
        kind = "prose" if carries[i] else ("prose", "code", "dialogue")[i % 3]
        denied = not carries[i] and rng.random() < 0.06
        lic = "CC-BY-4.0" if carries[i] else str(rng.choice(DENIED_LICENSES if denied else SOURCE_LICENSES))
        sid = f"{'web' if carries[i] else {'prose': 'books', 'code': 'code', 'dialogue': 'chat'}[kind]}-{i:03d}"
        verdict = policy.decide_source(sid, lic)
        out.append(SimpleNamespace(id=sid, kind=kind, origin=f"/data/{sid}", license=lic, license_from="declared",
                                   attribution=f"the {sid} authors", records=bool(carries[i]), size=n,
                                   allowed=verdict.allowed, reason=verdict.reason,
                                   dir=("crawl", "data", "train", "shards")[i % 4]))
    return out


def _path(s: SimpleNamespace, j: int) -> str:
    if s.records:
        return f"{s.dir}/part-{j // 10_000:05d}.jsonl.zst:{j % 10_000}"
    if s.kind == "code":
        return f"repo{j // 400:05d}/src/pkg{j // 40 % 10}/module_{j % 40:02d}.py"
    return f"{s.kind}/{j // 100:05d}/{j % 100:02d}.txt"


def generate(folder: Path, documents: int, seed: int = 0) -> None:
    """Write the synthetic corpus into `folder`: ledger.sqlite, manifest.json, the sparse shards
    and runs/pretrain/step-*/ (each its doc_tokens and a lamina.json naming the data)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    ledger = Ledger.create(folder / Ledger.FILE)
    db = ledger.db
    db.execute("PRAGMA journal_mode=OFF")       # a generator's file: nothing to recover if it dies
    db.execute("PRAGMA synchronous=OFF")
    db.execute("PRAGMA cache_size=-1000000")
    sources = _sources(rng, documents)
    for s in sources:
        ledger.add_source(s, s.allowed, s.reason)
    policy = Policy.permissive()

    n = documents
    ids = np.arange(1, n + 1)
    src = np.repeat(np.arange(SOURCES), [s.size for s in sources])
    first = np.repeat(np.cumsum([0] + [s.size for s in sources])[:-1] + 1, [s.size for s in sources])
    carries = np.array([s.records for s in sources])[src]
    allowed = np.array([s.allowed for s in sources])[src]
    is_code = np.array([s.kind == "code" for s in sources])[src]
    # each record's license (None: the record names none, the source's applies) and whether the policy allows it
    rec_lic = np.where(carries, rng.choice(len(RECORD_LICENSES), n, p=[.35, .15, .1, .1, .1, .04, .04, .12]), -1)
    decided = {lic: policy.decide_license(lic) for lic in RECORD_LICENSES if lic}
    rec_denied = np.array([lic is not None and not decided[lic].allowed for lic in RECORD_LICENSES])
    fate = rng.choice([KEPT, STAGE["read"], STAGE["deny-list"], STAGE["decode"], STAGE["quality"],
                       STAGE["exact-dedup"], STAGE["near-dedup"]], n, p=[.78, .02, .0002, .02, .0898, .05, .04])
    fate = np.where(is_code & (fate == STAGE["quality"]), STAGE["code-rules"], fate)
    fate = np.where(np.isin(fate, [STAGE["exact-dedup"], STAGE["near-dedup"]]) & (ids == first), KEPT, fate)
    fate = np.where((rec_lic >= 0) & rec_denied[rec_lic], STAGE["record-license"], fate)
    fate = np.where(allowed, fate, STAGE["license"])
    twin = first + np.floor(rng.random(n) * (ids - first)).astype(np.int64)
    status = np.select([fate == KEPT, fate == STAGE["decode"], (fate == STAGE["read"]) & carries,
                        fate == STAGE["read"]], ["kept", "quarantined", "quarantined", "skipped"], "rejected")
    tokens = np.where(fate == KEPT, np.maximum(2, rng.lognormal(0, 1.1, n)), 0)
    tokens = np.where(fate == KEPT, np.maximum(2, np.round(tokens * TOKENS_PER_DOCUMENT * n / tokens.sum())), 0)
    tokens = tokens.astype(np.int64)
    nbytes = np.where(fate == KEPT, tokens * 4, np.round(rng.lognormal(8, 1.2, n))).astype(np.int64)
    nbytes = np.where(status == "skipped", 0, nbytes)
    split = np.where(fate != KEPT, None, np.where(rng.random(n) < 0.02, "validation", "train"))
    numbers = rng.integers(1, 1000, n)
    scrubbed = (fate == KEPT) & (rng.random(n) < 0.08)

    def reason(i: int, f: int, s: SimpleNamespace) -> str:
        k = int(numbers[i])
        if f == KEPT:
            return "passed every filter"
        if f == STAGE["license"]:
            return f"license: {s.reason}"
        if f == STAGE["read"]:
            return f"read: jsonl: line {k} is not valid JSON" if s.records else \
                f"read: link to /tmp/x{k}, outside the folder: not covered by its license"
        if f == STAGE["record-license"]:
            return f"record-license: {decided[RECORD_LICENSES[rec_lic[i]]].reason}"
        if f == STAGE["deny-list"]:
            return f"deny-list: content hash {content_hash(seed, i + 1)[:16]}… is on the deny list"
        if f == STAGE["decode"]:
            return ("decode: empty", "decode: binary: NUL bytes", f"decode: bad encoding: not UTF-8 at byte {k}")[k % 3]
        if f == STAGE["quality"]:
            return (f"quality: too short: {k % 50} words < 50", f"quality: mean word length {k % 30 / 10 + 10:.1f} "
                    "outside 3..10", f"quality: {30 + k % 70}% duplicate lines > 30%")[k % 3]
        if f == STAGE["code-rules"]:
            return (f"code-rules: minified: a line of {1000 + k} characters > 1000",
                    "code-rules: generated code (marker in the first 5 lines)",
                    f"code-rules: alphanumeric fraction {k % 25 / 100:.2f} < 0.25")[k % 3]
        if f == STAGE["exact-dedup"]:
            return f"exact-dedup: same text as document {twin[i]}"
        return f"near-dedup: near duplicate of document {twin[i]}"

    db.execute("CREATE TEMP TABLE gen (doc_id INTEGER PRIMARY KEY, src INTEGER, mask INTEGER, last INTEGER, "
               "rec TEXT, pii TEXT)")
    db.execute("CREATE TEMP TABLE stages (stage INTEGER PRIMARY KEY, name TEXT, reason TEXT)")
    db.executemany("INSERT INTO stages VALUES (?,?,?)", [(i, name, why) for i, (name, why) in enumerate(STAGES)])
    for lo in range(0, n, 500_000):
        rows, recs, scrubs, gens = [], [], [], []
        for i in range(lo, min(n, lo + 500_000)):
            s, f, doc_id = sources[src[i]], int(fate[i]), i + 1
            j = doc_id - int(first[i])
            h = content_hash(seed, int(twin[i]) if f == STAGE["exact-dedup"] else doc_id)
            rows.append((doc_id, s.id, _path(s, j), None if status[i] == "skipped" else h, int(nbytes[i]),
                         int(tokens[i]), str(status[i]), split[i], reason(i, f, s)))
            rec = None
            if rec_lic[i] >= 0:
                lic = RECORD_LICENSES[rec_lic[i]]
                recs.append((doc_id, f"{s.id}-{j:08d}", lic, f"https://site{j % 9973}.example.org/{j}"))
                rec = lic and decided[lic].reason
            pii = None
            if scrubbed[i]:
                kinds = {SCRUB_KINDS[(j + t) % 4]: 1 + (j + t) % 3 for t in range(1 + j % 2)}
                scrubs += [(doc_id, kind, c) for kind, c in sorted(kinds.items())]
                pii = ", ".join(f"{c} {kind}" for kind, c in sorted(kinds.items()))
            if f in (STAGE["license"], STAGE["read"]):
                applies = range(f + 1)  # kept out by the source's license, or not read
            else:
                applies = [STAGE["license"], *[STAGE["record-license"]] * bool(rec), STAGE["deny-list"],
                           STAGE["decode"], STAGE["code-rules" if s.kind == "code" else "quality"], STAGE["pii"],
                           STAGE["exact-dedup"], STAGE["near-dedup"]]
            gens.append((doc_id, int(src[i]) + 1, sum(1 << a for a in applies if a <= f), f, rec, pii))
        db.executemany("INSERT INTO documents VALUES (?,?,?,?,?,?,?,?,?)", rows)
        db.executemany("INSERT INTO records VALUES (?,?,?,?)", recs)
        db.executemany("INSERT INTO scrubs VALUES (?,?,?)", scrubs)
        db.executemany("INSERT INTO temp.gen VALUES (?,?,?,?,?,?)", gens)
        print(f"  {min(n, lo + 500_000):,} documents", file=sys.stderr)
    db.execute("""INSERT INTO verdicts
        SELECT g.doc_id, f.name, f.stage != g.last,
               CASE WHEN f.stage = g.last THEN (SELECT substr(reason, length(f.name) + 3) FROM documents
                                                WHERE id = g.doc_id)
                    WHEN f.stage = 0 THEN (SELECT reason FROM sources WHERE rowid = g.src)
                    WHEN f.stage = 2 THEN g.rec
                    WHEN f.stage = 7 THEN coalesce(g.pii, 'nothing to scrub')
                    ELSE f.reason END
        FROM temp.gen g CROSS JOIN temp.stages f WHERE (g.mask >> f.stage) & 1""")
    db.execute("DROP TABLE temp.gen")

    manifest = {"dtype": "uint16", "bos_id": 1, "tokenizer": "smollm2-135m-instruct", "shards": {}}
    train_docs = ids[split == "train"]
    for name in ("train", "validation"):
        docs = ids[split == name]
        docs = docs[rng.permutation(len(docs))]
        lengths = tokens[docs - 1]
        before = np.cumsum(lengths) - lengths
        shard = before // SHARD_TOKENS
        cuts = np.flatnonzero(np.diff(shard)) + 1
        for k, (d, b, ln) in enumerate(zip(np.split(docs, cuts), np.split(before, cuts), np.split(lengths, cuts))):
            starts = b - b[0]
            ranges = list(zip(starts.tolist(), (starts + ln).tolist(), d.tolist()))
            shard_name = f"{name}-{k:05d}.bin"
            ledger.add_shard(shard_name, name, "uint16", ranges)
            with open(folder / shard_name, "wb") as f:
                f.truncate(2 * ranges[-1][1])
            manifest["shards"][shard_name] = {"split": name, "tokens": ranges[-1][1]}
    ledger.add_run("bench-ledger", json.dumps({"documents": n, "seed": seed}), "", "")
    ledger.commit()
    ledger.close()
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")

    from safetensors.numpy import save_file
    for step, share in ((500, 0.2), (1000, 0.5)):
        ck = folder / "runs" / "pretrain" / f"step-{step:06d}"
        (ck / "train_state").mkdir(parents=True)
        seen = train_docs[np.random.default_rng([seed, step]).random(len(train_docs)) < share]
        doc_tokens = np.zeros(n + 1, np.int64)
        doc_tokens[seen] = tokens[seen - 1]
        save_file({"doc_tokens": doc_tokens}, str(ck / "train_state" / "state.safetensors"))
        (ck / "lamina.json").write_text(json.dumps({"made_by": {"tool": "lamina train", "step": step,
                                                                "data": {"data": str(folder)}}}))


def _stamp_digest(folder: Path, digest: str) -> None:
    """The ledger digest into each checkpoint's record, as training writes it."""
    for record in sorted((folder / "runs").rglob("lamina.json")):
        meta = json.loads(record.read_text())
        meta["made_by"]["data"]["ledger_digest"] = digest
        record.write_text(json.dumps(meta))


def _drop_cache(folder: Path) -> None:
    for p in folder.rglob("*"):
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def queries(folder: Path) -> list[tuple]:
    """(query, argument, call, the answer in brief): each CLI question, on refs picked from the ledger."""
    db = sqlite3.connect(f"file:{folder / Ledger.FILE}?mode=ro", uri=True)
    (big,), (small,) = (db.execute("SELECT d.source_id FROM documents d JOIN sources s ON s.id = d.source_id "
                                   "WHERE s.allowed GROUP BY 1 ORDER BY COUNT(*) DESC LIMIT 1").fetchone(),
                        db.execute("SELECT id FROM sources WHERE allowed ORDER BY rowid LIMIT 1 OFFSET 100").fetchone())
    doc_id, path, sha = db.execute("SELECT id, path, content_hash FROM documents WHERE source_id=? AND "
                                   "status='kept' ORDER BY id LIMIT 1 OFFSET ?", (big, 12345)).fetchone()
    shard, tokens = db.execute("SELECT name, tokens FROM shards WHERE split='train' ORDER BY name LIMIT 1 OFFSET "
                               "(SELECT COUNT(*) / 2 FROM shards WHERE split='train')").fetchone()
    db.close()
    runs = [folder / "runs"]
    last = path.rpartition("/")[2]
    return [("trace", f"{shard} {tokens * 2 // 3}", lambda: trace(folder, shard, tokens * 2 // 3),
             lambda t: f"document {t['document']['id']}"),
            ("why (document id)", str(doc_id), lambda: why(folder, str(doc_id)), _documents),
            ("why (sha256)", sha[:12] + "…", lambda: why(folder, sha), _documents),
            ("why (recorded path)", path, lambda: why(folder, path), _documents),
            ("why (last component)", last, lambda: why(folder, last), _documents),
            ("why SOURCE (largest)", big, lambda: why_source(folder, big),
             lambda s: f"{sum(s['documents'].values()):,} documents, {len(s['kept_out'])} rules"),
            ("why SOURCE", small, lambda: why_source(folder, small),
             lambda s: f"{sum(s['documents'].values()):,} documents, {len(s['kept_out'])} rules"),
            ("report", "", lambda: report(folder),
             lambda r: f"{r['tokens']:,} tokens, {len(r['rejected']):,} rejected rows"),
            ("who-saw SOURCE (largest)", big, lambda: who_saw(big, runs), _tokens),
            ("who-saw (sha256)", sha[:12] + "…", lambda: who_saw(sha, runs), _tokens)]


def _documents(docs: list[dict]) -> str:
    return f"{len(docs)} document{'s' * (len(docs) != 1)}"


def _tokens(rows: list[dict]) -> str:
    return ", ".join(f"{r['tokens']:,}" for r in rows) + " tokens"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--documents", type=int, default=10_000_000, help="documents (default 10M)")
    p.add_argument("--out", type=Path, default=Path("/tmp/lamina-bench-ledger"),
                   help="the generated corpus, reused if it holds as many documents (default %(default)s)")
    p.add_argument("--runs", type=int, default=5, help="warm runs of each query after the cold one (default 5)")
    p.add_argument("--results", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    folder, meta_path = args.out, args.out / "bench.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    if meta.get("documents") != args.documents:
        shutil.rmtree(folder, ignore_errors=True)
        start = time.perf_counter()
        generate(folder, args.documents)
        meta = {"documents": args.documents, "generate_s": round(time.perf_counter() - start, 1)}
        meta_path.write_text(json.dumps(meta))
        print(f"generated in {meta['generate_s']:.0f} s", file=sys.stderr)
    ledger = Ledger(sqlite3.connect(folder / Ledger.FILE), folder / Ledger.FILE)
    if not ledger.finished:
        start = time.perf_counter()
        ledger.finish()
        meta["finish_s"] = round(time.perf_counter() - start, 1)
        meta_path.write_text(json.dumps(meta))
        print(f"finished in {meta['finish_s']:.0f} s", file=sys.stderr)
    _stamp_digest(folder, ledger.content_digest())
    ledger.close()
    size = (folder / Ledger.FILE).stat().st_size
    counts = dict(sqlite3.connect(folder / Ledger.FILE).execute(
        "SELECT 'verdicts', COUNT(*) FROM verdicts UNION ALL SELECT 'ranges', COUNT(*) FROM ranges UNION ALL "
        "SELECT 'tokens', SUM(tokens) FROM shards UNION ALL SELECT 'shards', COUNT(*) FROM shards").fetchall())
    print(f"ledger {size / 1e9:.2f} GB: {args.documents:,} documents, {counts['verdicts']:,} verdicts, "
          f"{counts['ranges']:,} ranges, {counts['shards']} shards, {counts['tokens']:,} tokens", file=sys.stderr)

    rows, load = [], os.getloadavg()[0]
    for name, arg, call, brief in queries(folder):
        _drop_cache(folder)
        start = time.perf_counter()
        answer = brief(call())
        cold = time.perf_counter() - start
        warm = []
        for _ in range(args.runs):
            start = time.perf_counter()
            call()
            warm.append(time.perf_counter() - start)
        rows.append({"query": name, "argument": arg, "answer": answer, "cold_s": round(cold, 4),
                     "median_s": round(statistics.median(warm), 4), "runs": [round(w, 4) for w in warm]})
        print(f"{name}: cold {cold:.3f} s, warm {statistics.median(warm):.3f} s", file=sys.stderr)
    head = ("query", "argument", "answer", "cold s", "warm median s")
    print_table(head, [(r["query"], r["argument"], r["answer"], f"{r['cold_s']:.3f}", f"{r['median_s']:.3f}")
                      for r in rows])
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps({
        "date": datetime.date.today().isoformat(), "machine": platform.machine(), "cpus": os.cpu_count(),
        "python": platform.python_version(), "sqlite": sqlite3.sqlite_version, "documents": args.documents,
        **counts, "ledger_bytes": size, **{k: v for k, v in meta.items() if k != "documents"},
        "load_average": [round(load, 2), round(os.getloadavg()[0], 2)], "rows": rows},
        indent=2) + "\n")


if __name__ == "__main__":
    main()
