"""Training batches, with examples optionally read by worker processes.

Workers only *fetch*: each runs views' ``__getitem__`` (the feature store's reads) for its share of a batch
and sends the examples back. The main process then applies the collate function (plugins' per-example
``prepare``, tokenising, stacking) with its one random stream, so every batch, and every result, is the same
for any number of workers and a resumed run continues exactly as with none.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from mmcore.api import Batch, Example, ExampleSource
from mmcore.data.store import FeatureStore, close_open_stores
from mmcore.errors import MMCoreError
from mmcore.threads import worker_threads

if TYPE_CHECKING:
    from typing_extensions import Self


class Located(Protocol):
    """A dataset of examples from several views (:class:`mmcore.training.MixedExamples`)."""

    views: list[ExampleSource]

    def __len__(self) -> int: ...

    def locate(self, index: int) -> tuple[int, int]:
        """(view number, index within that view) of item ``index``."""
        ...


@dataclass(frozen=True)
class _Failed:
    """A user error (a damaged store, say) met in a worker process."""

    message: str


class _Fetched(Dataset):
    """Items as (example, view number): a view itself is not sent between processes, only its number."""

    def __init__(self, data: Located) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[Example, int] | _Failed:
        number, inner = self.data.locate(index)
        try:
            return self.data.views[number][inner], number
        except MMCoreError as exc:  # raised again in the training process, so the user sees no worker traceback
            return _Failed(str(exc))


def _as_list(items: list[Any]) -> list[Any]:
    return items


def _worker_init(worker_id: int) -> None:
    close_open_stores(inherited_only=True)  # a worker reads through handles of its own, opened lazily
    worker_threads()


def stores_of(views: Sequence[Any]) -> list[FeatureStore]:
    """The feature stores the views read (a view's ``store``: a :class:`FeatureStore`, or an object listing
    them in ``stores``); empty when the views keep their stores elsewhere."""
    found: list[FeatureStore] = []
    for view in views:
        store = getattr(view, "store", None)
        for candidate in [store, *(getattr(store, "stores", None) or [])]:
            if isinstance(candidate, FeatureStore) and all(candidate is not s for s in found):
                found.append(candidate)
    return found


def useful_workers(views: Sequence[Any], num_workers: int) -> int:
    """``num_workers``, or 0 where every store the views read is held in memory (``ram``/``gpu`` cache), as
    there is nothing left for a worker to read."""
    stores = stores_of(views)
    return 0 if stores and all(s.cache != "disk" for s in stores) else num_workers


class Batches:
    """An epoch's micro-batches of ``data`` in ``sampler``'s order, collated by ``collate`` in this process.

    With ``num_workers`` > 0, that many persistent worker processes (forked where the platform can) read the
    examples ahead; with 0 this is a plain ``DataLoader`` with ``collate`` as its collate function.
    """

    def __init__(self, data: Located, micro: int, sampler: Sampler[int], collate: Callable[[list[Any]], Batch],
                 num_workers: int = 0, pin_memory: bool = False) -> None:
        self.data, self.collate, self.num_workers, self.pin = data, collate, num_workers, pin_memory
        self.started = False
        if num_workers == 0:
            self.loader = DataLoader(data, batch_size=micro, sampler=sampler, collate_fn=collate, drop_last=False,
                                     pin_memory=pin_memory)
            return
        fork = "fork" in multiprocessing.get_all_start_methods()
        # The loader's own generator: its worker seeds must not draw from torch's global one (see epoch()).
        self.loader = DataLoader(_Fetched(data), batch_size=micro, sampler=sampler, collate_fn=_as_list,
                                 drop_last=False, num_workers=num_workers, persistent_workers=True,
                                 worker_init_fn=_worker_init, generator=torch.Generator(),
                                 multiprocessing_context="fork" if fork else None)

    def epoch(self) -> Iterator[Batch]:
        """The batches of the sampler's current epoch (set it first). Not lazy: the random draw an iterator
        makes happens here, at the call, as a plain ``DataLoader``'s does."""
        if self.num_workers == 0:
            return iter(self.loader)
        # A plain DataLoader's iterator draws its worker seed from torch's global generator, and dropout draws
        # after it: draw the same once per epoch, so that the global stream is the one without workers.
        torch.empty((), dtype=torch.int64).random_()
        if not self.started:  # the workers fork now, once: no handle may cross that fork
            close_open_stores()
            self.started = True
        return self._collated(iter(self.loader))

    def close(self) -> None:
        """Stop the worker processes now (a later epoch() starts new ones)."""
        iterator = getattr(self.loader, "_iterator", None)
        if iterator is not None:
            # torch has no public call for this; left to the garbage collector, a loader caught in a reference
            # cycle (an exception's traceback) waits 5 s for each worker before terminating it.
            iterator._shutdown_workers()
            self.loader._iterator = None
            self.started = False

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _collated(self, fetched: Iterator[list[Any]]) -> Iterator[Batch]:
        views = self.data.views
        for items in fetched:
            for item in items:
                if isinstance(item, _Failed):
                    raise MMCoreError(item.message)
            batch = self.collate([(example, views[number]) for example, number in items])
            if self.pin:  # here rather than in the loader: its batches are lists of examples
                batch = {k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            yield batch
