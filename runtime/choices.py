"""One helper for every registry lookup (backends, face detectors, compile targets, export formats): an unknown
name fails with the valid names and the closest one, the same way everywhere."""

from __future__ import annotations

import difflib
from typing import Iterable

from .contract.errors import InfantinoError


class UnknownChoice(InfantinoError, ValueError):
    """A name (backend, detector, target, format, precision, option value) that is not one of the valid choices."""


def closest(name: str, valid: Iterable[str]) -> str | None:
    """The valid name closest to `name` (case-insensitive), if any is reasonably close."""
    valid = list(valid)
    match = difflib.get_close_matches(str(name).lower(), [v.lower() for v in valid], n=1, cutoff=0.5)
    if not match:
        return None
    return next(v for v in valid if v.lower() == match[0])


def unknown_message(kind: str, name: str, valid: Iterable[str]) -> str:
    """"unknown <kind> 'x'; valid: a, b. Did you mean 'a'?" """
    valid = list(valid)
    near = closest(name, valid)
    hint = f" Did you mean {near!r}?" if near else ""
    return f"unknown {kind} {name!r}; valid: {', '.join(valid)}.{hint}"


def check_choice(kind: str, name: str, valid: Iterable[str], error: type[Exception] = UnknownChoice) -> str:
    """Return `name` if valid, else raise `error` (UnknownChoice) with unknown_message."""
    valid = list(valid)
    if name in valid:
        return name
    raise error(unknown_message(kind, name, valid))
