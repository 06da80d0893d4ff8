"""A fast reader for the GGUF container (header, metadata, tensor table; spec: ggml's
docs/gguf.md). The `gguf` package's GGUFReader builds a numpy view per array element, which
takes seconds for a 100k-token vocabulary; this reads the same file in milliseconds. Tensor data
stays memory-mapped; dequantization is still the `gguf` package's."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

# GGUF metadata value types -> struct format (8 = string, 9 = array)
_SCALAR = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_NUMPY = {0: np.uint8, 1: np.int8, 2: np.uint16, 3: np.int16, 4: np.uint32, 5: np.int32,
          6: np.float32, 7: np.bool_, 10: np.uint64, 11: np.int64, 12: np.float64}


class GGUFFormatError(ValueError):
    pass


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]          # ggml order: fastest-varying first
    type: GGMLQuantizationType
    data: np.ndarray                # raw bytes, (rows, bytes per row), memory-mapped


class _Cursor:
    def __init__(self, buf: memoryview):
        self.buf, self.pos = buf, 0

    def take(self, fmt: str):
        try:
            (value,) = struct.unpack_from("<" + fmt, self.buf, self.pos)
        except struct.error:
            raise GGUFFormatError("file ends inside its header (truncated?)") from None
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        n = self.take("Q")
        if self.pos + n > len(self.buf):
            raise GGUFFormatError("file ends inside its header (truncated?)")
        s = bytes(self.buf[self.pos:self.pos + n]).decode("utf-8", errors="replace")
        self.pos += n
        return s

    def value(self, vtype: int):
        if vtype == 8:
            return self.string()
        if vtype == 9:
            itype, count = self.take("I"), self.take("Q")
            if itype == 8:
                return [self.string() for _ in range(count)]
            if itype in _NUMPY:
                size = np.dtype(_NUMPY[itype]).itemsize * count
                if self.pos + size > len(self.buf):
                    raise GGUFFormatError("file ends inside its header (truncated?)")
                arr = np.frombuffer(self.buf, _NUMPY[itype], count, self.pos)
                self.pos += size
                return arr.tolist()
            return [self.value(itype) for _ in range(count)]
        if vtype not in _SCALAR:
            raise GGUFFormatError(f"unknown metadata value type {vtype}")
        return self.take(_SCALAR[vtype])


def read_gguf_file(path: str | Path) -> tuple[dict, list[TensorInfo]]:
    """(metadata by key, tensors in file order). Raises GGUFFormatError on a malformed file."""
    mm = np.memmap(path, dtype=np.uint8, mode="r")
    buf = memoryview(mm)
    c = _Cursor(buf)
    if bytes(buf[:4]) != b"GGUF":
        raise GGUFFormatError("not a GGUF file (bad magic)")
    c.pos = 4
    version = c.take("I")
    if version not in (2, 3):
        raise GGUFFormatError(f"GGUF version {version} is not supported (2, 3)")
    n_tensors, n_kv = c.take("Q"), c.take("Q")
    meta = {}
    for _ in range(n_kv):
        key = c.string()
        meta[key] = c.value(c.take("I"))
    infos = []
    for _ in range(n_tensors):
        name = c.string()
        shape = tuple(c.take("Q") for _ in range(c.take("I")))
        raw_type, offset = c.take("I"), c.take("Q")
        try:
            qtype = GGMLQuantizationType(raw_type)
        except ValueError:
            raise GGUFFormatError(f"tensor {name} has unknown type id {raw_type}") from None
        infos.append((name, shape, qtype, offset))
    align = meta.get("general.alignment", 32)
    start = -(-c.pos // align) * align
    tensors = []
    for name, shape, qtype, offset in infos:
        block, block_bytes = GGML_QUANT_SIZES[qtype]
        if shape[0] % block:
            raise GGUFFormatError(f"tensor {name}: row of {shape[0]} is not whole {qtype.name} blocks")
        row_bytes = shape[0] // block * block_bytes
        rows = int(np.prod(shape[1:], dtype=np.int64))
        begin = start + offset
        if begin + rows * row_bytes > len(mm):
            raise GGUFFormatError(f"file ends inside tensor {name} (truncated?)")
        data = mm[begin:begin + rows * row_bytes].reshape(rows, row_bytes)
        tensors.append(TensorInfo(name, shape, qtype, data))
    return meta, tensors
