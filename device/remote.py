"""Talk to a running daemon through the broker (MQTT v5 request/response on the device's cmd topic).

The CLI connects with the device's own credentials but its own short-lived client id, subscribes to a reply
topic under the device's subtree (`<prefix>/device/<id>/cmd/reply/<request id>`, allowed by the example ACL),
sends a CommandMessage with that ResponseTopic, and waits for the daemon's JSON answer.
"""

from __future__ import annotations

import os
import uuid

from infantino.runtime.contract.errors import InfantinoError
from infantino.runtime.contract.messages import CommandMessage
from infantino.runtime.mqtt import MqttError, MqttLink, read_retained_json, request_json
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
    link = _cli_link(cfg).start()
    try:
        got = request_json(link, topics.cmd(cfg.device_id), cmd.model_dump_json(exclude_none=True), reply_topic,
                           timeout, f"device {cfg.device_id} (is the daemon running and connected?)",
                           correlation=req_id.encode())
    except MqttError as e:
        raise CommandFailed(str(e)) from None
    finally:
        link.stop(timeout=1.0)
    if not got.get("ok"):
        raise CommandFailed(f"device {cfg.device_id}: {got.get('error', 'command failed')}")
    return got


def read_status(config: str | os.PathLike | DeviceConfig, timeout: float = 5.0) -> dict:
    """The device's retained status message as a dict."""
    cfg = config if isinstance(config, DeviceConfig) else load_device_config(config)
    topic = Topics(cfg.topic_prefix).status(cfg.device_id)
    link = _cli_link(cfg).start()
    try:
        got = read_retained_json(link, topic, timeout)
    except MqttError as e:
        raise CommandFailed(str(e)) from None
    finally:
        link.stop(timeout=1.0)
    if got is None:
        raise CommandFailed(f"no status retained for device {cfg.device_id} on {topic}")
    return got
