"""The corpus build on a Ray cluster: every stage a Ray task, and the same corpus, byte for byte,
as the local build (`build_corpus(..., executor="ray")`, `lamina data build --executor ray`).

1. **judge**, one task per source part (a file of a folder; a built-in source is one part):
   license (the source's, or each record's), decoding, cleaning, quality rules, PII scrubbing,
   and the hashes dedup compares. Each task writes its part's ledger rows, kept texts and MinHash
   signatures to `part-NNNNNN.parquet` in the work folder, in one atomic rename: the ledger
   fragment of that part.
2. **dedup shuffle**: one task per part splits its text hashes and LSH band keys into P
   partitions by hash (band by band: a band's bucket lives in one partition); one task per
   partition gathers its keys from every part and returns only the groups of two or more.
3. **resolve**, here: the first document of each text stays; near duplicates are settled in
   document order exactly as the local build's single pass does (a document goes when a bucket
   it shares already holds a kept one). Only the documents in groups come here.
4. **tokenize**, one task per part: its kept texts to token arrays (`tokens-NNNNNN.npy`), each
   document's split and mixing copies drawn from the seed and its content hash.
5. **shards**: lengths come here, the shuffle and the cuts are computed as the local build does,
   and one task per shard gathers its documents' tokens and writes it.
6. **ledger**: the fragments are merged here, in part order, with the dedup verdicts and splits.

Faults: a worker killed mid-task is retried by Ray (its part file appears only when whole, so
nothing is counted twice). The work folder (`.OUT.work` beside `out`) outlives a killed driver:
run the build again and finished parts are reused, as long as the recipe, the policy and each
part (its path, size and modification time) are unchanged. It is removed once the corpus is in
place. On a cluster, `out` must be on a filesystem every node sees."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import LaminaError
from ..files import atomic_file
from ..progress import show_progress
from .stages import TOKENIZER_DIR, BuildConfig, Judged, _copies, _dedup_verdicts, _filter, _groups, _split
from .dedup import NearDuplicates
from .ledger import Ledger
from .licenses import Policy
from .shards import token_dtype, write_shard
from .sources import Record, Source

INSTALL = "pip install 'lamina[ray]'  (or: pip install ray==2.60.0)"
MAX_PARTITIONS = 64     # dedup reducers: one per CPU up to this (parts × partitions objects cross the shuffle)


def _ray():
    try:
        import ray
    except ImportError:
        raise LaminaError(f"--executor ray needs Ray, which is not installed: {INSTALL}") from None
    return ray


def work_folder(out: Path) -> Path:
    return out.parent / f".{out.name}.work"


# -- the tasks ----------------------------------------------------------------------------------------

# A part file: its documents' ledger rows (verdicts and scrubs as JSON, the record as [id, license,
# origin]), and for those still in the running their text, its hash and its MinHash signature.
PART = pa.schema([("path", pa.string()), ("content_hash", pa.string()), ("bytes", pa.int64()),
                  ("status", pa.string()), ("reason", pa.string()), ("verdicts", pa.string()),
                  ("scrubs", pa.string()), ("record", pa.string()), ("text", pa.large_string()),
                  ("text_hash", pa.string()), ("planted", pa.bool_()), ("signature", pa.binary())])


def judge_part(path: str, source: Source, part, allowed: bool, reason: str, policy: Policy,
               config: BuildConfig) -> int:
    """Stage 1 for one part: every document's verdicts, text and signature, into `path`. Its count."""
    near = NearDuplicates(seed=config.seed) if config.near_dedup else None
    rows: dict[str, list] = {name: [] for name in PART.names}
    for raw in part.read():
        j = _filter(source.kind, raw, policy, config, near) if allowed else Judged("rejected", f"license: {reason}", [])
        j.verdicts.insert(0, ("license", allowed, reason))
        r = raw.record
        for k, v in (("path", raw.path), ("content_hash", None if raw.skipped else hashlib.sha256(raw.data).hexdigest()),
                     ("bytes", len(raw.data)), ("status", j.status), ("reason", j.reason),
                     ("verdicts", json.dumps(j.verdicts)), ("scrubs", json.dumps(sorted(j.scrubs.items()))),
                     ("record", None if r is None else json.dumps([r.id, r.license, r.origin])),
                     ("text", j.text), ("text_hash", j.text_hash if j.text is not None else None),
                     ("planted", j.planted),
                     ("signature", j.signature.tobytes() if j.text is not None and j.signature is not None else None)):
            rows[k].append(v)
    table = pa.table(rows, schema=PART)
    with atomic_file(path, overwrite=True) as tmp:      # a task killed midway leaves no part file
        pq.write_table(table, tmp)
    return table.num_rows


