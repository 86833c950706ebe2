"""Several update-service workers (real processes) sharing fleets on one state folder and one real Mosquitto:
each fleet has exactly one owner; kill -9 a worker mid-stream and the survivor takes its fleets over from the
last checkpoint, resuming the fleets' MQTT sessions: every sample is learned (exactly once), no version number is
published with two different weights; a restarted worker gets its share back."""

from __future__ import annotations

import time

import pytest

from fixtures_mqtt import mqtt_broker_config
from infantino.benchmarks.workers import FleetWatch, SampleStream, WorkerPool, fleets_config, wait_until
from infantino.runtime.contract.signing import load_public_key
from infantino.trainer.service import TrainerServiceConfig, UpdateService
from infantino.trainer.service.ownership import Ownership

pytestmark = pytest.mark.mqtt


def test_killed_worker_fleets_are_taken_over_nothing_lost_no_version_twice(tmp_path, mosquitto, sim_head):
    bcfg = mqtt_broker_config(mosquitto)
    cfg = fleets_config(tmp_path, bcfg, fleets=4, devices=3, head_dir=sim_head)
    watch = FleetWatch(bcfg, load_public_key(tmp_path / "signing.pub")).start()
    pool = WorkerPool(tmp_path, cfg)
    stream = None
    try:
        pool.start("a")
        pool.start("b")
        split = lambda: sorted(list(watch.owners().values()).count(w) for w in ("a", "b"))  # noqa: E731
        assert wait_until(lambda: len(watch.owners()) == 4 and split() == [2, 2], 120), \
            (watch.owners(), pool.log_tail("a"), pool.log_tail("b"))
        stream = SampleStream(bcfg, fleets=4, devices=3)
        killed = {}

        def at(elapsed: float) -> None:
            if elapsed > 3.0 and not killed:
                killed["worker"] = watch.owners()["f00"]
                killed["at"] = time.monotonic()
                pool.kill(killed["worker"])

        sent = stream.run(8.0, 60.0, at=at)
        survivor = ({"a", "b"} - {killed["worker"]}).pop()
        assert wait_until(lambda: set(watch.owners().values()) == {survivor}, 60), watch.owners()
        assert wait_until(lambda: watch.learned() == stream.sent, 90), (watch.learned(), stream.sent)
        assert sum(stream.sent.values()) == sent
        assert watch.versions_with_two_weights() == []
        assert wait_until(lambda: all(watch.retained.get(f) == st["published_version"]
                                      for f, st in watch.status.items()), 30)

        # the dead worker comes back: it gets its share again, and learning goes on in every fleet
        pool.start(killed["worker"])
        assert wait_until(lambda: split() == [2, 2], 60), watch.owners()
        before = dict(watch.learned())
        stream.run(2.0, 40.0)
        assert wait_until(lambda: watch.learned() == stream.sent, 60), (watch.learned(), stream.sent, before)
        assert watch.versions_with_two_weights() == []
    finally:
        if stream is not None:
            stream.stop()
        pool.stop()
        watch.stop()


def test_one_owner_per_fleet_in_process(tmp_path, mosquitto, sim_head):
    """Two services in one process on one state folder split the fleets; a second worker with a taken id is
    refused; stopping one hands its fleets to the other."""
    from infantino.runtime.configfile import validate_config
    from infantino.runtime.contract.errors import InfantinoError
    import json

    path = fleets_config(tmp_path, mqtt_broker_config(mosquitto), fleets=3, devices=2, head_dir=sim_head)
    data = json.loads(path.read_text())
    one = UpdateService(validate_config(TrainerServiceConfig, {**data, "workers": {"worker_id": "one",
                                                                                   "rebalance_s": 0.2}}))
    assert sorted(one.fleets) == ["f00", "f01", "f02"]  # alone: it owns every fleet
    two = None
    try:
        with pytest.raises(InfantinoError, match="already running"):
            Ownership(tmp_path / "svc", "one")
        one.start()
        two = UpdateService(validate_config(TrainerServiceConfig, {**data, "workers": {"worker_id": "two",
                                                                                       "rebalance_s": 0.2}})).start()
        assert wait_until(lambda: sorted([len(one.fleets), len(two.fleets)]) == [1, 2], 30)
        assert not set(one.fleets) & set(two.fleets)
        one.stop()
        assert wait_until(lambda: sorted(two.fleets) == ["f00", "f01", "f02"] and two.ready, 30)
    finally:
        one.stop()
        if two is not None:
            two.stop()
