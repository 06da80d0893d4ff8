import numpy as np
import pytest

from lamina.data import BuildConfig, TokenShards, build_corpus
from lamina.errors import LaminaError

from .conftest import prose


@pytest.fixture
def corpus(make_source, tmp_path):
    src = make_source("mit-src", "MIT", {f"d{i}.txt": prose(i) for i in range(8)})
    return build_corpus([src], config=BuildConfig(shard_tokens=300, validation_fraction=0.25), out=tmp_path / "c").out


def test_random_batches_are_shifted_windows_and_seeded(corpus):
    train = TokenShards(corpus, "train")
    x, y = train.random_batch(np.random.default_rng(0), batch_size=4, seq_len=16)
    assert x.shape == y.shape == (4, 16) and x.dtype == np.int64
    assert (x[:, 1:] == y[:, :-1]).all()
    flat = np.concatenate([np.asarray(s) for s in train.shards])
    for row in np.concatenate([x, y[:, -1:]], axis=1):                  # each row is a slice of some shard
        assert any((np.lib.stride_tricks.sliding_window_view(np.asarray(s), 17) == row).all(1).any()
                   for s in train.shards)
    again = train.random_batch(np.random.default_rng(0), batch_size=4, seq_len=16)
    assert (again[0] == x).all() and len(flat) == train.tokens


def test_sequential_batches_walk_a_split_once(corpus):
    val = TokenShards(corpus, "validation")
    seen = sum(x.size for x, _ in val.sequential_batches(batch_size=3, seq_len=8))
    assert seen == sum((len(s) - 1) // 8 * 8 for s in val.shards)
    with pytest.raises(LaminaError, match="no test shards"):
        TokenShards(corpus, "test")
