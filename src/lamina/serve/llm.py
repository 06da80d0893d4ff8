"""`lamina.load(MODEL)`: a model and its tokenizer, ready to generate, stream and chat."""

from __future__ import annotations

import mmap
import sys
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from ..checkpoint import Checkpoint, load_checkpoint
from ..devices import check_fits, placement
from ..errors import LaminaError
from ..model import Transformer, count_params, from_state_dict
from ..model.quant import BITS, quantize_model, quantized_size
from ..tokenizer import Tokenizer, render_chat
from .adapters import Adapters
from .engine import Engine
from .sampling import SamplingParams
from .text import TextStream

class LLM:
    def __init__(self, model: Transformer, tokenizer: Tokenizer, *, compile: bool | str | None = None,
                 checkpoint: Checkpoint | None = None, lora: dict[str, str | Path] | None = None,
                 speculate: int = 0, draft: str | Transformer = "mtp"):
        """`lora`: LoRA adapter folders (PEFT format) by name, put on the model side by side and
        chosen per call (`adapter=NAME`) or per request by `lamina serve`."""
        self.model, self.tokenizer, self.checkpoint = model, tokenizer, checkpoint
        self.adapters = Adapters(model, lora or {})
        self.engine = Engine(model, compile=compile, adapters=self.adapters, speculate=speculate, draft=draft)

    def _rows(self, adapter: str | None, n: int) -> list[int]:
        if adapter is None:
            return [0] * n
        if adapter not in self.adapters.names:
            known = ", ".join(self.adapters.names) or "none loaded"
            raise LaminaError(f"no LoRA adapter named {adapter!r} (adapters: {known})")
        return [self.adapters.index(adapter)] * n

    def _params(self, stop_token_ids=None, **kw) -> SamplingParams:
        stops = self.tokenizer.stop_ids if stop_token_ids is None else tuple(stop_token_ids)
        try:
            return SamplingParams(stop_token_ids=stops, **kw)
        except ValueError as e:
            raise LaminaError(str(e)) from None

    def encode_prompt(self, prompt: str | list[dict], chat: bool = False) -> list[int]:
        if isinstance(prompt, list) or chat:
            messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
            return render_chat(self.tokenizer, messages)
        return self.tokenizer.encode(prompt)

    def generate(self, prompt: str | list[str], *, chat: bool = False, adapter: str | None = None,
                 **kw) -> str | list[str]:
        """Text continuing `prompt` (or each of a list of prompts, generated as one batch), by the
        base model or by the LoRA adapter named `adapter`. Keywords: max_new_tokens, temperature
        (0 = greedy), top_k, top_p, repetition_penalty, presence_penalty, frequency_penalty,
        logit_bias, min_tokens, seed, stop_token_ids."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        ids = [self.encode_prompt(p, chat) for p in prompts]
        outs: list[list[int]] = [[] for _ in prompts]
        for step in self.engine.generate(ids, self._params(**kw), adapters=self._rows(adapter, len(ids))):
            for row, token in zip(outs, step):
                if token is not None:
                    row.append(token)
        texts = [self.tokenizer.decode(o) for o in outs]
        return texts[0] if isinstance(prompt, str) else texts

    def stream(self, prompt: str | list[dict], *, chat: bool = False, adapter: str | None = None,
               **kw) -> Iterator[str]:
        """Yield pieces of text as they are generated."""
        text = TextStream(self.tokenizer)
        for (token,) in self.engine.generate([self.encode_prompt(prompt, chat)], self._params(**kw),
                                             adapters=self._rows(adapter, 1)):
            if token is None:
                break
            piece = text.push(token)
            if piece:
                yield piece
        tail = text.flush()
        if tail:
            yield tail

    def chat(self, messages: list[dict], **kw) -> str:
        """The assistant's reply to a conversation, rendered with the model's chat template."""
        return "".join(self.stream(messages, **kw))


def _stored_codes(ck: Checkpoint, name: str):
    """The codes a GGUF file holds for weight `name` (a tied head: the embedding's)."""
    from ..checkpoint.gguf import block_codes
    if name == "output.weight" and ck.config.tie_embeddings:
        name = "tok_embeddings.weight"
    return block_codes(ck.blocks[name]) if name in ck.blocks else None


def move_to_huge_pages(model: nn.Module) -> None:
    """Move a CPU model's parameters and buffers (a quantized model's weights are buffers) into one anonymous mapping that Linux backs with 2 MB pages
    (transparent huge pages, asked for with madvise; the parameters stay the same objects).

    Batch-1 decode streams every weight once per token, and with 4 KB pages the TLB misses cost
    about 8% of compiled decode speed on 2 cores (bench/decode.py). If the kernel declines the
    advice, this is an ordinary copy."""
    params = list(model.parameters()) + list(model.buffers())   # a tied parameter appears once
    sizes = [-(-p.nbytes // 64) * 64 for p in params]    # keep every tensor 64-byte aligned
    buffer = mmap.mmap(-1, sum(sizes), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    buffer.madvise(mmap.MADV_HUGEPAGE)
    memory = torch.frombuffer(buffer, dtype=torch.uint8)  # keeps the mapping alive
    offset = 0
    for p, size in zip(params, sizes):
        p.data = memory[offset:offset + p.nbytes].view(p.dtype).view(p.shape).copy_(p.data)
        offset += size


def load(model: str | Path, *, dtype: str | torch.dtype | None = None, device: str | torch.device | None = None,
         compile: bool | str | None = None, tokenizer: str | Path | None = None,
         lora: dict[str, str | Path] | None = None, speculate: int = 0, draft: str | Path | Transformer = "mtp",
         quantize: str | None = None) -> LLM:
    """Load a model reference: a model directory, a GGUF or Meta checkpoint, or a packaged name;
    with `lora`, LoRA adapter folders (PEFT format) by name, served side by side on it. With
    `speculate`, greedy generation of one prompt drafts that many tokens a step with the model's
    multi-token prediction modules (the same output, fewer forwards when they guess right), or
    with `draft`: "lookup" (prompt lookup, no model) or a draft model (a reference to load the
    same way, or a Transformer) sharing the model's tokenizer.
    `device`: default the GPU when one is visible, else the CPU; `dtype`: default bfloat16 on a
    GPU, float32 on a CPU. Weights that cannot fit in the device's free memory are refused
    before they load. `quantize`: "int8" or "int4" weight-only quantization of the projections
    and the output head (`lamina.model.quant`), done on the CPU before the model moves.
    `compile`: torch.compile the decode step at the first step (default; $LAMINA_COMPILE=on|off
    sets the default); compiled steps are cached between processes (`compile_cache_dir`), so a
    model's second start compiles in seconds. False: eager, the shorter start for a short reply.
    With LoRA adapters the default is eager."""
    where, dtype = placement(device, dtype)
    ck = load_checkpoint(model)
    tok = Tokenizer.from_dir(tokenizer) if tokenizer else ck.tokenizer
    if tok is None:
        raise LaminaError(f"{ck.path}: carries no tokenizer; pass tokenizer=DIR")
    if quantize is not None and quantize not in BITS:
        raise LaminaError(f"quantize: {quantize!r} is not a quantization; choose int8 or int4")
    if quantize and lora:
        raise LaminaError("LoRA adapters are served on unquantized weights; leave out quantize")
    c = ck.config
    check_fits(quantized_size(count_params(c, mtp=True), c.vocab_size * c.dim, c.tie_embeddings, dtype.itemsize,
                              quantize), where, str(ck.path))
    try:
        net = from_state_dict(ck.config, ck.weights, dtype)
    except ValueError as e:
        raise LaminaError(f"{ck.path}: {e}") from None
    if quantize:
        quantize_model(net, quantize, lambda name: _stored_codes(ck, name))
    net = net.to(where)
    if net.tok_embeddings.weight.is_cpu and sys.platform == "linux":
        params = dict(net.named_parameters())
        shared = [k for k, t in ck.weights.items()
                  if k in params and t.data_ptr() == params[k].data_ptr()]
        move_to_huge_pages(net)
        for k in shared:   # the checkpoint keeps the model's tensors, not the copies left behind
            ck.weights[k] = params[k].detach()
    if draft not in ("mtp", "lookup") and not isinstance(draft, Transformer):
        draft = _draft_model(draft, tok, dtype, where)
    return LLM(net, tok, compile=compile, checkpoint=ck, lora=lora, speculate=speculate, draft=draft)


def _draft_model(ref: str | Path, tok: Tokenizer, dtype: torch.dtype, where: torch.device) -> Transformer:
    """A draft model for speculative decoding: loaded like the model, refused unless its
    tokenizer splits text as the model's does (its proposals are token ids of the model's)."""
    ck = load_checkpoint(ref)
    probe = "Speculative drafts: 12 tokens, ünïcödé, <tags>, code(x) {}"
    if ck.tokenizer is None or ck.tokenizer.vocab_size != tok.vocab_size or ck.tokenizer.encode(probe) != tok.encode(probe):
        raise LaminaError(f"{ck.path}: a draft model must share the model's tokenizer, and this one's differs")
    return from_state_dict(ck.config, ck.weights, dtype).to(where).eval()
