"""What a :class:`~mmcore.trainer.Trainer` tells the outside while it trains: a log point's metrics, a checkpoint's
training state, an epoch's end. Subclass :class:`TrainerCallback` and override the hooks you need.

The run's own uses are callbacks too: :class:`RunLog` (``metrics.jsonl`` and the loggers),
:class:`mmcore.checkpointing.PartialCheckpoints` (``partial.pt``) and fine-tuning's epoch selection.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mmcore.context import RunContext


class TrainerCallback:
    """Hooks into a Trainer's run; each is a no-op here, so a subclass overrides only the ones it needs."""

    def on_log(self, step: int, epoch: int, metrics: dict[str, float]) -> None:
        """At every log point (every ``log_every`` steps and the final step): the log window's mean losses (absent
        when every step of it was non-finite), ``lr``, ``samples_per_s`` and, with ``nonfinite: skip``,
        ``skipped_steps``."""

    def on_checkpoint(self, state: dict[str, Any]) -> None:
        """Every ``checkpoint_every`` steps, but not at the final step (the caller saves that one): the training
        state that, passed to :meth:`~mmcore.trainer.Trainer.fit` as ``resume``, continues exactly from here."""

    def on_epoch_end(self, epoch: int, state: dict[str, Any]) -> None:
        """After epoch ``epoch``'s last step, and after the final step when ``max_steps`` ends training inside an
        epoch; ``state`` as for :meth:`on_checkpoint`."""


def listens(callback: TrainerCallback, hook: str) -> bool:
    """Whether ``callback`` overrides ``hook`` (one of TrainerCallback's methods)."""
    return getattr(type(callback), hook) is not getattr(TrainerCallback, hook)


class RunLog(TrainerCallback):
    """Logs every log point of the training of ``scope`` (a stage or fine-tuning) to the run."""

    def __init__(self, ctx: RunContext, scope: str) -> None:
        self.ctx, self.scope = ctx, scope

    def on_log(self, step: int, epoch: int, metrics: dict[str, float]) -> None:
        self.ctx.log(self.scope, step, epoch, metrics)
