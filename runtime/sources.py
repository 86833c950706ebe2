"""Frame sources: camera index (V4L2), video file, HTTP/MJPEG or RTSP URL, folder of images.

open_source(spec) returns an iterable of BGR uint8 frames. Live sources (cameras, URLs) are read by a
background thread into a small queue (oldest frame dropped when the consumer is slower, so it always sees a
fresh frame); a live source that fails or stalls (no frame for `stall_timeout` s) is reopened with bounded
exponential back-off. Files and folders are read in order and end at their end (or loop, if asked).
`Reconnecting` is the one reconnect layer: LiveSource uses it, and so does the device daemon for any source.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Union

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from .contract.errors import BackendUnavailable, InfantinoError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm")
URL_RE = re.compile(r"^(https?|rtsps?|rtmp|udp|tcp)://", re.I)


class SourceError(InfantinoError):
    """A frame source cannot be opened or gave up after its retries."""


class SourceConfig(BaseModel):
    """Where frames come from and how hard to try when the source fails."""

    model_config = ConfigDict(extra="forbid")

    spec: Union[int, str] = Field(description="camera index, /dev/videoN, video file, http(s)/rtsp URL or folder")
    reopen: bool = Field(default=True, description="reopen a live source that fails or stalls")
    backoff_initial: float = Field(default=0.5, gt=0, description="first reopen delay (s); doubles each failure")
    backoff_max: float = Field(default=10.0, gt=0, description="upper bound of the reopen delay (s)")
    max_retries: Optional[int] = Field(default=None, ge=0, description="consecutive failed (re)opens before "
                                       "giving up with SourceError; None = keep trying")
    stall_timeout: float = Field(default=5.0, gt=0, description="seconds without a frame = stalled")
    open_timeout: float = Field(default=10.0, gt=0, description="seconds to wait for a live source to open")
    queue_size: int = Field(default=2, ge=1, description="frames buffered from a live source")
    drop_old: bool = Field(default=True, description="live: drop the oldest buffered frame when full")
    loop: bool = Field(default=False, description="files and folders: start again at the end")
    width: Optional[int] = Field(default=None, ge=1, description="camera capture width")
    height: Optional[int] = Field(default=None, ge=1, description="camera capture height")
    fps: Optional[float] = Field(default=None, gt=0, description="camera capture rate")


def _cv2():
    try:
        import cv2  # optional: in the device extra, not the base install
    except ImportError as e:
        raise BackendUnavailable("frame sources need OpenCV 4.x: pip install 'opencv-python-headless>=4.10,<5'") from e
    return cv2


def source_kind(spec: Union[int, str, os.PathLike]) -> str:
    """camera | url | folder | image | file, from the spec alone (files must exist)."""
    if isinstance(spec, int) or (isinstance(spec, str) and spec.isdigit()):
        return "camera"
    s = str(spec)
    if re.fullmatch(r"/dev/video\d+", s):
        return "camera"
    if URL_RE.match(s):
        return "url"
    p = Path(s)
    if p.is_dir():
        return "folder"
    if p.is_file():
        return "image" if p.suffix.lower() in IMAGE_EXTENSIONS else "file"
    raise SourceError(f"frame source {s!r} is not a camera index, URL, existing video file or folder")


def backoff_delays(config: SourceConfig, n: int) -> list[float]:
    """The first n reopen delays: initial * 2**k, capped at backoff_max."""
    return [min(config.backoff_initial * (2 ** k), config.backoff_max) for k in range(n)]


class FrameSource:
    """Iterable of BGR uint8 frames; close() (or a with-block) stops it. `stats` counts frames and reopens."""

    kind = ""

    def __init__(self, config: SourceConfig):
        self.config = config
        self.stats = {"frames": 0, "reopens": 0, "dropped": 0, "failures": 0}
        self.backoffs: list[float] = []  # reopen delays actually used, in order
        self._stop = threading.Event()

    def __iter__(self) -> Iterator[np.ndarray]:
        for frame in self._frames():
            if self._stop.is_set():
                return
            self.stats["frames"] += 1
            yield frame

    def _frames(self) -> Iterator[np.ndarray]:
        raise NotImplementedError

    def read(self) -> Optional[np.ndarray]:
        """Next frame, or None at the end (convenience for loops that do not iterate)."""
        if not hasattr(self, "_it"):
            self._it = iter(self)
        return next(self._it, None)

    def close(self) -> None:
        self._stop.set()

    @property
    def closed(self) -> bool:
        return self._stop.is_set()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.config.spec!r} {self.stats}>"


class FolderSource(FrameSource):
    """Images of a folder in name order (unreadable files are skipped with a warning)."""

    kind = "folder"

    def __init__(self, config: SourceConfig):
        super().__init__(config)
        root = Path(str(config.spec))
        self.files = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not self.files:
            raise SourceError(f"folder {root} holds no images ({', '.join(IMAGE_EXTENSIONS)})")

    def _frames(self):
        cv2 = _cv2()
        while not self._stop.is_set():
            for p in self.files:
                if self._stop.is_set():
                    return
                img = cv2.imread(str(p), cv2.IMREAD_COLOR)
                if img is None:
                    log.warning("skipping unreadable image %s", p)
                    self.stats["failures"] += 1
                    continue
                yield img
            if not self.config.loop:
                return


class ImageSource(FolderSource):
    """One image file (e.g. for a quick test); loops if asked."""

    kind = "image"

    def __init__(self, config: SourceConfig):
        FrameSource.__init__(self, config)
        self.files = [Path(str(config.spec))]


class VideoFileSource(FrameSource):
    """A video file read frame by frame in order; ends at the end of the file (or loops)."""

    kind = "file"

    def __init__(self, config: SourceConfig):
        super().__init__(config)
        cap = self._open()
        cap.release()

    def _open(self):
        cv2 = _cv2()
        cap = cv2.VideoCapture(str(self.config.spec))
        if not cap.isOpened():
            raise SourceError(f"cannot open video file {self.config.spec} (unsupported codec or corrupt file)")
        return cap

    def _frames(self):
        while not self._stop.is_set():
            cap = self._open()
            n = 0
            try:
                while not self._stop.is_set():
                    ok, frame = cap.read()
                    if not ok or frame is None:
                        break
                    n += 1
                    yield frame
            finally:
                cap.release()
            if not self.config.loop or n == 0:
                return


class _Failure:
    def __init__(self, why: str):
        self.why = why


_OPENED = object()
_ENDED = object()


class Reconnecting(FrameSource):
    """The one reconnect layer: frames from `opener()` (any iterable of frames), read by a background thread into
    a small queue; a failure or stall (no frame for `stall_timeout` s) reopens it with bounded exponential back-off,
    and an end reopens it when `reopen_on_end`. `state` says where it is (opening/ok/reopening/ended/failed);
    `on_event(text)` hears every failure, stall and end (the device daemon journals them).
    """

    kind = "live"

    def __init__(self, config: SourceConfig, opener: Callable[[], Iterable], *, reopen_on_end: bool = False,
                 on_event: Optional[Callable[[str], None]] = None):
        super().__init__(config)
        self.opener = opener
        self.reopen_on_end = reopen_on_end
        self.on_event = on_event
        self.state = "opening"
        self._readers: list[threading.Thread] = []

    def _reader(self, stop: threading.Event, q: "queue.Queue") -> None:
        """Thread body: open, then read frames into q until told to stop, the source ends or it fails."""
        src = None
        try:
            src = self.opener()
            q.put(_OPENED)
            for frame in src:
                if stop.is_set():
                    return
                if frame is not None:
                    self._put(q, frame, stop)
            q.put(_ENDED)
        except Exception as e:  # any failure of a camera/stream/iterable is a reason to reopen, never a crash
            q.put(_Failure(str(e) if isinstance(e, SourceError) else f"{type(e).__name__}: {e}"))
        finally:
            close = getattr(src, "close", None)
            if callable(close):
                try:
                    close()
                except Exception:  # a generator still running in an abandoned (stalled) reader
                    pass

    def _put(self, q: "queue.Queue", frame, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                q.put_nowait(frame)
                return
            except queue.Full:
                if self.config.drop_old:
                    try:
                        q.get_nowait()
                        self.stats["dropped"] += 1
                    except queue.Empty:
                        pass
                else:
                    time.sleep(0.005)

    def _event(self, text: str) -> None:
        log.warning("source %r %s", self.config.spec, text)
        if self.on_event is not None:
            self.on_event(text)

    def _frames(self):
        c = self.config
        failures = 0
        while not self._stop.is_set():
            stop = threading.Event()
            q: queue.Queue = queue.Queue(maxsize=c.queue_size + 1)
            t = threading.Thread(target=self._reader, args=(stop, q), daemon=True,
                                 name=f"infantino-source-{self.kind}")
            t.start()
            self._readers = [r for r in self._readers if r.is_alive()] + [t]
            self._reader_stop = stop
            why = None
            timeout = c.open_timeout + c.stall_timeout
            try:
                while not self._stop.is_set():
                    try:
                        item = q.get(timeout=min(timeout, 0.25))
                    except queue.Empty:
                        timeout -= 0.25
                        if timeout <= 0:
                            why = f"stalled: no frame for {c.stall_timeout:g} s"
                            break
                        continue
                    if isinstance(item, _Failure):
                        why = item.why
                        break
                    if item is _ENDED:
                        break
                    timeout = c.stall_timeout
                    if item is _OPENED:
                        continue
                    failures = 0
                    self.state = "ok"
                    yield item
            finally:
                stop.set()  # the reader releases its source when its current read returns
            if self._stop.is_set():
                return
            if why is None:  # ended
                if not self.reopen_on_end:
                    self.state = "ended"
                    return
                self._event(f"ended; reopening in {c.backoff_initial:g} s")
                self.state = "reopening"
                if self._stop.wait(c.backoff_initial):
                    return
                continue
            failures += 1
            self.stats["failures"] += 1
            if not c.reopen or (c.max_retries is not None and failures > c.max_retries):
                self.state = "failed"
                raise SourceError(f"source {c.spec!r} failed ({why}) after {failures - 1} reopen attempt(s)")
            delay = backoff_delays(c, failures)[-1]
            self.backoffs.append(delay)
            self.state = "reopening"
            self._event(f"{why}; reopening in {delay:.2f} s (attempt {failures})")
            if self._stop.wait(delay):
                return
            self.stats["reopens"] += 1

    def close(self) -> None:
        super().close()
        stop = getattr(self, "_reader_stop", None)
        if stop is not None:
            stop.set()
        for r in self._readers:
            r.join(timeout=0.5)


def _open_capture(config: SourceConfig, kind: str):
    cv2 = _cv2()
    c = config
    if kind == "camera":
        spec = c.spec
        index = int(spec) if isinstance(spec, int) or str(spec).isdigit() else int(str(spec)[len("/dev/video"):])
        api = cv2.CAP_V4L2 if sys.platform.startswith("linux") else cv2.CAP_ANY
        cap = cv2.VideoCapture(index, api)
        if cap.isOpened():
            for prop, val in ((cv2.CAP_PROP_FRAME_WIDTH, c.width), (cv2.CAP_PROP_FRAME_HEIGHT, c.height),
                              (cv2.CAP_PROP_FPS, c.fps)):
                if val:
                    cap.set(prop, float(val))
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        return cap
    params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(c.open_timeout * 1000),
              cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(c.stall_timeout * 1000)]
    return cv2.VideoCapture(str(c.spec), cv2.CAP_FFMPEG, params)


def capture_frames(config: SourceConfig, kind: str) -> Iterator[np.ndarray]:
    """Open a camera or stream once and yield its frames; one that ends or cannot be read raises SourceError."""
    try:
        cap = _open_capture(config, kind)
    except Exception as e:  # OpenCV may raise on bad URLs
        raise SourceError(f"open failed: {e}") from e
    try:
        if not cap.isOpened():
            raise SourceError("cannot open")
        while True:
            ok, frame = cap.read()
            if not ok or frame is None:
                raise SourceError("read failed or stream ended")
            yield frame
    finally:
        cap.release()


class CaptureSource(FrameSource):
    """A camera or stream opened once, read in the caller's thread, never reopened (for a caller that runs its
    own Reconnecting over it, as the device daemon does)."""

    def __init__(self, config: SourceConfig, kind: str):
        super().__init__(config)
        self.kind = kind

    def _frames(self):
        yield from capture_frames(self.config, self.kind)


class LiveSource(Reconnecting):
    """A camera or stream behind the one reconnect layer."""

    def __init__(self, config: SourceConfig, kind: str, on_event: Optional[Callable[[str], None]] = None):
        super().__init__(config, lambda: capture_frames(config, kind), on_event=on_event)
        self.kind = kind


def open_source(spec: Union[int, str, os.PathLike, SourceConfig], *, reconnect: bool = True,
                **options) -> FrameSource:
    """A frame source for a camera index, /dev/videoN, video file, http(s)/rtsp URL or folder of images.
    A live one reconnects by itself unless `reconnect=False` (its caller then wraps it in Reconnecting)."""
    if isinstance(spec, SourceConfig):
        config = spec.model_copy(update=options) if options else spec
    else:
        if isinstance(spec, os.PathLike):
            spec = os.fspath(spec)
        config = SourceConfig(spec=spec, **options)
    kind = source_kind(config.spec)
    if kind == "folder":
        return FolderSource(config)
    if kind == "image":
        return ImageSource(config)
    if kind == "file":
        return VideoFileSource(config)
    return LiveSource(config, kind) if reconnect else CaptureSource(config, kind)
