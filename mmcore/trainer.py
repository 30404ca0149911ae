"""The Trainer: the one training loop of pre-training stages and fine-tunings.

``Trainer(description, model, data, schedule, runtime, callbacks).fit(resume)`` trains ``model`` on ``data``:
:meth:`Trainer.setup` builds the loader, optimiser and schedule, :meth:`Trainer.restore` continues a checkpoint's
state, :meth:`Trainer.step` is one optimiser step (gradient accumulation, clipping, the non-finite guard),
:meth:`Trainer.flush_log` closes a log window, and :meth:`Trainer.state` is what a checkpoint holds. What the loop
tells the outside goes through :class:`~mmcore.callbacks.TrainerCallback` hooks (log points, checkpoints, epoch ends).

The pieces it is made of (the sampler, collate function, AdamW, the schedule, the non-finite watch) live in
:mod:`mmcore.training`; what it carries from step to step in :mod:`mmcore.loopstate`.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from mmcore.api import Batch
from mmcore.blame import position
from mmcore.callbacks import TrainerCallback, listens
from mmcore.checkpointing import capture_rng, restore_rng
from mmcore.data.collate import to_device
from mmcore.data.loader import Batches, useful_workers
from mmcore.distributed import Dist, Forward, micro_batch_size
from mmcore.errors import RunFailed
from mmcore.loopstate import Progress, Window, check_compatible
from mmcore.phases import begin, end, phase
from mmcore.progress import Reporter
from mmcore.schema.keys import OPTIM
from mmcore.training import EpochSampler, MixedExamples, NonFiniteWatch, PrepareCollate, autocast, make_optimizer, \
    make_schedule, skip_if

StepFn = Callable[[Batch], tuple[Tensor, dict[str, Tensor]]]


# ----- what the Trainer is given ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Model:
    """What to train: ``step_fn`` maps a batch to (total loss, named loss parts); ``modules`` hold the parameters."""

    step_fn: StepFn
    modules: Sequence[nn.Module]


@dataclass(frozen=True)
class Data:
    """What to train on: the examples, their order, the collate function, the global batch, and reader processes.

    ``num_workers`` processes read the examples ahead (:class:`mmcore.data.loader.Batches`); ``collate`` runs in
    the training process either way, so the results do not depend on it."""

    examples: MixedExamples
    sampler: EpochSampler
    collate: PrepareCollate
    batch_size: int
    num_workers: int = 0


@dataclass(frozen=True)
class Schedule:
    """How long and how: ``epochs`` (or ``max_steps``), the ``optim`` settings, ``grad_accum`` micro-batches a
    step, ``precision`` (``fp32`` or ``bf16``: forward and losses under autocast, parameters and optimiser in fp32;
    a recipe's ``auto`` is resolved by :func:`mmcore.precision.choose_precision` first), and how often
    to log and checkpoint (``checkpoint_every`` 0: never)."""

    epochs: int
    max_steps: int | None
    optim: Mapping[str, Any]
    log_every: int
    grad_accum: int = 1
    precision: str = "fp32"
    checkpoint_every: int = 0

    @classmethod
    def of(cls, item: Mapping[str, Any], *, log_every: int, precision: str) -> Schedule:
        """The schedule a recipe's stage or fine-tuning ``item`` asks for."""
        return cls(item["epochs"], item["max_steps"], item["optim"], log_every, item["grad_accum"], precision,
                   item["checkpoint_every"])


@dataclass(frozen=True)
class Runtime:
    """Where it runs: the device, the progress reporter, the processes (``dist``), and the named generators
    ``step_fn`` draws from (their state travels in checkpoints, as the global random state does)."""

    device: torch.device
    reporter: Reporter
    dist: Dist = field(default_factory=Dist)
    generators: Mapping[str, torch.Generator] = field(default_factory=dict)


@dataclass
class LoopResult:
    """What a finished training reports."""

    steps: int
    samples: int
    seconds: float
    last_losses: dict[str, float]
    skipped: int = 0  # steps whose update was skipped for a non-finite loss (``nonfinite: skip``)
    state: dict[str, Any] | None = None  # the final training state (:meth:`Trainer.state`)


# ----- the loop ---------------------------------------------------------------------------------------------------
class Trainer:
    """Trains a :class:`Model` on :class:`Data` by a :class:`Schedule`, telling ``callbacks`` as it goes.

    Each step takes ``batch_size`` samples: ``grad_accum`` micro-batches on each of the runtime's processes, whose
    gradients DistributedDataParallel averages. Loss values stay on the device between log points so a step never
    waits for the host. A non-finite loss stops training at the next log point (or checkpoint, or epoch end that a
    callback listens to), naming the first bad step and its parts; with ``optim.nonfinite: skip`` that step's
    update is skipped and counted instead. A Trainer trains once: :meth:`fit` a new one to train again.
    """

    def __init__(self, description: str, model: Model, data: Data, schedule: Schedule, runtime: Runtime,
                 callbacks: Sequence[TrainerCallback] = ()) -> None:
        self.description, self.model, self.data, self.schedule = description, model, data, schedule
        self.runtime = runtime
        self.callbacks = list(callbacks)
        self.dist, self.device = runtime.dist, runtime.device
        self.progress = Progress()
        self.pending_rng: dict[str, Any] | None = None  # random state to put back once the epoch's iterator exists

    def fit(self, resume: dict[str, Any] | None = None) -> LoopResult:
        """Train to the end of the schedule (continuing ``resume``, a state from :meth:`state`, when given)."""
        if not self.setup():
            return LoopResult(0, 0, 0.0, {})
        if resume is not None:
            self.restore(resume)
        elif self.dist.rank > 0:
            torch.manual_seed(self.dist.seed(self.data.sampler.seed))  # each process its own dropout
        for module in self.model.modules:
            module.train()
        self.started = self.window_started = time.perf_counter()
        # The loader's workers end with the loop, even on errors.
        with self.loader, self.runtime.reporter.bar(self.description, self.total) as self.bar:
            self.bar.advance(self.progress.step)
            for epoch in range(self.progress.epoch, max(self.schedule.epochs, 1)):
                if self.progress.step >= self.total:
                    break
                self._train_epoch(epoch)
        return self._finish()

    # ----- before the first step ----------------------------------------------------------------------------
    def setup(self) -> bool:
        """Build the loader, optimiser and learning-rate schedule; False when there is nothing to train."""
        data, schedule, dist = self.data, self.schedule, self.dist
        self.micro = micro_batch_size(data.batch_size, dist.world_size, schedule.grad_accum, self.description)
        data.sampler.shard(dist.rank, dist.world_size)
        workers = useful_workers(data.examples.views, data.num_workers)
        if workers != data.num_workers:
            self.runtime.reporter.message(
                f"{self.description}: features are held in memory, so examples are read without worker "
                f"processes (num_workers {data.num_workers} ignored)")
        self.loader = Batches(data.examples, self.micro, data.sampler, data.collate, workers,
                              pin_memory=self.device.type == "cuda")
        # The last step of an epoch may have fewer micro-batches than grad_accum.
        self.micro_per_epoch = math.ceil(data.sampler.shard_size() / self.micro)
        self.steps_per_epoch = math.ceil(self.micro_per_epoch / schedule.grad_accum)
        if schedule.max_steps is None:
            self.total = self.steps_per_epoch * schedule.epochs
        else:  # max_steps caps the epochs (with epochs 0: at one epoch's steps)
            self.total = min(schedule.max_steps, self.steps_per_epoch * max(schedule.epochs, 1))
        self.params = [p for m in self.model.modules for p in m.parameters() if p.requires_grad]
        if self.total == 0 or not self.params:
            return False
        optim = self.schedule.optim
        self.optimizer = make_optimizer(self.params, dict(optim), self.device)
        self.lr_schedule = make_schedule(self.optimizer, self.total, optim["warmup"])
        self.forward = Forward(dist, list(self.model.modules), self.model.step_fn, self.device)
        self.skip = optim.get("nonfinite", OPTIM["nonfinite"].default) == "skip"
        self.watch, self.window = NonFiniteWatch(self.device), Window(self.device)
        return True

    def restore(self, resume: dict[str, Any]) -> None:
        """Continue the training state ``resume`` (from :meth:`state`): optimiser, schedule, position, log window,
        random state. With another process count the position is kept but the randomness is reseeded."""
        dist, generators, collate = self.dist, self.runtime.generators, self.data.collate
        check_compatible(resume, self.total, self.data.batch_size, self.description)
        self.optimizer.load_state_dict(resume["optimizer"])
        self.lr_schedule.load_state_dict(resume["schedule"])
        self.progress = progress = Progress(**{k: resume[k] for k in Progress.__dataclass_fields__})
        self.window.load(resume["window"], dist)
        self.watch.skipped.fill_(int(resume["skipped"]))
        if resume["world_size"] == dist.world_size:
            self.pending_rng = resume["rng"][dist.rank]
        else:
            self.runtime.reporter.message(
                f"[yellow]{self.description}: resumed with {dist.world_size} processes instead of "
                f"{resume['world_size']}: same step, but the random state is reseeded[/yellow]")
            seed = dist.seed(self.data.sampler.seed * 7_919 + progress.step)
            torch.manual_seed(seed)
            for generator in generators.values():
                generator.manual_seed(seed)
        if progress.in_epoch >= self.steps_per_epoch:  # taken at an epoch's end: the next one has not begun
            progress.epoch, progress.in_epoch = progress.epoch + 1, 0
            if self.pending_rng is not None:  # the next epoch's iterator draws from it, as it did uninterrupted
                restore_rng(self.pending_rng, collate, generators, with_collate=False)
                self.pending_rng = None

    # ----- the steps ----------------------------------------------------------------------------------------
    def _train_epoch(self, epoch: int) -> None:
        """Epoch ``epoch``'s steps (from where a resumed state left it), each followed by its log point and
        callbacks when due."""
        progress, grad_accum = self.progress, self.schedule.grad_accum
        if epoch != progress.epoch:
            progress.epoch, progress.in_epoch = epoch, 0
        self.data.sampler.set_epoch(epoch, start=progress.in_epoch * grad_accum * self.micro)
        self.data.collate.set_epoch(epoch)
        batches = self.loader.epoch()
        if self.pending_rng is not None:  # mid-epoch: after the iterator (which drew its seed before the checkpoint)
            restore_rng(self.pending_rng, self.data.collate, self.runtime.generators)
            self.pending_rng = None
        while progress.in_epoch < self.steps_per_epoch and progress.step < self.total:
            self.step(batches, epoch)
            if progress.since == self.schedule.log_every or progress.step == self.total:
                self.flush_log(epoch)
            if progress.step < self.total:  # the final step's state goes to LoopResult (and on_epoch_end, _finish)
                self._call_back(epoch)

    def step(self, batches: Iterator[Batch], epoch: int) -> None:
        """One optimiser step: the gradients of up to ``grad_accum`` micro-batches, clipped, then the update
        (skipped when non-finite under ``nonfinite: skip``) and the learning-rate schedule's step."""
        progress = self.progress
        count = min(self.schedule.grad_accum, self.micro_per_epoch - progress.in_epoch * self.schedule.grad_accum)
        position.step, position.epoch = progress.step + 1, epoch  # a plugin failure says where it was
        self.optimizer.zero_grad(set_to_none=True)
        losses, samples = self._accumulate(batches, count)
        timed = begin("optimizer")
        bad = self._update(losses)
        with warnings.catch_warnings():
            # A skipped first update is deliberate; the schedule still counts the step.
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
            self.lr_schedule.step()
        progress.step, progress.in_epoch, progress.since = progress.step + 1, progress.in_epoch + 1, progress.since + 1
        self.window.add(losses, bad, samples)
        end(timed)

    def _accumulate(self, batches: Iterator[Batch], count: int) -> tuple[dict[str, Tensor], int]:
        """Forward and backward ``count`` micro-batches; (their mean losses, on the device; samples seen)."""
        outputs, samples = [], 0
        for index in range(count):
            with phase("fetch"):
                fetched = next(batches)
            with phase("host_to_device"):
                batch = to_device(fetched, self.device)
            # Only the last micro-batch's backward makes DDP average the gradients over processes.
            with self.forward.no_sync() if index < count - 1 else nullcontext():
                with autocast(self.device, self.schedule.precision), phase("forward"):
                    loss, parts = self.forward(batch)
                with phase("backward"):
                    (loss if count == 1 else loss / count).backward()
            outputs.append({"loss": loss.detach(), **{k: v.detach() for k, v in parts.items()}})
            samples += int(batch["input_ids"].shape[0]) if "input_ids" in batch else self.micro
        losses = outputs[0] if count == 1 else {k: sum(o[k] for o in outputs) / count for k in outputs[0]}
        return losses, samples

    def _update(self, losses: dict[str, Tensor]) -> Tensor:
        """Clip and apply the gradients; with ``nonfinite: skip`` not where they or the loss are non-finite. The
        step's badness (a 0-d bool tensor on the device: nothing here waits for the host)."""
        parts = {k: v for k, v in losses.items() if k != "loss"}
        bad = self.watch.observe(self.progress.step + 1, losses["loss"], parts)
        if self.skip and self.dist.enabled:  # the same decision on every process
            bad = self.dist.max_(bad.to(torch.uint8)).bool()
        clip = self.schedule.optim["clip"]
        norm = torch.nn.utils.clip_grad_norm_(self.params, clip) if clip else None
        if not self.skip:
            self.optimizer.step()
            return bad
        if norm is not None:  # a finite loss can still give an overflowing gradient
            bad = bad | ~torch.isfinite(norm)
        skip_if(self.optimizer, bad, self.optimizer.step)
        self.watch.skipped += bad
        return bad

    # ----- between steps ------------------------------------------------------------------------------------
    def flush_log(self, epoch: int) -> None:
        """Close the log window: check the losses are finite, average them over the window (and processes), tell
        the callbacks' ``on_log`` and advance the progress bar."""
        timed = begin("logging")
        self.check_finite()
        progress = self.progress
        good, means, seen = self.window.averages(self.dist)
        progress.samples += seen
        if good:
            progress.last = means
        rate = seen / max(1e-9, time.perf_counter() - self.window_started)
        extra = {"skipped_steps": int(self.watch.skipped)} if self.skip else {}
        metrics = {**(progress.last if good else {}), "lr": self.lr_schedule.get_last_lr()[0],
                   "samples_per_s": rate, **extra}
        for callback in self.callbacks:
            callback.on_log(progress.step, epoch, dict(metrics))
        info = f"loss {progress.last['loss']:.4f} · " if good else ""
        parts = " · ".join(f"{k} {v:.4f}" for k, v in progress.last.items() if k != "loss") if good else ""
        self.bar.advance(progress.since, info=f"{info}{rate:,.0f} samples/s", detail=parts)
        progress.since, self.window_started = 0, time.perf_counter()
        end(timed)

    def _call_back(self, epoch: int) -> None:
        """After a step that is not the final one: ``on_epoch_end`` at an epoch's end, ``on_checkpoint`` every
        ``checkpoint_every`` steps. Only where a callback listens: the state is a collective with several
        processes, and gathering the log window early would change the order its sums are added in."""
        progress, every = self.progress, self.schedule.checkpoint_every
        epoch_end = progress.in_epoch == self.steps_per_epoch and self._listened("on_epoch_end")
        checkpoint = bool(every) and progress.step % every == 0 and self._listened("on_checkpoint")
        if not (epoch_end or checkpoint):
            return
        self.check_finite()  # never hand on, or select, the state of a run that already went non-finite
        with phase("checkpoint"):
            state = self._state_so_far()
            if epoch_end:  # first: what it records (fine-tuning's selection) belongs in this step's checkpoint
                for callback in self.callbacks:
                    callback.on_epoch_end(epoch, state)
            if checkpoint:
                for callback in self.callbacks:
                    callback.on_checkpoint(state)

    def _listened(self, hook: str) -> bool:
        return any(listens(callback, hook) for callback in self.callbacks)

    def _state_so_far(self) -> dict[str, Any]:
        """The state with this session's training time so far counted in (the loop's own count adds it at the end)."""
        earlier = self.progress.seconds
        self.progress.seconds = earlier + time.perf_counter() - self.started
        try:
            return self.state()
        finally:
            self.progress.seconds = earlier

    def check_finite(self) -> None:
        """Stop (RunFailed) if any step so far had a non-finite loss, unless ``nonfinite: skip``; waits for the
        device."""
        first, names = self.watch.first(self.dist)
        if first >= 0 and not self.skip:
            where = f"in {', '.join(names)}" if names else "in the total loss"
            raise RunFailed(f"{self.description}: non-finite loss (NaN or inf) at step {first} {where}; stopped, no "
                            "checkpoint written. Lower the learning rate or check the data, or set "
                            "'optim: {nonfinite: skip}' to skip such steps")

    def state(self) -> dict[str, Any]:
        """The training state a checkpoint holds: position, optimiser, schedule, the partial log window, and every
        process's random state (the runtime's generators and the collate function's too)."""
        self.window.gather_on_main(self.dist)
        return {**self.progress.state(), "total": self.total, "batch_size": self.data.batch_size,
                "grad_accum": self.schedule.grad_accum, "world_size": self.dist.world_size,
                "window": self.window.state(), "skipped": int(self.watch.skipped),
                "optimizer": self.optimizer.state_dict(), "schedule": self.lr_schedule.state_dict(),
                "rng": self.dist.gather(capture_rng(self.data.collate, self.runtime.generators))}

    def _finish(self) -> LoopResult:
        """After the last step: report skipped steps, the final ``on_epoch_end``, and the result."""
        progress, skipped = self.progress, int(self.watch.skipped)
        if skipped:
            self.runtime.reporter.message(f"[yellow]{self.description}: skipped {skipped} of {progress.step} steps "
                                          "for a non-finite loss[/yellow]")
        progress.seconds += time.perf_counter() - self.started
        state = self.state()
        if progress.step:  # the epoch training ended in, whole or cut short by max_steps
            for callback in self.callbacks:
                callback.on_epoch_end(progress.epoch, state)
        return LoopResult(progress.step, progress.samples, progress.seconds, progress.last, skipped, state)
