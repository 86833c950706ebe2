"""Backend registry: @register_backend on each backend class, create_backend(name, bundle, ...) to build one.

Like timm's model registry: unknown names fail with the valid choices and the closest match. "auto" picks the
best backend that is installed here and has an artifact in the bundle (TensorRT on NVIDIA hosts, then the
bundle's default, then LiteRT on ARM / onnxruntime elsewhere).
"""

from __future__ import annotations

import importlib
import logging
import os
import platform
from typing import TYPE_CHECKING, Any, Optional

from ..choices import UnknownChoice, unknown_message
from ..contract.errors import BackendUnavailable, InfantinoError
from .base import Backend, BackendConfig
from .selftest import SelfTestFailed
from .selftest import self_test as run_self_test

if TYPE_CHECKING:  # pragma: no cover
    from ..bundle import Bundle

log = logging.getLogger(__name__)

_REGISTRY: dict[str, type[Backend]] = {}
# Built-in backend modules; importing them is cheap (each imports its library only when used).
BUILTIN_MODULES = ("onnxruntime_backend", "tflite_backend", "tensorrt_backend")
_builtins_loaded = False


class UnknownBackend(UnknownChoice):
    """A backend name that is not registered."""


def register_backend(cls: type[Backend]) -> type[Backend]:
    """Class decorator: register a Backend subclass under cls.name."""
    if not cls.name:
        raise TypeError(f"{cls.__name__} needs a non-empty `name`")
    if cls.name == "auto":
        raise TypeError("'auto' is reserved")
    other = _REGISTRY.get(cls.name)
    if other is not None and other is not cls and other.__qualname__ != cls.__qualname__:
        raise TypeError(f"backend name {cls.name!r} already registered by {other.__module__}.{other.__qualname__}")
    _REGISTRY[cls.name] = cls
    return cls


def _load_builtins() -> None:
    global _builtins_loaded
    if not _builtins_loaded:
        for mod in BUILTIN_MODULES:
            importlib.import_module(f"{__package__}.{mod}")
        _builtins_loaded = True


def list_backends() -> list[str]:
    """Names of all registered backends (installed or not)."""
    _load_builtins()
    return sorted(_REGISTRY)


def get_backend_class(name: str) -> type[Backend]:
    """The class registered as `name`; UnknownBackend lists valid names and the closest match."""
    _load_builtins()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownBackend(unknown_message("backend", name, ["auto"] + sorted(_REGISTRY))) from None


def unavailable_reason(name: str) -> Optional[str]:
    """None if backend `name` can run on this host, else its exact reason (what to install)."""
    return get_backend_class(name).unavailable_reason()


def available_backends() -> list[str]:
    """Registered backends whose libraries are installed and usable here."""
    return [n for n in list_backends() if unavailable_reason(n) is None]


def has_nvidia_gpu() -> bool:
    """True on hosts with an NVIDIA driver (desktop GPUs or Jetson)."""
    return (os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/nvidia0")
            or os.path.exists("/etc/nv_tegra_release"))


def host_preference() -> list[str]:
    """Backends in order of preference for this host's hardware."""
    if has_nvidia_gpu():
        return ["tensorrt", "onnxruntime", "tflite"]
    if platform.machine().lower() in ("aarch64", "arm64", "armv7l"):
        return ["tflite", "onnxruntime", "tensorrt"]
    return ["onnxruntime", "tflite", "tensorrt"]


def preference_order(bundle: "Bundle") -> list[str]:
    """Registered backends in the order `auto` tries them: the bundle's default first (a GPU host tries TensorRT
    first), then this host's preference, then the rest."""
    _load_builtins()
    order = host_preference()
    default = bundle.manifest.default_backend
    if default in _REGISTRY:
        order = [n for n in order if n != default]
        order.insert(1 if has_nvidia_gpu() and order[0] == "tensorrt" else 0, default)
    order += [n for n in sorted(_REGISTRY) if n not in order]
    return [n for n in order if n in _REGISTRY]


def choose_backend(bundle: "Bundle", precision: Optional[str] = None) -> str:
    """The first backend `auto` would try (installed here, with an artifact in the bundle); BackendUnavailable
    lists every reason otherwise. create_backend("auto") also falls back past a failed self-test."""
    reasons = []
    for name in preference_order(bundle):
        reason = _REGISTRY[name].check_usable(bundle, precision)
        if reason is None:
            return name
        reasons.append(reason)
    raise BackendUnavailable("no backend can run this bundle here:\n  " + "\n  ".join(reasons))


def make_config(name: str, config: Any = None, **overrides) -> BackendConfig:
    """A typed config for backend `name` from None, a dict or a config object, plus keyword overrides."""
    cls = get_backend_class(name).config_class
    if config is None:
        data = {}
    elif isinstance(config, BackendConfig):
        data = config.model_dump(exclude_unset=True)
    elif isinstance(config, dict):
        data = dict(config)
    else:
        raise TypeError(f"backend config must be a dict or {cls.__name__}, got {type(config).__name__}")
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return cls.model_validate(data)
    except ValueError as e:
        raise InfantinoError(f"invalid {name} backend config: {e}") from None


def create_backend(name: str, bundle: "Bundle", config: Any = None, *, self_test: bool = True,
                   **overrides) -> Backend:
    """Build backend `name` ("auto" = best for bundle and host) for `bundle`; overrides e.g. threads=2.

    With `self_test` (the default) the backend must reproduce the bundle's reference embeddings within the
    manifest's tolerance (backends.selftest); `auto` then falls back to the next usable backend, a named
    backend raises SelfTestFailed.
    """
    precision = overrides.get("precision") or _precision_of(config)
    if name != "auto":
        cls = get_backend_class(name)
        reason = cls.check_usable(bundle, precision)
        if reason:
            raise BackendUnavailable(reason)
        return _built(cls(bundle, make_config(name, config, **overrides)), bundle, self_test)
    if config is not None and not isinstance(config, dict):
        config = config.model_dump(exclude_unset=True)  # a config typed for another backend: keep shared fields
        config = {k: v for k, v in config.items() if k in BackendConfig.model_fields}
    reasons = []
    for candidate in preference_order(bundle):
        cls = _REGISTRY[candidate]
        reason = cls.check_usable(bundle, precision)
        if reason is None:
            try:
                backend = _built(cls(bundle, make_config(candidate, config, **overrides)), bundle, self_test)
                log.info("backend auto -> %s", candidate)
                return backend
            except SelfTestFailed as e:
                log.warning("backend auto: %s; trying the next backend", e)
                reason = str(e)
        reasons.append(reason)
    raise BackendUnavailable("no backend can run this bundle here:\n  " + "\n  ".join(reasons))


def _built(backend: Backend, bundle: "Bundle", self_test: bool) -> Backend:
    """The backend after its self-test (closed and SelfTestFailed if it fails)."""
    if self_test:
        try:
            backend.self_test = run_self_test(backend, bundle)
        except BaseException:
            backend.close()
            raise
    return backend


def _precision_of(config: Any) -> Optional[str]:
    if isinstance(config, dict):
        return config.get("precision")
    return getattr(config, "precision", None)
