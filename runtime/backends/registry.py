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


def choose_backend(bundle: "Bundle", precision: Optional[str] = None) -> str:
    """The name `auto` resolves to for this bundle and host; BackendUnavailable lists every reason otherwise."""
    _load_builtins()
    order = host_preference()
    default = bundle.manifest.default_backend
    if default in _REGISTRY:  # the bundle's intent comes first, except that a GPU host tries TensorRT first
        order = [n for n in order if n != default]
        order.insert(1 if has_nvidia_gpu() and order[0] == "tensorrt" else 0, default)
    order += [n for n in sorted(_REGISTRY) if n not in order]
    reasons = []
    for name in order:
        if name not in _REGISTRY:
            continue
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


def create_backend(name: str, bundle: "Bundle", config: Any = None, **overrides) -> Backend:
    """Build backend `name` ("auto" = best for bundle and host) for `bundle`; overrides e.g. threads=2."""
    if name == "auto":
        precision = overrides.get("precision") or (config.get("precision") if isinstance(config, dict) else
                                                    getattr(config, "precision", None))
        name = choose_backend(bundle, precision)
        log.info("backend auto -> %s", name)
        if config is not None and not isinstance(config, dict):
            config = config.model_dump(exclude_unset=True)  # a config typed for another backend: keep shared fields
            config = {k: v for k, v in config.items() if k in BackendConfig.model_fields}
    cls = get_backend_class(name)
    reason = cls.check_usable(bundle, overrides.get("precision") or _precision_of(config))
    if reason:
        raise BackendUnavailable(reason)
    return cls(bundle, make_config(name, config, **overrides))


def _precision_of(config: Any) -> Optional[str]:
    if isinstance(config, dict):
        return config.get("precision")
    return getattr(config, "precision", None)
