"""The one cache directory of every part (model wheels, unpacked .tar bundles, TensorRT plans, registry
downloads): $INFANTINO_CACHE_DIR, else ~/.cache/infantino. The systemd unit points it under the state dir."""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

CACHE_ENV = "INFANTINO_CACHE_DIR"
LEGACY_ENV = "INFANTINO_CACHE"  # the model caches' old name, still read (with a warning) so a setup keeps working
_warned = False


def cache_dir(*parts: str) -> Path:
    """$INFANTINO_CACHE_DIR (or the legacy $INFANTINO_CACHE), else ~/.cache/infantino, with sub-folders."""
    global _warned
    base = os.environ.get(CACHE_ENV)
    if not base and os.environ.get(LEGACY_ENV):
        base = os.environ[LEGACY_ENV]
        if not _warned:
            log.warning("$%s is deprecated: set $%s instead (one variable for every cache)", LEGACY_ENV, CACHE_ENV)
            _warned = True
    root = Path(base).expanduser() if base else Path.home() / ".cache" / "infantino"
    return root.joinpath(*parts)
