"""Chat templates: the HF `chat_template` (Jinja) rendered in a sandbox, and encoded so that text
inside a message can never become a control token.

The template is rendered with a placeholder in place of each message's content; the template's
own text (which holds the control tokens) is encoded with special tokens allowed, each message's
content with none allowed. So a user who types `<|im_end|>` gets the characters, not the token."""

from __future__ import annotations

import re
from datetime import datetime
from functools import lru_cache

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ..errors import LaminaError
from .core import Tokenizer

_HOLE = re.compile("\ue000(\\d+)\ue001")   # private-use characters never found in real text


@lru_cache(maxsize=16)
def _compile(template: str):
    def raise_exception(message):
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=["jinja2.ext.loopcontrols"])
    env.globals.update(raise_exception=raise_exception,
                       strftime_now=lambda fmt: datetime.now().strftime(fmt))
    return env.from_string(template)


def render_chat(tok: Tokenizer, messages: list[dict], *, add_generation_prompt: bool = True) -> list[int]:
    """Token ids of a conversation in the tokenizer's chat format, ready for generation."""
    if not tok.chat_template:
        raise LaminaError("this model has no chat template; use plain generation instead")
    for m in messages:
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant") \
                or not isinstance(m.get("content"), str):
            raise LaminaError(f"a chat message needs a role (system/user/assistant) and text content: {m!r}")
    holes = [dict(m, content=f"\ue000{i}\ue001") for i, m in enumerate(messages)]
    try:
        text = _compile(tok.chat_template).render(
            messages=holes, add_generation_prompt=add_generation_prompt,
            bos_token=tok.bos_token or "", eos_token=tok.eos_token or "")
    except TemplateError as e:
        raise LaminaError(f"chat template failed: {e}") from None
    trims = "trim" in tok.chat_template   # Llama 3's template strips each message's content
    ids: list[int] = []
    pos = 0
    for hole in _HOLE.finditer(text):
        ids += tok.encode(text[pos:hole.start()], bos=False, allowed_special="all")
        content = messages[int(hole.group(1))]["content"]
        ids += tok.encode(content.strip() if trims else content, bos=False)
        pos = hole.end()
    ids += tok.encode(text[pos:], bos=False, allowed_special="all")
    return ids
