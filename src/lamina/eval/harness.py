"""The harness: run tasks on a model, aggregate as lm-eval does, and report beside each score how
much of the benchmark the model may have seen in training (when its training data is given: the
pretraining corpus, and post-training data as (id, text) documents from the caller).

Results have lm-eval's shape, `{"results": {TASK: {"acc": .., "acc_stderr": .., "n": ..,
"split": ..}}, "config": {..}}`; `table` lays several models' results out as the LLaMA paper's
table 3 (a row per model, a column per benchmark)."""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, TextIO

from ..errors import LaminaError
from ..fields import check_fields
from ..progress import Display, show_progress
from ..serve import LLM
from .generation import generate_until
from .metrics import aggregate_choice, choice_metrics, extract_gsm8k, mean, normalize_answer, perplexity
from .scoring import ScoringRequest, Scorer, encode_pair, pair_texts
from .tasks import GSM8K_MAX_NEW_TOKENS, GSM8K_STOP, Item, Task, resolve_tasks

CHAT_DATA = (".jsonl", ".parquet")        # post-training data files --decontaminate takes
Documents = Callable[[], Iterable[tuple[object, str]]]    # the training documents, (id, text), read anew per call


@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    """What `lamina eval` runs; written into the results beside the scores."""
    tasks: tuple[str, ...] = ()           # task names or groups (llama-zero-shot)
    limit: int | None = None              # the first N items of each task (of each MMLU subject)
    num_fewshot: int | None = None        # solved examples in the prompt (None: MMLU 5, GSM8K 8, others 0)
    batch_size: int = 32                  # items per forward (generation: prompts per batch)
    max_tokens: int = 4096                # tokens per forward, which bounds memory
    decontaminate: tuple[str, ...] = ()   # training data: corpus directories, SFT runs, chat data files
    ngram: int = 13                       # words an item must share with a document to count as seen
    perplexity: tuple[str, ...] = ()      # text files or corpus directories (validation split)
    window: int = 2048                    # tokens per perplexity window (at most the model's context)
    progress: bool = False

    def __post_init__(self) -> None:
        check_fields(self)
        object.__setattr__(self, "decontaminate", tuple(self.decontaminate))
        if self.batch_size < 1:
            raise LaminaError(f"--batch-size must be at least 1, not {self.batch_size}")
        if self.max_tokens < 1 or self.window < 2:
            raise LaminaError("--max-tokens must be positive and --window at least 2")
        if self.ngram < 1:
            raise LaminaError(f"--ngram must be at least 1, not {self.ngram}")
        if not self.tasks and not self.perplexity:
            raise LaminaError("nothing to evaluate: give --tasks (e.g. llama-zero-shot) or --perplexity PATH")
        for data in map(Path, self.decontaminate):
            if not (data.suffix in CHAT_DATA and data.is_file() or (data / "ledger.sqlite").is_file()
                    or (data / "data" / "ledger.sqlite").is_file()):
                raise LaminaError(f"{data}: no ledger.sqlite, nor chat data; --decontaminate takes a corpus directory "
                                  "(`lamina data build`), a fine-tuning run (`lamina sft --out`) or chat data files "
                                  "(.jsonl, .parquet)")

    @property
    def corpora_only(self) -> bool:
        """Whether all the training data to check is pretraining corpora, which evaluation reads itself."""
        return all((Path(data) / "ledger.sqlite").is_file() for data in self.decontaminate)


@dataclass
class TaskRun:
    """One task's per-item outcome, before aggregation."""
    task: Task
    items: list[Item]
    scores: list[dict[str, float]] = field(default_factory=list)
    lls: list[float] = field(default_factory=list)          # LAMBADA
    outputs: list[str] = field(default_factory=list)        # GSM8K


@contextlib.contextmanager
def progress_bar(enabled: bool, stream: TextIO | None = None
                 ) -> Iterator[Callable[[str, int], Callable[[int], None]] | None]:
    """Progress of each task; yields `start(description, total) -> advance(n)`, or None when not
    `enabled`. Each task's display (`lamina.progress`) replaces the one before it and is erased
    at the end, when the results table says more."""
    if not enabled:
        yield None
        return
    shown: list[Display] = []

    def start(description: str, total: int) -> Callable[[int], None]:
        if shown:
            shown.pop().close()
        shown.append(show_progress(description, total, stream=stream, keep=False))
        return shown[-1].advance
    try:
        yield start
    finally:
        for display in shown:
            display.close()


