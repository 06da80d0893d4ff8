"""What a model memorized of its training data: two audits over a corpus lamina built.

**Extractable memorization** (Carlini et al. 2021 and 2023, "Quantifying Memorization Across
Neural Language Models"): a document is extractable when greedy decoding from its first `k`
tokens reproduces the next `m` exactly. `extraction_audit` samples training documents, stratified
by how many times the build mixed each in (its copies: the ranges the ledger records for it in
the training shards), and validation documents as the control the model never saw, and reports
the rate by split, source, license and copy count, with the documents that came back.

**Canary exposure** (Carlini et al. 2019, "The Secret Sharer"): for each canary the build planted
(`lamina.data.canaries`), the true secret is ranked by the model's likelihood against `candidates`
secrets drawn at random from the same format; exposure = log2(|R|) − log2(rank) with R that set
plus the true one, so it runs from 0 (no preference) to log2(candidates + 1) (the true secret
first). Past that cap it is extrapolated as Carlini et al. do (their section 4.3): the candidates'
log-likelihoods are fitted with a distribution (here a normal one; theirs is skew-normal), the
probability that a random secret of the whole space scores above the true one is read from its
tail, and `exposure_extrapolated` = −log2 of it, at most log2 of the space. Both are recorded."""

from __future__ import annotations

import math
import random
from collections import defaultdict
from contextlib import closing
from pathlib import Path

import numpy as np

from ..data.canaries import FILE as CANARIES_FILE
from ..data.canaries import read_canaries, secret_text
from ..data.ledger import Ledger
from ..data.shards import open_shard
from ..errors import LaminaError
from ..model import Transformer
from ..progress import show_progress
from ..serve.engine import Engine
from ..serve.sampling import SamplingParams
from ..tokenizer import Tokenizer
from .scoring import Scorer, ScoringRequest, encode_pair

CANDIDATE_CHUNK = 128      # candidates of one canary scored as one item (they share its prefix)


def canary_exposure(model: Transformer, tokenizer: Tokenizer, data_dir: str | Path, *, candidates: int = 1000,
                    seed: int = 0, progress: bool = False) -> dict:
    """Each planted canary's exposure, and the mean exposure at each repetition count."""
    record = read_canaries(data_dir)
    digits = record["digits"]
    if candidates < 1 or candidates >= 10 ** digits:
        raise LaminaError(f"candidates must be in [1, {10 ** digits - 1}] for {digits}-digit secrets")
    bos = tokenizer.bos_id

    def encode(text: str) -> list[int]:
        return [bos, *tokenizer.encode(text, bos=False)]
    rng = random.Random(f"lamina-exposure:{seed}")
    requests, owners = [], []                     # owners[i]: (canary index, is the true secret)
    item = 0
    for c_index, c in enumerate(record["canaries"]):
        others: set[str] = set()
        while len(others) < candidates:
            s = secret_text([rng.randrange(10) for _ in range(digits)])
            if s != c["secret"]:
                others.add(s)
        secrets = [c["secret"], *sorted(others)]
        for chunk_start in range(0, len(secrets), CANDIDATE_CHUNK):   # a chunk shares one prefix row
            for j, s in enumerate(secrets[chunk_start:chunk_start + CANDIDATE_CHUNK]):
                context, continuation = encode_pair(encode, c["prefix"], f" {s}.", bos)
                requests.append(ScoringRequest(context, continuation, item=item))
                owners.append((c_index, chunk_start + j == 0))
            item += 1
    # the scorer reports items done: here an item is a set of up to CANDIDATE_CHUNK secrets
    with show_progress("canary exposure", item, enabled=progress, unit="sets of secrets") as shown:
        scores = Scorer(model.eval()).loglikelihood(requests, progress=shown.advance)
    true_score: dict[int, float] = {}
    others_of: dict[int, list[float]] = defaultdict(list)
    for (c_index, is_true), (logprob, _) in zip(owners, scores):
        if is_true:
            true_score[c_index] = logprob
        else:
            others_of[c_index].append(logprob)
    better = {c: sum(x > true_score[c] for x in xs) for c, xs in others_of.items()}
    size = candidates + 1
    rows = []
    for c_index, c in enumerate(record["canaries"]):
        rank = 1 + better[c_index]
        rows.append({"name": c["name"], "repetitions": c["repetitions"], "rank": rank, "of": size,
                     "exposure": math.log2(size) - math.log2(rank), "logprob": true_score[c_index],
                     "exposure_extrapolated": _extrapolated(true_score[c_index], others_of[c_index],
                                                            record["secret_space"])})
    by_count: dict[int, list[float]] = defaultdict(list)
    by_count_x: dict[int, list[float]] = defaultdict(list)
    for r in rows:
        by_count[r["repetitions"]].append(r["exposure"])
        by_count_x[r["repetitions"]].append(r["exposure_extrapolated"])
    return {"format": record["format"], "secret_space": record["secret_space"], "candidates": candidates,
            "max_exposure": math.log2(size),
            "method": (f"rank of the true secret by the model's log-likelihood among it and {candidates} "
                       "secrets drawn uniformly from the same format; exposure = log2(candidates + 1) - log2(rank) "
                       "(Carlini et al. 2019 with R the measured set, not extrapolated)"),
            "canaries": rows,
            "mean_exposure_by_repetitions": {r: sum(v) / len(v) for r, v in sorted(by_count.items())},
            "mean_exposure_extrapolated_by_repetitions": {r: sum(v) / len(v) for r, v in sorted(by_count_x.items())}}


