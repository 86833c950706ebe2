"""The device page end to end in a real headless Chromium: a running daemon (real face detector on real faces,
web server on its own thread), a real Mosquitto and the real update service. Log in, see the live frame, pick
a face, press a label key, undo one label (never learned), and watch the label reach the update service and the
page's head version move. With INFANTINO_SCREENSHOTS=docs/img the pages are saved there (README, docs)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from fixtures_device import ProjectionPipeline
from fixtures_mqtt import mqtt_broker_config
from fixtures_mqtt import wait_for as _wait_for
from fixtures_service import SERVICE_EXT
from test_service import service_config
from infantino.device.config import DeviceConfig
from infantino.device.daemon import BundleFacts, DeviceDaemon
from infantino.device.web.server import start_web
from infantino.device.web.view import DaemonView
from infantino.runtime.configfile import validate_config
from infantino.runtime.contract.head import Head
from infantino.runtime.face import FaceOptions, create_detector
from infantino.runtime.pipeline import FaceResult, FrameResult
from infantino.trainer.service import UpdateService

pytestmark = pytest.mark.mqtt
TOKEN = "nursery-token-42"


def wait_for(cond, timeout=20.0, step=0.1):
    return _wait_for(cond, timeout, step)


class DetectingPipeline(ProjectionPipeline):
    """ProjectionPipeline's embedding and head, on the faces OpenCV's Haar detector finds (all of them)."""

    def __init__(self, head):
        super().__init__(head)
        self.detector = create_detector(FaceOptions(detector="haar", largest_only=False, min_size=60))

    def predict_frame(self, frame):
        t0 = time.perf_counter()
        boxes = self.detector.detect(frame)
        t1 = time.perf_counter()
        head = self.head
        faces = []
        for b in boxes:
            x, y, w, h = b.as_tuple()
            emb = self.embed(frame[y:y + h, x:x + w])
            p = head.predict(emb[None])[0]
            faces.append(FaceResult(box=(x, y, w, h), crop_box=(x, y, w, h), prediction=p, embedding=emb))
        t2 = time.perf_counter()
        timings = {"detect": (t1 - t0) * 1e3, "preprocess": 0.0, "embed": (t2 - t1) * 1e3, "head": 0.0}
        return FrameResult(faces, timings, head.version)


def nursery_frames(real_faces, fps=10.0):
    """Two real faces side by side (scikit-image's astronaut, matplotlib's Grace Hopper), a little noise per frame."""
    a = cv2.resize(real_faces["astronaut"], (400, 400))
    g = real_faces["grace_hopper"]
    g = cv2.resize(g, (int(g.shape[1] * 400 / g.shape[0]), 400))
    base = np.concatenate([a, g], axis=1)
    rng = np.random.default_rng(0)

    def gen():
        while True:
            noise = rng.integers(-4, 5, size=base.shape, dtype=np.int16)
            yield np.clip(base.astype(np.int16) + noise, 0, 255).astype(np.uint8)
            time.sleep(1.0 / fps)

    return gen


def js_text(driver, selector: str) -> str:
    """innerText of the first element matching selector ("" if none): read in the page, so never stale."""
    return driver.execute_script("const e = document.querySelector(arguments[0]); return e ? e.innerText : ''",
                                 selector) or ""


def js_count(driver, selector: str) -> int:
    return driver.execute_script("return document.querySelectorAll(arguments[0]).length", selector)


def shot(driver, name: str, tmp_path: Path) -> Path:
    out = Path(os.environ.get("INFANTINO_SCREENSHOTS") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    p = out / name
    driver.save_screenshot(str(p))
    return p


def test_device_page_in_chromium_label_reaches_the_service_and_the_head_moves(tmp_path, mosquitto, service_head_dir,
                                                                              keypair, chrome, real_faces):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    svc = UpdateService(service_config(tmp_path, mosquitto, service_head_dir, keypair, min_interval_ms=100)).start()
    head = Head.from_bytes((service_head_dir / "head.infh").read_bytes())
    (tmp_path / "bundle").mkdir()
    (tmp_path / "token").write_text(TOKEN + "\n")
    cfg = validate_config(DeviceConfig, {
        "device_id": "cam-1", "fleet": "nursery", "bundle": str(tmp_path / "bundle"), "public_key": str(keypair[1]),
        "camera": {"source": 0}, "broker": mqtt_broker_config(mosquitto).model_dump(exclude_none=True, mode="json"),
        "publish": {"status_interval_s": 0.5}, "state_dir": str(tmp_path / "device-state"),
        "web": {"enabled": True, "port": 0, "token_file": str(tmp_path / "token"), "undo_window_s": 3}})
    pipe = DetectingPipeline(head)
    d = DeviceDaemon(cfg, pipe, BundleFacts(SERVICE_EXT, head, 64, "browser-test"), nursery_frames(real_faces),
                     update_public_key=keypair[3], backend_name="projection").start()
    sup = threading.Thread(target=d.supervise, daemon=True)
    sup.start()
    web = start_web(cfg.web, DaemonView(d))
    try:
        assert wait_for(lambda: d.link.connected and svc.ready)
        assert wait_for(lambda: d.latest is not None and len(d.latest[0].faces) == 2), "Haar finds both faces"
        v0 = pipe.head.version

        # log in through the form (no token -> the login page)
        chrome.get(web.url + "/")
        assert wait_for(lambda: chrome.current_url.endswith("/login"))
        chrome.set_window_size(720, 520)
        shot(chrome, "device-login.png", tmp_path)
        chrome.set_window_size(1280, 1500)
        chrome.find_element(By.NAME, "token").send_keys("wrong-token" + Keys.ENTER)
        assert wait_for(lambda: "failed" in chrome.current_url)
        chrome.find_element(By.NAME, "token").send_keys(TOKEN + Keys.ENTER)
        assert wait_for(lambda: chrome.current_url.rstrip("/") == web.url)

        # the live frame is shown, with one clickable box per face, and the head version
        width = d.latest[1].shape[1]
        assert wait_for(lambda: chrome.execute_script(
            "const i = document.getElementById('frame'); return i.complete && i.naturalWidth") == width)
        assert wait_for(lambda: js_count(chrome, "#overlays .face") == 2)
        assert wait_for(lambda: js_text(chrome, "#head-version") == f"v{v0}")
        assert wait_for(lambda: js_text(chrome, "#camera-state") == "ok")

        # a label, undone within the window: it never leaves the device, so the service never learns it
        chrome.find_element(By.TAG_NAME, "body").send_keys("5")
        assert wait_for(lambda: js_count(chrome, ".sample[data-state='held']") == 1)
        chrome.find_element(By.TAG_NAME, "body").send_keys("u")
        assert wait_for(lambda: js_count(chrome, ".sample[data-state='undone']") == 1)

        # pick the right-hand face (Grace Hopper), press 4 (happy): held, then sent and acknowledged
        faces = chrome.find_elements(By.CSS_SELECTOR, "#overlays .face")
        right = max(faces, key=lambda e: e.location["x"])
        right.click()
        assert wait_for(lambda: "selected:" in js_text(chrome, "#face-info"))
        assert js_count(chrome, "#overlays .face.selected") == 1
        chrome.find_element(By.TAG_NAME, "body").send_keys("4")
        assert wait_for(lambda: js_count(chrome, ".sample[data-state='held']") == 1)
        sample = d.outbox.recent()[0]
        assert sample["label"] == "happy" and sample["state"] == "held"
        rec = d.ring.get(sample["frame_id"])
        picked = [i for i, f in enumerate(rec.faces) if f.box[0] > 350]
        assert picked  # the face clicked is the right-hand one
        shot(chrome, "device-page-held.png", tmp_path)

        # the update service learns it, publishes a signed delta, the device applies it, the page shows it
        assert wait_for(lambda: svc.counters["learned"] == 1)
        assert wait_for(lambda: pipe.head.version > v0)
        assert wait_for(lambda: js_text(chrome, "#head-version") == f"v{pipe.head.version}")
        assert wait_for(lambda: f"head v{v0} → v" in js_text(chrome, ".sample.acked"))
        assert wait_for(lambda: "applied" in js_text(chrome, "#head-events"), timeout=10)
        time.sleep(1.0)
        assert svc.counters["learned"] == 1  # the undone label was never learned
        shot(chrome, "device-page.png", tmp_path)

        # rollback needs the operator token: the button is disabled for this user
        assert not chrome.find_element(By.ID, "rollback").is_enabled()
        logs = [e for e in chrome.get_log("browser") if e["level"] == "SEVERE"]
        assert not logs, logs
    finally:
        web.stop()
        d.request_stop()
        sup.join(5)
        d.stop()
        svc.stop()
