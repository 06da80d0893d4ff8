"""Build a corpus: sources → policy → decode, clean, filter, dedup, scrub → mix → split →
tokenize → shards, with every decision written to the ledger.

The build writes into a hidden partial folder beside `out` and renames it into place only when
whole (`lamina.files.atomic_directory`), so a build killed at any point (even SIGKILL) leaves no
corpus that looks finished; a re-run discards the dead build's partial folder and produces exactly
what an uninterrupted build would.
Documents are numbered in source order and every random choice (split, mixing, order) is drawn
from `seed` and the content hash, so the same inputs and seed give byte-identical shards."""

from __future__ import annotations

import ctypes
import hashlib
import json
import multiprocessing as mp
import os
import shutil
import signal
import sys
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, replace
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from ..errors import LaminaError
from ..files import atomic_directory
from ..progress import show_progress
from ..tokenizer import load_tokenizer
from ..tokenizer.train import bpe_tokenizer, write_tokenizer
from . import canaries
from .canaries import canary_sources, make_canaries, write_canaries
from .dedup import NearDuplicates
from .ledger import Ledger
from .licenses import Policy
from .shards import MANIFEST, token_dtype, write_shard
from .sources import RawDocument, Source
from .stages import TOKENIZER_DIR, BuildConfig, Judged, _copies, _dedup, _filter, _groups, _split

@dataclass
class Build:
    out: Path
    ledger: Ledger
    stats: dict


_worker: tuple[Policy, BuildConfig, NearDuplicates | None] | None = None   # set once in each worker process
PR_SET_PDEATHSIG = 1        # linux/prctl.h


def _start_worker(policy: Policy, config: BuildConfig, parent: int) -> None:
    global _worker
    _die_with(parent)
    _worker = (policy, config, NearDuplicates(seed=config.seed) if config.near_dedup else None)


def _die_with(parent: int) -> None:
    """End this worker when the build process `parent` ends, even by SIGKILL, which runs no
    cleanup: otherwise workers blocked on the task queue live on under init, holding their
    memory and the partial corpus's deleted files. Linux sends a parent-death signal; elsewhere
    a thread watches for the parent to go."""
    armed = False
    if sys.platform.startswith("linux"):
        try:
            armed = ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL) == 0
        except (OSError, AttributeError):
            armed = False
    if os.getppid() != parent:          # it died before the signal was armed: nobody will send it
        os._exit(1)
    if not armed:
        threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:       # an orphan is adopted: its parent pid changes
        time.sleep(0.5)
    os._exit(1)


def _filter_batch(kind: str, raws: list[RawDocument]) -> list[Judged]:
    """`_filter` over a batch, in a worker: policy and config arrive once, at its start."""
    return [_filter(kind, raw, *_worker) for raw in raws]


def _batched(items: Iterable, n: int) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def _source_batches(sources: list[Source], policy: Policy, ledger: Ledger) -> Iterator[tuple[Source, object, list]]:
    """(source, the policy's verdict on it, a batch of its raw documents), source by source."""
    for source in sources:
        verdict = policy.decide_source(source.id, source.license, source.per_record)
        ledger.add_source(source, verdict.allowed, verdict.reason)
        for batch in _batched(source.documents(), 64):
            yield source, verdict, batch


def _judged_batches(sources: list[Source], policy: Policy, config: BuildConfig, ledger: Ledger,
                    pool: ProcessPoolExecutor | None, near: NearDuplicates | None) -> Iterator[tuple]:
    """Each batch with its `_filter` results, in source order. With a pool, batches are filtered
    ahead, a few per worker in flight, while this process records and dedups the earlier ones."""
    pending: deque = deque()
    for source, verdict, batch in _source_batches(sources, policy, ledger):
        if not verdict.allowed:
            judged = Future()
            judged.set_result([Judged("rejected", f"license: {verdict.reason}", []) for _ in batch])
        elif pool is not None:
            judged = pool.submit(_filter_batch, source.kind, batch)
        else:
            judged = Future()
            judged.set_result([_filter(source.kind, raw, policy, config, near) for raw in batch])
        pending.append((source, verdict, batch, judged))
        while len(pending) > (2 * config.workers if pool else 0):
            source, verdict, batch, judged = pending.popleft()
            yield source, verdict, batch, judged.result()
    for source, verdict, batch, judged in pending:
        yield source, verdict, batch, judged.result()


