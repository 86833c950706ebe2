"""One helper for every name lookup of the compiler: unknown names fail with the valid choices and the closest."""

from __future__ import annotations

import difflib
from typing import Iterable

from infantino.runtime.contract.errors import InfantinoError


class UnknownChoice(InfantinoError, ValueError):
    """A name (target, format, precision, option value) that is not one of the valid choices."""


def closest(name: str, valid: Iterable[str]) -> str | None:
    """The valid name closest to `name`, if any is reasonably close."""
    match = difflib.get_close_matches(str(name).lower(), [v.lower() for v in valid], n=1, cutoff=0.5)
    if not match:
        return None
    return next(v for v in valid if v.lower() == match[0])


def check_choice(kind: str, name: str, valid: Iterable[str]) -> str:
    """Return `name` if valid, else raise UnknownChoice listing the valid names and the closest match."""
    valid = list(valid)
    if name in valid:
        return name
    near = closest(name, valid)
    hint = f" Did you mean {near!r}?" if near else ""
    raise UnknownChoice(f"unknown {kind} {name!r}; valid: {', '.join(valid)}.{hint}")


def split_list(value: str | Iterable[str] | None) -> list[str]:
    """'a,b, c' or ['a', 'b,c'] -> ['a', 'b', 'c'] (order kept, duplicates dropped)."""
    if value is None:
        return []
    items = [value] if isinstance(value, str) else list(value)
    out: list[str] = []
    for item in items:
        for part in str(item).split(","):
            part = part.strip()
            if part and part not in out:
                out.append(part)
    return out
