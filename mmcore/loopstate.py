"""What the training loop carries from step to step, and so what a checkpoint inside a stage must hold to
continue it exactly: where it is (step, epoch, position in the epoch) and the loss sums of the current log window.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

from mmcore.distributed import Dist
from mmcore.errors import MMCoreError


@dataclass
class Progress:
    """Where the loop is."""

    step: int = 0  # optimiser steps done
    epoch: int = 0
    in_epoch: int = 0  # optimiser steps done in ``epoch``
    samples: int = 0  # samples of finished log windows, all processes together
    seconds: float = 0.0  # training time of earlier sessions
    since: int = 0  # steps since the last log point
    last: dict[str, float] = field(default_factory=dict)  # the losses of the last log point

    def state(self) -> dict[str, Any]:
        """Plain values for a checkpoint."""
        return asdict(self)


class Window:
    """Loss sums of the steps since the last log point, kept on the device (read only at log points).

    With several processes each holds its own sums; :meth:`averages` adds them up across processes.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.reset()

    def reset(self) -> None:
        """Start a new window."""
        self.sums: dict[str, Tensor] = {}
        self.finite = torch.zeros((), dtype=torch.long, device=self.device)
        self.samples = 0

    def add(self, losses: Mapping[str, Tensor], bad: Tensor, samples: int) -> None:
        """Count one step: its losses unless ``bad`` (where() selects, so a NaN never reaches the sum)."""
        for key, value in losses.items():
            self.sums[key] = self.sums.get(key, 0.0) + torch.where(bad, 0.0, value.detach())
        self.finite += ~bad
        self.samples += samples

    def _reduce(self, dist: Dist) -> None:
        if not dist.enabled:
            return
        names = list(self.sums)
        flat = torch.stack([*(self.sums[n].double() for n in names), self.finite.double(),
                            torch.tensor(float(self.samples), dtype=torch.double, device=self.device)])
        dist.sum_(flat)
        self.sums = dict(zip(names, flat[: len(names)].unbind(0)))
        self.finite = flat[len(names)].round().long()
        self.samples = int(flat[-1].round())

    def averages(self, dist: Dist) -> tuple[int, dict[str, float], int]:
        """(finite steps, mean losses over them, samples) of the window over all processes; then a new window."""
        self._reduce(dist)
        good = int(self.finite)
        means = {k: float(v) / good for k, v in self.sums.items()} if good else {}
        samples = self.samples
        self.reset()
        return good, means, samples

    def gather_on_main(self, dist: Dist) -> None:
        """Move every process's sums to rank 0 (others keep zeros): one copy of the window, which a checkpoint
        written by rank 0 can hold; the next log point adds the rest as usual."""
        if not dist.enabled:
            return
        self._reduce(dist)
        if not dist.is_main:
            self.sums = {k: torch.zeros_like(v) for k, v in self.sums.items()}
            self.finite.zero_()
            self.samples = 0

    def state(self) -> dict[str, Any]:
        """Plain values and CPU tensors for a checkpoint."""
        return {"sums": {k: torch.as_tensor(v).detach().cpu() for k, v in self.sums.items()},
                "finite": int(self.finite), "samples": self.samples}

    def load(self, state: Mapping[str, Any], dist: Dist) -> None:
        """Continue the window of a checkpoint (its sums belong to rank 0)."""
        self.reset()
        if dist.is_main:
            self.sums = {k: v.to(self.device) for k, v in state["sums"].items()}
            self.finite.fill_(int(state["finite"]))
            self.samples = int(state["samples"])


def check_compatible(resume: Mapping[str, Any], total: int, batch_size: int, description: str) -> None:
    """A checkpoint continues only the schedule it was written for (same total steps and global batch)."""
    if resume["total"] == total and resume["batch_size"] == batch_size:
        return
    where = f" ({resume['path']})" if resume.get("path") else ""
    raise MMCoreError(f"{description}: the checkpoint to resume from{where} was written for {resume['total']} steps "
                      f"of batch {resume['batch_size']}, but the recipe now gives {total} steps of batch {batch_size}; "
                      "resume with the recipe it was written for, or delete the checkpoint to restart this part")
