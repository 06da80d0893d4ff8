"""The OpenAI wire format that `lamina serve` speaks: request bodies as validated pydantic models,
and response, stream-chunk and error bodies as plain dicts, shaped as in OpenAI's API reference
(https://platform.openai.com/docs/api-reference/chat, .../completions, error codes in
.../docs/guides/error-codes). Only what lamina implements is accepted: a field that would change
the result and is not supported (tools, a JSON response format, best_of, suffix) is refused with
a message that names it, never silently ignored; left out, null or set to its no-op value
({} or [], "none") it is accepted."""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .sampling import MAX_LOGPROBS, SEED_RANGE, SamplingParams, TokenLogprob

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
    n: int = Field(1, ge=1)                     # choices per prompt; the server caps it (ServeConfig.max_n)
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None   # token id (as a string) -> -100..100 added to its logit
    min_tokens: int = Field(0, ge=0)            # not OpenAI's; vLLM's: no stop token before this many
    response_format: dict | None = None         # {"type": "text" | "json_object" | "json_schema", ...}
    # Not implemented yet: accepted only as their no-op values (see `_unsupported`).
    best_of: Any = None
    functions: Any = None
    function_call: Any = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, v):
        stops = [v] if isinstance(v, str) else (v or [])
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences")
        return tuple(s for s in stops if s)

    @field_validator("logit_bias")
    @classmethod
    def _bias(cls, v):
        for key, value in (v or {}).items():
            if not key.isdigit():
                raise ValueError(f"keys must be token ids, got {key!r}")
            if not -100 <= value <= 100:
                raise ValueError(f"values must be in [-100, 100], got {value} for token {key}")
        return v

    @field_validator("response_format")
    @classmethod
    def _format(cls, v):
        kind = (v or {}).get("type", "text")
        if kind == "json_schema":
            spec = v.get("json_schema")
            if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
                raise ValueError('json_schema needs {"json_schema": {"name": ..., "schema": {...}}}')
        elif kind not in ("text", "json_object"):
            raise ValueError(f"type must be text, json_object or json_schema, not {kind!r}")
        return v

    @property
    def json_schema(self) -> dict | None:
        """The JSON schema the reply must validate against (json_object: any object), or None."""
        kind = (self.response_format or {}).get("type", "text")
        if kind == "json_object":
            return {"type": "object"}
        return self.response_format["json_schema"]["schema"] if kind == "json_schema" else None

    @field_validator("best_of", "functions", "function_call")
    @classmethod
    def _unsupported(cls, v, info):
        if not is_no_op(info.field_name, v):
            raise ValueError(unsupported(info.field_name))
        return v

    def sampling(self, max_new_tokens: int, stop_token_ids: tuple[int, ...], seed: int | None) -> SamplingParams:
        """The engine's parameters for one choice of this request."""
        return SamplingParams(max_new_tokens=max_new_tokens, temperature=self.temperature, top_p=self.top_p,
                              top_k=self.top_k, seed=seed, stop_token_ids=stop_token_ids,
                              presence_penalty=self.presence_penalty, frequency_penalty=self.frequency_penalty,
                              logit_bias=tuple((int(k), v) for k, v in (self.logit_bias or {}).items()),
                              min_tokens=self.min_tokens, logprobs=self.token_logprobs,
                              prompt_logprobs=self.prompt_logprobs)

    @property
    def token_logprobs(self) -> int | None:
        """Alternatives reported per generated token (None: no log-probs)."""
        return None

    @property
    def prompt_logprobs(self) -> int | None:
        """Alternatives reported per prompt token (None: no prompt log-probs)."""
        return None


# Parameters lamina does not implement yet, with the values that ask for nothing (besides null).
UNSUPPORTED = {"best_of": "1", "functions": "[] (use tools)", "function_call": '"none" or "auto" (use tool_choice)',
               "suffix": '""'}


def unsupported(name: str) -> str:
    return f"not supported yet; leave it out or set it to {UNSUPPORTED[name]}"


