"""Split-conformal prediction sets for the head: threshold from held-out scores, a FIFO calibration buffer, checks.

Score of a labelled sample: s = 1 - p(true class). With n held-out scores and coverage 1 - a, the threshold
qhat is the ceil((n + 1)(1 - a))-th smallest score; the set {k : 1 - p_k <= qhat} (top class always added) then
contains the true class with probability >= 1 - a for a new exchangeable sample (Vovk et al.; Angelopoulos &
Bates, "A Gentle Introduction to Conformal Prediction", 2021). Too few scores for that rank -> qhat = 1 (all
classes), which is still valid. The runtime's prediction_set_indices applies the threshold on the device.
"""

from __future__ import annotations

import math

import numpy as np

from infantino.runtime.contract.head import prediction_set_indices

from .statefile import StateReader


def check_coverage_level(coverage: float) -> float:
    coverage = float(coverage)
    if not (0.0 < coverage < 1.0):
        raise ValueError(f"coverage must be strictly between 0 and 1 (e.g. 0.9), got {coverage}")
    return coverage


def nonconformity(probs: np.ndarray, y: np.ndarray) -> np.ndarray:
    """1 - p(true class) for each row of probs (N, C) and integer labels y (N,)."""
    probs = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    return 1.0 - probs[np.arange(len(y)), y]


def conformal_quantile(scores: np.ndarray, coverage: float) -> float:
    """qhat: the ceil((n+1)·coverage)-th smallest score (1.0 if n is too small for that rank)."""
    coverage = check_coverage_level(coverage)
    s = np.sort(np.asarray(scores, dtype=np.float64))
    n = len(s)
    k = math.ceil((n + 1) * coverage)
    if n == 0 or k > n:
        return 1.0
    return float(min(max(s[k - 1], 0.0), 1.0))


def weighted_conformal_quantile(scores: np.ndarray, weights: np.ndarray, coverage: float) -> float:
    """Non-exchangeable split conformal (Barber, Candes, Ramdas & Tibshirani, 2023): weighted score quantile.

    Weights (e.g. decaying with a sample's age) are normalised together with weight 1 for the test point, whose
    score counts as +inf; qhat is the smallest score whose cumulative weight reaches `coverage` (1.0 if none).
    With all weights 1 this is exactly conformal_quantile. Under drift, recent samples dominate the threshold.
    """
    coverage = check_coverage_level(coverage)
    s = np.asarray(scores, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    if s.shape != w.shape:
        raise ValueError("scores and weights must have the same shape")
    if len(s) == 0:
        return 1.0
    order = np.argsort(s, kind="stable")
    cum = np.cumsum(w[order]) / (w.sum() + 1.0)
    k = int(np.searchsorted(cum, coverage - 1e-12, side="left"))
    if k >= len(s):
        return 1.0
    return float(min(max(s[order][k], 0.0), 1.0))


def min_calibration_size(coverage: float) -> int:
    """Smallest n for which the threshold is below 1 (ceil((n+1)·coverage) <= n)."""
    coverage = check_coverage_level(coverage)
    n = 1
    while math.ceil((n + 1) * coverage) > n:
        n += 1
    return n


def prediction_sets(probs: np.ndarray, qhat: float | None) -> list[list[int]]:
    """Prediction set (class indices, most probable first) for each row, exactly as the device computes it."""
    return [prediction_set_indices(p, qhat) for p in np.asarray(probs, dtype=np.float64)]


def evaluate_sets(probs: np.ndarray, y: np.ndarray, qhat: float | None) -> dict:
    """Empirical coverage, mean set size and accuracy of a head's outputs on labelled data."""
    y = np.asarray(y, dtype=np.int64)
    sets = prediction_sets(probs, qhat)
    covered = np.array([yi in s for yi, s in zip(y, sets)])
    sizes = np.array([len(s) for s in sets])
    return {
        "n": int(len(y)),
        "coverage": float(covered.mean()) if len(y) else float("nan"),
        "mean_set_size": float(sizes.mean()) if len(y) else float("nan"),
        "singleton_fraction": float((sizes == 1).mean()) if len(y) else float("nan"),
        "accuracy": float((np.argmax(probs, axis=1) == y).mean()) if len(y) else float("nan"),
    }


class CalibrationBuffer:
    """FIFO of the most recent held-out (embedding, label) pairs: recalibration follows the current distribution.

    These samples are never trained on, so scores recomputed with any later head stay out-of-sample.
    """

    def __init__(self, capacity: int, dim: int):
        if capacity < 1:
            raise ValueError(f"calibration buffer size must be >= 1, got {capacity}")
        self.capacity = int(capacity)
        self.X = np.zeros((self.capacity, dim), dtype=np.float32)
        self.y = np.zeros(self.capacity, dtype=np.int64)
        self.arrival = np.zeros(self.capacity, dtype=np.int64)  # arrivals counted when its batch completed
        self.arrivals = 0
        self.size = 0
        self.next = 0  # ring position of the next write (the oldest entry once full)

    def __len__(self) -> int:
        return self.size

    def to_state(self) -> tuple[dict, dict[str, np.ndarray]]:
        """(JSON fields, arrays) of the whole ring, for a state file (statefile.pack)."""
        doc = {"capacity": self.capacity, "arrivals": int(self.arrivals), "size": int(self.size),
               "next": int(self.next)}
        return doc, {"X": self.X, "y": self.y, "arrival": self.arrival}

    @classmethod
    def from_state(cls, r: StateReader, dim: int, n_classes: int) -> "CalibrationBuffer":
        """The ring to_state() described, every field checked (shapes, dtypes, labels, ring positions)."""
        cap = r.int("capacity", 1)
        obj = cls.__new__(cls)  # not __init__: it would allocate `capacity` rows before the arrays are checked
        obj.capacity = cap
        obj.size = r.int("size", 0, cap)
        obj.next = r.int("next", 0, cap - 1)
        if obj.size < cap and obj.next != obj.size:
            r.fail("next", f"is {obj.next}, but a ring that is not full writes at its size ({obj.size})")
        obj.arrivals = r.int("arrivals", obj.size)
        obj.X = r.array("X", (cap, dim), np.float32)
        obj.y = r.array("y", (cap,), np.int64, lo=0, hi=n_classes - 1)
        obj.arrival = r.array("arrival", (cap,), np.int64, lo=0)
        if obj.size and obj.arrival[: obj.size].max() > obj.arrivals:
            r.fail("arrival", f"an entry arrived after the last arrival ({obj.arrivals})")
        return obj

    def add(self, x: np.ndarray, y: int) -> None:
        self.add_many(np.asarray(x)[None, :], np.array([y]))

    def add_many(self, X: np.ndarray, y: np.ndarray) -> None:
        """Append a batch (oldest entries drop out); a batch shares one age, as it has no order of its own."""
        self.arrivals += len(X)
        for xi, yi in zip(X, y):
            self.X[self.next] = xi
            self.y[self.next] = int(yi)
            self.arrival[self.next] = self.arrivals
            self.next = (self.next + 1) % self.capacity
            self.size = min(self.size + 1, self.capacity)

    def clear(self) -> None:
        self.size = 0
        self.next = 0
        self.arrivals = 0

    def data(self) -> tuple[np.ndarray, np.ndarray]:
        return self.X[: self.size], self.y[: self.size]

    def ages(self) -> np.ndarray:
        """Age of each entry = calibration samples that arrived after its batch (0 = newest), aligned with data()."""
        return self.arrivals - self.arrival[: self.size]
