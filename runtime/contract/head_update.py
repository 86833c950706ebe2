"""Signed head updates (full or delta) per the contract: encode on the trainer, verify and apply on the device.

Wire format: b"INFU" | u32 header length | header JSON | payload | 64-byte Ed25519 signature over all before it.
The device checks the size, then the signature over the raw bytes, and only then decodes (open_update); the
payload inflates to exactly the bytes the signed header's shapes need. The header names the fleet it is for.
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
from .signing import TrustedKeys, sign

UPDATE_MAGIC = b"INFU"
UPDATE_FORMAT_VERSION = 2  # 2: bound to a fleet; signature checked before parsing
SIG_LEN = 64


@dataclass(frozen=True)
class UpdateLimits:
    """Bounds checked before any work: the message on the wire, and the weights it may inflate to."""

    max_bytes: int = 4 << 20  # an update on the wire (a 64-256-7 float32 head is ~70 KB)
    max_inflated: int = 16 << 20  # its payload after decompression (also bounded by the signed shapes)


@dataclass(frozen=True)
class HeadUpdate:
    """An update whose signature checked out, decoded once: header fields, payload arrays, the signing key."""

    header: dict
    arrays: list[np.ndarray]
    key_id: str = ""

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

    @property
    def fleet(self) -> str:
        return self.header["fleet"]

    @property
    def created_at(self) -> float | None:
        c = self.header.get("created_at")
        return float(c) if isinstance(c, (int, float)) and not isinstance(c, bool) else None


def _header_common(head: Head, kind: str, dtype: str, compression: str, payload_len: int, fleet: str) -> dict:
    if not isinstance(fleet, str) or not fleet:
        raise HeadError("an update must be bound to a fleet (fleet='...')")
    return {
        "format": "infantino-head-update",
        "format_version": UPDATE_FORMAT_VERSION,
        "fleet": fleet,
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


def encode_full(head: Head, private_key, *, fleet: str, compression: Literal["none", "zlib"] = "none") -> bytes:
    """A signed full update carrying `head` exactly, for the devices of `fleet` only."""
    payload = _compress(binfmt.arrays_to_bytes(head.weights, "float32"), compression)
    header = _header_common(head, "full", "float32", compression, len(payload), fleet)
    header["base_version"] = None
    header["result_sha256"] = head.sha256
    return _seal(header, payload, private_key)


def delta_result(base: Head, new: Head, dtype: str = "float32") -> tuple[list[np.ndarray], Head]:
    """The delta arrays (new - base in `dtype`) and the head the device will hold after applying them."""
    deltas = [(n.astype(np.float32) - b.astype(np.float32)).astype(dtype) for b, n in zip(base.weights, new.weights)]
    result = [(b + d.astype(np.float32)).astype(np.float32) for b, d in zip(base.weights, deltas)]
    return deltas, new.replace(weights=tuple(result))


def encode_delta(base: Head, new: Head, private_key, *, fleet: str, dtype: Literal["float32", "float16"] = "float32",
                 compression: Literal["none", "zlib"] = "none") -> tuple[bytes, Head]:
    """A signed delta from `base` to `new` for `fleet`, and the exact head it produces on the device (publish
    that one)."""
    if base.shapes != new.shapes:
        raise HeadError(f"delta needs equal shapes, base {base.shapes} vs new {new.shapes}")
    if new.version <= base.version:
        raise HeadError(f"delta must move forward: base {base.version}, new {new.version}")
    deltas, result = delta_result(base, new, dtype)
    payload = _compress(binfmt.arrays_to_bytes(deltas, dtype), compression)
    header = _header_common(result, "delta", dtype, compression, len(payload), fleet)
    header["base_version"] = base.version
    header["result_sha256"] = result.sha256
    return _seal(header, payload, private_key), result


def open_update(data: bytes, keys, limits: UpdateLimits = UpdateLimits()) -> HeadUpdate:
    """Size, then signature over the raw bytes, then decode (once): nothing of an unsigned message is parsed,
    inflated or allocated. `keys`: a public key, a list of them, or signing.TrustedKeys. UpdateRejected with
    reason too_large | corrupt | bad_signature."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise UpdateRejected("corrupt", "an update must be bytes")
    data = bytes(data)
    if len(data) > limits.max_bytes:
        raise UpdateRejected("too_large", f"update of {len(data)} bytes exceeds the {limits.max_bytes}-byte limit")
    if len(data) < 8 + SIG_LEN or data[:4] != UPDATE_MAGIC:
        raise UpdateRejected("corrupt", "not an infantino head update (bad magic or too short)")
    body, signature = data[:-SIG_LEN], data[-SIG_LEN:]
    try:
        kid = TrustedKeys.of(keys).verify(signature, body)
    except SignatureError as e:
        raise UpdateRejected("bad_signature", str(e)) from None
    try:
        header, arrays = _decode(body, limits)
    except HeadError as e:  # signed but malformed: a bug or a compromised key, never a crash
        raise UpdateRejected("corrupt", str(e)) from None
    return HeadUpdate(header=header, arrays=arrays, key_id=kid)


