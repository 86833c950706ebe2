"""A site broker bridged to the central broker on loopback, with the uplink cut mid-stream and restored.

The central broker runs the shipped examples/mosquitto (mosquitto.conf, acl; TLS and passwords, with generated
certificates); the site broker runs examples/mosquitto/site.yaml rendered by benchmarks.sitebridge (its
listener plain on loopback, its uplink through a NetCut proxy). The update service (a subprocess) is on the
central broker, the site's device daemons on the site broker. Devices stream labelled samples (and predictions,
which must stay on the site); the uplink is cut for `cut_s` and restored. Returned: what the central side saw
(every sample id, duplicates, topics), what the service learned and published, every device's head, how many
messages the site held during the cut, and how long after the restore the bridge, the queue and the heads took.
It reads examples/mosquitto from the source checkout. `python -m infantino.benchmarks.sitebench --help`.
"""

from __future__ import annotations

import collections
import json
import logging
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from infantino.benchmarks.broker import BrokerUnavailable, MosquittoBroker, free_port, set_config_values
from infantino.benchmarks.loopbench import HeadHolder, _fit_online_head, start_service, stop_service
from infantino.benchmarks.netcut import NetCut
from infantino.benchmarks.pki import make_pki
from infantino.benchmarks.timing import wait_until
from infantino.benchmarks.sitebridge import SiteBridgeConfig, render_central_acl, render_site_bridge
from infantino.device.config import DeviceConfig
from infantino.device.daemon import BundleFacts, DeviceDaemon
from infantino.runtime.configfile import load_yaml_config, validate_config
from infantino.runtime.contract.classes import CLASSES
from infantino.runtime.contract.errors import InfantinoError
from infantino.runtime.contract.head import Head
from infantino.runtime.contract.head_update import apply_update
from infantino.runtime.contract.layout import HEAD_FILE, HEAD_STATE_FILE
from infantino.runtime.contract.messages import CommandMessage, FacePrediction, PredictionMessage, SampleMessage
from infantino.runtime.contract.signing import generate_keypair, load_public_key
from infantino.runtime.contract.topics import Topics
from infantino.runtime.mqtt import BrokerConfig, Message, MqttLink, topic_matches
from infantino.trainer.service import TrainerServiceConfig

log = logging.getLogger(__name__)

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "mosquitto"
EXT = "e" * 64


@dataclass
class CentralView:
    """What an operator subscribed to `<prefix>/#` on the central broker sees."""

    public_key: object
    fleet: str
    topics: Topics
    lock: threading.Lock = field(default_factory=threading.Lock)
    first_seen: dict = field(default_factory=dict)  # sample id -> monotonic time
    deliveries: collections.Counter = field(default_factory=collections.Counter)
    device_topics: set = field(default_factory=set)
    sample_bytes: list = field(default_factory=list)
    status_bytes: list = field(default_factory=list)
    head: tuple | None = None  # (version, sha256) of the latest retained full head
    status: dict = field(default_factory=dict)
    learned_by_version: dict = field(default_factory=dict)  # published version -> samples learned by then
    bridge_states: list = field(default_factory=list)
    replies: dict = field(default_factory=dict)
    bad_heads: int = 0

    def on_message(self, m: Message) -> None:
        now = time.monotonic()
        t = self.topics
        if topic_matches(t.all_samples(), m.topic):
            try:
                sid = json.loads(m.payload)["sample_id"]
            except (ValueError, KeyError, TypeError):
                sid = f"unreadable:{m.payload[:40]!r}"
            with self.lock:
                self.deliveries[sid] += 1
                self.first_seen.setdefault(sid, now)
                self.sample_bytes.append(len(m.payload))
        elif topic_matches(t.status("+"), m.topic):
            self.status_bytes.append(len(m.payload))
        elif m.topic == t.fleet_head(self.fleet):
            try:
                h = apply_update(None, m.payload, self.public_key, EXT, self.fleet)
                self.head = (h.version, h.sha256)
            except InfantinoError:
                self.bad_heads += 1
        elif m.topic == t.fleet_service_status(self.fleet):
            self.status = json.loads(m.payload)
            self.learned_by_version[self.status.get("published_version")] = self.status.get("samples_learned")
        elif m.topic.endswith("/bridge/state"):
            self.bridge_states.append((now, m.payload.decode(errors="replace")))
        elif "/cmd/reply/" in m.topic:
            self.replies[m.topic] = json.loads(m.payload)
        if m.topic.startswith(f"{t.prefix}/device/"):
            with self.lock:
                self.device_topics.add(m.topic)


