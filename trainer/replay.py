"""Latent replay buffer: a bounded store of past embeddings and targets, mixed into every online update.

Two admission policies:
- "reservoir": Vitter's algorithm R, a uniform sample of everything seen (keeps the stream's class mix);
- "class_balanced": class-balanced reservoir sampling (CBRS, Chrysakis & Moens, ICML 2020): when full, a new
  sample evicts a random member of the currently largest class, or, if its own class is the largest, replaces
  a random member of its class with probability (stored of class) / (seen of class). Rare classes keep their
  share when the stream is dominated by a few classes, which is what causes forgetting here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .statefile import StateReader, rng_to_state

REPLAY_POLICIES = ("class_balanced", "reservoir")


@dataclass
class ReplaySample:
    """A draw from the buffer: embeddings (k, D), targets (k, C), weights (k,), stored head probabilities (k, C)
    and the entries' positions (k,) for improve()."""

    X: np.ndarray
    T: np.ndarray
    w: np.ndarray
    P: np.ndarray
    idx: np.ndarray


class ReplayBuffer:
    """Bounded buffer of (embedding, target vector, weight, head probabilities); class = argmax of the target.

    The head's probabilities when an entry was stored (P) let updates distil the head's past outputs on replayed
    entries (dark experience replay, Buzzega et al. 2020); improve() upgrades them when the head does better on an
    entry (like X-DER's memory update, Boschini et al. 2022). An entry stored without them keeps its target as P.
    """

    def __init__(self, capacity: int, dim: int, n_classes: int, policy: str = "class_balanced", seed: int = 0):
        if policy not in REPLAY_POLICIES:
            raise ValueError(f"unknown replay policy {policy!r}; valid: {', '.join(REPLAY_POLICIES)}")
        if capacity < 0:
            raise ValueError(f"replay capacity must be >= 0, got {capacity}")
        self.capacity = int(capacity)
        self.policy = policy
        self.X = np.zeros((self.capacity, dim), dtype=np.float32)
        self.T = np.zeros((self.capacity, n_classes), dtype=np.float32)
        self.w = np.zeros(self.capacity, dtype=np.float32)
        self.P = np.zeros((self.capacity, n_classes), dtype=np.float32)
        self.cls = np.zeros(self.capacity, dtype=np.int64)
        self.size = 0
        self.n_seen = 0
        self.seen_per_class = np.zeros(n_classes, dtype=np.int64)
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return self.size

    def __setstate__(self, state: dict) -> None:
        """Legacy state files (pickles, read only when migrating): buffers saved before probabilities were stored
        replay their targets as probabilities."""
        self.__dict__.update(state)
        if "P" not in state:
            self.P = self.T.copy()

    def to_state(self) -> tuple[dict, dict[str, np.ndarray]]:
        """(JSON fields, arrays) of the whole buffer, for a state file (statefile.pack)."""
        doc = {"capacity": self.capacity, "policy": self.policy, "size": int(self.size), "n_seen": int(self.n_seen),
               "rng": rng_to_state(self.rng)}
        return doc, {"X": self.X, "T": self.T, "w": self.w, "P": self.P, "cls": self.cls,
                     "seen_per_class": self.seen_per_class}

    @classmethod
    def from_state(cls, r: StateReader, dim: int, n_classes: int) -> "ReplayBuffer":
        """The buffer to_state() described, every field checked (shapes, dtypes, ranges, finite values)."""
        cap = r.int("capacity")
        size = r.int("size", 0, cap)
        obj = cls.__new__(cls)  # not __init__: it would allocate `capacity` rows before the arrays are checked
        obj.capacity, obj.policy, obj.size = cap, r.str("policy", REPLAY_POLICIES), size
        obj.n_seen = r.int("n_seen", size)
        obj.X = r.array("X", (cap, dim), np.float32)
        obj.T = r.array("T", (cap, n_classes), np.float32, lo=0.0)
        obj.w = r.array("w", (cap,), np.float32, lo=0.0)
        obj.P = r.array("P", (cap, n_classes), np.float32, lo=0.0)
        obj.cls = r.array("cls", (cap,), np.int64, lo=0, hi=n_classes - 1)
        obj.seen_per_class = r.array("seen_per_class", (n_classes,), np.int64, lo=0)
        if int(obj.seen_per_class.sum()) != obj.n_seen:
            r.fail("seen_per_class", f"sums to {int(obj.seen_per_class.sum())}, but n_seen is {obj.n_seen}")
        obj.rng = r.rng("rng")
        return obj

    def class_counts(self) -> np.ndarray:
        """How many stored entries each class has."""
        return np.bincount(self.cls[: self.size], minlength=self.T.shape[1])

    def add(self, x: np.ndarray, t: np.ndarray, w: float = 1.0, p: np.ndarray | None = None) -> None:
        """Offer one sample (and the head's probabilities p for it) to the buffer: stored, replacing, or skipped."""
        if self.capacity == 0:
            return
        c = int(np.argmax(t))
        self.n_seen += 1
        self.seen_per_class[c] += 1
        if self.size < self.capacity:
            self._put(self.size, x, t, w, c, p)
            self.size += 1
            return
        if self.policy == "reservoir":
            j = int(self.rng.integers(self.n_seen))
            if j < self.capacity:
                self._put(j, x, t, w, c, p)
            return
        counts = self.class_counts()
        largest = np.flatnonzero(counts == counts.max())
        if c not in largest:
            victim_class = int(self.rng.choice(largest))
            j = int(self.rng.choice(np.flatnonzero(self.cls[: self.size] == victim_class)))
            self._put(j, x, t, w, c, p)
        elif self.rng.random() < counts[c] / self.seen_per_class[c]:
            j = int(self.rng.choice(np.flatnonzero(self.cls[: self.size] == c)))
            self._put(j, x, t, w, c, p)

    def add_many(self, X: np.ndarray, T: np.ndarray, w: np.ndarray | None = None,
                 P: np.ndarray | None = None) -> None:
        """add() for each row (P: the head's probabilities per row, or None)."""
        w = np.ones(len(X), dtype=np.float32) if w is None else w
        for i in range(len(X)):
            self.add(X[i], T[i], float(w[i]), None if P is None else P[i])

    def sample(self, k: int) -> ReplaySample:
        """k distinct entries drawn uniformly (fewer if the buffer holds fewer)."""
        k = min(int(k), self.size)
        if k <= 0:
            return ReplaySample(self.X[:0], self.T[:0], self.w[:0], self.P[:0], np.zeros(0, dtype=np.int64))
        idx = self.rng.choice(self.size, size=k, replace=False) if k < self.size else np.arange(self.size)
        return ReplaySample(self.X[idx], self.T[idx], self.w[idx], self.P[idx], idx)

    def improve(self, idx: np.ndarray, P: np.ndarray) -> None:
        """Replace the stored probabilities of entries idx by P where P gives their class more probability.

        The distillation target of an entry is then the best output the head has had on it: a regression
        (forgetting) is pulled back, while an early, unsure output does not hold back later learning.
        """
        rows = np.arange(len(idx))
        c = self.cls[idx]
        better = P[rows, c] > self.P[idx, c]
        self.P[idx[better]] = P[better]

    def _put(self, j: int, x, t, w, c, p=None) -> None:
        self.X[j] = x
        self.T[j] = t
        self.w[j] = w
        self.P[j] = t if p is None else p
        self.cls[j] = c