def is_no_op(name: str, v: Any) -> bool:
    """Whether a value of an unsupported parameter asks for nothing lamina does not do."""
    if v is None:
        return True
    if isinstance(v, bool):            # JSON true/false: not a number, whatever Python says
        return False
    if name == "best_of":
        return type(v) is int and v == 1
    if name == "response_format":
        return v == {"type": "text"}
    if name in ("tool_choice", "function_call"):
        return v in ("none", "auto")   # without tools, both mean: answer in text
    return v in ({}, [], "")           # logit_bias, tools, functions, suffix: empty


class TextPart(_Body):
    type: Literal["text"]
    text: str


class FunctionCall(_Body):
    name: str
    arguments: str = "{}"          # a JSON object, as a string (OpenAI's shape)


class ToolCall(_Body):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    tool_calls: list[ToolCall] | None = None      # an assistant's earlier calls
    tool_call_id: str | None = None               # a tool's result answers this call

    def plain(self) -> dict:
        """The message as lamina's chat renderer takes it (developer is the newer system), with
        an assistant's calls (`lamina.serve.tools.render` makes them text)."""
        content = self.content if isinstance(self.content, str) else \
            "".join(p.text for p in self.content or [])
        out = {"role": "system" if self.role == "developer" else self.role, "content": content}
        if self.tool_calls:
            out["tool_calls"] = [c.model_dump() for c in self.tool_calls]
        return out


class Function(_Body):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str = ""
    parameters: dict | None = None                # a JSON schema of its arguments


class Tool(_Body):
    type: Literal["function"]
    function: Function


