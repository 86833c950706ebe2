"""Site brokers: render the Mosquitto config of a site broker that bridges its cameras to the central broker.

A site's cameras talk to a local Mosquitto; its `connection` bridge (TLS, persistent session, QoS1) carries the
site devices' status, samples and command replies out, and their commands and the site fleets' whole
`<prefix>/fleet/<fleet>/#` subtree (heads, deltas, service status, rollout) in. While the uplink is down the
site broker queues what goes out (up to `max_queued_messages`). `render_central_acl` gives the central ACL
block of the bridge user. `python -m infantino.benchmarks.sitebridge site.yaml [--acl]` prints either.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from infantino.runtime.contract.topics import TOPIC_LEVEL

log = logging.getLogger(__name__)

_NAME = TOPIC_LEVEL
_PREFIX = re.compile(r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$")
_TOKEN = re.compile(r"^\S+$")


def _name(v: str, what: str) -> str:
    if not _NAME.match(v):
        raise ValueError(f"{what} must be letters, digits, '.', '_' or '-' (one MQTT topic level), got {v!r}")
    return v


def _token(v: Optional[str]) -> Optional[str]:
    """Mosquitto reads one whitespace-free token per value: a space or newline would cut or inject a line."""
    if v is not None and not _TOKEN.match(v):
        raise ValueError(f"must not contain spaces or line breaks, got {v!r}")
    return v


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BridgeTls(_Strict):
    """Certificate TLS to the central broker; paths are on the site host."""

    cafile: str = Field(..., description="CA that signed the central broker's certificate (bridge_cafile)")
    certfile: Optional[str] = Field(None, description="client certificate, if the central broker wants one")
    keyfile: Optional[str] = None
    version: Literal["tlsv1.2", "tlsv1.3"] = "tlsv1.2"

    _tokens = field_validator("cafile", "certfile", "keyfile")(_token)

    @model_validator(mode="after")
    def _pair(self):
        if (self.certfile is None) != (self.keyfile is None):
            raise ValueError("certfile and keyfile go together (client certificate authentication)")
        return self


class BridgePsk(_Strict):
    """Pre-shared-key TLS instead of certificates (bridge_identity / bridge_psk, hex without 0x)."""

    identity: str
    psk: str = Field(..., pattern=r"^[0-9a-fA-F]{32,}$")

    _tokens = field_validator("identity")(_token)


class SiteBridgeConfig(_Strict):
    """One site: its name, the central broker, its devices and fleets, and how much it may queue offline."""

    site: str = Field(..., description="site name: the bridge's connection name and client id suffix")
    remote_host: str = Field(..., description="the central broker's host name (as in its certificate)")
    remote_port: int = Field(8883, ge=1, le=65535)
    remote_clientid: Optional[str] = Field(None, description="stable client id on the central broker "
                                           "(default infantino-site-<site>)")
    remote_username: Optional[str] = Field(None, description="the bridge's user on the central broker "
                                           "(default site-<site>)")
    remote_password: Optional[str] = Field(None, description="written into the config: keep the file 0600")
    tls: Optional[BridgeTls] = None
    psk: Optional[BridgePsk] = None
    topic_prefix: str = "infantino"
    devices: list[str] = Field(..., min_length=1, description="the site's device ids")
    fleets: list[str] = Field(..., min_length=1, description="the fleets the site's devices belong to")
    predictions: bool = Field(False, description="also send predictions to the central broker (they stay on "
                              "the site by default: the central side does not need them to learn)")
    commands: bool = Field(True, description="device commands in, command replies out")
    status_qos: Literal[0, 1] = Field(1, description="0: statuses are not queued while the uplink is down (the "
                                      "next periodic status follows the reconnect), leaving the queue to samples")
    keepalive_s: int = Field(30, ge=5, le=65535, description="ping the central broker after this much silence; "
                             "a silently dead uplink is noticed within about two of these")
    restart_base_s: int = Field(2, ge=1, le=3600, description="reconnect back-off: first delay ...")
    restart_cap_s: int = Field(30, ge=1, le=3600, description="... growing (with jitter) up to this")
    max_queued_messages: int = Field(100_000, ge=0, description="QoS1 messages the site broker holds per client "
                                     "(the bridge is one) beyond those in flight; newer ones are dropped "
                                     "when full (0 = no limit)")
    max_queued_bytes: int = Field(0, ge=0, description="... and at most this many payload bytes (0 = no limit)")
    persistence_location: str = Field("/var/lib/mosquitto/", description="the queue survives a site broker "
                                      "restart (saved every autosave_interval_s and at a clean stop)")
    autosave_interval_s: int = Field(10, ge=1, le=86400)

    _tokens = field_validator("remote_host", "remote_clientid", "remote_username", "remote_password",
                              "persistence_location")(_token)

    @field_validator("site")
    @classmethod
    def _site(cls, v: str) -> str:
        return _name(v, "site")

    @field_validator("devices", "fleets")
    @classmethod
    def _names(cls, v: list[str]) -> list[str]:
        for x in v:
            _name(x, "device ids and fleet names")
        dup = sorted({x for x in v if v.count(x) > 1})
        if dup:
            raise ValueError(f"repeated: {', '.join(dup)}")
        return v

    @field_validator("topic_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if not _PREFIX.match(v):
            raise ValueError(f"topic_prefix must be topic levels without wildcards, got {v!r}")
        return v

    @model_validator(mode="after")
    def _check(self):
        if (self.tls is None) == (self.psk is None):
            raise ValueError("give exactly one of tls (certificates) or psk: the uplink is never plaintext")
        if self.remote_password is not None and not self.sends_username:
            raise ValueError("remote_password needs remote_username (with a client certificate or a PSK the "
                             "identity is the user name)")
        if self.restart_cap_s < self.restart_base_s:
            raise ValueError("restart_cap_s must be >= restart_base_s")
        return self

    @property
    def clientid(self) -> str:
        return self.remote_clientid or f"infantino-site-{self.site}"

    @property
    def sends_username(self) -> bool:
        """A user name goes in CONNECT unless a client certificate or PSK identity names the bridge."""
        return self.remote_username is not None or (self.tls is not None and self.tls.certfile is None)

    @property
    def username(self) -> str:
        return self.remote_username or f"site-{self.site}"

    @property
    def notification_topic(self) -> str:
        """Retained '1'/'0' on both brokers: is this site's uplink up (the central side sees it via a will)."""
        return f"{self.topic_prefix}/site/{self.site}/bridge/state"

    def out_topics(self) -> list[str]:
        """Site -> central."""
        p, out = self.topic_prefix, []
        for d in self.devices:
            out += [f"{p}/device/{d}/status", f"{p}/device/{d}/samples"]
            if self.commands:
                out.append(f"{p}/device/{d}/cmd/reply/#")
            if self.predictions:
                out.append(f"{p}/device/{d}/predictions")
        return out

    def out_qos(self, topic: str) -> int:
        return self.status_qos if topic.endswith("/status") else 1

    def in_topics(self) -> list[str]:
        """Central -> site, QoS1: each device's commands and each fleet's whole subtree."""
        p = self.topic_prefix
        cmds = [f"{p}/device/{d}/cmd" for d in self.devices] if self.commands else []
        return cmds + [f"{p}/fleet/{f}/#" for f in self.fleets]


