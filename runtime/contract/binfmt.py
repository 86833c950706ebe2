"""The small binary container used by heads and head updates: magic, JSON header, raw little-endian arrays."""

from __future__ import annotations

import hashlib
import json
import math
import struct
from typing import Sequence

import numpy as np

from .errors import HeadError

_LEN = struct.Struct("<I")
MAX_HEADER = 1 << 20


def pack(magic: bytes, header: dict, payload: bytes) -> bytes:
    """magic(4) | u32 header length | header JSON (sorted keys) | payload."""
    h = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    return magic + _LEN.pack(len(h)) + h + payload


def unpack(magic: bytes, data: bytes) -> tuple[dict, bytes, int]:
    """Inverse of pack: (header, payload, header_end_offset); HeadError names what is malformed."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise HeadError("expected bytes")
    data = bytes(data)
    if len(data) < 8 or data[:4] != magic:
        raise HeadError(f"not an infantino {magic.decode(errors='replace')} message (bad magic)")
    (n,) = _LEN.unpack_from(data, 4)
    if n > MAX_HEADER or 8 + n > len(data):
        raise HeadError("header length out of range (truncated or corrupt)")
    try:
        header = json.loads(data[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise HeadError(f"header is not valid JSON: {e}") from None
    if not isinstance(header, dict):
        raise HeadError("header must be a JSON object")
    return header, data[8 + n :], 8 + n


def arrays_to_bytes(arrays: Sequence[np.ndarray], dtype: str) -> bytes:
    """Concatenate arrays as little-endian `dtype` in C order."""
    dt = np.dtype(dtype).newbyteorder("<")
    return b"".join(np.ascontiguousarray(a, dtype=dt).tobytes() for a in arrays)


MAX_ARRAYS = 64
MAX_DIM = 1 << 20
MAX_PAYLOAD = 64 << 20  # 64 MiB: far above any head (a 64-256-7 MLP is ~70 KB)


def checked_shapes(shapes, dtype: str, max_bytes: int = MAX_PAYLOAD) -> tuple[list[tuple[int, ...]], int]:
    """(shapes as int tuples, payload bytes they need), from an untrusted header: at most MAX_ARRAYS arrays of
    1-2 positive dimensions <= MAX_DIM, needing at most `max_bytes`. Python ints, so nothing overflows."""
    if not isinstance(shapes, (list, tuple)) or not 0 < len(shapes) <= MAX_ARRAYS:
        raise HeadError(f"bad shapes in header: expected a list of 1-{MAX_ARRAYS} shapes")
    out = []
    for s in shapes:
        if (not isinstance(s, (list, tuple)) or not 1 <= len(s) <= 2
                or not all(type(d) is int and 0 < d <= MAX_DIM for d in s)):
            raise HeadError(f"bad shapes in header: {str(s)[:80]} (each 1-2 integer dimensions in 1..{MAX_DIM})")
        out.append(tuple(s))
    need = sum(math.prod(s) for s in out) * np.dtype(dtype).itemsize
    if need > max_bytes:
        raise HeadError(f"shapes need {need} bytes, more than the {max_bytes} allowed")
    return out, need


def bytes_to_arrays(payload: bytes, shapes: Sequence[Sequence[int]], dtype: str,
                    max_bytes: int = MAX_PAYLOAD) -> list[np.ndarray]:
    """Split `payload` into float32 arrays of `shapes` (checked_shapes); HeadError if sizes do not add up."""
    if dtype not in ("float32", "float16"):
        raise HeadError(f"unsupported dtype {dtype!r}")
    dt = np.dtype(dtype).newbyteorder("<")
    shapes, need = checked_shapes(shapes, dtype, max_bytes)
    if need != len(payload):
        raise HeadError(f"payload has {len(payload)} bytes, shapes need {need}")
    out, off = [], 0
    for s in shapes:
        n = math.prod(s)
        out.append(np.frombuffer(payload, dtype=dt, count=n, offset=off).reshape(s).astype(np.float32))
        off += n * dt.itemsize
    return out


def weights_sha256(arrays: Sequence[np.ndarray]) -> str:
    """sha256 over the float32 little-endian bytes of the arrays in order: the identity of a head's weights."""
    return hashlib.sha256(arrays_to_bytes(arrays, "float32")).hexdigest()
