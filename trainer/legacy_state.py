"""Reading the legacy online head state (head_state.pkl, a pickle): only to migrate it, only when trusted.

Unpickling runs the callables a file names, so a pickle is code, not data. OnlineHead.load reads a legacy file
only when its caller says the file is trusted (trust_legacy_pickle=True, the `--migrate-legacy-state` flag, the
update service's own state folder), and then writes the new format (statefile) beside it, so the pickle is read
once. As a second line of defence the unpickler below resolves only the classes and functions an online head
state is made of (numpy arrays and generators, the sklearn MLP and its optimizer, the head's own buffers): a
pickle naming os.system, subprocess, builtins.eval or anything else fails before it runs. That narrows what a
hostile pickle can do but is not proof against every trick, which is why the explicit trust is still required.

read_legacy_pickle is the only function in the trainer that unpickles a head state (tests check that).
"""

from __future__ import annotations

import io

from .statefile import StateFileError

# (module, name) pairs an online head state pickle refers to, across numpy 1.x/2.x and sklearn >= 1.4
LEGACY_GLOBALS = frozenset({
    ("infantino.trainer.online_head", "_Counters"),
    ("infantino.trainer.replay", "ReplayBuffer"),
    ("infantino.trainer.replay", "TeacherAnchors"),
    ("infantino.trainer.conformal", "CalibrationBuffer"),
    ("sklearn.neural_network._multilayer_perceptron", "MLPClassifier"),
    ("sklearn.neural_network._stochastic_optimizers", "AdamOptimizer"),
    ("sklearn.neural_network._stochastic_optimizers", "SGDOptimizer"),
    ("sklearn.preprocessing._label", "LabelBinarizer"),
    ("numpy", "dtype"),
    ("numpy", "ndarray"),
    *((m, n) for m in ("numpy.core.multiarray", "numpy._core.multiarray") for n in ("scalar", "_reconstruct")),
    *((m, "_frombuffer") for m in ("numpy.core.numeric", "numpy._core.numeric")),
    ("numpy.random._pickle", "__generator_ctor"),
    ("numpy.random._pickle", "__bit_generator_ctor"),
    ("numpy.random._pickle", "__randomstate_ctor"),
    ("numpy.random._pcg64", "PCG64"),
    ("numpy.random._mt19937", "MT19937"),
    ("numpy.random.bit_generator", "SeedSequence"),
    ("numpy.random.bit_generator", "__pyx_unpickle_SeedSequence"),
})


def read_legacy_pickle(data: bytes, source: object = "legacy state"):
    """Unpickle a legacy head_state.pkl's bytes, resolving only LEGACY_GLOBALS. Call only for a trusted file;
    errors name `source`."""
    import pickle  # here only, not at the top: this function is the trainer's one unpickling path (see above)

    class _StateUnpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str):
            if (module, name) not in LEGACY_GLOBALS:
                raise pickle.UnpicklingError(f"{module}.{name} is not part of an online head state; refused")
            return super().find_class(module, name)

    try:
        return _StateUnpickler(io.BytesIO(data)).load()
    except Exception as e:  # a damaged or foreign pickle fails in many ways (EOFError, KeyError, TypeError...)
        raise StateFileError(f"{source}: cannot read the legacy pickle: {type(e).__name__}: {e}") from None
