"""Stage-by-stage progress of a compile: a rich progress bar in a terminal, log lines otherwise."""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Iterator, Optional

log = logging.getLogger("infantino.compiler")


class Stages:
    """`with stages.stage("onnx fp32"): ...` — shows the running stage, ticks it off with its duration."""

    def __init__(self, total: int, display: bool = False):
        self.total = total
        self.display = display
        self.done: list[tuple[str, float, bool]] = []
        self._progress = None
        self._task = None

    def __enter__(self) -> "Stages":
        if self.display:
            # optional: rich comes with the train extra only
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                                       TimeElapsedColumn)

            self._progress = Progress(SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(),
                                      MofNCompleteColumn(), TimeElapsedColumn(), transient=False)
            self._progress.__enter__()
            self._task = self._progress.add_task("compile", total=self.total)
        return self

    def __exit__(self, *exc):
        if self._progress is not None:
            self._progress.update(self._task, description="done" if exc[0] is None else "failed")
            self._progress.__exit__(*exc)
        return False

    def grow(self, n: int) -> None:
        """Add stages discovered on the way (e.g. one parity check per artifact)."""
        self.total += n
        if self._progress is not None:
            self._progress.update(self._task, total=self.total)

    def note(self, message: str) -> None:
        if self._progress is not None:
            self._progress.console.print(f"  [dim]{message}[/dim]")
        else:
            log.info("%s", message)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        if self._progress is not None:
            self._progress.update(self._task, description=name)
        else:
            log.info("%s ...", name)
        ok = False
        try:
            yield
            ok = True
        finally:
            dt = time.perf_counter() - t0
            self.done.append((name, dt, ok))
            mark = "[green]✓[/green]" if ok else "[red]✗[/red]"
            if self._progress is not None:
                self._progress.console.print(f"{mark} {name} [dim]({dt:.1f} s)[/dim]")
                self._progress.advance(self._task)
            else:
                log.info("%s %s (%.1f s)", "done" if ok else "FAILED", name, dt)

    def seconds(self, name: str) -> Optional[float]:
        return next((dt for n, dt, _ in self.done if n == name), None)
