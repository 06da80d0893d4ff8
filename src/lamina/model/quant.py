"""Weight-only quantization of a model's linear layers, for inference.

A batch-1 decode step reads every weight once per token, so it runs at the speed of memory:
weights of 1 byte (int8) or half a byte (int4) per parameter instead of 4 (float32) or 2
(bfloat16) read that many times fewer bytes. Activations stay floating point.

- int8: a signed byte per weight and a scale per group of input channels (`group` = all of
  them, one scale per output channel, by default; 32 is llama.cpp's Q8_0 block).
- int4: a code q in 0..15 per weight and, per group of 32 input channels, a scale and an offset:
  w = q * scale + offset (llama.cpp's Q4_1; its Q4_0 is offset -8 * scale). Two codes share a
  byte: the low nibble holds row r, the high nibble row r + out/2 of the same column, so each
  nibble unpacks to a whole contiguous matrix (measured on this CPU: packing neighbouring
  columns instead made the fused decode kernel 4x slower).

`quantize_model` swaps the attention and dense feed-forward projections and the output head (in
int8 whichever the method, as llama.cpp keeps it) for `QuantizedLinear`; the embedding, norms, router, experts and latent up-projection stay as they
are. GGUF's Q8_0/Q4_0/Q4_1 tensors load into the same form without a round trip through floats
(checkpoint/gguf.py)."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import Linear

BITS = {"int8": 8, "int4": 4}
INT4_GROUP = 32


class QuantizedLinear(nn.Module):
    """x @ W.T for a bias-free W (out, in) held quantized; `dtype` is the activations' and scales'."""

    def __init__(self, out_features: int, in_features: int, bits: int, group: int = 0,
                 dtype: torch.dtype = torch.float32):
        """`dtype`: the activations', and the scales' and offsets'. (llama.cpp keeps them in
        float16, a quarter of int4's bytes less to read; on this CPU inductor converts float16 and
        bfloat16 one element at a time, which made the fused int4 kernel 5x slower: measured.)"""
        super().__init__()
        group = group or (in_features if bits == 8 else INT4_GROUP)
        if bits not in (4, 8) or in_features % group or (bits == 4 and out_features % 2):
            raise ValueError(f"cannot quantize a {out_features} x {in_features} weight to int{bits} in groups of {group}")
        self.in_features, self.out_features, self.bits, self.group = in_features, out_features, bits, group
        rows = out_features if bits == 8 else out_features // 2
        self.register_buffer("qweight", torch.zeros(rows, in_features, dtype=torch.int8 if bits == 8 else torch.uint8))
        self.register_buffer("scales", torch.zeros(out_features, in_features // group, dtype=dtype))
        self.register_buffer("offsets", torch.zeros(out_features, in_features // group, dtype=dtype) if bits == 4 else None)

    @classmethod
    def from_weight(cls, weight: Tensor, bits: int, group: int = 0) -> QuantizedLinear:
        """Round-to-nearest quantization of a float weight (symmetric int8, asymmetric int4)."""
        out_features, in_features = weight.shape
        group = group or (in_features if bits == 8 else INT4_GROUP)
        w = weight.detach().float().reshape(out_features, -1, group)
        if bits == 8:
            scale, offset = w.abs().amax(-1).clamp(min=1e-12) / 127, None
            codes = (w / scale[..., None]).round().clamp(-127, 127)
        else:
            offset = w.amin(-1)
            scale = ((w.amax(-1) - offset) / 15).clamp(min=1e-12)
            codes = ((w - offset[..., None]) / scale[..., None]).round().clamp(0, 15)
        return cls.from_codes(bits, codes.view(out_features, -1), scale, offset, weight.dtype).to(weight.device)

    @classmethod
    def from_codes(cls, bits: int, codes: Tensor, scales: Tensor, offsets: Tensor | None,
                   dtype: torch.dtype) -> QuantizedLinear:
        """A layer holding these codes (out, in) and their scales and offsets (out, in / group)."""
        q = cls(codes.shape[0], codes.shape[1], bits, codes.shape[1] // scales.shape[1], dtype)
        if bits == 8:
            q.set_int8(codes, scales.to(dtype))
        else:
            q.set_int4(codes, scales.to(dtype), offsets.to(dtype))
        return q

    def set_int8(self, codes: Tensor, scales: Tensor) -> None:
        """Codes (out, in) in -128..127; scales (out, in / group)."""
        self.qweight.copy_(codes.to(torch.int8))
        self.scales.copy_(scales)

    def set_int4(self, codes: Tensor, scales: Tensor, offsets: Tensor) -> None:
        """Codes (out, in) in 0..15, packed two rows to a byte; scales and offsets (out, in / group)."""
        codes = codes.to(torch.uint8)
        half = self.out_features // 2
        self.qweight.copy_(codes[:half] | (codes[half:] << 4))
        self.scales.copy_(scales)
        self.offsets.copy_(offsets)

    def codes(self) -> Tensor:
        """The integer weights (out, in): int8 as stored, int4 unpacked to 0..15 (as int32)."""
        if self.bits == 8:
            return self.qweight
        packed = self.qweight.to(torch.int32)   # measured: inductor vectorizes int32 nibble arithmetic, not uint8
        return torch.cat((packed & 15, (packed >> 4) & 15))

    def dequantize(self, dtype: torch.dtype | None = None) -> Tensor:
        """The float weight (out, in) these codes stand for."""
        w = self._weights(self.codes(), self.scales, self.offsets, dtype or self.scales.dtype)
        return w.view(self.out_features, self.in_features)

    def _weights(self, codes: Tensor, scales: Tensor, offsets: Tensor | None, dtype: torch.dtype) -> Tensor:
        """Codes (rows, in) and their rows' scales and offsets as float weights (rows, in/G, G)."""
        w = codes.to(dtype).view(codes.shape[0], -1, self.group) * scales.to(dtype)[..., None]
        return w if offsets is None else w + offsets.to(dtype)[..., None]

    def forward(self, x: Tensor) -> Tensor:
        if torch.compiler.is_compiling() and x.is_cpu and x.shape[:-1].numel() == 1:
            # Batch-1 decode under torch.compile: the dequantization written into the product over
            # each group, which inductor fuses into one multi-core kernel reading each code once
            # (int4: one per nibble; joining the nibbles first made it materialize them, 4x slower).
            groups = x.reshape(1, -1, self.group)                                           # (1, in/G, G)
            if self.bits == 8:
                y = self._gemv(groups, self.qweight, self.scales, None)
            else:
                half, packed = self.out_features // 2, self.qweight.to(torch.int32)
                y = torch.cat((self._gemv(groups, packed & 15, self.scales[:half], self.offsets[:half]),
                               self._gemv(groups, (packed >> 4) & 15, self.scales[half:], self.offsets[half:])))
            return y.view(*x.shape[:-1], self.out_features)
        return F.linear(x, self.dequantize(x.dtype))

    def _gemv(self, groups: Tensor, codes: Tensor, scales: Tensor, offsets: Tensor | None) -> Tensor:
        """(1, in/G, G) activations times the rows whose codes (rows, in) these are: (rows,)."""
        return (groups * self._weights(codes, scales, offsets, groups.dtype)).sum((-1, -2))

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, int{self.bits}, group={self.group}"