@dataclass
class SiteView:
    """What a client of the site broker sees: predictions, the uplink state, and what the bridge had to hold."""

    out_filters: list
    predictions: int = 0
    bridge_states: list = field(default_factory=list)
    cut: bool = False
    held_during_cut: int = 0

    @property
    def uplink_up(self) -> bool:
        return bool(self.bridge_states) and self.bridge_states[-1][1] == "1"

    def on_message(self, m: Message) -> None:
        if m.topic.endswith("/predictions"):
            self.predictions += 1
        elif m.topic.endswith("/bridge/state"):
            self.bridge_states.append((time.monotonic(), m.payload.decode(errors="replace")))
        if self.cut and not m.retain and any(topic_matches(f, m.topic) for f in self.out_filters):
            self.held_during_cut += 1


def start_central(d: Path, examples: Path, pki: dict, passwords: dict[str, str], acl_extra: str) -> MosquittoBroker:
    """The shipped central broker config (TLS, passwords, ACL) on a free loopback port."""
    if shutil.which("mosquitto_passwd") is None:
        raise BrokerUnavailable("mosquitto_passwd is not installed (Debian package mosquitto)")
    d.mkdir(parents=True, exist_ok=True)
    acl = d / "acl"
    text = (examples / "acl").read_text()
    acl.write_text(text if acl_extra in text else text + "\n" + acl_extra)
    pw = d / "passwords"
    for user, password in passwords.items():
        flags = ["-b"] if pw.exists() else ["-b", "-c"]
        subprocess.run(["mosquitto_passwd", *flags, str(pw), user, password], check=True, capture_output=True)
    port = free_port()
    conf = set_config_values((examples / "mosquitto.conf").read_text(), {
        "password_file": pw, "acl_file": acl, "cafile": pki["ca"], "certfile": pki["cert"], "keyfile": pki["key"],
        "persistence_location": f"{d}/", "listener": f"{port} 127.0.0.1"})
    return MosquittoBroker(d / "run", port=port, config_text=conf).start()


@dataclass
class SitePair:
    """A central broker (shipped config) and a site broker (rendered site config) bridged through `uplink`."""

    central: MosquittoBroker
    uplink: NetCut
    site: MosquittoBroker
    cfg: SiteBridgeConfig  # the site as run (loopback address, generated certificates)
    ca_file: str
    passwords: dict

    def central_broker_config(self, user: str) -> BrokerConfig:
        """How `user` (infantino-trainer, operator, or the site's user) reaches the central broker."""
        return BrokerConfig(host="localhost", port=self.central.port, username=user, password=self.passwords[user],
                            tls={"ca_file": self.ca_file}, reconnect_min_s=0.2, reconnect_max_s=2.0)

    def close(self) -> None:
        self.site.kill()
        self.uplink.close()
        self.central.kill()


def start_site_pair(work: Path, *, site_yaml: str | Path = EXAMPLES / "site.yaml", examples: str | Path = EXAMPLES,
                    restart_timeout: tuple[int, int] = (1, 2), **overrides) -> SitePair:
    """Start both brokers for the site of `site_yaml` (fields in `overrides` replaced, e.g. max_queued_messages)."""
    work.mkdir(parents=True, exist_ok=True)
    pki = make_pki(work / "certs")
    shipped = load_yaml_config(SiteBridgeConfig, site_yaml)
    pw = {"infantino-trainer": secrets.token_hex(8), "operator": secrets.token_hex(8),
          shipped.username: secrets.token_hex(8)}
    central = start_central(work / "central", Path(examples), pki, pw, render_central_acl(shipped))
    uplink = site = None
    try:
        uplink = NetCut("127.0.0.1", central.port).start()
        cfg = SiteBridgeConfig.model_validate({
            **shipped.model_dump(), "remote_host": "localhost", "remote_port": uplink.port,
            "remote_password": pw[shipped.username], "tls": {"cafile": str(pki["ca"])},
            "persistence_location": f"{work / 'site'}/", "autosave_interval_s": 1,
            "restart_base_s": restart_timeout[0], "restart_cap_s": restart_timeout[1], **overrides})
        port = free_port()
        site = MosquittoBroker(work / "site", port=port, config_text=(
            f"listener {port} 127.0.0.1\nallow_anonymous true\n" + render_site_bridge(cfg))).start()
    except BaseException:
        if uplink is not None:
            uplink.close()
        central.kill()
        raise
    return SitePair(central=central, uplink=uplink, site=site, cfg=cfg, ca_file=str(pki["ca"]), passwords=pw)


