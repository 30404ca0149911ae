"""The ``tensorboard`` logger: every numeric metric of a record as a TensorBoard scalar ``<scope>/<metric>``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import mmcore
from mmcore import MMCoreError

if TYPE_CHECKING:  # annotations only: the api module imports torch
    from collections.abc import Mapping

    from mmcore.api import RunInfo

# A record's coordinates, not metrics: ``step`` is the scalar's x-axis, ``epoch`` says where the step fell.
COORDINATES = frozenset({"step", "epoch"})


class TensorBoardLogger:
    """TensorBoard scalars <scope>/<metric> at each record's step, under the run directory's log_dir."""

    name = "tensorboard"
    defaults: ClassVar[dict[str, Any]] = {"log_dir": "tensorboard"}

    def __init__(self, run_dir: Path, log_dir: str = "tensorboard") -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise MMCoreError('logger tensorboard needs the tensorboard package: pip install "mmcore-vlp[tensorboard]" '
                              "(or pip install tensorboard)") from None
        self.path = Path(run_dir) / log_dir
        self.writer = SummaryWriter(log_dir=str(self.path))

    @mmcore.hookimpl
    def mmcore_log(self, run: RunInfo, step: int, metrics: dict[str, Any]) -> None:
        """Write each numeric value of the record (losses, lr, samples/s, validation metrics) as one scalar."""
        scope = str(metrics.get("scope", "run"))
        for key, value in metrics.items():
            if key in COORDINATES or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            self.writer.add_scalar(f"{scope}/{key}", value, global_step=step)

    @mmcore.hookimpl
    def mmcore_stage_end(self, run: RunInfo, stage: Mapping[str, Any], metrics: dict[str, float]) -> None:
        """Flush at each stage's end, so TensorBoard shows a finished stage at once."""
        self.writer.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        self.writer.close()