class TeacherAnchors:
    """A fixed set of anchor embeddings with a teacher's class probabilities, never evicted.

    Updates take a few rows each, rotating through the set (a shuffled order, reshuffled after every pass), so
    every anchor is rehearsed equally often; `weight` is the sample weight of each anchor row.
    """

    def __init__(self, X: np.ndarray, P: np.ndarray, weight: float = 1.0, seed: int = 0):
        self.X = np.ascontiguousarray(X, dtype=np.float32)
        self.P = np.ascontiguousarray(P, dtype=np.float32)
        self.weight = float(weight)
        self.rng = np.random.default_rng(seed)
        self.order = self.rng.permutation(len(self.X))
        self.cursor = 0

    def __len__(self) -> int:
        return len(self.X)

    def to_state(self) -> tuple[dict, dict[str, np.ndarray]]:
        """(JSON fields, arrays) of the set and its rotation position, for a state file (statefile.pack)."""
        doc = {"weight": self.weight, "cursor": int(self.cursor), "rng": rng_to_state(self.rng)}
        return doc, {"X": self.X, "P": self.P, "order": self.order}

    @classmethod
    def from_state(cls, r: StateReader, dim: int, n_classes: int) -> "TeacherAnchors":
        """The set to_state() described (continuing the same rotation), every field checked."""
        n = r.rows("X")
        if n < 1:
            r.fail("X", "a teacher anchor set has at least one row (an empty set is stored as null)")
        obj = cls.__new__(cls)  # not __init__: it would draw a new rotation order
        obj.X = r.array("X", (n, dim), np.float32)
        obj.P = r.array("P", (n, n_classes), np.float32, lo=0.0)
        if np.any(obj.P.sum(1) <= 0):
            r.fail("P", "a row has no probability mass")
        obj.weight = r.float("weight", lo=0.0)
        if obj.weight <= 0:
            r.fail("weight", "must be > 0")
        obj.order = r.array("order", (n,), np.int64)
        if not np.array_equal(np.sort(obj.order), np.arange(n)):
            r.fail("order", f"is not a permutation of 0..{n - 1}")
        obj.cursor = r.int("cursor", 0, n)
        obj.rng = r.rng("rng")
        return obj

    def take(self, k: int) -> np.ndarray:
        """Indices of the next k anchors of the rotation (all of them if k >= the set's size)."""
        n = len(self.X)
        k = min(int(k), n)
        out = np.empty(k, dtype=np.int64)
        for j in range(k):
            if self.cursor >= n:
                self.order = self.rng.permutation(n)
                self.cursor = 0
            out[j] = self.order[self.cursor]
            self.cursor += 1
        return out
