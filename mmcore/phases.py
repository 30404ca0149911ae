"""Where a training loop's time goes: optional wall-clock accounting of its phases, for benchmarks.

The loop marks its phases (``read``, ``prepare``, ``collate``, ``fetch``, ``host_to_device``, ``masking``,
``forward``, ``backward``, ``optimizer``, ``logging``, ``checkpoint``) with :func:`phase`. Nothing is measured
unless a :class:`PhaseClock` is :func:`recording`; then each phase's *exclusive* time is summed (a phase nested in
another, like ``collate`` inside ``fetch``, is not counted twice). On a GPU the clock can synchronise the device at
every boundary, so that the device's work is charged to the phase that queued it (which also slows the loop).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

_NOTHING = nullcontext()


class PhaseClock:
    """Sums the exclusive wall-clock seconds of each phase, and the span from the first phase to the last."""

    def __init__(self, sync: Callable[[], None] | None = None) -> None:
        self.sync = sync
        self.seconds: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)
        self.first: float | None = None
        self.last: float | None = None
        self.cpu_first: float | None = None  # process CPU time (all threads) at the first phase's start
        self.cpu_last: float | None = None
        self._stack: list[list[Any]] = []  # [name, start, seconds spent in nested phases]

    @contextmanager
    def span(self, name: str) -> Iterator[None]:
        """Charge the time inside to ``name`` (minus that of phases nested in it)."""
        self.open(name)
        try:
            yield
        finally:
            self.close()

    def open(self, name: str) -> None:
        """Start phase ``name`` (inside the innermost open one)."""
        if self.sync is not None:
            self.sync()
        start = time.perf_counter()
        if self.first is None:
            self.first, self.cpu_first = start, time.process_time()
        self._stack.append([name, start, 0.0])

    def close(self) -> None:
        """End the innermost open phase."""
        if self.sync is not None:
            self.sync()
        stop = time.perf_counter()
        name, start, nested = self._stack.pop()
        self.seconds[name] += stop - start - nested
        self.counts[name] += 1
        if self._stack:
            self._stack[-1][2] += stop - start
        self.last, self.cpu_last = stop, time.process_time()

    @property
    def wall(self) -> float:
        """Seconds from the start of the first phase to the end of the last."""
        return 0.0 if self.first is None or self.last is None else self.last - self.first

    @property
    def cpu(self) -> float:
        """This process's CPU seconds (all its threads) over the same span: unlike :attr:`wall`, other work on the
        machine barely changes it."""
        return 0.0 if self.cpu_first is None or self.cpu_last is None else self.cpu_last - self.cpu_first


_active: PhaseClock | None = None


def phase(name: str) -> AbstractContextManager[None]:
    """A context that charges its time to phase ``name`` while a clock is recording (otherwise it does nothing)."""
    return _NOTHING if _active is None else _active.span(name)


def begin(name: str) -> PhaseClock | None:
    """Start phase ``name`` where a ``with`` block would not fit; pass the result to :func:`end`."""
    if _active is not None:
        _active.open(name)
    return _active


def end(clock: PhaseClock | None) -> None:
    """End the phase :func:`begin` started (nothing when no clock was recording then)."""
    if clock is not None:
        clock.close()


@contextmanager
def recording(clock: PhaseClock) -> Iterator[PhaseClock]:
    """Record phases into ``clock`` inside the block (in this process: a loader's workers are not seen)."""
    global _active
    previous, _active = _active, clock
    try:
        yield clock
    finally:
        _active = previous
