"""A peer row's process: benchmarks/peers/fer_peer.py under the peer venv's python, driven one round at a time.

The peer (the `fer` package with TensorFlow, and facenet-pytorch for MTCNN) never loads into our process or our
venv: it runs as a subprocess that reads the frames .npz once, warms up, says "ready", then times every frame
whenever asked for a round. Between rounds it waits on stdin (no CPU), so our rows and the peer's can alternate.
A peer that cannot start or dies keeps its row with the reason (PeerFailed).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import threading
import time
from collections import deque
from pathlib import Path
from typing import Optional

from infantino.runtime.contract.errors import InfantinoError

log = logging.getLogger(__name__)

PEER_SCRIPT = Path(__file__).with_name("peers") / "fer_peer.py"
DEFAULT_VENV = ".venv-peers"
HOW_TO = "run `make bench-peers` (it creates .venv-peers with fer, tensorflow-cpu and facenet-pytorch, pinned)"


class PeerFailed(InfantinoError):
    """The peer process could not start, answered nonsense or died; the message is the row's reason."""


def peer_python(explicit: Optional[str | os.PathLike] = None) -> Path:
    """The peer venv's python: --peer-python, else $INFANTINO_PEER_PYTHON, else ./.venv-peers/bin/python."""
    p = explicit or os.environ.get("INFANTINO_PEER_PYTHON") or Path(DEFAULT_VENV) / "bin" / "python"
    return Path(p)


class PeerProcess:
    """One `fer_peer.py --detector D` process; round() -> per-frame results of detect_emotions."""

    def __init__(self, python: Path, frames_npz: Path, detector: str, warmup: int = 3,
                 start_timeout_s: float = 600.0, round_timeout_s: float = 3600.0, script: Path = PEER_SCRIPT):
        self.detector = detector
        self.round_timeout_s = round_timeout_s
        self.ready: dict = {}
        if not Path(python).exists():
            raise PeerFailed(f"no peer python at {python}: {HOW_TO}")
        cmd = [str(python), str(script), "--frames", str(frames_npz), "--detector", detector, "--warmup", str(warmup)]
        env = dict(os.environ, PYTHONNOUSERSITE="1", TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
        env.pop("PYTHONPATH", None)  # nothing of ours (or of our venv) on the peer's path
        self._stderr: deque[str] = deque(maxlen=40)
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=env, bufsize=1)
        self._lines: deque[str] = deque()
        self._cond = threading.Condition()
        threading.Thread(target=self._pump, args=(self.proc.stdout, True), daemon=True).start()
        self._err_thread = threading.Thread(target=self._pump, args=(self.proc.stderr, False), daemon=True)
        self._err_thread.start()
        msg = self._receive(start_timeout_s, "start")
        if msg.get("event") == "failed":
            self.close()
            raise PeerFailed(msg.get("reason", "failed without a reason"))
        if msg.get("event") != "ready":
            self.close()
            raise PeerFailed(f"unexpected first message {msg.get('event')!r}")
        self.ready = msg

    def _pump(self, stream, protocol: bool) -> None:
        for line in stream:
            if protocol:
                with self._cond:
                    self._lines.append(line)
                    self._cond.notify_all()
            else:
                self._stderr.append(line.rstrip())
        if protocol:
            with self._cond:
                self._lines.append("")  # EOF marker
                self._cond.notify_all()

    def _receive(self, timeout_s: float, what: str) -> dict:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not self._lines:
                left = deadline - time.monotonic()
                if left <= 0:
                    self.close()
                    raise PeerFailed(f"fer-{self.detector}: no answer to {what} within {timeout_s:.0f} s")
                self._cond.wait(left)
            line = self._lines.popleft()
        if not line:
            rc = self.proc.wait(timeout=30)
            self._err_thread.join(timeout=5)  # the last lines of stderr say why
            why = f"signal {-rc}" if rc is not None and rc < 0 else f"exit code {rc}"
            tail = " | ".join(s for s in list(self._stderr)[-5:] if s)
            raise PeerFailed(f"fer-{self.detector} process ended during {what} ({why}); stderr: {tail}")
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            raise PeerFailed(f"fer-{self.detector}: not a protocol line: {line[:200]!r}") from None

    def round(self) -> list[dict]:
        """Time detect_emotions on every frame once; per frame {ms, detect_ms, classify_ms, faces}."""
        try:
            self.proc.stdin.write(json.dumps({"cmd": "round"}) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as e:
            raise PeerFailed(f"fer-{self.detector}: cannot send a round ({e})") from None
        msg = self._receive(self.round_timeout_s, "a round")
        if msg.get("event") != "round":
            raise PeerFailed(f"fer-{self.detector}: {msg.get('reason') or msg.get('event')}")
        return msg["frames"]

    def close(self) -> None:
        """Ask the peer to quit; kill it (this process only) if it does not within 10 s."""
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.proc.stdin.close()
            except (BrokenPipeError, OSError):
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
