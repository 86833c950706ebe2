"""PyTorch eager as a runtime Backend, so the whole frame path can run on the trainer's checkpoint (the baseline row).

Not registered with the runtime (a camera never runs torch): benchmarks build it directly and hand it to
Pipeline(backend=...). It borrows the bundle's fp32 ONNX artifact entry for the input layout (NCHW) and size;
the weights come from the checkpoint, which must be the bundle's extractor (same extractor_id).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import numpy as np

from infantino.runtime.backends.base import Backend, BackendConfig
from infantino.runtime.contract.errors import BackendUnavailable

from .engines import EngineFailed, load_torch_model, torch_settings

log = logging.getLogger(__name__)


class TorchEagerBackend(Backend):
    """The extractor checkpoint in torch eager, inference mode, denormals flushed (as the `models` torch row)."""

    name = "torch"
    formats = ("onnx",)

    def __init__(self, bundle, checkpoint: str | Path, threads: Optional[int] = None):
        self.checkpoint = Path(checkpoint)
        self._threads = threads
        self.model = None
        self.settings: dict = {}
        super().__init__(bundle, BackendConfig(threads=threads, precision="fp32"))

    @classmethod
    def import_library(cls):
        try:
            import torch  # heavy: torch, ~1.3 s to import (train extra)
        except ImportError:
            raise BackendUnavailable("torch rows need the train extra: pip install 'infantino[train]'") from None
        return torch

    def _load(self) -> None:
        if not self.checkpoint.is_file():
            raise BackendUnavailable(f"torch: no checkpoint at {self.checkpoint}")
        try:
            model, _, eid = load_torch_model(self.checkpoint)
        except EngineFailed as e:
            raise BackendUnavailable(str(e)) from None
        if eid != self.bundle.extractor_id:
            raise BackendUnavailable(f"torch: checkpoint {self.checkpoint.name} is extractor {eid[:12]}…, the bundle's "
                                     f"is {self.bundle.extractor_id[:12]}…")
        self.settings = torch_settings(self._threads)
        self.model = model.eval()

    def _run(self, x: np.ndarray) -> np.ndarray:
        import torch  # heavy: torch, ~1.3 s to import (train extra)

        with torch.inference_mode():
            return self.model(torch.from_numpy(x)).numpy()

    def _release(self) -> None:
        self.model = None

    def describe(self) -> str:
        return (f"torch eager {self.checkpoint.name}, threads={self.settings.get('torch_threads')}, "
                f"flush_denormal={self.settings.get('flush_denormal')}")
