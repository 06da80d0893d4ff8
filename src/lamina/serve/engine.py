"""Batched generation over a preallocated KV cache.

Prompts of different lengths are left-padded into one batch; each row keeps its own positions,
and a boolean mask hides padding and unwritten cache slots. A decode step then has the same
shapes every time, so it can be compiled once (`torch.compile`) and run without per-token Python
work beyond sampling."""

from __future__ import annotations

import atexit
import hashlib
import itertools
import logging
import os
import queue
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import torch

from ..errors import LaminaError
from ..version import __version__
from ..model import KVCache, Transformer
from ..model.kv_cache import scratch
from .adapters import Adapters
from .sampling import SamplingParams, next_token
from .speculative import check_draft, speculate

CACHE_BLOCK = 256   # cache lengths round up to this, so compiled decode steps are reused
_STEPS = itertools.count()
log = logging.getLogger("lamina.serve")


def compile_cache_dir() -> Path:
    """Where compiled decode steps are kept between processes, so that a second start compiles
    in seconds: $TORCHINDUCTOR_CACHE_DIR if set, else lamina's folder in the user's cache
    ($XDG_CACHE_HOME, or ~/.cache: lamina/inductor) rather than inductor's default under /tmp,
    which a reboot empties. (torch writes its default into the variable when it first looks, so
    that value counts as unset.)"""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    given = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if given and given != default_cache_dir():
        return Path(given)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lamina" / "inductor"


def compile_decode_step(model: Transformer):
    """The model's forward (logits of every position; a decode step has one) compiled for decode
    steps: one graph per (batch, cache length), whose single-row matmuls become multi-core GEMV
    kernels (see `lamina.model.layers.linear`).

    Dynamo keeps compiled graphs per code object, and without the guards skipped below a second
    model in the process (another engine, its weights of other shapes: an int4 model after an
    int8 one) would run the first one's graph. So each call compiles a step of its own code."""
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(compile_cache_dir())

    def step(*args, **kwargs):
        return model(*args, **kwargs)
    step.__code__ = step.__code__.replace(co_name=f"decode_step_{next(_STEPS)}")
    return torch.compile(step, dynamic=False, fullgraph=True, options={
        # The engine owns the model and never swaps its modules or parameters, so dynamo need not
        # re-check ~300 of them before every step (about 1 ms a token on 2 cores).
        "guard_filter_fn": torch.compiler.skip_guard_on_all_nn_modules_unsafe,
        # Launch the kernels from generated C++ rather than Python: about 1.5 ms a token less,
        # about 20 s more compile on a cold cache.
        "cpp_wrapper": True,
    })


COMPILE_MODES = ("auto", "on", "off")


def compile_mode(compile: bool | str | None) -> str:
    """A decode step's compile mode from what was asked: True or "on", False or "off", "auto";
    None: $LAMINA_COMPILE, else "auto" (see `DecodeStep`)."""
    if compile is None:
        compile = os.environ.get("LAMINA_COMPILE") or "auto"
    mode = {True: "on", False: "off"}.get(compile, compile) if isinstance(compile, bool) else compile
    if mode not in COMPILE_MODES:
        raise LaminaError(f"compile {compile!r}: use auto, on or off")
    return mode


