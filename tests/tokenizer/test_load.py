"""`lamina.tokenizer.load_tokenizer` reproduces the tokenizers of the models lamina runs, id for id: Llama 3's
tiktoken rank file against Meta's own tokenizer (tiktoken) and against HF tokenizers built from the
same file by transformers' converter; SentencePiece models against the sentencepiece library. Bad
files end in one clear error."""

from __future__ import annotations

import json

import pytest
import sentencepiece
from tokenizers import Tokenizer as Backend

from lamina.errors import LaminaError
from lamina.tokenizer import Tokenizer, load_tokenizer
from lamina.assets import TOKENIZERS

PROSE = ("The llama (Lama glama) is a domesticated South American camelid, widely used as a meat and "
         "pack animal by Andean cultures since the pre-Columbian era. It's said they'll spit; we'd "
         "rather not find out. \"Quotes\", 'single quotes', (parentheses) — em dashes… and ellipses.")
CODE = ('def fib(n: int) -> int:\n    """Return the n-th Fibonacci number."""\n    a, b = 0, 1\n'
        '    for _ in range(n):\n        a, b = b, a + b\n    return a\n\n\nif __name__ == "__main__":\n'
        '\tprint({k: fib(k) for k in range(10)})  # {0: 0, 1: 1, ...}\r\n'
        'fn main() { let x: Vec<u8> = vec![0xFF; 16]; println!("{:?}", x); }\n'
        '<div class="x">&amp; &lt;tag&gt;</div> SELECT * FROM t WHERE id >= 42;')
ARABIC = ("أعلنت وزارة الصحة اليوم عن افتتاح مستشفى جديد في العاصمة، بطاقة استيعابية تبلغ ٣٠٠ سرير. "
          "وقال الوزير في مؤتمر صحفي إن المشروع استغرق ثلاث سنوات.")
RUSSIAN = ("Правительство объявило во вторник о новых мерах поддержки малого бизнеса. По словам министра, "
           "программа обойдётся бюджету в 12,5 млрд рублей и начнёт работать с 1 января 2025 года.")
CJK = "東京都は本日、新しい交通計画を発表した。北京今天天气晴朗，气温二十五度。서울의 날씨는 맑습니다."
EMOJI = "emoji 🙂👍🏽 family 👨‍👩‍👧‍👦 flags 🇫🇷🇯🇵 keycap 1️⃣ and ✓ marks ☕"
CORPUS = [
    PROSE, CODE, ARABIC, RUSSIAN, CJK, EMOJI, PROSE + "\n\n" + ARABIC + "\n" + RUSSIAN + "\n" + CJK,
    " " * 3000, "\n" * 500, "\t \t\n \r\n" * 300, "word" + " " * 999 + "word", "  \n  lead and trail  \n  ",
    "1234567890" * 100, "3.14159265358979323846 1,000,000 0x1F 1e-10 ١٢٣٤٥ ²³ ½ Ⅻ",
    "I'M HERE, YOU'RE THERE, IT'S 's 'tis", "ÀÉÎÕÜ naïve café straße Ωμέγα", "a" * 5000,
    "<|begin_of_text|><|eot_id|> <|start_header_id|>system<|end_header_id|> </s> [INST]",
    "x\u200b\u200dy\ufeff\u00a0z \U0010ffff \x00\x01\x7f", "",
]
SURROGATES = ["\ud800", "a\udfffb", "\ud83d\ude00", "\udc80 lone low", "end\ud83d", "\ude00\ud83d"]


@pytest.fixture(scope="module")
def llama3():
    return load_tokenizer("llama-3")


@pytest.fixture(scope="module")
def meta_llama3():
    """Meta's reference tokenizer (llama_models, on tiktoken)."""
    from llama_models.llama3.tokenizer import Tokenizer as Meta
    return Meta(TOKENIZERS["llama-3"].path())


@pytest.fixture(scope="module")
def hf_llama3(meta_llama3):
    """HF tokenizers built from the same rank file by transformers' converter (not lamina's)."""
    from transformers.convert_slow_tokenizer import TikTokenConverter
    path = TOKENIZERS["llama-3"].path()
    specials = sorted(meta_llama3.special_tokens, key=meta_llama3.special_tokens.get)
    hf = TikTokenConverter(vocab_file=str(path), pattern=meta_llama3.pat_str,
                           extra_special_tokens=specials).converted()
    hf.encode_special_tokens = True   # special-token text is text, as in tiktoken's encode_ordinary
    return hf