def _wait(cond: Callable[[], bool], timeout: float, what: str, check: Callable[[], None] = lambda: None) -> float:
    """Poll `cond` (after `check`) until true (returns the monotonic time) or raise TimeoutError naming `what`."""
    if not wait_until(lambda: check() or cond(), timeout, step=0.02):
        raise TimeoutError(f"{what}: not within {timeout:g} s")
    return time.monotonic()


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def _first_after(states: list, t: float, value: str) -> float | None:
    return next((ts - t for ts, v in list(states) if ts >= t and v == value), None)


class _Scenario:
    """One run: the update service, the device daemons and both views on a started SitePair; `close()` ends all."""

    def __init__(self, work: Path, pair: SitePair, min_interval_ms: int, seed: int):
        self.work, self.pair = work, pair
        cfg = pair.cfg
        self.fleet, self.devices, self.topics = cfg.fleets[0], cfg.devices, Topics(cfg.topic_prefix)
        generate_keypair(work / "signing.key", work / "signing.pub")
        self.pk = load_public_key(work / "signing.pub")
        _fit_online_head(work / "head", EXT, (32,), seed)
        self.head0 = Head.from_bytes((work / "head" / HEAD_FILE).read_bytes())
        self.rng = np.random.default_rng(seed + 1)
        self.central = CentralView(public_key=self.pk, fleet=self.fleet, topics=self.topics)
        self.site = SiteView(out_filters=cfg.out_topics())
        self.operator = MqttLink(pair.central_broker_config("operator"), f"site-operator-{uuid.uuid4().hex[:6]}",
                                 clean_start=True)
        self.watcher = MqttLink(BrokerConfig(port=pair.site.port), f"site-watch-{uuid.uuid4().hex[:6]}",
                                clean_start=True)
        self.min_interval_ms = min_interval_ms
        self.daemons: list[DeviceDaemon] = []
        self.holders: dict[str, HeadHolder] = {}
        self.applied: dict[str, list] = {dev: [] for dev in self.devices}  # device -> [(monotonic, version)]
        self.svc: subprocess.Popen | None = None
        self.svc_log = None
        self.sent: list[str] = []
        self.during_cut: list[str] = []
        self.pubs: list = []
        self.t_cut = self.t_restore = self.stream_end = self.t_conv = None
        self.sent_at_restore = 0

    # ---- start -----------------------------------------------------------------------------------------
    def start(self, progress: Callable[[str], None]) -> None:
        self.operator.start()
        self.watcher.start()
        self.operator.subscribe_and_wait(f"{self.topics.prefix}/#", self.central.on_message, timeout=15)
        self.watcher.subscribe_and_wait(f"{self.topics.prefix}/#", self.site.on_message, timeout=15)
        self._start_service()
        progress(f"starting {len(self.devices)} device daemons on the site broker")
        for dev in self.devices:
            self._start_device(dev)
        progress("waiting for the devices, the uplink and the update service's retained head")
        _wait(lambda: all(d.link.connected for d in self.daemons) and self.site.uplink_up
              and self.central.head is not None and self._heads_are(self.central.head),
              120, "devices connected, uplink up, the service's head retained and held by every device",
              self.service_alive)

    def _start_service(self) -> None:
        w = self.work
        svc_cfg = {"broker": self.pair.central_broker_config("infantino-trainer").model_dump(mode="json",
                                                                                              exclude_none=True),
                   "fleets": [{"name": self.fleet, "initial_head": str(w / "head" / HEAD_FILE),
                               "head_state": str(w / "head" / HEAD_STATE_FILE), "devices": list(self.devices)}],
                   "state_dir": str(w / "svc"), "signing_key": str(w / "signing.key"),
                   "min_interval_ms": self.min_interval_ms, "delta_dtype": "float16", "mlflow": {"enabled": False},
                   "service_id": f"site-trainer-{uuid.uuid4().hex[:6]}"}
        validate_config(TrainerServiceConfig, svc_cfg)
        (w / "trainer.yaml").write_text(json.dumps(svc_cfg))
        self.svc, self.svc_log = start_service(w / "trainer.yaml", w / "service.log")

    def _start_device(self, dev: str) -> None:
        (self.work / "bundle").mkdir(exist_ok=True)
        cfg = validate_config(DeviceConfig, {
            "device_id": dev, "fleet": self.fleet, "bundle": str(self.work / "bundle"),
            "public_key": str(self.work / "signing.pub"), "topic_prefix": self.topics.prefix,
            "camera": {"source": 0, "reopen_on_end": False, "stall_timeout_s": 3600},
            "broker": {"host": "127.0.0.1", "port": self.pair.site.port, "reconnect_min_s": 0.2,
                       "reconnect_max_s": 1.0},
            "publish": {"status_interval_s": 2, "predictions": False},
            "state_dir": str(self.work / "devices" / dev)})
        self.holders[dev] = HeadHolder(self.head0)
        d = DeviceDaemon(cfg, self.holders[dev], BundleFacts(EXT, self.head0, 64, "site"),
                         source_factory=lambda: iter(()), update_public_key=self.pk, backend_name="none")
        d.on_applied.append(lambda res: self.applied[dev].append((time.monotonic(), res.version)))
        d.start()
        self.daemons.append(d)
        threading.Thread(target=d.supervise, name=f"supervise-{dev}", daemon=True).start()  # periodic statuses

    def service_alive(self) -> None:
        if self.svc is not None and self.svc.poll() is not None:
            raise RuntimeError(f"the update service exited: {(self.work / 'service.log').read_text()[-2000:]}")

    def _heads_are(self, head: tuple) -> bool:
        return all((h.head.version, h.head.sha256) == head for h in self.holders.values())

    # ---- the stream, with the uplink cut ----------------------------------------------------------------
    def stream(self, rate: float, before_s: float, cut_s: float, after_s: float) -> None:
        period = 1.0 / (rate * len(self.daemons))
        t0 = next_t = time.monotonic()
        tick = 0
        while time.monotonic() - t0 < before_s + cut_s + after_s:
            elapsed = time.monotonic() - t0
            if self.t_cut is None and elapsed >= before_s:
                # the time is taken before the cut: the central broker may report the drop before cut() returns
                self.t_cut = time.monotonic()
                self.site.cut = True
                self.pair.uplink.cut()
            elif self.t_restore is None and self.t_cut is not None and elapsed >= before_s + cut_s:
                self.pair.uplink.restore()
                self.site.cut = False
                self.t_restore = time.monotonic()
                self.sent_at_restore = len(self.sent)
            self._send(self.daemons[tick % len(self.daemons)], tick)
            tick += 1
            next_t += period
            time.sleep(max(0.0, next_t - time.monotonic()))
        self.stream_end = time.monotonic()

    def _send(self, d: DeviceDaemon, tick: int) -> None:
        """One labelled sample from `d` (and every third tick a prediction, which must stay on the site)."""
        dev = d.config.device_id
        k = int(self.rng.integers(len(CLASSES)))
        e = self.rng.normal(size=64)
        e[k] += 2.0
        sid = f"{dev}-{uuid.uuid4().hex[:10]}"
        self.pubs.append(d.link.publish_sample(SampleMessage(
            device_id=dev, fleet=self.fleet, sample_id=sid, embedding=[float(v) for v in e], extractor_id=EXT,
            label=CLASSES[k])))
        self.sent.append(sid)
        if self.site.cut:
            self.during_cut.append(sid)
        if tick % 3 == 0:
            d.link.publish_prediction(PredictionMessage(
                device_id=dev, frame_id=tick, timestamp=time.time(), head_version=self.holders[dev].head.version,
                faces=[FacePrediction(box=(0, 0, 8, 8), label=CLASSES[k], entropy=1.9,
                                      probabilities={c: 1.0 / len(CLASSES) for c in CLASSES},
                                      prediction_set=list(CLASSES))]))

    # ---- after the stream --------------------------------------------------------------------------------
    def converge(self, timeout: float) -> None:
        """Wait until every sample is learned and every device holds the last published head (or time out)."""
        def done() -> bool:
            st, head = self.central.status, self.central.head
            return (st.get("samples_learned") == len(self.sent) and head is not None
                    and st.get("published_version") == head[0] and self._heads_are(head))

        try:
            self.t_conv = _wait(done, timeout, "convergence", self.service_alive)
        except TimeoutError as e:
            log.warning("%s", e)

    def command_roundtrip(self) -> dict | None:
        """A command from the central side to a site device, answered (MQTT v5 response topic) through the bridge."""
        dev = self.devices[0]
        req = uuid.uuid4().hex[:10]
        reply_topic = f"{self.topics.cmd(dev)}/reply/{req}"
        props = self.operator.response_properties(reply_topic, req.encode())
        self.operator.publish(self.topics.cmd(dev), CommandMessage(command="request-full-head", request_id=req)
                              .model_dump_json(exclude_none=True), qos=1, properties=props).wait(5)
        try:
            _wait(lambda: reply_topic in self.central.replies, 15, "command reply")
        except TimeoutError as e:
            log.warning("%s", e)
            return None
        return self.central.replies[reply_topic]

    def _caught_up_s(self) -> float | None:
        """When every device held a head that had learned every sample sent before the restore."""
        need = min((v for v, n in self.central.learned_by_version.items()
                    if v is not None and n is not None and n >= self.sent_at_restore), default=None)
        if need is None:
            return None
        reached = [next((t for t, v in self.applied[dev] if v >= need), None) for dev in self.devices]
        return None if None in reached else round(max(reached) - self.t_restore, 3)

    def figures(self) -> dict:
        c, cfg = self.central, self.pair.cfg
        with c.lock:
            seen, deliveries, topics = dict(c.first_seen), dict(c.deliveries), sorted(c.device_topics)
        sent = set(self.sent)
        drained = None
        if self.during_cut and all(s in seen for s in self.during_cut):
            drained = round(max(seen[s] for s in self.during_cut) - self.t_restore, 3)
        allowed = cfg.out_topics() + cfg.in_topics()
        up = self.pair.uplink
        return {
            "samples_sent": len(self.sent), "samples_sent_during_cut": len(self.during_cut),
            "site_messages_held_during_cut": self.site.held_during_cut,
            "samples_refused_by_site": sum(1 for p in self.pubs if not (p.wait(10) and p.accepted)),
            "sample_bytes_mean": round(float(np.mean(c.sample_bytes)), 1) if c.sample_bytes else None,
            "status_bytes_mean": round(float(np.mean(c.status_bytes)), 1) if c.status_bytes else None,
            "samples_at_central": len(seen), "samples_missing_at_central": sorted(sent - set(seen)),
            "samples_unknown_at_central": sorted(set(seen) - sent),
            "bridge_redeliveries": sum(n - 1 for n in deliveries.values()),
            "service_samples_learned": c.status.get("samples_learned"),
            "service_published_version": c.status.get("published_version"),
            "initial_version": self.head0.version,
            "central_head": {"version": c.head[0], "sha256": c.head[1]} if c.head else None,
            "device_heads": {dev: {"version": h.head.version, "sha256": h.head.sha256}
                             for dev, h in self.holders.items()},
            "converged": self.t_conv is not None,
            "converged_s_after_restore": _round(self.t_conv and self.t_conv - self.t_restore),
            "converged_s_after_stream_end": _round(self.t_conv and self.t_conv - self.stream_end),
            "bridge_up_s_after_restore": _round(_first_after(self.site.bridge_states, self.t_restore, "1")),
            "queue_drained_s_after_restore": drained,
            "heads_caught_up_s_after_restore": self._caught_up_s(),
            "device_update_rejections": {d.config.device_id: dict(d.ota.rejections) for d in self.daemons},
            "central_saw_uplink_down": any(v == "0" for ts, v in c.bridge_states if self.t_cut <= ts <= self.t_restore),
            "central_bridge_states": [(round(ts - self.t_cut, 3), v) for ts, v in c.bridge_states],  # s after the cut
            "predictions_on_site": self.site.predictions,
            "central_device_topics": topics,
            "central_topics_not_bridged": [t for t in topics if not any(topic_matches(f, t) for f in allowed)],
            "uplink": {"connections": up.accepted, "refused_while_cut": up.refused, **up.bytes},
        }

    def close(self) -> None:
        for d in self.daemons:
            d.request_stop()
        for d in self.daemons:
            d.stop()
        self.operator.stop(timeout=0.5)
        self.watcher.stop(timeout=0.5)
        if self.svc is not None:
            stop_service(self.svc, self.svc_log)
        self.pair.close()


