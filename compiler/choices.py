"""The compiler's name lookups: the runtime's one registry helper (unknown names list the valid ones and the closest),
and comma-list parsing for CLI arguments."""

from __future__ import annotations

from typing import Iterable

from infantino.runtime.choices import UnknownChoice, check_choice, closest  # noqa: F401  (the compiler's API)


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
