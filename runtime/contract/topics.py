"""MQTT topic layout shared by the device daemon and the trainer service (prefix configurable)."""

from __future__ import annotations

import re
from dataclasses import dataclass

# One topic level named by a person (device id, fleet, ring, worker id): letters, digits, '.', '_', '-'.
TOPIC_LEVEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class Topics:
    """Builds every topic of the contract from a prefix, a fleet and a device id."""

    prefix: str = "infantino"

    def fleet_head(self, fleet: str) -> str:
        return f"{self.prefix}/fleet/{fleet}/head"

    def fleet_delta(self, fleet: str) -> str:
        return f"{self.prefix}/fleet/{fleet}/head/delta"

    def ring_head(self, fleet: str, ring: str | None) -> str:
        """A rollout ring's retained full head; the main ring (None, the committed head) is `fleet_head`."""
        return self.fleet_head(fleet) if not ring else f"{self.prefix}/fleet/{fleet}/ring/{ring}/head"

    def ring_delta(self, fleet: str, ring: str | None) -> str:
        """A rollout ring's deltas; the main ring (None) is `fleet_delta`."""
        return self.fleet_delta(fleet) if not ring else f"{self.prefix}/fleet/{fleet}/ring/{ring}/head/delta"

    def fleet_rollout(self, fleet: str) -> str:
        """Retained: the fleet's rollout plan (which devices form which ring; runtime.contract.rollout)."""
        return f"{self.prefix}/fleet/{fleet}/rollout"

    def fleet_service_cmd(self, fleet: str) -> str:
        """Operator commands to the update service for a fleet (rollout commit / abort)."""
        return f"{self.prefix}/fleet/{fleet}/service/cmd"

    def fleet_service_status(self, fleet: str) -> str:
        """Retained: the update service's view of a fleet (published version, held-back versions, real-face guard)."""
        return f"{self.prefix}/fleet/{fleet}/service/status"

    def status(self, device: str) -> str:
        return f"{self.prefix}/device/{device}/status"

    def predictions(self, device: str) -> str:
        return f"{self.prefix}/device/{device}/predictions"

    def samples(self, device: str) -> str:
        return f"{self.prefix}/device/{device}/samples"

    def cmd(self, device: str) -> str:
        return f"{self.prefix}/device/{device}/cmd"

    def all_samples(self) -> str:
        """Wildcard subscription for every device's samples (the trainer maps device -> fleet)."""
        return f"{self.prefix}/device/+/samples"

    def device_from_topic(self, topic: str) -> str:
        parts = topic.split("/")
        base = self.prefix.split("/")
        if parts[: len(base)] != base or len(parts) < len(base) + 3 or parts[len(base)] != "device":
            raise ValueError(f"not a device topic under {self.prefix!r}: {topic!r}")
        return parts[len(base) + 1]
