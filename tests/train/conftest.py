import pytest

from lamina.data import build_corpus, builtin
from lamina.data.build import BuildConfig


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """Public-domain Shakespeare, cut with a small BPE trained on it (so the debug preset's
    embeddings stay small): a real corpus with a ledger, in a few seconds."""
    out = tmp_path_factory.mktemp("train-corpus") / "shakespeare"
    build_corpus([builtin("shakespeare")], out=out,
                 config=BuildConfig(tokenizer="bpe:768", validation_fraction=0.05, near_dedup=False))
    return out
