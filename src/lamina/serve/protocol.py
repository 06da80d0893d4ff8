"""The OpenAI wire format that `lamina serve` speaks: request bodies as validated pydantic models,
and response, stream-chunk and error bodies as plain dicts, shaped as in OpenAI's API reference
(https://platform.openai.com/docs/api-reference/chat, .../completions, error codes in
.../docs/guides/error-codes). Only what lamina implements is accepted: a field that would change
the result and is not supported (n > 1, logprobs, penalties, logit_bias, tools, a JSON response
format, ...) is refused with a message that names it, never silently ignored; left out, null or
set to its no-op value (n: 1, logprobs: false, {} or []) it is accepted."""

from __future__ import annotations

import time
import uuid
from typing import Literal

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .sampling import SEED_RANGE, SamplingParams

DEFAULTS = SamplingParams()


class APIError(Exception):
    """An error the client gets as `{"error": {...}}` with this HTTP status."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


class _Body(BaseModel):
    # strict: "10" is not a number and "yes" not a boolean, as in OpenAI's API; unknown fields
    # (user, metadata, ...) that do not change the result are ignored.
    model_config = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False)


class StreamOptions(_Body):
    include_usage: bool = False


class SamplingBody(_Body):
    # A field left out takes lamina's default (SamplingParams), not OpenAI's 1.0, so that a client,
    # `lamina generate` and `LLM.generate` sample alike (vLLM fills in the model's defaults too).
    model: str
    temperature: float = Field(DEFAULTS.temperature, ge=0, le=2)
    top_p: float = Field(DEFAULTS.top_p, gt=0, le=1)
    top_k: int = Field(DEFAULTS.top_k, ge=0)   # not OpenAI's; vLLM's and llama.cpp's (0: all)
    max_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = Field(None, validate_default=True)
    seed: int | None = Field(None, ge=SEED_RANGE[0], le=SEED_RANGE[1])   # what torch takes
    stream: bool = False
    stream_options: StreamOptions | None = None
    # Not implemented yet: accepted only as their no-op values (see `_unsupported`).
    n: Any = None
    best_of: Any = None
    logprobs: Any = None
    top_logprobs: Any = None
    frequency_penalty: Any = None
    presence_penalty: Any = None
    logit_bias: Any = None
    response_format: Any = None
    tools: Any = None
    tool_choice: Any = None
    functions: Any = None
    function_call: Any = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, v):
        stops = [v] if isinstance(v, str) else (v or [])
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences")
        return tuple(s for s in stops if s)

    @field_validator("n", "best_of", "logprobs", "top_logprobs", "frequency_penalty", "presence_penalty",
                     "logit_bias", "response_format", "tools", "tool_choice", "functions", "function_call")
    @classmethod
    def _unsupported(cls, v, info):
        if not is_no_op(info.field_name, v):
            raise ValueError(unsupported(info.field_name))
        return v


# Parameters lamina does not implement yet, with the values that ask for nothing (besides null).
UNSUPPORTED = {"n": "1", "best_of": "1", "logprobs": "false or 0", "top_logprobs": "0",
               "frequency_penalty": "0", "presence_penalty": "0", "logit_bias": "{}",
               "response_format": '{"type": "text"}', "tools": "[]", "tool_choice": '"none" or "auto"',
               "functions": "[]", "function_call": '"none" or "auto"', "echo": "false", "suffix": '""'}


def unsupported(name: str) -> str:
    return f"not supported yet; leave it out or set it to {UNSUPPORTED[name]}"


def is_no_op(name: str, v: Any) -> bool:
    """Whether a value of an unsupported parameter asks for nothing lamina does not do."""
    if v is None:
        return True
    if isinstance(v, bool):            # JSON true/false: not a number, whatever Python says
        return v is False and name in ("logprobs", "echo")
    if name in ("n", "best_of"):
        return type(v) is int and v == 1
    if name in ("frequency_penalty", "presence_penalty", "top_logprobs"):
        return type(v) in (int, float) and v == 0
    if name == "logprobs":             # chat: a boolean; completions: how many (0: none)
        return type(v) is int and v == 0
    if name == "response_format":
        return v == {"type": "text"}
    if name in ("tool_choice", "function_call"):
        return v in ("none", "auto")   # without tools, both mean: answer in text
    return v in ({}, [], "")           # logit_bias, tools, functions, suffix: empty


class TextPart(_Body):
    type: Literal["text"]
    text: str


class Message(_Body):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None

    def plain(self) -> dict:
        """The message as lamina's chat renderer takes it (developer is the newer system)."""
        content = self.content if isinstance(self.content, str) else \
            "".join(p.text for p in self.content or [])
        return {"role": "system" if self.role == "developer" else self.role, "content": content}


class ChatBody(SamplingBody):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)

    @property
    def limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionBody(SamplingBody):
    prompt: str | list[str] | list[int]
    echo: Any = None
    suffix: Any = None
    max_tokens: int | None = Field(16, ge=1)   # the completions API's default is 16

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, v):
        if isinstance(v, list) and v and isinstance(v[0], str):
            if len(v) != 1:
                raise ValueError("one prompt per request (n=1)")
            return v[0]
        if isinstance(v, list) and not v:
            raise ValueError("the prompt is empty")
        return v

    @field_validator("echo", "suffix")
    @classmethod
    def _plain(cls, v, info):
        if not is_no_op(info.field_name, v):
            raise ValueError(unsupported(info.field_name))
        return v

    @property
    def limit(self) -> int | None:
        return self.max_tokens


def validation_message(errors: list[dict]) -> tuple[str, str | None]:
    """One line for the first pydantic error, and the parameter it concerns."""
    e = errors[0]
    loc = [str(x) for x in e.get("loc", ()) if x != "body"]
    if e.get("type") == "json_invalid":
        return f"the request body is not valid JSON: {e.get('ctx', {}).get('error', e['msg'])}", None
    if e.get("type") in ("model_attributes_type", "model_type", "dict_type") and not loc:
        return "the request body must be a JSON object", None
    if not loc:
        return e["msg"].removeprefix("Value error, "), None
    msg = e["msg"].removeprefix("Value error, ")
    # A union of types reports one error per member; name the field once.
    return f"{'.'.join(loc)}: {msg}", loc[0]


class Reply:
    """Ids, clock and model name shared by the response and every chunk of one request."""

    def __init__(self, model: str, chat: bool):
        self.model, self.chat = model, chat
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())

    def _head(self, obj: str) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model,
                "system_fingerprint": "lamina"}

    def full(self, text: str, finish_reason: str, usage: dict) -> dict:
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text},
                      "logprobs": None, "finish_reason": finish_reason}
            return {**self._head("chat.completion"), "choices": [choice], "usage": usage}
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
        return {**self._head("text_completion"), "choices": [choice], "usage": usage}

    def chunk(self, text: str | None, finish_reason: str | None = None, *, first: bool = False) -> dict:
        if self.chat:
            delta = {"role": "assistant", "content": ""} if first else \
                ({} if text is None else {"content": text})
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            return {**self._head("chat.completion.chunk"), "choices": [choice]}
        choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
        return {**self._head("text_completion"), "choices": [choice]}

    def usage_chunk(self, usage: dict) -> dict:
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        return {**self._head(obj), "choices": [], "usage": usage}


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def check_model(name: str, served: str) -> None:
    if name != served:
        raise APIError(404, f"the model {name!r} does not exist; this server serves {served!r}",
                       param="model", code="model_not_found")
