"""Serving one completion request: turn the body into prompt tokens (chat messages through
lamina's sandboxed chat format, so control-token text stays text), check it against the server's
caps, hand its choices (each prompt of a batch, `n` times) to the batcher, and answer as one JSON
body or as server-sent events, with log-probabilities where asked. The client going away,
mid-stream or while waiting for a whole answer, cancels every choice in the engine."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from ..errors import LaminaError
from ..tokenizer import Tokenizer, render_chat
from .batcher import Batcher, Draining, Output, QueueFull
from .batcher import Request as EngineRequest
from . import tools
from .grammar import Constraint, GrammarError, check_grammar, json_schema_grammar
from .metrics import Metrics
from .protocol import APIError, ChatBody, CompletionBody, Message, Reply, SamplingBody, model_index, usage
from .sampling import SEED_RANGE, TokenLogprob

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
CHARS_PER_TOKEN_LIMIT = 64   # text this many times longer than the token cap is refused untokenized


class Bridge:
    """Carries the outputs of a request's choices from the engine thread to its asyncio handler."""

    def __init__(self):
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[tuple[int, Output]] = asyncio.Queue()

    def put(self, index: int, out: Output) -> None:   # engine thread
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, (index, out))
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
    max_n: int = 16           # most choices per prompt
    max_choices: int = 64     # most choices per request (prompts x n)


@dataclass(eq=False)
class Choice:
    """One choice of an answer, as the engine runs it."""
    index: int
    request: EngineRequest
    echo: str = ""                       # text said before the completion (the prompt, with echo)
    logprobs: bool = False               # whether the answer reports log-probabilities
    hidden: tuple[int, ...] = ()         # tokens whose log-probs are not reported (chat: the end of turn)
    tools: list[dict] | None = None      # the request's tools, when its reply may call them
    pieces: list[str] = field(default_factory=list)
    entries: list[TokenLogprob] = field(default_factory=list)
    offset: int = 0                      # characters of this choice's text sent so far
    last: Output | None = None           # the finishing output

    def take(self, out: Output) -> tuple[str, list[TokenLogprob]]:
        """The text and log-prob entries an output adds to this choice (the echo with the first)."""
        text = out.text
        if self.echo and not self.pieces:
            text = self.echo + text
        entries = [e for e in [*(out.prompt_logprobs or []), *out.logprobs] if e.token not in self.hidden] \
            if self.logprobs else []
        self.pieces.append(text)
        self.entries += entries
        if out.finish_reason is not None:
            self.last = out
        return text, entries


def choice_seed(seed: int | None, i: int) -> int | None:
    """Choice i's seed: the request's for the first, the next ones (wrapping) for the others, so
    that a seeded request with n > 1 gives n different answers, the same every time."""
    if seed is None or i == 0:
        return seed
    lo, hi = SEED_RANGE
    return (seed + i - lo) % (hi - lo + 1) + lo


