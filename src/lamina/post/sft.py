"""Supervised fine-tuning: `lamina sft MODEL --data FILE...` teaches a loaded model to answer in
its chat format, with the loss on the assistant's tokens only.

The conversations are read and checked by `chat_data` (a summary of what was skipped, and why,
is printed per file), rendered with the model's own chat template (or a lamina chat format) so
the mask of the assistant's tokens comes from the rendering itself, packed several to a row
without seeing each other (`packing`), and trained by the pretraining loop with a step of its own
(`sft_step`): same schedule, checkpoints, resume, metrics and compute accounting.

Provenance: each data file is a ledger source with a license (`--license SPDX`, or the REUSE
sidecar `FILE.license`; data with none is refused), and each conversation a document, written to
`OUT/data/ledger.sqlite`. Every checkpoint's lamina.json says the tokens trained on by source and
license ("data"), and the base model it started from: path, sha256 of its weight files, and the
data record of its own lamina.json where it has one ("base_model"). Its tokenizer_config.json
carries the chat template it was trained with, so transformers and `lamina chat` render alike."""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import json
import re
import shutil
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import load_checkpoint, resolve, write_hf
from ..data.ledger import Ledger
from ..data.licenses import NOASSERTION, normalize_license
from ..data.sources import Source
from ..errors import LaminaError
from ..files import sha256
from ..model import from_state_dict, weights
from ..model.segments import Segments
from ..tokenizer import chat_format
from ..train import distributed, state
from ..train.accounting import TokenLedger
from ..train.loop import (Inputs, Run, RunResult, StepResult, clip_and_step, grad_sync, run_loop, say, setup,
                          stop_if_diverged)
from .chat_data import ChatFile, Conversation, Preference, Tokenized, read_chat, tokenize_conversations
from .lora import apply_lora, merge_lora, save_adapter
from .config import DataConfig, PostConfig, config_from_flags
from .packing import epoch_rows, pack


@dataclass(frozen=True, kw_only=True)
class SFTConfig(DataConfig):
    """One fine-tuning run; saved as sft_config.json in the run directory."""
    data: tuple[str, ...] = ()           # chat data files (.jsonl, .parquet)
    format: str = ""                     # the data format of every file ("": recognised per file)
    out: str = "runs/sft"                # run directory: checkpoints/, data/ledger.sqlite, metrics.jsonl
    seq_len: int = 1024                  # tokens per packed row; longer conversations are skipped
    batch_size: int = 8                  # packed rows per optimizer step


def sft_config(overrides: list[str] = (), **fields) -> SFTConfig:
    """An SFTConfig from flags (`fields`, None where not given) and `key=value` overrides."""
    return config_from_flags(SFTConfig, overrides, **fields)


# ---- the data, with provenance ----

@dataclass(frozen=True)
class ChatSource:
    """A data file as a ledger source."""
    id: str
    path: Path
    license: str
    license_from: str


def file_license(path: Path, given: str | None) -> tuple[str, str]:
    """(SPDX license, where it was read): the one given, else the REUSE sidecar `FILE.license`
    (`SPDX-License-Identifier: MIT`, or the expression alone). No license: refused."""
    if given:
        spdx = normalize_license(given)
        if spdx == NOASSERTION:
            raise LaminaError(f"--license {given!r} for {path}: not an SPDX license expression (e.g. MIT, CC-BY-4.0)")
        return spdx, "given with --license"
    sidecar = path.with_name(path.name + ".license")
    if sidecar.is_file():
        text = sidecar.read_text(errors="replace")
        found = re.search(r"SPDX-License-Identifier:\s*(.+)", text)
        spdx = normalize_license(found.group(1) if found else text.strip())
        if spdx != NOASSERTION:
            return spdx, str(sidecar)
    raise LaminaError(f"{path}: no license; give one with --license SPDX (one per data file) or write it in "
                      f"{sidecar.name} (`SPDX-License-Identifier: MIT`)")


