"""The rows of `infantino-bench frames` and their interleaved rounds: our pipelines in-process, peers as subprocesses.

A round runs every frame once through every row. Our rows share a round: by default each row runs the whole set
in turn, as a camera's one pipeline does (the rows' order rotates per round); with order="frame" each frame goes
through every pipeline in rotating order. Each peer row runs the round in its own process while ours wait, and
the order alternates (even rounds: ours then peers, odd rounds: peers then ours) so a drift in load hits both
sides alike. Per row and round we keep each frame's wall time, its stages and (first round) what the row found.
"""

from __future__ import annotations

import gc
import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from infantino.runtime.face import FaceOptions, create_detector
from infantino.runtime.pipeline import Pipeline

from .framescore import Detection, labels_from_probs
from .frameset import FrameSet
from .peerproc import PeerFailed, PeerProcess
from .timing import rotation

log = logging.getLogger(__name__)

OUR_STAGES = ("detect", "preprocess", "embed", "head")


@dataclass
class FrameRow:
    """One row: an our pipeline (backend:precision + detector) or a peer (fer + haar/mtcnn), and its samples."""

    key: str
    kind: str  # "ours" or "peer"
    backend: str
    precision: Optional[str]
    detector: str
    failure: Optional[str] = None
    info: str = ""
    pipes: dict = field(default_factory=dict)  # ours: group -> Pipeline
    options: dict = field(default_factory=dict)  # ours: group -> FaceOptions
    peer: Optional[PeerProcess] = None
    total_ms: list = field(default_factory=list)  # per round: (N,) wall ms per frame
    stage_ms: list = field(default_factory=list)  # per round: {stage: (N,)}
    outputs: list = field(default_factory=list)  # first round: per frame [Detection]
    changed: int = 0  # frames whose detections differ from the first round in a later round

    @property
    def ok(self) -> bool:
        return self.failure is None


def face_options(detector: str, group: str, threads: int = 1) -> FaceOptions:
    """The runtime's defaults; independent scenes are searched each on its own (no tracking), a clip is followed."""
    return FaceOptions(detector=detector, track=group == "camera", threads=threads)


def our_row(bundle, backend, key: str, detector: str, groups: list[str]) -> FrameRow:
    """A row of ours sharing `backend` (a runtime Backend) across one Pipeline per frame group. The detector keeps
    the runtime's 1 thread: BlazeFace's small models ran no faster per camera frame on 2 (2.43 vs 2.28 ms)."""
    row = FrameRow(key=key, kind="ours", backend=backend.name, precision=backend.artifact.precision, detector=detector)
    for g in groups:
        row.options[g] = face_options(detector, g)
        row.pipes[g] = Pipeline(bundle, backend=backend, detector=create_detector(row.options[g]))
    row.info = f"{backend.describe()}; detector={detector} (scenes: track off, camera: track on)"
    return row


def peer_row(python, frames_npz, detector: str, warmup: int) -> FrameRow:
    """A fer row; a peer that cannot start keeps the row with the reason."""
    row = FrameRow(key=f"fer {detector}", kind="peer", backend="fer", precision="tflite (fer's quantized)",
                   detector=detector)
    try:
        row.peer = PeerProcess(python, frames_npz, detector, warmup=warmup)
        r = row.peer.ready
        v = r.get("versions", {})
        row.info = (f"fer {v.get('fer')}, tensorflow-cpu {v.get('tensorflow-cpu')}, opencv {v.get('opencv-python-headless')}"
                    + (f", facenet-pytorch {v.get('facenet-pytorch')}, torch {v.get('torch')}" if detector == "mtcnn"
                       else "") + f"; threads {r.get('info')}" + "".join(f"; {n}" for n in r.get("notes", [])))
    except PeerFailed as e:
        row.failure = str(e)
    return row


def reset_tracking(rows: list[FrameRow]) -> None:
    """A fresh detector for every camera pipeline: each round starts the clip without memory of the last."""
    for r in rows:
        if r.kind == "ours" and "camera" in r.pipes:
            r.pipes["camera"].detector = create_detector(r.options["camera"])


def warm_up(rows: list[FrameRow], fs: FrameSet, n: int) -> None:
    for g in ("scenes", "camera"):
        for i in fs.indices(g)[:n]:
            for r in rows:
                if r.ok and r.kind == "ours" and g in r.pipes:
                    r.pipes[g].predict_frame(fs.frames[i])
    reset_tracking(rows)


