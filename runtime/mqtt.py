"""The MQTT connection used by the device daemon and the trainer service (paho-mqtt 2.x, MQTT v5).

Why MQTT v5 (not 3.1.1): a publish the broker's ACL denies is refused visibly (PUBACK 0x87) instead of being
dropped silently; the session expiry interval makes persistent sessions explicit; and request/response
properties let the CLI get a reply from the daemon. Every link uses an explicit client id and
``clean_start=False`` with a session expiry, so QoS1 messages queued while a client is away survive; reconnects
use a bounded exponential back-off and every subscription is renewed on each connect (which also makes the
broker resend retained messages).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .configfile import ExistingFile
from .contract.errors import BackendUnavailable, InfantinoError

log = logging.getLogger(__name__)

PASSWORD_ENV = "INFANTINO_MQTT_PASSWORD"


class MqttError(InfantinoError):
    """The broker refused a connection, a subscription or a publish (the message says why)."""


class TlsConfig(BaseModel):
    """TLS to the broker: CA to trust (None = system store), optional client certificate and key."""

    model_config = ConfigDict(extra="forbid")
    ca_file: Optional[ExistingFile] = None
    cert_file: Optional[ExistingFile] = None
    key_file: Optional[ExistingFile] = None
    insecure: bool = Field(False, description="skip the server hostname check (tests only)")

    @model_validator(mode="after")
    def _cert_and_key(self):
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together (client certificate authentication)")
        return self


class BrokerConfig(BaseModel):
    """Where and how to reach the broker. The password may come from `password`, `password_file` or the
    INFANTINO_MQTT_PASSWORD environment variable."""

    model_config = ConfigDict(extra="forbid")
    host: str = "localhost"
    port: int = Field(1883, ge=1, le=65535)
    client_id: Optional[str] = Field(None, description="defaults to the device id / service name")
    username: Optional[str] = None
    password: Optional[str] = None
    password_file: Optional[ExistingFile] = None
    tls: Optional[TlsConfig] = None
    keepalive_s: int = Field(30, ge=2, le=65535)
    reconnect_min_s: float = Field(1.0, gt=0, le=3600)
    reconnect_max_s: float = Field(30.0, gt=0, le=3600)
    session_expiry_s: int = Field(86400, ge=0, le=0xFFFFFFFF, description="how long the broker keeps the session")

    @model_validator(mode="after")
    def _check(self):
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError(f"reconnect_max_s ({self.reconnect_max_s}) must be >= reconnect_min_s ({self.reconnect_min_s})")
        if self.password is not None and self.password_file is not None:
            raise ValueError("give either password or password_file, not both")
        if (self.password is not None or self.password_file is not None) and not self.username:
            raise ValueError("a password needs a username")
        return self

    def resolved_password(self) -> str | None:
        if self.password is not None:
            return self.password
        if self.password_file is not None:
            return Path(self.password_file).read_text(encoding="utf-8").strip()
        return os.environ.get(PASSWORD_ENV) if self.username else None

    def describe(self) -> str:
        scheme = "mqtts" if self.tls else "mqtt"
        who = f"{self.username}@" if self.username else ""
        return f"{scheme}://{who}{self.host}:{self.port}"


def _paho():
    try:
        # optional: in the device extra, not the base install:
        import paho.mqtt.client as mqtt
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties
    except ImportError as e:  # pragma: no cover - install profile
        raise BackendUnavailable("MQTT needs paho-mqtt 2.x: pip install 'infantino[device]'") from e
    return mqtt, Properties, PacketTypes


def topic_matches(filter_: str, topic: str) -> bool:
    """MQTT topic filter matching with + and #."""
    f, t = filter_.split("/"), topic.split("/")
    for i, part in enumerate(f):
        if part == "#":
            return True
        if i >= len(t) or (part != "+" and part != t[i]):
            return False
    return len(f) == len(t)


@dataclass
class Published:
    """Tracks one QoS>0 publish until the broker acknowledges it (reason code 0 = accepted)."""

    mid: int
    event: threading.Event = field(default_factory=threading.Event)
    reason_code: int | None = None
    queued_offline: bool = False

    def wait(self, timeout: float | None = None) -> bool:
        """True once the broker acknowledged (accepted or refused; see `accepted`)."""
        return self.event.wait(timeout)

    @property
    def accepted(self) -> bool:
        return self.event.is_set() and (self.reason_code or 0) < 0x80


