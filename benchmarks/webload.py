"""The camera loop's frame rate with the device page open in a browser vs closed, in one interleaved run.

A real DeviceDaemon runs a compiled bundle (runtime Pipeline) on 640x480 frames of two real faces fed as fast
as it can process them (so any CPU the web side takes shows up as lost frames; BlazeFace's still-frame skip is
off, so every frame costs what a moving baby costs), with its MQTT link to a local
Mosquitto and the web app on loopback. Headless Chromium (Debian's, via Selenium) alternates between the device
page (live view polled at web.live_max_fps, status/samples/head history polled) and about:blank, phase by
phase, so load from other processes hits both alike. With `pin`, the daemon's process is held to CPU 0 and
Chromium to CPU 1, as if the browser were on the parent's phone (only the device's own cost is measured).
"""

from __future__ import annotations

import os
import resource
import stat
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from infantino.benchmarks.broker import MosquittoBroker
from infantino.benchmarks.fleet import cpu_seconds
from infantino.device.config import DeviceConfig
from infantino.device.daemon import BundleFacts, DeviceDaemon
from infantino.device.web.server import start_web
from infantino.device.web.view import DaemonView
from infantino.runtime.bundle import load_bundle
from infantino.runtime.configfile import validate_config
from infantino.runtime.pipeline import Pipeline


