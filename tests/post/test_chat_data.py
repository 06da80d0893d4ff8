"""Chat data: every format read into one shape from JSONL and Parquet, bad records counted by
reason, and the assistant-only mask of lamina's rendering equal to TRL's."""

from __future__ import annotations

import json

import pytest

from lamina.errors import LaminaError
from lamina.post.chat_data import Conversation, Preference, read_chat, render_with_mask, tokenize_conversations

USER, ASSISTANT = "What is 2 + 3?", "2 + 3 = 5."
EXPECTED = ({"role": "system", "content": "Be brief."}, {"role": "user", "content": USER},
            {"role": "assistant", "content": ASSISTANT})

# SmolLM2's ChatML (its default system message included) with TRL's generation markers around
# what the assistant says: the text it renders is the SmolLM2 template's, character for character.
SMOLLM2_WITH_GENERATION = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\n' }}{% generation %}"
    "{{ message['content'] + '<|im_end|>' + '\n' }}{% endgeneration %}{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

CONVERSATIONS = [
    [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "Add 17 and 25."}, {"role": "assistant", "content": "17 + 25 = 42"}],
    [{"role": "system", "content": "You answer in French."}, {"role": "user", "content": "Colour of the sky?"},
     {"role": "assistant", "content": "\n Bleu, en général.  "}],
    [{"role": "system", "content": "Count."}, {"role": "user", "content": "To three?"},
     {"role": "assistant", "content": "1, 2, 3"}, {"role": "user", "content": "And back"},
     {"role": "assistant", "content": "3, 2, 1 🙂"}],
]


def write_jsonl(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def write_parquet(path, records):
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.Table.from_pylist(records), path)
    return path


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    from lamina.tokenizer import load_tokenizer
    return load_tokenizer("smollm2-135m-instruct")


@pytest.mark.parametrize("suffix", ["jsonl", "parquet"])
@pytest.mark.parametrize("format,record", [
    ("messages", {"messages": list(EXPECTED)}),
    ("sharegpt", {"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": USER},
                                    {"from": "gpt", "value": ASSISTANT}]}),
    ("alpaca", {"instruction": USER, "input": "", "output": ASSISTANT, "system": "Be brief."}),
    ("prompt_completion", {"prompt": [EXPECTED[0], EXPECTED[1]], "completion": [EXPECTED[2]]}),
])
def test_every_chat_format_reads_into_the_same_conversation(tmp_path, suffix, format, record):
    path = tmp_path / f"data.{suffix}"
    (write_jsonl if suffix == "jsonl" else write_parquet)(path, [record, record])
    chat = read_chat(path)
    assert chat.format == format
    assert chat.records == [Conversation(EXPECTED, 1), Conversation(EXPECTED, 2)]
    assert chat.summary.line() == f"{path} ({format}): 2 kept, 0 skipped"


def test_alpaca_input_follows_the_instruction_and_prompt_strings_are_user_turns(tmp_path):
    alpaca = read_chat(write_jsonl(tmp_path / "a.jsonl", [{"instruction": "Translate.", "input": "chat", "output": "cat"}]))
    assert alpaca.records[0].messages == ({"role": "user", "content": "Translate.\n\nchat"},
                                          {"role": "assistant", "content": "cat"})
    pc = read_chat(write_jsonl(tmp_path / "p.jsonl", [{"prompt": "2+2?", "completion": "4"}]))
    assert pc.records[0].messages == ({"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"})


@pytest.mark.parametrize("suffix", ["jsonl", "parquet"])
def test_preference_pairs_read_with_a_prompt_or_an_implicit_one(tmp_path, suffix):
    user, good, bad = {"role": "user", "content": USER}, {"role": "assistant", "content": "5"}, \
        {"role": "assistant", "content": "6"}
    records = [{"prompt": USER, "chosen": "5", "rejected": "6"},
               {"prompt": [user], "chosen": [good], "rejected": [bad]},
               {"chosen": [user, good], "rejected": [user, bad]}]
    path = tmp_path / f"prefs.{suffix}"
    if suffix == "jsonl":
        write_jsonl(path, records)
    else:               # a Parquet column has one type: strings in one file, message lists in another
        write_parquet(path, records[1:])
        records = records[1:]
    chat = read_chat(path)
    assert chat.format == "preference"
    assert [r for r in chat.records] == [Preference((user,), (good,), (bad,), i) for i in range(1, len(records) + 1)]


