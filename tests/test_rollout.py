"""Staged rollout on a loopback fleet of 20 real device daemons (3 in the canary ring) and a real Mosquitto:
a good stream is committed to every device; a poisoned burst reaches only the canary ring, fails the health gate
and is rolled back automatically (the rest of the fleet never runs it); learning then goes on; an operator can
commit or abort over MQTT. Plus the gate's judgement and the devices' ring membership as units."""

from __future__ import annotations

import json
import time

import pytest

from fixtures_mqtt import mqtt_broker_config
from fixtures_mqtt import wait_for as _wait_for
from infantino.benchmarks.fleetsim import SimFleet
from infantino.runtime.configfile import validate_config
from infantino.runtime.contract.rollout import RolloutPlan, bucket
from infantino.runtime.mqtt import MqttLink
from infantino.trainer.commands import rollout as rollout_cli
from infantino.trainer.service import GateConfig, TrainerServiceConfig, UpdateService, judge


def wait_for(cond, timeout=30.0, step=0.05):
    return _wait_for(cond, timeout, step)


def start_fleet(tmp_path, mosquitto, sim_head, **over):
    fleet = SimFleet(tmp_path, mqtt_broker_config(mosquitto), devices=20, canary=3, head_dir=sim_head)
    fleet.config = cfg = fleet.service_config(**over)
    svc = UpdateService(validate_config(TrainerServiceConfig, cfg)).start()
    fleet.start()
    assert wait_for(lambda: svc.ready and fleet.wait_connected(0.1))
    rings = lambda: fleet.rings()  # noqa: E731
    assert wait_for(lambda: [d for d, r in rings().items() if r == "canary"] == fleet.canary_ids), rings()
    return fleet, svc


def decisions(svc, kind):
    return [d for d in list(svc.decisions) if d.decision == kind]


@pytest.mark.mqtt
def test_poisoned_burst_stays_on_the_canary_ring_and_is_rolled_back(tmp_path, mosquitto, sim_head):
    fleet, svc = start_fleet(tmp_path, mosquitto, sim_head, rollout={"collect_s": 2.0})
    unit = svc.unit("nursery")
    canary = [d for d in fleet.daemons if d.config.device_id in fleet.canary_ids]
    rest = [d for d in fleet.daemons if d.config.device_id not in fleet.canary_ids]
    try:
        # 1. a good stream: canary first, then the whole fleet
        fleet.send(100)
        assert wait_for(lambda: decisions(svc, "commit"), 60), unit.rollout.status()
        good = decisions(svc, "commit")[0]
        assert good.by == "gate" and good.figures["devices_reporting"] >= 2, good
        assert wait_for(lambda: set(fleet.versions().values()) == {good.version})
        assert unit.w.state.published.version == good.version

        # 2. a poisoned burst: everything labelled `angry`
        fleet.send(200, poison=True)
        assert wait_for(lambda: decisions(svc, "rollback"), 90), unit.rollout.status()
        bad = decisions(svc, "rollback")[0]
        assert bad.by == "gate" and bad.version > good.version, bad
        assert any("label" in r or "entropy" in r for r in bad.reasons), bad.reasons
        assert fleet.ever_ran(bad.version) and fleet.ever_ran(bad.version) <= set(fleet.canary_ids)
        assert all(d.pipeline.head.version == good.version for d in rest)  # the rest never left the committed head
        restore = unit.w.state.canary
        assert restore.sha256 == unit.w.state.published.sha256 and restore.version > bad.version
        assert wait_for(lambda: all(d.pipeline.head.sha256 == restore.sha256 for d in canary))
        assert all(d.store.blocked_up_to < restore.version for d in canary)
        quarantined = (unit.w.state.dir / "quarantine" / f"v{bad.version}.jsonl").read_text().splitlines()
        assert len(quarantined) >= 150 and all(json.loads(q)["label"] == "angry" for q in quarantined)
        assert unit.w.state.rollout["failed"] == [bad.version]

        # 3. learning goes on: the next good stream is a new canary phase, committed to everyone
        fleet.send(100)
        assert wait_for(lambda: [d for d in decisions(svc, "commit") if d.version > restore.version], 60)
        second = decisions(svc, "commit")[-1]
        assert wait_for(lambda: set(fleet.versions().values()) == {second.version})
        assert not fleet.ever_ran(bad.version) & {d.config.device_id for d in rest}
        versions = [u.version for u in svc.published]
        assert len(set((u.version, u.sha256) for u in svc.published)) == len({u.version for u in svc.published}), \
            "a version number was published with two different weights"
        assert versions  # and the retained status tells the story
        st = unit.status()["rollout"]
        assert st["phase"] == "idle" and st["committed_version"] == second.version and st["failed_versions"] == [bad.version]
    finally:
        fleet.stop()
        svc.stop()