def nursery_frames(width: int = 640, height: int = 480, n: int = 8) -> list[np.ndarray]:
    """n slightly different frames of two real faces (scikit-image's astronaut, matplotlib's Grace Hopper)."""
    import matplotlib
    from skimage import data

    a = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)
    g = cv2.imread(str(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"))
    half = width // 2
    base = np.concatenate([cv2.resize(a, (half, height)), cv2.resize(g, (width - half, height))], axis=1)
    rng = np.random.default_rng(0)
    return [np.clip(base.astype(np.int16) + rng.integers(-4, 5, base.shape), 0, 255).astype(np.uint8)
            for _ in range(n)]


def _frames_forever(frames: list[np.ndarray]):
    def gen():
        i = 0
        while True:
            yield frames[i % len(frames)]
            i += 1
            time.sleep(0.001)  # a camera hands over frames; never a busy loop

    return gen


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _thread_cpu_s(names: tuple[str, ...]) -> float:
    """CPU seconds of this process's threads whose name starts with one of `names` (Linux /proc)."""
    return sum(cpu_seconds("self", t.native_id) for t in threading.enumerate()
               if t.name.startswith(names) and t.native_id is not None)


WEB_THREADS = ("infantino-web", "AnyIO worker")  # uvicorn's loop and the threads it runs endpoints on


def _chrome(pin_cpu: int | None, workdir: Path):
    """Headless Chromium under Selenium, pinned to one CPU through a taskset wrapper around chromedriver."""
    import shutil

    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        raise RuntimeError("needs Debian's chromium and chromium-driver (make browser)")
    if pin_cpu is not None:
        wrapper = workdir / "chromedriver-pinned"
        wrapper.write_text(f"#!/bin/sh\nexec taskset -c {pin_cpu} {driver} \"$@\"\n")
        wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
        driver = str(wrapper)
    opts = Options()
    opts.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1400"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=driver), options=opts)


def measure_web(bundle_path, public_key, *, seconds: float = 15.0, rounds: int = 3, warmup_s: float = 8.0,
                backend: str = "auto", threads: int | None = 1, detector: str = "blazeface", live_max_fps: float = 5.0,
                pin: bool = True, workdir: str | os.PathLike | None = None,
                progress: Callable[[str], None] = lambda s: None) -> dict:
    """Phases closed/open x rounds of `seconds` each; fps, CPU and JPEGs encoded per phase; the open/closed ratio."""
    work = Path(workdir or tempfile.mkdtemp(prefix="infantino-webbench-"))
    work.mkdir(parents=True, exist_ok=True)
    cpus = sorted(os.sched_getaffinity(0))
    pinned = pin and len(cpus) >= 2
    if pinned:  # before any thread starts: every thread of this process inherits CPU 0
        os.sched_setaffinity(0, {cpus[0]})
    bundle = load_bundle(bundle_path, public_key=public_key)
    broker = MosquittoBroker(work / "mosquitto", persistence=False).start()
    cfg = validate_config(DeviceConfig, {
        "device_id": "bench-web", "fleet": "bench", "bundle": str(bundle_path), "public_key": str(public_key),
        "backend": backend, "threads": threads, "face": {"detector": detector, **({"skip_still": False} if detector == "blazeface" else {})},
        "camera": {"source": 0}, "broker": {"host": broker.host, "port": broker.port},
        "state_dir": str(work / "state"), "web": {"enabled": True, "port": 0, "live_max_fps": live_max_fps}})
    pipe = Pipeline(bundle, backend=cfg.backend, face=cfg.face, threads=cfg.threads)
    frames = nursery_frames()
    facts = BundleFacts.from_bundle(bundle)
    daemon = DeviceDaemon(cfg, pipe, facts, _frames_forever(frames)).start()
    sup = threading.Thread(target=daemon.supervise, daemon=True)
    sup.start()
    web = start_web(cfg.web, DaemonView(daemon))
    live = web.app.state.live
    driver = _chrome(cpus[1] if pinned else None, work)
    rows = []
    try:
        driver.get("about:blank")
        progress(f"warm-up {warmup_s:g} s")
        time.sleep(warmup_s)
        for r in range(rounds):
            for phase in ("closed", "open"):
                driver.get(web.url + "/" if phase == "open" else "about:blank")
                time.sleep(2.0)  # the page loads (or unloads) before the phase counts
                f0, c0, e0, w0, t0 = (daemon.stats.frames, _cpu_s(), live.encoded, _thread_cpu_s(WEB_THREADS),
                                      time.monotonic())
                time.sleep(seconds)
                f1, c1, e1, w1, t1 = (daemon.stats.frames, _cpu_s(), live.encoded, _thread_cpu_s(WEB_THREADS),
                                      time.monotonic())
                row = {"round": r + 1, "phase": phase, "seconds": round(t1 - t0, 2),
                       "fps": round((f1 - f0) / (t1 - t0), 2), "process_cpu_pct": round(100 * (c1 - c0) / (t1 - t0), 1),
                       "web_threads_cpu_pct": round(100 * max(0.0, w1 - w0) / (t1 - t0), 2),
                       "jpegs_per_s": round((e1 - e0) / (t1 - t0), 2)}
                rows.append(row)
                progress(f"round {r + 1} {phase:6s}: {row['fps']:.2f} fps, {row['jpegs_per_s']:.2f} JPEG/s, "
                         f"{row['process_cpu_pct']:.0f} % CPU, web threads {row['web_threads_cpu_pct']:.1f} %")
        shown = driver.execute_script("return document.getElementById('frame').naturalWidth") if rows else 0
    finally:
        driver.quit()
        web.stop()
        daemon.request_stop()
        sup.join(5)
        daemon.stop()
        pipe.close()
        broker.stop()
    closed = [r["fps"] for r in rows if r["phase"] == "closed"]
    opened = [r["fps"] for r in rows if r["phase"] == "open"]
    fps_closed, fps_open = statistics.mean(closed), statistics.mean(opened)
    drop = 100.0 * (fps_closed - fps_open) / fps_closed if fps_closed else 0.0
    pairs = [100.0 * (c - o) / c for c, o in zip(closed, opened) if c]
    web_cpu = statistics.mean(r["web_threads_cpu_pct"] for r in rows if r["phase"] == "open")
    lat = daemon.stats.latency_ms()
    return {"bundle": facts.bundle_id, "backend": pipe.backend.name, "detector": detector,
            "frame": f"{frames[0].shape[1]}x{frames[0].shape[0]}", "live_max_fps": live_max_fps,
            "pinned": f"daemon on CPU {cpus[0]}, Chromium on CPU {cpus[1]}" if pinned else "no",
            "page_showed_frames_px": shown, "rows": rows, "fps_closed": round(fps_closed, 2),
            "fps_open": round(fps_open, 2), "fps_drop_pct": round(drop, 2),
            "fps_drop_pct_per_round": [round(p, 2) for p in pairs], "web_threads_cpu_pct_open": round(web_cpu, 2),
            "goal_pct": 5.0,
            "within_goal": drop <= 5.0, "median_latency_ms": lat}