def judge_documents(sources: list[Source], policy: Policy, config: BuildConfig, ledger: Ledger,
                    progress: bool = False) -> tuple[list[tuple[int, Source, str, str]], int]:
    """Stage 1: every document of every source through the policy, the filters and dedup, each
    verdict into the ledger. Returns the kept (doc id, source, content hash, text) and the count seen.
    The filters (and the hashes dedup compares) run on `config.workers` processes; dedup runs
    here, in document order, so the result does not depend on the number of workers."""
    seen: dict[str, str] = {}
    near = NearDuplicates(seed=config.seed) if config.near_dedup else None
    kept: list[tuple[int, Source, str, str]] = []
    doc_id = 0
    pool = ProcessPoolExecutor(config.workers, mp_context=mp.get_context("fork"), initializer=_start_worker,
                               initargs=(policy, config, os.getpid())) if config.workers > 1 else None
    display, shown = None, None            # the progress of the source being read, and its id
    try:
        for source, verdict, batch, judged in _judged_batches(sources, policy, config, ledger, pool, near):
            for raw, j in zip(batch, judged):
                doc_id += 1
                j.verdicts.insert(0, ("license", verdict.allowed, verdict.reason))
                j = _dedup(j, str(doc_id), seen, near)
                content_hash = None if raw.skipped else hashlib.sha256(raw.data).hexdigest()   # nothing was read
                ledger.add_document(doc_id, source.id, raw.path, content_hash, len(raw.data), j.status,
                                    j.reason, j.verdicts, j.scrubs, raw.record)
                if j.text is not None:
                    kept.append((doc_id, source, content_hash, j.text))
            if progress and shown != source.id:
                if display:
                    display.close()
                display, shown = show_progress(source.id, unit="documents"), source.id
            if display:
                display.advance(len(batch))
    except BrokenProcessPool:
        raise LaminaError("a worker process of the build died (killed, or out of memory?); "
                          "try fewer --workers") from None
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)
        if display:
            display.close()
    return kept, doc_id


def write_shards(kept: list[tuple[int, Source, str, str]], tokenizer, config: BuildConfig, ledger: Ledger,
                 folder: Path) -> dict:
    """Stage 2: tokenize, split by document, mix, shuffle by the seed, cut into shards; the
    token range of every document in every shard into the ledger. Returns the manifest."""
    dtype, bos = token_dtype(tokenizer.vocab_size), tokenizer.bos_id
    splits: dict[str, list[np.ndarray]] = {"train": [], "validation": []}
    owners: dict[str, list[int]] = {"train": [], "validation": []}
    for start in range(0, len(kept), 256):
        batch = kept[start:start + 256]
        for (did, source, content_hash, _), toks in zip(batch, tokenizer.encode_batch([k[3] for k in batch], bos=False)):
            split = _split(config, source, content_hash)
            ledger.set_tokens(did, len(toks) + 1, split)
            ids = np.asarray([bos] + toks, dtype=dtype)
            for _ in range(_copies(config, source, content_hash)):
                splits[split].append(ids)
                owners[split].append(did)
    name = TOKENIZER_DIR if config.tokenizer.startswith("bpe:") else config.tokenizer
    manifest = {"dtype": dtype.name, "bos_id": bos, "tokenizer": name, "shards": {}}
    for split, docs in splits.items():
        order = np.random.default_rng([config.seed, split == "train"]).permutation(len(docs))
        for index, group in enumerate(_groups([len(d) for d in docs], order.tolist(), config.shard_tokens)):
            name = f"{split}-{index:05d}.bin"
            ranges = write_shard(folder / name, [docs[j] for j in group], dtype)
            ledger.add_shard(name, split, dtype.name, [(s, e, owners[split][j]) for (s, e), j in zip(ranges, group)])
            manifest["shards"][name] = {"split": split, "tokens": ranges[-1][1]}
    return manifest


def train_corpus_tokenizer(kept: list[tuple[int, Source, str, str]], config: BuildConfig, folder: Path,
                           progress: bool = False):
    """Stage 1b for `tokenizer = "bpe:N"`: a byte-level BPE learned from the kept training
    documents only (validation documents stay unseen), written to `folder`."""
    texts = (text for _, source, content_hash, text in kept if _split(config, source, content_hash) == "train")
    tok = bpe_tokenizer(texts, int(config.tokenizer[4:]), progress=progress)
    folder.mkdir()
    write_tokenizer(tok, folder, {"made_by": "lamina data build", "trained_on": "the build's training documents"})
    return tok


