"""What /v1/predict accepts: an encoded image body (JPEG, PNG, BMP, WebP), a multipart `image` field, or a raw BGR
frame with its width and height; everything else is a 4xx with a message, never a 500."""

from __future__ import annotations

import time
from typing import Optional

import numpy as np
from fastapi import HTTPException, Request
from starlette.datastructures import UploadFile

from infantino.runtime.images import ImageError, decode_image

IMAGE_TYPES = ("image/jpeg", "image/png", "image/bmp", "image/webp")


async def read_upload(request: Request, width: Optional[int], height: Optional[int]
                      ) -> tuple[bytes, Optional[tuple[int, int]]]:
    """(bytes, (width, height) for a raw frame or None) of the request; 415/400 for what is not an image upload."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if (width is None) != (height is None):
        raise HTTPException(400, "a raw frame needs both ?width= and ?height=")
    if ctype == "multipart/form-data":
        form = await request.form(max_files=1, max_fields=4)
        item = form.get("image") or form.get("file")
        if not isinstance(item, UploadFile):
            raise HTTPException(400, "the multipart body needs a file field named 'image'")
        data = await item.read()
        await form.close()
        return data, None
    if ctype in IMAGE_TYPES:
        if width is not None:
            raise HTTPException(400, "?width= and ?height= are for raw frames (application/octet-stream)")
        return await request.body(), None
    if ctype == "application/octet-stream":
        data = await request.body()
        return data, ((width, height) if width is not None else None)
    raise HTTPException(415, f"unsupported content type {ctype or '(none)'!r}: send {', '.join(IMAGE_TYPES)}, "
                        "multipart/form-data with an 'image' file, or application/octet-stream (an encoded image, "
                        "or a raw BGR frame with ?width=&height=)")


def decode_upload(data: bytes, raw: Optional[tuple[int, int]], max_bytes: int, max_pixels: int
                  ) -> tuple[np.ndarray, float]:
    """(BGR frame, decode ms); ImageError for anything that is not a bounded, decodable image."""
    t0 = time.perf_counter()
    frame = decode_raw(data, *raw, max_pixels) if raw else decode_image(data, max_bytes, max_pixels)
    return frame, (time.perf_counter() - t0) * 1e3


def decode_raw(data: bytes, width: int, height: int, max_pixels: int) -> np.ndarray:
    """A raw BGR24 frame of width x height; ImageError when the size does not match or is too large."""
    if width <= 0 or height <= 0 or width * height > max_pixels:
        raise ImageError(f"a {width}x{height} frame is empty or exceeds the {max_pixels}-pixel limit")
    if len(data) != width * height * 3:
        raise ImageError(f"a raw {width}x{height} BGR frame has {width * height * 3} bytes, got {len(data)}")
    return np.frombuffer(data, np.uint8).reshape(height, width, 3)
