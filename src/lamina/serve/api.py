"""`lamina serve`: an OpenAI-compatible HTTP API (FastAPI on uvicorn) over the continuous batcher,
with Prometheus metrics and a web chat page.

Routes: POST /v1/chat/completions and /v1/completions (streamed as server-sent events ending in
`data: [DONE]` when asked), GET /v1/models, /health, /metrics, and the chat page at /. Safe by
default: it binds 127.0.0.1; with an API key every route but /health and the page's static files
(which hold nothing and cannot be fetched with a header by a browser) needs `Authorization:
Bearer KEY`; prompts, max_tokens, concurrency and the waiting line are capped (429 when full);
every request has a deadline; a request whose client has gone is dropped at the next token; and
chat messages are rendered by lamina's sandboxed chat formats, so control-token text a user
types stays text."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import signal
import socket
import sys
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from ..errors import LaminaError
from . import anthropic
from .batcher import Batcher, BatcherConfig
from .completions import Completions, Limits
from .llm import LLM
from .metrics import Metrics, MetricsMiddleware
from .protocol import (APIError, ChatBody, CompletionBody, DetokenizeBody, TokenizeBody, error_body,
                       validation_message)

log = logging.getLogger("lamina.serve")
WEB_FILES = {"/": ("index.html", "text/html"), "/web/chat.js": ("chat.js", "text/javascript"),
             "/web/chat.css": ("chat.css", "text/css")}
OPEN_PATHS = {"/health", *WEB_FILES}   # no API key needed
ANTHROPIC_PATH = "/v1/messages"
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'",
                "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}


@dataclass(frozen=True, kw_only=True)
class ServeConfig:
    host: str = "127.0.0.1"             # address to bind; 127.0.0.1 is this machine only
    port: int = 8000                    # TCP port
    api_key: str | None = None          # required as `Authorization: Bearer KEY` when set
    model_name: str = "lamina"          # the `model` clients name
    max_prompt_tokens: int | None = None   # longest prompt accepted (None: what fits in a slot with one reply token)
    max_tokens: int | None = None       # cap on a request's max_tokens (None: what fits in a slot)
    default_max_tokens: int = 1024      # a chat request that sets no max_tokens gets at most this
    request_timeout_s: float = 600.0    # seconds after which a running request is ended
    max_body_bytes: int = 4 << 20       # larger request bodies are refused (413)
    max_n: int = 16                     # most choices per prompt (`n`)
    max_choices: int = 64               # most choices per request: prompts of a batch x n
    drain_timeout_s: float = 30.0       # on SIGTERM: seconds to finish running requests (new ones get 503)
    engine: BatcherConfig = field(default_factory=BatcherConfig)

    def __post_init__(self) -> None:
        for name in ("max_prompt_tokens", "max_tokens"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise LaminaError(f"{name.replace('_', ' ')} must be at least 1")
        if self.default_max_tokens < 1:
            raise LaminaError("default max tokens must be at least 1")
        if not 1 <= self.max_n <= self.max_choices:
            raise LaminaError(f"max n must be at least 1 and at most max choices ({self.max_choices})")
        if self.drain_timeout_s < 0:
            raise LaminaError(f"the drain timeout must not be negative, got {self.drain_timeout_s}")
        if self.request_timeout_s <= 0:
            raise LaminaError(f"the request timeout must be positive, got {self.request_timeout_s}")
        if not 0 <= self.port < 65536:
            raise LaminaError(f"port {self.port} is not a TCP port")
        if self.api_key is not None:
            check_api_key(self.api_key)


def check_api_key(key: str) -> None:
    """Refuse a key that would leave the server open or that no client could ever send."""
    where = "the API key (--api-key or LAMINA_API_KEY)"
    if not key:
        raise LaminaError(f"{where} is empty; give a real key, or set neither to serve without one")
    if not key.isascii():
        raise LaminaError(f"{where} has non-ASCII characters: HTTP clients send the Authorization "
                          "header as bytes that would never equal it, so every request would be "
                          "refused; use an ASCII key")
    if not key.isprintable() or key != key.strip():
        raise LaminaError(f"{where} has control characters or leading or trailing spaces, which "
                          "no client can send in an Authorization header; remove them")


class Gate:
    """ASGI middleware in front of everything: refuses requests without the API key and oversized
    bodies, in the OpenAI error format. The body is counted as it arrives, whatever Content-Length
    says or when there is none (`Transfer-Encoding: chunked`): reading stops at the cap."""

    def __init__(self, app, api_key: str | None, max_body_bytes: int):
        self.app, self.key, self.max_body = app, api_key, max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        length = headers.get(b"content-length", b"0")
        too_large = f"the request body is over {self.max_body} bytes"
        if not length.isdigit() or int(length) > self.max_body:
            return await self._refuse(send, 413, too_large, "request_too_large", scope)
        if self.key and scope["path"] not in OPEN_PATHS:
            given = headers.get(b"authorization", b"").decode("latin-1")
            scheme, _, token = given.partition(" ")
            if not given and b"x-api-key" in headers:          # the Anthropic SDK's header
                scheme, token = "bearer", headers[b"x-api-key"].decode("latin-1")
            elif not given:
                return await self._refuse(send, 401, "no API key given: send the header "
                                          "'Authorization: Bearer YOUR_KEY'", "invalid_api_key", scope)
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.key.encode()):
                return await self._refuse(send, 401, "incorrect API key provided", "invalid_api_key", scope)
        body = await self._read_body(receive)
        if body is None:      # the client left while sending
            return
        if len(body) > self.max_body:
            return await self._refuse(send, 413, too_large, "request_too_large", scope)
        replay = [{"type": "http.request", "body": body, "more_body": False}]

        async def received():   # the whole body once, then what the server says next (a disconnect)
            return replay.pop() if replay else await receive()
        return await self.app(scope, received, send)

    async def _read_body(self, receive) -> bytes | None:
        """The request body, read no further than one message past the cap; None if the client
        disconnected first."""
        chunks, size = [], 0
        while size <= self.max_body:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    @staticmethod
    async def _refuse(send, status: int, message: str, code: str, scope: dict):
        body = json.dumps(shaped(scope["path"], status, error_body(message, "invalid_request_error", None, code))).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if status == 401:
            headers.append((b"www-authenticate", b"Bearer"))
        if status == 413:   # close, rather than read and throw away the rest of a body of any size
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def shaped(path: str, status: int, body: dict) -> dict:
    """An OpenAI-style error body, or the same error in Anthropic's shape on its route."""
    return anthropic.error_body(status, body["error"]["message"]) if path.startswith(ANTHROPIC_PATH) else body


