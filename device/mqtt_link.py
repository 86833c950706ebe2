"""The device's MQTT side: its topics, retained status with an `offline` last will, head/delta/cmd subscriptions.

Built on runtime.mqtt.MqttLink (paho-mqtt 2.x, MQTT v5, client id `infantino-device-<id>`, persistent session,
bounded reconnect back-off, every subscription renewed on connect). The retained full head is subscribed at
each connect (the broker sends the latest one) and whenever the device misses a delta; after one arrives
the device unsubscribes again unless `ota.follow_full_head` is set, so steady-state traffic is deltas only.
Staged rollout: the fleet's retained rollout plan (runtime.contract.rollout) says whether this device is in the
canary ring; `set_ring` then moves the head subscriptions to that ring's topics (and back).
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

from infantino.runtime.contract.messages import PredictionMessage, SampleMessage, StatusMessage
from infantino.runtime.mqtt import Message, MqttLink, Published
from infantino.runtime.contract.topics import Topics

from .config import DeviceConfig

log = logging.getLogger(__name__)


class DeviceLink:
    """Publishes status/predictions/samples for one device and routes head updates and commands to handlers."""

    def __init__(self, config: DeviceConfig, *, on_update: Callable[[Message], None],
                 on_command: Callable[[Message], None], on_connect: Callable[[bool], None] | None = None,
                 on_plan: Callable[[Message], None] | None = None):
        self.config = config
        self.topics = Topics(config.topic_prefix)
        dev, fleet = config.device_id, config.fleet
        self.status_topic = self.topics.status(dev)
        self.predictions_topic = self.topics.predictions(dev)
        self.samples_topic = self.topics.samples(dev)
        self.cmd_topic = self.topics.cmd(dev)
        self.ring: str | None = None  # None: the main ring (the fleet's committed head)
        self.head_topic = self.topics.fleet_head(fleet)
        self.delta_topic = self.topics.fleet_delta(fleet)
        will = StatusMessage(device_id=dev, state="offline").model_dump_json().encode()
        self.link = MqttLink(config.broker, client_id=config.broker.client_id or f"infantino-device-{dev}",
                             clean_start=False, will=(self.status_topic, will, 1, True))
        self._on_update = on_update
        self._lock = threading.Lock()
        self.link.subscribe(self.delta_topic, on_update, qos=1)
        self.link.subscribe(self.cmd_topic, on_command, qos=1)
        self.link.subscribe(self.head_topic, on_update, qos=1)
        if on_plan is not None:
            self.link.subscribe(self.topics.fleet_rollout(fleet), on_plan, qos=1)
        self.link.add_on_disconnect(self._want_full_head_on_reconnect)
        if on_connect is not None:
            self.link.add_on_connect(on_connect)

    @property
    def connected(self) -> bool:
        return self.link.connected.is_set()

    def start(self) -> "DeviceLink":
        self.link.start()
        return self

    def stop(self, status: StatusMessage | None = None, timeout: float = 2.0) -> None:
        """Publish the final (offline) status, then disconnect cleanly (a clean disconnect sends no will)."""
        if status is not None and self.connected:
            p = self.publish_status(status)
            p.wait(timeout)
        self.link.stop(timeout)

    # ---- head subscription management ----------------------------------------------------------
    def set_ring(self, ring: str | None) -> bool:
        """Follow this rollout ring's head topics (None: the main ring's); True when the ring changed. The new
        ring's retained full head arrives at once (a subscription sends it)."""
        with self._lock:
            if ring == self.ring:
                return False
            log.info("rollout: device %s moves from ring %s to ring %s", self.config.device_id,
                     self.ring or "main", ring or "main")
            self.link.unsubscribe(self.delta_topic)
            if self.link.is_subscribed(self.head_topic):
                self.link.unsubscribe(self.head_topic)
            fleet = self.config.fleet
            self.ring = ring
            self.head_topic, self.delta_topic = self.topics.ring_head(fleet, ring), self.topics.ring_delta(fleet, ring)
            self.link.subscribe(self.delta_topic, self._on_update, qos=1)
            self.link.subscribe(self.head_topic, self._on_update, qos=1)
            return True

    def _want_full_head_on_reconnect(self) -> None:
        if not self.link.is_subscribed(self.head_topic):
            self.link.subscribe(self.head_topic, self._on_update, qos=1)  # renewed (and sent) at the next connect

    def request_full_head(self) -> None:
        """Ask for the retained full head: subscribing (again) makes the broker send it."""
        log.info("requesting the retained full head on %s", self.head_topic)
        if self.link.is_subscribed(self.head_topic):
            self.link.resubscribe(self.head_topic)
        else:
            self.link.subscribe(self.head_topic, self._on_update, qos=1)

    def full_head_handled(self) -> None:
        """A full head arrived and was handled: stop receiving full heads unless configured to follow them."""
        if not self.config.ota.follow_full_head and self.link.is_subscribed(self.head_topic):
            self.link.unsubscribe(self.head_topic)

    def is_full_head(self, msg: Message) -> bool:
        return msg.topic == self.head_topic

    # ---- publishing ----------------------------------------------------------------------------
    def publish_status(self, status: StatusMessage) -> Published:
        return self.link.publish(self.status_topic, status.model_dump_json(exclude_none=True), qos=1, retain=True)

    def publish_prediction(self, msg: PredictionMessage) -> Published | None:
        if not self.connected:
            return None
        return self.link.publish(self.predictions_topic, msg.model_dump_json(), qos=self.config.publish.predictions_qos)

    def publish_sample(self, msg: SampleMessage) -> Published:
        """QoS1: paho keeps it queued while offline and sends it after reconnect."""
        return self.link.publish(self.samples_topic, msg.model_dump_json(exclude_none=True), qos=1)

    def reply(self, request: Message, payload: str | bytes) -> None:
        self.link.reply(request, payload)
