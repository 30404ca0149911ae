"""The engine's :class:`mmcore.api.EvalContext`: what a head's ``evaluate`` gets (device batches, progress bars,
a scratch folder)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Self

import torch

from mmcore.api import Batch, Example
from mmcore.data.collate import Collator, to_device
from mmcore.progress import Reporter


class EvalContext:
    """The engine's :class:`mmcore.api.EvalContext`: device batches with a progress bar.

    Use it as a context manager: bars opened with :meth:`progress` are closed on exit even if a head stops
    before reaching the total.
    """

    def __init__(self, collator: Collator, device: torch.device, batch_size: int, reporter: Reporter,
                 scratch: Path | None = None) -> None:
        self.collator, self.device, self.batch_size, self.reporter = collator, device, batch_size, reporter
        self.scratch = scratch
        if scratch is not None:
            scratch.mkdir(parents=True, exist_ok=True)
        self._open_bars = ExitStack()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self._open_bars.close()

    def collate(self, examples: list[Example]) -> Batch:
        """Tokenise and stack ``examples`` into a device batch."""
        return to_device(self.collator(examples), self.device)

    def progress(self, total: int, description: str) -> Callable[..., None]:
        """Start a progress bar of ``total`` units; returns ``advance(n, info=None)``."""
        return self._open_bars.enter_context(self.reporter.bar(description, total)).advance

    def batches(self, examples: Sequence[Example], description: str) -> Iterator[Batch]:
        """Device batches over ``examples`` in order, with a progress bar."""
        with self.reporter.bar(description, len(examples)) as bar:
            for start in range(0, len(examples), self.batch_size):
                chunk = [examples[i] for i in range(start, min(start + self.batch_size, len(examples)))]
                yield self.collate(chunk)
                bar.advance(len(chunk))
