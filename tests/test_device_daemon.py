"""The device daemon against a real Mosquitto: OTA over MQTT, rejections reported on status, labels, rollback,
last will, reconnect, stalled camera, latest-frame-only processing."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

import numpy as np

from fixtures_device import DEVICE_EXT, ProjectionPipeline, forge_update, make_head_chain, synthetic_frames, update_header
from fixtures_mqtt import mqtt_broker_config
from fixtures_mqtt import wait_for as _wait_for
from infantino.device.config import DeviceConfig
from infantino.device.daemon import BundleFacts, DeviceDaemon, FrameSlot
from infantino.device.remote import CommandFailed, send_command
from infantino.runtime.contract import head_update as hu
from infantino.runtime.configfile import validate_config
from infantino.runtime.contract.messages import SampleMessage, StatusMessage
from infantino.runtime.mqtt import MqttLink
from infantino.runtime.contract.topics import Topics

pytestmark = pytest.mark.mqtt
T = Topics()


def wait_for(cond, timeout=10.0, step=0.02):
    return _wait_for(cond, timeout, step)


class Observer:
    """A real MQTT client recording every message under the prefix, and publishing as the trainer would."""

    def __init__(self, broker, name="observer"):
        self.msgs: list = []
        self.lock = threading.Lock()
        self.link = MqttLink(mqtt_broker_config(broker), name, clean_start=True).start()
        assert self.link.wait_connected(5)
        self.link.subscribe_and_wait("infantino/#", self._on, qos=1)

    def _on(self, m):
        with self.lock:
            self.msgs.append(m)

    def on(self, topic):
        with self.lock:
            return [m for m in self.msgs if m.topic == topic]

    def last_status(self, device):
        got = self.on(T.status(device))
        return json.loads(got[-1].payload) if got else None

    def publish(self, topic, payload, retain=False):
        p = self.link.publish(topic, payload, qos=1, retain=retain)
        assert p.wait(5) and p.accepted
        return p

    def close(self):
        self.link.stop()


def device_config(tmp_path, broker, keypair, **over) -> DeviceConfig:
    (tmp_path / "bundle").mkdir(exist_ok=True)
    data = {
        "device_id": "cam-1", "fleet": "nursery", "bundle": str(tmp_path / "bundle"), "public_key": str(keypair[1]),
        "camera": {"source": 0, "stall_timeout_s": 1.0, "reopen_delay_s": 0.05},
        "broker": mqtt_broker_config(broker).model_dump(exclude_none=True),
        "publish": {"predictions_max_hz": 20, "predictions_heartbeat_s": 0.5, "status_interval_s": 0.5},
        "state_dir": str(tmp_path / "state"), "label_buffer_frames": 50,
    }
    for k, v in over.items():
        data[k] = {**data[k], **v} if isinstance(v, dict) and isinstance(data.get(k), dict) else v
    return validate_config(DeviceConfig, data, base_dir=tmp_path)


@pytest.fixture()
def heads():
    return make_head_chain(6)


def start_daemon(cfg, heads, keypair, source=None, delay_s=0.0):
    pipe = ProjectionPipeline(heads[0], delay_s=delay_s)
    facts = BundleFacts(extractor_id=DEVICE_EXT, head=heads[0], embedding_dim=64, bundle_id="test-bundle")
    d = DeviceDaemon(cfg, pipe, facts, source_factory=source or (lambda: synthetic_frames(60)),
                     update_public_key=keypair[3], backend_name="projection")
    d.start()
    t = threading.Thread(target=d.supervise, daemon=True)
    t.start()
    assert d.link.link.wait_connected(5)
    return d, pipe, t


def stop_daemon(d, t):
    d.request_stop()
    t.join(5)
    d.stop()


def test_update_applied_end_to_end_and_reported(tmp_path, mosquitto, heads, keypair):
    _, _, sk, _ = keypair
    obs = Observer(mosquitto)
    cfg = device_config(tmp_path, mosquitto, keypair)
    d, pipe, t = start_daemon(cfg, heads, keypair)
    try:
        assert wait_for(lambda: (obs.last_status("cam-1") or {}).get("state") == "online")
        obs.publish(T.fleet_head("nursery"), hu.encode_full(heads[1], sk, fleet="nursery"), retain=True)
        assert wait_for(lambda: pipe.head.version == 1)
        prev = heads[1]
        for v in (2, 3):
            blob, prev = hu.encode_delta(prev, heads[v], sk, dtype="float16", fleet="nursery")
            obs.publish(T.fleet_delta("nursery"), blob)
        assert wait_for(lambda: pipe.head.version == 3) and pipe.head.sha256 == prev.sha256
        assert wait_for(lambda: (obs.last_status("cam-1") or {}).get("head_version") == 3)
        st = StatusMessage.model_validate(obs.last_status("cam-1"))
        assert st.bundle_id == "test-bundle" and st.previous_head_version == 2 and st.frames > 0
        assert st.last_face_frame_id and st.last_face_frame_id <= d.ring.span()[1]  # an id `label` can use
        assert {"embed", "head", "total"} <= set(st.latency_ms) and st.fps > 0
        assert st.last_update["status"] == "applied" and st.last_update["version"] == 3
        # predictions carry the new head's version
        assert wait_for(lambda: any(json.loads(m.payload)["head_version"] == 3 for m in obs.on(T.predictions("cam-1"))))
        # after the full head arrived, the device follows deltas only (no full heads in steady state)
        assert not d.link.link.is_subscribed(d.link.head_topic)
    finally:
        stop_daemon(d, t)
    # a clean stop publishes a retained offline status; a restart resumes with the last good head
    assert wait_for(lambda: (obs.last_status("cam-1") or {}).get("state") == "offline", 5)
    obs.close()
    d2, pipe2, t2 = start_daemon(device_config(tmp_path, mosquitto, keypair), heads, keypair)
    try:
        assert pipe2.head.version == 3 and pipe2.head.sha256 == prev.sha256
    finally:
        stop_daemon(d2, t2)


def test_bad_updates_are_rejected_reported_and_the_daemon_keeps_running(tmp_path, mosquitto, heads, keypair):
    from infantino.runtime.contract.signing import generate_keypair, load_private_key

    _, _, sk, _ = keypair
    generate_keypair(tmp_path / "o.key", tmp_path / "o.pub")
    other = load_private_key(tmp_path / "o.key")
    obs = Observer(mosquitto)
    d, pipe, t = start_daemon(device_config(tmp_path, mosquitto, keypair), heads, keypair)
    try:
        obs.publish(T.fleet_head("nursery"), hu.encode_full(heads[1], sk, fleet="nursery"), retain=True)
        assert wait_for(lambda: pipe.head.version == 1)
        bad_delta, _ = hu.encode_delta(heads[2], heads[3], sk, fleet="nursery")
        full2 = hu.encode_full(heads[2], sk, fleet="nursery")
        nan = [w.copy() for w in heads[2].weights]
        nan[2][0, 0] = np.nan
        small = [np.zeros((64, 8), np.float32), np.zeros(8, np.float32), np.zeros((8, 7), np.float32),
                 np.zeros(7, np.float32)]
        delta_hdr = update_header(hu.encode_delta(heads[1], heads[2], sk, fleet="nursery")[0])
        bad = {
            "wrong_shapes": forge_update({}, small, "float32", sk, delta_hdr),
            "invalid_weights": forge_update({}, nan, "float32", sk, update_header(full2)),
            "bad_signature": hu.encode_full(heads[2], other, fleet="nursery"),
            "wrong_extractor": hu.encode_full(heads[2].replace(extractor_id="f" * 64), sk, fleet="nursery"),
            "stale_version": hu.encode_full(heads[0], sk, fleet="nursery"),
            "wrong_base": bad_delta,
            "corrupt": forge_update({"dtype": "int4"}, list(heads[2].weights), "float32", sk, update_header(full2)),
            "wrong_fleet": hu.encode_full(heads[2], sk, fleet="playroom"),
        }
        frames_before = d.stats.frames
        for reason, blob in bad.items():
            obs.publish(T.fleet_delta("nursery"), blob)
        assert wait_for(lambda: sum(d.ota.rejections.values()) == len(bad))
        assert dict(d.ota.rejections) == {r: 1 for r in bad}
        assert pipe.head.version == 1 and pipe.swaps == 1
        assert wait_for(lambda: (obs.last_status("cam-1") or {}).get("rejections") == {r: 1 for r in bad})
        st = obs.last_status("cam-1")
        assert any("bad_signature" in e for e in st["errors"])
        assert wait_for(lambda: d.stats.frames > frames_before + 5)  # still processing frames
        blob, h2 = hu.encode_delta(heads[1], heads[2], sk, fleet="nursery")
        obs.publish(T.fleet_delta("nursery"), blob)
        assert wait_for(lambda: pipe.head.sha256 == h2.sha256)
    finally:
        stop_daemon(d, t)
        obs.close()


def test_missed_delta_falls_back_to_the_retained_full_head(tmp_path, mosquitto, heads, keypair):
    _, _, sk, _ = keypair
    obs = Observer(mosquitto)
    d, pipe, t = start_daemon(device_config(tmp_path, mosquitto, keypair), heads, keypair)
    try:
        obs.publish(T.fleet_head("nursery"), hu.encode_full(heads[1], sk, fleet="nursery"), retain=True)
        assert wait_for(lambda: pipe.head.version == 1)
        assert wait_for(lambda: not d.link.link.is_subscribed(d.link.head_topic))  # deltas only from now on
        _, h2 = hu.encode_delta(heads[1], heads[2], sk, fleet="nursery")        # v2 never reaches the device
        blob3, h3 = hu.encode_delta(h2, heads[3], sk, fleet="nursery")
        obs.publish(T.fleet_head("nursery"), hu.encode_full(h3, sk, fleet="nursery"), retain=True)  # the trainer: full first,
        obs.publish(T.fleet_delta("nursery"), blob3)                                # then the delta
        assert wait_for(lambda: pipe.head.sha256 == h3.sha256)
        assert d.ota.rejections == {"wrong_base": 1}
        assert wait_for(lambda: not d.link.link.is_subscribed(d.link.head_topic))
    finally:
        stop_daemon(d, t)
        obs.close()


def test_label_command_publishes_the_frames_embedding_not_the_image(tmp_path, mosquitto, heads, keypair):
    obs = Observer(mosquitto)
    cfg = device_config(tmp_path, mosquitto, keypair)
    d, pipe, t = start_daemon(cfg, heads, keypair)
    try:
        assert wait_for(lambda: d.ring.span() is not None and d.ring.span()[1] > 5)
        reply = send_command(cfg, {"command": "label", "label": "happy"}, timeout=5)
        assert reply["ok"] and reply["label"] == "happy"
        assert wait_for(lambda: obs.on(T.samples("cam-1")))
        raw = obs.on(T.samples("cam-1"))[-1].payload
        s = SampleMessage.model_validate_json(raw)
        assert s.sample_id == reply["sample_id"] and s.frame_id == reply["frame_id"] and s.fleet == "nursery"
        assert s.extractor_id == DEVICE_EXT and len(s.embedding) == 64 and s.label == "happy"
        rec = d.ring.get(s.frame_id)
        assert rec is not None and np.array_equal(rec.faces[0].embedding, np.asarray(s.embedding, np.float32))
        assert len(raw) < 4000  # an embedding, not a 48x64 image
        # a chosen frame id that is still buffered
        fid = d.ring.span()[1]
        assert send_command(cfg, {"command": "label", "label": "sad", "frame_id": fid})["frame_id"] == fid
        with pytest.raises(CommandFailed, match="not in the buffer"):
            send_command(cfg, {"command": "label", "label": "sad", "frame_id": 10**9})
        with pytest.raises(CommandFailed, match="unknown label"):
            send_command(cfg, {"command": "label", "label": "sleepy"})
    finally:
        stop_daemon(d, t)
        obs.close()


def test_rollback_command_and_restart_keep_the_previous_head(tmp_path, mosquitto, heads, keypair):
    _, _, sk, _ = keypair
    obs = Observer(mosquitto)
    cfg = device_config(tmp_path, mosquitto, keypair)
    d, pipe, t = start_daemon(cfg, heads, keypair)
    try:
        obs.publish(T.fleet_head("nursery"), hu.encode_full(heads[1], sk, fleet="nursery"), retain=True)
        assert wait_for(lambda: pipe.head.version == 1)
        blob, h2 = hu.encode_delta(heads[1], heads[2], sk, fleet="nursery")
        obs.publish(T.fleet_delta("nursery"), blob)
        assert wait_for(lambda: pipe.head.version == 2)
        reply = send_command(cfg, {"command": "rollback"})
        assert reply["result"]["status"] == "rolled_back" and pipe.head.version == 1
        with pytest.raises(CommandFailed, match="no previous head"):
            send_command(cfg, {"command": "rollback"})
        obs.publish(T.fleet_head("nursery"), hu.encode_full(h2, sk, fleet="nursery"), retain=True)
        d.link.request_full_head()
        assert wait_for(lambda: d.ota.rejections.get("rolled_back", 0) >= 1)
        assert pipe.head.version == 1
    finally:
        stop_daemon(d, t)
        obs.close()
    d2, pipe2, t2 = start_daemon(device_config(tmp_path, mosquitto, keypair), heads, keypair)
    try:
        assert pipe2.head.version == 1
    finally:
        stop_daemon(d2, t2)


def test_last_will_offline_then_reconnect_and_resubscribe(tmp_path, mosquitto, heads, keypair):
    _, _, sk, _ = keypair
    obs = Observer(mosquitto)
    d, pipe, t = start_daemon(device_config(tmp_path, mosquitto, keypair), heads, keypair)
    try:
        assert wait_for(lambda: (obs.last_status("cam-1") or {}).get("state") == "online")
        connects = d.link.link.connects
        # cut the TCP connection without an MQTT DISCONNECT: the broker publishes the retained last will
        d.link.link.client.socket().shutdown(socket.SHUT_RDWR)
        assert wait_for(lambda: any(json.loads(m.payload)["state"] == "offline" for m in obs.on(T.status("cam-1"))))
        assert wait_for(lambda: d.link.link.connects > connects)
        assert wait_for(lambda: (obs.last_status("cam-1") or {}).get("state") == "online")
        # subscriptions were renewed: a delta published now still arrives
        obs.publish(T.fleet_head("nursery"), hu.encode_full(heads[1], sk, fleet="nursery"), retain=True)
        assert wait_for(lambda: pipe.head.version == 1)
        blob, _ = hu.encode_delta(heads[1], heads[2], sk, fleet="nursery")
        obs.publish(T.fleet_delta("nursery"), blob)
        assert wait_for(lambda: pipe.head.version == 2)
    finally:
        stop_daemon(d, t)
        obs.close()


def test_broker_restart_device_reconnects_with_bounded_backoff(tmp_path, mosquitto, heads, keypair):
    _, _, sk, _ = keypair
    d, pipe, t = start_daemon(device_config(tmp_path, mosquitto, keypair), heads, keypair)
    try:
        mosquitto.kill()
        assert wait_for(lambda: not d.link.connected, 5)
        time.sleep(1.0)  # several back-off rounds (bounded at 0.5 s here)
        mosquitto.start()
        assert wait_for(lambda: d.link.connected, 5)
        obs = Observer(mosquitto)
        obs.publish(T.fleet_head("nursery"), hu.encode_full(heads[1], sk, fleet="nursery"), retain=True)
        d.link.request_full_head()
        assert wait_for(lambda: pipe.head.version == 1)
        obs.close()
    finally:
        stop_daemon(d, t)


def test_stalled_camera_is_reopened(tmp_path, mosquitto, heads, keypair):
    opened = []

    def source():
        opened.append(time.monotonic())
        # the first source hangs after 10 frames (a camera that stops delivering); later ones work
        return synthetic_frames(60, stall_after=10 if len(opened) == 1 else None, stall_s=30)

    cfg = device_config(tmp_path, mosquitto, keypair, camera={"stall_timeout_s": 0.5})
    d, pipe, t = start_daemon(cfg, heads, keypair, source=source)
    try:
        assert wait_for(lambda: len(opened) >= 2, 8)
        n = d.stats.frames
        assert wait_for(lambda: d.stats.frames > n + 10)
        assert d.camera_reopens >= 1 and any("stalled" in e for e in d.errors)
    finally:
        stop_daemon(d, t)


def test_failing_and_ending_cameras_are_reopened_by_the_one_reconnect_layer(tmp_path, mosquitto, heads, keypair):
    """A camera that cannot open twice, then delivers 5 frames and ends: each failure is journalled, reopened with
    back-off, and the end reopens it (reopen_on_end); the daemon never stops serving."""
    opened = []

    def source():
        opened.append(time.monotonic())
        if len(opened) <= 2:
            raise OSError("no such camera")
        return synthetic_frames(200, n=5)

    cfg = device_config(tmp_path, mosquitto, keypair, camera={"stall_timeout_s": 2.0, "reopen_delay_s": 0.05})
    d, pipe, t = start_daemon(cfg, heads, keypair, source=source)
    try:
        assert wait_for(lambda: len(opened) >= 5, 10)
        assert sum("OSError: no such camera" in e for e in d.errors) == 2
        assert any("camera ended" in e for e in d.errors) and d.stats.frames >= 5
        assert d.camera_reopens >= 2 and d.camera.backoffs[:2] == [0.05, 0.1]
        assert t.is_alive() and d.status().camera in ("ok", "reopening")
    finally:
        stop_daemon(d, t)


def test_a_video_file_is_played_at_its_pace_without_skipping_frames(tmp_path, mosquitto, heads, keypair):
    """A file or folder source is read at the daemon's pace (camera.fps), not as fast as it decodes with the
    oldest frames dropped: every frame of a 40-frame clip reaches the slot."""
    folder = tmp_path / "clip"
    folder.mkdir()
    cfg = device_config(tmp_path, mosquitto, keypair, camera={"source": str(folder), "fps": 100,
                                                              "reopen_on_end": False})
    d, pipe, t = start_daemon(cfg, heads, keypair, source=lambda: synthetic_frames(1000, n=40))
    try:
        assert wait_for(lambda: d.camera_state == "ended", 10)
        assert d.camera.stats["dropped"] == 0 and d._frame_id == 40
    finally:
        stop_daemon(d, t)


def test_only_the_latest_frame_is_processed(tmp_path, mosquitto, heads, keypair):
    cfg = device_config(tmp_path, mosquitto, keypair)
    d, pipe, t = start_daemon(cfg, heads, keypair, source=lambda: synthetic_frames(200), delay_s=0.05)
    try:
        assert wait_for(lambda: d.stats.frames >= 10)
        st = d.status()
        assert st.dropped_frames > 0  # frames arriving during a slow predict are replaced, never queued
        ids = [r.frame_id for r in d.ring.recent(10)]
        assert ids == sorted(ids) and ids[-1] - ids[0] > len(ids)  # gaps: the processor skips to the newest
    finally:
        stop_daemon(d, t)


def test_frame_slot_keeps_only_the_newest_frame():
    import numpy as np

    s = FrameSlot()
    for i in range(5):
        s.put(i, np.zeros((2, 2, 3), np.uint8))
    fid, _, _ = s.take(0.1)
    assert fid == 4 and s.dropped == 4 and s.take(0.01) is None


def test_predictions_go_out_on_change_at_most_max_hz_and_at_least_every_heartbeat():
    from infantino.device.daemon import PredictionLimiter

    lim = PredictionLimiter(max_hz=5, heartbeat_s=2.0)
    a, b, none = (("happy", ("happy",)),), (("sad", ("sad", "fear")),), ()
    assert lim.should_publish(a, 0.0)          # first frame
    assert not lim.should_publish(b, 0.1)      # changed, but within 1/max_hz of the last message
    assert not lim.should_publish(a, 0.15)     # unchanged
    assert lim.should_publish(b, 0.25)         # changed, rate allows
    assert not lim.should_publish(a, 0.3)      # changed too soon
    assert lim.should_publish(a, 0.46)         # the pending change goes out once allowed
    assert not lim.should_publish(a, 2.0)      # unchanged within the heartbeat
    assert lim.should_publish(a, 2.47)         # heartbeat
    assert not lim.should_publish(none, 2.5)   # face lost: a change, but too soon
    assert lim.should_publish(none, 2.7)