def _partition(key: bytes, partitions: int) -> int:
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") % partitions


def dedup_keys(path: str, first_id: int, partitions: int, bands: int) -> list[tuple[list, list]]:
    """Stage 2, map: (text hash, doc id) and ((band, band key), doc id) of one part's documents
    that still have text, in P partitions by key. Canaries take no part in near dedup."""
    t = pq.read_table(path, columns=["text_hash", "planted", "signature"]).to_pydict()
    out = [([], []) for _ in range(partitions)]
    for i, (text_hash, planted, sig) in enumerate(zip(t["text_hash"], t["planted"], t["signature"])):
        if text_hash is None:
            continue
        doc = first_id + i
        out[_partition(text_hash.encode(), partitions)][0].append((text_hash, doc))
        if sig is not None and not planted:
            rows = len(sig) // bands
            for b in range(bands):
                key = sig[b * rows:(b + 1) * rows]
                out[_partition(bytes([b]) + key, partitions)][1].append(((b, key), doc))
    return out if partitions > 1 else out[0]


def dedup_groups(*maps: tuple[list, list]) -> tuple[list[list[int]], list[tuple[int, list[int]]]]:
    """Stage 2, reduce: the doc ids sharing a text, and those sharing a band bucket (with the
    band), for every group of two or more, each in document order."""
    texts: dict[str, list[int]] = {}
    buckets: dict[tuple[int, bytes], list[int]] = {}
    for exact, near in maps:
        for key, doc in exact:
            texts.setdefault(key, []).append(doc)
        for key, doc in near:
            buckets.setdefault(key, []).append(doc)
    return ([sorted(d) for d in texts.values() if len(d) > 1],
            [(band, sorted(d)) for (band, _), d in buckets.items() if len(d) > 1])


_tokenizers: dict[tuple[str, str], object] = {}     # one load per worker process and tokenizer


def tokenizer_digest(ref: str) -> str:
    """sha256 of the files of a tokenizer given by path ("" for a packaged name): what a worker's
    loaded tokenizer is kept under, so that a build never cuts shards with an earlier build's
    tokenizer of the same path (a BPE trained anew into the same partial folder)."""
    path = Path(ref)
    files = sorted(f for f in (path.rglob("*") if path.is_dir() else [path]) if f.is_file()) if path.exists() else []
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest() if files else ""


