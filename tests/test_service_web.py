"""The update service's fleet page, JSON API and /metrics (issue 12, part 3) on a real uvicorn, with a real
Mosquitto, a device's retained status and real samples: what an operator of many cameras sees, and its auth."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request

import pytest

from fixtures_mqtt import mqtt_broker_config, wait_for
from fixtures_service import service_sample
from infantino.benchmarks.broker import free_port
from infantino.runtime.configfile import ConfigError, validate_config
from infantino.runtime.contract.messages import StatusMessage
from infantino.runtime.contract.topics import Topics
from infantino.runtime.mqtt import MqttLink
from infantino.trainer.service import TrainerServiceConfig, UpdateService
from test_service import service_dict

pytestmark = pytest.mark.mqtt
T = Topics()


def _get(url: str, token: str | None = None, cookie: str | None = None) -> tuple[int, str, dict]:
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    if cookie:
        req.add_header("Cookie", cookie)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(), dict(e.headers)


def _service(tmp_path, mosquitto, head_dir, keypair, **web) -> tuple[UpdateService, str]:
    port = free_port()
    data = service_dict(tmp_path, mosquitto, head_dir, keypair, web={"enabled": True, "port": port, **web})
    svc = UpdateService(validate_config(TrainerServiceConfig, data)).start()
    assert wait_for(lambda: svc.web.started and svc.ready, 15)
    return svc, f"http://127.0.0.1:{port}"


def test_fleet_page_shows_devices_history_and_metrics(tmp_path, mosquitto, service_head_dir, keypair):
    svc, base = _service(tmp_path, mosquitto, service_head_dir, keypair)
    dev = MqttLink(mqtt_broker_config(mosquitto), "infantino-device-cam-1", clean_start=True).start()
    try:
        assert dev.wait_connected(5)
        status = StatusMessage(device_id="cam-1", state="online", head_version=3, fps=9.5, camera="ok",
                               rejections={"bad_signature": 2})
        dev.publish(T.status("cam-1"), status.model_dump_json(), qos=1, retain=True)
        v0 = svc.fleets["nursery"].state.published.version
        for i in range(3):
            dev.publish(T.samples("cam-1"), service_sample(i).model_dump_json(), qos=1)
        assert wait_for(lambda: svc.fleets["nursery"].state.published.version > v0 and "cam-1" in svc.device_status)
        code, body, _ = _get(base + "/v1/fleets")
        fleet = json.loads(body)["fleets"][0]
        assert code == 200 and fleet["fleet"] == "nursery" and fleet["samples_learned"] >= 3
        assert fleet["devices"][0]["device_id"] == "cam-1" and fleet["devices"][0]["online"]
        assert fleet["devices"][0]["rejections"] == {"bad_signature": 2}
        assert fleet["history"][0]["version"] == fleet["published_version"] and not fleet["history"][0]["held_back"]
        code, page, _ = _get(base + "/")
        assert code == 200 and "Fleet nursery" in page and "cam-1" in page and "bad_signature: 2" in page
        assert "<img" not in page  # statuses and figures only, never an image
        code, metrics, headers = _get(base + "/metrics")
        assert code == 200 and headers["content-type"].startswith("text/plain")
        assert 'infantino_service_samples_total{fleet="nursery",outcome="learned"} 3.0' in metrics
        assert 'infantino_service_devices{fleet="nursery",state="online"} 1.0' in metrics
        assert "infantino_service_learn_one_seconds_count" in metrics
        assert f'infantino_service_head_version{{fleet="nursery"}} {float(fleet["published_version"])}' in metrics
        code, spec, _ = _get(base + "/openapi.json")
        assert code == 200 and "/v1/fleets" in json.loads(spec)["paths"]
    finally:
        dev.stop()
        svc.stop()


def test_a_token_guards_every_endpoint(tmp_path, mosquitto, service_head_dir, keypair):
    (tmp_path / "token").write_text("s3cret-token\n")
    svc, base = _service(tmp_path, mosquitto, service_head_dir, keypair, token_file=str(tmp_path / "token"))
    try:
        for path in ("/v1/fleets", "/metrics", "/"):
            assert _get(base + path)[0] == 401, path
            assert _get(base + path, token="wrong")[0] == 401, path
            assert _get(base + path, token="s3cret-token")[0] == 200, path
        # the login form sets an http-only cookie the page then accepts
        form = urllib.parse.urlencode({"token": "s3cret-token"}).encode()
        req = urllib.request.Request(base + "/login", data=form, method="POST")

        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *a, **k):
                return None

        opener = urllib.request.build_opener(NoRedirect)
        with pytest.raises(urllib.error.HTTPError) as e:
            opener.open(req, timeout=10)
        assert e.value.code == 303
        cookie = e.value.headers["set-cookie"].split(";")[0]
        assert "HttpOnly" in e.value.headers["set-cookie"]
        assert _get(base + "/", cookie=cookie)[0] == 200
        bad = urllib.request.Request(base + "/login", data=urllib.parse.urlencode({"token": "x"}).encode())
        with pytest.raises(urllib.error.HTTPError) as e:
            opener.open(bad, timeout=10)
        assert e.value.code == 401
    finally:
        svc.stop()


def test_a_lan_bind_needs_a_token(tmp_path, mosquitto, service_head_dir, keypair, monkeypatch):
    monkeypatch.delenv("INFANTINO_SERVICE_TOKEN", raising=False)
    data = service_dict(tmp_path, mosquitto, service_head_dir, keypair, web={"enabled": True, "bind": "0.0.0.0"})
    with pytest.raises(ConfigError, match="not loopback: set web.token_file"):
        validate_config(TrainerServiceConfig, data)
    monkeypatch.setenv("INFANTINO_SERVICE_TOKEN", "t")
    assert validate_config(TrainerServiceConfig, data).web.bind == "0.0.0.0"