@dataclass
class Message:
    """An inbound message handed to handlers: topic, payload, QoS, retain flag, MQTT v5 properties, mid."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    mid: int
    properties: object = None
    dup: bool = False
    received_at: float = 0.0
    generation: int = 0

    @property
    def response_topic(self) -> str | None:
        return getattr(self.properties, "ResponseTopic", None) if self.properties is not None else None

    @property
    def correlation_data(self) -> bytes | None:
        return getattr(self.properties, "CorrelationData", None) if self.properties is not None else None


Handler = Callable[[Message], None]


class MqttLink:
    """A paho-mqtt v5 client with a persistent session, bounded reconnect back-off and resubscribe on connect.

    Handlers run on paho's network thread: keep them short (queue work to another thread).
    With `manual_ack=True` QoS1 messages are acknowledged only when the application calls `ack(message)`
    (the trainer acknowledges a sample after its effect is persisted).
    """

    def __init__(self, broker: BrokerConfig, client_id: str, *, clean_start: bool = False,
                 will: tuple[str, bytes, int, bool] | None = None, manual_ack: bool = False,
                 max_queued: int = 10000):
        mqtt, Properties, PacketTypes = _paho()
        self._mqtt, self._Properties, self._PacketTypes = mqtt, Properties, PacketTypes
        self.broker = broker
        self.client_id = client_id
        self.clean_start = clean_start
        self.manual_ack = manual_ack
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=mqtt.MQTTv5, manual_ack=manual_ack)
        self.client.reconnect_delay_set(broker.reconnect_min_s, broker.reconnect_max_s)
        self.client.max_queued_messages_set(max_queued)
        if broker.username:
            self.client.username_pw_set(broker.username, broker.resolved_password())
        if broker.tls is not None:
            t = broker.tls
            self.client.tls_set(ca_certs=str(t.ca_file) if t.ca_file else None,
                                certfile=str(t.cert_file) if t.cert_file else None,
                                keyfile=str(t.key_file) if t.key_file else None,
                                cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)
            self.client.tls_insecure_set(t.insecure)
        if will is not None:
            topic, payload, qos, retain = will
            self.client.will_set(topic, payload, qos=qos, retain=retain)
        self._lock = threading.RLock()
        self._subs: dict[str, tuple[int, Handler]] = {}
        self._acks = _AckTracker()
        self._subacks = _AckTracker()
        self._on_connect_hooks: list[Callable[[bool], None]] = []
        self._on_disconnect_hooks: list[Callable[[], None]] = []
        self.connected = threading.Event()
        self.generation = 0
        self.connects = 0
        self.last_error: str | None = None
        self.refused_reason: str | None = None
        self._started = False
        self._stopping = False
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = self._on_subscribe

    # ---- lifecycle ---------------------------------------------------------------------------
    def start(self) -> "MqttLink":
        """Connect in the background; the network thread keeps reconnecting with bounded back-off."""
        if os.environ.get("INFANTINO_MQTT_DEBUG"):
            self.client.enable_logger(logging.getLogger(f"{__name__}.paho"))
        props = self._Properties(self._PacketTypes.CONNECT)
        props.SessionExpiryInterval = int(self.broker.session_expiry_s)
        self.client.connect_async(self.broker.host, self.broker.port, keepalive=self.broker.keepalive_s,
                                  clean_start=self.clean_start, properties=props)
        self.client.loop_start()
        self._started = True
        log.info("MQTT %s connecting to %s", self.client_id, self.broker.describe())
        return self

    def wait_connected(self, timeout: float) -> bool:
        return self.connected.wait(timeout)

    def stop(self, timeout: float = 2.0) -> None:
        """Wait briefly for QoS1 messages in flight, then disconnect cleanly and stop the network thread."""
        if not self._started:
            return
        self._stopping = True
        deadline = time.monotonic() + timeout
        while self.connected.is_set() and time.monotonic() < deadline:
            if not self._acks.busy():
                break
            time.sleep(0.01)
        try:
            self.client.disconnect()
        finally:
            self.client.loop_stop()
            self._started = False
            self._stopping = False
            self.connected.clear()

    def add_on_connect(self, fn: Callable[[bool], None]) -> None:
        """fn(session_present) after each successful connect, after subscriptions were renewed."""
        self._on_connect_hooks.append(fn)

    def add_on_disconnect(self, fn: Callable[[], None]) -> None:
        self._on_disconnect_hooks.append(fn)

    # ---- subscriptions -------------------------------------------------------------------------
    def subscribe(self, topic: str, handler: Handler, qos: int = 1) -> None:
        """Remember the subscription (renewed on every connect) and subscribe now if connected."""
        with self._lock:
            self._subs[topic] = (qos, handler)
        if self.connected.is_set():
            self.client.subscribe(topic, qos=qos)

    def unsubscribe(self, topic: str) -> None:
        with self._lock:
            self._subs.pop(topic, None)
        if self.connected.is_set():
            self.client.unsubscribe(topic)

    def resubscribe(self, topic: str) -> None:
        """Subscribe again: the broker resends the topic's retained message (how a device re-requests the head)."""
        with self._lock:
            qos = self._subs.get(topic, (1, None))[0]
        if self.connected.is_set():
            self.client.subscribe(topic, qos=qos)

    def is_subscribed(self, topic: str) -> bool:
        with self._lock:
            return topic in self._subs

    def subscribe_and_wait(self, topic: str, handler: Handler, qos: int = 1, timeout: float = 5.0) -> list[int]:
        """Subscribe and wait for SUBACK; returns the granted reason codes (>= 0x80 means refused)."""
        with self._lock:
            self._subs[topic] = (qos, handler)
        if not self.connected.wait(timeout):
            raise MqttError(f"not connected to {self.broker.describe()} within {timeout} s")
        ev, out = threading.Event(), []
        rc, mid = self.client.subscribe(topic, qos=qos)
        early = self._subacks.register(mid, (ev, out))
        if early is not None:
            out.extend(early)
            ev.set()
        if not ev.wait(timeout):
            raise MqttError(f"no SUBACK for {topic} within {timeout} s")
        return out

    # ---- publishing ----------------------------------------------------------------------------
    def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False,
                properties=None) -> Published:
        """Publish; QoS1 messages are queued by paho while offline and sent after reconnect."""
        info = self.client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        p = Published(mid=info.mid, queued_offline=info.rc == self._mqtt.MQTT_ERR_NO_CONN)
        if qos == 0:
            p.reason_code = 0 if info.rc == self._mqtt.MQTT_ERR_SUCCESS else 0x80
            p.event.set()
        elif info.rc not in (self._mqtt.MQTT_ERR_SUCCESS, self._mqtt.MQTT_ERR_NO_CONN):
            p.reason_code = 0x80
            p.event.set()
            log.warning("publish to %s failed locally: %s", topic, self._mqtt.error_string(info.rc))
        else:
            code = self._acks.register(info.mid, p)
            if code is not None:
                p.reason_code = code
                p.event.set()
        return p

    def response_properties(self, response_topic: str, correlation: bytes | None = None):
        """Properties for a request message: where to reply and how to correlate."""
        props = self._Properties(self._PacketTypes.PUBLISH)
        props.ResponseTopic = response_topic
        if correlation is not None:
            props.CorrelationData = correlation
        return props

    def reply(self, request: Message, payload: bytes | str) -> None:
        """Answer a request that carried a ResponseTopic (MQTT v5 request/response); no-op otherwise."""
        topic = request.response_topic
        if not topic:
            return
        props = None
        if request.correlation_data is not None:
            props = self._Properties(self._PacketTypes.PUBLISH)
            props.CorrelationData = request.correlation_data
        self.publish(topic, payload, qos=1, properties=props)

    def ack(self, message: Message) -> None:
        """Acknowledge a QoS1 message (manual_ack links only); skipped if the connection changed since."""
        if self.manual_ack and message.qos > 0 and message.generation == self.generation and self.connected.is_set():
            self.client.ack(message.mid, message.qos)

    # ---- paho callbacks ------------------------------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            self.refused_reason = str(reason_code)
            self.last_error = f"broker refused connection: {reason_code}"
            log.error("MQTT %s: %s", self.client_id, self.last_error)
            return
        self.refused_reason = None
        try:  # paho leaves Nagle on: small packets (acks, deltas) would wait for delayed ACKs (~40 ms)
            sock = client.socket()
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):
            pass
        with self._lock:
            self.generation += 1
            self.connects += 1
            subs = list(self._subs.items())
        for topic, (qos, _) in subs:
            client.subscribe(topic, qos=qos)
        self.connected.set()
        log.info("MQTT %s connected to %s (session present: %s, %d subscriptions renewed)",
                 self.client_id, self.broker.describe(), flags.session_present, len(subs))
        for fn in list(self._on_connect_hooks):
            try:
                fn(bool(flags.session_present))
            except Exception:  # a hook must not kill the network thread
                log.exception("on_connect hook failed")

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        was = self.connected.is_set()
        self.connected.clear()
        if was and not self._stopping:
            self.last_error = f"disconnected: {reason_code}"
            log.warning("MQTT %s disconnected (%s); reconnecting with back-off %.1f-%.1f s", self.client_id,
                        reason_code, self.broker.reconnect_min_s, self.broker.reconnect_max_s)
        for fn in list(self._on_disconnect_hooks):
            try:
                fn()
            except Exception:
                log.exception("on_disconnect hook failed")

    def _on_message(self, client, userdata, msg):
        m = Message(topic=msg.topic, payload=bytes(msg.payload), qos=msg.qos, retain=bool(msg.retain), mid=msg.mid,
                    properties=getattr(msg, "properties", None), dup=bool(msg.dup), received_at=time.time(),
                    generation=self.generation)
        with self._lock:
            handlers = [h for f, (_, h) in self._subs.items() if h is not None and topic_matches(f, m.topic)]
        if not handlers:
            log.debug("message on %s with no handler", m.topic)
            if self.manual_ack:
                self.ack(m)
            return
        for h in handlers[:1]:  # one handler per message, even if filters overlap
            try:
                h(m)
            except Exception:
                log.exception("handler for %s failed", m.topic)

    def _on_publish(self, client, userdata, mid, reason_code, properties):
        # Called by paho while it holds its outgoing-message lock: never call into paho from here.
        code = getattr(reason_code, "value", reason_code)
        code = int(code) if code is not None else 0
        p = self._acks.complete(mid, code)
        if p is None:
            return
        p.reason_code = code
        if code >= 0x80:
            log.warning("broker refused publish (mid %d): %s", mid, reason_code)
        p.event.set()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        codes = [int(getattr(rc, "value", rc)) for rc in reason_codes]
        if any(c >= 0x80 for c in codes):
            log.warning("broker refused a subscription (mid %d): %s", mid, codes)
        w = self._subacks.complete(mid, codes)
        if w is not None:
            w[1].extend(codes)
            w[0].set()