def _decode(body: bytes, limits: UpdateLimits) -> tuple[dict, list[np.ndarray]]:
    """Header checks, then the payload inflated to exactly what the header's shapes need (bounded)."""
    header, payload, _ = binfmt.unpack(UPDATE_MAGIC, body)
    if header.get("format_version") != UPDATE_FORMAT_VERSION:
        raise HeadError(f"unsupported update format_version {header.get('format_version')!r}")
    if header.get("kind") not in ("full", "delta"):
        raise HeadError(f"unknown update kind {header.get('kind')!r}")
    dtype = header.get("dtype")
    if dtype not in ("float32", "float16"):
        raise HeadError(f"unsupported dtype {dtype!r}")
    for key, types in (("version", int), ("extractor_id", str), ("fleet", str), ("result_sha256", str),
                       ("payload_len", int)):
        if type(header.get(key)) is not types:
            raise HeadError(f"header field {key!r} is missing or not a{'n integer' if types is int else ' string'}")
    if header["version"] < 0 or not (header.get("base_version") is None or type(header["base_version"]) is int):
        raise HeadError("version / base_version must be non-negative integers")
    if header["payload_len"] != len(payload):
        raise HeadError("payload length does not match (truncated or padded message)")
    shapes, need = binfmt.checked_shapes(header.get("shapes"), dtype, limits.max_inflated)
    compression = header.get("compression", "none")
    if compression == "zlib":
        payload = _inflate(payload, need)
    elif compression != "none":
        raise HeadError(f"unknown compression {compression!r}")
    return header, binfmt.bytes_to_arrays(payload, shapes, dtype, limits.max_inflated)


def _inflate(payload: bytes, need: int) -> bytes:
    """zlib-inflate to exactly `need` bytes; never produces more than need + 1 bytes, however it was crafted."""
    d = zlib.decompressobj()
    try:
        out = d.decompress(payload, need + 1)
    except zlib.error as e:
        raise HeadError(f"payload does not decompress: {e}") from None
    if len(out) != need or d.unconsumed_tail or not d.eof or d.unused_data:
        raise HeadError(f"payload does not inflate to the {need} bytes its shapes need")
    return out


def build_head(current: Head | None, upd: HeadUpdate, expected_extractor_id: str, fleet: str | None = None) -> Head:
    """The head a verified update produces on top of `current`; never mutates `current`.

    Checks, in order: fleet, extractor id, version > current, base == current (delta), shapes, finite weights,
    classes, result sha256. Each failure raises UpdateRejected with its reason code.
    """
    if fleet is not None and upd.fleet != fleet:
        raise UpdateRejected("wrong_fleet", f"update is for fleet {upd.fleet!r}, this device is in {fleet!r}")
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
    except (TypeError, ValueError) as e:  # a signed header with malformed optional fields
        raise UpdateRejected("corrupt", f"header field malformed: {e}") from None
    if current is not None and head.classes != current.classes:
        raise UpdateRejected("wrong_classes", f"update classes {head.classes} differ from {current.classes}")
    if head.sha256 != h["result_sha256"]:
        raise UpdateRejected("hash_mismatch", "resulting weights do not match result_sha256")
    return head


def apply_update(current: Head | None, data: bytes, keys, expected_extractor_id: str, fleet: str | None = None,
                 limits: UpdateLimits = UpdateLimits()) -> Head:
    """open_update + build_head: the head `data` produces on top of `current` (UpdateRejected otherwise)."""
    return build_head(current, open_update(data, keys, limits), expected_extractor_id, fleet)
