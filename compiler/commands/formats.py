"""List the compile targets and the export formats (precisions, layouts, whether their library is installed)."""

from __future__ import annotations

from ..formats import list_formats
from ..targets import list_targets
from .compile import rich_console

HELP = "list targets and export formats"


def add_arguments(p) -> None:
    pass


def run(args) -> int:
    # optional: rich comes with the train extra only:
    from rich.markup import escape
    from rich.table import Table

    console = rich_console()
    t = Table(title="targets")
    for col in ("target", "formats", "precisions", "layout", "default precision", "default backend", "description"):
        t.add_column(col)
    for tg in list_targets():
        t.add_row(tg.name, ", ".join(tg.formats),
                  "; ".join(f"{f}: {'/'.join(p)}" for f, p in tg.precisions.items()),
                  ", ".join(f"{f}: {tg.layout(f)}" for f in tg.formats), tg.default_precision,
                  tg.default_backend, tg.description)
    console.print(t)
    t = Table(title="formats")
    for col in ("format", "suffix", "precisions", "layouts", "GPU", "extra", "installed", "arguments"):
        t.add_column(col)
    for s in list_formats():
        reason = s.exporter(s.options()).unavailable_reason()
        t.add_row(s.name, s.suffix, "/".join(s.precisions), "/".join(s.layouts), "plan only" if s.needs_gpu else "no",
                  escape(f"[{s.extra}]"), "yes" if reason is None else escape(f"no: {reason}"), " ".join(s.arguments))
    console.print(t)
    return 0