class _AckTracker:
    """Matches acknowledgements to waiters by message id, whichever arrives first (ack before register is
    possible because paho may receive the ack before publish() returns). Unclaimed acks expire."""

    def __init__(self, ttl: float = 30.0, max_early: int = 4096):
        self._lock = threading.Lock()
        self._waiting: dict[int, object] = {}
        self._early: dict[int, tuple[float, object]] = {}
        self.ttl, self.max_early = ttl, max_early

    def register(self, mid: int, waiter):
        """Remember `waiter` for `mid`; returns the ack value if it already arrived, else None."""
        now = time.monotonic()
        with self._lock:
            hit = self._early.pop(mid, None)
            if hit is not None and now - hit[0] <= self.ttl:
                return hit[1]
            self._waiting[mid] = waiter
            return None

    def complete(self, mid: int, value):
        """The waiter for `mid` (removed), or None after recording the ack for a later register()."""
        now = time.monotonic()
        with self._lock:
            w = self._waiting.pop(mid, None)
            if w is None:
                self._early[mid] = (now, value)
                if len(self._early) > self.max_early:
                    for k in [k for k, (t, _) in self._early.items() if now - t > self.ttl] or list(self._early)[:1]:
                        self._early.pop(k, None)
            return w

    def busy(self) -> bool:
        with self._lock:
            return bool(self._waiting)