def tokenize_part(path: str, out: str, keep: list[int], tokenizer: tuple[str, str], source: Source,
                  config: BuildConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stage 4 for one part: its kept documents (`keep`, indices into the part) as BOS + tokens,
    back to back in `out` (.npy); their lengths, validation flags and mixing copies. `tokenizer`:
    its reference and `tokenizer_digest`."""
    from ..tokenizer import load_tokenizer
    if tokenizer not in _tokenizers:
        _tokenizers[tokenizer] = load_tokenizer(tokenizer[0])
    tok = _tokenizers[tokenizer]
    texts, hashes = _kept_texts(path, keep)
    docs, dtype = [], token_dtype(tok.vocab_size)
    for start in range(0, len(texts), 256):
        docs += [np.asarray([tok.bos_id] + ids, dtype=dtype) for ids in tok.encode_batch(texts[start:start + 256], bos=False)]
    lengths = np.array([len(d) for d in docs], dtype=np.int64)
    validation = np.array([_split(config, source, h) == "validation" for h in hashes], dtype=bool)
    copies = np.array([_copies(config, source, h) for h in hashes], dtype=np.int64)
    with atomic_file(out, overwrite=True) as tmp, open(tmp, "wb") as f:
        np.save(f, np.concatenate(docs) if docs else np.zeros(0, dtype))
    return lengths, validation, copies


def write_shard_part(path: str, dtype: str, pieces: list[tuple[str, int, int]]) -> list[tuple[int, int]]:
    """Stage 5 for one shard: (tokens file, start, end) slices, in shard order, written as one shard."""
    files: dict[str, np.ndarray] = {}
    docs = []
    for f, s, e in pieces:
        if f not in files:
            files[f] = np.load(f, mmap_mode="r", allow_pickle=False)
        docs.append(files[f][s:e])
    return write_shard(Path(path), docs, np.dtype(dtype))


# -- the driver -----------------------------------------------------------------------------------------

def build_on_ray(sources: list[Source], policy: Policy, config: BuildConfig, ledger: Ledger, tmp: Path,
                 tokenizer, *, work: Path, address: str | None = None,
                 progress: bool = False) -> tuple[dict, int, int, object]:
    """Stages 1-6 on the Ray cluster at `address` (None: a local one of `config.workers` CPUs,
    started and stopped here). Writes shards into `tmp` and rows into `ledger`; returns the
    manifest, the documents seen and kept, and the tokenizer (trained here for "bpe:N")."""
    ray = _ray()
    started = not ray.is_initialized()
    if started:
        try:
            ray.init(address=address, num_cpus=None if address else config.workers, include_dashboard=False,
                     log_to_driver=False, configure_logging=False)
        except ConnectionError as e:
            raise LaminaError(f"cannot reach the Ray cluster at {address}: {e}") from None
    try:
        return _build(ray, sources, policy, config, ledger, tmp, tokenizer, work, progress)
    finally:
        if started:
            ray.shutdown()


def _prepare_work(work: Path, key: str) -> None:
    """The work folder of this build: kept from a killed run of the same build, else made anew."""
    stamp = work / "build.key"
    if work.exists() and not (stamp.is_file() and stamp.read_text() == key):
        shutil.rmtree(work)
    work.mkdir(exist_ok=True)
    stamp.write_text(key)


def _run(ray, tasks: list, what: str, progress: bool) -> list:
    """Wait for every task, with a progress bar; the results in order. A task that failed after
    Ray's retries is one error."""
    display = show_progress(what, total=len(tasks), unit=what.split()[-1]) if progress and tasks else None
    index = {ref: i for i, ref in enumerate(tasks)}
    results, pending = [None] * len(tasks), list(tasks)
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                try:
                    results[index[ref]] = ray.get(ref)
                except ray.exceptions.RayTaskError as e:      # the task raised: the error as it was raised
                    raise e.cause if isinstance(e.cause, LaminaError) else e.as_instanceof_cause() from None
                except ray.exceptions.RayError as e:          # its worker or node died, and every retry did
                    raise LaminaError(f"{what}: a task failed on the Ray cluster after its retries: "
                                      f"{str(e).splitlines()[0][:300]}") from None
            if display:
                display.advance(len(done))
    finally:
        if display:
            display.close()
    return results


def _build(ray, sources, policy, config, ledger, tmp, tokenizer, work, progress):
    parts, verdicts = [], []
    for si, source in enumerate(sources):
        verdict = policy.decide_source(source.id, source.license, source.per_record)
        ledger.add_source(source, verdict.allowed, verdict.reason)
        verdicts.append(verdict)
        parts += [(si, p) for p in source.parts()]
    key = hashlib.sha256(json.dumps({"config": asdict(config) | {"workers": 0}, "policy": policy.to_dict(),
                                     "sources": [[s.id, s.kind, s.origin, s.license, s.per_record] for s in sources],
                                     "parts": [[si, p.label] for si, p in parts]}, sort_keys=True).encode()).hexdigest()
    _prepare_work(work, key)
    files = [str(work / f"part-{i:06d}.parquet") for i in range(len(parts))]

    # 1. judge (parts finished by an earlier, killed run are read back)
    judge = ray.remote(judge_part)
    refs = [None if Path(f).is_file() else
            judge.remote(f, sources[si], part, verdicts[si].allowed, verdicts[si].reason, policy, config)
            for f, (si, part) in zip(files, parts)]
    if any(r is None for r in refs):
        print(f"lamina data build: reusing {refs.count(None)} of {len(refs)} parts judged by an earlier run "
              f"(kept in {work})", file=sys.stderr)
    counts = _run(ray, [r for r in refs if r is not None], "judging parts", progress)
    it = iter(counts)
    counts = [pq.ParquetFile(f).metadata.num_rows if r is None else next(it) for f, r in zip(files, refs)]
    firsts = np.concatenate([[1], 1 + np.cumsum(counts)]).tolist()     # doc ids are 1-based, in source order
    seen = firsts[-1] - 1

    # 2-3. dedup: shuffle by key, groups back here, settled in document order
    bands = NearDuplicates().bands
    partitions = max(1, min(int(ray.cluster_resources().get("CPU", 1)), MAX_PARTITIONS))
    keys = ray.remote(dedup_keys).options(num_returns=partitions)
    maps = [keys.remote(f, first, partitions, bands) for f, first in zip(files, firsts)]
    maps = [m if partitions > 1 else [m] for m in maps]
    groups = ray.remote(dedup_groups)
    reduced = _run(ray, [groups.remote(*[m[p] for m in maps]) for p in range(partitions)], "dedup partitions", progress)
    exact, near = _settle(reduced, config.near_dedup)

    # 1b. a tokenizer trained on the kept training documents ("bpe:N")
    kept_of = [_kept(f, first, exact, near) for f, first in zip(files, firsts)]
    if tokenizer is None:
        from ..tokenizer.train import bpe_tokenizer, write_tokenizer
        tokenizer = bpe_tokenizer(_training_texts(files, kept_of, parts, sources, config), int(config.tokenizer[4:]),
                                  progress=progress)
        (tmp / TOKENIZER_DIR).mkdir()
        write_tokenizer(tokenizer, tmp / TOKENIZER_DIR, {"made_by": "lamina data build",
                                                         "trained_on": "the build's training documents"})
        ref = str(tmp / TOKENIZER_DIR)
    else:
        ref = config.tokenizer

    # 4. tokenize
    token_files = [str(work / f"tokens-{i:06d}.npy") for i in range(len(parts))]
    tok = ray.remote(tokenize_part)
    tokenizer_id = (ref, tokenizer_digest(ref))
    tokenized = _run(ray, [tok.remote(f, tf, keep, tokenizer_id, sources[si], config)
                           for f, tf, keep, (si, _) in zip(files, token_files, kept_of, parts)], "tokenizing parts",
                     progress)

    # 5. shards, cut as the local build cuts them (build.write_shards)
    dtype = token_dtype(tokenizer.vocab_size)
    docs: dict[str, list[tuple[int, str, int, int]]] = {"train": [], "validation": []}   # doc id, file, start, end
    tokens: dict[int, tuple[int, str]] = {}                                            # doc id → (tokens, split)
    for tf, keep, first, (lengths, validation, copies) in zip(token_files, kept_of, firsts, tokenized):
        ends = np.cumsum(lengths)
        for i, n, val, c, e in zip(keep, lengths.tolist(), validation.tolist(), copies.tolist(), ends.tolist()):
            split = "validation" if val else "train"
            tokens[first + i] = (n, split)
            docs[split] += [(first + i, tf, e - n, e)] * c
    name = TOKENIZER_DIR if config.tokenizer.startswith("bpe:") else config.tokenizer
    manifest = {"dtype": dtype.name, "bos_id": tokenizer.bos_id, "tokenizer": name, "shards": {}}
    shards = []
    for split, items in docs.items():
        order = np.random.default_rng([config.seed, split == "train"]).permutation(len(items))
        for index, group in enumerate(_groups([e - s for _, _, s, e in items], order.tolist(), config.shard_tokens)):
            shards.append((f"{split}-{index:05d}.bin", split, [items[j] for j in group]))
    write = ray.remote(write_shard_part)
    ranges = _run(ray, [write.remote(str(tmp / n), dtype.name, [(f, s, e) for _, f, s, e in g]) for n, _, g in shards],
                  "writing shards", progress)

    # 6. the ledger: fragments in part order, then the shards
    kept = _merge(ledger, files, firsts, sources, parts, exact, near, tokens, config.near_dedup)
    for (name, split, group), r in zip(shards, ranges):
        ledger.add_shard(name, split, dtype.name, [(s, e, d) for (s, e), (d, _, _, _) in zip(r, group)])
        manifest["shards"][name] = {"split": split, "tokens": r[-1][1]}
    return manifest, seen, kept, tokenizer


def _settle(reduced, near_dedup: bool) -> tuple[dict[int, int], dict[int, int]]:
    """Exact duplicates (doc → the first of its text) and near duplicates (doc → the kept
    document it nearly repeats), as the local build's pass in document order decides them."""
    exact = {d: g[0] for texts, _ in reduced for g in texts for d in g[1:]}
    if not near_dedup:
        return exact, {}
    of_doc: dict[int, list[tuple[int, int]]] = {}        # doc → (band, bucket) of the buckets it shares
    for p, (_, buckets) in enumerate(reduced):
        for b, (band, members) in enumerate(buckets):
            for d in members:
                of_doc.setdefault(d, []).append((band, (p, b)))
    holder: dict[tuple[int, int], int] = {}              # bucket → the first kept document in it
    near = {}
    for d in sorted(of_doc):
        if d in exact:
            continue        # dropped as an exact copy before near dedup saw it
        shared = sorted(of_doc[d])
        twin = next((holder[b] for _, b in shared if b in holder), None)
        if twin is not None:
            near[d] = twin
        else:
            for _, b in shared:
                holder.setdefault(b, d)
    return exact, near


def _kept(path: str, first: int, exact: dict, near: dict) -> list[int]:
    """Indices, within the part, of its documents that survive dedup."""
    texts = pq.read_table(path, columns=["text_hash"]).column("text_hash").to_pylist()
    return [i for i, h in enumerate(texts) if h is not None and first + i not in exact and first + i not in near]


def _kept_texts(path: str, keep: list[int]) -> tuple[list[str], list[str]]:
    """The texts and content hashes of a part's documents at `keep`."""
    t = pq.read_table(path, columns=["text", "content_hash"]).take(pa.array(keep, type=pa.int64()))
    return t.column("text").to_pylist(), t.column("content_hash").to_pylist()


def _training_texts(files, kept_of, parts, sources, config):
    for f, keep, (si, _) in zip(files, kept_of, parts):
        for text, h in zip(*_kept_texts(f, keep)):
            if _split(config, sources[si], h) == "train":
                yield text


def _merge(ledger: Ledger, files, firsts, sources, parts, exact, near, tokens, near_dedup: bool) -> int:
    """The fragments into the ledger, document by document as the local build writes them:
    each one's verdicts, then the dedup verdicts, its tokens and split. The number kept."""
    kept = 0
    columns = ["path", "content_hash", "bytes", "status", "reason", "verdicts", "scrubs", "record", "text_hash",
               "planted"]
    for f, first, (si, _) in zip(files, firsts, parts):
        t = pq.read_table(f, columns=columns).to_pydict()
        for i in range(len(t["path"])):
            doc = first + i
            j = Judged(t["status"][i], t["reason"][i], [tuple(v) for v in json.loads(t["verdicts"][i])],
                       dict(json.loads(t["scrubs"][i])))
            if t["text_hash"][i] is not None:
                _dedup_verdicts(j, exact.get(doc), near.get(doc), near_dedup and not t["planted"][i])
            record = None if t["record"][i] is None else Record(*json.loads(t["record"][i]))
            ledger.add_document(doc, sources[si].id, t["path"][i], t["content_hash"][i], t["bytes"][i], j.status,
                                j.reason, j.verdicts, j.scrubs, record)
            if doc in tokens:
                ledger.set_tokens(doc, *tokens[doc])
                kept += 1
    return kept
