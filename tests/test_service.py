"""The update service against a real Mosquitto: samples in, chained signed deltas out, dedupe, coalescing,
no version published twice across crashes, no sample lost across broker and service restarts, MLflow."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from fixtures_device import ProjectionPipeline, update_header
from fixtures_mqtt import mqtt_broker_config
from fixtures_mqtt import wait_for as _wait_for
from fixtures_service import SERVICE_EXT, service_sample
from infantino.device.config import DeviceConfig
from infantino.device.daemon import BundleFacts, DeviceDaemon
from infantino.runtime.configfile import ConfigError, validate_config
from infantino.runtime.contract.head import Head
from infantino.runtime.mqtt import MqttLink
from infantino.runtime.contract.topics import Topics
from infantino.trainer.service import TrainerServiceConfig, UpdateService, load_service_config

pytestmark = pytest.mark.mqtt
T = Topics()


def wait_for(cond, timeout=15.0, step=0.02):
    return _wait_for(cond, timeout, step)


def service_dict(tmp_path, broker, head_dir, keypair, **over) -> dict:
    data = {
        "broker": mqtt_broker_config(broker).model_dump(exclude_none=True, mode="json"),
        "fleets": [{"name": "nursery", "initial_head": str(head_dir / "head.infh"),
                    "head_state": str(head_dir / "head_state.npz"), "devices": ["cam-1", "cam-2", "cam-9"]}],
        "state_dir": str(tmp_path / "svc"), "signing_key": str(keypair[0]), "min_interval_ms": 100,
        "mlflow": {"enabled": False},
    }
    data.update(over)
    return data


def service_config(tmp_path, broker, head_dir, keypair, **over) -> TrainerServiceConfig:
    return validate_config(TrainerServiceConfig, service_dict(tmp_path, broker, head_dir, keypair, **over))


class UpdateLog:
    """Records every head update on the fleet topics: version -> set of result sha256 (must stay single)."""

    def __init__(self, broker, fleet="nursery"):
        self.by_version: dict[int, set] = {}
        self.deltas: list[int] = []
        self.lock = threading.Lock()
        self.link = MqttLink(mqtt_broker_config(broker), f"updatelog-{time.monotonic_ns()}", clean_start=True).start()
        assert self.link.wait_connected(5)
        self.link.subscribe_and_wait(T.fleet_head(fleet), self._on, qos=1)
        self.link.subscribe_and_wait(T.fleet_delta(fleet), self._on, qos=1)

    def _on(self, m):
        h = update_header(m.payload)
        with self.lock:
            self.by_version.setdefault(h["version"], set()).add(h["result_sha256"])
            if h["kind"] == "delta" and not m.dup:
                self.deltas.append(h["version"])

    def close(self):
        self.link.stop()


def sample_publisher(broker, device="cam-1"):
    link = MqttLink(mqtt_broker_config(broker), f"infantino-device-{device}", clean_start=False).start()
    assert link.wait_connected(5)
    return link


def start_device(tmp_path, broker, head_dir, keypair):
    head = Head.from_bytes((head_dir / "head.infh").read_bytes())
    (tmp_path / "bundle").mkdir(exist_ok=True)
    cfg = validate_config(DeviceConfig, {
        "device_id": "cam-9", "fleet": "nursery", "bundle": str(tmp_path / "bundle"), "public_key": str(keypair[1]),
        "camera": {"source": 0}, "broker": mqtt_broker_config(broker).model_dump(exclude_none=True, mode="json"),
        "publish": {"status_interval_s": 0.5}, "state_dir": str(tmp_path / "device-state")})
    from fixtures_device import synthetic_frames

    pipe = ProjectionPipeline(head)
    d = DeviceDaemon(cfg, pipe, BundleFacts(SERVICE_EXT, head, 64, "svc-test"), lambda: synthetic_frames(30),
                     update_public_key=keypair[3], backend_name="projection")
    d.start()
    t = threading.Thread(target=d.supervise, daemon=True)
    t.start()
    return d, pipe, t


def stop_device(d, t):
    d.request_stop()
    t.join(5)
    d.stop()


def test_samples_in_chained_signed_deltas_out_device_follows(tmp_path, mosquitto, service_head_dir, keypair):
    log = UpdateLog(mosquitto)
    svc = UpdateService(service_config(tmp_path, mosquitto, service_head_dir, keypair, min_interval_ms=300)).start()
    d, pipe, t = start_device(tmp_path, mosquitto, service_head_dir, keypair)
    pub = sample_publisher(mosquitto)
    try:
        assert wait_for(lambda: d.link.connected and svc.ready)
        n = 30
        for i in range(n):
            pub.publish(T.samples("cam-1"), service_sample(i).model_dump_json(), qos=1)
            time.sleep(0.01)
        assert wait_for(lambda: svc.counters["learned"] == n)
        assert wait_for(lambda: sum(u.samples for u in list(svc.published)) == n)  # every sample in some update
        assert wait_for(lambda: pipe.head.sha256 == svc.published[-1].sha256)      # and the device follows
        versions = [u.version for u in svc.published]
        assert versions == list(range(versions[0], versions[0] + len(versions)))  # one step at a time
        assert 1 < len(versions) < n  # several samples coalesced into each delta (at most one per 300 ms)
        assert d.ota.rejections == {} and d.ota.applied >= len(versions) - 1
        assert all(len(s) == 1 for s in log.by_version.values())
        last = svc.published[-1]
        assert last.delta_bytes > 0 and last.full_bytes > 0
    finally:
        pub.stop()
        stop_device(d, t)
        svc.stop()
        log.close()


def test_duplicates_and_invalid_samples_are_not_learned(tmp_path, mosquitto, service_head_dir, keypair):
    svc = UpdateService(service_config(tmp_path, mosquitto, service_head_dir, keypair)).start()
    pub = sample_publisher(mosquitto)
    try:
        assert wait_for(lambda: svc.ready)
        s = service_sample(0, sample_id="cam-1-fixed")
        for _ in range(3):
            pub.publish(T.samples("cam-1"), s.model_dump_json(), qos=1)
        bad = [
            (T.samples("cam-1"), service_sample(1, extractor_id="0" * 64).model_dump_json()),  # other extractor
            (T.samples("cam-2"), service_sample(2, device="cam-1").model_dump_json()),        # topic != device_id
            (T.samples("cam-1"), service_sample(3, fleet="other").model_dump_json()),         # unknown fleet
            (T.samples("cam-1"), b"{not json"),
            (T.samples("cam-1"), json.dumps({"device_id": "cam-1", "fleet": "nursery", "sample_id": "x",
                                             "embedding": [1.0] * 64, "extractor_id": SERVICE_EXT,
                                             "label": "sleepy"})),                              # unknown label
            (T.samples("cam-1"), service_sample(4).model_copy(update={"embedding": [1.0] * 10}).model_dump_json()),
            (T.samples("cam-7"), service_sample(5, device="cam-7").model_dump_json()),       # not in the allow-list:
            # the fleet's session subscribes to its listed devices only, so this one never reaches the service
            (T.samples("cam-1"), json.dumps({**json.loads(service_sample(6).model_dump_json()),
                                             "confidence": 1e6})),                            # weight out of [0, 1]
            (T.samples("cam-1"), b" " * (65 << 10) + service_sample(7).model_dump_json().encode()),  # over the cap
        ]
        for topic, payload in bad:
            pub.publish(topic, payload, qos=1)
        assert wait_for(lambda: svc.counters["received"] == 3 + len(bad) - 1)
        assert svc.counters["learned"] == 1 and svc.counters["duplicates"] == 2
        assert svc.counters["invalid"] == len(bad) - 1
        assert wait_for(lambda: len(svc.published) == 1)
    finally:
        pub.stop()
        svc.stop()


def _serve(cfg_path: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "infantino.trainer.commands.serve", "-q", "--config", str(cfg_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, start_new_session=True)


def test_service_killed_mid_stream_loses_no_sample_and_never_reuses_a_version(tmp_path, mosquitto, service_head_dir,
                                                                               keypair):
    cfg_path = tmp_path / "trainer.yaml"
    cfg_path.write_text(yaml.safe_dump(service_dict(tmp_path, mosquitto, service_head_dir, keypair,
                                                    min_interval_ms=50)))
    log = UpdateLog(mosquitto)
    d, pipe, t = start_device(tmp_path, mosquitto, service_head_dir, keypair)
    pub = sample_publisher(mosquitto)
    n, kills = 150, 0
    proc = _serve(cfg_path)
    try:
        assert wait_for(lambda: log.by_version, 20)  # the service is up (it published its retained head)
        for i in range(n):
            pub.publish(T.samples("cam-1"), service_sample(i).model_dump_json(), qos=1)
            time.sleep(0.01)
            if i in (50, 100):  # crash the service twice while samples flow, restart it at once
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                kills += 1
                proc = _serve(cfg_path)

        def learned():
            try:
                return json.loads((tmp_path / "svc" / "nursery" / "service.json").read_text())["learned"]
            except (OSError, ValueError, KeyError):
                return -1

        assert wait_for(lambda: learned() == n, 30), learned()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0, proc.stderr.read().decode()[-2000:]
        meta = json.loads((tmp_path / "svc" / "nursery" / "service.json").read_text())
        assert meta["learned"] == n  # every sample exactly once: redelivered after the crash, deduplicated
        assert all(len(s) == 1 for s in log.by_version.values()), {v: s for v, s in log.by_version.items() if len(s) > 1}
        assert wait_for(lambda: pipe.head.sha256 == meta["published_sha256"])  # the device converged
        assert kills == 2
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        pub.stop()
        stop_device(d, t)
        log.close()


def test_broker_killed_mid_stream_no_sample_or_update_lost(tmp_path, mosquitto, service_head_dir, keypair):
    log = UpdateLog(mosquitto)
    svc = UpdateService(service_config(tmp_path, mosquitto, service_head_dir, keypair, min_interval_ms=50)).start()
    d, pipe, t = start_device(tmp_path, mosquitto, service_head_dir, keypair)
    pub = sample_publisher(mosquitto)
    n = 120
    try:
        assert wait_for(lambda: d.link.connected and svc.ready)
        for i in range(n):
            pub.publish(T.samples("cam-1"), service_sample(i).model_dump_json(), qos=1)
            time.sleep(0.01)
            if i == 40:
                mosquitto.kill()  # crash the broker mid-stream ...
            if i == 70:
                mosquitto.start()  # ... and bring it back (same port, persisted sessions)
        assert wait_for(lambda: svc.counters["learned"] == n, 30), svc.counters
        assert wait_for(lambda: not svc.fleets["nursery"].dirty)
        final = svc.fleets["nursery"].state.published
        assert wait_for(lambda: pipe.head.sha256 == final.sha256, 20)  # the device converged to the latest head
        versions = [u.version for u in svc.published]
        assert len(set(versions)) == len(versions)
    finally:
        pub.stop()
        stop_device(d, t)
        svc.stop()
        log.close()
    assert all(len(s) == 1 for s in log.by_version.values())


def test_restart_resumes_from_saved_state_and_adopts_a_newer_retained_head(tmp_path, mosquitto, service_head_dir,
                                                                             keypair):
    import shutil

    cfg = service_config(tmp_path, mosquitto, service_head_dir, keypair, min_interval_ms=0)
    pub = sample_publisher(mosquitto)
    svc = UpdateService(cfg).start()
    assert wait_for(lambda: svc.ready)
    pub.publish(T.samples("cam-1"), service_sample(0).model_dump_json(), qos=1)
    assert wait_for(lambda: len(svc.published) == 1)
    v1 = svc.published[-1].version
    svc.stop()
    backup = tmp_path / "backup"
    shutil.copytree(tmp_path / "svc", backup)
    svc = UpdateService(service_config(tmp_path, mosquitto, service_head_dir, keypair, min_interval_ms=0)).start()
    assert svc.fleets["nursery"].state.published.version == v1
    pub.publish(T.samples("cam-1"), service_sample(1).model_dump_json(), qos=1)
    assert wait_for(lambda: len(svc.published) == 1) and svc.published[-1].version == v1 + 1
    svc.stop()
    # the state is restored from the older backup: the broker's retained head (v1+1) is newer -> adopted
    shutil.rmtree(tmp_path / "svc")
    shutil.copytree(backup, tmp_path / "svc")
    svc = UpdateService(service_config(tmp_path, mosquitto, service_head_dir, keypair, min_interval_ms=0)).start()
    try:
        assert wait_for(lambda: svc.fleets["nursery"].state.published.version == v1 + 1)
        pub.publish(T.samples("cam-1"), service_sample(2).model_dump_json(), qos=1)
        assert wait_for(lambda: len(svc.published) == 1) and svc.published[-1].version == v1 + 2
        assert svc.published[-1].base_version == v1 + 1
    finally:
        pub.stop()
        svc.stop()


def test_head_versions_are_recorded_in_mlflow(tmp_path, mosquitto, service_head_dir, keypair, mlflow_uri):
    from mlflow.tracking import MlflowClient

    cfg = service_config(tmp_path, mosquitto, service_head_dir, keypair, min_interval_ms=0,
                         mlflow={"tracking_uri": mlflow_uri, "experiment": "svc-test", "flush_s": 0.2})
    svc = UpdateService(cfg).start()
    pub = sample_publisher(mosquitto)
    try:
        assert wait_for(lambda: svc.ready)
        for i in range(3):
            pub.publish(T.samples("cam-1"), service_sample(i).model_dump_json(), qos=1)
            assert wait_for(lambda: len(svc.published) == i + 1)
    finally:
        pub.stop()
        svc.stop()  # flushes the MLflow batch
    assert svc.tracker.error is None and svc.tracker.logged == 3
    client = MlflowClient(tracking_uri=mlflow_uri)
    run_id = svc.tracker.runs["nursery"]
    hist = client.get_metric_history(run_id, "head_version")
    assert sorted(int(m.value) for m in hist) == [u.version for u in svc.published]
    run = client.get_run(run_id)
    assert run.data.tags["head_sha256"] == svc.published[-1].sha256 and run.data.params["fleet"] == "nursery"


def test_config_errors_name_every_bad_field(tmp_path, service_head_dir, keypair, capsys):
    bad = tmp_path / "trainer.yaml"
    bad.write_text(yaml.safe_dump({
        "broker": {"host": "localhost", "port": 99999, "reconect_min_s": 1},
        "fleets": [{"name": "bad/fleet", "head_state": str(tmp_path / "missing.npz")}],
        "state_dir": str(tmp_path / "svc"), "signing_key": str(tmp_path / "nokey"), "delta_dtype": "int4",
    }))
    with pytest.raises(ConfigError) as e:
        load_service_config(bad)
    msg = str(e.value)
    for needle in ("broker.port", "broker.reconect_min_s: unknown setting (did you mean 'reconnect_min_s'?)",
                   "fleets.0.name", "fleets.0.head_state: path not found",
                   "signing_key", "delta_dtype"):
        assert needle in msg, (needle, msg)
    from infantino.runtime.cliutil import guarded
    from infantino.trainer.commands import serve

    class Args:
        config, check = str(bad), False

    assert guarded("infantino-train", serve.run, Args()) == 2
    err = capsys.readouterr().err
    assert err.startswith("infantino-train: error: ") and "broker.port" in err and "delta_dtype" in err


def test_a_fleet_must_list_its_devices_unless_any_device_is_allowed(tmp_path, mosquitto, service_head_dir, keypair):
    """The sample allow-list is on by default: a fleet without `devices` is a config error naming the choice."""
    data = service_dict(tmp_path, mosquitto, service_head_dir, keypair)
    del data["fleets"][0]["devices"]
    with pytest.raises(ConfigError, match="list its devices .* or set allow_any_device: true"):
        validate_config(TrainerServiceConfig, data)
    data["fleets"][0]["allow_any_device"] = True
    assert validate_config(TrainerServiceConfig, data).fleets[0].allow_any_device


def test_legacy_pickle_states_are_migrated(tmp_path, service_head_dir, keypair, legacy_state_writer, caplog):
    """A fleet's head_state that is a legacy pickle needs migrate_legacy_state (it may come from anyone); the
    service's own legacy checkpoint (online.<gen>.pkl, written by an older service) is migrated on open."""
    import logging
    import shutil

    from infantino.runtime.contract.errors import InfantinoError
    from infantino.trainer.online_head import OnlineHead

    head = OnlineHead.load(service_head_dir)
    legacy_dir = tmp_path / "legacy_head"
    legacy_state_writer(head, legacy_dir / "head_state.pkl")
    shutil.copy(service_head_dir / "head.infh", legacy_dir / "head.infh")
    data = {"broker": {"host": "localhost", "port": 1883}, "state_dir": str(tmp_path / "svc"),
            "signing_key": str(keypair[0]), "mlflow": {"enabled": False},
            "fleets": [{"name": "nursery", "initial_head": str(legacy_dir / "head.infh"),
                        "head_state": str(legacy_dir / "head_state.pkl"), "devices": ["cam-1"]}]}
    with pytest.raises(InfantinoError, match="legacy online head state.*migrate_legacy_state: true"):
        UpdateService(validate_config(TrainerServiceConfig, data))
    assert not (tmp_path / "svc" / "nursery" / "service.json").exists()

    data["fleets"][0]["migrate_legacy_state"] = True
    svc = UpdateService(validate_config(TrainerServiceConfig, data))
    assert (legacy_dir / "head_state.npz").is_file()
    state_dir = svc.fleets["nursery"].state.dir
    meta = json.loads((state_dir / "service.json").read_text())
    assert meta["online_file"] == "online.1.npz"

    # turn the checkpoint into what an older service wrote: online.1.pkl named by service.json
    legacy_state_writer(OnlineHead.load(state_dir / "online.1.npz"), state_dir / "online.1.pkl")
    (state_dir / "online.1.npz").unlink()
    meta["online_file"] = "online.1.pkl"
    (state_dir / "service.json").write_text(json.dumps(meta))
    data["fleets"][0]["migrate_legacy_state"] = False  # the service's own state needs no flag
    svc.stop()  # it owns the fleet (a lock in its state folder) until it stops
    with caplog.at_level(logging.WARNING, logger="infantino.trainer"):
        svc = UpdateService(validate_config(TrainerServiceConfig, data))
    assert "legacy pickle written by an older version of this service" in caplog.text
    assert json.loads((state_dir / "service.json").read_text())["online_file"] == "online.2.npz"
    assert sorted(p.name for p in state_dir.glob("online.*")) == ["online.2.npz"]
    assert svc.fleets["nursery"].state.online.to_head().sha256 == head.to_head().sha256
    svc.stop()


