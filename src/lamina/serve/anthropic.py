"""The Anthropic Messages API (`POST /v1/messages`), so that the `anthropic` SDK talks to lamina
as it talks to Anthropic: the request body of https://docs.anthropic.com/en/api/messages
(a `system` prompt, alternating user and assistant messages of text, `max_tokens` required,
`stop_sequences`, temperature, top_p, top_k), the response as a `message` with text content, a
`stop_reason` (end_turn, max_tokens, stop_sequence) and `usage`, and streaming as its named events
(message_start, content_block_start, ping, content_block_delta, content_block_stop,
message_delta, message_stop). Errors have Anthropic's shape (`{"type": "error", "error": {...}}`).
The request runs through the same batcher, caps and cancellation as the OpenAI routes."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Literal

from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from pydantic import Field, field_validator

from .completions import SSE_HEADERS, Choice, Completions
from .protocol import DEFAULTS, ChatBody, _Body

# values of the parameters lamina does not implement yet that ask for nothing
NO_OPS = {"tools": ([],), "tool_choice": ({"type": "auto"}, {"type": "none"}), "thinking": ({"type": "disabled"},)}
STOP_REASONS = {"length": "max_tokens"}                # else end_turn, or stop_sequence when one matched
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 408: "timeout_error", 413: "request_too_large", 429: "rate_limit_error",
               500: "api_error", 529: "overloaded_error"}


def error_body(status: int, message: str) -> dict:
    """An error in Anthropic's shape."""
    return {"type": "error", "error": {"type": ERROR_TYPES.get(status, "api_error"), "message": message}}


class TextBlock(_Body):
    type: Literal["text"]
    text: str


class AnthropicMessage(_Body):
    role: Literal["user", "assistant"]
    content: str | list[TextBlock]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(b.text for b in self.content)


class MessagesBody(_Body):
    model: str
    max_tokens: int = Field(ge=1)                       # required, as in Anthropic's API
    messages: list[AnthropicMessage] = Field(min_length=1)
    system: str | list[TextBlock] | None = None
    temperature: float = Field(DEFAULTS.temperature, ge=0, le=1)   # lamina's default, in Anthropic's range
    top_p: float = Field(DEFAULTS.top_p, gt=0, le=1)
    top_k: int = Field(DEFAULTS.top_k, ge=0)
    stop_sequences: list[str] = Field(default_factory=list, max_length=4)
    stream: bool = False
    metadata: dict | None = None
    # Not implemented yet: refused unless left out or empty.
    tools: Any = None
    tool_choice: Any = None
    thinking: Any = None

    @field_validator("tools", "tool_choice", "thinking")
    @classmethod
    def _unsupported(cls, v, info):
        if v is None or v in NO_OPS[info.field_name]:
            return v
        raise ValueError("not supported yet; leave it out")

    def chat(self) -> ChatBody:
        """The same request as the OpenAI chat route takes it."""
        system = self.system if isinstance(self.system, str) or self.system is None else \
            "".join(b.text for b in self.system)
        messages = ([{"role": "system", "content": system}] if system else []) + \
            [{"role": m.role, "content": m.text()} for m in self.messages]
        return ChatBody.model_validate({"model": self.model, "messages": messages, "max_tokens": self.max_tokens,
                                        "temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k,
                                        "stop": self.stop_sequences})


def event(name: str, data: dict) -> str:
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


class Messages:
    """Answers `/v1/messages` with the OpenAI routes' machinery (`Completions`)."""

    def __init__(self, completions: Completions):
        self.completions = completions

    async def respond(self, http: Request, body: MessagesBody):
        chat = body.chat()
        prompt = self.completions.chat_prompt(chat)
        start = time.monotonic()
        choices, bridge = self.completions.admit(chat, [prompt], [""], "messages")
        head = {"id": "msg_" + uuid.uuid4().hex, "type": "message", "role": "assistant",
                "model": body.model}
        if body.stream:
            return StreamingResponse(self.events(choices, bridge, head, start, len(prompt)),
                                     media_type="text/event-stream", headers=SSE_HEADERS)
        if not await self.completions.collect(http, choices, bridge, start):
            return Response(status_code=499)
        [c] = choices
        return {**head, "content": [{"type": "text", "text": "".join(c.pieces)}], **stopped(c),
                "usage": {"input_tokens": len(prompt), "output_tokens": c.last.completion_tokens}}

    async def events(self, choices: list[Choice], bridge, head: dict, start: float, prompt_tokens: int):
        stream = self.completions.pieces(choices, bridge, start)
        try:
            yield event("message_start", {"type": "message_start", "message": {
                **head, "content": [], "stop_reason": None, "stop_sequence": None,
                "usage": {"input_tokens": prompt_tokens, "output_tokens": 0}}})
            yield event("content_block_start", {"type": "content_block_start", "index": 0,
                                                "content_block": {"type": "text", "text": ""}})
            yield event("ping", {"type": "ping"})
            async for c, text, _, out in stream:
                if text:
                    yield event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                        "delta": {"type": "text_delta", "text": text}})
                if out.finish_reason in ("stop", "length"):
                    yield event("content_block_stop", {"type": "content_block_stop", "index": 0})
                    yield event("message_delta", {"type": "message_delta", "delta": stopped(c),
                                                  "usage": {"output_tokens": out.completion_tokens}})
                    yield event("message_stop", {"type": "message_stop"})
                elif out.finish_reason is not None:
                    e = self.completions.failure(out)
                    yield event("error", error_body(e.status, e.message))
        finally:
            await stream.aclose()


def stopped(c: Choice) -> dict:
    """Why a finished choice stopped, as Anthropic says it."""
    out = c.last
    if out.stop_sequence is not None:
        return {"stop_reason": "stop_sequence", "stop_sequence": out.stop_sequence}
    return {"stop_reason": STOP_REASONS.get(out.finish_reason, "end_turn"), "stop_sequence": None}
