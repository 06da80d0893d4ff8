import pytest


@pytest.fixture(scope="session")
def corpus(shakespeare_corpus):
    """The training tests' corpus: Shakespeare with its own small BPE (tests/conftest.py)."""
    return shakespeare_corpus