def test_version_record_survives_a_torn_write(tmp_path):
    from infantino.trainer.service import VersionRecord

    r = VersionRecord(tmp_path / "published.rec")
    for v in (5, 6, 7):
        r.write({"version": v, "sha256": f"s{v}"})
    r.close()
    assert VersionRecord(tmp_path / "published.rec").record["version"] == 7
    raw = bytearray((tmp_path / "published.rec").read_bytes())
    slot = (3 % 2) * VersionRecord.SLOT  # the slot of the newest record (seq 3)
    raw[slot + 20:slot + 30] = b"##########"  # a write torn by a crash
    (tmp_path / "published.rec").write_bytes(bytes(raw))
    assert VersionRecord(tmp_path / "published.rec").record["version"] == 6
    assert VersionRecord(tmp_path / "missing.rec").record == {}


def test_real_face_guard_holds_back_a_regressing_head_version(tmp_path, mosquitto, compiled_bundle, keypair):
    """A fleet whose bundle's extractor was trained on drawn faces: every candidate head fails the real-face guard,
    so the service learns but publishes nothing, says so on the retained service status, and with
    allow_real_face_regression publishes the same versions with their figures."""
    from fixtures_service import make_online_head_dir
    from infantino.runtime.bundle import load_bundle

    bundle = load_bundle(compiled_bundle.path, public_key=compiled_bundle.public_key)
    hidden = tuple(s[1] for s in bundle.head.shapes[0:-2:2])
    head_dir = make_online_head_dir(tmp_path / "head", extractor_id=bundle.extractor_id, hidden=hidden)
    fleet = {"name": "nursery", "bundle": str(compiled_bundle.path), "head_state": str(head_dir / "head_state.npz"),
             "devices": ["cam-1"]}
    statuses = []
    watch = MqttLink(mqtt_broker_config(mosquitto), f"status-{time.monotonic_ns()}", clean_start=True).start()
    assert watch.wait_connected(5)
    watch.subscribe_and_wait(T.fleet_service_status("nursery"), lambda m: statuses.append(json.loads(m.payload)))
    pub = sample_publisher(mosquitto)
    try:
        for allow, state in ((False, "svc-guarded"), (True, "svc-allowed")):
            cfg = service_config(tmp_path, mosquitto, head_dir, keypair, state_dir=str(tmp_path / state),
                                 public_key=str(compiled_bundle.public_key),
                                 fleets=[{**fleet, "allow_real_face_regression": allow}])
            svc = UpdateService(cfg).start()
            try:
                assert wait_for(lambda: svc.ready)
                for i in range(10):
                    pub.publish(T.samples("cam-1"), service_sample(i, extractor_id=bundle.extractor_id,
                                                                   seed=int(allow)).model_dump_json(), qos=1)
                assert wait_for(lambda: svc.counters["learned"] == 10)
                if not allow:
                    assert wait_for(lambda: len(svc.held_back) >= 1)
                    assert list(svc.published) == []  # nothing reached the fleet
                    held = svc.held_back[-1]
                    assert held.held_back and held.realface_agreement < 0.95
                    assert wait_for(lambda: statuses and statuses[-1]["real_face_guard"]["held_back"] >= 1)
                    last = statuses[-1]["real_face_guard"]["last"]
                    assert last["problems"] and last["baseline"] == pytest.approx(bundle.manifest.real_faces.baseline)
                else:
                    assert wait_for(lambda: len(svc.published) >= 1)
                    assert svc.published[-1].realface_agreement is not None and not svc.held_back
            finally:
                svc.stop()
    finally:
        pub.stop()
        watch.stop()


