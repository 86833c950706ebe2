"""Interleaved round-robin timing: every row runs once per iteration, in rotating order, so noise hits all alike.

On a shared machine a burst of load from another process lasts seconds; timing backend A for 10 s and then
backend B for 10 s would charge the burst to one of them. Here each iteration runs every row once (warm-up
first, then timed iterations), the start row rotates so no row always follows the same neighbour, and the
loop stops after `iters` iterations or when a `seconds` budget is spent (every row then has the same count).
A row that raises is marked failed with the reason and leaves the rotation; the others go on.
"""

from __future__ import annotations

import gc
import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np

log = logging.getLogger(__name__)

PERCENTILES = (50, 95, 99)


@dataclass
class TimedRow:
    """One thing to time: `fn()` processes one batch of `n_images` images."""

    key: str
    fn: Callable[[], object]
    n_images: int = 1
    times: list[float] = field(default_factory=list)  # seconds per call, timed iterations only
    error: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.error is None


def rotation(n: int, i: int) -> list[int]:
    """Order of the rows in iteration i: 0..n-1 rotated left by i (each row takes each position in turn)."""
    if n <= 0:
        return []
    s = i % n
    return list(range(s, n)) + list(range(0, s))


def run_interleaved(rows: Sequence[TimedRow], *, warmup: int = 3, iters: Optional[int] = None,
                    seconds: Optional[float] = None, min_iters: int = 3,
                    on_iteration: Optional[Callable[[int, float], None]] = None,
                    clock: Callable[[], float] = time.perf_counter, collect: bool = True) -> int:
    """Warm up then time `rows` round-robin; returns the number of timed iterations.

    Stops after `iters` iterations, or once `seconds` have elapsed in the timed phase and every live row has
    at least `min_iters` samples (with both, whichever comes first). Garbage collection is paused while
    timing so a collection cycle is not charged to whichever row happened to trigger it (`collect`: run a full
    collection first, which takes a second in a process holding torch and friends).
    """
    if iters is None and seconds is None:
        raise ValueError("give iters or seconds")
    if iters is not None and iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    if seconds is not None and seconds <= 0:
        raise ValueError(f"seconds must be > 0, got {seconds}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    rows = list(rows)
    for i in range(warmup):
        for j in rotation(len(rows), i):
            _call(rows[j], None, clock)
    if collect:
        gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    done = 0
    start = clock()
    try:
        while True:
            live = [r for r in rows if r.ok]
            if not live:
                break
            if iters is not None and done >= iters:
                break
            if seconds is not None and clock() - start >= seconds and done >= min_iters:
                break
            for j in rotation(len(rows), done):
                if rows[j].ok:
                    _call(rows[j], rows[j].times, clock)
            done += 1
            if on_iteration is not None:
                on_iteration(done, clock() - start)
    finally:
        if was_enabled:
            gc.enable()
    return done


def _call(row: TimedRow, sink: Optional[list], clock) -> None:
    if not row.ok:
        return
    try:
        t0 = clock()
        row.fn()
        dt = clock() - t0
    except Exception as e:  # a backend failing mid-run keeps its row, with the reason
        row.error = f"{type(e).__name__}: {e}"
        log.warning("row %s failed while timing: %s", row.key, row.error)
        return
    if sink is not None:
        sink.append(dt)


def summarize(times_s: Sequence[float], n_images: int = 1) -> dict:
    """Latency statistics in ms per batch and per image, and throughput (images/s from the mean)."""
    t = np.asarray(times_s, dtype=np.float64)
    if t.size == 0:
        return {"n": 0}
    ms = t * 1000.0
    out = {"n": int(t.size), "mean_ms": float(ms.mean()), "std_ms": float(ms.std()),
           "min_ms": float(ms.min()), "max_ms": float(ms.max())}
    for p in PERCENTILES:
        v = float(np.percentile(ms, p))
        out[f"p{p}_ms"] = v
        out[f"p{p}_ms_per_image"] = v / n_images
    out["images_per_s"] = float(n_images / t.mean())
    return out


def wait_until(cond: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    """Poll `cond` every `step` s until it is true or `timeout` s have passed; its last answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return cond()