Codes = tuple[int, Tensor, Tensor, "Tensor | None"]   # bits, codes (out, in), scales and offsets (out, in / 32)


def quantize_model(model: nn.Module, method: str, stored: Callable[[str], Codes | None] | None = None) -> nn.Module:
    """Swap, in place, every projection `Linear` of attention and dense feed-forwards and the
    output head for its `method` ("int8" or "int4") form. `stored(weight name)`: the codes a
    checkpoint already holds for that weight in blocks of 32 (GGUF's Q8_0/Q4_0/Q4_1), taken as
    they are when their bits are `method`'s; others are rounded from the float weight. Returns
    the model."""
    if method not in BITS:
        raise ValueError(f"unknown quantization {method!r}; choose int8 or int4")
    skipped = ("gate", "wkv_b")   # the router (routing is sensitive, tiny); MLA's absorbed up-projection
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if type(child) is not Linear or child_name in skipped:
                continue
            # int4 keeps the output head at int8, as llama.cpp's Q4 files do: in 4 bits it alone
            # cost SmolLM2 0.14 nats on a paragraph (measured), the rest of the model 0.01
            bits = 8 if name == "" and child_name == "output" else BITS[method]
            exact = stored(f"{name}.{child_name}.weight".lstrip(".")) if stored else None
            if exact is not None and exact[0] == bits and exact[1].shape == child.weight.shape \
                    and not (bits == 4 and child.out_features % 2):
                setattr(module, child_name, QuantizedLinear.from_codes(*exact, child.weight.dtype).to(child.weight.device))
                continue
            group = 0 if bits == 8 else INT4_GROUP
            if child.in_features % (group or child.in_features) or (group and child.out_features % 2):
                continue           # a shape the groups or the packing do not divide stays in floats
            setattr(module, child_name, QuantizedLinear.from_weight(child.weight, bits, group))
    return model


def quantized_size(n_params: int, embedding: int, tied: bool, itemsize: int, method: str | None) -> int:
    """Bytes of a model's weights of `n_params` parameters (`embedding` of them the token
    embedding) once `method` quantizes its projections and head, before building it."""
    if method is None:
        return n_params * itemsize
    per_weight = 1.0 if method == "int8" else 0.5 + 2 * itemsize / INT4_GROUP   # int4: codes, a scale and an offset
    rest = n_params - embedding * (1 if tied else 2)                    # the projections
    return int(embedding * itemsize + embedding * 1.0 + rest * per_weight)   # float embedding, int8 head


def quantized_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer: what a step reads, at most."""
    seen, total = set(), 0
    for t in [*model.parameters(), *model.buffers()]:
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.nbytes
    return total