def measure_site_bridge(*, rate: float = 5.0, before_s: float = 4.0, cut_s: float = 6.0, after_s: float = 4.0,
                        min_interval_ms: int = 200, restart_timeout: tuple[int, int] = (1, 2),
                        site_yaml: str | Path = EXAMPLES / "site.yaml", examples: str | Path = EXAMPLES,
                        workdir: str | Path | None = None, converge_timeout_s: float = 60.0, seed: int = 0,
                        progress: Callable[[str], None] = lambda s: None) -> dict:
    """Run the scenario (module docstring); `rate` is labelled samples per second per device."""
    work = Path(workdir or tempfile.mkdtemp(prefix="infantino-site-"))
    pair = start_site_pair(work, site_yaml=site_yaml, examples=examples, restart_timeout=restart_timeout)
    try:
        run = _Scenario(work, pair, min_interval_ms, seed)
    except BaseException:
        pair.close()
        raise
    try:
        run.start(progress)
        progress(f"streaming {rate:g} samples/s from each of {len(run.devices)} devices; uplink cut at "
                 f"{before_s:g} s for {cut_s:g} s")
        run.stream(rate, before_s, cut_s, after_s)
        progress("waiting for every sample to be learned and every device to hold the last published head")
        run.converge(converge_timeout_s)
        reply = run.command_roundtrip() if run.t_conv is not None else None
        return {"devices": len(run.devices), "rate_per_device": rate, "before_s": before_s, "cut_s": cut_s,
                "after_s": after_s, "min_interval_ms": min_interval_ms, "restart_timeout": list(restart_timeout),
                **run.figures(), "command_reply": reply}
    finally:
        run.close()