@pytest.mark.mqtt
def test_operator_commits_and_aborts_over_mqtt(tmp_path, mosquitto, sim_head, capsys):
    """auto_commit off: a passing version waits; `commit` on the fleet's service command topic commits it,
    `abort` rolls the next one back; a command naming another version is refused."""
    fleet, svc = start_fleet(tmp_path, mosquitto, sim_head, rollout={"auto_commit": False, "collect_s": 0.5})
    unit = svc.unit("nursery")
    op = MqttLink(mqtt_broker_config(mosquitto), f"operator-{time.monotonic_ns()}", clean_start=True).start()
    assert op.wait_connected(5)
    topic = "infantino/fleet/nursery/service/cmd"
    replies = []
    op.subscribe_and_wait("ops/replies", lambda m: replies.append(json.loads(m.payload)), qos=1)

    def command(**cmd):
        n = len(replies)
        props = op.response_properties("ops/replies")
        op.publish(topic, json.dumps(cmd), qos=1, properties=props)
        assert wait_for(lambda: len(replies) > n, 15)
        return replies[-1]

    config = tmp_path / "trainer.yaml"
    config.write_text(json.dumps(fleet.service_config(rollout={"auto_commit": False})))
    cli = ["--config", str(config), "--fleet", "nursery"]
    try:
        fleet.send(40)
        assert wait_for(lambda: unit.rollout.phase == "passed", 60), unit.rollout.status()
        cand = unit.rollout.candidate_version
        assert command(command="commit", version=cand + 5)["ok"] is False
        assert rollout_cli.main(["status", *cli]) == 0
        status = json.loads(capsys.readouterr().out)
        assert status["phase"] == "passed" and status["candidate_version"] == cand
        assert rollout_cli.main(["commit", *cli, "--version", str(cand + 1)]) == 2  # not the candidate: refused
        capsys.readouterr()
        assert rollout_cli.main(["commit", *cli, "--version", str(cand)]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["ok"] and out["decision"] == "commit" and out["by"] == "operator" and out["version"] == cand
        assert wait_for(lambda: set(fleet.versions().values()) == {cand})
        fleet.send(40)
        assert wait_for(lambda: unit.rollout.phase in ("canary", "passed"), 30)
        nxt = unit.rollout.candidate_version
        out = command(command="abort")
        assert out["ok"] and out["decision"] == "rollback" and out["version"] == nxt
        assert not fleet.ever_ran(nxt) - set(fleet.canary_ids)
        assert command(command="abort")["ok"] is False  # nothing under observation now
        assert command(command="launch")["ok"] is False
    finally:
        op.stop()
        fleet.stop()
        svc.stop()


def test_gate_judgement():
    gate = GateConfig(window_s=10, timeout_s=60, min_devices=2, min_faces=50, max_label_change=0.2,
                      max_entropy_increase=0.1, min_fps_ratio=0.7)

    def rep(version=7, faces=100, changed=0.05, ent=0.5, base_ent=0.5, fps=20.0, base_fps=20.0, last=None):
        return {"health": {"version": version, "faces": faces, "label_changed": changed, "entropy": ent,
                           "baseline_entropy": base_ent, "set_size": 1.2, "baseline_set_size": 1.1, "fps": fps,
                           "baseline_fps": base_fps}, "last_update": last}

    ok = {"a": rep(), "b": rep()}
    assert judge(gate, 7, ok, 5).decision == "wait"              # window not over
    assert judge(gate, 7, ok, 11).decision == "pass"
    assert judge(gate, 7, {"a": rep()}, 11).decision == "wait"   # one device is not enough evidence
    assert judge(gate, 7, {"a": rep()}, 61).decision == "fail"   # ... until the timeout
    assert judge(gate, 7, {"a": rep(version=6), "b": rep(version=6)}, 11).decision == "wait"  # old version
    v = judge(gate, 7, {"a": rep(changed=0.4), "b": rep(changed=0.3)}, 1)  # fails fast, before the window
    assert v.decision == "fail" and "label changed" in v.reasons[0] and v.figures["label_change"] == 0.35
    assert judge(gate, 7, {"a": rep(ent=0.8), "b": rep(ent=0.8)}, 11).decision == "fail"
    assert judge(gate, 7, {"a": rep(fps=10), "b": rep(fps=10)}, 11).decision == "fail"
    refused = {"a": rep(), "b": rep(), "c": {"last_update": {"version": 7, "status": "rejected", "reason": "x"}}}
    assert judge(gate, 7, refused, 11).decision == "fail"
    assert judge(gate, 7, {"a": rep(faces=10), "b": rep(faces=10)}, 11).decision == "wait"  # too few faces


def test_ring_membership_is_stable_and_matches_the_percentage():
    plan = RolloutPlan(fleet="nursery", devices=["cam-x"], percent=10)
    ids = [f"cam-{i:05d}" for i in range(20000)]
    share = sum(plan.ring_of(d) == "canary" for d in ids) / len(ids)
    assert 0.09 < share < 0.11
    assert plan.ring_of("cam-x") == "canary"
    assert bucket("nursery", "cam-00001") == bucket("nursery", "cam-00001") != bucket("other", "cam-00001")
    assert RolloutPlan(fleet="nursery").ring_of("cam-00001") is None


def _http(url: str, token: str | None = None, body: dict | None = None) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, data=json.dumps(body).encode() if body is not None else None,
                                 method="POST" if body is not None else "GET")
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=15) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@pytest.mark.mqtt
def test_fleet_page_shows_the_rollout_and_the_operator_commits_over_http(tmp_path, mosquitto, sim_head):
    from infantino.benchmarks.broker import free_port

    (tmp_path / "user.token").write_text("user-token-123\n")
    (tmp_path / "op.token").write_text("operator-token-456\n")
    port = free_port()
    fleet, svc = start_fleet(tmp_path, mosquitto, sim_head, rollout={"auto_commit": False, "collect_s": 0.5},
                             web={"enabled": True, "port": port, "token_file": str(tmp_path / "user.token"),
                                  "operator_token_file": str(tmp_path / "op.token")})
    base = f"http://127.0.0.1:{port}"
    user, op = "user-token-123", "operator-token-456"
    try:
        assert wait_for(lambda: svc.web.started and len(svc.device_status) == 20)
        code, page = _http(base + "/", user)
        assert code == 200 and "<h3>Rollout</h3>" in page and "phase <b>idle</b>" in page
        assert wait_for(lambda: _http(base + "/", user)[1].count("<td>canary</td>") == 3)  # statuses name rings
        code, page = _http(base + "/", user)
        assert page.count("<td>main</td>") == 17
        assert _http(base + "/v1/fleets/nursery/rollout/commit", user, {})[0] == 403       # not the operator
        code, text = _http(base + "/v1/fleets/nursery/rollout/commit", op, {})
        assert code == 409 and "no version under observation" in text
        assert _http(base + "/v1/fleets/nursery/rollout/launch", op, {})[0] == 404
        fleet.send(40)
        assert wait_for(lambda: svc.unit("nursery").rollout.phase == "passed", 60)
        cand = svc.unit("nursery").rollout.candidate_version
        code, page = _http(base + "/", user)
        assert f"candidate <b>v{cand}</b>" in page and f"commit v{cand}" in page and "gate: pass" in page
        code, text = _http(base + "/v1/fleets/nursery/rollout/commit", op, {"version": cand})
        assert code == 200 and json.loads(text)["decision"] == "commit", text
        assert wait_for(lambda: set(fleet.versions().values()) == {cand})
        report = json.loads(_http(base + "/v1/fleets", user)[1])
        r = report["fleets"][0]["rollout"]
        assert r["phase"] == "idle" and r["last_decision"]["by"] == "operator" and r["committed_version"] == cand
    finally:
        fleet.stop()
        svc.stop()


