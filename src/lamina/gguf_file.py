"""A fast reader for the GGUF container (header, metadata, tensor table; spec: ggml's
docs/gguf.md). The `gguf` package's GGUFReader builds a numpy view per array element, which
takes seconds for a 100k-token vocabulary; this reads the same file in milliseconds. Tensor data
stays memory-mapped; dequantization is still the `gguf` package's.

On the ground floor: checkpoint/ reads GGUF models through it and tokenizer/ their vocabularies."""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from .errors import LaminaError

# GGUF metadata value types -> struct format (8 = string, 9 = array)
_SCALAR = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_NUMPY = {0: np.uint8, 1: np.int8, 2: np.uint16, 3: np.int16, 4: np.uint32, 5: np.int32,
          6: np.float32, 7: np.bool_, 10: np.uint64, 11: np.int64, 12: np.float64}


# Limits a well-formed file never reaches, so a hostile one fails in one line: ggml tensors have
# at most 4 dimensions (GGML_MAX_DIMS); nested metadata arrays are not used by any writer past 2.
MAX_DIMS = 4
MAX_ARRAY_DEPTH = 8
_MIN_BYTES = {8: 8, 9: 12} | {t: struct.calcsize("<" + f) for t, f in _SCALAR.items()}   # per value


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

    def room_for(self, count: int, each: int) -> None:
        """Fail now if `count` items of at least `each` bytes cannot fit in the rest of the file:
        a count of 2**63 must not start a loop that only the end of the file would stop."""
        if count * each > len(self.buf) - self.pos:
            raise GGUFFormatError("file ends inside its header (truncated?)")

    def string(self) -> str:
        n = self.take("Q")
        self.room_for(n, 1)
        s = bytes(self.buf[self.pos:self.pos + n]).decode("utf-8", errors="replace")
        self.pos += n
        return s

    def value(self, vtype: int, depth: int = 0):
        if vtype not in _MIN_BYTES:
            raise GGUFFormatError(f"unknown metadata value type {vtype}")
        if vtype == 8:
            return self.string()
        if vtype == 9:
            if depth == MAX_ARRAY_DEPTH:
                raise GGUFFormatError(f"metadata arrays nested deeper than {MAX_ARRAY_DEPTH}")
            itype, count = self.take("I"), self.take("Q")
            if itype not in _MIN_BYTES:
                raise GGUFFormatError(f"unknown metadata value type {itype}")
            self.room_for(count, _MIN_BYTES[itype])
            if itype in _NUMPY:
                arr = np.frombuffer(self.buf, _NUMPY[itype], count, self.pos)
                self.pos += arr.nbytes
                return arr.tolist()
            return [self.value(itype, depth + 1) for _ in range(count)]
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
    c.room_for(n_kv, 8 + 4 + 1)               # key length, value type, the smallest value
    meta = {}
    for _ in range(n_kv):
        key = c.string()
        meta[key] = c.value(c.take("I"))
    c.room_for(n_tensors, 8 + 4 + 8 + 4 + 8)  # name length, n_dims, one dim, type, offset
    infos = [_tensor_info(c) for _ in range(n_tensors)]
    align = meta.get("general.alignment", 32)
    if isinstance(align, bool) or not isinstance(align, int) or align <= 0 or align & (align - 1):
        raise GGUFFormatError(f"general.alignment must be a power of two, got {repr(align)[:40]}")
    start = -(-c.pos // align) * align
    tensors = []
    for name, shape, qtype, offset in infos:
        block, block_bytes = GGML_QUANT_SIZES[qtype]
        if shape[0] % block:
            raise GGUFFormatError(f"tensor {name}: row of {shape[0]} is not whole {qtype.name} blocks")
        row_bytes = shape[0] // block * block_bytes
        rows = math.prod(shape[1:])
        begin = start + offset
        if begin + rows * row_bytes > len(mm):
            raise GGUFFormatError(f"file ends inside tensor {name} (truncated?)")
        data = mm[begin:begin + rows * row_bytes].reshape(rows, row_bytes)
        tensors.append(TensorInfo(name, shape, qtype, data))
    return meta, tensors


def _tensor_info(c: _Cursor) -> tuple[str, tuple[int, ...], GGMLQuantizationType, int]:
    """One entry of the tensor table: (name, shape, type, data offset)."""
    name = c.string()
    n_dims = c.take("I")
    if not 1 <= n_dims <= MAX_DIMS:
        raise GGUFFormatError(f"tensor {name} has {n_dims} dimensions (ggml allows 1 to {MAX_DIMS})")
    shape = tuple(c.take("Q") for _ in range(n_dims))
    if 0 in shape or math.prod(shape) >= 2**63:   # ggml counts elements in int64
        raise GGUFFormatError(f"tensor {name} has impossible dimensions {shape}")
    raw_type, offset = c.take("I"), c.take("Q")
    try:
        qtype = GGMLQuantizationType(raw_type)
    except ValueError:
        raise GGUFFormatError(f"tensor {name} has unknown type id {raw_type}") from None
    return name, shape, qtype, offset


def open_gguf(path: str | Path) -> tuple[dict, list[TensorInfo]]:
    """`read_gguf_file`, with a missing or malformed file said in one line (LaminaError)."""
    path = Path(path)
    if not path.is_file():
        raise LaminaError(f"{path}: file not found")
    try:
        return read_gguf_file(path)
    except (ValueError, KeyError) as e:   # bad magic, truncated, unknown tensor type, ...
        raise LaminaError(f"{path}: not a readable GGUF file ({e})") from None


def read_gguf_metadata(path: str | Path) -> dict:
    """Every metadata key of a GGUF file and its value (str, int, float, bool or list)."""
    return open_gguf(path)[0]