def chat_sources(config: DataConfig) -> list[ChatSource]:
    """The data files as sources, each with its license, which the config's policy must allow:
    a file under a license it does not allow (copyleft, non-commercial, unknown) is refused
    before anything is read, as pretraining refuses such a source."""
    given = list(config.licenses) * len(config.data) if len(config.licenses) == 1 else list(config.licenses)
    policy = config.policy()
    sources, ids = [], set()
    for i, name in enumerate(config.data):
        path = Path(name)
        spdx, where = file_license(path, given[i] if given else None)
        verdict = policy.decide_source(path.name, spdx)
        if not verdict.allowed:
            raise LaminaError(f"{path}: {verdict.reason} (its license {where}); post-training data passes the "
                              f"policy pretraining data does. If its terms allow what you will do with the model, "
                              f"allow it with --allow-license {spdx}")
        sid = path.name
        while sid in ids:                   # two files of one name in different folders
            sid += "'"
        ids.add(sid)
        sources.append(ChatSource(sid, path, spdx, where))
    return sources


def write_ledger(path: Path, sources: list[ChatSource], files: list[ChatFile], examples: list[Tokenized]) -> None:
    """The data ledger of a fine-tuning run: each file a source, each record a document (kept,
    or rejected with its reason), `count_documents` of them."""
    tokens = {e.doc: len(e.ids) for e in examples}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)             # rebuilt identically on resume
    ledger = Ledger.create(path)
    doc = 0
    for source, chat in zip(sources, files):
        ledger.add_source(Source(id=source.id, kind="dialogue", origin=str(source.path.resolve()),
                                 license=source.license, license_from=source.license_from, read=lambda: iter(())),
                          True, "license recorded for post-training")
        skipped = dict(chat.summary.skipped)
        for conv in chat.records:
            text = json.dumps(record_content(conv), ensure_ascii=False, sort_keys=True).encode()
            kept = doc in tokens
            ledger.add_document(doc, source.id, f"{source.path}#{conv.record}", sha256_bytes(text), len(text),
                                "kept" if kept else "rejected", "" if kept else skipped[conv.record], [], {})
            if kept:
                ledger.set_tokens(doc, tokens[doc], "train")
            doc += 1
        for record, reason in chat.summary.skipped:
            if reason != "longer than the context":   # those are records above, with their documents
                ledger.add_document(doc, source.id, f"{source.path}#{record}", None, 0, "rejected", reason, [], {})
                doc += 1
    ledger.commit()
    ledger.close()


def record_content(record: Conversation | Preference) -> object:
    """What a record's ledger document holds: a conversation's messages, or a preference pair's
    prompt, chosen and rejected turns (`lamina dpo` writes its ledger with `write_ledger` too)."""
    if isinstance(record, Preference):
        return {"prompt": record.prompt, "chosen": record.chosen, "rejected": record.rejected}
    return record.messages


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def count_documents(files: list[ChatFile]) -> int:
    """The ledger's document ids: one per record read, one per record skipped while reading."""
    return sum(len(f.records) + sum(r != "longer than the context" for _, r in f.summary.skipped) for f in files)


class ChatLedger(TokenLedger):
    """Tokens trained on by conversation (a document of the run's own data ledger); its summary,
    by source and license, is the "data" record of every checkpoint."""

    def __init__(self, data_dir: Path, n_docs: int) -> None:      # no token shards to map
        self.data_dir, self.n_docs, self.ranges = Path(data_dir), n_docs, []
        self.tokens = np.zeros(n_docs, dtype=np.int64)
        self.order = np.zeros(32, dtype=np.uint8)

    def add_conversations(self, examples: list[Tokenized]) -> None:
        self.chain(np.array([(e.doc, len(e.ids)) for e in examples], dtype=np.int64).reshape(-1, 2))
        for e in examples:
            self.tokens[e.doc] += len(e.ids)


def base_record(ref: str, metadata: dict) -> dict:
    """What the fine-tuned model starts from: where, the sha256 of its weight files, and the
    provenance its own lamina.json gives (the data it was pretrained on, its own base)."""
    path, fmt = resolve(ref)
    files = [path] if path.is_file() else sorted(
        p for p in path.iterdir() if p.suffix in (".safetensors", ".pth", ".gguf", ".bin"))
    made_by = metadata.get("made_by", {}) if isinstance(metadata.get("made_by"), dict) else {}
    record = {"ref": str(ref), "path": str(path.resolve()), "format": fmt,
              "weights_sha256": {p.name: sha256(p) for p in files},
              "data": made_by.get("data"), "tool": made_by.get("tool")}
    if made_by.get("base_model"):
        record["base_model"] = made_by["base_model"]
    if metadata.get("general.license"):      # GGUF metadata
        record["license"] = metadata["general.license"]
    return record


