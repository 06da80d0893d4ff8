"""Batched generation over a preallocated KV cache.

Prompts of different lengths are left-padded into one batch; each row keeps its own positions,
and a boolean mask hides padding and unwritten cache slots. A decode step then has the same
shapes every time, so it can be compiled once (`torch.compile`) and run without per-token Python
work beyond sampling."""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Iterator

import torch

from ..errors import LaminaError
from ..model import KVCache, Transformer
from .adapters import Adapters
from .sampling import SamplingParams, next_token
from .speculative import check_draft, speculate

CACHE_BLOCK = 256   # cache lengths round up to this, so compiled decode steps are reused
_STEPS = itertools.count()


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


COMPILE_MODES = ("on", "off")


def compile_mode(compile: bool | str | None) -> bool:
    """Whether to compile the decode step, from what was asked: True or "on", False or "off";
    None: $LAMINA_COMPILE, else on (the fast path by default: the compiled step is cached
    between processes, `compile_cache_dir`, so only a model's first start compiles at length)."""
    if compile is None:
        compile = os.environ.get("LAMINA_COMPILE") or "on"
    if isinstance(compile, bool):
        return compile
    if compile not in COMPILE_MODES:
        raise LaminaError(f"compile {compile!r}: use on or off")
    return compile == "on"


class Engine:
    def __init__(self, model: Transformer, *, compile: bool | str | None = False, adapters: Adapters | None = None,
                 speculate: int = 0, draft: str | Transformer = "mtp", expand_latent: bool = False):
        """`compile`: the decode step compiled (`compile_mode`: True/"on", False/"off", None: the
        default); with LoRA adapters served per request, None means off.
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
        if len(self.adapters) and compile is None:
            compile = False
        compile = compile_mode(compile)
        if compile and len(self.adapters):
            raise LaminaError("LoRA adapters served per request run eagerly; leave out compile")
        if speculate:
            check_draft(self.config, speculate, draft)
        self.speculate, self.draft = speculate, draft
        self.compiled = compile
        self._decode = compile_decode_step(model) if compile else model

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
        S = min(-(-(P + n_new) // CACHE_BLOCK) * CACHE_BLOCK, context) if self.compiled else P + n_new
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
            seen_slots = S if self.compiled else at + 1
            with self.adapters.select(rows):
                logits = self._decode(token[:, None], position, cache, slot[at:at + 1],
                                      valid[:, None, None, :seen_slots])[:, -1]


def _plain_greedy(params: SamplingParams) -> bool:
    """Greedy with nothing that changes the model's own choice: what speculative decoding keeps."""
    return (params.greedy and not params.counts_tokens and params.repetition_penalty == 1.0
            and not params.logit_bias and not params.min_tokens)
