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
    """One progress bar: ``advance(n, **fields)`` moves it and updates the info text (loss, samples/s).

    Without a terminal (a cluster job's log file) there is no bar: each advance that brings ``info`` (training
    brings it every ``log_every`` steps) prints one line instead, with the step, the info and the time left.
    """

    def __init__(self, progress: Progress | None, task_id: int | None, total: int,
                 lines: Console | None = None, description: str = "") -> None:
        self._progress, self._task, self.total = progress, task_id, total
        self._lines, self._description = lines, description
        self.done = 0
        self.info = ""
        self._start, self._first = time.perf_counter(), None  # ETA from the units done here (not a resume's)

    def advance(self, n: int = 1, info: str | None = None, detail: str | None = None) -> None:
        """Advance by ``n`` units; ``info`` replaces the text shown after the bar; ``detail`` (per-task losses)
        is added to the line printed without a terminal."""
        if self._first is None:
            self._first, self._start = self.done + n, time.perf_counter()
        self.done += n
        if info is not None:
            self.info = info
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, advance=n, info=self.info)
        elif self._lines is not None and info is not None:
            parts = [f"{self._description}: step {self.done}/{self.total}", info, detail, f"ETA {self._eta()}"]
            self._lines.print(" · ".join(p for p in parts if p), highlight=False, markup=False)

    def _eta(self) -> str:
        """Time left at the rate since the first advance, as H:MM:SS ("?" before any rate is known)."""
        done = self.done - (self._first or 0)
        if done <= 0:
            return "?" if self.done < self.total else "0:00:00"
        left = int((time.perf_counter() - self._start) / done * max(0, self.total - self.done))
        return f"{left // 3600}:{left // 60 % 60:02d}:{left % 60:02d}"


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
            bar = Bar(None, None, total, None if self.quiet else self.console, description)
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
