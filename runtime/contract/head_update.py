"""Signed head updates (full or delta) per the contract: encode on the trainer, verify and apply on the device.

Wire format: b"INFU" | u32 header length | header JSON | payload | 64-byte Ed25519 signature over all before it.
A delta carries new - base in float32 or float16; the result is defined as float32(base + delta), and
`result_sha256` is the sha256 of that result, so device and trainer agree bit for bit.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass
from typing import Literal

import numpy as np

from . import binfmt
from .errors import HeadError, SignatureError, UpdateRejected
from .head import Head
from .signing import sign, verify

UPDATE_MAGIC = b"INFU"
UPDATE_FORMAT_VERSION = 1
SIG_LEN = 64


@dataclass(frozen=True)
class HeadUpdate:
    """A parsed (not yet trusted) update: header fields, payload arrays, and the signed bytes."""

    header: dict
    arrays: list[np.ndarray]
    signed_bytes: bytes
    signature: bytes

    @property
    def kind(self) -> str:
        return self.header["kind"]

    @property
    def version(self) -> int:
        return int(self.header["version"])

    @property
    def base_version(self) -> int | None:
        b = self.header.get("base_version")
        return None if b is None else int(b)

    @property
    def extractor_id(self) -> str:
        return self.header["extractor_id"]

    def verify(self, public_key) -> None:
        """SignatureError unless the signature over header+payload checks with `public_key`."""
        verify(public_key, self.signature, self.signed_bytes)


def _header_common(head: Head, kind: str, dtype: str, compression: str, payload_len: int) -> dict:
    return {
        "format": "infantino-head-update",
        "format_version": UPDATE_FORMAT_VERSION,
        "kind": kind,
        "version": head.version,
        "extractor_id": head.extractor_id,
        "classes": list(head.classes),
        "activation": head.activation,
        "shapes": head.shapes,
        "dtype": dtype,
        "compression": compression,
        "payload_len": payload_len,
        "conformal_qhat": head.conformal_qhat,
        "coverage": head.coverage,
        "meta": head.meta,
        "created_at": time.time(),
    }


def _seal(header: dict, payload: bytes, private_key) -> bytes:
    body = binfmt.pack(UPDATE_MAGIC, header, payload)
    return body + sign(private_key, body)


def _compress(raw: bytes, compression: str) -> bytes:
    return zlib.compress(raw, 6) if compression == "zlib" else raw


def encode_full(head: Head, private_key, compression: Literal["none", "zlib"] = "none") -> bytes:
    """A signed full update carrying `head` exactly."""
    payload = _compress(binfmt.arrays_to_bytes(head.weights, "float32"), compression)
    header = _header_common(head, "full", "float32", compression, len(payload))
    header["base_version"] = None
    header["result_sha256"] = head.sha256
    return _seal(header, payload, private_key)


def delta_result(base: Head, new: Head, dtype: str = "float32") -> tuple[list[np.ndarray], Head]:
    """The delta arrays (new - base in `dtype`) and the head the device will hold after applying them."""
    deltas = [(n.astype(np.float32) - b.astype(np.float32)).astype(dtype) for b, n in zip(base.weights, new.weights)]
    result = [(b + d.astype(np.float32)).astype(np.float32) for b, d in zip(base.weights, deltas)]
    return deltas, new.replace(weights=tuple(result))


def encode_delta(base: Head, new: Head, private_key, dtype: Literal["float32", "float16"] = "float32",
                 compression: Literal["none", "zlib"] = "none") -> tuple[bytes, Head]:
    """A signed delta from `base` to `new`, and the exact head it produces on the device (publish that one)."""
    if base.shapes != new.shapes:
        raise HeadError(f"delta needs equal shapes, base {base.shapes} vs new {new.shapes}")
    if new.version <= base.version:
        raise HeadError(f"delta must move forward: base {base.version}, new {new.version}")
    deltas, result = delta_result(base, new, dtype)
    payload = _compress(binfmt.arrays_to_bytes(deltas, dtype), compression)
    header = _header_common(result, "delta", dtype, compression, len(payload))
    header["base_version"] = base.version
    header["result_sha256"] = result.sha256
    return _seal(header, payload, private_key), result


def parse_update(data: bytes) -> HeadUpdate:
    """Split and decode an update; UpdateRejected('corrupt', ...) if it is malformed in any way."""
    try:
        header, rest, hend = binfmt.unpack(UPDATE_MAGIC, data)
        if header.get("format_version") != UPDATE_FORMAT_VERSION:
            raise HeadError(f"unsupported update format_version {header.get('format_version')!r}")
        if header.get("kind") not in ("full", "delta"):
            raise HeadError(f"unknown update kind {header.get('kind')!r}")
        if header.get("dtype") not in ("float32", "float16"):
            raise HeadError(f"unsupported dtype {header.get('dtype')!r}")
        plen = header.get("payload_len")
        if not isinstance(plen, int) or plen < 0 or len(rest) != plen + SIG_LEN:
            raise HeadError("payload length does not match (truncated or padded message)")
        for key in ("version", "extractor_id", "shapes", "result_sha256"):
            if key not in header:
                raise HeadError(f"header misses field {key!r}")
        if not isinstance(header["version"], int):
            raise HeadError("version must be an integer")
        payload = rest[:plen]
        if header.get("compression", "none") == "zlib":
            try:
                payload = zlib.decompress(payload)
            except zlib.error as e:
                raise HeadError(f"payload does not decompress: {e}") from None
        elif header.get("compression", "none") != "none":
            raise HeadError(f"unknown compression {header.get('compression')!r}")
        arrays = binfmt.bytes_to_arrays(payload, header["shapes"], header["dtype"])
    except HeadError as e:
        raise UpdateRejected("corrupt", str(e)) from None
    data = bytes(data)
    return HeadUpdate(header=header, arrays=arrays, signed_bytes=data[: hend + plen], signature=data[hend + plen:])


def apply_update(current: Head | None, data: bytes, public_key, expected_extractor_id: str) -> Head:
    """Check an update against the contract and return the resulting head; never mutates `current`.

    Order of checks: well-formed, signature, extractor id, version > current, base == current (delta),
    shapes, finite weights, result sha256. Each failure raises UpdateRejected with its reason code.
    """
    upd = parse_update(data)
    try:
        upd.verify(public_key)
    except SignatureError as e:
        raise UpdateRejected("bad_signature", str(e)) from None
    if upd.extractor_id != expected_extractor_id:
        raise UpdateRejected(
            "wrong_extractor",
            f"update is for extractor {upd.extractor_id[:12]}…, this device runs {expected_extractor_id[:12]}…",
        )
    if current is not None and upd.version <= current.version:
        raise UpdateRejected("stale_version", f"update version {upd.version} is not newer than {current.version}")
    if upd.kind == "delta":
        if current is None:
            raise UpdateRejected("wrong_base", "delta received but no head is loaded; need a full head")
        if upd.base_version != current.version:
            raise UpdateRejected("wrong_base", f"delta is against version {upd.base_version}, device has {current.version}")
        if [list(a.shape) for a in upd.arrays] != current.shapes:
            raise UpdateRejected("wrong_shapes", f"delta shapes {upd.header['shapes']} differ from head {current.shapes}")
        weights = tuple((b + d.astype(np.float32)).astype(np.float32) for b, d in zip(current.weights, upd.arrays))
    else:
        weights = tuple(upd.arrays)
    h = upd.header
    try:
        head = Head(weights=weights, version=upd.version, extractor_id=upd.extractor_id,
                    classes=tuple(h.get("classes") or ()), activation=h.get("activation", "relu"),
                    conformal_qhat=h.get("conformal_qhat"), coverage=h.get("coverage"), meta=h.get("meta") or {})
    except HeadError as e:
        reason = "invalid_weights" if "NaN" in str(e) else "wrong_shapes"
        raise UpdateRejected(reason, str(e)) from None
    if current is not None and head.classes != current.classes:
        raise UpdateRejected("wrong_classes", f"update classes {head.classes} differ from {current.classes}")
    if head.sha256 != h["result_sha256"]:
        raise UpdateRejected("hash_mismatch", "resulting weights do not match result_sha256")
    return head
