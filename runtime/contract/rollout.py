"""Staged rollout, the part devices and the update service share: the retained rollout plan and ring membership.

A fleet's devices form two rings: the canary ring (listed device ids, plus a stable share of the fleet chosen by
a hash of fleet and device id, so membership survives restarts and needs no per-device state) and the main ring
(everyone else, on the fleet's plain head topics). The service publishes the plan retained on
`Topics.fleet_rollout`; a device that sees itself in the canary ring follows that ring's head topics instead.
"""

from __future__ import annotations

import hashlib
from typing import Optional

from pydantic import BaseModel, ConfigDict, Field

CANARY = "canary"


class RolloutPlan(BaseModel):
    """Who is in the canary ring of a fleet (the plan is small: ids for explicit members, a percentage for the rest)."""

    model_config = ConfigDict(extra="ignore")

    fleet: str = Field(max_length=64)
    ring: str = Field(CANARY, max_length=64, description="the canary ring's name (its topic level)")
    devices: list[str] = Field(default_factory=list, max_length=10000, description="canary members by device id")
    percent: float = Field(0.0, ge=0.0, le=100.0, description="plus this share of the fleet, by stable hash")
    candidate_version: Optional[int] = Field(None, description="the version under observation on the canary ring")
    committed_version: Optional[int] = Field(None, description="the version the main ring holds")

    def ring_of(self, device_id: str) -> Optional[str]:
        """The ring a device belongs to: the canary ring's name, or None for the main ring."""
        if device_id in self.devices or bucket(self.fleet, device_id) < self.percent:
            return self.ring
        return None


def bucket(fleet: str, device_id: str) -> float:
    """A stable number in [0, 100) per (fleet, device): the same on the device and the service, across restarts."""
    digest = hashlib.sha256(f"{fleet}\0{device_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * 100.0
