"""The device's web app and HTTP API (device/web) on a real running daemon and a real Mosquitto: every endpoint,
bad input, auth (no token / wrong token -> 401, user token on rollback -> 403, oversized body -> 413), labels held
for the undo window (an undone label never reaches the broker), head history and rollback, /metrics, the server
thread, and `infantino-device run` serving it with a real compiled bundle."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import cv2
import numpy as np
import pytest
import yaml
from fastapi.testclient import TestClient

from fixtures_mqtt import mqtt_broker_config
from test_device_daemon import Observer, device_config, start_daemon, stop_daemon, wait_for
from infantino.device.config import DeviceConfig
from infantino.device.web.app import create_app
from infantino.device.web.server import WebServer, WebServerError, start_web
from infantino.device.web.view import DaemonView
from infantino.runtime.configfile import ConfigError, validate_config
from infantino.runtime.contract import head_update as hu
from infantino.runtime.contract.messages import SampleMessage
from infantino.runtime.contract.topics import Topics

pytestmark = pytest.mark.mqtt
T = Topics()
TOKEN, OPERATOR = "user-token-123", "operator-token-456"


@pytest.fixture()
def heads():
    from fixtures_device import make_head_chain

    return make_head_chain(4)


@pytest.fixture()
def running(tmp_path, mosquitto, heads, keypair):
    """A running daemon (ProjectionPipeline, synthetic camera) with the web section enabled on loopback."""
    cfg = device_config(tmp_path, mosquitto, keypair, web={"enabled": True, "port": 0, "undo_window_s": 1.0})
    d, pipe, t = start_daemon(cfg, heads, keypair)
    assert wait_for(lambda: d.latest is not None)
    yield cfg, d, pipe
    stop_daemon(d, t)


def client(cfg, d, token=None, operator=None) -> TestClient:
    return TestClient(create_app(DaemonView(d), cfg.web, token, operator))


def jpeg(img) -> bytes:
    ok, buf = cv2.imencode(".jpg", img)
    assert ok
    return buf.tobytes()


def test_status_live_heads_metrics_and_docs_without_a_token_on_loopback(running):
    cfg, d, pipe = running
    c = client(cfg, d)
    st = c.get("/v1/status").json()
    assert st["device_id"] == "cam-1" and st["head_version"] == 0 and st["broker_connected"]
    assert st["web"] == {"live_max_fps": 5.0, "undo_window_s": 1.0, "auth": "none", "role": "operator",
                         "classes": ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]}
    assert {"embed", "head", "total"} <= set(st["latency_ms"]) and st["frames"] > 0 and st["camera"] == "ok"

    live = c.get("/v1/live").json()
    assert live["width"] == 64 and live["height"] == 48 and len(live["faces"]) == 1
    face = live["faces"][0]
    assert face["box"] == [0, 0, 64, 48] and face["label"] in face["prediction_set"]
    assert abs(sum(face["probabilities"].values()) - 1) < 1e-3
    r = c.get(live["jpeg_url"])
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    img = cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_COLOR)
    assert img.shape == (48, 64, 3)
    assert c.get("/live/1.jpg").status_code == 404  # long gone from the live view's few frames
    r = c.get("/live.jpg")  # what the page polls: the JPEG, with what it shows in X-Live
    meta = json.loads(r.headers["x-live"])
    assert r.status_code == 200 and meta["frame_id"] == int(r.headers["x-frame-id"]) >= live["frame_id"]
    assert meta["faces"][0]["box"] == [0, 0, 64, 48] and (meta["width"], meta["height"]) == (64, 48)
    assert cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_COLOR).shape == (48, 64, 3)
    assert c.get("/live.jpg", params={"since": 10 ** 9}).status_code == 204  # nothing newer than that
    assert wait_for(lambda: c.get("/live.jpg", params={"since": meta["frame_id"]}).status_code == 200)

    # rate limit: polling faster than live_max_fps encodes at most ~that many frames
    enc0, t0 = c.app.state.live.encoded, time.monotonic()
    while time.monotonic() - t0 < 1.0:
        c.get("/v1/live")
    assert c.app.state.live.encoded - enc0 <= 7

    h = c.get("/v1/heads").json()
    assert h["head_version"] == 0 and h["events"] == [] and h["previous_version"] is None

    m = c.get("/metrics")
    assert m.status_code == 200 and m.headers["content-type"].startswith("text/plain")
    text = m.text
    for name in ("infantino_frames_total", "infantino_fps", "infantino_faces_total", "infantino_samples_sent_total",
                 "infantino_updates_applied_total", "infantino_head_version 0.0", 'infantino_camera_state{state="ok"} 1.0',
                 "infantino_broker_connected 1.0", 'infantino_stage_latency_seconds_bucket{le="+Inf",stage="embed"}',
                 "infantino_live_frames_encoded_total"):
        assert name in text, name
    assert c.get("/docs").status_code == 200
    paths = c.get("/openapi.json").json()["paths"]
    assert {"/v1/predict", "/v1/label", "/v1/status", "/v1/heads", "/v1/rollback", "/metrics"} <= set(paths)
    page = c.get("/")
    assert page.status_code == 200 and "InfantinO" in page.text and c.get("/static/app.js").status_code == 200


def test_auth_tokens_cookie_and_operator_only_rollback(running):
    cfg, d, pipe = running
    c = client(cfg, d, TOKEN, OPERATOR)
    for path in ("/v1/status", "/v1/live", "/v1/heads", "/v1/samples", "/metrics", "/live.jpg"):
        r = c.get(path)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", path
        assert "token is required" in r.json()["detail"]
        r = c.get(path, headers={"Authorization": "Bearer not-the-token"})
        assert r.status_code == 401 and r.json()["detail"] == "wrong token", path
        assert c.get(path, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200, path
    assert c.get("/v1/status", headers={"Authorization": TOKEN}).status_code == 401  # not "Bearer ..."
    for path, body in (("/v1/label", {"label": "happy"}), ("/v1/rollback", None)):
        assert c.post(path, json=body).status_code == 401
    assert c.post("/v1/predict", content=jpeg(np.zeros((8, 8, 3), np.uint8)),
                  headers={"content-type": "image/jpeg"}).status_code == 401
    # rollback: the user token is not enough; the operator's is (409: nothing to roll back to yet)
    r = c.post("/v1/rollback", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 403 and "operator token" in r.json()["detail"]
    r = c.post("/v1/rollback", headers={"Authorization": f"Bearer {OPERATOR}"})
    assert r.status_code == 409 and "no previous head" in r.json()["detail"]
    assert c.get("/v1/status", headers={"Authorization": f"Bearer {OPERATOR}"}).json()["web"]["role"] == "operator"

    # the page: redirected to the login form; a wrong token is refused; the right one sets an HttpOnly cookie
    r = c.get("/", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login"
    assert "password" in c.get("/login").text
    r = c.post("/login", data={"token": "nope"}, follow_redirects=False)
    assert r.status_code == 303 and "failed" in r.headers["location"] and "set-cookie" not in r.headers
    r = c.post("/login", data={"token": TOKEN}, follow_redirects=False)
    assert r.status_code == 303 and "httponly" in r.headers["set-cookie"].lower()
    assert TOKEN not in r.headers["set-cookie"]  # an HMAC of the token, not the token
    assert "samesite=strict" in r.headers["set-cookie"].lower()
    assert c.get("/").status_code == 200 and c.get("/v1/status").json()["web"]["role"] == "user"
    assert c.post("/v1/rollback").status_code == 403
    c.cookies.clear()
    c.cookies.set("infantino_session", "forged")
    assert c.get("/v1/status").status_code == 401
    c.post("/logout")


def test_predict_accepts_images_and_raw_frames_and_refuses_bad_input_with_4xx(running):
    cfg, d, pipe = running
    c = client(cfg, d)
    img = np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    for ctype, data in (("image/jpeg", jpeg(img)), ("image/png", cv2.imencode(".png", img)[1].tobytes()),
                        ("application/octet-stream", jpeg(img))):
        r = c.post("/v1/predict", content=data, headers={"content-type": ctype})
        assert r.status_code == 200, (ctype, r.text)
        out = r.json()
        assert out["width"] == 50 and out["height"] == 40 and out["head_version"] == 0 and len(out["faces"]) == 1
        assert {"decode", "embed", "head", "total"} <= set(out["timings_ms"])
    r = c.post("/v1/predict", files={"image": ("f.png", cv2.imencode(".png", img)[1].tobytes(), "image/png")})
    assert r.status_code == 200 and r.json()["faces"][0]["box"] == [0, 0, 50, 40]
    raw = c.post("/v1/predict?width=50&height=40", content=img.tobytes(),
                 headers={"content-type": "application/octet-stream"})
    exact = c.post("/v1/predict", content=cv2.imencode(".png", img)[1].tobytes(), headers={"content-type": "image/png"})
    assert raw.status_code == 200 and raw.json()["faces"][0]["probabilities"] == exact.json()["faces"][0]["probabilities"]

    def bad(status, needle, **kw):
        r = c.post("/v1/predict", **kw)
        assert r.status_code == status and needle in r.json()["detail"], (r.status_code, r.text)

    bad(400, "not a PNG, JPEG", content=b"this is no image", headers={"content-type": "image/jpeg"})
    bad(400, "could not be decoded", content=jpeg(img)[:len(jpeg(img)) // 2], headers={"content-type": "image/jpeg"})
    bad(400, "empty image", content=b"", headers={"content-type": "image/png"})
    # a PNG header claiming 60000 x 60000 pixels is refused before anything is decoded
    bomb = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\x0dIHDR" + (60000).to_bytes(4, "big") * 2 + b"\x08\x02\x00\x00\x00"
    bad(400, "pixel limit", content=bomb, headers={"content-type": "image/png"})
    bad(400, "has 6000 bytes, got 5", content=b"12345", params={"width": 50, "height": 40},
        headers={"content-type": "application/octet-stream"})
    bad(400, "both ?width= and ?height=", content=img.tobytes(), params={"width": 50},
        headers={"content-type": "application/octet-stream"})
    bad(415, "unsupported content type", content=b"{}", headers={"content-type": "application/json"})
    bad(415, "unsupported content type", content=jpeg(img), headers={"content-type": "text/plain"})
    bad(400, "file field named 'image'", files={"other": ("x.txt", b"hello", "text/plain")})
    # over the upload limit: 413 from the declared length, and from a streamed (chunked) body alike
    bad(413, "exceeds the 8388608-byte limit", content=b"\xff" * (8 << 20 | 1), headers={"content-type": "image/jpeg"})

    def chunks():
        for _ in range(9):
            yield b"\xff" * (1 << 20)

    bad(413, "exceeds the 8388608-byte limit", content=chunks(), headers={"content-type": "image/jpeg"})
    # the small routes have a small limit
    r = c.post("/v1/label", content=b"{" + b" " * (70 << 10) + b"}", headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert c.get("/v1/status").status_code == 200  # the daemon and server live on


def test_labels_are_held_for_the_undo_window_and_an_undone_label_is_never_sent(running, mosquitto):
    cfg, d, pipe = running
    obs = Observer(mosquitto, "web-label-observer")
    c = client(cfg, d)
    try:
        def sent():
            return [SampleMessage.model_validate_json(m.payload) for m in obs.on(T.samples("cam-1"))]

        # undone within the window: never published
        r = c.post("/v1/label", json={"label": "happy", "annotator": "mum"})
        assert r.status_code == 200, r.text
        first = r.json()
        assert first["state"] == "held" and first["undo_window_s"] == 1.0 and first["labels"] == ["happy"]
        assert c.get("/v1/samples").json()[0]["state"] == "held"
        assert c.get("/v1/status").json()["samples_held"] == 1
        r = c.post(f"/v1/label/{first['sample_id']}/undo")
        assert r.status_code == 200 and r.json()["undone"]
        assert c.post(f"/v1/label/{first['sample_id']}/undo").status_code == 409

        # an ambiguous label for a chosen face of a chosen frame: sent after the window, as `labels`
        fid = c.get("/v1/live").json()["frame_id"]
        r = c.post("/v1/label", json={"labels": ["happy", "surprise"], "frame_id": fid, "face": 0})
        assert r.status_code == 200, r.text
        second = r.json()
        assert second["frame_id"] == fid and second["face"] == 0
        assert wait_for(lambda: len(sent()) == 1, timeout=5)
        s = sent()[0]
        assert s.sample_id == second["sample_id"] and s.labels == ["happy", "surprise"] and s.label is None
        assert s.frame_id == fid and len(s.embedding) == 64
        assert wait_for(lambda: c.get("/v1/samples").json()[0]["state"] == "acked")
        r = c.post(f"/v1/label/{second['sample_id']}/undo")
        assert r.status_code == 409 and "too late" in r.json()["detail"]
        states = {x["sample_id"]: x["state"] for x in c.get("/v1/samples").json()}
        assert states == {first["sample_id"]: "undone", second["sample_id"]: "acked"}

        # not undoable: sent at once
        r = c.post("/v1/label", json={"label": "sad", "undoable": False})
        assert r.json()["state"] in ("sent", "acked") and wait_for(lambda: len(sent()) == 2, timeout=5)
        time.sleep(1.2)
        assert first["sample_id"] not in {x.sample_id for x in sent()}  # the undone one never went out

        # bad requests: unknown label, both/neither of label and labels, a face or frame that is not there
        assert c.post("/v1/label", json={"label": "sleepy"}).status_code == 422
        assert "unknown label 'sleepy'" in c.post("/v1/label", json={"labels": ["happy", "sleepy"]}).json()["detail"]
        assert c.post("/v1/label", json={"label": "happy", "labels": ["sad"]}).status_code == 422
        assert c.post("/v1/label", json={}).status_code == 422
        assert c.post("/v1/label", json={"label": "happy", "nonsense": 1}).status_code == 422
        r = c.post("/v1/label", json={"label": "happy", "face": 3})
        assert r.status_code == 409 and "no face 3" in r.json()["detail"]
        r = c.post("/v1/label", json={"label": "happy", "frame_id": 10 ** 9})
        assert r.status_code == 409 and "not in the buffer" in r.json()["detail"]
        assert c.post("/v1/label", content=b"not json", headers={"content-type": "application/json"}).status_code == 422
        assert c.post("/v1/label/nope/undo").status_code == 409
    finally:
        obs.close()


def test_head_history_shows_updates_rejections_and_a_rollback_from_the_api(running, mosquitto, heads, keypair):
    cfg, d, pipe = running
    _, _, sk, _ = keypair
    obs = Observer(mosquitto, "web-heads-observer")
    c = client(cfg, d)
    try:
        obs.publish(T.fleet_head("nursery"), hu.encode_full(heads[1], sk, fleet="nursery"), retain=True)
        assert wait_for(lambda: pipe.head.version == 1)
        blob, _ = hu.encode_delta(heads[1], heads[2], sk, fleet="nursery")
        obs.publish(T.fleet_delta("nursery"), blob[:-1] + bytes([blob[-1] ^ 1]))  # bad signature
        obs.publish(T.fleet_delta("nursery"), blob)
        assert wait_for(lambda: pipe.head.version == 2)
        h = c.get("/v1/heads").json()
        assert h["head_version"] == 2 and h["previous_version"] == 1 and h["applied"] == 2
        assert h["rejections"] == {"bad_signature": 1}
        ev = [(e["event"], e["version"], e["kind"], e["reason"]) for e in h["events"]]
        assert ev[0] == ("applied", 2, "delta", None) and ("rejected", None, None, "bad_signature") in ev
        assert ("applied", 1, "full", None) in ev and h["events"][0]["source"] == T.fleet_delta("nursery")
        r = c.post("/v1/rollback")
        assert r.status_code == 200 and r.json() == {"ok": True, "message": "rolled back from v2 to v1",
                                                     "head_version": 1}
        assert pipe.head.version == 1
        h = c.get("/v1/heads").json()
        assert h["events"][0]["event"] == "rollback" and h["events"][0]["from_version"] == 2
        assert h["blocked_up_to"] == 2 and h["rollbacks"] == 1
        assert wait_for(lambda: (obs.last_status("cam-1") or {}).get("head_version") == 1)
        text = c.get("/metrics").text
        assert 'infantino_updates_rejected_total{reason="bad_signature"} 1.0' in text
        assert "infantino_rollbacks_total 1.0" in text and "infantino_head_version 1.0" in text
    finally:
        obs.close()


def test_the_server_runs_in_its_own_thread_and_refuses_a_busy_port(running):
    cfg, d, pipe = running
    srv = start_web(cfg.web, DaemonView(d))
    try:
        assert srv.port > 0 and srv._thread.name == "infantino-web"
        with urllib.request.urlopen(f"{srv.url}/v1/status", timeout=5) as r:
            assert json.loads(r.read())["device_id"] == "cam-1"
        with pytest.raises(WebServerError, match="cannot listen on 127.0.0.1"):
            WebServer(srv.app, "127.0.0.1", srv.port).start()
        frames = d.stats.frames
        assert wait_for(lambda: d.stats.frames > frames + 5)  # the camera loop runs on while the server serves
    finally:
        srv.stop()
    assert not srv._thread.is_alive()


def test_web_config_needs_a_token_off_loopback(tmp_path, keypair, monkeypatch):
    monkeypatch.delenv("INFANTINO_WEB_TOKEN", raising=False)
    monkeypatch.delenv("INFANTINO_WEB_OPERATOR_TOKEN", raising=False)
    (tmp_path / "bundle").mkdir()
    base = {"device_id": "c", "fleet": "f", "bundle": str(tmp_path / "bundle"), "public_key": str(keypair[1]),
            "camera": {"source": 0}, "state_dir": str(tmp_path / "s")}

    def cfg(**web):
        return validate_config(DeviceConfig, {**base, "web": web})

    assert cfg().web.enabled is False and cfg().web.bind == "127.0.0.1"
    assert cfg(enabled=True, bind="::1").web.tokens() == (None, None)
    with pytest.raises(ConfigError, match="web: .*bind '0.0.0.0' is not loopback: set token_file"):
        cfg(enabled=True, bind="0.0.0.0")
    (tmp_path / "tok").write_text("short\n")
    with pytest.raises(ConfigError, match="at least 8 characters"):
        cfg(enabled=True, bind="0.0.0.0", token_file=str(tmp_path / "tok"))
    (tmp_path / "tok").write_text(f"{TOKEN}\n")
    assert cfg(enabled=True, bind="0.0.0.0", token_file=str(tmp_path / "tok")).web.tokens() == (TOKEN, None)
    monkeypatch.setenv("INFANTINO_WEB_OPERATOR_TOKEN", OPERATOR)
    assert cfg(enabled=True, bind="192.0.2.1").web.tokens() == (None, OPERATOR)
    with pytest.raises(ConfigError, match="web.prot: unknown setting"):
        cfg(prot=1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_device_cli_run_serves_the_page_and_predicts_with_a_real_bundle(tmp_path, compiled_bundle, keypair,
                                                                        mosquitto, real_faces):
    """`infantino-device run` with web.enabled: the runtime Pipeline on a real compiled bundle and real faces."""
    faces = tmp_path / "faces"
    faces.mkdir()
    for name, img in real_faces.items():
        cv2.imwrite(str(faces / f"{name}.jpg"), img)
    port = _free_port()
    (tmp_path / "token").write_text(TOKEN + "\n")
    cfg = {"device_id": "cam-web", "fleet": "nursery", "bundle": str(compiled_bundle.tar),
           "public_key": str(keypair[1]), "backend": "onnxruntime", "threads": 1, "face": {"min_size": 40},
           "camera": {"source": str(faces), "reopen_delay_s": 0.05, "fps": 10},
           "broker": mqtt_broker_config(mosquitto).model_dump(exclude_none=True, mode="json"),
           "state_dir": str(tmp_path / "state"),
           "web": {"enabled": True, "bind": "127.0.0.1", "port": port, "token_file": str(tmp_path / "token")}}
    (tmp_path / "device.yaml").write_text(yaml.safe_dump(cfg))
    cli = [sys.executable, "-m", "infantino.device.cli"]
    r = subprocess.run(cli + ["run", "--config", str(tmp_path / "device.yaml"), "--check", "--skip-camera"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and f"http://127.0.0.1:{port}, token (no operator token" in r.stdout, r.stdout + r.stderr
    proc = subprocess.Popen(cli + ["run", "--config", str(tmp_path / "device.yaml")], stderr=subprocess.PIPE,
                            text=True)
    base = f"http://127.0.0.1:{port}"

    def get(path, token=TOKEN, data=None, ctype=None):
        req = urllib.request.Request(base + path, data=data, headers={"Authorization": f"Bearer {token}",
                                                                      **({"Content-Type": ctype} if ctype else {})})
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read()

    def status():
        try:
            return json.loads(get("/v1/status")[1])
        except (urllib.error.URLError, ConnectionError):
            return {}

    try:
        assert wait_for(lambda: status().get("faces", 0) > 0, timeout=60), proc.poll()
        with pytest.raises(urllib.error.HTTPError) as e:
            get("/v1/status", token="wrong-token")
        assert e.value.code == 401
        ok, buf = cv2.imencode(".jpg", real_faces["astronaut"])
        code, body = get("/v1/predict", data=buf.tobytes(), ctype="image/jpeg")
        out = json.loads(body)
        assert code == 200 and out["head_version"] == status()["head_version"] and out["faces"], out
        f = out["faces"][0]
        assert f["label"] in f["prediction_set"] and set(f["probabilities"]) >= set(f["prediction_set"])
        assert {"detect", "preprocess", "embed", "head", "decode"} <= set(out["timings_ms"])
        with pytest.raises(urllib.error.HTTPError) as e:
            get("/v1/predict", data=b"\x89PNG\r\n\x1a\nbroken", ctype="image/png")
        assert e.value.code == 400
        assert b"infantino_faces_total" in get("/metrics")[1]
    finally:
        proc.terminate()
        try:
            assert proc.wait(30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
            err = proc.stderr.read()
            proc.stderr.close()
    assert "Traceback" not in err, err[-3000:]
