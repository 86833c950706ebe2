"""The shipped Mosquitto example (examples/mosquitto: TLS, per-device passwords, ACL) run for real: a device
writes only its own topics and reads only its fleet's head; only the trainer publishes heads."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from ci_skip import missing

from infantino.benchmarks.broker import MosquittoBroker, find_mosquitto, free_port, set_config_values
from infantino.benchmarks.pki import make_pki
from infantino.runtime.mqtt import BrokerConfig, MqttLink
from infantino.runtime.contract.topics import Topics

pytestmark = pytest.mark.mqtt
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "mosquitto"
T = Topics()
NOT_AUTHORIZED = 0x87


USERS = {"infantino-trainer": "trainer-pw", "cam-01": "cam01-pw", "cam-02": "cam02-pw"}


@pytest.fixture()
def secure_broker(tmp_path):
    if find_mosquitto() is None or shutil.which("mosquitto_passwd") is None:
        missing("Mosquitto (with mosquitto_passwd) is not installed")
    etc = tmp_path / "etc"
    etc.mkdir()
    pki = make_pki(etc / "certs")
    acl = etc / "acl"
    shutil.copy(EXAMPLE / "acl", acl)
    pw = etc / "passwords"
    for user, password in USERS.items():
        flags = ["-b"] if pw.exists() else ["-b", "-c"]
        subprocess.run(["mosquitto_passwd", *flags, str(pw), user, password], check=True, capture_output=True)
    # a device of another fleet, added with the shipped provisioning script
    subprocess.run(["sh", str(EXAMPLE / "add-device.sh"), str(pw), str(acl), "cam-77", "lab", "cam77-pw"],
                   check=True, capture_output=True)
    port = free_port()
    text = (EXAMPLE / "mosquitto.conf").read_text()
    repl = {"password_file": pw, "acl_file": acl, "cafile": pki["ca"], "certfile": pki["cert"],
            "keyfile": pki["key"], "persistence_location": f"{etc}/", "listener": f"{port} 127.0.0.1"}
    text = set_config_values(text, repl)
    broker = MosquittoBroker(tmp_path / "run", port=port, config_text=text).start()
    yield broker, pki
    broker.kill()


def connect(broker, pki, user, password=None, client_id=None) -> MqttLink:
    cfg = BrokerConfig(host="127.0.0.1", port=broker.port, username=user,
                       password=password if password is not None else USERS.get(user, "cam77-pw"),
                       tls={"ca_file": str(pki["ca"])}, reconnect_min_s=0.2, reconnect_max_s=0.5)
    return MqttLink(cfg, client_id or f"{user}-{time.monotonic_ns()}", clean_start=True).start()


def test_acl_device_writes_only_its_topics_and_reads_only_its_fleet_head(secure_broker):
    broker, pki = secure_broker
    trainer = connect(broker, pki, "infantino-trainer")
    cam1 = connect(broker, pki, "cam-01", client_id="infantino-device-cam-01")
    cam77 = connect(broker, pki, "cam-77", client_id="infantino-device-cam-77")
    links = [trainer, cam1, cam77]
    try:
        for link in links:
            assert link.wait_connected(5), link.last_error
        heads, samples, other = [], [], []
        trainer.subscribe_and_wait(T.all_samples(), lambda m: samples.append(m))
        cam1.subscribe_and_wait(T.fleet_head("nursery"), lambda m: heads.append(m))
        codes = cam77.subscribe_and_wait(T.fleet_head("nursery"), lambda m: other.append(m))

        # the trainer may publish the fleet head; the fleet's device receives it
        p = trainer.publish(T.fleet_head("nursery"), b"head v1", qos=1, retain=True)
        assert p.wait(5) and p.reason_code == 0
        p = trainer.publish(T.fleet_service_status("nursery"), b"{}", qos=1, retain=True)  # its fleet status
        assert p.wait(5) and p.reason_code in (0, 0x10)
        deadline = time.monotonic() + 3
        while not heads and time.monotonic() < deadline:
            time.sleep(0.02)
        assert [m.payload for m in heads] == [b"head v1"]

        # staged rollout: the trainer publishes the plan and the canary ring's head; the fleet's device reads them
        ring_msgs = []
        cam1.subscribe_and_wait(T.ring_head("nursery", "canary"), lambda m: ring_msgs.append(m))
        cam1.subscribe_and_wait(T.fleet_rollout("nursery"), lambda m: ring_msgs.append(m))
        for topic in (T.fleet_rollout("nursery"), T.ring_head("nursery", "canary"), T.ring_delta("nursery", "canary")):
            p = trainer.publish(topic, b"x", qos=1, retain=topic != T.ring_delta("nursery", "canary"))
            assert p.wait(5) and p.reason_code in (0, 0x10), (topic, p.reason_code)
        deadline = time.monotonic() + 3
        while len(ring_msgs) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert sorted(m.topic for m in ring_msgs) == sorted([T.ring_head("nursery", "canary"),
                                                             T.fleet_rollout("nursery")])

        # a device's credentials cannot publish a head (refused: MQTT v5 PUBACK 0x87), nor into another device,
        # nor a rollout plan, a ring's head or a command to the update service
        for topic in (T.fleet_head("nursery"), T.fleet_delta("nursery"), T.samples("cam-02"), T.status("cam-02"),
                      T.fleet_rollout("nursery"), T.ring_head("nursery", "canary"),
                      T.fleet_service_cmd("nursery")):
            p = cam1.publish(topic, b"forged", qos=1, retain=True)
            assert p.wait(5) and p.reason_code == NOT_AUTHORIZED, (topic, p.reason_code)
        # ... but may publish its own samples, which reach the trainer
        p = cam1.publish(T.samples("cam-01"), b'{"sample": 1}', qos=1)
        assert p.wait(5) and p.reason_code == 0
        deadline = time.monotonic() + 3
        while not samples and time.monotonic() < deadline:
            time.sleep(0.02)
        assert [(m.topic, m.payload) for m in samples] == [(T.samples("cam-01"), b'{"sample": 1}')]

        # the retained head is still the trainer's; a device of another fleet never got it
        check = connect(broker, pki, "cam-02")
        links.append(check)
        assert check.wait_connected(5)
        seen = []
        check.subscribe_and_wait(T.fleet_head("nursery"), lambda m: seen.append(m.payload))
        time.sleep(0.5)
        assert seen == [b"head v1"]
        # Mosquitto 2.0 grants the subscription (SUBACK 1) and filters by ACL at delivery: nothing arrives
        assert other == [] and codes in ([NOT_AUTHORIZED], [1])

        # the CLI path: the device's credentials with another client id may command the device and get replies
        cli = connect(broker, pki, "cam-01", client_id="infantino-device-cam-01-cli")
        links.append(cli)
        assert cli.wait_connected(5)
        assert cli.subscribe_and_wait(T.cmd("cam-01") + "/reply/x", lambda m: None) == [1]
        p = cli.publish(T.cmd("cam-01"), b'{"command": "snapshot"}', qos=1)
        assert p.wait(5) and p.accepted  # 0x10 "no matching subscribers" is a success code
        p = cli.publish(T.cmd("cam-02"), b'{"command": "rollback"}', qos=1)
        assert p.wait(5) and p.reason_code == NOT_AUTHORIZED
    finally:
        for link in links:
            link.stop(timeout=0.5)


def test_wrong_password_and_anonymous_are_refused(secure_broker):
    broker, pki = secure_broker
    bad = connect(broker, pki, "cam-01", password="wrong")
    anon = MqttLink(BrokerConfig(host="127.0.0.1", port=broker.port, tls={"ca_file": str(pki["ca"])},
                                 reconnect_min_s=0.2, reconnect_max_s=0.5), "anon", clean_start=True).start()
    try:
        time.sleep(1.0)
        assert not bad.connected.is_set() and "refused" in (bad.last_error or "")
        assert not anon.connected.is_set() and "refused" in (anon.last_error or "")
    finally:
        bad.stop(timeout=0.2)
        anon.stop(timeout=0.2)