def add_error_handlers(app: FastAPI) -> None:
    """Every error, ours, pydantic's or Starlette's, as an OpenAI-style body (Anthropic's on its route)."""
    def answer(request: Request, status: int, body: dict) -> JSONResponse:
        return JSONResponse(shaped(request.url.path, status, body), status_code=status)

    @app.exception_handler(APIError)
    async def api_error(request: Request, e: APIError):
        return answer(request, e.status, e.body())

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError):
        message, param = validation_message(e.errors())
        return answer(request, 400, error_body(message, param=param))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code)
        message = f"no route {request.method} {request.url.path}" if e.status_code in (404, 405) else str(e.detail)
        return answer(request, e.status_code, error_body(message, code=code))

    @app.exception_handler(Exception)
    async def crashed(request: Request, e: Exception):
        log.exception("request failed")
        return answer(request, 500, error_body("internal server error", "server_error"))


def create_app(llm: LLM, config: ServeConfig = ServeConfig(), *, engine_thread: bool = True) -> FastAPI:
    """The app, over a new `Batcher` (app.state.batcher). With `engine_thread` the app warms the
    engine up and runs it on a thread of its own while it serves; without, the caller runs
    `batcher.run()` (as `run` does, on the main thread)."""
    if config.model_name in llm.adapters.names:
        raise LaminaError(f"the served model name {config.model_name!r} is also an adapter's name; rename one")
    batcher = Batcher(llm.model, llm.tokenizer, config.engine, llm.adapters)
    metrics = Metrics(batcher)
    max_len = batcher.max_len
    limits = Limits(max_len=max_len, max_prompt=min(config.max_prompt_tokens or max_len, max_len - 1),
                    max_tokens=min(config.max_tokens or max_len, max_len - 1),
                    default_max_tokens=config.default_max_tokens, timeout_s=config.request_timeout_s,
                    max_n=config.max_n, max_choices=config.max_choices)
    # the request's `model` picks the base model or one of its LoRA adapters (`--lora NAME=DIR`)
    models = {config.model_name: 0, **{name: llm.adapters.index(name) for name in llm.adapters.names}}
    completions = Completions(batcher, llm.tokenizer, metrics, models, limits)
    check_model = completions.check_model
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if not engine_thread:
            yield
            return
        if batcher.config.compile:
            await asyncio.to_thread(batcher.warmup)
        batcher.start()
        app.state.ready = True
        yield
        batcher.stop()

    app = FastAPI(title="lamina", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.batcher, app.state.metrics, app.state.config = batcher, metrics, config
    app.state.ready = False          # set once the engine is warm and running

    add_error_handlers(app)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatBody, http: Request):
        check_model(body.model)
        return await completions.respond(http, body, [completions.chat_prompt(body)], chat=True)

    @app.post("/v1/completions")
    async def text_completions(body: CompletionBody, http: Request):
        check_model(body.model)
        prompts, echoes = completions.completion_prompts(body)
        return await completions.respond(http, body, prompts, chat=False, echoes=echoes)

    messages = anthropic.Messages(completions)

    @app.post(ANTHROPIC_PATH)
    async def anthropic_messages(body: anthropic.MessagesBody, http: Request):
        check_model(body.model)
        return await messages.respond(http, body)

    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": [model_card(name) for name in models]}

    @app.get("/v1/models/{name:path}")
    async def model(name: str):
        check_model(name)
        return model_card(name)

    def model_card(name: str) -> dict:
        """The base model, or an adapter with its base as `parent` (as vLLM lists them; the
        adapter's folder stays the server's own business)."""
        return {"id": name, "object": "model", "created": created, "owned_by": "lamina", "max_model_len": max_len,
                "parent": config.model_name if models[name] else None}

    # vLLM's tokenizer endpoints: lm-eval's `local-completions` tokenizes through them, so it needs
    # no copy of the tokenizer (and the ids it scores are the server's own)
    @app.post("/tokenize")
    async def tokenize(body: TokenizeBody):
        if body.model is not None:
            check_model(body.model)
        if body.messages is not None:
            tokens = completions.chat_prompt_of(body.messages)
        else:
            completions.check_chars(len(body.prompt), "prompt")
            tokens = llm.tokenizer.encode(body.prompt, bos=None if body.add_special_tokens else False)
        return {"tokens": tokens, "count": len(tokens), "max_model_len": max_len}

    @app.post("/detokenize")
    async def detokenize(body: DetokenizeBody):
        if body.model is not None:
            check_model(body.model)
        vocab = llm.model.config.vocab_size
        if any(not 0 <= t < vocab for t in body.tokens):
            raise APIError(400, f"token ids must be in [0, {vocab})", param="tokens")
        return {"prompt": llm.tokenizer.decode(body.tokens)}

    @app.get("/tokenizer_info")
    async def tokenizer_info():
        tok = llm.tokenizer
        return {"tokenizer_class": "lamina", "bos_token": tok.bos_token, "eos_token": tok.eos_token,
                "pad_token": None, "chat_template": tok.chat_template, "model_max_length": max_len,
                "vocab_size": tok.vocab_size}

    @app.get("/health")
    async def health():
        """Readiness for a load balancer: 200 once the model is loaded and the engine warm and
        running; 503 while it warms up, and while it drains on its way out."""
        if batcher.draining:
            return JSONResponse({"status": "draining"}, status_code=503)
        if not app.state.ready:
            return JSONResponse({"status": "starting"}, status_code=503)
        return {"status": "ok"}

    @app.get("/metrics")
    async def prometheus():
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    for path, (name, media) in WEB_FILES.items():
        app.add_api_route(path, page(name, media), methods=["GET"], include_in_schema=False)

    app.add_middleware(Gate, api_key=config.api_key, max_body_bytes=config.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)   # outermost: counts refusals too
    return app


