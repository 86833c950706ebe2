"""The small binary container used by heads and head updates: magic, JSON header, raw little-endian arrays."""

from __future__ import annotations

import hashlib
import json
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


def bytes_to_arrays(payload: bytes, shapes: Sequence[Sequence[int]], dtype: str) -> list[np.ndarray]:
    """Split `payload` into arrays of `shapes`; HeadError if the sizes do not add up exactly."""
    dt = np.dtype(dtype).newbyteorder("<")
    try:
        shapes = [tuple(int(d) for d in s) for s in shapes]
    except (TypeError, ValueError):
        raise HeadError(f"bad shapes in header: {shapes!r}") from None
    if any(d <= 0 for s in shapes for d in s):
        raise HeadError(f"bad shapes in header: {shapes!r}")
    need = sum(int(np.prod(s)) for s in shapes) * dt.itemsize
    if need != len(payload):
        raise HeadError(f"payload has {len(payload)} bytes, shapes need {need}")
    out, off = [], 0
    for s in shapes:
        n = int(np.prod(s)) * dt.itemsize
        out.append(np.frombuffer(payload, dtype=dt, count=n // dt.itemsize, offset=off).reshape(s).astype(np.float32))
        off += n
    return out


def weights_sha256(arrays: Sequence[np.ndarray]) -> str:
    """sha256 over the float32 little-endian bytes of the arrays in order: the identity of a head's weights."""
    return hashlib.sha256(arrays_to_bytes(arrays, "float32")).hexdigest()