class ChatBody(SamplingBody):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)

    @field_validator("top_logprobs")
    @classmethod
    def _needs_logprobs(cls, v, info):
        if v and not info.data.get("logprobs"):
            raise ValueError("needs logprobs: true")
        return v

    @property
    def token_logprobs(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    @field_validator("tool_choice")
    @classmethod
    def _choice(cls, v, info):
        tools = info.data.get("tools") or []
        if isinstance(v, dict):
            name = (v.get("function") or {}).get("name") if v.get("type") == "function" else None
            if name is None:
                raise ValueError('a named choice is {"type": "function", "function": {"name": ...}}')
            if name not in {t.function.name for t in tools}:
                raise ValueError(f"names {name!r}, which is not one of the tools")
        elif v == "required" and not tools:
            raise ValueError("required needs tools")
        return v

    @property
    def tool_mode(self) -> str | None:
        """None (no tools, or "none"), "auto", "required", or the name of the one function to call."""
        if not self.tools or self.tool_choice == "none":
            return None
        if isinstance(self.tool_choice, dict):
            return self.tool_choice["function"]["name"]
        return self.tool_choice or "auto"

    def tool_dicts(self) -> list[dict]:
        return [t.model_dump(exclude_none=True) for t in self.tools or []]

    @property
    def limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionBody(SamplingBody):
    prompt: str | list[str] | list[int] | list[list[int]]   # one prompt or a batch, as text or token ids
    echo: bool = False                          # the prompt comes back before the completion (and its log-probs)
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    suffix: Any = None
    max_tokens: int | None = Field(16, ge=0)   # the completions API's default is 16; 0 only with echo

    @field_validator("prompt")
    @classmethod
    def _prompts(cls, v):
        if isinstance(v, list) and not v:
            raise ValueError("the prompt is empty")
        return v

    @field_validator("suffix")
    @classmethod
    def _plain(cls, v, info):
        if not is_no_op(info.field_name, v):
            raise ValueError(unsupported(info.field_name))
        return v

    @property
    def prompts(self) -> list[str | list[int]]:
        """The batch of prompts (a single prompt is a batch of one)."""
        v = self.prompt
        return [v] if isinstance(v, str) or isinstance(v[0], int) else list(v)

    @property
    def token_logprobs(self) -> int | None:
        return self.logprobs

    @property
    def prompt_logprobs(self) -> int | None:
        return self.logprobs if self.echo else None

    @property
    def limit(self) -> int | None:
        return self.max_tokens


class TokenizeBody(_Body):
    """vLLM's /tokenize: a prompt, or chat messages rendered with the model's template."""
    model: str | None = None
    prompt: str | None = None
    messages: list[Message] | None = None
    add_special_tokens: bool = True      # a prompt: with the tokenizer's BOS, if it adds one

    @field_validator("messages")
    @classmethod
    def _one_of(cls, v, info):
        if (v is None) == (info.data.get("prompt") is None):
            raise ValueError("give a prompt or messages, not both")
        return v


class DetokenizeBody(_Body):
    model: str | None = None
    tokens: list[int]


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
    """Ids, clock and model name shared by the response and every chunk of one request, and the
    OpenAI shapes of its choices and their log-probabilities."""

    def __init__(self, model: str, chat: bool, tokenizer=None):
        self.model, self.chat, self.tok = model, chat, tokenizer
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self._pieces: dict[int, tuple[str, list[int]]] = {}

    def _head(self, obj: str) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model,
                "system_fingerprint": "lamina"}

    def _piece(self, token: int) -> tuple[str, list[int]]:
        """A token as text (bytes that are part of a character show as U+FFFD) and as its bytes."""
        if token not in self._pieces:
            raw = self.tok.piece(token)
            self._pieces[token] = (raw.decode("utf-8", errors="replace"), list(raw))
        return self._pieces[token]

    def logprobs(self, entries: list[TokenLogprob], offset: int = 0) -> dict:
        """OpenAI's `logprobs` of a choice or chunk: chat's `content` list (token, logprob, bytes,
        top_logprobs), or the completions API's parallel lists (tokens, token_logprobs,
        top_logprobs, text_offset from `offset`); a prompt's first token has no log-probability."""
        if self.chat:
            def one(token: int, logprob: float) -> dict:
                text, raw = self._piece(token)
                return {"token": text, "logprob": logprob, "bytes": raw}
            return {"content": [one(e.token, e.logprob) | {"top_logprobs": [one(t, lp) for t, lp in e.top]}
                                for e in entries], "refusal": None}
        tokens, logprobs, tops, offsets = [], [], [], []
        for e in entries:
            text = self._piece(e.token)[0]
            tokens.append(text)
            logprobs.append(e.logprob)
            tops.append(None if e.logprob is None else {self._piece(t)[0]: lp for t, lp in e.top})
            offsets.append(offset)
            offset += len(text)
        return {"tokens": tokens, "token_logprobs": logprobs, "top_logprobs": tops, "text_offset": offsets}

    def choice(self, index: int, text: str | None, finish_reason: str, logprobs: dict | None = None,
               tool_calls: list[dict] | None = None) -> dict:
        if self.chat:
            message = {"role": "assistant", "content": text} | ({"tool_calls": tool_calls} if tool_calls else {})
            return {"index": index, "message": message, "logprobs": logprobs,
                    "finish_reason": "tool_calls" if tool_calls else finish_reason}
        return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}

    def full(self, choices: list[dict], usage: dict) -> dict:
        obj = "chat.completion" if self.chat else "text_completion"
        return {**self._head(obj), "choices": sorted(choices, key=lambda c: c["index"]), "usage": usage}

    def chunk(self, index: int, text: str | None, finish_reason: str | None = None, *, first: bool = False,
              logprobs: dict | None = None, tool_calls: list[dict] | None = None) -> dict:
        if self.chat:
            delta = {"role": "assistant", "content": ""} if first else \
                ({} if text is None else {"content": text})
            if tool_calls:
                delta["tool_calls"] = [{"index": k, **c} for k, c in enumerate(tool_calls)]
            choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
            return {**self._head("chat.completion.chunk"), "choices": [choice]}
        choice = {"index": index, "text": text or "", "logprobs": logprobs, "finish_reason": finish_reason}
        return {**self._head("text_completion"), "choices": [choice]}

    def usage_chunk(self, usage: dict) -> dict:
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        return {**self._head(obj), "choices": [], "usage": usage}


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def model_index(name: str, models: dict[str, int]) -> int:
    """The adapter serving the model a request names (0: the base model); OpenAI's 404 naming
    `model` for one this server does not serve."""
    if name not in models:
        raise APIError(404, f"the model {name[:100]!r} does not exist; this server serves "
                       f"{', '.join(map(repr, models))}", param="model", code="model_not_found")
    return models[name]
