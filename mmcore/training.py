"""The shared training loop: data loading with per-example plugin work, AdamW, warm-up + linear decay, clipping,
gradient accumulation, several processes, checkpoints inside a stage and resuming from them."""

from __future__ import annotations

import math
import random
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Sampler

from mmcore.api import Batch, Example, ExampleSource
from mmcore.blame import position
from mmcore.checkpointing import capture_rng, restore_rng
from mmcore.data.collate import Collator, to_device
from mmcore.data.loader import Batches, useful_workers
from mmcore.distributed import Dist, Forward, micro_batch_size
from mmcore.errors import RunFailed
from mmcore.loopstate import Progress, Window, check_compatible
from mmcore.phases import begin, end, phase
from mmcore.progress import Reporter
from mmcore.schema.keys import OPTIM, TOP

PrepareFn = Callable[[Example, ExampleSource, random.Random], list[Example]]


class MixedExamples(torch.utils.data.Dataset):
    """Examples of one or more views, each item paired with the view it came from (tasks need the source)."""

    def __init__(self, views: Sequence[ExampleSource], limits: Sequence[int | None]) -> None:
        self.views = list(views)
        self.sizes = [len(v) if limit is None else min(limit, len(v)) for v, limit in zip(views, limits)]
        self.offsets = [sum(self.sizes[:i]) for i in range(len(self.sizes))]

    def __len__(self) -> int:
        return sum(self.sizes)

    def locate(self, index: int) -> tuple[int, int]:
        """(view number, index within that view) of item ``index``."""
        for number, (offset, size) in enumerate(zip(self.offsets, self.sizes)):
            if index < offset + size:
                return number, index - offset
        raise IndexError(index)

    def __getitem__(self, index: int) -> tuple[Example, ExampleSource]:
        number, inner = self.locate(index)
        with phase("read"):
            return self.views[number][inner], self.views[number]


class EpochSampler(Sampler[int]):
    """A seeded sampler: a fresh permutation per epoch; with several views, draws by per-view weight.

    An epoch's order is a pure function of (seed, epoch), so a resumed epoch replays it. With several processes
    each produces its shard of it (:meth:`shard`), from a position within the shard (:meth:`set_epoch`).
    """

    def __init__(self, data: MixedExamples, weights: Sequence[float], seed: int) -> None:
        self.data, self.seed, self.epoch = data, seed, 0
        self.rank, self.world_size, self.start = 0, 1, 0
        per_item = [w / size for w, size in zip(weights, data.sizes) for _ in range(size)] if len(weights) > 1 else None
        self.per_item = torch.tensor(per_item, dtype=torch.double) if per_item else None

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Choose the epoch whose order to produce, and where in this process's shard of it to begin."""
        self.epoch, self.start = epoch, start

    def shard(self, rank: int, world_size: int) -> None:
        """Produce only process ``rank``'s shard (``DistributedSampler``'s): the order padded to a multiple of
        ``world_size`` by repeating its beginning, then every ``world_size``-th item from position ``rank``."""
        self.rank, self.world_size = rank, world_size

    def order(self, epoch: int) -> list[int]:
        """The whole epoch's order (every process's shard together)."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        if self.per_item is None:
            return torch.randperm(len(self.data), generator=generator).tolist()
        return torch.multinomial(self.per_item, len(self.data), replacement=True, generator=generator).tolist()

    def shard_size(self) -> int:
        """Items in one process's shard of an epoch."""
        return math.ceil(len(self.data) / self.world_size)

    def __len__(self) -> int:
        return max(0, self.shard_size() - self.start)

    def __iter__(self):
        order = self.order(self.epoch)
        if self.world_size > 1 and order:
            padded = self.shard_size() * self.world_size
            order = (order * math.ceil(padded / len(order)))[:padded][self.rank::self.world_size]
        return iter(order[self.start:])


class PrepareCollate:
    """Collate function: run plugins' per-example ``prepare`` (seeded), then tokenise and stack."""

    def __init__(self, prepare: Sequence[PrepareFn], collator: Collator, seed: int) -> None:
        self.prepare, self.collator, self.seed = list(prepare), collator, seed
        self.rng = random.Random(seed)

    def set_epoch(self, epoch: int) -> None:
        """Reseed so an epoch's example-level randomness does not depend on earlier epochs."""
        self.rng = random.Random(self.seed * 7919 + epoch)

    def __call__(self, items: list[tuple[Example, ExampleSource]]) -> Batch:
        out: list[Example] = []
        with phase("prepare"):
            for example, source in items:
                examples = [dict(example)]
                for fn in self.prepare:
                    examples = [new for ex in examples for new in fn(ex, source, self.rng)]
                out.extend(examples)
        with phase("collate"):
            return self.collator(out)


