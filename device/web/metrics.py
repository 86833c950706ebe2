"""GET /metrics: the device in Prometheus text format, read from one DeviceView snapshot per scrape (nothing is
counted on the camera loop's path beyond what the daemon already keeps)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, InfoMetricFamily

from infantino.device.daemon import LATENCY_BUCKETS_MS

CAMERA_STATES = ("starting", "opening", "ok", "reopening", "ended", "failed")


class DeviceCollector:
    """A prometheus_client collector over DeviceView.snapshot() (and the live encoder's counter)."""

    def __init__(self, view, live=None):
        self.view = view
        self.live = live

    def collect(self):
        s = self.view.snapshot()
        yield InfoMetricFamily("infantino_device", "the device and what it runs",
                               value={"device_id": s.device_id, "fleet": s.fleet, "bundle_id": s.bundle_id or "",
                                      "backend": s.backend or ""})
        yield CounterMetricFamily("infantino_frames", "frames processed", value=s.frames)
        yield CounterMetricFamily("infantino_frames_dropped", "camera frames replaced before they were processed",
                                  value=s.dropped_frames)
        yield GaugeMetricFamily("infantino_fps", "frames processed per second (last 5 s)", value=s.fps)
        yield CounterMetricFamily("infantino_faces", "faces found", value=s.faces)
        h = HistogramMetricFamily("infantino_stage_latency_seconds", "per-frame latency of each stage",
                                  labels=["stage"])
        for stage, (counts, total_ms) in sorted(s.latency_histograms.items()):
            cum, buckets = 0, []
            for bound, n in zip([*(b / 1e3 for b in LATENCY_BUCKETS_MS), float("inf")], counts):
                cum += n
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), cum))
            h.add_metric([stage], buckets, sum_value=total_ms / 1e3)
        yield h
        yield CounterMetricFamily("infantino_samples_sent", "labelled samples published", value=s.samples_sent)
        yield GaugeMetricFamily("infantino_samples_held", "labelled samples in their undo window",
                                value=s.samples_held)
        yield CounterMetricFamily("infantino_samples_undone", "labelled samples undone before they were sent",
                                  value=s.samples_undone)
        yield CounterMetricFamily("infantino_updates_applied", "head updates applied", value=s.updates_applied)
        rej = CounterMetricFamily("infantino_updates_rejected", "head updates rejected, by reason",
                                  labels=["reason"])
        for reason, n in sorted(s.rejections.items()):
            rej.add_metric([reason], n)
        yield rej
        yield CounterMetricFamily("infantino_rollbacks", "head rollbacks", value=s.rollbacks)
        yield GaugeMetricFamily("infantino_head_version", "version of the head in use",
                                value=s.head_version if s.head_version is not None else -1)
        cam = GaugeMetricFamily("infantino_camera_state", "1 for the camera's current state", labels=["state"])
        for state in sorted({*CAMERA_STATES, s.camera}):
            cam.add_metric([state], 1.0 if state == s.camera else 0.0)
        yield cam
        yield CounterMetricFamily("infantino_camera_reopens", "camera reopens", value=s.camera_reopens)
        yield GaugeMetricFamily("infantino_broker_connected", "1 while connected to the MQTT broker",
                                value=1.0 if s.broker_connected else 0.0)
        if s.last_update_at is not None:
            yield GaugeMetricFamily("infantino_last_update_timestamp_seconds", "when the last update or rollback "
                                    "was handled (Unix time)", value=s.last_update_at)
        yield GaugeMetricFamily("infantino_uptime_seconds", "seconds since the daemon started", value=s.uptime_s)
        if self.live is not None:
            yield CounterMetricFamily("infantino_live_frames_encoded", "JPEGs encoded for the live view",
                                      value=self.live.encoded)


def device_registry(view, live=None) -> CollectorRegistry:
    """A registry of its own (not the process-global one), so that several apps in one process do not clash."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(DeviceCollector(view, live))
    return reg
