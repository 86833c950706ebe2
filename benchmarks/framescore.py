"""Scoring whole frames against ground truth: recall (IoU >= 0.5), agreement with the teacher, false faces.

Every row, ours or a peer's, is scored the same way from its per-frame detections (box + predicted label):
- recall: face frames where some box has IoU >= `iou` with the composited face's square;
- agreement ("label kept"): face frames where the best-matching box's label equals the teacher's label of that
  face (its held-out crop); a missed face counts as a disagreement, so agreement <= recall;
- agreement_of_found: the same over the frames where the face was found (the classifier apart from detection);
- false_face_rate: face-free frames with any box; extra_boxes: boxes on face frames that match nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

IOU = 0.5
UPRIGHT_DEG = 15  # "upright" faces: turned at most this many degrees (the cascades' frontal range)


@dataclass(frozen=True)
class Detection:
    """One face a row reported: its box (x, y, w, h) in frame pixels and its predicted class index."""

    box: tuple[int, int, int, int]
    label: int


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two (x, y, w, h) boxes; 0 when either is empty."""
    ax, ay, aw, ah = (float(v) for v in a)
    bx, by, bw, bh = (float(v) for v in b)
    if aw <= 0 or ah <= 0 or bw <= 0 or bh <= 0:
        return 0.0
    ix = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    iy = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    inter = ix * iy
    return inter / (aw * ah + bw * bh - inter)


def best_match(dets: Sequence[Detection], gt: Sequence[float], threshold: float = IOU) -> Optional[int]:
    """Index of the detection with the highest IoU >= threshold with `gt`, or None."""
    best, best_iou = None, threshold
    for i, d in enumerate(dets):
        v = iou(d.box, gt)
        if v >= best_iou:
            best, best_iou = i, v
    return best


def score(outputs: Sequence[Sequence[Detection]], boxes: np.ndarray, teacher: np.ndarray, rotation: np.ndarray,
          threshold: float = IOU) -> dict:
    """Recall, recall of upright faces, agreement, agreement of found faces and false faces over frames.

    outputs[i] are the detections of frame i; boxes[i] its face square (w <= 0: no face), teacher[i] the teacher's
    label of that face and rotation[i] how far it is turned (degrees). Fractions are None when there is nothing
    to count."""
    if not len(outputs) == len(boxes) == len(teacher) == len(rotation):
        raise ValueError(f"score: {len(outputs)} outputs for {len(boxes)} frames")
    found, agree, upright_found, fp = [], [], [], []
    extra = 0
    for dets, gt, lab, rot in zip(outputs, boxes, teacher, rotation):
        if gt[2] <= 0:
            fp.append(bool(dets))
            continue
        m = best_match(dets, gt, threshold)
        found.append(m is not None)
        agree.append(m is not None and int(dets[m].label) == int(lab))
        if abs(((int(rot) + 180) % 360) - 180) <= UPRIGHT_DEG:
            upright_found.append(m is not None)
        extra += len(dets) - (m is not None)
    hits = [a for a, f in zip(agree, found) if f]
    mean = (lambda v: float(np.mean(v)) if len(v) else None)
    return {"face_frames": len(found), "empty_frames": len(fp), "recall": mean(found),
            "recall_upright": mean(upright_found), "upright_frames": len(upright_found), "agreement": mean(agree),
            "agreement_of_found": mean(hits), "false_face_rate": mean(fp),
            "extra_boxes_per_face_frame": extra / len(found) if found else None}


def labels_from_probs(probs: Sequence[Sequence[float]]) -> list[int]:
    """Class index per probability vector (first index on ties, as numpy's argmax)."""
    return [int(np.argmax(p)) for p in probs]