EXECUTORS = ("local", "ray")


def build_corpus(sources: list[Source], *, out: str | Path, policy: Policy | None = None,
                 config: BuildConfig | None = None, recipe: str = "custom", rebuild: dict | None = None,
                 removals: tuple[dict, ...] = (), progress: bool = False, executor: str = "local",
                 address: str | None = None) -> Build:
    """Run every stage and write `out/`: shards, manifest.json, build.json and ledger.sqlite.
    `rebuild` (`Recipe.rebuild_record()`: the sources by reference) goes into build.json, so that
    `lamina data forget` can build the corpus again; `removals` are what it forgot, for the ledger.
    `executor`: "local" (this machine's processes) or "ray" (tasks on the Ray cluster at
    `address`, or on a local one; `lamina.data.distributed`): the same corpus either way."""
    out, policy, config = Path(out), policy or Policy.permissive(), config or BuildConfig()
    if executor not in EXECUTORS:
        raise LaminaError(f"executor {executor!r}: use one of {', '.join(EXECUTORS)}")
    if executor == "ray":
        from .distributed import _ray
        _ray()                  # installed? said before anything is made
    if out.exists():
        raise LaminaError(f"{out}: already exists; choose a new --out or remove it first")
    ids = [s.id for s in sources]
    for s in sources:
        if s.kind == canaries.KIND:
            raise LaminaError(f"source {s.id}: kind canary is the build's own (set canaries = [...]); "
                              "it would skip the filters")
    if len(set(ids)) != len(ids):
        raise LaminaError(f"source ids repeat: {ids}")
    planted = make_canaries(config.canaries, config.canaries_each, config.canary_digits, config.seed)
    if planted:     # their sources join the build, each mixed in as many times as its count
        sources = [*sources, *canary_sources(planted)]
        config = replace(config, weights={**config.weights, **{f"canaries-x{r}": float(r) for r in config.canaries}})
    trained = config.tokenizer.startswith("bpe:")
    tokenizer = None if trained else load_tokenizer(config.tokenizer)
    if tokenizer is not None and tokenizer.bos_id is None:
        raise LaminaError(f"tokenizer {config.tokenizer} has no BOS token to separate documents")
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with atomic_directory(out) as tmp:          # a killed build leaves only a hidden partial folder
        ledger = Ledger.create(tmp / Ledger.FILE)
        try:
            if executor == "ray":
                from .distributed import build_on_ray, work_folder
                manifest, seen, kept, tokenizer = build_on_ray(sources, policy, config, ledger, tmp, tokenizer,
                                                               work=work_folder(out), address=address,
                                                               progress=progress)
            else:
                judged, seen = judge_documents(sources, policy, config, ledger, progress)
                if trained:
                    tokenizer = train_corpus_tokenizer(judged, config, tmp / TOKENIZER_DIR, progress)
                manifest, kept = write_shards(judged, tokenizer, config, ledger, tmp), len(judged)
            (tmp / "build.json").write_text(json.dumps({"recipe": recipe, "config": asdict(config),
                                                        "policy": policy.to_dict(), "sources": ids,
                                                        "rebuild": rebuild}, indent=2) + "\n")
            for removal in removals:
                ledger.add_removal(removal)
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
            if planted:
                write_canaries(tmp, planted, config.canary_digits)
            ledger.add_run(recipe, json.dumps(asdict(config), sort_keys=True), started,
                           time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
            ledger.finish()         # indexes, summaries and digest: answers without scans at scale
        finally:
            ledger.close()
    if executor == "ray":
        shutil.rmtree(work_folder(out), ignore_errors=True)     # the corpus is whole: its pieces can go
    ledger = Ledger.open(out)
    counts = dict(ledger.q("SELECT status, COUNT(*) FROM documents GROUP BY status"))
    stats = {"documents": seen, "kept": kept, "tokens": sum(v["tokens"] for v in manifest["shards"].values()),
             "quarantined": counts.get("quarantined", 0), "skipped": counts.get("skipped", 0)}
    return Build(out=out, ledger=ledger, stats=stats)
