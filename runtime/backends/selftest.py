"""Every device self-tests what it runs: a new backend embeds the bundle's reference.npz images and must match
the PyTorch embeddings within the manifest's tolerance for that artifact (the parity entry the compiler
signed), else it is refused with the numbers and `auto` falls back to the next backend."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Optional

import numpy as np

from ..contract.errors import BackendUnavailable, BundleError
from ..contract.manifest import ParityEntry
from ..contract.parity import absolute_thresholds, failure_reasons, judge

if TYPE_CHECKING:  # pragma: no cover
    from ..bundle import Bundle
    from .base import Backend

log = logging.getLogger(__name__)


class SelfTestFailed(BackendUnavailable):
    """A backend's outputs on the bundle's reference images do not match the manifest's tolerance."""


def tolerance(bundle: "Bundle", backend: "Backend", ref: np.ndarray) -> dict[str, float]:
    """The artifact's signed parity thresholds; for an artifact with no entry (e.g. a TensorRT plan built on the
    device from the prepared ONNX) the thresholds of its precision at the reference's scale."""
    for e in bundle.manifest.parity:
        if e.file == backend.artifact.file and e.thresholds:
            return dict(e.thresholds)
    return absolute_thresholds(ref, backend.artifact.precision)


def self_test(backend: "Backend", bundle: "Bundle") -> Optional[ParityEntry]:
    """Embed reference.npz with `backend` and judge it; SelfTestFailed if it does not match. None when the
    bundle carries no reference (bundles from before the reference existed: logged)."""
    try:
        inputs, ref = bundle.reference()
    except BundleError as e:
        log.warning("self-test of %s skipped: %s", backend.name, e)
        return None
    x = np.ascontiguousarray(inputs.transpose(0, 2, 3, 1)) if backend.input_layout == "NHWC" else inputs
    try:
        got = np.concatenate([backend.embed(x[i:i + 8]) for i in range(0, len(x), 8)])
    except Exception as e:  # the artifact cannot even run its own reference images
        raise SelfTestFailed(f"{backend.name}: self-test on {backend.artifact.file} failed to run: {e}") from None
    entry = judge(ref, got, bundle.head, backend.artifact.precision, backend.artifact.file,
                  tolerance(bundle, backend, ref))
    if not entry.passed:
        raise SelfTestFailed(f"{backend.name}: {backend.artifact.file} fails its self-test on the bundle's "
                             f"{len(x)} reference images ({failure_reasons(entry)}); the artifact does not "
                             "compute what the compiler measured: refusing it")
    log.info("%s self-test passed on %s: min cosine %.5f, top-1 %.3f over %d reference images", backend.name,
             backend.artifact.file, entry.min_cosine, entry.top1_agreement, entry.n_images)
    return entry
