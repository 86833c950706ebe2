"""MQTT fixtures: a real Mosquitto on a free loopback port (generated config), with stop/kill/restart helpers."""

from __future__ import annotations

import time

import pytest

from ci_skip import missing


def _broker_or_skip(tmp_path, **kw):
    from infantino.benchmarks.broker import BrokerUnavailable, MosquittoBroker, find_mosquitto

    if find_mosquitto() is None:
        missing("Mosquitto is not installed (Debian package 'mosquitto'); MQTT tests need a real broker")
    try:
        return MosquittoBroker(tmp_path, **kw).start()
    except BrokerUnavailable as e:
        missing(f"Mosquitto did not start: {e}")


@pytest.fixture()
def mosquitto(tmp_path):
    """A running Mosquitto (persistence saved on every change, large queues) on 127.0.0.1:<free port>."""
    broker = _broker_or_skip(tmp_path / "mosquitto")
    yield broker
    broker.kill()


@pytest.fixture()
def mosquitto_factory(tmp_path):
    """mosquitto_factory(name, **MosquittoBroker kwargs) -> a started broker; all are killed at teardown."""
    started = []

    def make(name: str = "broker", **kw):
        b = _broker_or_skip(tmp_path / name, **kw)
        started.append(b)
        return b

    yield make
    for b in started:
        b.kill()


def mqtt_broker_config(broker, **kw):
    """A BrokerConfig pointing at a test broker, with short reconnect back-off bounds."""
    from infantino.runtime.mqtt import BrokerConfig

    base = dict(host=broker.host, port=broker.port, reconnect_min_s=0.1, reconnect_max_s=0.5, keepalive_s=5)
    base.update(kw)
    return BrokerConfig(**base)


def wait_for(cond, timeout=15.0, step=0.02):
    """Poll `cond` until it holds or `timeout` passes; returns its last value (tests assert on it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return bool(cond())
