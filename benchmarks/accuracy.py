"""Quality next to speed: top-1 accuracy on a labelled folder, or parity with the bundle's PyTorch reference.

A faster row is only a win at equal quality. With `--data DIR` (DIR/<class>/<image>, face crops, class
folder names from the bundle's classes, as `infantino-train synth` writes them) each row's embeddings go
through the bundle's head and top-1 accuracy is reported. Without it, each row embeds the bundle's
reference.npz inputs and is compared with the PyTorch embeddings stored there: cosine, max abs diff and the
head's top-1 agreement (the fraction of images whose predicted class is unchanged).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from infantino.runtime.contract.head import Head

log = logging.getLogger(__name__)

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".pgm", ".ppm", ".tif", ".tiff")


@dataclass
class LabelledImages:
    images: list[np.ndarray]
    labels: np.ndarray  # class indices in `classes`
    files: list[str]
    classes: tuple[str, ...]


def load_labelled_folder(root: str | Path, classes: Sequence[str], limit: int | None = None) -> LabelledImages:
    """Read DIR/<class>/<image>; ValueError names unknown class folders, unreadable images or an empty set."""
    import cv2  # optional: OpenCV (device/train extras)

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"--data: no such directory: {root}")
    dirs = sorted(p for p in root.iterdir() if p.is_dir())
    unknown = [d.name for d in dirs if d.name not in classes]
    if unknown:
        raise ValueError(f"--data {root}: folders {unknown} are not classes of the bundle "
                         f"(valid: {', '.join(classes)})")
    images, labels, files = [], [], []
    per_class = {d.name: sorted(f for f in d.iterdir() if f.suffix.lower() in IMAGE_EXTS) for d in dirs}
    for name, fs in per_class.items():
        for f in fs[: limit if limit else None]:
            img = cv2.imread(str(f), cv2.IMREAD_COLOR)
            if img is None:
                raise ValueError(f"--data: cannot read image {f}")
            images.append(img)
            labels.append(list(classes).index(name))
            files.append(str(f))
    if not images:
        raise ValueError(f"--data {root}: no images found (expected {root}/<class>/*.png, classes: "
                         f"{', '.join(classes)})")
    return LabelledImages(images, np.asarray(labels, np.int64), files, tuple(classes))


def to_layout(x_nchw: np.ndarray, layout: str) -> np.ndarray:
    return np.ascontiguousarray(x_nchw.transpose(0, 2, 3, 1)) if layout == "NHWC" else x_nchw


def head_top1(head: Head, embeddings: np.ndarray) -> np.ndarray:
    return head.forward(np.asarray(embeddings, np.float64)).argmax(1)


def parity(outputs: np.ndarray, ref_embeddings: np.ndarray, head: Head, kind: str = "embedding",
           logits_dims: int | None = None) -> dict:
    """Compare a row's outputs on the reference inputs with the PyTorch embeddings of the bundle.

    kind="embedding": cosine, max abs diff, relative error and head top-1 agreement.
    kind="probabilities" (a peer classifier): only top-1 agreement with the head's prediction on the
    reference embeddings. `logits_dims`: the first k embedding dims are class logits (mini_xception); then
    "logit_agreement" compares each row's class decision there (a peer's argmax) with PyTorch's.
    """
    ref = np.asarray(ref_embeddings, np.float64)
    out = np.asarray(outputs, np.float64)
    if out.shape[0] != ref.shape[0]:
        raise ValueError(f"parity: {out.shape[0]} outputs for {ref.shape[0]} reference images")
    ref_top = head_top1(head, ref)
    res = {"mode": "parity", "n_images": int(ref.shape[0])}
    if kind == "embedding":
        num = (out * ref).sum(1)
        den = np.linalg.norm(out, axis=1) * np.linalg.norm(ref, axis=1)
        cos = num / np.maximum(den, 1e-30)
        res.update({
            "cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()),
            "max_abs_diff": float(np.abs(out - ref).max()),
            "rel_err": float(np.linalg.norm(out - ref) / max(np.linalg.norm(ref), 1e-30)),
            "top1_agreement": float((head_top1(head, out) == ref_top).mean()),
        })
        if logits_dims:
            res["logit_agreement"] = float((out[:, :logits_dims].argmax(1) == ref[:, :logits_dims].argmax(1)).mean())
    else:
        res["top1_agreement"] = float((out.argmax(1) == ref_top).mean())
        if logits_dims:
            res["logit_agreement"] = float((out.argmax(1) == ref[:, :logits_dims].argmax(1)).mean())
    return res


def accuracy(outputs: np.ndarray, labels: np.ndarray, head: Head, kind: str = "embedding") -> dict:
    """Top-1 accuracy on labelled images: through the head for embeddings, argmax for a peer's probabilities."""
    pred = head_top1(head, outputs) if kind == "embedding" else np.asarray(outputs).argmax(1)
    return {"mode": "accuracy", "n_images": int(len(labels)), "top1_accuracy": float((pred == labels).mean())}