def test_serve_check_loads_everything_and_writes_nothing(tmp_path, service_head_dir, keypair):
    """`serve --check` on a fresh and on a used state dir: exit 0, the state dir not created / byte-identical."""
    import hashlib
    from types import SimpleNamespace

    cfg_path = tmp_path / "trainer.yaml"
    cfg_path.write_text(yaml.safe_dump(service_dict(tmp_path, SimpleNamespace(host="127.0.0.1", port=1),
                                                    service_head_dir, keypair)))
    cmd = [sys.executable, "-m", "infantino.trainer.cli", "serve", "--config", str(cfg_path), "--check"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "config OK" in r.stdout and "fingerprint" in r.stdout, r.stderr[-2000:]
    assert not (tmp_path / "svc").exists()
    UpdateService(load_service_config(cfg_path))  # a real start writes the fleet's state
    snapshot = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (tmp_path / "svc").rglob("*") if p.is_file()}
    assert snapshot
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    after = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (tmp_path / "svc").rglob("*") if p.is_file()}
    assert after == snapshot


def test_any_device_fleet_ignores_other_fleets_samples(tmp_path, mosquitto, service_head_dir, keypair):
    """Two fleets: `open` accepts any device (its session sees every device's samples), `nursery` lists its
    devices. A nursery sample is learned by nursery only and is neither learned nor counted invalid by `open`."""
    data = service_dict(tmp_path, mosquitto, service_head_dir, keypair)
    data["fleets"].append({**data["fleets"][0], "name": "open", "devices": None, "allow_any_device": True})
    svc = UpdateService(validate_config(TrainerServiceConfig, data)).start()
    pub = sample_publisher(mosquitto)
    try:
        assert wait_for(lambda: svc.ready)
        pub.publish(T.samples("cam-1"), service_sample(0).model_dump_json(), qos=1)
        pub.publish(T.samples("cam-1"), service_sample(1, fleet="open").model_dump_json(), qos=1)
        assert wait_for(lambda: svc.fleets["nursery"].state.learned == 1 and svc.fleets["open"].state.learned == 1)
        time.sleep(0.5)
        assert svc.unit("open").counters["invalid"] == 0 and svc.unit("nursery").counters["invalid"] == 1
    finally:
        pub.stop()
        svc.stop()
