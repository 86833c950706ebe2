"""One MLPClassifier.partial_fit step without scikit-learn's input checks, for rows the online head built itself.

partial_fit spends about 60 % of its time checking its input (check_array, type_of_target, label binarisation,
sample-weight checks; docs/benchmarks.md "learn_one cost"), while the head's rows are float32, finite and labelled
0..C-1 by construction. unchecked_step runs what partial_fit runs after those checks, with scikit-learn's own
code (_backprop, the optimizer's update_params, the loss and no-improvement bookkeeping), so weights, Adam moments
and counters come out bit-identical (tests/test_online_head.py). Not re-created: `_random_state`, which
partial_fit rebuilds from `random_state` on every call and which an Adam step with shuffle=False never reads.

Whether a scikit-learn version still behaves so is checked once per process: both paths step two copies of a
small network and must agree exactly; if they do not, every step goes through partial_fit (with a warning).
"""

from __future__ import annotations

import copy
import logging

import numpy as np

log = logging.getLogger(__name__)

_MAX_ROWS = 200  # partial_fit's "auto" batch; more rows need batch_size = len(X) (online_head._step sets it)
_self_check: bool | None = None  # None: not run yet in this process


def step(mlp, X: np.ndarray, y: np.ndarray, w: np.ndarray | None) -> bool:
    """Take partial_fit(X, y, sample_weight=w)'s step without its input checks; False (nothing changed) if the
    fast path does not apply (unfitted MLP, not Adam, shuffling, unusual input), so the caller uses partial_fit."""
    if not applies(mlp, X, y, w):
        return False
    if not self_check_passed():
        return False
    unchecked_step(mlp, X, y, w)
    return True


def applies(mlp, X: np.ndarray, y: np.ndarray, w: np.ndarray | None) -> bool:
    """Whether partial_fit would take exactly unchecked_step's path on this MLP and these rows (one batch)."""
    if getattr(mlp, "_optimizer", None) is None or not hasattr(mlp, "coefs_"):
        return False  # first call: partial_fit initialises weights and optimizer
    if (mlp.solver != "adam" or mlp.shuffle or mlp.early_stopping or mlp.warm_start
            or getattr(mlp, "out_activation_", None) != "softmax"):
        return False
    n_classes = len(mlp.classes_)
    if not (mlp.classes_.dtype.kind in "iu" and mlp.classes_[0] == 0 and mlp.classes_[-1] == n_classes - 1):
        return False  # labels must be the column indices of the one-hot target (classes 0..C-1)
    if not (isinstance(X, np.ndarray) and X.ndim == 2 and X.dtype == mlp.coefs_[0].dtype
            and X.flags.c_contiguous and 0 < len(X) <= _batch_size(mlp, len(X))
            and X.shape[1] == mlp.coefs_[0].shape[0] and np.isfinite(X).all()):
        return False
    if not (isinstance(y, np.ndarray) and y.shape == (len(X),) and y.dtype.kind in "iu"
            and y.min() >= 0 and y.max() < n_classes):
        return False
    if w is not None and not (isinstance(w, np.ndarray) and w.shape == (len(X),) and w.dtype == X.dtype
                              and np.isfinite(w).all()):
        return False
    return True


