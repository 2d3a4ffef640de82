"""Reading safetensors headers without loading tensors.

A file is an 8-byte little-endian header length, a JSON header naming each tensor's dtype,
shape and ``[begin, end)`` offsets into the data that follows, then the data. The data must be
covered exactly: no overlaps, no holes, nothing past the end of the file.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiln.errors import InvalidInput

DTYPE_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E4M3": 8, "F8_E5M2": 8, "F8_E8M0": 8,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
    "I32": 32, "U32": 32, "F32": 32,
    "I64": 64, "U64": 64, "F64": 64, "C64": 64,
    "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}
MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass(frozen=True)
class Header:
    """What a safetensors file holds, from its header."""

    path: Path
    tensors: dict[str, Tensor]
    metadata: dict[str, str]
    data_bytes: int


def _bad(path: Path, why: str) -> InvalidInput:
    return InvalidInput(f"{path.name} is not a valid safetensors file: {why}")


def _tensor(path: Path, name: str, entry: Any, data_bytes: int) -> Tensor:
    if not isinstance(entry, dict):
        raise _bad(path, f"entry {name!r} is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in DTYPE_BITS:
        raise _bad(path, f"tensor {name!r} has unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise _bad(path, f"tensor {name!r} has a bad shape {shape!r}")
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)):
        raise _bad(path, f"tensor {name!r} has bad data_offsets {offsets!r}")
    begin, end = offsets
    if not 0 <= begin <= end <= data_bytes:
        raise _bad(path, f"tensor {name!r} spans [{begin}, {end}) outside the "
                         f"{data_bytes} data bytes")
    bits = math.prod(shape) * DTYPE_BITS[dtype]
    if bits % 8 or end - begin != bits // 8:
        raise _bad(path, f"tensor {name!r} ({dtype} {shape}) needs {bits / 8:g} bytes, "
                         f"its offsets give {end - begin}")
    return Tensor(name, dtype, tuple(shape), begin, end)


def read_header(path: Path) -> Header:
    """Parse and check the header of ``path``; raises :class:`InvalidInput` when malformed."""
    size = path.stat().st_size
    with path.open("rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise _bad(path, f"only {size} bytes")
        (length,) = struct.unpack("<Q", prefix)
        if length > MAX_HEADER or 8 + length > size:
            raise _bad(path, f"header length {length} does not fit a file of {size} bytes")
        raw = f.read(length)
    try:
        header = json.loads(raw)
    except ValueError as e:
        raise _bad(path, f"header is not JSON ({e})") from None
    if not isinstance(header, dict):
        raise _bad(path, "header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise _bad(path, "__metadata__ must map strings to strings")
    data_bytes = size - 8 - length
    tensors = {name: _tensor(path, name, entry, data_bytes) for name, entry in header.items()}
    position = 0
    for t in sorted(tensors.values(), key=lambda t: (t.begin, t.end)):
        if t.begin != position:
            what = "overlaps the previous tensor" if t.begin < position else "leaves a hole"
            raise _bad(path, f"tensor {t.name!r} at offset {t.begin} {what}")
        position = t.end
    if position != data_bytes:
        raise _bad(path, f"tensors cover {position} of {data_bytes} data bytes")
    return Header(path, tensors, metadata, data_bytes)
