"""Untrusted image bytes (an upload, a file) to a BGR frame: bounded before decoding, a clear error otherwise.

The pixel count is read from the PNG/JPEG/BMP/WebP header and checked before OpenCV allocates anything, so a
small file that claims 60000 x 60000 pixels (a decompression bomb) is refused, not decoded.
"""

from __future__ import annotations

import struct
from typing import Optional

import numpy as np

from .contract.errors import InfantinoError

MAX_IMAGE_BYTES = 16 << 20
MAX_PIXELS = 4096 * 4096


class ImageError(InfantinoError, ValueError):
    """Image bytes that are too large, not an image, or not decodable; the message says which."""


def image_size(data: bytes) -> Optional[tuple[int, int]]:
    """(width, height) from a PNG, JPEG, BMP or WebP header; None if the format is not recognised."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        return struct.unpack(">II", data[16:24])
    if data[:2] == b"BM" and len(data) >= 26:
        w, h = struct.unpack("<ii", data[18:26])
        return abs(w), abs(h)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP" and len(data) >= 30:
        return _webp_size(data)
    if data[:2] == b"\xff\xd8":
        return _jpeg_size(data)
    return None


def _jpeg_size(data: bytes) -> Optional[tuple[int, int]]:
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # no length field
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2:i + 4])
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a start-of-frame
            if i + 9 > len(data):
                return None
            h, w = struct.unpack(">HH", data[i + 5:i + 9])
            return w, h
        if length < 2:
            return None
        i += 2 + length
    return None


def _webp_size(data: bytes) -> Optional[tuple[int, int]]:
    chunk = data[12:16]
    if chunk == b"VP8X":
        return 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little")
    if chunk == b"VP8 " and len(data) >= 30:
        w, h = struct.unpack("<HH", data[26:30])
        return w & 0x3FFF, h & 0x3FFF
    if chunk == b"VP8L" and len(data) >= 25:
        b = int.from_bytes(data[21:25], "little")
        return 1 + (b & 0x3FFF), 1 + ((b >> 14) & 0x3FFF)
    return None


def decode_image(data: bytes, max_bytes: int = MAX_IMAGE_BYTES, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """BGR uint8 frame from PNG/JPEG/BMP/WebP bytes; ImageError for anything else, too large or corrupt."""
    import cv2  # optional: the camera install has OpenCV, the contract package does not need it

    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ImageError("image must be bytes")
    data = bytes(data)
    if not data:
        raise ImageError("empty image")
    if len(data) > max_bytes:
        raise ImageError(f"image of {len(data)} bytes exceeds the {max_bytes}-byte limit")
    size = image_size(data)
    if size is None:
        raise ImageError("not a PNG, JPEG, BMP or WebP image (or its header is damaged)")
    w, h = size
    if w <= 0 or h <= 0 or w * h > max_pixels:
        raise ImageError(f"image of {w}x{h} pixels is empty or exceeds the {max_pixels}-pixel limit")
    frame = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if frame is None or frame.ndim != 3 or frame.shape[2] != 3 or frame.shape[0] * frame.shape[1] > max_pixels:
        raise ImageError("the image could not be decoded (corrupt or truncated data)")
    return frame
