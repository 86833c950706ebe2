"""Prometheus metrics of the update service, in a registry of its own (served at /metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LEARN_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.5)


class ServiceMetrics:
    """Samples by outcome, learn_one latency, updates published / held back, head version and real-face
    agreement of the last published head, rollout decisions, per fleet."""

    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.samples = Counter("infantino_service_samples", "labelled samples by outcome", ["fleet", "outcome"],
                               registry=r)
        self.learn_seconds = Histogram("infantino_service_learn_one_seconds", "OnlineHead.learn_one wall time",
                                       ["fleet"], buckets=LEARN_BUCKETS, registry=r)
        self.published = Counter("infantino_service_updates_published", "head versions published", ["fleet"],
                                 registry=r)
        self.held_back = Counter("infantino_service_updates_held_back",
                                 "head versions the real-face guard held back", ["fleet"], registry=r)
        self.version = Gauge("infantino_service_head_version", "published head version", ["fleet"], registry=r)
        self.agreement = Gauge("infantino_service_realface_agreement",
                               "real-face agreement with the teacher of the last published head", ["fleet"],
                               registry=r)
        self.rollouts = Counter("infantino_service_rollout_decisions", "canary versions committed or rolled back",
                                ["fleet", "decision", "by"], registry=r)
        self.devices = Gauge("infantino_service_devices", "devices by state from their retained statuses",
                             ["fleet", "state"], registry=r)

    def text(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