def test_llama3_rank_file_loads_with_its_pattern_and_special_tokens(llama3, meta_llama3):
    assert llama3.encoding is not None   # the tiktoken engine
    assert llama3.vocab_size == meta_llama3.n_words == 128_256
    assert llama3.special_tokens == meta_llama3.special_tokens
    assert (llama3.bos_id, llama3.eos_id) == (meta_llama3.bos_id, meta_llama3.eos_id)
    assert llama3["<|eot_id|>"] == 128009 and llama3["<|reserved_special_token_245|>"] == 128255
    assert set(meta_llama3.stop_tokens) <= set(llama3.stop_ids)


def test_llama3_ids_equal_meta_tiktoken_and_hf_tokenizers(llama3, meta_llama3, hf_llama3):
    ours_hf = llama3.plain_backend   # lamina's HF view of the ranks (tokenizer.json, GGUF), specials as text
    for text in CORPUS:
        ids = llama3.encode(text, bos=False)
        assert ids == meta_llama3.encode(text, bos=False, eos=False), text[:40]
        assert ids == hf_llama3.encode(text, add_special_tokens=False).ids, text[:40]
        assert ids == ours_hf.encode(text, add_special_tokens=False).ids, text[:40]
        assert llama3.decode(ids) == text
        trusted = llama3.encode(text, bos=True, eos=True, allowed_special="all")
        assert trusted == meta_llama3.encode(text, bos=True, eos=True, allowed_special="all"), text[:40]
    assert llama3.encode_batch(CORPUS, bos=False) == [llama3.encode(t, bos=False) for t in CORPUS]


def test_lone_surrogates_read_as_tiktoken_reads_them(llama3, meta_llama3, hf_llama3):
    """No UTF-8 encoder takes a lone surrogate: tiktoken replaces it with U+FFFD (and joins a
    written-out pair); HF tokenizers refuses the string. lamina reads it as tiktoken does, on
    both engines."""
    hf_engine = Tokenizer(llama3.backend)
    for text in SURROGATES:
        ids = llama3.encode(text, bos=False)
        assert ids == meta_llama3.encode(text, bos=False, eos=False) == hf_engine.encode(text, bos=False)
        fixed = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        assert ids == hf_llama3.encode(fixed, add_special_tokens=False).ids
        assert llama3.decode(ids) == fixed
    with pytest.raises(TypeError):
        hf_llama3.encode(SURROGATES[0])


def test_special_token_text_is_text_unless_allowed(llama3):
    text = "a<|eot_id|>b<|begin_of_text|>"
    assert llama3["<|eot_id|>"] not in llama3.encode(text)
    assert llama3.encode(text, bos=False, allowed_special={"<|eot_id|>"}).count(llama3["<|eot_id|>"]) == 1
    assert llama3.encode(text, bos=False, allowed_special={"<|eot_id|>"}).count(llama3.bos_id) == 0
    assert llama3.encode(text, bos=False, allowed_special="all")[-1] == llama3.bos_id
    ids = llama3.encode(text, allowed_special="all")
    assert llama3.decode(ids, skip_special=True) == "ab"


# -- SentencePiece ------------------------------------------------------------------------------

SPM_CORPUS = [
    PROSE, CODE, "Hello world", " leading space", "   three leading", "trailing space ", "new\nlines\n\n",
    "tabs\tand  double  spaces", ARABIC, RUSSIAN, CJK, EMOJI, "bytes \x00\x07 controls", "1234567890" * 20,
    "<s> and </s> as text", "[INST] not a control token here [/INST]", "a▁literal▁metaspace", " ", "",
]


@pytest.mark.parametrize("name", ["mistral-v1", "mistral-v3"])
def test_sentencepiece_model_ids_equal_sentencepiece(name):
    path = TOKENIZERS[name].path()
    sp = sentencepiece.SentencePieceProcessor(model_file=str(path))
    tok = load_tokenizer(path)
    assert tok.vocab_size == sp.get_piece_size()
    assert (tok.bos_id, tok.eos_id) == (sp.bos_id(), sp.eos_id())
    for text in SPM_CORPUS:
        ids = sp.encode(text)
        assert tok.encode(text, bos=False) == ids, text[:40]
        assert tok.decode(ids) == sp.decode(ids), text[:40]
    assert tok.encode("Hi") == [sp.bos_id()] + sp.encode("Hi")   # Llama 2 style: BOS by default