# ---- batches ----

class ChatRows:
    """Packed rows of the examples, one pass after another, each pass in its own seeded order:
    the rows of a step depend on the step alone, so resuming needs no state of its own."""

    def __init__(self, examples: list[Tokenized], seq_len: int, seed: int) -> None:
        self.examples, self.seq_len, self.seed = examples, seq_len, seed
        self._epochs: list[list[list[int]]] = []
        self._starts = [0]                   # first row index of each epoch, and one past the last

    def epoch(self, e: int) -> list[list[int]]:
        while len(self._epochs) <= e:
            self._epochs.append(epoch_rows(self.examples, self.seq_len, self.seed, len(self._epochs)))
            self._starts.append(self._starts[-1] + len(self._epochs[-1]))
        return self._epochs[e]

    def row(self, k: int) -> list[Tokenized]:
        """The k-th row of the endless stream of epochs."""
        while self._starts[-1] <= k:
            self.epoch(len(self._epochs))
        e = bisect.bisect_right(self._starts, k) - 1
        return [self.examples[i] for i in self._epochs[e][k - self._starts[e]]]

    def batch(self, step: int, size: int) -> list[list[Tokenized]]:
        return [self.row(k) for k in range(step * size, (step + 1) * size)]


def sft_step(run: Run, rows: ChatRows) -> StepResult:
    """One optimizer step on a batch of packed rows: the loss is the mean over the whole batch's
    assistant tokens, on all ranks together (micro-batches and ranks weighted by their share of
    them), as TRL's SFT computes it (transformers' `average_tokens_across_devices`)."""
    config, cluster, plan = run.config, run.cluster, run.plan
    batch = rows.batch(run.progress.step, config.batch_size)
    counts = [sum(sum(e.assistant[1:]) for e in row) for row in batch]     # trained targets per row
    total = sum(counts)
    first = cluster.rank * plan.per_rank
    mine = pack(batch[first:first + plan.per_rank], config.seq_len).to(run.device)
    loss_sum = 0.0
    for i in range(plan.accum):
        rows_i = slice(i * plan.micro, (i + 1) * plan.micro)
        share = sum(counts[first + i * plan.micro:first + (i + 1) * plan.micro])
        with grad_sync(run, last=i == plan.accum - 1):
            with run.autocast():
                loss = run.forward(mine.tokens[rows_i], positions=mine.positions[rows_i],
                                   mask=Segments.from_ids(mine.segments[rows_i]), targets=mine.targets[rows_i])
            # the ranks' gradients are averaged: scaled by the world, their shares add up to the batch's mean
            (loss * (share * cluster.world / total)).backward()
        loss_sum += loss.item() * share
    loss_value = distributed.total(loss_sum, cluster, run.device) / total
    stop_if_diverged(run, loss_value)
    grad_norm = clip_and_step(run)
    conversations = [e for row in batch for e in row]
    if cluster.main:
        run.ledger.add_conversations(conversations)
    real = sum(len(e.ids) - 1 for e in conversations)
    return StepResult(loss_value, grad_norm, real, {"assistant_tokens": float(total),
                                                    "conversations": float(len(conversations)),
                                                    "fill": real / (len(batch) * config.seq_len)})


# ---- the run ----

def prepare_data(config: SFTConfig, tokenizer, template: str, show) -> tuple[list[ChatSource], list[ChatFile],
                                                                              list[Tokenized]]:
    """Read, check and render every data file, saying per file what was kept and skipped."""
    if not config.data:
        raise LaminaError("no data: give --data FILE... (chat data in JSONL or Parquet)")
    sources = chat_sources(config)                 # no license: refused before any reading
    files, examples, doc = [], [], 0
    for i, source in enumerate(sources):
        chat = read_chat(source.path, config.format or None)
        examples += tokenize_conversations(tokenizer, chat, config.seq_len + 1, template, source=i, first_doc=doc)
        doc += len(chat.records)
        files.append(chat)
        show(chat.summary.line())
    return sources, files, examples