@dataclass
class LoopResult:
    """What a finished training loop reports."""

    steps: int
    samples: int
    seconds: float
    last_losses: dict[str, float]
    skipped: int = 0  # steps whose update was skipped for a non-finite loss (``nonfinite: skip``)
    state: dict[str, Any] | None = None  # the loop's final training state (see :func:`train_loop`)


def autocast(device: torch.device, precision: str) -> AbstractContextManager[Any]:
    """bf16 autocast on ``device`` when ``precision`` is ``bf16``; a no-op for ``fp32``."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def make_optimizer(params: list[nn.Parameter], optim: dict[str, Any], device: torch.device) -> torch.optim.Optimizer:
    """AdamW with the recipe's settings (fused where torch has the kernel); no weight decay on biases and LayerNorm."""
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": optim["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}]
    extra = {"fused": True} if _has_fused_adamw(device) else {"foreach": True}
    return torch.optim.AdamW(groups, lr=optim["lr"], betas=tuple(optim["betas"]), eps=optim["eps"], **extra)


def _has_fused_adamw(device: torch.device) -> bool:
    # The fused kernel updates each tensor in one pass. On CPU (torch >= 2.4) it took 0.3-0.5 s against
    # ~1.3 s for the default per-tensor path on LXMERT-S's 114M parameters (foreach was no faster): the
    # multi-pass updates are memory-bound. Fused AdamW also skips a step on the device via ``found_inf``.
    if device.type == "cuda":
        return True
    major, minor = (int(x) for x in torch.__version__.split(".")[:2])
    return device.type == "cpu" and (major, minor) >= (2, 4)