def test_rollout_decisions_are_logged_to_mlflow(mlflow_uri):
    """A canary version, its gate decision (with the figures) and the commit to the fleet, in the fleet's run."""
    from mlflow.tracking import MlflowClient

    from infantino.trainer.service import GateDecision, MlflowConfig, PublishedUpdate, VersionTracker

    t = VersionTracker(MlflowConfig(tracking_uri=mlflow_uri, experiment="rollout-test", flush_s=0.1), {}).start()
    now = time.time()
    t.record(PublishedUpdate("nursery", 5, 4, "ab" * 32, 100, 900, 30, 130, now, ring="canary"))
    t.record(GateDecision("nursery", 5, "rollback", "gate", ["top-1 label changed on a share of 0.40 > 0.3"],
                          {"label_change": 0.4, "entropy_increase": 0.02, "devices_reporting": 3}, now + 3, 3.0))
    t.record(PublishedUpdate("nursery", 7, 4, "cd" * 32, 100, 900, 30, 160, now + 9, ring="main"))
    t.record(GateDecision("nursery", 7, "commit", "operator", [], {"label_change": 0.05}, now + 9, 4.0))
    t.stop()
    assert t.error is None and t.logged == 4
    client = MlflowClient(tracking_uri=mlflow_uri)
    run = client.get_run(t.runs["nursery"])
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "rollout_committed")] == \
        [(5, 0.0), (7, 1.0)]
    assert [m.value for m in client.get_metric_history(run.info.run_id, "gate_label_change")] == [0.4, 0.05]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "canary_head_version")] == [5]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "head_version")] == [7]
    assert run.data.tags["rollout.v5"].startswith("rollback (gate): top-1 label changed")
    assert run.data.tags["head_version"] == "7"