class Completions:
    def __init__(self, batcher: Batcher, tokenizer: Tokenizer, metrics: Metrics, models: dict[str, int],
                 limits: Limits):
        """`models`: the names clients may send as `model`, each with its adapter (0: the base)."""
        self.batcher, self.tok, self.metrics = batcher, tokenizer, metrics
        self.models, self.limits = models, limits

    def check_model(self, name: str) -> int:
        return model_index(name, self.models)

    # -- prompts ----------------------------------------------------------------------------
    def chat_prompt(self, body: ChatBody) -> list[int]:
        return self.chat_prompt_of(body.messages, body.tool_dicts() if body.tool_mode else None)

    def chat_prompt_of(self, messages: list[Message], tool_list: list[dict] | None = None) -> list[int]:
        messages = tools.render([m.plain() for m in messages], tool_list)
        self.check_chars(sum(len(m["content"]) for m in messages), "messages")
        try:
            return render_chat(self.tok, messages)
        except LaminaError as e:
            raise APIError(400, str(e), param="messages") from None

    def completion_prompts(self, body: CompletionBody) -> tuple[list[list[int]], list[str]]:
        """Each prompt of the batch as token ids, and as the text echo gives back."""
        texts = [p for p in body.prompts if isinstance(p, str)]
        self.check_chars(sum(map(len, texts)), "prompt")
        prompts, echoes, vocab = [], [], self.batcher.model.config.vocab_size
        for p in body.prompts:
            if isinstance(p, str):
                ids = self.tok.encode(p)
            else:
                ids = p
                if any(not 0 <= t < vocab for t in ids):
                    raise APIError(400, f"prompt token ids must be in [0, {vocab})", param="prompt")
            if not ids:
                raise APIError(400, "the prompt is empty", param="prompt")
            prompts.append(ids)
            echoes.append((p if isinstance(p, str) else self.tok.decode(ids)) if body.echo else "")
        return prompts, echoes

    def check_chars(self, n: int, param: str) -> None:
        if n > CHARS_PER_TOKEN_LIMIT * self.limits.max_prompt:   # do not tokenize megabytes
            raise APIError(400, f"the {param} are far longer than the {self.limits.max_prompt}-token "
                           "limit", param=param, code="context_length_exceeded")

    # -- the engine -------------------------------------------------------------------------
    def admit(self, body: SamplingBody, prompts: list[list[int]], echoes: list[str], param: str
              ) -> tuple[list[Choice], Bridge]:
        """Check the request against the caps and hand each of its choices to the batcher."""
        lim = self.limits
        if body.n > lim.max_n:
            raise APIError(400, f"n is {body.n}; this server allows at most {lim.max_n}", param="n")
        if len(prompts) * body.n > lim.max_choices:
            raise APIError(400, f"{len(prompts)} prompts x n={body.n} is {len(prompts) * body.n} choices; this "
                           f"server takes at most {lim.max_choices} in a request", param="prompt")
        if body.limit is not None and body.limit > lim.max_tokens:
            raise APIError(400, f"max_tokens is {body.limit}; this server allows at most {lim.max_tokens}",
                           param="max_tokens")
        if body.limit == 0 and not getattr(body, "echo", False):
            raise APIError(400, "max_tokens must be at least 1 (0 only with echo: the prompt alone)",
                           param="max_tokens")
        adapter = self.check_model(body.model)
        grammar = None
        mode = body.tool_mode if isinstance(body, ChatBody) else None
        if mode not in (None, "auto"):
            if body.json_schema is not None:
                raise APIError(400, "response_format and a required tool call cannot both hold the reply",
                               param="response_format")
            try:
                grammar = tools.call_grammar(body.tool_dicts(), None if mode == "required" else mode)
                check_grammar(grammar, self.tok)
            except (GrammarError, ValueError) as e:
                raise APIError(400, f"tools: a function's parameters cannot be enforced: {e}", param="tools") from None
        if body.json_schema is not None:
            try:
                grammar = json_schema_grammar(body.json_schema)
                check_grammar(grammar, self.tok)
            except GrammarError as e:
                raise APIError(400, f"response_format: {e}", param="response_format") from None
        vocab = self.batcher.model.config.vocab_size
        if any(int(k) >= vocab for k in body.logit_bias or {}):
            raise APIError(400, f"logit_bias keys must be token ids below {vocab}", param="logit_bias")
        plans = []
        for p in prompts:
            P = len(p)
            if P > lim.max_prompt:
                raise APIError(400, f"the prompt has {P} tokens; this server takes at most {lim.max_prompt}",
                               param=param, code="context_length_exceeded")
            want = body.limit if body.limit is not None else min(lim.default_max_tokens, lim.max_len - P)
            if P + want > lim.max_len:
                raise APIError(400, f"this server's maximum context length is {lim.max_len} tokens; you "
                               f"asked for {P + want} ({P} in the prompt, {want} in the completion)",
                               param="max_tokens", code="context_length_exceeded")
            plans.append(want)
        bridge, choices = Bridge(), []
        try:
            for i, (p, want, echo) in enumerate(zip(prompts, plans, echoes)):
                for j in range(body.n):
                    index = i * body.n + j
                    params = body.sampling(want, self.tok.stop_ids, choice_seed(body.seed, j))
                    request = EngineRequest(p, params, stop=body.stop, deadline=time.monotonic() + lim.timeout_s,
                                            on_output=lambda out, index=index: bridge.put(index, out),
                                            constraint=grammar and Constraint(grammar, self.tok),
                                            adapter=adapter)
                    # chat hides the end-of-turn token, as OpenAI does; the completions API reports
                    # it, as vLLM does (lm-eval's echo scoring counts on one generated entry)
                    choices.append(Choice(index, request, echo, body.token_logprobs is not None,
                                          self.tok.stop_ids if isinstance(body, ChatBody) else (),
                                          body.tool_dicts() if mode else None))
                    self.batcher.submit(request)
        except ValueError as e:   # the body's checks should have caught it; still the client's fault
            self._cancel(choices)
            raise APIError(400, str(e)) from None
        except QueueFull as e:
            self._cancel(choices)
            raise APIError(429, str(e), type="rate_limit_error", code="rate_limit_exceeded") from None
        except Draining as e:
            self._cancel(choices)
            raise APIError(503, str(e), type="server_error", code="shutting_down") from None
        except LaminaError as e:
            self._cancel(choices)
            raise APIError(400, str(e), param=param, code="context_length_exceeded") from None
        return choices, bridge

    def _cancel(self, choices: list[Choice]) -> None:
        for c in choices:
            if c.request.finish_reason is None:
                self.batcher.cancel(c.request)

    def failure(self, out: Output) -> APIError:
        if out.finish_reason == "timeout":
            return APIError(408, f"the request ran past this server's {self.limits.timeout_s:g} s limit",
                            type="timeout", code="timeout")
        return APIError(500, "the engine failed on this request", type="server_error")

    # -- answers ----------------------------------------------------------------------------
    async def respond(self, http: Request, body: SamplingBody, prompts: list[list[int]], chat: bool,
                      echoes: list[str] | None = None):
        start = time.monotonic()
        choices, bridge = self.admit(body, prompts, echoes or [""] * len(prompts), "messages" if chat else "prompt")
        reply = Reply(body.model, chat, self.tok)
        prompt_tokens = sum(map(len, prompts))
        if body.stream:
            usage_too = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(self.events(choices, bridge, reply, start, usage_too, prompt_tokens),
                                     media_type="text/event-stream", headers=SSE_HEADERS)
        return await self.whole(http, choices, bridge, reply, start, prompt_tokens)

    async def _next(self, bridge: Bridge, start: float | None) -> tuple[int, Output]:
        got = await bridge.queue.get()
        if start is not None:
            self.metrics.ttft.observe(time.monotonic() - start)
        return got

    async def pieces(self, choices: list[Choice], bridge: Bridge, start: float):
        """What the choices produce, as it comes: (choice, text, log-prob entries, output); ends
        when every choice has finished, or after the first that failed (its output says how).
        Leaving early (the client went away) cancels the choices still running."""
        by_index = {c.index: c for c in choices}
        try:
            left, first = len(choices), start
            while left:
                index, out = await self._next(bridge, first)
                first, c = None, by_index[index]
                text, entries = c.take(out)
                yield c, text, entries, out
                if out.finish_reason is not None:
                    left -= 1
                    if out.finish_reason not in ("stop", "length"):
                        return
        finally:
            self._cancel(choices)   # any still running: the client went away, or one choice failed

    async def events(self, choices: list[Choice], bridge: Bridge, reply: Reply, start: float,
                     usage_too: bool, prompt_tokens: int):
        """Server-sent events: a role chunk per choice (chat), text chunks (each naming its choice),
        a finish chunk per choice, usage if asked, `[DONE]`. An error after the stream began is
        sent as an `{"error": ...}` event."""
        stream = self.pieces(choices, bridge, start)
        try:
            if reply.chat:
                for c in choices:
                    yield sse(reply.chunk(c.index, None, first=True))
            async for c, text, entries, out in stream:
                if (text or entries) and not c.tools:          # a reply that may call tools is sent whole
                    logprobs = reply.logprobs(entries, c.offset) if c.logprobs else None
                    yield sse(reply.chunk(c.index, text, logprobs=logprobs))
                    c.offset += len(text)
                if out.finish_reason in ("stop", "length"):
                    if c.tools:
                        content, calls = tools.parse("".join(c.pieces), c.tools)
                        logprobs = reply.logprobs(c.entries) if c.logprobs else None
                        yield sse(reply.chunk(c.index, content, logprobs=logprobs, tool_calls=calls))
                        yield sse(reply.chunk(c.index, None, "tool_calls" if calls else out.finish_reason))
                        continue
                    yield sse(reply.chunk(c.index, None, out.finish_reason))
                elif out.finish_reason is not None:
                    yield sse(self.failure(out).body())
                    break
            else:
                if usage_too:
                    yield sse(reply.usage_chunk(usage(prompt_tokens, sum(c.last.completion_tokens for c in choices))))
            yield sse("[DONE]")
        finally:
            await stream.aclose()

    async def collect(self, http: Request, choices: list[Choice], bridge: Bridge, start: float) -> bool:
        """Wait for every choice to finish (each then holds its whole text), watching for the client
        leaving meanwhile: False if it left. A failed choice raises its APIError."""
        gone = asyncio.ensure_future(disconnected(http))
        stream = self.pieces(choices, bridge, start)
        try:
            while True:
                got = asyncio.ensure_future(anext(stream))
                await asyncio.wait({got, gone}, return_when=asyncio.FIRST_COMPLETED)
                if not got.done():                     # the client left: closing the stream cancels
                    got.cancel()
                    await asyncio.gather(got, return_exceptions=True)
                    return False
                try:
                    _, _, _, out = got.result()
                except StopAsyncIteration:
                    return True
                if out.finish_reason not in (None, "stop", "length"):
                    raise self.failure(out)
        finally:
            gone.cancel()
            await stream.aclose()

    async def whole(self, http: Request, choices: list[Choice], bridge: Bridge, reply: Reply, start: float,
                    prompt_tokens: int):
        """The whole answer as one body."""
        if not await self.collect(http, choices, bridge, start):
            return Response(status_code=499)
        answers = []
        for c in choices:
            text, calls = "".join(c.pieces), None
            if c.tools:
                text, calls = tools.parse(text, c.tools)
            answers.append(reply.choice(c.index, text, c.last.finish_reason,
                                        reply.logprobs(c.entries) if c.logprobs else None, calls))
        return reply.full(answers, usage(prompt_tokens, sum(c.last.completion_tokens for c in choices)))


async def disconnected(http: Request) -> None:
    """Returns when the client closes the connection (the body has been read already)."""
    while (await http.receive())["type"] != "http.disconnect":
        pass
