"""Resident memory of this process: current RSS, peak RSS, and resetting the peak between rows (Linux).

All rows of a benchmark share one process, so a monotonic peak would charge every later row with the biggest
earlier one. On Linux, writing "5" to /proc/self/clear_refs resets VmHWM (the peak); we reset it before
loading each row and read it after its warm-up. Elsewhere the peak is getrusage's ru_maxrss (not resettable).
"""

from __future__ import annotations

import re
import resource
import sys
from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kb(field: str) -> int | None:
    try:
        m = re.search(rf"^{field}:\s+(\d+)\s*kB", _STATUS.read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(m.group(1)) if m else None


def current_rss_bytes() -> int | None:
    """Resident set size now (VmRSS), or None where /proc is absent."""
    kb = _status_kb("VmRSS")
    return kb * 1024 if kb is not None else None


def peak_rss_bytes() -> int:
    """Peak resident set size since start or since the last reset_peak() (VmHWM; else ru_maxrss)."""
    kb = _status_kb("VmHWM")
    if kb is not None:
        return kb * 1024
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r if sys.platform == "darwin" else r * 1024)  # bytes on macOS, kB on Linux


def reset_peak() -> bool:
    """Reset the peak to the current RSS; False where the kernel does not allow it (then peaks accumulate)."""
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


class RssProbe:
    """Context manager: peak and growth of RSS over a block (e.g. loading and warming up one backend)."""

    def __enter__(self) -> "RssProbe":
        self.peak_reset = reset_peak()
        self.before = current_rss_bytes()
        self.peak = None
        self.after = None
        return self

    def __exit__(self, *exc) -> None:
        self.after = current_rss_bytes()
        self.peak = peak_rss_bytes()

    @property
    def delta(self) -> int | None:
        if self.before is None or self.after is None:
            return None
        return self.after - self.before

    def as_dict(self) -> dict:
        mb = 1024 * 1024
        return {"rss_peak_mb": None if self.peak is None else self.peak / mb,
                "rss_delta_mb": None if self.delta is None else self.delta / mb,
                "rss_peak_is_per_row": bool(self.peak_reset)}
