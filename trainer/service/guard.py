"""The real-face guard of a fleet: candidate head versions scored against the FER-2013 teacher on held-out
real faces before they may be published (trainer.realface_guard)."""

from __future__ import annotations

from infantino.runtime.contract.head import Head
from infantino.runtime.face import FaceOptions
from infantino.runtime.pipeline import Pipeline

from ..realface_guard import GuardPolicy, embed_heldout, head_agreement, pretrained_baseline


class FleetGuard:
    """The real-face guard of one fleet: held-out real faces embedded once by the bundle's extractor, and every
    candidate head version scored on them before it may be published (trainer.realface_guard)."""

    def __init__(self, bundle, allow_regression: bool = False):
        with Pipeline(bundle, face=FaceOptions(detector="full_frame")) as pipe:  # the faces are crops already
            self.embeddings = embed_heldout(pipe.embed)
        rf = bundle.manifest.real_faces
        self.baseline = rf.baseline if rf is not None and rf.baseline is not None else pretrained_baseline()
        self.allow_regression = allow_regression
        self.held_back = 0
        self.last: dict | None = None

    def judge(self, head: Head) -> tuple[bool, dict]:
        """(may publish, figures) for a candidate head; figures include the failed thresholds."""
        a = head_agreement(self.embeddings, head, baseline=self.baseline)
        problems = GuardPolicy().problems(a)
        self.last = {"agreement": a.all, "agreement_confident": a.confident, "baseline": self.baseline,
                     "problems": problems}
        return (not problems) or self.allow_regression, self.last
