"""Classification metrics from a confusion matrix (so DDP ranks can sum theirs) and its picture."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from infantino.runtime.contract.atomic import atomic_write_bytes
from infantino.runtime.contract.classes import CLASSES


def confusion_matrix(y_true, y_pred, n_classes: int = len(CLASSES)) -> np.ndarray:
    """cm[i, j] = number of samples of true class i predicted as j."""
    y_true = np.asarray(y_true, dtype=np.int64).ravel()
    y_pred = np.asarray(y_pred, dtype=np.int64).ravel()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true and y_pred differ in length: {y_true.size} vs {y_pred.size}")
    return np.bincount(y_true * n_classes + y_pred, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def report(cm: np.ndarray, classes: Sequence[str] = CLASSES) -> dict:
    """accuracy, macro F1 (over classes that occur in truth or prediction, as scikit-learn), per-class P/R/F1."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    present = (support > 0) | (predicted > 0)
    total = cm.sum()
    return {
        "accuracy": float(tp.sum() / total) if total else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "per_class": {c: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                          "support": int(support[i])} for i, c in enumerate(classes)},
        "confusion_matrix": cm.astype(np.int64).tolist(),
    }


def plot_confusion(cm: np.ndarray, path: str | os.PathLike, classes: Sequence[str] = CLASSES,
                   title: str = "confusion matrix") -> Path:
    """Write the confusion matrix (row-normalised colours, raw counts as text) as a PNG, atomically."""
    import matplotlib  # heavy: matplotlib, ~0.4 s to import (train extra)

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure  # heavy: matplotlib, ~0.4 s to import (train extra)

    cm = np.asarray(cm)
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=np.float64), where=rows > 0)
    fig = Figure(figsize=(6, 5.2), dpi=100)
    ax = fig.add_subplot()
    im = ax.imshow(norm, vmin=0, vmax=1, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", fontsize=8,
                    color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue())
    return path
