"""MQTT topic layout shared by the device daemon and the trainer service (prefix configurable)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Topics:
    """Builds every topic of the contract from a prefix, a fleet and a device id."""

    prefix: str = "infantino"

    def fleet_head(self, fleet: str) -> str:
        return f"{self.prefix}/fleet/{fleet}/head"

    def fleet_delta(self, fleet: str) -> str:
        return f"{self.prefix}/fleet/{fleet}/head/delta"

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
