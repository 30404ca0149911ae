"""The ``pretrain`` plugin: registers the eight pre-training tasks (LXMERT's and the paper's)."""

from __future__ import annotations

from mmcore import Registry, Task, hookimpl

from .tasks_masked import MLMTask, MOCTask, MRFRTask
from .tasks_matching import ITMHardSampleTask, ITMTask
from .tasks_shuffle import IFRSTask
from .tasks_topic import TITPTask, TITSTask

TASKS: tuple[type[Task], ...] = (
    MLMTask, MRFRTask, MOCTask, ITMTask, ITMHardSampleTask, IFRSTask, TITPTask, TITSTask,
)


@hookimpl
def mmcore_register_tasks(registry: Registry) -> None:
    """Register mlm, mrfr, moc, itm, itm_hs, ifrs, titp and tits."""
    for cls in TASKS:
        registry.add_task(cls)
