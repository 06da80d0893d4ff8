"""The chat formats lamina renders itself: Llama 3's and Llama 4's header formats, Llama 2's
`[INST]` format, and ChatML (SmolLM2). A format turns a conversation into parts: text the format
wrote, whose control tokens are real, and message content, which is only ever text. `encode_parts`
makes the ids. Each format also carries the HF `chat_template` (Jinja) that renders the same text,
for tokenizer_config.json; the tests check that the two agree, and agree with transformers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import LaminaError

Part = tuple[str, bool]   # (text, written by the format: special tokens in it are real)
ROLES = ("system", "user", "assistant")


def check_messages(messages: list[dict]) -> None:
    for m in messages:
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise LaminaError(f"a chat message needs a role (system/user/assistant) and text content: {m!r}")


def encode_parts(tok, parts: list[Part]) -> list[int]:
    """Ids of rendered parts. Special tokens are looked for only in the format's own text; the
    text between two of them, format and content alike, is encoded as one stretch, exactly as
    the whole rendered string would be (so the ids equal transformers' apply_chat_template)."""
    ids: list[int] = []
    stretch: list[str] = []
    for text, trusted in parts:
        for piece in tok.split_special(text) if trusted else [text]:
            if isinstance(piece, int):
                if stretch:
                    ids += tok.encode("".join(stretch), bos=False)
                    stretch = []
                ids.append(piece)
            else:
                stretch.append(piece)
    if "".join(stretch):
        ids += tok.encode("".join(stretch), bos=False)
    return ids


@dataclass(frozen=True)
class ChatFormat:
    name: str
    template: str                                           # the equivalent HF chat_template
    build: Callable[..., list[Part]] = field(repr=False)    # (messages, generation_prompt, bos, eos)

    def parts(self, tok, messages: list[dict], *, add_generation_prompt: bool = True) -> list[Part]:
        check_messages(messages)
        return [p for p in self.build(messages, add_generation_prompt, tok.bos_token or "",
                                      tok.eos_token or "") if p[0]]

    def render(self, tok, messages: list[dict], *, add_generation_prompt: bool = True) -> list[int]:
        """Token ids of the conversation, ready for generation (with the generation prompt)."""
        return encode_parts(tok, self.parts(tok, messages, add_generation_prompt=add_generation_prompt))

    def text(self, tok, messages: list[dict], *, add_generation_prompt: bool = True) -> str:
        return "".join(t for t, _ in self.parts(tok, messages, add_generation_prompt=add_generation_prompt))


# -- Llama 3 ------------------------------------------------------------------------------------

def _llama3(messages, generation_prompt, bos, eos) -> list[Part]:
    parts: list[Part] = []
    for i, m in enumerate(messages):
        parts += [((bos if i == 0 else "") + f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n", True),
                  (m["content"].strip(), False), ("<|eot_id|>", True)]
    if generation_prompt:
        parts.append(("<|start_header_id|>assistant<|end_header_id|>\n\n", True))
    return parts


# Meta-Llama-3-8B-Instruct's tokenizer_config.json
LLAMA3 = ChatFormat("llama3", (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim "
    "+ '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"), _llama3)


# -- Llama 4 ------------------------------------------------------------------------------------

_LLAMA4_TEXT_ONLY = "lamina's Llama 4 chat format holds text only; it cannot render tool calls"


def _llama4(messages, generation_prompt, bos, eos) -> list[Part]:
    """Llama 3's layout with Llama 4's header and end-of-turn tokens; unlike Llama 3's, Meta's
    llama4/chat_format.py does not strip the content. Text only: images and tool calls (which
    Meta ends with `<|eom|>`) are refused, here and by `check_messages`."""
    parts: list[Part] = [(bos, True)]
    for m in messages:
        if m.get("tool_calls"):
            raise LaminaError(_LLAMA4_TEXT_ONLY)
        parts += [(f"<|header_start|>{m['role']}<|header_end|>\n\n", True), (m["content"], False), ("<|eot|>", True)]
    if generation_prompt:
        parts.append(("<|header_start|>assistant<|header_end|>\n\n", True))
    return parts


# Meta's text chat format (llama_models' llama4/chat_format.py, encode_dialog_prompt) as a template
LLAMA4 = ChatFormat("llama4", (
    "{{ bos_token }}{% for message in messages %}{% if message['tool_calls'] %}"
    "{{ raise_exception(\"" + _LLAMA4_TEXT_ONLY + "\") }}{% endif %}{{ '<|header_start|>' + message['role'] "
    "+ '<|header_end|>\\n\\n' + message['content'] + '<|eot|>' }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|header_start|>assistant<|header_end|>\\n\\n' }}{% endif %}"), _llama4)


# -- Llama 2 ------------------------------------------------------------------------------------

def _strip(parts: list[Part]) -> list[Part]:
    """str.strip() of the joined text, done across the parts (the template strips joined text)."""
    parts = list(parts)
    for i in range(len(parts)):              # leading whitespace, into later parts if need be
        parts[i] = (parts[i][0].lstrip(), parts[i][1])
        if parts[i][0]:
            break
    for i in reversed(range(len(parts))):    # trailing whitespace
        parts[i] = (parts[i][0].rstrip(), parts[i][1])
        if parts[i][0]:
            break
    return parts


def _llama2(messages, generation_prompt, bos, eos) -> list[Part]:
    """Each user turn `<s>[INST] ... [/INST]`, each reply ` ... </s>`; the system message goes
    inside the first user turn. The reply is always next, so there is no generation prompt."""
    system = messages[0]["content"] if messages and messages[0]["role"] == "system" else None
    turns = messages[1:] if system is not None else messages
    parts: list[Part] = []
    for i, m in enumerate(turns):
        if (m["role"] == "user") != (i % 2 == 0):
            raise LaminaError("the Llama 2 chat format needs user and assistant turns alternating, "
                              "user first (and a system message only at the start)")
        content = [(m["content"], False)]
        if i == 0 and system is not None:
            content = [("<<SYS>>\n", True), (system, False), ("\n<</SYS>>\n\n", True), *content]
        if m["role"] == "user":
            parts += [(bos + "[INST] ", True), *_strip(content), (" [/INST]", True)]
        else:
            parts += [(" ", True), *_strip(content), (" " + eos, True)]
    return parts


# meta-llama/Llama-2-7b-chat-hf's tokenizer_config.json
LLAMA2 = ChatFormat("llama2", (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% if loop.index0 == 0 and system_message != false %}{% set content = "
    "'<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}"
    "{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}"
    "{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    "{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"), _llama2)


# -- ChatML -------------------------------------------------------------------------------------

def _chatml(messages, generation_prompt, bos, eos, default_system: str | None = None) -> list[Part]:
    parts: list[Part] = []
    if default_system is not None and messages and messages[0]["role"] != "system":
        parts.append((f"<|im_start|>system\n{default_system}<|im_end|>\n", True))
    for m in messages:
        parts += [(f"<|im_start|>{m['role']}\n", True), (m["content"], False), ("<|im_end|>\n", True)]
    if generation_prompt:
        parts.append(("<|im_start|>assistant\n", True))
    return parts


CHATML = ChatFormat("chatml", (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] "
    "+ '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{% endif %}"), _chatml)

_SMOLLM2_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
# ChatML with SmolLM2's default system message: its GGUF's tokenizer.chat_template, verbatim
SMOLLM2 = ChatFormat("smollm2", (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\n" + _SMOLLM2_SYSTEM + "<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"),
    lambda *args: _chatml(*args, default_system=_SMOLLM2_SYSTEM))

CHAT_FORMATS = {f.name: f for f in (LLAMA3, LLAMA4, LLAMA2, CHATML, SMOLLM2)}


def chat_format(name: str) -> ChatFormat:
    try:
        return CHAT_FORMATS[name]
    except KeyError:
        raise LaminaError(f"unknown chat format {name!r}; known: {', '.join(CHAT_FORMATS)}") from None