def test_sentencepiece_control_tokens_never_come_from_text():
    tok = load_tokenizer("mistral-v3")
    inst = tok["[INST]"]
    assert inst not in tok.encode("[INST] hi [/INST]")
    assert tok.encode("[INST] hi", bos=False, allowed_special="all")[0] == inst


def test_a_freshly_trained_sentencepiece_model_loads_exactly(tmp_path):
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter([PROSE, CODE, RUSSIAN] * 20), model_prefix=str(tmp_path / "m"),
        model_type="bpe", vocab_size=400, byte_fallback=True, character_coverage=1.0,
        normalization_rule_name="identity", remove_extra_whitespaces=False, minloglevel=2)
    sp = sentencepiece.SentencePieceProcessor(model_file=str(tmp_path / "m.model"))
    tok = load_tokenizer(tmp_path / "m.model")
    for text in SPM_CORPUS:
        assert tok.encode(text, bos=False) == sp.encode(text), text[:40]


def test_unsupported_sentencepiece_models_are_refused_clearly(tmp_path):
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter([PROSE] * 20), model_prefix=str(tmp_path / "u"), model_type="unigram",
        vocab_size=60, minloglevel=2)
    with pytest.raises(LaminaError, match="not a BPE model.*normalizes text.*removes extra whitespace"):
        load_tokenizer(tmp_path / "u.model")


# -- other formats and bad input ----------------------------------------------------------------

def test_every_reference_kind_loads(tmp_path, smollm2, llama3):
    assert load_tokenizer("smollm2-135m-instruct").encode("Hello!") == smollm2.tokenizer.encode("Hello!")
    assert load_tokenizer(smollm2.path).vocab_size == smollm2.tokenizer.vocab_size   # a GGUF file
    smollm2.tokenizer.save(tmp_path)
    for ref in (tmp_path, tmp_path / "tokenizer.json"):
        assert load_tokenizer(ref).encode("Hello, <|im_end|> world") == smollm2.tokenizer.encode("Hello, <|im_end|> world")
    meta_dir = tmp_path / "meta"
    meta_dir.mkdir()
    llama3.ranks.save(meta_dir / "tokenizer.model")   # Meta's original layout
    assert load_tokenizer(meta_dir).encode(PROSE) == llama3.encode(PROSE)


def test_saved_llama3_loads_in_transformers_with_the_same_ids(tmp_path, llama3):
    from transformers import AutoTokenizer
    llama3.save(tmp_path)
    hf = AutoTokenizer.from_pretrained(tmp_path)
    for text in CORPUS[:8]:
        assert hf(text, add_special_tokens=False).input_ids == llama3.encode(text, bos=False)
    assert load_tokenizer(tmp_path).encode(PROSE) == llama3.encode(PROSE)


@pytest.mark.parametrize("content, error", [
    (None, "file not found|no such file"),
    (b"", "empty file"),
    (b"IQ== 0\nIg== 1\nnot base64!! 2\n", "line 3 is not `<base64 token> <rank>`"),
    (b"IQ== 0\nIg== 0\n", "ranks are not 0..1 once each"),
    (b"IQ== 0\nIg== 1\n", "254 single bytes are not tokens"),
    (b"\x89PNG\r\n\x1a\n....", "not a tokenizer lamina can read"),
    (b"\x0a\x05\x0a\x03abc\x12\xff", "not a readable SentencePiece model"),
    (b"GGUF\x03\x00\x00\x00", "not a readable GGUF file"),
    (b"{\"model\": 1}", "not a readable tokenizer.json"),
])
def test_bad_tokenizer_files_end_in_one_clear_error(tmp_path, content, error):
    path = tmp_path / "tokenizer.model"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(LaminaError, match=error):
        load_tokenizer(path)


def test_a_directory_without_a_tokenizer_says_so(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({}))
    with pytest.raises(LaminaError, match="no tokenizer.json or tokenizer.model"):
        load_tokenizer(tmp_path)


def test_hf_backend_only_tokenizers_still_work(smollm2):
    bare = Tokenizer(Backend.from_str(smollm2.tokenizer.backend.to_str()))
    assert bare.encode("Hello") == smollm2.tokenizer.encode("Hello", bos=False)
