"""Turning one sample's label(s) into a training target: a hard label, several annotators' votes, or a soft label.

Rule (documented in docs/online-head.md): every form becomes a probability vector over the classes.
- a hard label (name or index) -> one-hot;
- several annotators' labels -> with rule "soft" (default) the vote fractions, used as per-class sample weights
  (cross-entropy against the vote distribution); with rule "majority" the most voted class, and a tie between the
  top classes drops the sample (returns None);
- a soft label (mapping name -> weight, or a vector) -> normalised to sum 1 (negative, NaN or all-zero refused).
"""

from __future__ import annotations

from collections import Counter
from typing import Mapping, Sequence

import numpy as np

from infantino.runtime.contract.classes import CLASSES

AMBIGUITY_RULES = ("soft", "majority")


def label_index(label, classes: Sequence[str] = CLASSES) -> int:
    """Index of a label given as a class name or an integer index; ValueError naming the valid labels otherwise."""
    if isinstance(label, (bool, np.bool_)):
        raise ValueError(f"label must be a class name or index, got {label!r}")
    if isinstance(label, (int, np.integer)):
        if 0 <= int(label) < len(classes):
            return int(label)
        raise ValueError(f"label index {int(label)} out of range 0..{len(classes) - 1}")
    if isinstance(label, str):
        try:
            return list(classes).index(label)
        except ValueError:
            raise ValueError(f"unknown label {label!r}; valid labels: {', '.join(classes)}") from None
    raise ValueError(f"label must be a class name or index, got {type(label).__name__} {label!r}")


def combine_annotators(labels: Sequence, classes: Sequence[str] = CLASSES, rule: str = "soft") -> np.ndarray | None:
    """Target vector from several annotators' labels: vote fractions ("soft") or the strict majority ("majority").

    Returns None when rule is "majority" and the top classes tie (the sample is dropped, not guessed).
    """
    if rule not in AMBIGUITY_RULES:
        raise ValueError(f"unknown ambiguity rule {rule!r}; valid: {', '.join(AMBIGUITY_RULES)}")
    if isinstance(labels, (str, bytes)) or len(labels) == 0:
        raise ValueError("labels must be a non-empty list of annotators' labels")
    idx = [label_index(lb, classes) for lb in labels]
    votes = Counter(idx)
    target = np.zeros(len(classes), dtype=np.float32)
    if rule == "soft":
        for k, n in votes.items():
            target[k] = n / len(idx)
        return target
    (top, n_top), *rest = votes.most_common()
    if rest and rest[0][1] == n_top:
        return None
    target[top] = 1.0
    return target


def soft_target(soft_label, classes: Sequence[str] = CLASSES) -> np.ndarray:
    """Normalised probability vector from a mapping {class: weight} or a length-C vector."""
    if isinstance(soft_label, Mapping):
        v = np.zeros(len(classes), dtype=np.float64)
        for k, w in soft_label.items():
            v[label_index(k, classes)] += float(w)
    else:
        v = np.asarray(soft_label, dtype=np.float64)
        if v.shape != (len(classes),):
            raise ValueError(f"soft label must have {len(classes)} values (one per class), got shape {v.shape}")
    if not np.all(np.isfinite(v)) or np.any(v < 0):
        raise ValueError("soft label values must be finite and non-negative")
    s = v.sum()
    if s <= 0:
        raise ValueError("soft label sums to zero")
    return (v / s).astype(np.float32)


def make_target(label=None, labels=None, soft_label=None, classes: Sequence[str] = CLASSES,
                rule: str = "soft") -> np.ndarray | None:
    """Exactly one of label / labels / soft_label -> target vector (None = tie dropped under "majority")."""
    given = [x is not None for x in (label, labels, soft_label)]
    if sum(given) != 1:
        raise ValueError("give exactly one of label=, labels= (annotators) or soft_label=")
    if label is not None:
        t = np.zeros(len(classes), dtype=np.float32)
        t[label_index(label, classes)] = 1.0
        return t
    if labels is not None:
        return combine_annotators(labels, classes, rule)
    return soft_target(soft_label, classes)


def target_from_any(y, classes: Sequence[str] = CLASSES, rule: str = "soft") -> np.ndarray | None:
    """One entry of a learn_many label list: name/index, list of annotators' labels, or a soft label mapping/vector."""
    if isinstance(y, (str, int, np.integer)):
        return make_target(label=y, classes=classes, rule=rule)
    if isinstance(y, Mapping):
        return make_target(soft_label=y, classes=classes, rule=rule)
    if isinstance(y, np.ndarray) and y.dtype.kind == "f":
        return make_target(soft_label=y, classes=classes, rule=rule)
    if isinstance(y, (list, tuple, np.ndarray)):
        return make_target(labels=list(y), classes=classes, rule=rule)
    raise ValueError(f"cannot read a label from {type(y).__name__} {y!r}")


def expand_targets(X: np.ndarray, T: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows (x, class k, weight w * T[k]) for every non-zero target entry: soft cross-entropy via sample weights."""
    rows, ks = np.nonzero(T > 0)
    return X[rows], ks.astype(np.int64), (w[rows] * T[rows, ks]).astype(np.float32)