def unchecked_step(mlp, X: np.ndarray, y: np.ndarray, w: np.ndarray | None) -> None:
    """partial_fit's incremental step after its input checks (sklearn _fit + _fit_stochastic, one batch)."""
    n, n_classes = len(X), len(mlp.classes_)
    Y = np.zeros((n, n_classes), dtype=bool)  # what LabelBinarizer.transform(y).astype(bool) gives
    Y[np.arange(n), y] = True
    units = [X.shape[1]] + [c.shape[1] for c in mlp.coefs_]
    activations = [X] + [None] * (len(units) - 1)
    deltas = [None] * (len(activations) - 1)
    coef_grads = [np.empty((a, b), dtype=X.dtype) for a, b in zip(units, units[1:])]
    intercept_grads = [np.empty(b, dtype=X.dtype) for b in units[1:]]
    params = mlp.coefs_ + mlp.intercepts_
    loss, coef_grads, intercept_grads = mlp._backprop(X, Y, w, activations, deltas, coef_grads, intercept_grads)
    mlp._optimizer.update_params(params, coef_grads + intercept_grads)
    mlp.n_iter_ = 1  # partial_fit counts from 0 on every call: one pass
    mlp.loss_ = (0.0 + loss * n) / n  # sklearn: accumulated_loss / n_samples
    mlp.t_ += n
    mlp.loss_curve_.append(mlp.loss_)
    mlp._update_no_improvement_count(False, None, None, None)
    mlp._optimizer.iteration_ends(mlp.t_)
    if mlp._no_improvement_count > mlp.n_iter_no_change:
        msg = f"Training loss did not improve more than tol={mlp.tol:f} for {mlp.n_iter_no_change} consecutive epochs."
        if not mlp._optimizer.trigger_stopping(msg, mlp.verbose):
            mlp._no_improvement_count = 0
    if not all(np.isfinite(p).all() for p in params):
        raise ValueError("Solver produced non-finite parameter weights. The input data may contain large values "
                         "and need to be preprocessed.")


def self_check_passed() -> bool:
    """Once per process: do unchecked_step and partial_fit give identical networks here? (cached)"""
    global _self_check
    if _self_check is None:
        try:
            _self_check = _compare_on_small_network()
        except Exception as e:  # a scikit-learn whose internals moved: partial_fit it is
            log.warning("fast MLP step disabled: its self-check failed (%s: %s)", type(e).__name__, e)
            _self_check = False
        else:
            if not _self_check:
                log.warning("fast MLP step disabled: it differs from partial_fit with this scikit-learn; "
                            "online updates use partial_fit (slower, same results)")
    return _self_check


def _compare_on_small_network() -> bool:
    """Two copies of a seeded 3-class MLP, stepped by partial_fit and by unchecked_step: exactly equal?"""
    from sklearn.neural_network import MLPClassifier  # heavy: scikit-learn (train extra); once per process

    rng = np.random.default_rng(0)
    X = rng.normal(size=(12, 5)).astype(np.float32)
    y = np.arange(12, dtype=np.int64) % 3
    w = rng.uniform(0.1, 2.0, 12).astype(np.float32)
    a = MLPClassifier(hidden_layer_sizes=(6,), solver="adam", random_state=0, shuffle=False)
    a.partial_fit(X, y, sample_weight=w, classes=np.arange(3))
    b = copy.deepcopy(a)
    for rows, weights in ((slice(0, 7), w[:7]), (slice(3, 12), None), (slice(0, 12), w)):
        a.partial_fit(X[rows], y[rows], sample_weight=weights)
        if not applies(b, X[rows], y[rows], weights):
            return False
        unchecked_step(b, X[rows], y[rows], weights)
    return same_state(a, b)


def same_state(a, b) -> bool:
    """Bit-identical weights, optimizer state and partial_fit counters of two MLPs."""
    arrays = [(p, q) for p, q in zip(a.coefs_ + a.intercepts_, b.coefs_ + b.intercepts_)]
    oa, ob = a._optimizer, b._optimizer
    arrays += list(zip(oa.ms, ob.ms)) + list(zip(oa.vs, ob.vs))
    return (all(p.dtype == q.dtype and np.array_equal(p, q) for p, q in arrays)
            and (oa.t, oa.learning_rate) == (ob.t, ob.learning_rate)
            and (a.n_iter_, a.t_, a.loss_, a.best_loss_, a._no_improvement_count)
            == (b.n_iter_, b.t_, b.loss_, b.best_loss_, b._no_improvement_count)
            and list(a.loss_curve_) == list(b.loss_curve_))


def _batch_size(mlp, n: int) -> int:
    """The batch partial_fit would cut n rows into (unchecked_step takes exactly one)."""
    if mlp.batch_size == "auto":
        return min(_MAX_ROWS, n)
    return int(np.clip(mlp.batch_size, 1, n))
