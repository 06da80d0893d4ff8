"""Continuous batching: requests join and leave the running batch at token boundaries.

Each running request holds one slot of a `SlotCache`. A step of the `Batcher` (1) drops requests
whose client is gone or whose deadline passed, (2) prefills waiting requests into free slots,
(3) decodes one token for every running request in one batched forward, each row at its own
position, and (4) retires finished requests, moving the last slots into the holes so that the
running requests always sit in slots 0..n-1 and a decode step reads a prefix of the cache. The
compiled decode batch is one row or all slots (padded), and the attended cache length is rounded
up to a block, so a compiled graph is reused across steps.

Every request keeps its own sampling parameters, random generator (a seed gives the same tokens
alone or in a batch), stop tokens and stop strings. Greedy output equals the same prompt run
alone up to float rounding: a row's logits do not depend on the other rows, but a batched matmul
may sum in another order (differences of about 1e-5 in fp32 logits), which can only change a
token where the two best logits tie that closely.

A failure is kept to the requests it concerns: an error while starting, sampling, checking or
decoding the text of one request ends that request alone with finish reason "error"; one while
prefilling a group ends that group; only a failed batched decode step ends every running request.
Every request taken off the queue is answered."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Callable

import torch
from torch import Tensor

from ..errors import LaminaError
from ..model import Transformer
from ..model.kv_cache import SlotCache
from ..tokenizer import Tokenizer
from .adapters import Adapters
from .engine import CACHE_BLOCK, compile_decode_step, compile_mode
from .grammar import Constraint
from .prefix import PrefixCache
from .sampling import SamplingParams, TokenLogprob, logprobs_of, next_token
from .text import StopMatcher, TextStream

log = logging.getLogger("lamina.serve")
PREFILL_TOKENS = 4096   # most (padded) prompt tokens prefilled in one forward
PROMPT_LOGPROB_ROWS = 256   # prompt positions whose (rows, vocab) logits are held at once


@dataclass(frozen=True, kw_only=True)
class BatcherConfig:
    max_slots: int = 8            # requests decoded together; each holds one KV-cache slot
    max_len: int | None = None    # tokens per slot, prompt + reply (None: the model's context, within the budget)
    kv_cache_mb: float = 1024.0   # memory budget for the keys and values of all slots
    max_queue: int = 64           # requests waiting for a slot; more are refused
    compile: bool | str | None = None   # torch.compile the decode step: on/True, off/False; None: $LAMINA_COMPILE, else on
    prefix_cache_mb: float = 256.0   # keys and values of recent prompts, for requests that begin alike (0: off)
    prefill_chunk: int = 512      # a longer prompt is prefilled this many tokens a step, between decode steps (0: whole)

    def __post_init__(self) -> None:
        if self.max_slots < 1:
            raise LaminaError(f"max concurrency must be at least 1, got {self.max_slots}")
        if self.max_len is not None and self.max_len < 2:
            raise LaminaError(f"max length must be at least 2 tokens, got {self.max_len}")
        if self.kv_cache_mb <= 0:
            raise LaminaError(f"the KV-cache budget must be positive, got {self.kv_cache_mb} MB")
        if self.max_queue < 0:
            raise LaminaError(f"max queue must be >= 0, got {self.max_queue}")
        compile_mode(self.compile)        # a wrong value said now
        if self.prefill_chunk < 0:
            raise LaminaError(f"the prefill chunk must be >= 0 tokens, got {self.prefill_chunk}")
        if self.prefix_cache_mb < 0:
            raise LaminaError(f"the prefix-cache budget must be >= 0, got {self.prefix_cache_mb} MB")


def slot_length(config: BatcherConfig, context: int, bytes_per_token: int) -> int:
    """Tokens per slot: as asked (or the model's context), at most what the budget holds."""
    fits = int(config.kv_cache_mb * 2**20) // (bytes_per_token * config.max_slots)
    want = min(config.max_len or context, context)
    if config.max_len is not None and config.max_len > fits:
        raise LaminaError(f"{config.max_slots} slots of {config.max_len} tokens need "
                          f"{config.max_slots * config.max_len * bytes_per_token / 2**20:.0f} MB of "
                          f"KV cache, over the {config.kv_cache_mb:g} MB budget; raise the budget "
                          "or lower the max length or concurrency")
    if fits < 2:
        raise LaminaError(f"a {config.kv_cache_mb:g} MB KV-cache budget does not hold "
                          f"{config.max_slots} slots; raise it")
    return min(want, fits)


class QueueFull(LaminaError):
    """Every slot is busy and the waiting line is full: try again later (HTTP 429)."""


class Draining(LaminaError):
    """The server is shutting down: it finishes the requests it has and takes no more (HTTP 503)."""


@dataclass
class Output:
    """What a request produced since its last output; `finish_reason` is set on the last one:
    "stop" (stop token or string), "length" (max tokens or slot full), "abort" (cancelled),
    "timeout" (deadline passed) or "error"."""
    text: str
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    stop_sequence: str | None = None    # on the last output: the stop string that ended the reply, if one did
    logprobs: list[TokenLogprob] = field(default_factory=list)   # of the tokens since the last output (if asked)
    prompt_logprobs: list[TokenLogprob] | None = None     # on the first output (if asked)


_ids = itertools.count()


@dataclass(eq=False)
class Request:
    prompt: list[int]
    params: SamplingParams
    stop: tuple[str, ...] = ()
    deadline: float | None = None                          # time.monotonic() to give up at
    constraint: Constraint | None = None                   # a grammar the reply must follow (structured output)
    adapter: int = 0                                       # the LoRA adapter computing it (0: the base model)
    on_output: Callable[[Output], None] = lambda out: None  # called on the engine's thread
    id: int = field(default_factory=lambda: next(_ids))
    cancelled: bool = False
    tokens: list[int] = field(default_factory=list)       # generated, stop token excluded
    finish_reason: str | None = None
    # engine state
    slot: int = -1
    prefilled: int = 0                                    # prompt positions in its slot, while prefilled in chunks
    generator: torch.Generator | None = None
    seen: Tensor | None = None
    counts: Tensor | None = None                          # (1, V) times each token was generated
    text: TextStream | None = None
    matcher: StopMatcher | None = None
    pending: list[TokenLogprob] = field(default_factory=list)   # log-probs not yet in an output
    prompt_logprobs: list[TokenLogprob] | None = None

    @property
    def length(self) -> int:
        """Tokens of this sequence so far (prompt + generated)."""
        return len(self.prompt) + len(self.tokens)


def prefill_groups(rows: list[Request], budget: int = PREFILL_TOKENS) -> list[list[Request]]:
    """Consecutive runs of joining requests whose padded batch stays within `budget` tokens."""
    groups: list[list[Request]] = []
    for r in rows:
        g = groups[-1] if groups else None
        if g and (len(g) + 1) * max(len(r.prompt), *(len(x.prompt) for x in g)) <= budget:
            g.append(r)
        else:
            groups.append([r])
    return groups


def _key(r: Request) -> tuple[int, tuple[int, ...]]:
    """What decides a prompt's cache: its adapter and its tokens."""
    return r.adapter, tuple(r.prompt)


def bucket(n: int, slots: int, compiled: bool) -> int:
    """Rows of the decode batch for n running requests. Compiled, every shape costs a compilation
    (tens of seconds on 2 cores), so there are two: one row, whose matmuls become multi-core GEMV
    kernels, or all slots, padded (decode reads every weight once a step whatever the rows, so
    padding rows cost little). Eager, exactly n."""
    return n if not compiled else 1 if n == 1 else slots


class Batcher:
    """The continuous-batching engine: `submit` requests from any thread, `start` a thread that
    runs `step` while there is work (or call `step` yourself), `cancel` a request whose client left."""

    def __init__(self, model: Transformer, tokenizer: Tokenizer, config: BatcherConfig = BatcherConfig(),
                 adapters: Adapters | None = None):
        self.adapters = adapters or Adapters(model, {})
        if len(self.adapters) and config.compile is None:
            config = replace(config, compile=False)           # adapters run eagerly unless compile was asked
        config = replace(config, compile=compile_mode(config.compile))
        self.model, self.tokenizer, self.config = model.eval(), tokenizer, config
        if config.compile and len(self.adapters):
            raise LaminaError("LoRA adapters served per request run eagerly; leave out --compile")
        dtype, device = model.tok_embeddings.weight.dtype, model.tok_embeddings.weight.device
        per_token = SlotCache.bytes_per_token(model.config, dtype)
        self.max_len = slot_length(config, model.config.max_seq_len, per_token)
        self.cache = SlotCache(model.config, config.max_slots, self.max_len, dtype, device)
        if config.compile:
            # One graph per (batch rows, cache-length block); allow them all.
            limit = 2 * -(-self.max_len // CACHE_BLOCK)
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, limit)
            torch._dynamo.config.accumulated_recompile_limit = max(
                torch._dynamo.config.accumulated_recompile_limit, 4 * limit)
        self._decode = compile_decode_step(model) if config.compile else model
        self.prefixes = PrefixCache(int(config.prefix_cache_mb * 2**20)) if config.prefix_cache_mb else None
        self.running: list[Request] = []    # running[i] holds slot i
        # A long prompt being prefilled a chunk a step, in the last slot (running ones sit below it)
        self.chunked: Request | None = None
        self.waiting: deque[Request] = deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._drain_until: float | None = None      # time.monotonic() at which a drain gives up
        self.stats = {"requests": 0, "finished": 0, "aborted": 0, "timed_out": 0, "errors": 0,
                      "prompt_tokens": 0, "generated_tokens": 0, "steps": 0}

    # -- the client side (any thread) -------------------------------------------------------
    def submit(self, request: Request) -> Request:
        if self._drain_until is not None:
            raise Draining("the server is shutting down and takes no new requests; try another replica")
        if not request.prompt:
            raise LaminaError("the prompt is empty")
        if not 0 <= request.adapter <= len(self.adapters):
            raise LaminaError(f"no LoRA adapter {request.adapter} (this engine has {len(self.adapters)})")
        if len(request.prompt) >= self.max_len:
            raise LaminaError(f"the prompt has {len(request.prompt)} tokens; at most "
                              f"{self.max_len - 1} fit (server max length {self.max_len})")
        with self._cond:
            # Up to max_slots requests run; up to max_queue more wait for a slot.
            if len(self.running) + len(self.waiting) + (self.chunked is not None) >= \
                    self.config.max_slots + self.config.max_queue:
                raise QueueFull(f"the server is at capacity ({self.config.max_slots} running, "
                                f"{len(self.waiting)} waiting); try again later")
            self.waiting.append(request)
            self.stats["requests"] += 1
            self._cond.notify()
        return request

    def cancel(self, request: Request) -> None:
        """Stop computing a request (its client is gone); it leaves at the next token boundary."""
        request.cancelled = True
        with self._cond:
            self._cond.notify()

    def drain(self, timeout: float) -> None:
        """Take no new requests; `run` returns once every request here has finished, or after
        `timeout` seconds (those still running then end as "abort"). Safe from a signal handler."""
        self._drain_until = time.monotonic() + timeout
        with self._cond:
            self._cond.notify()

    @property
    def draining(self) -> bool:
        return self._drain_until is not None

    @property
    def n_running(self) -> int:
        return len(self.running)

    @property
    def n_waiting(self) -> int:
        return len(self.waiting)

    @torch.inference_mode()
    def warmup(self) -> None:
        """Compile the decode step for every batch size the scheduler uses, at the first cache
        block, before serving (longer caches compile when first reached). Call before `start`."""
        if self.running or self._thread is not None:
            raise RuntimeError("warm up before serving")
        sizes = sorted({bucket(n, self.config.max_slots, True) for n in range(1, self.config.max_slots + 1)})
        for B in sizes:   # inputs built as a real step builds them, so the graphs' guards hold
            self._decode_batch([0] * B, [0] * B)

    def start(self) -> Batcher:
        """Run the engine on a thread of its own (see `run` for why the main thread is better)."""
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(target=self.run, name="lamina-batcher", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """End `run` (or the thread of `start`), finishing every request still here as "abort"."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
            self._thread = None

    def run(self) -> None:
        """Step on the calling thread while there is work, until `stop`.

        Compute on the thread that loaded the model if you can (`lamina serve` does: HTTP runs on a
        thread of its own). PyTorch's CPU kernels run on an OpenMP thread team per calling thread,
        and once more teams exist than cores, libgomp's workers stop spinning between parallel
        regions and sleep instead. A compiled decode step runs hundreds of short regions, and
        waking a sleeping worker for each one made decode on a second thread half as fast
        (24 against 47 tok/s for SmolLM2-135M on 2 cores)."""
        try:
            while True:
                with self._cond:
                    while not (self.waiting or self.running or self.chunked or self._stopping or self.draining):
                        self._cond.wait(timeout=1.0)   # a timeout lets Ctrl-C reach the main thread
                    if self._stopping:
                        break
                    if self.draining and (not (self.waiting or self.running or self.chunked)
                                          or time.monotonic() > self._drain_until):
                        break
                try:
                    self.step()
                except Exception:   # a batched forward failed: no running request can go on
                    log.exception("engine step failed; ending the running requests")
                    for r in self.running:
                        if r.finish_reason is None:
                            self.stats["errors"] += 1
                            self._finish(r, "error")
                    self.running = []
        finally:   # stopped, or interrupted (Ctrl-C): no client is left waiting
            with self._cond:
                left = list(self.running) + [self.chunked] * (self.chunked is not None) + list(self.waiting)
                self.running, self.waiting, self.chunked = [], deque(), None
            for r in left:
                self._finish(r, "abort")

    # -- the engine side (one thread) -------------------------------------------------------
    @torch.inference_mode()
    def step(self) -> None:
        """One token boundary: drop, admit and prefill, decode one token for all, retire."""
        now = time.monotonic()
        for r in self.running:
            self._gone(r, now)
        self._retire()
        if self.chunked is not None:
            self._gone(self.chunked, now)
            self._prefill_chunk()
        with self._cond:
            for r in [r for r in self.waiting if self._gone(r, now)]:
                self.waiting.remove(r)
            joining = []
            # A request leaves the queue only to take a slot or to be answered with an error; a
            # long prompt takes the last slot and is prefilled a chunk a step (one at a time).
            while self.waiting and len(self.running) + (self.chunked is not None) < self.config.max_slots:
                r = self.waiting[0]
                if self._long(r) and self.chunked is not None:
                    break
                self.waiting.popleft()
                if not self._start(r):
                    continue
                if self._long(r):
                    r.slot, self.chunked = self.config.max_slots - 1, r
                    continue
                r.slot = len(self.running)
                self.running.append(r)
                joining.append(r)
        if self.chunked is not None and self.chunked.prefilled == 0:
            self._prefill_chunk()
        for group in self._prefill_plan(joining):
            try:
                logits = self._prefill(group) if isinstance(group, list) else self._prefill_cached(*group)
            except Exception:
                for r in group if isinstance(group, list) else group[:1]:
                    self._fail(r, "prefilling its prompt")
                continue
            rows = group if isinstance(group, list) else [group[0]]
            self._remember(rows)
            self._advance(logits, rows)
        self._retire()
        if self.running:
            rows = self.running
            self._advance(self._decode_step(rows), rows)
            self.stats["steps"] += 1
            self._retire()

    def _gone(self, r: Request, now: float) -> bool:
        """Finish a request whose client left or whose deadline passed; True if so."""
        if r.cancelled:
            self.stats["aborted"] += 1
            self._finish(r, "abort")
        elif r.deadline is not None and now > r.deadline:
            self.stats["timed_out"] += 1
            self._finish(r, "timeout")
        return r.finish_reason is not None

    def _long(self, r: Request) -> bool:
        """Whether a request's prompt is prefilled in chunks (one asking for the prompt's
        log-probabilities is prefilled whole)."""
        chunk = self.config.prefill_chunk
        return bool(chunk) and len(r.prompt) > chunk and r.params.prompt_logprobs is None

    def _prefill_chunk(self) -> None:
        """The next chunk of the long prompt being prefilled (the first time, whatever of it the
        prefix cache holds is copied first); once the whole prompt is in, its first token is
        chosen and it joins the running requests."""
        r = self.chunked
        if r.finish_reason is not None:
            self.chunked = None
            return
        try:
            if r.prefilled == 0 and self.prefixes is not None:
                shared, kv = self.prefixes.lookup(r.adapter, r.prompt)
                if kv is not None:
                    for t, stored in zip(self.cache.k + self.cache.v, kv):
                        t[r.slot, :, :shared] = stored[:, :shared]
                    r.prefilled = shared
            end = min(r.prefilled + self.config.prefill_chunk, len(r.prompt))
            logits = self._prefill_span(r, r.prefilled, end)
            r.prefilled = end
        except Exception:
            self.chunked = None
            return self._fail(r, "prefilling its prompt")
        if end < len(r.prompt):
            return
        self.chunked, n = None, len(self.running)
        if r.slot != n:
            self.cache.move(r.slot, n, len(r.prompt))
            r.slot = n
        self.running.append(r)
        self._remember([r])
        self._advance(logits, [r])

    def _prefill_plan(self, joining: list[Request]) -> list:
        """What to prefill, in slot order: a request whose prompt begins as a recent one did, as
        (request, shared length, stored keys and values) to prefill alone from there; runs of the
        others, as groups prefilled together (`prefill_groups`)."""
        plan, run = [], []
        for r in joining:
            shared, kv = (self.prefixes.lookup(r.adapter, r.prompt)
                          if self.prefixes is not None and r.params.prompt_logprobs is None else (0, None))
            if kv is None:
                run.append(r)
                continue
            plan += prefill_groups(run) + [(r, shared, kv)]
            run = []
        return plan + prefill_groups(run)

    def _prefill_cached(self, r: Request, shared: int, kv: list[Tensor]) -> Tensor:
        """Copy the first `shared` positions of a stored prompt's keys and values into r's slot,
        and compute the rest of r's prompt over them; logits (1, V) of its last token."""
        for t, stored in zip(self.cache.k + self.cache.v, kv):
            t[r.slot, :, :shared] = stored[:, :shared]
        return self._prefill_span(r, shared, len(r.prompt))

    def _prefill_span(self, r: Request, start: int, end: int) -> Tensor:
        """Compute r's prompt positions start..end-1 into its slot, over the positions before
        (already there); logits (1, V) of position end - 1."""
        dev = self.cache.k[0].device
        positions = torch.arange(start, end, device=dev)[None]                      # (1, end - start)
        mask = torch.arange(end, device=dev)[None, None] <= positions[..., None]    # (1, end - start, end)
        self.stats["prompt_tokens"] += end - start
        with self.adapters.select([r.adapter]):
            hidden = self.model.body(torch.tensor([r.prompt[start:end]], device=dev), positions,
                                     self.cache.rows(r.slot, 1), positions, mask[:, None])
        return self.model.logits(hidden[:, -1])                                      # (1, V)

    def _remember(self, rows: list[Request]) -> None:
        """Keep the prompts just prefilled for requests that will begin alike."""
        if self.prefixes is None:
            return
        for r in rows:
            if len(r.prompt) >= self.prefixes.min_tokens:
                self.prefixes.store(r.adapter, r.prompt,
                                    [t[r.slot, :, :len(r.prompt)].clone() for t in self.cache.k + self.cache.v])

    def _prefill(self, rows: list[Request]) -> Tensor:
        """Write the prompts of requests in consecutive slots into the cache, left-padded into one
        batch; logits (k, V) of each prompt's last token, in the order of `rows`. Requests asking
        the same prompt of the same adapter (the `n` choices of one API request) share one
        prefill: the first one's slot is computed, the others copy it."""
        start, k = rows[0].slot, len(rows)
        first: dict[tuple[int, tuple[int, ...]], Request] = {}
        for r in rows:
            first.setdefault(_key(r), r)
        computed = list(first.values())
        # the computed requests take the first slots of the group, the copies the rest
        for i, r in enumerate(computed + [r for r in rows if first[_key(r)] is not r]):
            r.slot = start + i
            self.running[r.slot] = r
        u, T = len(computed), max(len(r.prompt) for r in computed)
        dev = self.cache.k[0].device
        pads = torch.tensor([T - len(r.prompt) for r in computed], device=dev)[:, None]  # (u, 1)
        tokens = torch.zeros(u, T, dtype=torch.long, device=dev)
        for i, r in enumerate(computed):
            tokens[i, T - len(r.prompt):] = torch.tensor(r.prompt, device=dev)
        at = torch.arange(T, device=dev)[None] - pads                               # (u, T), < 0 on padding
        # Padding writes the slot's last position, which no real token reaches (a request ends
        # when its length reaches max_len) and no mask covers.
        slots = torch.where(at >= 0, at, self.max_len - 1)                         # (u, T)
        key = torch.arange(T, device=dev)
        mask = (key[None, None] <= at[..., None]) | ((at[..., None] < 0) & (key == 0))  # (u, T, T)
        self.stats["prompt_tokens"] += sum(len(r.prompt) for r in computed)
        with self.adapters.select([r.adapter for r in computed]):
            hidden = self.model.body(tokens, at.clamp(min=0), self.cache.rows(start, u), slots,
                                     mask[:, None])                                 # (u, T, dim)
        logits = self.model.logits(hidden[:, -1])                                    # (u, V)
        for i, r in enumerate(computed):
            if r.params.prompt_logprobs is not None:
                r.prompt_logprobs = self._prompt_logprobs(hidden[i, T - len(r.prompt):], r)
        index = {id(r): i for i, r in enumerate(computed)}
        for r in rows:
            src = first[_key(r)]
            if src is not r:
                self.cache.move(src.slot, r.slot, len(r.prompt))
                if r.params.prompt_logprobs is not None:
                    r.prompt_logprobs = src.prompt_logprobs if src.params.prompt_logprobs == \
                        r.params.prompt_logprobs else self._prompt_logprobs(hidden[index[id(src)],
                                                                                   T - len(r.prompt):], r)
        return logits[[index[id(first[_key(r)])] for r in rows]]                   # (k, V)

    def _prompt_logprobs(self, hidden: Tensor, r: Request) -> list[TokenLogprob]:
        """Each prompt token's log-probability given the ones before it (None for the first) and
        the likeliest tokens there, from the prompt's hidden states (P, dim), a chunk at a time."""
        targets = torch.tensor(r.prompt[1:], device=hidden.device)
        out = [TokenLogprob(r.prompt[0], None)]
        for lo in range(0, len(targets), PROMPT_LOGPROB_ROWS):
            logits = self.model.logits(hidden[lo:lo + PROMPT_LOGPROB_ROWS][:len(targets) - lo])
            out += logprobs_of(logits, targets[lo:lo + PROMPT_LOGPROB_ROWS], r.params.prompt_logprobs)
        return out

    def _start(self, r: Request) -> bool:
        """Set up a request leaving the queue; False (and the request answered) if it cannot run."""
        try:
            self._init_request(r)
        except Exception:
            self._fail(r, "starting")
            return False
        return True

    def _init_request(self, r: Request) -> None:
        """Per-request state: random generator (seeded if asked), repetition memory, text."""
        if not r.params.greedy:
            r.generator = torch.Generator(device=self.cache.k[0].device)
            r.generator.manual_seed(r.params.seed) if r.params.seed is not None else r.generator.seed()
        if r.params.repetition_penalty != 1.0:
            r.seen = torch.zeros(1, self.model.config.vocab_size, dtype=torch.bool)
            r.seen[0, r.prompt] = True
        if r.params.counts_tokens:
            r.counts = torch.zeros(1, self.model.config.vocab_size)
        r.text, r.matcher = TextStream(self.tokenizer), StopMatcher(r.stop)

    def _decode_step(self, rows: list[Request]) -> Tensor:
        """Logits (n, V) of the next token of every running request, one batched forward."""
        with self.adapters.select([r.adapter for r in rows]):
            return self._decode_batch([r.tokens[-1] for r in rows], [r.length - 1 for r in rows])

    def _decode_batch(self, last: list[int], at: list[int]) -> Tensor:
        """Logits (n, V) for tokens `last` at positions `at` of slots 0..n-1, padded to the
        decode batch (padding rows write the last position of free slots and attend over their
        slot; only compiled, and so never with adapters, which select rows 0..n-1)."""
        n = len(last)
        B = bucket(n, self.config.max_slots, self.config.compile)
        dev = self.cache.k[0].device
        L = min(-(-(max(at) + 1) // CACHE_BLOCK) * CACHE_BLOCK, self.max_len)
        tokens = torch.tensor(last + [0] * (B - n), device=dev)[:, None]            # (B, 1)
        # padding rows write the last position of free slots, which no prompt reaches (the last
        # slot may hold a long prompt being prefilled)
        positions = torch.tensor(at + [self.max_len - 1] * (B - n), device=dev)[:, None]   # (B, 1)
        mask = torch.arange(L, device=dev)[None] <= positions                       # (B, L)
        logits = self._decode(tokens, positions, self.cache, positions, mask[:, None, None])
        return logits[:n, -1]                                                       # (n, V)

    def _advance(self, logits: Tensor, rows: list[Request]) -> None:
        """Sample each row's next token with its own parameters and generator, and accept it. An
        error in one row ends that request alone; the other rows go on as if it were not there."""
        best = logits.argmax(-1).tolist()
        for i, r in enumerate(rows):
            try:
                if r.params.max_new_tokens == 0:            # the prompt's log-probs were all it asked
                    self._finish(r, "length")
                    continue
                row = logits[i:i + 1]
                if r.constraint is not None:       # only the tokens the grammar takes next
                    row = row.masked_fill(~r.constraint.allowed().to(row.device)[None], float("-inf"))
                if r.params.greedy and r.params.raw and r.constraint is None:
                    token = best[i]
                else:
                    token = int(next_token(row, r.params, r.seen, r.generator, r.counts, len(r.tokens)))
                if r.params.logprobs is not None:
                    r.pending += logprobs_of(logits[i:i + 1], torch.tensor([token], device=logits.device),
                                             r.params.logprobs)
                self._accept(r, token)
            except Exception:
                self._fail(r, "choosing its next token")

    def _accept(self, r: Request, token: int) -> None:
        """Add a sampled token to a request: emit its text, or finish it."""
        if r.finish_reason is not None:
            return
        if r.constraint is not None:
            r.constraint.take(token)
        if token in r.params.stop_token_ids:               # its log-prob stays: a client may want it
            return self._finish(r, "stop", self._drain(r)[0])
        r.tokens.append(token)
        self.stats["generated_tokens"] += 1
        if r.seen is not None:
            r.seen[0, token] = True
        if r.counts is not None:
            r.counts[0, token] += 1
        text, stopped = r.matcher.feed(r.text.push(token))
        if stopped:
            return self._finish(r, "stop", text)
        if r.constraint is not None and r.constraint.finished:   # the structure is complete
            tail, _ = self._drain(r)
            return self._finish(r, "stop", text + tail)
        if len(r.tokens) >= r.params.max_new_tokens or r.length >= self.max_len:
            tail, stopped = self._drain(r)
            return self._finish(r, "stop" if stopped else "length", text + tail)
        if text:
            r.on_output(self._output(r, text, None))

    @staticmethod
    def _output(r: Request, text: str, reason: str | None) -> Output:
        """An output of `r`, carrying the log-probs gathered since the last one (and the prompt's,
        on the first)."""
        matched = r.matcher.matched if reason is not None and r.matcher is not None else None
        out = Output(text, reason, len(r.prompt), len(r.tokens), matched, r.pending, r.prompt_logprobs)
        r.pending, r.prompt_logprobs = [], None
        return out

    @staticmethod
    def _drain(r: Request) -> tuple[str, bool]:
        """The text still held back at the end of a request, cut at a stop string if any."""
        tail, stopped = r.matcher.feed(r.text.flush())
        return (tail, True) if stopped else (tail + r.matcher.flush(), False)

    def _finish(self, r: Request, reason: str, text: str = "") -> None:
        if r.finish_reason is not None:
            return
        r.finish_reason = reason
        self.stats["finished"] += 1
        try:
            r.on_output(self._output(r, text, reason))
        except Exception:   # the client's own callback: it must not stop the others' answers
            log.exception("request %d: its output callback failed", r.id)

    def _fail(self, r: Request, doing: str) -> None:
        """End one request with an error (logged with its traceback); the others go on."""
        log.exception("request %d failed while %s; the other requests go on", r.id, doing)
        if r.finish_reason is None:
            self.stats["errors"] += 1
            self._finish(r, "error")

    def _retire(self) -> None:
        """Free the slots of finished requests, moving the last running ones into the holes."""
        alive = [r for r in self.running if r.finish_reason is None]
        if len(alive) == len(self.running):
            return
        n = len(alive)
        holes = [i for i, r in enumerate(self.running[:n]) if r.finish_reason is not None]
        movers = [r for r in self.running[n:] if r.finish_reason is None]
        for hole, r in zip(holes, movers):
            self.cache.move(r.slot, hole, r.length)
            r.slot = hole
        self.running = sorted(alive, key=lambda r: r.slot)
