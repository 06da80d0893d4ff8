"""Chat templates: the HF `chat_template` (Jinja) rendered in a sandbox, and encoded so that text
inside a message can never become a control token.

The template is rendered with a placeholder in place of each message's content, so lamina knows
which text the template wrote (whose control tokens are real) and which the user wrote (only
ever text); a second rendering with whitespace around each placeholder shows where the template
strips the content. `encode_parts` then looks for control tokens in the template's text only.
So a user who types `<|im_end|>` gets the characters, not the token."""

from __future__ import annotations

import re
from datetime import datetime
from functools import lru_cache

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ..errors import LaminaError
from .core import Tokenizer
from .formats import Part, check_messages, encode_parts

# Private-use characters never found in real text; U+2003 (em space) is whitespace to strip().
_HOLE = re.compile("\ue000(\\d+)\ue001")
_PADDED_HOLE = re.compile("(\u2003?)\ue000(\\d+)\ue001(\u2003?)")


@lru_cache(maxsize=16)
def _compile(template: str):
    def raise_exception(message):
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=["jinja2.ext.loopcontrols"])
    env.globals.update(raise_exception=raise_exception,
                       strftime_now=lambda fmt: datetime.now().strftime(fmt))
    return env.from_string(template)


def template_parts(tok: Tokenizer, messages: list[dict], *, add_generation_prompt: bool = True,
                   template: str | None = None) -> list[Part]:
    """The conversation as the template renders it, cut into template text and message content."""
    template = template or tok.chat_template
    if not template:
        raise LaminaError("this model has no chat template; use plain generation instead")
    check_messages(messages)

    def render(pad: str) -> str:
        holes = [dict(m, content=f"{pad}\ue000{i}\ue001{pad}") for i, m in enumerate(messages)]
        try:
            return _compile(template).render(
                messages=holes, add_generation_prompt=add_generation_prompt,
                bos_token=tok.bos_token or "", eos_token=tok.eos_token or "")
        except TemplateError as e:
            raise LaminaError(f"chat template failed: {e}") from None

    text, padded = render(""), render("\u2003")
    holes, kept = list(_HOLE.finditer(text)), _PADDED_HOLE.findall(padded)
    if [h.group(1) for h in holes] != [index for _, index, _ in kept]:
        raise LaminaError("the chat template uses message content in a way lamina cannot follow")
    parts: list[Part] = []
    pos = 0
    for hole, (left, _, right) in zip(holes, kept):
        content = messages[int(hole.group(1))]["content"]
        content = content if left else content.lstrip()
        content = content if right else content.rstrip()
        parts += [(text[pos:hole.start()], True), (content, False)]
        pos = hole.end()
    parts.append((text[pos:], True))
    return [p for p in parts if p[0]]


def render_chat(tok: Tokenizer, messages: list[dict], *, add_generation_prompt: bool = True) -> list[int]:
    """Token ids of a conversation in the tokenizer's chat format, ready for generation."""
    return encode_parts(tok, template_parts(tok, messages, add_generation_prompt=add_generation_prompt))
