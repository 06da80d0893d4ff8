"""GGUF vocabularies read the way llama.cpp reads them, llama.cpp being the reference for the
format: byte-level BPE ("gpt2": SmolLM2's "smollm" and the other pre-tokenizers) checked against
llama.cpp and transformers, SentencePiece BPE ("llama") against the sentencepiece library."""

from __future__ import annotations

import io
import unicodedata

import gguf
import llama_cpp
import pytest
import sentencepiece
from tokenizers import Tokenizer as Backend
from tokenizers import pre_tokenizers

from lamina.gguf_file import read_gguf_metadata
from lamina.tokenizer import gguf_metadata, tokenizer_from_gguf

CORPUS = [
    "Hello, world!", "The year 2024 had 366 days; π ≈ 3.14159.", "1234567 12345678 0.5e-10",
    "  leading spaces\tand\ttabs\n\n\nnewlines  ", "\r\nwindows\r\nline", "    ", "x  y   z", "tab\t\tend\t",
    "def f(x):\n    return x**2  # square\n", "CamelCaseIdentifier snake_case_name __dunder__",
    "naïve café Über straße ÀÉÎÕÜ", "日本語のテキストと中文", "emoji 🙂👍🏽 and ✓ marks",
    "It's we'll they'd I'M YOU'RE 'tis x's 's", "Mr. O'Neil's 3rd-place finish (12.5%)",
    "$100.00 + €50 = ¥? <=>^~| ::", "hello !!! world ??? a...b!!!c,,d", "URL https://example.com/a?b=1&c=2",
    "١٢٣ Arabic-Indic digits, ²³ superscripts, ½ and Ⅻ", "<|im_start|>user\nhi<|im_end|>\n", "a" * 40, "",
]


def llama_cpp_vocab(path) -> llama_cpp.Llama:
    return llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)


def llama_cpp_ids(vocab: llama_cpp.Llama, text: str, special: bool = False) -> list[int]:
    return vocab.tokenize(text.encode(), add_bos=False, special=special)


def write_vocab_gguf(path, tokenizer_keys: dict) -> None:
    """A GGUF with the llama hyperparameters llama.cpp wants even for vocab_only, no tensors."""
    w = gguf.GGUFWriter(path, "llama")
    w.add_block_count(1)
    w.add_context_length(64)
    w.add_embedding_length(64)
    w.add_feed_forward_length(64)
    w.add_head_count(2)
    w.add_layer_norm_rms_eps(1e-5)
    for key, value in tokenizer_keys.items():   # llama.cpp wants token ids as uint32
        kind = gguf.GGUFValueType.get_type(value)
        w.add_key_value(key, value, gguf.GGUFValueType.UINT32 if kind == gguf.GGUFValueType.INT32 else kind)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


# -- byte-level BPE -------------------------------------------------------------------------------

def test_smollm2_gguf_vocab_tokenizes_like_llama_cpp(smollm2):
    tok, vocab = smollm2.tokenizer, llama_cpp_vocab(smollm2.path)
    for text in CORPUS:
        ids = tok.encode(text, bos=False)
        assert ids == llama_cpp_ids(vocab, text), text
        trusted = tok.encode(text, bos=False, allowed_special="all")
        assert trusted == llama_cpp_ids(vocab, text, special=True), text
        assert tok.decode(ids) == vocab.detokenize(ids).decode() == text


def has_number_outside_ascii(text: str) -> bool:
    return any(unicodedata.category(c).startswith("N") and not c.isascii() for c in text)


def test_smollm2_gguf_vocab_tokenizes_like_transformers_but_for_non_ascii_numbers(smollm2):
    """transformers' GGUF loader builds "smollm" as the plain GPT-2 pre-tokenizer and drops its
    first rule, which splits off every \\p{N} character (llama.cpp: "\\p{N}" before the GPT-2
    pattern; SmolLM2's own tokenizer.json: Digits(individual_digits)). SmolLM2 has no merges
    joining an ASCII digit to anything, so the two agree on ASCII digits; they part where a
    number character made of several bytes (², ½, Ⅻ) merges with a space before it."""
    from transformers import AutoTokenizer
    hf = AutoTokenizer.from_pretrained(smollm2.path.parent, gguf_file=smollm2.path.name)
    ours = smollm2.tokenizer
    without_digit_rule = Backend.from_str(ours.backend.to_str())
    without_digit_rule.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    parted = []
    for text in CORPUS:
        theirs = hf(text, add_special_tokens=False).input_ids   # special tokens parsed, as "all"
        if has_number_outside_ascii(text):
            assert theirs == without_digit_rule.encode(text, add_special_tokens=False).ids, text
        else:
            assert theirs == ours.encode(text, bos=False, allowed_special="all"), text
        parted += [text] if theirs != ours.encode(text, bos=False, allowed_special="all") else []
    assert parted == ["١٢٣ Arabic-Indic digits, ²³ superscripts, ½ and Ⅻ"]