def _json_or_error(payload: bytes) -> dict:
    try:
        out = json.loads(payload)
    except ValueError:
        return {"ok": False, "error": f"unreadable reply: {payload[:200]!r}"}
    return out if isinstance(out, dict) else {"ok": False, "error": f"unexpected reply: {payload[:200]!r}"}


def _require_connected(link: MqttLink, timeout: float) -> None:
    """MqttError (with the link's last error, if any) unless the link is connected within `timeout`."""
    if not link.wait_connected(timeout):
        raise MqttError(f"cannot reach the broker at {link.broker.describe()} within {timeout:g} s"
                        + (f" ({link.last_error})" if link.last_error else ""))


class _FirstJson:
    """A subscription callback that keeps the first JSON object received (or an {ok: False, error} stand-in)."""

    def __init__(self):
        self.got: dict = {}
        self.done = threading.Event()

    def __call__(self, m: Message) -> None:
        if not self.done.is_set():
            self.got.update(_json_or_error(m.payload))
            self.done.set()


def request_json(link: MqttLink, topic: str, payload: str | bytes, reply_topic: str, timeout: float,
                 what: str, correlation: bytes | None = None) -> dict:
    """MQTT v5 request/response on a started link: subscribe to `reply_topic`, publish with it as ResponseTopic,
    return the JSON answer. MqttError names the step that failed (`what` names who should answer)."""
    reply = _FirstJson()
    _require_connected(link, timeout)
    codes = link.subscribe_and_wait(reply_topic, reply, qos=1, timeout=timeout)
    if any(c >= 0x80 for c in codes):
        raise MqttError(f"the broker refused the reply subscription {reply_topic} (ACL?)")
    pub = link.publish(topic, payload, qos=1, properties=link.response_properties(reply_topic, correlation))
    if not pub.wait(timeout) or not pub.accepted:
        raise MqttError(f"the broker did not accept the message on {topic} (reason code {pub.reason_code}; ACL?)")
    if not reply.done.wait(timeout):
        raise MqttError(f"no answer from {what} within {timeout:g} s")
    return reply.got


def read_retained_json(link: MqttLink, topic: str, timeout: float) -> dict | None:
    """The retained JSON message on `topic` (None when there is none within `timeout`), on a started link."""
    retained = _FirstJson()
    _require_connected(link, timeout)
    link.subscribe_and_wait(topic, retained, qos=1, timeout=timeout)
    return retained.got if retained.done.wait(timeout) else None
