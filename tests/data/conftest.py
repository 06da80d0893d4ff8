import sqlite3

import pytest

from lamina.data import BuildConfig, folder_source
from lamina.data.ledger import CONTENT_TABLES

PROSE = ("The river ran past the old mill where the miller kept his accounts in a green book, "
         "and every evening the children of the village came down to watch the water turn the wheel. ")


def prose(n: int, words: int = 80) -> str:
    """A distinct, clean paragraph of about `words` words, numbered so no two are near duplicates."""
    import random
    rng = random.Random(n)
    vocab = PROSE.replace(",", "").replace(".", "").split() + [f"word{n}x{i}" for i in range(40)]
    return " ".join(rng.choice(vocab) for _ in range(words)).capitalize() + ".\n"


def write_docs(folder, docs: dict[str, str | bytes]):
    folder.mkdir(parents=True, exist_ok=True)
    for name, body in docs.items():
        p = folder / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(body if isinstance(body, bytes) else body.encode())
    return folder


@pytest.fixture
def make_source(tmp_path):
    def make(id: str, license: str, docs: dict[str, str | bytes], kind: str = "prose"):
        return folder_source(write_docs(tmp_path / "src" / id, docs), id=id, license=license, kind=kind)
    return make


@pytest.fixture
def config():
    """Small shards, so a tiny corpus still spans several; the real SmolLM2 tokenizer (uint16)."""
    return BuildConfig(shard_tokens=400, validation_fraction=0.2)


def ledger_content(out) -> dict[str, list[tuple]]:
    """Every content table's rows, in order (what must be equal for equal inputs and seed)."""
    db = sqlite3.connect(out / "ledger.sqlite")
    return {t: db.execute(f"SELECT * FROM {t} ORDER BY rowid").fetchall() for t in CONTENT_TABLES}


def corpus_files(out) -> dict[str, bytes]:
    """The shards and the JSON files of a corpus, by name."""
    return {f.name: f.read_bytes() for f in sorted(out.iterdir()) if f.suffix in (".bin", ".json")}
