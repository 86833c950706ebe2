"""Inference backends behind one interface (embed a preprocessed batch -> embeddings), registered by name.

Each backend lives in its own module with its own typed config; importing this package loads no
inference library (each backend imports its library when first used).
"""

from .base import Backend, BackendConfig
from .registry import (UnknownBackend, available_backends, choose_backend, create_backend, get_backend_class,
                       list_backends, register_backend, unavailable_reason)
from .selftest import SelfTestFailed

__all__ = ["Backend", "BackendConfig", "SelfTestFailed", "UnknownBackend", "available_backends", "choose_backend",
           "create_backend", "get_backend_class", "list_backends", "register_backend", "unavailable_reason"]