def make_schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup: float) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup`` × total steps, then linear decay to zero."""
    warm = max(1, math.ceil(warmup * total_steps)) if warmup > 0 else 0

    def factor(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        return max(0.0, (total_steps - step) / max(1, total_steps - warm))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class NonFiniteWatch:
    """Device-side record of steps with a non-finite loss: the first such step, its parts, and a count.

    Nothing here reads a value back to the host; :meth:`first` does, and the loop calls it only where it
    already waits for the device (its log points).
    """

    def __init__(self, device: torch.device) -> None:
        self.names: list[str] | None = None
        self.first_step = torch.full((), -1, dtype=torch.long, device=device)
        self.first_parts = torch.zeros(0, dtype=torch.bool, device=device)
        self.skipped = torch.zeros((), dtype=torch.long, device=device)

    def observe(self, step: int, loss: Tensor, parts: dict[str, Tensor]) -> Tensor:
        """Record step ``step`` (1-based); a 0-d bool tensor, true when the loss or any part is non-finite."""
        if self.names is None:
            self.names = list(parts)
            self.first_parts = torch.zeros(len(self.names), dtype=torch.bool, device=self.skipped.device)
        part_bad = (torch.stack([~torch.isfinite(parts[name].detach()).all() for name in self.names])
                    if self.names else self.first_parts)
        bad = ~torch.isfinite(loss.detach()).all() | part_bad.any()
        new = bad & (self.first_step < 0)
        self.first_step = torch.where(new, step, self.first_step)
        self.first_parts = torch.where(new, part_bad, self.first_parts)
        return bad

    def first(self, dist: Dist | None = None) -> tuple[int, list[str]]:
        """(first bad step or -1, names of the parts that were non-finite at it), over all processes; waits for
        the device."""
        step, parts = self.first_step, self.first_parts
        if dist is not None and dist.enabled:
            never = torch.iinfo(torch.long).max
            earliest = dist.max_(torch.where(step < 0, -never, -step).reshape(1)).neg()[0]  # min over processes
            step = torch.where(earliest == never, -1, earliest)
            mine = (self.first_step == step) & (step >= 0)
            parts = dist.max_((parts & mine).to(torch.uint8)).bool() if parts.numel() else parts
        return int(step), [name for name, bad in zip(self.names or [], parts.tolist()) if bad]


def _skip_if(optimizer: torch.optim.Optimizer, bad: Tensor, update: Callable[[], None]) -> None:
    """Run ``update`` (the optimiser step) unless ``bad``; exact: no parameter or optimiser state changes.

    A fused AdamW skips on the device through ``found_inf`` (the mechanism ``torch.amp.GradScaler`` uses),
    so there is no host sync. Zeroing the gradients instead would not skip: Adam's momentum and decoupled
    weight decay would still move the weights. Other optimisers are asked on the host; make_optimizer
    fuses wherever there is a device to wait for.
    """
    if optimizer.defaults.get("fused"):
        optimizer.found_inf = bad.to(torch.float32)  # type: ignore[attr-defined]
        update()
    elif not bool(bad):
        update()


def train_loop(
    *,
    description: str,
    step_fn: Callable[[Batch], tuple[Tensor, dict[str, Tensor]]],
    modules: list[nn.Module],
    data: MixedExamples,
    sampler: EpochSampler,
    collate: PrepareCollate,
    batch_size: int,
    epochs: int,
    max_steps: int | None,
    optim: dict[str, Any],
    device: torch.device,
    reporter: Reporter,
    log: Callable[[int, int, dict[str, float]], None],
    log_every: int,
    grad_accum: int = 1,
    checkpoint_every: int = 0,
    checkpoint: Callable[[dict[str, Any]], None] | None = None,
    resume: dict[str, Any] | None = None,
    generators: dict[str, torch.Generator] | None = None,
    dist: Dist | None = None,
    precision: str = TOP["precision"].default,
    num_workers: int = 0,
) -> LoopResult:
    """Train ``modules`` on ``data`` for ``epochs`` (or ``max_steps``); losses are logged every ``log_every`` steps.

    Loss values stay on the device between log points so the step never waits for the host. A non-finite loss
    stops the loop at the next log point naming the first bad step and its parts, or, with ``optim.nonfinite:
    skip``, that step's update is skipped and counted.

    Every ``checkpoint_every`` steps (0: never) ``checkpoint(state)`` receives the training state: optimiser,
    schedule, position (epoch, steps into it), each process's random state (``generators`` too), the partial log
    window. Passing such a state as ``resume`` continues exactly where it was taken; :attr:`LoopResult.state` is
    the final one. Each step takes ``batch_size`` samples: ``grad_accum`` micro-batches on each of ``dist``'s
    processes, whose gradients DistributedDataParallel averages. ``precision`` bf16 runs the forward pass and
    losses under bf16 autocast (the backward follows autocast's choices; parameters and optimiser stay fp32).
    ``num_workers`` processes read the examples ahead (:class:`mmcore.data.loader.Batches`); ``collate`` runs
    here either way, so the results do not depend on it.
    """
    dist, generators = dist or Dist(), generators or {}
    micro = micro_batch_size(batch_size, dist.world_size, grad_accum, description)
    sampler.shard(dist.rank, dist.world_size)
    workers = useful_workers(data.views, num_workers)
    if workers != num_workers:
        reporter.message(f"{description}: features are held in memory, so examples are read without worker "
                         f"processes (num_workers {num_workers} ignored)")
    loader = Batches(data, micro, sampler, collate, workers, pin_memory=device.type == "cuda")
    micro_per_epoch = math.ceil(sampler.shard_size() / micro)
    steps_per_epoch = math.ceil(micro_per_epoch / grad_accum)
    total = steps_per_epoch * epochs if max_steps is None else min(max_steps, steps_per_epoch * max(epochs, 1))
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    if total == 0 or not params:
        return LoopResult(0, 0, 0.0, {})
    optimizer = make_optimizer(params, optim, device)
    schedule = make_schedule(optimizer, total, optim["warmup"])
    forward = Forward(dist, modules, step_fn, device)
    skip = optim.get("nonfinite", OPTIM["nonfinite"].default) == "skip"
    watch, window, progress = NonFiniteWatch(device), Window(device), Progress()
    pending_rng = None  # random state to restore once the resumed epoch's iterator exists

    def state() -> dict[str, Any]:
        window.gather_on_main(dist)
        return {**progress.state(), "total": total, "batch_size": batch_size, "grad_accum": grad_accum,
                "world_size": dist.world_size, "window": window.state(), "skipped": int(watch.skipped),
                "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                "rng": dist.gather(capture_rng(collate, generators))}

    def check_finite() -> None:
        first, names = watch.first(dist)
        if first >= 0 and not skip:
            where = f"in {', '.join(names)}" if names else "in the total loss"
            raise RunFailed(f"{description}: non-finite loss (NaN or inf) at step {first} {where}; stopped, no "
                            "checkpoint written. Lower the learning rate or check the data, or set "
                            "'optim: {nonfinite: skip}' to skip such steps")

    if resume is not None:
        check_compatible(resume, total, batch_size, description)
        optimizer.load_state_dict(resume["optimizer"])
        schedule.load_state_dict(resume["schedule"])
        progress = Progress(**{k: resume[k] for k in Progress.__dataclass_fields__})
        window.load(resume["window"], dist)
        watch.skipped.fill_(int(resume["skipped"]))
        if resume["world_size"] == dist.world_size:
            pending_rng = resume["rng"][dist.rank]
        else:  # another process count: same position, fresh randomness
            reporter.message(f"[yellow]{description}: resumed with {dist.world_size} processes instead of "
                             f"{resume['world_size']}: same step, but the random state is reseeded[/yellow]")
            torch.manual_seed(dist.seed(sampler.seed * 7_919 + progress.step))
            for generator in generators.values():
                generator.manual_seed(dist.seed(sampler.seed * 7_919 + progress.step))
        if progress.in_epoch >= steps_per_epoch:  # taken at an epoch's end: the next one has not begun
            progress.epoch, progress.in_epoch = progress.epoch + 1, 0
            if pending_rng is not None:  # the next epoch's iterator draws from it, as it did uninterrupted
                restore_rng(pending_rng, collate, generators, with_collate=False)
                pending_rng = None
    elif dist.rank > 0:
        torch.manual_seed(dist.seed(sampler.seed))  # each process its own dropout
    for m in modules:
        m.train()
    start, window_start = time.perf_counter(), time.perf_counter()
    with loader, reporter.bar(description, total) as bar:  # the loader's workers end with the loop, even on errors
        bar.advance(progress.step)
        for epoch in range(progress.epoch, max(epochs, 1)):
            if progress.step >= total:
                break
            if epoch != progress.epoch:
                progress.epoch, progress.in_epoch = epoch, 0
            sampler.set_epoch(epoch, start=progress.in_epoch * grad_accum * micro)
            collate.set_epoch(epoch)
            batches = loader.epoch()
            if pending_rng is not None:  # mid-epoch: after the iterator (which drew its seed before the checkpoint)
                restore_rng(pending_rng, collate, generators)
                pending_rng = None
            while progress.in_epoch < steps_per_epoch and progress.step < total:
                count = min(grad_accum, micro_per_epoch - progress.in_epoch * grad_accum)
                position.step, position.epoch = progress.step + 1, epoch  # a plugin failure says where it was
                optimizer.zero_grad(set_to_none=True)
                outputs, samples = [], 0
                for index in range(count):
                    with phase("fetch"):
                        fetched = next(batches)
                    with phase("host_to_device"):
                        batch = to_device(fetched, device)
                    with forward.no_sync() if index < count - 1 else nullcontext():
                        with autocast(device, precision), phase("forward"):
                            loss, parts = forward(batch)
                        with phase("backward"):
                            (loss if count == 1 else loss / count).backward()
                    outputs.append({"loss": loss.detach(), **{k: v.detach() for k, v in parts.items()}})
                    samples += int(batch["input_ids"].shape[0]) if "input_ids" in batch else micro
                timed = begin("optimizer")
                losses = outputs[0] if count == 1 else {k: sum(o[k] for o in outputs) / count for k in outputs[0]}
                bad = watch.observe(progress.step + 1, losses["loss"], {k: v for k, v in losses.items() if k != "loss"})
                if skip and dist.enabled:  # the same decision on every process
                    bad = dist.max_(bad.to(torch.uint8)).bool()
                norm = torch.nn.utils.clip_grad_norm_(params, optim["clip"]) if optim["clip"] else None
                if skip:
                    if norm is not None:  # a finite loss can still give an overflowing gradient
                        bad = bad | ~torch.isfinite(norm)
                    _skip_if(optimizer, bad, optimizer.step)
                    watch.skipped += bad
                else:
                    optimizer.step()
                with warnings.catch_warnings():
                    # A skipped first update is deliberate; the schedule still counts the step.
                    warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
                    schedule.step()
                progress.step, progress.in_epoch, progress.since = progress.step + 1, progress.in_epoch + 1, progress.since + 1
                window.add(losses, bad, samples)
                end(timed)
                if progress.since == log_every or progress.step == total:
                    timed = begin("logging")
                    check_finite()
                    good, means, seen = window.averages(dist)
                    progress.samples += seen
                    if good:
                        progress.last = means
                    rate = seen / max(1e-9, time.perf_counter() - window_start)
                    extra = {"skipped_steps": int(watch.skipped)} if skip else {}
                    log(progress.step, epoch, {**(progress.last if good else {}), "lr": schedule.get_last_lr()[0],
                                               "samples_per_s": rate, **extra})
                    info = f"loss {progress.last['loss']:.4f} · " if good else ""
                    parts = " · ".join(f"{k} {v:.4f}" for k, v in progress.last.items() if k != "loss") if good else ""
                    bar.advance(progress.since, info=f"{info}{rate:,.0f} samples/s", detail=parts)
                    progress.since, window_start = 0, time.perf_counter()
                    end(timed)
                if checkpoint and checkpoint_every and progress.step % checkpoint_every == 0 and progress.step < total:
                    check_finite()
                    seconds, progress.seconds = progress.seconds, progress.seconds + time.perf_counter() - start
                    with phase("checkpoint"):
                        checkpoint(state())
                    progress.seconds = seconds
    skipped = int(watch.skipped)
    if skipped:
        reporter.message(f"[yellow]{description}: skipped {skipped} of {progress.step} steps for a non-finite loss[/yellow]")
    progress.seconds += time.perf_counter() - start
    return LoopResult(progress.step, progress.samples, progress.seconds, progress.last, skipped, state())