ORDERS = ("row", "frame")


def run_ours(rows: list[FrameRow], fs: FrameSet, first: bool, advance: Callable[[float], None],
             order: str = "row", round_index: int = 0) -> None:
    """One round of our rows. order="row" (default): each row runs every frame in turn, as one camera's pipeline
    does and as each fer peer does in its process; the rows take turns in an order that rotates per round.
    order="frame": every frame through every row, rows in an order that rotates per frame (each model then
    finds its weights evicted by the others' since its last turn)."""
    if order not in ORDERS:
        raise ValueError(f"unknown order {order!r}; valid: {', '.join(ORDERS)}")
    live = [r for r in rows if r.kind == "ours" and r.ok]
    n = len(fs)
    cur = {r.key: (np.zeros(n), {s: np.zeros(n) for s in OUR_STAGES}, []) for r in live}
    reset_tracking(live)

    def one(r: FrameRow, i: int) -> None:
        if not r.ok:
            return
        frame, g = fs.frames[i], str(fs.group[i])
        try:
            t0 = time.perf_counter()
            res = r.pipes[g].predict_frame(frame)
            ms = (time.perf_counter() - t0) * 1e3
        except Exception as e:  # a pipeline failing mid-run keeps its row, with the reason
            r.failure = f"{type(e).__name__}: {e}"
            return
        tot, st, out = cur[r.key]
        tot[i] = ms
        for s in OUR_STAGES:
            st[s][i] = float(res.timings.get(s, 0.0))
        out.append([Detection(tuple(int(v) for v in f.box), int(f.index)) for f in res.faces])

    gc.collect()
    gc.disable()
    try:
        if order == "frame":
            for i in range(n):
                for j in rotation(len(live), i):
                    one(live[j], i)
                advance(1)
        else:
            for j in rotation(len(live), round_index):
                for i in range(n):
                    one(live[j], i)
                advance(n / max(1, len(live)))
    finally:
        gc.enable()
    for r in live:
        if r.ok:
            tot, st, out = cur[r.key]
            st["classify"] = st["preprocess"] + st["embed"] + st["head"]
            _keep(r, tot, st, out, first)


def run_peer(row: FrameRow, first: bool) -> None:
    """One round of a peer row (in its process); a peer that fails or dies keeps its row with the reason."""
    if not row.ok:
        return
    try:
        frames = row.peer.round()
    except PeerFailed as e:
        row.failure = str(e)
        return
    tot = np.array([f["ms"] for f in frames])
    st = {"detect": np.array([f["detect_ms"] for f in frames]), "classify": np.array([f["classify_ms"] for f in frames])}
    out = [[Detection(tuple(int(v) for v in face["box"]), lab)
            for face, lab in zip(f["faces"], labels_from_probs([x["probs"] for x in f["faces"]]))] for f in frames]
    _keep(row, tot, st, out, first)


def _keep(row: FrameRow, tot: np.ndarray, st: dict, out: list, first: bool) -> None:
    row.total_ms.append(tot)
    row.stage_ms.append(st)
    if first:
        row.outputs = out
    else:
        row.changed = max(row.changed, sum(a != b for a, b in zip(row.outputs, out)))


def run_rounds(rows: list[FrameRow], fs: FrameSet, rounds: int, advance: Callable[[float], None],
               on_round: Callable[[int, str], None] = lambda k, side: None, order: str = "row") -> None:
    """`rounds` rounds, ours and the peers alternating first (see the module docstring); `order`: run_ours."""
    peers = [r for r in rows if r.kind == "peer"]
    for k in range(rounds):
        sides = ["ours", "peers"] if k % 2 == 0 else ["peers", "ours"]
        for side in sides:
            on_round(k, side)
            if side == "ours":
                run_ours(rows, fs, k == 0, advance, order=order, round_index=k)
            else:
                for p in (peers if k % 2 == 0 else peers[::-1]):
                    run_peer(p, k == 0)
                    advance(len(fs))


def close_rows(rows: list[FrameRow]) -> None:
    closed = set()
    for r in rows:
        if r.peer is not None:
            r.peer.close()
        for p in r.pipes.values():
            if id(p.backend) not in closed:
                closed.add(id(p.backend))
                p.close()