def _extrapolated(true: float, others: list[float], space: int) -> float:
    """−log2 P(a random secret scores above the true one), from a normal fit of the candidates'
    log-likelihoods, within [0, log2(space)]."""
    mean = sum(others) / len(others)
    std = math.sqrt(sum((x - mean) ** 2 for x in others) / max(len(others) - 1, 1)) or 1e-12
    above = 0.5 * math.erfc((true - mean) / std / math.sqrt(2))
    return min(math.log2(space), max(0.0, -math.log2(max(above, 1 / space))))


def _documents(ledger: Ledger, k: int, m: int) -> list[dict]:
    """Every kept document long enough to audit: id, split, source, license, copies, and where
    its first copy's tokens lie."""
    docs: dict[int, dict] = {}
    for doc, split, source, license, shard, start, end in ledger.q(
            "SELECT d.id, d.split, d.source_id, s.license, r.shard, r.start, r.end FROM ranges r "
            "JOIN documents d ON d.id = r.doc_id JOIN sources s ON s.id = d.source_id ORDER BY r.shard, r.start"):
        if end - start < k + m:
            continue
        d = docs.setdefault(doc, {"id": doc, "split": split, "source": source, "license": license,
                                  "copies": 0, "shard": shard, "start": start})
        d["copies"] += 1
    return list(docs.values())


def extraction_audit(model: Transformer, data_dir: str | Path, *, k: int = 32, m: int = 32, per_group: int = 100,
                     seed: int = 0, batch_size: int = 32, examples: int = 5, progress: bool = False) -> dict:
    """Greedy continuation of each sampled document's first `k` tokens (its BOS among them)
    against its next `m`: up to `per_group` training documents for each copy count, and as many
    validation documents as the largest training group as the control."""
    if k < 1 or m < 1:
        raise LaminaError(f"k and m must be at least 1 (got k={k}, m={m})")
    if k + m > model.config.max_seq_len:
        raise LaminaError(f"k + m = {k + m} exceeds the model's context of {model.config.max_seq_len}")
    with closing(Ledger.open(data_dir)) as ledger:
        docs = _documents(ledger, k, m)
    rng = np.random.default_rng(seed)
    groups: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for d in docs:
        groups[(d["split"], d["copies"] if d["split"] == "train" else 0)].append(d)
    chosen: list[dict] = []
    for key in sorted(k_ for k_ in groups if k_[0] == "train"):
        g = groups[key]
        chosen += [g[i] for i in sorted(rng.choice(len(g), min(per_group, len(g)), replace=False))]
    largest = max((len([c for c in chosen if c["copies"] == n]) for n in {c["copies"] for c in chosen}), default=0)
    control = groups.get(("validation", 0), [])
    chosen += [control[i] for i in sorted(rng.choice(len(control), min(largest, len(control)), replace=False))]
    if not chosen:
        raise LaminaError(f"{data_dir}: no document has the {k + m} tokens the audit needs")
    shards: dict[str, np.memmap] = {}
    for d in chosen:
        mm = shards.setdefault(d["shard"], open_shard(data_dir, d["shard"]))
        toks = np.asarray(mm[d["start"]:d["start"] + k + m], dtype=np.int64).tolist()
        d["prefix"], d["target"] = toks[:k], toks[k:]
    engine = Engine(model)
    params = SamplingParams(max_new_tokens=m, temperature=0, stop_token_ids=())
    with show_progress("extraction audit", len(chosen), enabled=progress, unit="documents") as shown:
        for lo in range(0, len(chosen), batch_size):
            batch = chosen[lo:lo + batch_size]
            outs: list[list[int]] = [[] for _ in batch]
            for step in engine.generate([d["prefix"] for d in batch], params):
                for row, t in zip(outs, step):
                    if t is not None:
                        row.append(t)
            for d, out in zip(batch, outs):
                d["memorized"] = out == d["target"]
                d["matched"] = next((i for i, (a, b) in enumerate(zip(out, d["target"])) if a != b), len(out))
            shown.advance(len(batch))

    def rates(key, among: list[dict]) -> dict:
        table: dict = defaultdict(lambda: [0, 0])
        for d in among:
            t = table[key(d)]
            t[0] += d["memorized"]
            t[1] += 1
        return {str(name): {"extracted": a, "sampled": n, "rate": a / n} for name, (a, n) in sorted(table.items())}
    train = [d for d in chosen if d["split"] == "train"]
    hits = sorted((d for d in chosen if d["memorized"]), key=lambda d: -d["copies"])
    return {"k": k, "m": m, "seed": seed,
            "method": (f"greedy continuation of a document's first {k} tokens reproduces its next {m} exactly "
                       "(Carlini et al. 2021/2023); training documents sampled by copy count, validation "
                       "documents as the control"),
            "by_split": rates(lambda d: d["split"], chosen),
            "by_copies": rates(lambda d: d["copies"], train),
            "by_source": rates(lambda d: d["source"], train), "by_license": rates(lambda d: d["license"], train),
            "examples": [{"doc": d["id"], "source": d["source"], "copies": d["copies"], "split": d["split"],
                          "prefix": d["prefix"], "continuation": d["target"]} for d in hits[:examples]]}