def page(name: str, media: str):
    """A route returning one file of the chat page, shipped inside the package (lamina/serve/web)."""
    body = resources.files("lamina.serve").joinpath("web", name).read_bytes()

    async def route():
        return Response(body, media_type=media, headers=PAGE_HEADERS)
    return route


def listen(host: str, port: int) -> socket.socket:
    """A bound socket for the server, or one clear error (port taken, address not here)."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as e:
        raise LaminaError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    return sock


def run(llm: LLM, config: ServeConfig, sock: socket.socket | None = None) -> None:
    """Serve until interrupted (Ctrl-C or SIGTERM), on `sock` if given (see `listen`).

    The engine computes on this thread, the one that loaded the model, and uvicorn serves HTTP on
    another: PyTorch's CPU kernels are twice as fast on the thread whose OpenMP team already exists
    (see `Batcher.run`)."""
    import uvicorn
    sock = sock or listen(config.host, config.port)
    app = create_app(llm, config, engine_thread=False)
    batcher: Batcher = app.state.batcher
    if batcher.config.compile:
        print("lamina: compiling the decode step (a minute or two the first time, then cached: seconds) ...",
              file=sys.stderr, flush=True)
        batcher.warmup()
    app.state.ready = True
    server = uvicorn.Server(uvicorn.Config(app, host=config.host, port=config.port, log_level="info",
                                           timeout_graceful_shutdown=5))

    def http() -> None:
        try:
            server.run(sockets=[sock])
        finally:
            batcher.stop()   # the server is gone (stopped, or failed to start): so is the engine

    def on_term(signum, frame) -> None:
        # graceful: take no new requests (503, /health too), finish the running ones within the
        # drain timeout, then stop; `batcher.run` returns and the HTTP server is told to exit
        print(f"lamina: SIGTERM: finishing the running requests (at most {config.drain_timeout_s:g} s), "
              "taking no new ones", file=sys.stderr, flush=True)
        batcher.drain(config.drain_timeout_s)

    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, on_term) if main else None
    thread = threading.Thread(target=http, name="lamina-http", daemon=True)
    host = f"[{config.host}]" if ":" in config.host else config.host
    print(f"lamina: serving {config.model_name} at http://{host}:{sock.getsockname()[1]} "
          "(OpenAI API under /v1, web chat at /); Ctrl-C stops", file=sys.stderr, flush=True)
    thread.start()
    try:
        batcher.run()
    except KeyboardInterrupt:   # Ctrl-C: a normal end
        pass
    finally:
        server.should_exit = True
        batcher.stop()
        thread.join()
        if main:
            signal.signal(signal.SIGTERM, previous)
