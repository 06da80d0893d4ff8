"""Training data of every stage as plain documents, (id, text) pairs: what `lamina eval
--decontaminate` checks benchmark items against, so that an eval set is never trained on in
post-training either. Three kinds of path are read:

- a corpus directory (`lamina data build`): its train documents, read back from the shards
  (`lamina.data.documents`), ids the ledger's document ids;
- chat or preference data (.jsonl, .parquet, read and checked as `lamina sft` reads them): every
  usable record, its turns' text joined (a preference pair's prompt, chosen and rejected
  replies), ids "FILE#RECORD";
- a fine-tuning run directory (`lamina sft --out`): the data files its ledger
  (DIR/data/ledger.sqlite) records, and of those only the conversations it kept for training."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from ..data.documents import corpus_documents, is_corpus
from ..data.ledger import Ledger
from ..errors import LaminaError
from .chat_data import Conversation, read_chat

CHAT_SUFFIXES = (".jsonl", ".parquet")


def training_documents(path: str | Path) -> Iterator[tuple[int | str, str]]:
    """(id, text) of every training document at `path` (a corpus, chat data or an SFT run)."""
    path = Path(path)
    if path.is_file() and path.suffix in CHAT_SUFFIXES:
        yield from chat_documents(path)
    elif is_corpus(path):
        yield from ((doc.id, doc.text) for doc in corpus_documents(path, "train"))
    elif (path / "data" / Ledger.FILE).is_file():
        yield from run_documents(path)
    else:
        raise LaminaError(f"{path}: not training data; give a corpus directory (`lamina data build`), a fine-tuning "
                          "run directory (`lamina sft --out`) or chat data (.jsonl, .parquet)")


def record_text(record) -> str:
    """The words of a conversation or preference pair, turn after turn."""
    if isinstance(record, Conversation):
        turns = record.messages
    else:
        turns = record.prompt + record.chosen + record.rejected
    return "\n".join(m["content"] for m in turns)


def chat_documents(path: Path, format: str | None = None, records: set[int] | None = None
                   ) -> Iterator[tuple[str, str]]:
    """("FILE#RECORD", text) of the usable records of a chat data file (those in `records`, if given)."""
    for record in read_chat(path, format).records:
        if records is None or record.record in records:
            yield f"{path.name}#{record.record}", record_text(record)


def run_documents(run: Path) -> Iterator[tuple[str, str]]:
    """The conversations a fine-tuning run trained on, read from the files its ledger names."""
    ledger = Ledger.open(run / "data")
    try:
        kept = ledger.q("SELECT s.origin, d.path FROM documents d JOIN sources s ON s.id = d.source_id "
                        "WHERE d.status = 'kept' ORDER BY d.id")
    finally:
        ledger.close()
    config = run / "sft_config.json"
    format = (json.loads(config.read_text()).get("format") or None) if config.is_file() else None
    files: dict[str, set[int]] = {}
    for origin, where in kept:
        files.setdefault(origin, set()).add(int(where.rpartition("#")[2]))
    for origin, records in files.items():
        if not Path(origin).is_file():
            raise LaminaError(f"{run}: its ledger names the data file {origin}, which is gone; decontaminate "
                              "against a copy of it instead")
        yield from chat_documents(Path(origin), format, records)