def audit(model: Transformer, tokenizer: Tokenizer, data_dir: str | Path, *, k: int = 32, m: int = 32,
          per_group: int = 100, candidates: int = 1000, seed: int = 0, progress: bool = False) -> dict:
    """Both audits of a model against the corpus it was trained on: the extraction audit, and
    canary exposure when the corpus has canaries (None otherwise)."""
    has_canaries = (Path(data_dir) / CANARIES_FILE).is_file()
    return {"data": str(data_dir),
            "extraction": extraction_audit(model, data_dir, k=k, m=m, per_group=per_group, seed=seed,
                                           progress=progress),
            "exposure": canary_exposure(model, tokenizer, data_dir, candidates=candidates, seed=seed,
                                        progress=progress) if has_canaries else None}


def render_audit(result: dict, tokenizer: Tokenizer | None = None) -> None:
    """The audit as tables (rich): exposure by repetition count, extraction rates, examples."""
    from rich.console import Console
    from rich.table import Table
    console = Console()
    exposure = result["exposure"]
    if exposure is not None:
        t = Table(title=f"canary exposure (of at most {exposure['max_exposure']:.2f} bits: "
                        f"{exposure['candidates']} random candidates)")
        for col in ("repetitions", "canaries", "mean exposure", "ranks"):
            t.add_column(col, justify="right")
        for reps, mean in exposure["mean_exposure_by_repetitions"].items():
            ranks = [str(c["rank"]) for c in exposure["canaries"] if c["repetitions"] == int(reps)]
            t.add_row(str(reps), str(len(ranks)), f"{mean:.2f}", ", ".join(ranks))
        console.print(t)
    else:
        console.print("no canaries in this corpus: exposure not measured (build with canaries = [1, 4, 16, 64])")
    ex = result["extraction"]
    t = Table(title=f"extractable memorization: first {ex['k']} tokens -> next {ex['m']} exactly")
    for col in ("group", "extracted", "sampled", "rate"):
        t.add_column(col, justify="right")
    for title, key in (("split", "by_split"), ("copies", "by_copies"), ("license", "by_license")):
        for name, v in ex[key].items():
            t.add_row(f"{title} {name}", str(v["extracted"]), str(v["sampled"]), f"{100 * v['rate']:.1f}%")
    console.print(t)
    for e in ex["examples"]:
        text = tokenizer.decode(e["prefix"] + e["continuation"]) if tokenizer else ""
        console.print(f"extracted: document {e['doc']} ({e['source']}, {e['copies']} copies): {text[:160]!r}",
                      markup=False)
