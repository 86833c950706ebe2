"""A fitted scikit-learn MLPClassifier as plain data (JSON fields + arrays) and back, without pickle.

What is kept is everything partial_fit reads or writes: the estimator's parameters (get_params), the weights
(coefs_, intercepts_), the fitted attributes (classes_, n_iter_, t_, n_layers_, n_outputs_, out_activation_,
loss_, best_loss_, loss_curve_, _no_improvement_count, n_features_in_) and the optimizer's state (Adam: t, ms,
vs, learning rates and betas; SGD: velocities and its schedule). A restored classifier continues partial_fit
exactly as the saved one would: same weights, same moments, same step count.

Rebuilt rather than stored: _label_binarizer (LabelBinarizer fitted on classes_, as partial_fit(classes=...)
fits it), _random_state (sklearn re-creates it from random_state at every fit call), and _best_coefs /
_best_intercepts (read only with early_stopping, which partial_fit refuses; they become copies of the weights).
The optimizer is constructed with the restored coefs_ + intercepts_ list, so it refers to the same arrays as
the estimator (older sklearn versions keep that reference and update through it).
"""

from __future__ import annotations

import logging

import numpy as np

from .statefile import StateFileError, StateReader

log = logging.getLogger(__name__)

WEIGHT_DTYPE = np.float32   # OnlineHead trains in float32 (its weights are the runtime head's)
SOLVERS = ("adam", "sgd")
LR_SCHEDULES = ("constant", "invscaling", "adaptive")


def mlp_to_state(mlp) -> tuple[dict, dict[str, np.ndarray]]:
    """(JSON fields, arrays) of a fitted MLPClassifier; arrays are named relative to the caller's prefix."""
    n = len(mlp.coefs_)
    arrays: dict[str, np.ndarray] = {"classes_": np.asarray(mlp.classes_, dtype=np.int64),
                                     "loss_curve_": np.asarray(mlp.loss_curve_, dtype=np.float64)}
    for i in range(n):
        arrays[f"coefs.{i}"] = mlp.coefs_[i]
        arrays[f"intercepts.{i}"] = mlp.intercepts_[i]
    params = mlp.get_params(deep=False)
    params["hidden_layer_sizes"] = [int(h) for h in np.atleast_1d(params["hidden_layer_sizes"])]
    doc = {
        "params": params,
        "n_iter_": int(mlp.n_iter_), "t_": int(mlp.t_), "n_layers_": int(mlp.n_layers_),
        "n_outputs_": int(mlp.n_outputs_), "out_activation_": str(mlp.out_activation_),
        "loss_": _finite("loss_", mlp.loss_), "best_loss_": _finite("best_loss_", mlp.best_loss_),
        "_no_improvement_count": int(mlp._no_improvement_count), "n_features_in_": int(mlp.n_features_in_),
        "optimizer": None,
    }
    opt = getattr(mlp, "_optimizer", None)
    if opt is not None:
        doc["optimizer"], opt_arrays = _optimizer_to_state(opt, n)
        arrays.update({f"opt.{k}": v for k, v in opt_arrays.items()})
    return doc, arrays


def mlp_from_state(r: StateReader, dim: int, n_classes: int, hidden: tuple[int, ...], activation: str):
    """A fitted MLPClassifier from the fields `r` reads, checked against the head's dim, classes and layers."""
    # sklearn is heavy (~1 s to import): only a state with a fitted MLP needs it
    from sklearn.neural_network import MLPClassifier
    from sklearn.preprocessing import LabelBinarizer
    from sklearn.utils import check_random_state

    mlp = MLPClassifier()
    _set_params(mlp, r.sub("params"), hidden, activation)
    units = [dim, *hidden, n_classes]
    n = len(units) - 1
    mlp.coefs_ = [r.array(f"coefs.{i}", (units[i], units[i + 1]), WEIGHT_DTYPE) for i in range(n)]
    mlp.intercepts_ = [r.array(f"intercepts.{i}", (units[i + 1],), WEIGHT_DTYPE) for i in range(n)]
    classes = r.array("classes_", (n_classes,), np.int64)
    if not np.array_equal(classes, np.arange(n_classes)):
        r.fail("classes_", f"must be 0..{n_classes - 1} (the head's class indices)")
    for key, want in (("n_layers_", len(units)), ("n_outputs_", n_classes), ("n_features_in_", dim)):
        if r.int(key) != want:
            r.fail(key, f"is {r.raw(key)}, the head's layers need {want}")
    r.str("out_activation_", ("softmax",))
    mlp.classes_ = classes
    mlp._label_binarizer = LabelBinarizer().fit(classes)
    mlp.n_layers_, mlp.n_outputs_, mlp.n_features_in_, mlp.out_activation_ = len(units), n_classes, dim, "softmax"
    mlp.n_iter_, mlp.t_ = r.int("n_iter_"), r.int("t_")
    mlp.loss_, mlp.best_loss_ = np.float64(r.float("loss_")), np.float64(r.float("best_loss_"))
    curve = r.array("loss_curve_", (r.rows("loss_curve_"),), np.float64)
    mlp.loss_curve_ = list(curve)
    mlp._no_improvement_count = r.int("_no_improvement_count")
    mlp.validation_scores_ = mlp.best_validation_score_ = None   # early_stopping is off (checked in _set_params)
    mlp._best_coefs = [c.copy() for c in mlp.coefs_]
    mlp._best_intercepts = [b.copy() for b in mlp.intercepts_]
    mlp._random_state = check_random_state(mlp.random_state)
    if not r.is_null("optimizer"):
        mlp._optimizer = _optimizer_from_state(r.sub("optimizer"), r, mlp.coefs_ + mlp.intercepts_)
    return mlp