def encode_requests(llm: LLM, items: list[Item]) -> list[ScoringRequest]:
    """Every request of every item in token ids, cut as lm-eval cuts them. Each distinct text is
    encoded once, all of them in one batch (a 5-shot MMLU prompt is ~2.5k characters, and its
    item's four requests share it), and the requests of an item share their context's ids."""
    tok = llm.tokenizer
    prefix = tok.bos_id if tok.bos_id is not None else tok.eos_id
    texts = list(dict.fromkeys(t for it in items for ctx, cont in it.requests for t in pair_texts(ctx, cont)))
    ids = dict(zip(texts, map(tuple, tok.encode_batch(texts))))
    blocks: dict[str, int] = {}
    requests = []
    for i, it in enumerate(items):
        block = blocks.setdefault(it.block, len(blocks))
        for ctx, cont in it.requests:
            c, k = encode_pair(ids.__getitem__, ctx, cont, prefix)
            requests.append(ScoringRequest(c, k, item=i, block=block))
    return requests


def score_items(scorer: Scorer, llm: LLM, items: list[Item], advance=None) -> list[list[tuple[float, bool]]]:
    """(log-likelihood, greedy) of every request of every item, cut as lm-eval cuts them."""
    out = iter(scorer.loglikelihood(encode_requests(llm, items), advance))
    return [[next(out) for _ in it.requests] for it in items]


def item_metrics(item: Item, results: list[tuple[float, bool]]) -> dict[str, float]:
    """acc/acc_norm of a multiple-choice item; for LAMBADA (one request), whether greedy
    decoding gives the word."""
    if len(results) == 1:
        return {"acc": float(results[0][1])}
    return choice_metrics([ll for ll, _ in results], item.gold, list(item.lengths))


def run_task(llm: LLM, scorer: Scorer, task: Task, config: EvalConfig, start) -> TaskRun:
    items = task.items(config.limit, config.num_fewshot)
    run = TaskRun(task, items)
    advance = start(task.name, len(items)) if start else None
    if task.kind == "generate":
        run.outputs = generate_until(llm.engine, llm.tokenizer, [it.requests[0][0] for it in items],
                                     GSM8K_STOP, GSM8K_MAX_NEW_TOKENS, config.batch_size, advance)
        for it, text in zip(items, run.outputs):
            got = extract_gsm8k(text)
            ref = normalize_answer(it.answer)
            run.scores.append({"exact_match": float(normalize_answer(got["strict-match"]) == ref),
                               "exact_match_flexible": float(normalize_answer(got["flexible-extract"]) == ref)})
    else:
        results = score_items(scorer, llm, items, advance)
        run.scores = [item_metrics(it, r) for it, r in zip(items, results)]
        run.lls = [r[0][0] for r in results]
    return run


def aggregate(run: TaskRun, keep: list[bool] | None = None) -> dict:
    """lm-eval's aggregation of a task's items (those where `keep` is True): means with standard
    errors; MMLU as the macro average over subjects; LAMBADA's perplexity."""
    idx = [i for i in range(len(run.items)) if keep is None or keep[i]]
    if not idx:
        return {"n": 0}
    metrics = [m for m in run.scores[0] if m in run.task.metrics or m == "exact_match_flexible"]
    if run.task.name == "mmlu":
        subjects: dict[str, list[int]] = {}
        for i in idx:
            subjects.setdefault(run.items[i].block, []).append(i)
        per = {s: aggregate_choice([run.scores[i] for i in ii], ["acc"]) for s, ii in subjects.items()}
        out = {"acc": mean([p["acc"] for p in per.values()]),
               "acc_stderr": math.sqrt(sum(p["acc_stderr"] ** 2 for p in per.values())) / len(per),
               "subjects": len(per)}
    else:
        out = aggregate_choice([run.scores[i] for i in idx], metrics)
    if run.task.name == "lambada":
        out["perplexity"], out["perplexity_stderr"] = perplexity([run.lls[i] for i in idx])
    return out | {"n": len(idx), "split": run.task.split}