def test_malformed_records_are_counted_by_reason_and_skipped(tmp_path):
    ok = {"messages": list(EXPECTED)}
    bad = [
        {"messages": [{"role": "user", "content": "hello?"}]},                                   # no assistant turn
        {"messages": [{"role": "user", "content": "  "}, {"role": "assistant", "content": "hi"}]},
        {"messages": [{"role": "robot", "content": "beep"}, {"role": "assistant", "content": "hi"}]},
        {"messages": [{"role": "assistant", "content": "first"}, {"role": "user", "content": "then"}]},
        {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"},
                      {"role": "assistant", "content": "c"}]},
        {"messages": [{"role": "user", "content": ["image"]}, {"role": "assistant", "content": "c"}]},
        {"instruction": "a", "output": "b"},
        "{not json",
        "[1, 2]",
    ]
    chat = read_chat(write_jsonl(tmp_path / "mixed.jsonl", [ok, *bad, ok]))
    assert [c.record for c in chat.records] == [1, 11]
    assert chat.summary.by_reason() == {"roles out of order": 2, "no assistant turn": 1, "empty content": 1,
                                        "unknown role": 1, "content is not text": 1,
                                        "not a record of the messages format (no messages)": 1, "not valid JSON": 1,
                                        "not a JSON object": 1}
    assert "2 kept, 9 skipped" in chat.summary.line() and "no assistant turn 1 (first: record 2)" in chat.summary.line()


def test_a_file_with_nothing_usable_is_one_clear_error(tmp_path):
    path = write_jsonl(tmp_path / "empty.jsonl", [{"messages": [{"role": "user", "content": "anyone?"}]}] * 3)
    with pytest.raises(LaminaError, match=r"no usable messages records \(no assistant turn: 3\)"):
        read_chat(path)
    with pytest.raises(LaminaError, match="cannot tell the format"):
        read_chat(write_jsonl(tmp_path / "odd.jsonl", [{"question": "q", "answer": "a"}]))
    with pytest.raises(LaminaError, match=r"must be \.jsonl .* or \.parquet"):
        read_chat(write_jsonl(tmp_path / "data.txt", [{"messages": []}]))


def test_a_named_format_overrides_recognition(tmp_path):
    path = write_jsonl(tmp_path / "pc.jsonl", [{"prompt": "q", "completion": "a", "instruction": "i", "output": "o"}])
    assert read_chat(path).format == "alpaca"
    assert read_chat(path, "prompt_completion").records[0].messages[1] == {"role": "assistant", "content": "a"}
    with pytest.raises(LaminaError, match=r"not a record of the messages format \(no messages\): 1"):
        read_chat(path, "messages")
    with pytest.raises(LaminaError, match="unknown chat data format"):
        read_chat(path, "csv")


def test_conversations_longer_than_the_context_are_skipped_with_their_reason(tmp_path, smollm2_tokenizer):
    long = {"messages": [{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "ok"}]}
    chat = read_chat(write_jsonl(tmp_path / "c.jsonl", [{"messages": list(EXPECTED)}, long]))
    examples = tokenize_conversations(smollm2_tokenizer, chat, 64)
    assert len(examples) == 1 and chat.summary.by_reason() == {"longer than the context": 1}
    with pytest.raises(LaminaError, match="longer than the context"):
        tokenize_conversations(smollm2_tokenizer, read_chat(write_jsonl(tmp_path / "l.jsonl", [long])), 64)


def test_the_assistant_mask_equals_trls(smollm2_tokenizer, tmp_path):
    """TRL's SFT tokenizes a conversation with `return_assistant_tokens_mask=True` (trl.data_utils._tokenize,
    what SFTTrainer calls); with generation markers on SmolLM2's template its mask equals lamina's,
    which needs no markers at all."""
    from transformers import AutoTokenizer
    from trl.chat_template_utils import is_chat_template_stop_token_trained
    from trl.data_utils import _tokenize
    smollm2_tokenizer.save(tmp_path)
    hf = AutoTokenizer.from_pretrained(tmp_path)
    hf.chat_template = SMOLLM2_WITH_GENERATION
    assert is_chat_template_stop_token_trained(hf)          # the reference trains <|im_end|> too
    # the second reply starts with a newline, which shares a token with the template's own: both count it
    merged = ["", "\n", ""]
    for messages, lead in zip(CONVERSATIONS, merged):
        ids, mask = render_with_mask(smollm2_tokenizer, messages)
        theirs = _tokenize(hf, messages, return_assistant_tokens_mask=True)
        assert ids == theirs["input_ids"]
        assert mask == [bool(m) for m in theirs["assistant_masks"]]
        said = smollm2_tokenizer.decode([i for i, m in zip(ids, mask) if m])
        assert said == lead + "".join(m["content"] + "<|im_end|>\n" for m in messages if m["role"] == "assistant")


def test_a_template_that_is_not_prefix_stable_is_refused(smollm2_tokenizer):
    # renders the last message differently from the others, so earlier renderings are no prefix
    odd = ("{% for m in messages %}{% if loop.last %}<|im_start|>{{ m['role'] }}:{{ m['content'] }}<|im_end|>"
           "{% else %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>{% endif %}{% endfor %}"
           "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    with pytest.raises(LaminaError, match="prefix by prefix"):
        render_with_mask(smollm2_tokenizer, CONVERSATIONS[0], template=odd)