# ---- internals --------------------------------------------------------------------------------------------
def _set_params(mlp, r: StateReader, hidden: tuple[int, ...], activation: str) -> None:
    """Apply the stored get_params() values that this sklearn knows, then let sklearn validate them."""
    known = mlp.get_params(deep=False)
    params = {}
    for key, value in r.doc.items():
        if key not in known:
            log.warning("state file: MLPClassifier parameter %r is unknown to this scikit-learn; ignored", key)
            continue
        if key == "hidden_layer_sizes":
            if not isinstance(value, list) or tuple(value) != tuple(hidden):
                r.fail(key, f"{value!r} does not match the head's hidden layers {list(hidden)}")
            value = tuple(hidden)
        elif value is not None and not isinstance(value, (bool, int, float, str)):
            r.fail(key, f"must be a number, string, boolean or null, got {type(value).__name__}")
        elif isinstance(value, float) and not np.isfinite(value):
            r.fail(key, "must be finite")
        params[key] = value
    if params.get("activation") != activation:
        r.fail("activation", f"{params.get('activation')!r} does not match the head's {activation!r}")
    if params.get("solver") not in SOLVERS:
        r.fail("solver", f"{params.get('solver')!r} is not one of {', '.join(SOLVERS)} (the solvers with partial_fit)")
    if params.get("early_stopping", False) is not False:
        r.fail("early_stopping", "must be false (partial_fit does not support early stopping)")
    try:
        mlp.set_params(**params)
        mlp._validate_params()
    except (ValueError, TypeError) as e:
        raise StateFileError(f"{r.prefix}: invalid MLPClassifier parameters: {e}") from None


def _optimizer_to_state(opt, n_layers: int) -> tuple[dict, dict[str, np.ndarray]]:
    """(fields, arrays) of sklearn's AdamOptimizer or SGDOptimizer."""
    # sklearn is heavy: imported only with a fitted MLP (already loaded by then)
    from sklearn.neural_network._stochastic_optimizers import AdamOptimizer, SGDOptimizer

    common = {"learning_rate_init": _finite("optimizer.learning_rate_init", opt.learning_rate_init),
              "learning_rate": _finite("optimizer.learning_rate", opt.learning_rate)}
    if isinstance(opt, AdamOptimizer):
        doc = {"kind": "adam", **common, "beta_1": float(opt.beta_1), "beta_2": float(opt.beta_2),
               "epsilon": float(opt.epsilon), "t": int(opt.t)}
        arrays = {f"ms.{i}": m for i, m in enumerate(opt.ms)}
        arrays.update({f"vs.{i}": v for i, v in enumerate(opt.vs)})
        return doc, arrays
    if isinstance(opt, SGDOptimizer):
        doc = {"kind": "sgd", **common, "lr_schedule": str(opt.lr_schedule), "momentum": float(opt.momentum),
               "nesterov": bool(opt.nesterov), "power_t": float(opt.power_t)}
        return doc, {f"velocities.{i}": v for i, v in enumerate(opt.velocities)}
    raise StateFileError(f"cannot save optimizer {type(opt).__name__} (Adam or SGD only)")


def _optimizer_from_state(o: StateReader, r: StateReader, params: list[np.ndarray]):
    """The optimizer continuing where the stored one stopped, constructed over `params` (the MLP's arrays)."""
    # sklearn is heavy: imported only with a fitted MLP (already loaded by then)
    from sklearn.neural_network._stochastic_optimizers import AdamOptimizer, SGDOptimizer

    kind = o.str("kind", SOLVERS)
    lr_init = o.float("learning_rate_init", lo=0.0)
    lr = o.float("learning_rate", lo=0.0)
    if lr_init <= 0:
        o.fail("learning_rate_init", "must be > 0")

    def moments(name: str, lo=None) -> list[np.ndarray]:
        return [r.array(f"opt.{name}.{i}", p.shape, p.dtype, lo=lo) for i, p in enumerate(params)]

    if kind == "adam":
        beta_1, beta_2 = o.float("beta_1", 0.0, 1.0), o.float("beta_2", 0.0, 1.0)
        if beta_1 >= 1.0 or beta_2 >= 1.0:
            o.fail("beta_1" if beta_1 >= 1.0 else "beta_2", "must be < 1")
        epsilon = o.float("epsilon", lo=0.0)
        if epsilon <= 0:
            o.fail("epsilon", "must be > 0")
        opt = AdamOptimizer(params, lr_init, beta_1, beta_2, epsilon)
        opt.t = o.int("t")
        opt.ms, opt.vs = moments("ms"), moments("vs", lo=0.0)
    else:
        opt = SGDOptimizer(params, lr_init, o.str("lr_schedule", LR_SCHEDULES), o.float("momentum", 0.0, 1.0),
                           o.bool("nesterov"), o.float("power_t", lo=0.0))
        opt.velocities = moments("velocities")
    opt.learning_rate = lr
    return opt


def _finite(name: str, v) -> float:
    v = float(v)
    if not np.isfinite(v):
        raise StateFileError(f"{name} is {v}: a head whose training diverged cannot be saved")
    return v