SUMMARY_FIGURES = ("site_messages_held_during_cut", "bridge_up_s_after_restore", "queue_drained_s_after_restore",
                   "heads_caught_up_s_after_restore", "converged_s_after_restore", "bridge_redeliveries")


def summarize(runs: list[dict]) -> dict:
    """Median, min and max over repeated runs of the timing and queue figures; the loss checks must hold in all."""
    from .repeats import median_range

    figures = {k: median_range([r.get(k) for r in runs]) for k in SUMMARY_FIGURES}
    lossless = [r["converged"] and not r["samples_missing_at_central"] and r["samples_refused_by_site"] == 0
                and r["service_samples_learned"] == r["samples_sent"] for r in runs]
    return {"runs": len(runs), "figures": figures, "nothing_lost_and_converged": sum(lossless)}


def main(argv: list[str] | None = None) -> int:
    """Run the scenario (--runs times) and print its figures as JSON (exit 1 unless the heads always converged)."""
    import argparse

    from . import report as rpt
    from .machine import describe

    ap = argparse.ArgumentParser(prog="python -m infantino.benchmarks.sitebench", description=main.__doc__)
    ap.add_argument("--rate", type=float, default=5.0, help="labelled samples per second per device (default 5)")
    ap.add_argument("--before", type=float, default=4.0, help="seconds streamed before the cut (default 4)")
    ap.add_argument("--cut", type=float, default=6.0, help="seconds the uplink is down (default 6)")
    ap.add_argument("--after", type=float, default=4.0, help="seconds streamed after the restore (default 4)")
    ap.add_argument("--restart-timeout", type=int, nargs=2, default=(1, 2), metavar=("BASE", "CAP"),
                    help="the bridge's reconnect back-off in s (default 1 2; site.yaml's default is 2 30)")
    ap.add_argument("--runs", type=int, default=1, help="repeat the scenario this often; with --json each run is "
                    "written beside it (-runN) and the file holds the median and range (default 1)")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args(argv)
    if min(args.rate, args.cut) <= 0 or min(args.before, args.after) < 0:
        ap.error("--rate and --cut must be positive, --before and --after not negative")
    if args.runs < 1:
        ap.error("--runs must be at least 1")
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    config = {"rate": args.rate, "before_s": args.before, "cut_s": args.cut, "after_s": args.after,
              "restart_timeout": list(args.restart_timeout), "runs": args.runs}
    runs = []
    for i in range(args.runs):
        machine = describe(peak=False)
        out = measure_site_bridge(rate=args.rate, before_s=args.before, cut_s=args.cut, after_s=args.after,
                                  restart_timeout=tuple(args.restart_timeout),
                                  progress=lambda s: print(f"# run {i + 1}/{args.runs}: {s}", file=sys.stderr))
        out = {k: v for k, v in out.items() if k != "central_device_topics"}
        runs.append(out)
        doc = rpt.make_plain_report("site-bridge", machine, config, out)
        print(rpt.to_json(doc), end="")
        if args.json and args.runs > 1:
            rpt.write_json(args.json.with_name(f"{args.json.stem}-run{i + 1}{args.json.suffix}"), doc)
        elif args.json:
            rpt.write_json(args.json, doc)
    if args.runs > 1:
        summary = rpt.make_plain_report("site-bridge-summary", describe(peak=False), config, summarize(runs))
        print(rpt.to_json(summary), end="")
        if args.json:
            rpt.write_json(args.json, summary)
    return 0 if all(r["converged"] for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
