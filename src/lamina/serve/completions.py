"""Serving one completion request: turn the body into prompt tokens (chat messages through
lamina's sandboxed chat format, so control-token text stays text), check it against the server's
caps, hand it to the batcher, and answer as one JSON body or as server-sent events. The client
going away, mid-stream or while waiting for a whole answer, cancels the request in the engine."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass

from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from ..errors import LaminaError
from ..tokenizer import Tokenizer, render_chat
from .batcher import Batcher, Output, QueueFull
from .batcher import Request as EngineRequest
from .metrics import Metrics
from .protocol import APIError, ChatBody, CompletionBody, Reply, SamplingBody, usage
from .sampling import SamplingParams

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
CHARS_PER_TOKEN_LIMIT = 64   # text this many times longer than the token cap is refused untokenized


class Bridge:
    """Carries a request's outputs from the engine thread to its asyncio handler."""

    def __init__(self):
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[Output] = asyncio.Queue()

    def put(self, out: Output) -> None:   # engine thread
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, out)
        except RuntimeError:   # the event loop is closed: the server is shutting down
            pass


def sse(obj: dict | str) -> str:
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)}\n\n"


@dataclass
class Limits:
    max_len: int              # tokens per slot, prompt + reply
    max_prompt: int           # longest prompt taken
    max_tokens: int           # largest max_tokens taken
    default_max_tokens: int   # for a chat request that sets none
    timeout_s: float          # deadline of every request


