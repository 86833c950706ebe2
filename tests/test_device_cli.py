"""`infantino-device` end to end with a real signed bundle, runtime Pipeline, real faces and a real broker:
run (config file, SIGTERM clean stop), OTA update, label (embedding published), rollback, config errors."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from fixtures_mqtt import mqtt_broker_config
from fixtures_mqtt import wait_for as _wait_for
from infantino.runtime.contract import head_update as hu
from infantino.runtime.configfile import ConfigError
from infantino.runtime.contract.messages import SampleMessage, StatusMessage
from infantino.runtime.mqtt import MqttLink
from infantino.runtime.contract.topics import Topics

T = Topics()
CLI = [sys.executable, "-m", "infantino.device.cli"]


def wait_for(cond, timeout=20.0, step=0.05):
    return _wait_for(cond, timeout, step)


def write_config(tmp_path, bundle, pub, broker, faces_dir, **over) -> Path:
    cfg = {
        "device_id": "cam-cli", "fleet": "nursery", "bundle": str(bundle), "public_key": str(pub),
        "backend": "onnxruntime", "threads": 1,
        "face": {"min_size": 40},
        "camera": {"source": str(faces_dir), "reopen_delay_s": 0.05, "stall_timeout_s": 10},
        "broker": mqtt_broker_config(broker).model_dump(exclude_none=True, mode="json"),
        "publish": {"status_interval_s": 0.5, "predictions_heartbeat_s": 0.5},
        "state_dir": str(tmp_path / "state"),
    }
    cfg.update(over)
    p = tmp_path / "device.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


@pytest.fixture()
def faces_dir(tmp_path, real_faces):
    d = tmp_path / "faces"
    d.mkdir()
    for name, img in real_faces.items():
        cv2.imwrite(str(d / f"{name}.jpg"), img)
    return d


@pytest.mark.mqtt
def test_device_cli_runs_updates_labels_and_stops_cleanly(tmp_path, compiled_bundle, keypair, mosquitto, faces_dir):
    """The compiler's real bundle, as the .tar a device would receive."""
    from infantino.device.daemon import BundleFacts
    from infantino.runtime.bundle import load_bundle

    priv, pub, sk, pk = keypair
    bundle = load_bundle(compiled_bundle.tar, public_key=pk)
    cfg_path = write_config(tmp_path, compiled_bundle.tar, pub, mosquitto, faces_dir)
    msgs = []
    obs = MqttLink(mqtt_broker_config(mosquitto), "cli-observer", clean_start=True).start()
    assert obs.wait_connected(5)
    obs.subscribe_and_wait("infantino/#", msgs.append)

    def status():
        got = [m for m in msgs if m.topic == T.status("cam-cli")]
        return json.loads(got[-1].payload) if got else {}

    proc = subprocess.Popen(CLI + ["run", "--config", str(cfg_path)], stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: status().get("state") == "online" and status().get("frames", 0) > 2), \
            (proc.poll(), status())
        st = StatusMessage.model_validate(status())
        assert st.head_version == bundle.head.version and st.backend and st.bundle_id == \
            BundleFacts.from_bundle(bundle).bundle_id
        assert {"detect", "embed", "head"} <= set(st.latency_ms)
        preds = [json.loads(m.payload) for m in msgs if m.topic == T.predictions("cam-cli")]
        assert preds and any(p["faces"] for p in preds)  # Haar finds the real faces

        # a signed full head update for this bundle's extractor is applied and reported
        rng = np.random.default_rng(0)
        new = bundle.head.replace(version=bundle.head.version + 1,
                                  weights=tuple(w + rng.normal(scale=0.01, size=w.shape).astype(np.float32)
                                                for w in bundle.head.weights))
        p = obs.publish(T.fleet_head("nursery"), hu.encode_full(new, sk, fleet="nursery"), qos=1, retain=True)
        assert p.wait(5)
        assert wait_for(lambda: status().get("head_version") == new.version)
        assert status()["head_sha256"] == new.sha256

        # label the latest frame with a face: its embedding (not the image) goes to the samples topic
        r = subprocess.run(CLI + ["label", "--config", str(cfg_path), "--label", "happy", "--annotator", "nurse"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        reply = json.loads(r.stdout)
        assert wait_for(lambda: any(m.topic == T.samples("cam-cli") for m in msgs))
        s = SampleMessage.model_validate_json([m for m in msgs if m.topic == T.samples("cam-cli")][-1].payload)
        assert s.sample_id == reply["sample_id"] and s.label == "happy" and s.annotator == "nurse"
        assert len(s.embedding) == bundle.embedding_dim and s.extractor_id == bundle.extractor_id
        # a bad label is refused by the CLI itself
        r = subprocess.run(CLI + ["label", "--config", str(cfg_path), "--label", "sleepy"], capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 2 and "invalid choice" in r.stderr

        # rollback through the daemon
        r = subprocess.run(CLI + ["rollback", "--config", str(cfg_path)], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert wait_for(lambda: status().get("head_version") == bundle.head.version)

        # SIGTERM: clean stop, exit code 0, retained status goes offline
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        assert wait_for(lambda: status().get("state") == "offline", 5)
        r = subprocess.run(CLI + ["status", "--config", str(cfg_path)], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and json.loads(r.stdout)["state"] == "offline"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        err = proc.stderr.read()
        proc.stderr.close()
        obs.stop()
    assert "Traceback" not in err, err[-3000:]

    # with the daemon stopped: no answer -> clear error; local rollback has nothing left to roll back
    r = subprocess.run(CLI + ["rollback", "--config", str(cfg_path), "--timeout", "1"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and "no answer from device cam-cli" in r.stderr
    r = subprocess.run(CLI + ["rollback", "--config", str(cfg_path), "--local"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2 and "no previous head" in r.stderr


def test_device_config_errors_list_every_bad_field(tmp_path, keypair):
    from infantino.device.config import load_device_config

    bad = tmp_path / "device.yaml"
    bad.write_text(yaml.safe_dump({
        "device_id": "cam/1", "fleet": "nursery", "bundle": "missing-bundle", "public_key": str(keypair[1]),
        "camera": {"source": "", "stall_timeout_s": -1},
        "broker": {"port": 0, "hots": "x", "tls": {"ca_file": "nope.pem"}},
        "publish": {"predictions_max_hz": 0},
        "face": {"scale_factr": 1.2},
        "state_dir": str(tmp_path / "state"),
    }))
    with pytest.raises(ConfigError) as e:
        load_device_config(bad)
    msg = str(e.value)
    for needle in ("device_id: device_id must be", "bundle: path not found", "camera.source: source must not be empty",
                   "camera.stall_timeout_s", "broker.port", "broker.hots: unknown setting (did you mean 'host'?)",
                   "broker.tls.ca_file: file not found", "publish.predictions_max_hz",
                   "face.scale_factr: unknown setting (did you mean 'scale_factor'?)"):
        assert needle in msg, (needle, msg)
    assert "9 invalid settings" in msg
    r = subprocess.run(CLI + ["run", "--config", str(bad)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "broker.port" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "broken.yaml").write_text("device_id: [unclosed\n")
    r = subprocess.run(CLI + ["run", "--config", str(tmp_path / "broken.yaml")], capture_output=True, text=True)
    assert r.returncode == 2 and "not valid YAML (line" in r.stderr


def test_example_device_config_is_valid(tmp_path, keypair):
    """examples/device.yaml validates once its paths exist (the shipped file documents every setting)."""
    from infantino.device.config import load_device_config

    example = Path(__file__).resolve().parents[1] / "examples" / "device.yaml"
    data = yaml.safe_load(example.read_text())
    (tmp_path / "bundle").mkdir()
    data.update(bundle=str(tmp_path / "bundle"), public_key=str(keypair[1]), state_dir=str(tmp_path / "state"))
    data["broker"].pop("tls", None)
    data["broker"].pop("password_file", None)
    data["broker"]["password"] = "x"
    p = tmp_path / "device.yaml"
    p.write_text(yaml.safe_dump(data))
    cfg = load_device_config(p)
    assert cfg.device_id and cfg.broker.client_id == f"infantino-device-{cfg.device_id}"


def test_run_check_checks_everything_it_names_and_writes_nothing(tmp_path, compiled_bundle, keypair, faces_dir):
    """`run --check`: bundle, update keys, backend (a real prediction), stored head, state dir, camera; a missing
    camera or a revoked-only key fails with exit 1; the state dir is never created."""
    from types import SimpleNamespace

    from infantino.runtime.contract.signing import key_id, load_public_key

    _, pub, _, _ = keypair
    no_broker = SimpleNamespace(host="127.0.0.1", port=1)  # --check never connects
    cfg = write_config(tmp_path, compiled_bundle.tar, pub, no_broker, faces_dir)

    def check(*extra):
        r = subprocess.run(CLI + ["run", "--config", str(cfg), "--check", *extra], capture_output=True, text=True,
                           timeout=300)
        return r.returncode, r.stdout + r.stderr

    rc, out = check()
    assert rc == 0, out
    for needle in ("update keys  ok", "backend      ok     onnxruntime", "stored head  ok     no state yet",
                   "state dir    ok", "camera       ok", "gives"):
        assert needle in out, (needle, out)
    assert not (tmp_path / "state").exists()
    write_config(tmp_path, compiled_bundle.tar, pub, no_broker, faces_dir,
                 camera={"source": 63, "stall_timeout_s": 3})
    rc, out = check()
    assert rc == 1 and "camera       FAILED" in out, out
    assert check("--skip-camera")[0] == 0
    write_config(tmp_path, compiled_bundle.tar, pub, no_broker, faces_dir,
                 ota={"revoked_keys": [key_id(load_public_key(pub))]})
    rc, out = check()
    assert rc == 1 and "update keys  FAILED" in out and "revoked" in out, out
    assert not (tmp_path / "state").exists()


def test_systemd_unit_lets_the_daemon_write_every_cache_it_uses():
    """The unit allows writes only under ReadWritePaths: INFANTINO_CACHE_DIR (every cache) must lie there."""
    from infantino.runtime.cachedir import CACHE_ENV

    unit = (Path(__file__).resolve().parents[1] / "device" / "infantino-device.service").read_text()
    lines = [ln.strip() for ln in unit.splitlines() if ln.strip() and not ln.startswith("#")]
    writable = [ln.split("=", 1)[1] for ln in lines if ln.startswith("ReadWritePaths=")]
    env = dict(ln.split("=", 1)[1].split("=", 1) for ln in lines if ln.startswith("Environment="))
    assert CACHE_ENV in env and any(env[CACHE_ENV].startswith(w.rstrip("/") + "/") for w in writable), (env, writable)
    pre = next(ln for ln in lines if ln.startswith("ExecStartPre="))
    assert "--check" in pre and "--skip-camera" in pre