class DecodeStep:
    """The forward a decode step runs, by compile mode:

    - "off": the model, eagerly;
    - "on": the compiled step; a shape met for the first time compiles then and there (seconds on
      a warm compile cache, a minute or more on a cold one);
    - "auto" (the default of `lamina.load` and the commands): the model eagerly, while a thread
      compiles the step for each shape met; the compiled step takes over a shape once it is
      ready. Answers start at once and speed up a few seconds later on a warm cache. The first
      compile of a model and shape (a minute or more) is cached for the next process
      (`compile_cache_dir`): a process that ends before it does waits for it at exit, once,
      saying so (Ctrl-C skips it); later processes never wait.

    Greedy output is the same either way. Shapes are (batch rows, cache length) keys the caller
    picks; compiled and "auto" callers round cache lengths to CACHE_BLOCK (`rounds_shapes`)."""

    def __init__(self, model: Transformer, mode: str):
        self.model, self.mode = model, compile_mode(mode)
        self.step = compile_decode_step(model) if self.mode != "off" else None
        self.ready: set = set()                 # shapes compiled
        self.failed: str | None = None          # why compiling failed ("auto" then stays eager)
        self._asked: set = set()
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._worker: threading.Thread | None = None
        # held by a compile, and by a step that runs the compiled graph: never both at once
        self._lock = threading.Lock()
        self._idle = threading.Condition()
        self._marks = compile_cache_dir() / "lamina-compiled"     # a file per model and shape compiled once
        self._identity = hashlib.sha256(repr((model.config, sorted({str(t.dtype) for t in model.parameters()}),
                                              sorted({type(m).__name__ for m in model.modules()}),
                                              next(model.parameters()).device.type, torch.__version__,
                                              __version__)).encode()).hexdigest()[:16]
        self._first = False             # a compile of a shape never compiled before is queued

    @property
    def rounds_shapes(self) -> bool:
        return self.mode != "off"

    @contextmanager
    def pick(self, shape: tuple, example: Callable[[], tuple]) -> Iterator[Callable | None]:
        """The compiled step to run a step of `shape` with, or None: run the model eagerly.
        `example()` gives inputs of that shape (a scratch cache: the compile writes into it); it
        is called here, so that its tensors are made as the real step's are (inference mode),
        which the compiled graph's guards check."""
        if self.mode == "on":
            yield self.step
            return
        if self.mode == "off" or self.failed is not None:
            yield None
            return
        if shape not in self._asked:
            self._asked.add(shape)
            self._jobs.put((shape, example()))
            if not self._mark(shape).exists() and not self._first:
                self._first = True
                atexit.register(self._finish_first)
            if self._worker is None:
                self._worker = threading.Thread(target=self._compile, name="lamina-compile", daemon=True)
                self._worker.start()
        if shape in self.ready and self._lock.acquire(blocking=False):
            try:
                yield self.step
            finally:
                self._lock.release()
        else:
            yield None

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every shape asked for so far is compiled (or compiling failed); whether it is."""
        with self._idle:
            return self._idle.wait_for(lambda: self.failed is not None or self._asked <= self.ready, timeout)

    def _compile(self) -> None:
        while True:
            shape, inputs = self._jobs.get()
            try:
                with self._lock, torch.inference_mode():
                    self.step(*inputs)
            except Exception as e:       # the eager step still serves; say why it stays slow
                self.failed = f"{type(e).__name__}: {str(e)[:300]}"
                log.warning("compiling the decode step failed, decoding stays eager: %s", self.failed)
            with self._idle:
                if self.failed is None:
                    self.ready.add(shape)
                    self._mark(shape).parent.mkdir(parents=True, exist_ok=True)
                    self._mark(shape).touch()
                self._idle.notify_all()
            if self.failed is not None:
                return

    def _mark(self, shape: tuple) -> Path:
        return self._marks / f"{self._identity}-{'x'.join(map(str, shape))}"

    def _finish_first(self) -> None:
        """At exit: let a first compile finish, so that the next process finds it cached."""
        if self.wait(timeout=0):
            return
        print("lamina: finishing the first compile of the decode step, cached for the next start "
              "(Ctrl-C skips)", file=sys.stderr, flush=True)
        try:
            self.wait()
        except KeyboardInterrupt:
            pass


class Engine:
    def __init__(self, model: Transformer, *, compile: bool | str = False, adapters: Adapters | None = None,
                 speculate: int = 0, draft: str | Transformer = "mtp", expand_latent: bool = False):
        """`compile`: "auto", "on" (True) or "off" (False), see `DecodeStep`; with LoRA adapters
        served per request "auto" is "off".
        `speculate`: greedy requests of one prompt draft this many tokens a step, checked in
        one forward (`speculative.py`), with `draft`: "mtp" (the model's multi-token prediction
        modules), "lookup" (prompt lookup) or a draft model of the same vocabulary; the output is
        the same.
        `expand_latent`: a latent-attention model caches every head's keys and values, the naive
        cache (for measuring the latent one against it)."""
        self.expand_latent = expand_latent
        self.model = model.eval()
        self.config = model.config
        self.adapters = adapters or Adapters(model, {})
        mode = compile_mode(compile)
        if len(self.adapters):
            if mode == "on":
                raise LaminaError("LoRA adapters served per request run eagerly; leave out compile")
            mode = "off"
        if speculate:
            check_draft(self.config, speculate, draft)
        self.speculate, self.draft = speculate, draft
        self.steps = DecodeStep(model, mode)

    @property
    def dtype(self) -> torch.dtype:
        return self.model.tok_embeddings.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.model.tok_embeddings.weight.device

    @torch.inference_mode()
    def generate(self, prompts: list[list[int]], params: SamplingParams, *, include_stop: bool = False,
                 adapters: list[int] | None = None) -> Iterator[list[int | None]]:
        """Yield, for every step, the new token of each row (None once a row has stopped; with
        `include_stop` the stop token itself comes first, as a trainer scoring it needs).
        `adapters` gives each row's LoRA adapter (`Adapters.index`; 0 or None: the base model)."""
        if not prompts or any(not p for p in prompts):
            raise LaminaError("every prompt needs at least one token")
        rows = list(adapters) if adapters is not None else [0] * len(prompts)
        if len(rows) != len(prompts) or any(not 0 <= r <= len(self.adapters) for r in rows):
            raise LaminaError(f"adapters: one index in [0, {len(self.adapters)}] for each of the "
                              f"{len(prompts)} prompts")
        if params.logprobs is not None or params.prompt_logprobs is not None:
            raise LaminaError("log-probabilities come from the server's batcher (`lamina serve`) or the "
                              "eval scorer, not from Engine.generate")
        if self.speculate and len(prompts) == 1 and not any(rows) and _plain_greedy(params):
            for token in speculate(self.model, prompts[0], params.max_new_tokens, n_tokens=self.speculate,
                                   draft=self.draft, stop_token_ids=params.stop_token_ids, include_stop=include_stop):
                yield [token]
            return
        B, P = len(prompts), max(len(p) for p in prompts)
        context = self.config.max_seq_len
        if P >= context:
            raise LaminaError(f"the prompt has {P} tokens; this model's context is {context}")
        n_new = min(params.max_new_tokens, context - P)
        if n_new == 0:
            return
        # A compiled decode step wants few distinct shapes: the cache rounds up to CACHE_BLOCK and
        # every step attends over all of it. Eagerly, shapes cost nothing: the cache is what the
        # request needs, and a step attends over the slots written so far.
        S = min(-(-(P + n_new) // CACHE_BLOCK) * CACHE_BLOCK, context) if self.steps.rounds_shapes else P + n_new
        dev = self.device
        # Rows asking the same prompt of the same adapter (GRPO samples a group of completions per
        # prompt) share one prefill: the first such row runs it, the cache then copies its rows.
        numbered: dict[tuple[int, tuple[int, ...]], int] = {}
        source = [numbered.setdefault((r, tuple(p)), len(numbered)) for r, p in zip(rows, prompts)]
        distinct: list[int] = []                                                    # the first row asking each
        for b, u in enumerate(source):
            if u == len(distinct):
                distinct.append(b)
        cache = KVCache(self.config, len(distinct), S, dtype=self.dtype, device=dev, expanded=self.expand_latent)

        pads = torch.tensor([P - len(p) for p in prompts], device=dev)                 # (B,)
        tokens = torch.zeros(B, P, dtype=torch.long, device=dev)
        for b, p in enumerate(prompts):
            tokens[b, P - len(p):] = torch.tensor(p, device=dev)
        slot = torch.arange(S, device=dev)
        valid = (slot[None] >= pads[:, None]) & (slot[None] < P)                        # (B, S)
        positions = (torch.arange(P, device=dev)[None] - pads[:, None]).clamp(min=0)    # (B, P)
        # The prompt attends over the first P slots only; later slots are still empty.
        query = torch.arange(P, device=dev)[:, None]                                    # (P, 1)
        causal = slot[None, :P] <= query                                                # (P, P)
        mask = (causal & valid[:, None, :P]) | (slot[None, :P] == query)               # (B, P, P)
        once = torch.tensor(distinct, device=dev)
        with self.adapters.select([rows[b] for b in distinct]):
            hidden = self.model.body(tokens[once], positions[once], cache, slot[:P], mask[once, None])   # (U, P, dim)
        logits = self.model.logits(hidden[:, -1])                                       # (U, V)
        if len(distinct) < B:
            copy = torch.tensor(source, device=dev)
            cache.take_rows(copy)
            logits = logits[copy]                                                       # (B, V)

        seen = None
        if params.repetition_penalty != 1.0:
            seen = torch.zeros(B, self.config.vocab_size, dtype=torch.bool, device=dev)
            for b, p in enumerate(prompts):
                seen[b, p] = True
        counts = torch.zeros(B, self.config.vocab_size, device=dev) if params.counts_tokens else None
        generator = None
        if not params.greedy:
            generator = torch.Generator(device=dev)
            generator.manual_seed(params.seed) if params.seed is not None else generator.seed()
        stops = torch.tensor(params.stop_token_ids or [-1], device=dev)
        done = torch.zeros(B, dtype=torch.bool, device=dev)
        position = positions[:, -1:]                                                    # (B, 1)
        for step in range(n_new):
            token = next_token(logits, params, seen, generator, counts, step)          # (B,)
            newly_done = torch.isin(token, stops) & ~done
            ended = done if include_stop else done | newly_done
            out = [None if d else t for t, d in zip(token.tolist(), ended.tolist())]
            done |= newly_done
            if all(t is None for t in out):
                return
            yield out
            if step == n_new - 1 or bool(done.all()):
                return
            if seen is not None:
                seen.scatter_(1, token[:, None], True)
            if counts is not None:
                counts.scatter_add_(1, token[:, None], torch.ones_like(counts[:, :1]))
            at = P + step
            valid[:, at] = True
            position = position + 1
            with self.steps.pick((B, S), lambda: _example(B, S, cache)) as compiled, self.adapters.select(rows):
                if compiled is not None:        # same shapes every step: the whole cache, masked
                    logits = compiled(token[:, None], position, cache, slot[at:at + 1], valid[:, None, None, :S])
                else:                           # eagerly, only the slots written so far
                    logits = self.model(token[:, None], position, cache, slot[at:at + 1],
                                        valid[:, None, None, :at + 1])
                logits = logits[:, -1]


def _example(B: int, S: int, cache: KVCache) -> tuple:
    """Inputs of a decode step of B rows over S cache slots, made as `Engine.generate` makes them
    (so that the compiled graph's guards hold for the real steps), with a scratch cache."""
    valid = torch.zeros(B, S, dtype=torch.bool, device=cache.k[0].device)
    slot = torch.arange(S, device=valid.device)
    return (torch.zeros(B, 1, dtype=torch.long, device=valid.device), torch.zeros(B, 1, dtype=torch.long,
            device=valid.device), scratch(cache), slot[S - 1:S], valid[:, None, None, :S])


def _plain_greedy(params: SamplingParams) -> bool:
    """Greedy with nothing that changes the model's own choice: what speculative decoding keeps."""
    return (params.greedy and not params.counts_tokens and params.repetition_penalty == 1.0
            and not params.logit_bias and not params.min_tokens)