class Completions:
    def __init__(self, batcher: Batcher, tokenizer: Tokenizer, metrics: Metrics, model_name: str,
                 limits: Limits):
        self.batcher, self.tok, self.metrics = batcher, tokenizer, metrics
        self.model_name, self.limits = model_name, limits

    # -- prompts ----------------------------------------------------------------------------
    def chat_prompt(self, body: ChatBody) -> list[int]:
        messages = [m.plain() for m in body.messages]
        self._check_chars(sum(len(m["content"]) for m in messages), "messages")
        try:
            return render_chat(self.tok, messages)
        except LaminaError as e:
            raise APIError(400, str(e), param="messages") from None

    def completion_prompt(self, body: CompletionBody) -> list[int]:
        if isinstance(body.prompt, str):
            self._check_chars(len(body.prompt), "prompt")
            prompt = self.tok.encode(body.prompt)
        else:
            prompt, vocab = body.prompt, self.batcher.model.config.vocab_size
            if any(not 0 <= t < vocab for t in prompt):
                raise APIError(400, f"prompt token ids must be in [0, {vocab})", param="prompt")
        if not prompt:
            raise APIError(400, "the prompt is empty", param="prompt")
        return prompt

    def _check_chars(self, n: int, param: str) -> None:
        if n > CHARS_PER_TOKEN_LIMIT * self.limits.max_prompt:   # do not tokenize megabytes
            raise APIError(400, f"the {param} are far longer than the {self.limits.max_prompt}-token "
                           "limit", param=param, code="context_length_exceeded")

    # -- the engine -------------------------------------------------------------------------
    def admit(self, body: SamplingBody, prompt: list[int], param: str) -> tuple[EngineRequest, Bridge]:
        """Check the request against the caps and hand it to the batcher."""
        lim, P = self.limits, len(prompt)
        if P > lim.max_prompt:
            raise APIError(400, f"the prompt has {P} tokens; this server takes at most {lim.max_prompt}",
                           param=param, code="context_length_exceeded")
        if body.limit is not None and body.limit > lim.max_tokens:
            raise APIError(400, f"max_tokens is {body.limit}; this server allows at most {lim.max_tokens}",
                           param="max_tokens")
        want = body.limit or min(lim.default_max_tokens, lim.max_len - P)
        if P + want > lim.max_len:
            raise APIError(400, f"this server's maximum context length is {lim.max_len} tokens; you "
                           f"asked for {P + want} ({P} in the prompt, {want} in the completion)",
                           param="max_tokens", code="context_length_exceeded")
        try:
            params = SamplingParams(max_new_tokens=want, temperature=body.temperature, top_p=body.top_p,
                                    top_k=body.top_k, seed=body.seed, stop_token_ids=self.tok.stop_ids)
        except ValueError as e:   # the body's checks should have caught it; still the client's fault
            raise APIError(400, str(e)) from None
        bridge = Bridge()
        request = EngineRequest(prompt, params, stop=body.stop, on_output=bridge.put,
                                deadline=time.monotonic() + lim.timeout_s)
        try:
            self.batcher.submit(request)
        except QueueFull as e:
            raise APIError(429, str(e), type="rate_limit_error", code="rate_limit_exceeded") from None
        except LaminaError as e:
            raise APIError(400, str(e), param=param, code="context_length_exceeded") from None
        return request, bridge

    def failure(self, out: Output) -> APIError:
        if out.finish_reason == "timeout":
            return APIError(408, f"the request ran past this server's {self.limits.timeout_s:g} s limit",
                            type="timeout", code="timeout")
        return APIError(500, "the engine failed on this request", type="server_error")

    # -- answers ----------------------------------------------------------------------------
    async def respond(self, http: Request, body: SamplingBody, prompt: list[int], chat: bool):
        start = time.monotonic()
        request, bridge = self.admit(body, prompt, "messages" if chat else "prompt")
        reply = Reply(self.model_name, chat)
        if body.stream:
            usage_too = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(self.events(request, bridge, reply, start, usage_too),
                                     media_type="text/event-stream", headers=SSE_HEADERS)
        return await self.whole(http, request, bridge, reply, start)

    async def _next(self, bridge: Bridge, start: float | None) -> Output:
        out = await bridge.queue.get()
        if start is not None:
            self.metrics.ttft.observe(time.monotonic() - start)
        return out

    async def events(self, request: EngineRequest, bridge: Bridge, reply: Reply, start: float,
                     usage_too: bool):
        """Server-sent events: a role chunk (chat), text chunks, a finish chunk, usage if asked,
        `[DONE]`. An error after the stream began is sent as an `{"error": ...}` event."""
        try:
            if reply.chat:
                yield sse(reply.chunk(None, first=True))
            out = await self._next(bridge, start)
            while True:
                if out.text:
                    yield sse(reply.chunk(out.text))
                if out.finish_reason is not None:
                    break
                out = await self._next(bridge, None)
            if out.finish_reason in ("stop", "length"):
                yield sse(reply.chunk(None, out.finish_reason))
                if usage_too:
                    yield sse(reply.usage_chunk(usage(out.prompt_tokens, out.completion_tokens)))
            else:
                yield sse(self.failure(out).body())
            yield sse("[DONE]")
        finally:
            if request.finish_reason is None:   # the client went away mid-stream
                self.batcher.cancel(request)

    async def whole(self, http: Request, request: EngineRequest, bridge: Bridge, reply: Reply,
                    start: float):
        """The whole answer as one body, watching for the client leaving while it waits."""
        gone = asyncio.ensure_future(disconnected(http))
        pieces, first = [], start
        try:
            while True:
                got = asyncio.ensure_future(self._next(bridge, first))
                await asyncio.wait({got, gone}, return_when=asyncio.FIRST_COMPLETED)
                if not got.done():                     # the client left: `finally` cancels
                    got.cancel()
                    return Response(status_code=499)
                out, first = got.result(), None
                pieces.append(out.text)
                if out.finish_reason is not None:
                    break
        finally:
            gone.cancel()
            if request.finish_reason is None:
                self.batcher.cancel(request)
        if out.finish_reason not in ("stop", "length"):
            raise self.failure(out)
        return reply.full("".join(pieces), out.finish_reason, usage(out.prompt_tokens, out.completion_tokens))


async def disconnected(http: Request) -> None:
    """Returns when the client closes the connection (the body has been read already)."""
    while (await http.receive())["type"] != "http.disconnect":
        pass