def render_site_bridge(cfg: SiteBridgeConfig, *, comments: bool = True) -> str:
    """The site broker's queueing settings and its `connection` section (append after the site's listeners)."""
    # Mosquitto reads comments only at the start of a line: every note goes on the line above its setting.
    blocks: list[tuple[str, list[str]]] = [
        ("---- site broker: keep what the uplink cannot take yet ----\n"
         "Queued messages and sessions survive a site broker restart; a crash loses at most autosave_interval s.",
         ["persistence true", f"persistence_location {cfg.persistence_location}",
          f"autosave_interval {cfg.autosave_interval_s}", "persistent_client_expiration 7d"]),
        ("Per client, the bridge included. When full, NEWER messages are dropped silently (the oldest stay).\n"
         "max_queued_bytes 0 = no byte limit: set one on a small site box.",
         [f"max_queued_messages {cfg.max_queued_messages}", f"max_queued_bytes {cfg.max_queued_bytes}",
          "queue_qos0_messages false"]),
        ("No Nagle stalls on small messages (acks, deltas).", ["set_tcp_nodelay true"]),
        ("---- the bridge to the central broker ----", [f"connection infantino-site-{cfg.site}"]),
        ("The central broker's TLS listener; one stable client id per site.",
         [f"address {cfg.remote_host}:{cfg.remote_port}", f"remote_clientid {cfg.clientid}"]),
    ]
    auth = [f"remote_username {cfg.username}"] if cfg.sends_username else []
    if cfg.remote_password is not None:
        auth.append(f"remote_password {cfg.remote_password}")
    if cfg.tls is not None:
        auth += [f"bridge_cafile {cfg.tls.cafile}", f"bridge_tls_version {cfg.tls.version}"]
        if cfg.tls.certfile:
            auth += [f"bridge_certfile {cfg.tls.certfile}", f"bridge_keyfile {cfg.tls.keyfile}"]
        note = "TLS: verify the central broker's certificate and host name (never bridge_insecure)"
    else:
        auth += [f"bridge_identity {cfg.psk.identity}", f"bridge_psk {cfg.psk.psk}"]
        note = "TLS with a pre-shared key instead of certificates"
    if cfg.remote_password is not None or cfg.psk is not None:
        note += ";\nthis file holds a secret: mode 0600"
    blocks += [
        (f"{note}.\nThe user is the one of this site's block in the central ACL (render_central_acl).",
         auth + ["bridge_insecure false"]),
        ("MQTT v5 keeps response topics, so command replies cross the bridge (v3.1.1 drops them).\n"
         "Persistent local session: the site queues for the uplink while it is down.",
         ["bridge_protocol_version mqttv50", "cleansession false", "local_cleansession false"]),
        ("Tell the central broker this is a bridge (loop detection, retained flags kept).", ["try_private true"]),
        ("Reconnect after a failure with a jittered back-off from base to cap (s); ping after keepalive s of\n"
         "silence (an uplink that died without a reset is noticed within about two of those).",
         ["start_type automatic", f"restart_timeout {cfg.restart_base_s} {cfg.restart_cap_s}",
          f"keepalive_interval {cfg.keepalive_s}"]),
        ("Retained 1/0 on both brokers: is this uplink up (the central side gets 0 by the bridge's will).",
         ["notifications true", f"notification_topic {cfg.notification_topic}"]),
        ("Site -> central, QoS1: status" + (" (QoS0: not queued)" if cfg.status_qos == 0 else "") + ", samples"
         + (", command replies" if cfg.commands else "")
         + (", predictions" if cfg.predictions else " (predictions stay on the site)") + ".",
         [f"topic {t} out {cfg.out_qos(t)}" for t in cfg.out_topics()]),
        ("Central -> site, QoS1: " + ("commands, and " if cfg.commands else "")
         + "each fleet's whole subtree (heads, deltas, service status, rollout).",
         [f"topic {t} in 1" for t in cfg.in_topics()]),
    ]
    text: list[str] = []
    for note, lines in blocks:
        if note.startswith("----") and text:
            text.append("")
        if comments:
            text += [f"# {n}" for n in note.split("\n")]
        text += lines
    return "\n".join(text) + "\n"


def render_central_acl(cfg: SiteBridgeConfig) -> str:
    """The central broker's ACL block for this site's bridge user: exactly its bridge topics, nothing else."""
    lines = [f"# site {cfg.site}: its bridge sends its devices' topics and uplink state, receives their commands "
             "and its fleets", f"user {cfg.username}"]
    lines += [f"topic write {t}" for t in cfg.out_topics()]
    lines.append(f"topic write {cfg.notification_topic}")
    lines += [f"topic read {t}" for t in cfg.in_topics()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Print the site broker's bridge config (or, with --acl, the central ACL block) for a YAML site file."""
    from infantino.runtime.configfile import ConfigError, load_yaml_config

    ap = argparse.ArgumentParser(prog="python -m infantino.benchmarks.sitebridge", description=main.__doc__)
    ap.add_argument("config", help="site YAML (the fields of SiteBridgeConfig)")
    ap.add_argument("--acl", action="store_true", help="print the central broker's ACL block instead")
    args = ap.parse_args(argv)
    try:
        cfg = load_yaml_config(SiteBridgeConfig, args.config)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    sys.stdout.write(render_central_acl(cfg) if args.acl else render_site_bridge(cfg))
    return 0


if __name__ == "__main__":
    sys.exit(main())