@pytest.mark.mqtt
def test_a_restarted_service_resumes_the_canary_phase(tmp_path, mosquitto, sim_head):
    """Stop the service while a version waits on the canary ring: the next start resumes the phase (same
    candidate, same committed head), and committing it then moves the whole fleet."""
    fleet, svc = start_fleet(tmp_path, mosquitto, sim_head, rollout={"auto_commit": False, "collect_s": 0.5})
    try:
        fleet.send(40)
        assert wait_for(lambda: svc.unit("nursery").rollout.phase == "passed", 60)
        cand = svc.unit("nursery").rollout.candidate_version
        committed = svc.unit("nursery").w.state.published.version
        svc.stop()
        svc = UpdateService(validate_config(TrainerServiceConfig, fleet.config)).start()
        assert wait_for(lambda: svc.ready)
        ro = svc.unit("nursery").rollout
        assert ro.phase == "passed" and ro.candidate_version == cand
        assert svc.unit("nursery").w.state.published.version == committed
        assert svc.unit("nursery").w.state.canary.version == cand
        assert all(v == (cand if d in fleet.canary_ids else committed) for d, v in fleet.versions().items())
        assert svc.rollout_command("nursery", "commit", cand)["decision"] == "commit"
        assert wait_for(lambda: set(fleet.versions().values()) == {cand})
    finally:
        fleet.stop()
        svc.stop()


@pytest.mark.mqtt
def test_no_canary_evidence_rolls_back_but_keeps_learning(tmp_path, mosquitto, sim_head):
    """Canary devices that never report (offline): the version is rolled back at the timeout, but nothing learned
    is quarantined: the next candidate carries the same samples again."""
    fleet, svc = start_fleet(tmp_path, mosquitto, sim_head,
                             rollout={"collect_s": 0.3, "gate": {"timeout_s": 2.0, "min_faces": 100000}})
    unit = svc.unit("nursery")
    try:
        fleet.send(30)
        assert wait_for(lambda: decisions(svc, "rollback"), 30)
        first = decisions(svc, "rollback")[0]
        assert "too little evidence" in first.reasons[0]
        assert not (unit.w.state.dir / "quarantine").exists()
        assert unit.w.state.learned == 30 and unit.rollout.since_commit  # kept
        assert wait_for(lambda: unit.rollout.phase == "canary" and unit.rollout.candidate_version > first.version)
        assert all(d.pipeline.head.version == unit.w.state.published.version for d in fleet.daemons
                   if d.config.device_id not in fleet.canary_ids)
    finally:
        fleet.stop()
        svc.stop()