def load_base(config: PostConfig):
    """The base checkpoint and the chat template the run renders (and saves) with (any
    post-training method's; one that reads data checks its seq_len against the model)."""
    if not config.model:
        raise LaminaError("no model: give MODEL (a model directory, GGUF file or packaged name)")
    ck = load_checkpoint(config.model)
    if ck.tokenizer is None:
        raise LaminaError(f"{config.model}: carries no tokenizer, so its chat format is unknown")
    template = chat_format(config.chat_format).template if config.chat_format else ck.tokenizer.chat_template
    if not template:
        raise LaminaError(f"{config.model}: has no chat template; choose one with chat_format=chatml (or llama3, "
                          "llama2, smollm2)")
    ck.tokenizer.chat_template = template          # the saved model carries what it was trained with
    if isinstance(config, DataConfig) and config.seq_len > ck.config.max_seq_len:
        raise InvalidField("seq_len", config.seq_len, f"the model takes at most {ck.config.max_seq_len} tokens")
    return ck, template


def sft(config: SFTConfig, *, resume: bool = False, progress: bool = True) -> RunResult:
    """Fine-tune `config.model` on `config.data`. The final checkpoint is the chat model; with
    LoRA, whose checkpoints keep the base weights and hold the adapters in their training state,
    it is OUT/model (adapters merged) and the adapter is OUT/adapter (PEFT's format)."""
    out = Path(config.out)
    if state.list_checkpoints(out) and not resume:
        raise LaminaError(f"{out} already holds checkpoints; pass --resume to continue it, or choose another --out")
    cluster = distributed.start(config.device)
    try:
        show = print if cluster.main else (lambda *_: None)
        ck, template = load_base(config)
        sources, files, examples = prepare_data(config, ck.tokenizer, template, show)
        rows = ChatRows(examples, config.seq_len, config.seed)
        steps = (max(1, int(np.ceil(config.epochs * len(rows.epoch(0)) / config.batch_size))) if config.epochs
                 else config.max_steps)
        ledger_path = out / "data" / Ledger.FILE
        if cluster.main:
            write_ledger(ledger_path, sources, files, examples)
        train_config = config.train_config(steps)
        model = from_state_dict(ck.config, ck.weights, dtype=torch.float32)
        if config.lora:
            apply_lora(model, config.lora_config())
        provenance = {"tool": "lamina sft", "sft_config": config.to_dict(),
                      "train_config": {k: v for k, v in train_config.to_dict().items()
                                       if k not in ("model", "model_overrides", "data")},
                      "base_model": base_record(config.model, ck.metadata),
                      "data_files": [f.summary.record() | {"license": s.license} for s, f in zip(sources, files)]}
        inputs = Inputs(tokenizer=ck.tokenizer, model_config=ck.config, train_data=rows, val_data=None,
                        ledger=ChatLedger(ledger_path.parent, count_documents(files)), model=model, provenance=provenance)
        run = setup(train_config, cluster, resume, progress and cluster.main, inputs)
        if cluster.main:
            (out / "sft_config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
        say(run, f"{len(examples)} conversations in {len(rows.epoch(0))} rows of {config.seq_len} tokens a pass; "
                 f"{steps} steps of {config.batch_size} rows")
        result = run_loop(run, partial(sft_step, rows=rows))
        if config.lora and cluster.main:
            result = write_lora(run, result, config)
        return result
    finally:
        distributed.stop()


def write_lora(run: Run, result: RunResult, config: SFTConfig) -> RunResult:
    """After a LoRA run: the adapter in PEFT's format (OUT/adapter), then the model with it
    merged (OUT/model), which is the chat model the run made."""
    out = Path(config.out)
    for made in ("adapter", "model"):            # from an earlier finish of the same run (--resume)
        shutil.rmtree(out / made, ignore_errors=True)
    save_adapter(run.model, out / "adapter", base_ref=config.model)
    merge_lora(run.model)
    model_dir = write_hf(out / "model", run.model_config, weights(run.model), run.tokenizer,
                         made_by=result.made_by | {"lora": dataclasses.asdict(config.lora_config()),
                                                   "adapter": str(out / "adapter")})
    say(run, f"adapter: {out / 'adapter'}; merged model: {model_dir}")
    return dataclasses.replace(result, checkpoint=model_dir)