def subject_results(run: TaskRun) -> dict[str, dict]:
    """MMLU's per-subject results, named as lm-eval names its subtasks (mmlu_anatomy, ...)."""
    subjects: dict[str, list[int]] = {}
    for i, it in enumerate(run.items):
        subjects.setdefault(it.block, []).append(i)
    return {f"mmlu_{s}": aggregate_choice([run.scores[i] for i in ii], ["acc"]) | {"n": len(ii), "split": "test"}
            for s, ii in subjects.items()}


def contamination_report(run: TaskRun, hits: list[list[int]], n: int) -> dict:
    seen = [bool(h) for h in hits]
    clean = aggregate(run, [not s for s in seen])
    return {"ngram": n, "contaminated": sum(seen), "fraction": sum(seen) / len(seen),
            # corpus ids are numbers, chat records "FILE#RECORD": numbers first
            "documents": sorted({d for h in hits for d in h}, key=lambda d: (isinstance(d, str), d))[:20],
            "clean": {k: v for k, v in clean.items() if k != "split"}}


def evaluate(llm: LLM, config: EvalConfig, model_name: str = "", documents: Documents | None = None) -> dict:
    """Every task of `config` on one loaded model: lm-eval-shaped results. With
    `config.decontaminate`, `documents` gives the training documents (the command line reads
    every kind of training data); without it, the corpora of `config.decontaminate` are read."""
    from .perplexity import score_documents, text_documents, validation_documents
    if config.decontaminate and documents is None:
        documents = corpus_reader(config)
    tasks = resolve_tasks(list(config.tasks)) if config.tasks else []
    window = min(config.window, llm.model.config.max_seq_len)
    scorer = Scorer(llm.model, batch_size=config.batch_size, max_tokens=config.max_tokens)
    results: dict[str, dict] = {}
    timings: dict[str, float] = {}
    with progress_bar(config.progress) as start:
        for task in tasks:
            t0 = time.perf_counter()
            run = run_task(llm, scorer, task, config, start)
            timings[task.name] = time.perf_counter() - t0
            results[task.name] = aggregate(run)
            if config.decontaminate:
                from .decontam import find_contamination
                hits = find_contamination([it.text for it in run.items], documents(), config.ngram)
                results[task.name]["contamination"] = contamination_report(run, hits, config.ngram)
            if task.name == "mmlu":
                results.update(subject_results(run))
        tok = llm.tokenizer
        prefix = tok.bos_id if tok.bos_id is not None else tok.eos_id
        window_scorer = Scorer(llm.model, batch_size=1, max_tokens=config.max_tokens, max_len=window)
        for path in config.perplexity:
            p = Path(path)
            docs = validation_documents(p, tok, config.limit) if p.is_dir() else text_documents(p, tok)
            t0 = time.perf_counter()
            advance = start(f"perplexity {p.name}", len(docs)) if start else None
            results[f"perplexity:{p.name}"] = score_documents(window_scorer, docs, prefix, advance) | {
                "split": "validation" if p.is_dir() else "text", "window": window}
            timings[f"perplexity:{p.name}"] = time.perf_counter() - t0
    return {"results": results,
            "config": {"model": model_name, **{k: v for k, v in asdict(config).items() if k != "progress"}},
            "seconds": timings}


def corpus_reader(config: EvalConfig) -> Documents:
    """The train documents of the corpora in `config.decontaminate`."""
    from itertools import chain

    from .decontam import corpus_texts
    if not config.corpora_only:
        raise LaminaError(f"{', '.join(config.decontaminate)}: post-training data (chat files, fine-tuning runs) is "
                          "read by `lamina eval`; from Python pass evaluate(..., documents=) "
                          "(lamina.post.documents.training_documents)")
    return lambda: chain.from_iterable(corpus_texts(c) for c in config.decontaminate)


def load_model(ref: str, dtype: str | None = None, device: str | None = None, quantize: str | None = None) -> LLM:
    """Any model reference (directory, GGUF, Meta checkpoint, packaged name), or one clear error."""
    from ..serve import load
    try:
        return load(ref, dtype=dtype, device=device, quantize=quantize)
    except LaminaError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise LaminaError(f"{ref}: cannot load this model: {e}") from None
