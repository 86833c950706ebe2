"""Talk to a running daemon through the broker (MQTT v5 request/response on the device's cmd topic).

The CLI connects with the device's own credentials but its own short-lived client id, subscribes to a reply
topic under the device's subtree (`<prefix>/device/<id>/cmd/reply/<request id>`, allowed by the example ACL),
sends a CommandMessage with that ResponseTopic, and waits for the daemon's JSON answer.
"""

from __future__ import annotations

import json
import os
import threading
import uuid

from infantino.runtime.contract.errors import InfantinoError
from infantino.runtime.contract.messages import CommandMessage
from infantino.runtime.mqtt import MqttLink
from infantino.runtime.contract.topics import Topics

from .config import DeviceConfig, load_device_config


class CommandFailed(InfantinoError):
    """The daemon answered a command with an error, or did not answer."""


def _cli_link(cfg: DeviceConfig) -> MqttLink:
    broker = cfg.broker.model_copy(update={"client_id": f"{cfg.broker.client_id}-cli-{uuid.uuid4().hex[:8]}",
                                           "session_expiry_s": 0, "reconnect_max_s": cfg.broker.reconnect_min_s})
    return MqttLink(broker, client_id=broker.client_id, clean_start=True)


def send_command(config: str | os.PathLike | DeviceConfig, command: dict, timeout: float = 5.0) -> dict:
    """Send one command to the device daemon and return its reply; CommandFailed on error or silence."""
    cfg = config if isinstance(config, DeviceConfig) else load_device_config(config)
    req_id = uuid.uuid4().hex[:12]
    cmd = CommandMessage(**{**command, "request_id": req_id})
    topics = Topics(cfg.topic_prefix)
    reply_topic = f"{topics.cmd(cfg.device_id)}/reply/{req_id}"
    got: dict = {}
    done = threading.Event()

    def on_reply(m):
        try:
            got.update(json.loads(m.payload))
        except ValueError:
            got.update({"ok": False, "error": f"unreadable reply: {m.payload[:200]!r}"})
        done.set()

    link = _cli_link(cfg).start()
    try:
        if not link.wait_connected(timeout):
            raise CommandFailed(f"cannot reach the broker at {cfg.broker.describe()} within {timeout} s"
                                + (f" ({link.last_error})" if link.last_error else ""))
        codes = link.subscribe_and_wait(reply_topic, on_reply, qos=1, timeout=timeout)
        if any(c >= 0x80 for c in codes):
            raise CommandFailed(f"the broker refused the reply subscription {reply_topic} (ACL?)")
        props = link.response_properties(reply_topic, req_id.encode())
        pub = link.publish(topics.cmd(cfg.device_id), cmd.model_dump_json(exclude_none=True), qos=1, properties=props)
        if not pub.wait(timeout) or not pub.accepted:
            raise CommandFailed(f"the broker did not accept the command on {topics.cmd(cfg.device_id)} "
                                f"(reason code {pub.reason_code})")
        if not done.wait(timeout):
            raise CommandFailed(f"no answer from device {cfg.device_id} within {timeout} s (is the daemon running "
                                f"and connected?)")
    finally:
        link.stop(timeout=1.0)
    if not got.get("ok"):
        raise CommandFailed(f"device {cfg.device_id}: {got.get('error', 'command failed')}")
    return got


def read_status(config: str | os.PathLike | DeviceConfig, timeout: float = 5.0) -> dict:
    """The device's retained status message as a dict."""
    cfg = config if isinstance(config, DeviceConfig) else load_device_config(config)
    topic = Topics(cfg.topic_prefix).status(cfg.device_id)
    got: dict = {}
    done = threading.Event()

    def on_status(m):
        try:
            got.update(json.loads(m.payload))
        except ValueError:
            got.update({"raw": m.payload.decode(errors="replace")})
        done.set()

    link = _cli_link(cfg).start()
    try:
        if not link.wait_connected(timeout):
            raise CommandFailed(f"cannot reach the broker at {cfg.broker.describe()} within {timeout} s")
        link.subscribe_and_wait(topic, on_status, qos=1, timeout=timeout)
        if not done.wait(min(timeout, 2.0)):
            raise CommandFailed(f"no status retained for device {cfg.device_id} on {topic}")
    finally:
        link.stop(timeout=1.0)
    return got