@pytest.mark.parametrize("pre", ["gpt-2", "llama-bpe", "default"])
def test_other_byte_level_pre_tokenizers_split_like_llama_cpp(tmp_path, smollm2, pre):
    # SmolLM2's vocabulary under another pre-tokenizer name, written by lamina's own writer.
    keys = gguf_metadata(smollm2.tokenizer) | {"tokenizer.ggml.pre": pre}
    write_vocab_gguf(tmp_path / "vocab.gguf", keys)
    tok = tokenizer_from_gguf(read_gguf_metadata(tmp_path / "vocab.gguf"))
    vocab = llama_cpp_vocab(tmp_path / "vocab.gguf")
    for text in CORPUS:
        assert tok.encode(text, bos=False) == llama_cpp_ids(vocab, text), text


# -- SentencePiece BPE ----------------------------------------------------------------------------

SPM_TRAINING_TEXT = """The quick brown fox jumps over the lazy dog.
Sphinx of black quartz, judge my vow! How vexingly quick daft zebras jump.
Pack my box with five dozen liquor jugs. The five boxing wizards jump quickly.
def tokenize(text):
    return [piece for piece in text.split()]
Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 1999 2024 3.14159
Über café naïve résumé — “quotes” and ‘single’ ones.
"""

SPM_SAMPLES = [
    "The quick brown fox", "Hello world", " leading space", "   three leading", "trailing space ",
    "new\nlines\n\nhere\n", "tabs\tand  double  spaces", "zebra quartz 12345 3.14", "Über naïve café",
    "日本語 ✓ emoji 🙂 ©", "bytes \x00\x07 controls", "<s> and </s> as text", "a▁literal▁metaspace",
    " ", "\n", "", SPM_TRAINING_TEXT,
]


@pytest.fixture(scope="module")
def sentencepiece_gguf(tmp_path_factory):
    """A SentencePiece BPE model trained like Llama's (byte fallback, digits split, text as is),
    and the GGUF llama.cpp's converter would write for it."""
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(SPM_TRAINING_TEXT.splitlines() * 4), model_writer=model,
        model_type="bpe", vocab_size=420, byte_fallback=True, split_digits=True,
        character_coverage=1.0, normalization_rule_name="identity", remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True, minloglevel=2)
    sp = sentencepiece.SentencePieceProcessor(model_proto=model.getvalue())
    kinds = [(sp.is_unknown, 2), (sp.is_control, 3), (sp.is_unused, 5), (sp.is_byte, 6)]
    n = sp.get_piece_size()
    path = tmp_path_factory.mktemp("spm") / "vocab.gguf"
    write_vocab_gguf(path, {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": [sp.id_to_piece(i) for i in range(n)],
        "tokenizer.ggml.scores": [sp.get_score(i) for i in range(n)],
        "tokenizer.ggml.token_type": [next((t for is_kind, t in kinds if is_kind(i)), 1) for i in range(n)],
        "tokenizer.ggml.unknown_token_id": sp.unk_id(),
        "tokenizer.ggml.bos_token_id": sp.bos_id(), "tokenizer.ggml.eos_token_id": sp.eos_id()})
    return sp, path


def test_sentencepiece_gguf_vocab_encodes_and_decodes_like_sentencepiece(sentencepiece_gguf):
    sp, path = sentencepiece_gguf
    tok = tokenizer_from_gguf(read_gguf_metadata(path))
    assert tok.vocab_size == sp.get_piece_size() == 420
    for text in SPM_SAMPLES:
        ids = sp.encode(text)
        assert tok.encode(text, bos=False) == ids, text
        assert tok.decode(ids) == sp.decode(ids) == text.replace("▁", " ")   # "▁" is a space to both
    assert any(sp.is_byte(i) for i in sp.encode("🙂"))   # byte fallback did happen
    assert tok.encode("Hi") == [sp.bos_id()] + sp.encode("Hi")   # "llama" vocabularies add BOS
    assert (tok.bos_token, tok.eos_token) == ("<s>", "</s>")


def test_llama_cpp_reads_the_sentencepiece_gguf_like_sentencepiece_and_lamina(sentencepiece_gguf):
    sp, path = sentencepiece_gguf
    tok, vocab = tokenizer_from_gguf(read_gguf_metadata(path)), llama_cpp_vocab(path)
    for text in SPM_SAMPLES:
        assert llama_cpp_ids(vocab, text) == sp.encode(text), text
    # Special tokens in trusted text: llama.cpp puts the "▁" prefix after each one; so does lamina.
    for text in ["<s>Hello</s> world", "Hi<s> there"]:
        assert tok.encode(text, bos=False, allowed_special="all") == llama_cpp_ids(vocab, text, special=True)
