"""Several training processes (``torchrun --nproc-per-node N -m mmcore run RECIPE``): the process group, the batch
rule, DistributedDataParallel and the few collectives the engine needs.

Every process runs the whole engine. They share each optimiser step's batch: the recipe's ``batch_size`` is the
global batch, split into per-process micro-batches of ``batch_size / (processes × grad_accum)`` samples. Rank 0
alone writes the run directory and evaluates; the others wait for it and receive its results.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as tdist
from torch import Tensor, nn

from mmcore.api import Batch
from mmcore.errors import MMCoreError
from mmcore.schema.keys import batch_size_rule

T = TypeVar("T")
# Rank 0 evaluates while the others wait in a collective; evaluations can take long, so wait long.
TIMEOUT = timedelta(seconds=float(os.environ.get("MMCORE_DIST_TIMEOUT", "14400")))


def env_world_size() -> int:
    """The number of processes torchrun started (``WORLD_SIZE``; 1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def micro_batch_size(batch_size: int, world_size: int, grad_accum: int, where: str = "") -> int:
    """Per-process micro-batch: ``batch_size / (world_size × grad_accum)``, which must be a whole number ≥ 1."""
    parts = world_size * grad_accum
    if batch_size % parts:
        raise MMCoreError(f"{where + ': ' if where else ''}{batch_size_rule(batch_size, world_size, grad_accum)}")
    return batch_size // parts


@dataclass(frozen=True)
class Dist:
    """This process's place among the training processes (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        """Whether there are several processes."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes the run directory."""
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """The device this process trains on: each process gets its own GPU (``cuda:LOCAL_RANK``)."""
        if self.enabled and device.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return device

    def seed(self, seed: int) -> int:
        """A seed for this process's own randomness (masking, negatives, dropout); rank 0 keeps ``seed``."""
        return seed if self.rank == 0 else (seed * 1_000_003 + 7_919 * self.rank) % (2**63)

    def barrier(self) -> None:
        """Wait until every process is here."""
        if self.enabled:
            tdist.barrier()

    def broadcast(self, obj: T) -> T:
        """Rank 0's ``obj`` on every process."""
        if not self.enabled:
            return obj
        box = [obj]
        tdist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: T) -> list[T]:
        """Every process's ``obj``, in rank order, on every process."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        tdist.all_gather_object(out, obj)
        return out

    def sum_(self, tensor: Tensor) -> Tensor:
        """Sum ``tensor`` over processes, in place."""
        if self.enabled:
            tdist.all_reduce(tensor, op=tdist.ReduceOp.SUM)
        return tensor

    def max_(self, tensor: Tensor) -> Tensor:
        """Maximum of ``tensor`` over processes, in place."""
        if self.enabled:
            tdist.all_reduce(tensor, op=tdist.ReduceOp.MAX)
        return tensor

    def on_main(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on rank 0 only and return its result everywhere; its MMCoreError is raised everywhere."""
        if not self.enabled:
            return fn()
        outcome: tuple[str, Any] = ("ok", None)
        if self.is_main:
            try:
                outcome = ("ok", fn())
            except MMCoreError as exc:
                outcome = ("error", str(exc))
        kind, value = self.broadcast(outcome)
        if kind == "error":
            raise MMCoreError(value)
        return value

    @contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (e.g. generates a data cache), then the others (which find it ready)."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()


def current() -> Dist:
    """This process's rank and world size from torchrun's environment (no process group needed)."""
    return Dist(int(os.environ.get("RANK", "0")), env_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def setup() -> Dist:
    """Join the process group when torchrun started several processes (idempotent): gloo for CPU tensors, NCCL
    for CUDA tensors."""
    dist = current()
    if not dist.enabled or tdist.is_initialized():
        return dist
    if not tdist.is_available():
        raise MMCoreError(f"WORLD_SIZE={dist.world_size} but this PyTorch build has no torch.distributed")
    backend = "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(dist.local_rank)
        backend = "cpu:gloo,cuda:nccl"
    tdist.init_process_group(backend, timeout=TIMEOUT)
    atexit.register(_teardown)
    return Dist(tdist.get_rank(), tdist.get_world_size(), dist.local_rank)


def _teardown() -> None:
    if tdist.is_initialized():
        tdist.destroy_process_group()


class _Step(nn.Module):
    """The step function as a module, so that DistributedDataParallel sees every trained module's parameters."""

    def __init__(self, modules: list[nn.Module], step_fn: Callable[[Batch], tuple[Tensor, dict[str, Tensor]]]):
        super().__init__()
        self.parts = nn.ModuleList(modules)
        self.step_fn = step_fn

    def forward(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        return self.step_fn(batch)


class Forward:
    """Runs the step function; with several processes through DistributedDataParallel, so that ``backward()``
    averages the gradients over processes."""

    def __init__(self, dist: Dist, modules: list[nn.Module],
                 step_fn: Callable[[Batch], tuple[Tensor, dict[str, Tensor]]], device: torch.device) -> None:
        self.step_fn: Callable[[Batch], tuple[Tensor, dict[str, Tensor]]] = step_fn
        self.ddp: nn.parallel.DistributedDataParallel | None = None
        if dist.enabled:
            # find_unused_parameters: a task may leave some parameters out of a step's graph; DDP then marks
            # them ready instead of waiting for them, and leaves their gradient unset everywhere, as one process would.
            self.ddp = nn.parallel.DistributedDataParallel(
                _Step(modules, step_fn), device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=True)
            self.step_fn = self.ddp

    def __call__(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        return self.step_fn(batch)

    def no_sync(self) -> AbstractContextManager[Any]:
        """Accumulate this micro-batch's gradients locally (no all-reduce until the step's last micro-batch)."""
        return self.ddp.no_sync() if self.ddp is not None else nullcontext()
