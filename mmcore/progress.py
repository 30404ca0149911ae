"""Rich progress bars and messages for long work; quiet and line-based when output is not a terminal."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class Bar:
    """One progress bar: ``advance(n, **fields)`` moves it and updates the info text (loss, samples/s)."""

    def __init__(self, progress: Progress | None, task_id: int | None, total: int) -> None:
        self._progress, self._task, self.total = progress, task_id, total
        self.done = 0
        self.info = ""

    def advance(self, n: int = 1, info: str | None = None) -> None:
        """Advance by ``n`` units; ``info`` replaces the text shown after the bar."""
        self.done += n
        if info is not None:
            self.info = info
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, advance=n, info=self.info)


class Reporter:
    """Owns the console: progress bars per stage/evaluation and plain status lines."""

    def __init__(self, console: Console | None = None, quiet: bool = False) -> None:
        self.console = console or Console(stderr=True)
        self.quiet = quiet

    def message(self, text: str) -> None:
        """A status line (rich markup allowed)."""
        if not self.quiet:
            self.console.print(text)

    @contextmanager
    def bar(self, description: str, total: int) -> Iterator[Bar]:
        """A progress bar for ``total`` units; on a non-terminal only a closing line is printed."""
        start = time.perf_counter()
        live = not self.quiet and self.console.is_terminal
        if not live:
            bar = Bar(None, None, total)
            yield bar
            if not self.quiet:
                took = time.perf_counter() - start
                self.console.print(f"{description}: {bar.done}/{total} in {took:.1f}s {bar.info}".rstrip())
            return
        progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
            console=self.console, transient=False,
        )
        with progress:
            task_id = progress.add_task(description, total=total, info="")
            yield Bar(progress, task_id, total)
