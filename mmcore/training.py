"""The shared training loop: data loading with per-example plugin work, AdamW, warm-up + linear decay, clipping."""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Sampler

from mmcore.api import Batch, Example, ExampleSource
from mmcore.data.collate import Collator, to_device
from mmcore.errors import MMCoreError
from mmcore.progress import Reporter

PrepareFn = Callable[[Example, ExampleSource, random.Random], list[Example]]


class MixedExamples(torch.utils.data.Dataset):
    """Examples of one or more views, each item paired with the view it came from (tasks need the source)."""

    def __init__(self, views: Sequence[ExampleSource], limits: Sequence[int | None]) -> None:
        self.views = list(views)
        self.sizes = [len(v) if limit is None else min(limit, len(v)) for v, limit in zip(views, limits)]
        self.offsets = [sum(self.sizes[:i]) for i in range(len(self.sizes))]

    def __len__(self) -> int:
        return sum(self.sizes)

    def __getitem__(self, index: int) -> tuple[Example, ExampleSource]:
        for view, offset, size in zip(self.views, self.offsets, self.sizes):
            if index < offset + size:
                return view[index - offset], view
        raise IndexError(index)


class EpochSampler(Sampler[int]):
    """A seeded sampler: a fresh permutation per epoch; with several views, draws by per-view weight."""

    def __init__(self, data: MixedExamples, weights: Sequence[float], seed: int) -> None:
        self.data, self.seed, self.epoch = data, seed, 0
        per_item = [w / size for w, size in zip(weights, data.sizes) for _ in range(size)] if len(weights) > 1 else None
        self.per_item = torch.tensor(per_item, dtype=torch.double) if per_item else None

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose order to produce (deterministic in seed and epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.data)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        if self.per_item is None:
            return iter(torch.randperm(len(self.data), generator=generator).tolist())
        return iter(torch.multinomial(self.per_item, len(self.data), replacement=True, generator=generator).tolist())


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
        for example, source in items:
            examples = [dict(example)]
            for fn in self.prepare:
                examples = [new for ex in examples for new in fn(ex, source, self.rng)]
            out.extend(examples)
        return self.collator(out)


@dataclass
class LoopResult:
    """What a finished training loop reports."""

    steps: int
    samples: int
    seconds: float
    last_losses: dict[str, float]


def make_optimizer(params: list[nn.Parameter], optim: dict[str, Any], device: torch.device) -> torch.optim.Optimizer:
    """AdamW with the recipe's settings (fused on CUDA); no weight decay on biases and LayerNorm weights."""
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": optim["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}]
    extra = {"fused": True} if device.type == "cuda" else {}
    return torch.optim.AdamW(groups, lr=optim["lr"], betas=tuple(optim["betas"]), eps=optim["eps"], **extra)


def make_schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup: float) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup`` × total steps, then linear decay to zero."""
    warm = max(1, int(math.ceil(warmup * total_steps))) if warmup > 0 else 0

    def factor(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        return max(0.0, (total_steps - step) / max(1, total_steps - warm))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


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
) -> LoopResult:
    """Train ``modules`` on ``data`` for ``epochs`` (or ``max_steps``); losses are logged every ``log_every`` steps.

    Loss values stay on the device between log points so the step never waits for the host.
    """
    loader = DataLoader(data, batch_size=batch_size, sampler=sampler, collate_fn=collate, drop_last=False,
                        pin_memory=device.type == "cuda")
    steps_per_epoch = len(loader)
    total = steps_per_epoch * epochs if max_steps is None else min(max_steps, steps_per_epoch * max(epochs, 1))
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    if total == 0 or not params:
        return LoopResult(0, 0, 0.0, {})
    optimizer = make_optimizer(params, optim, device)
    schedule = make_schedule(optimizer, total, optim["warmup"])
    for m in modules:
        m.train()
    step, samples, start = 0, 0, time.perf_counter()
    sums: dict[str, Tensor] = {}
    since, window_start, window_samples = 0, time.perf_counter(), 0
    last: dict[str, float] = {}
    with reporter.bar(description, total) as bar:
        for epoch in range(max(epochs, 1)):
            sampler.set_epoch(epoch)
            collate.set_epoch(epoch)
            for batch in loader:
                if step >= total:
                    break
                batch = to_device(batch, device)
                loss, parts = step_fn(batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if optim["clip"]:
                    torch.nn.utils.clip_grad_norm_(params, optim["clip"])
                optimizer.step()
                schedule.step()
                step += 1
                n = int(batch["input_ids"].shape[0]) if "input_ids" in batch else batch_size
                samples += n
                window_samples += n
                for key, value in {"loss": loss, **parts}.items():
                    sums[key] = sums.get(key, 0.0) + value.detach()
                since += 1
                if since == log_every or step == total:
                    last = {k: float(v) / since for k, v in sums.items()}
                    if not all(math.isfinite(v) for v in last.values()):
                        raise MMCoreError(f"{description}: non-finite loss at step {step}: {last}")
                    rate = window_samples / max(1e-9, time.perf_counter() - window_start)
                    log(step, epoch, {**last, "lr": schedule.get_last_lr()[0], "samples_per_s": rate})
                    bar.advance(since, info=f"loss {last['loss']:.4f} · {rate:,.0f} samples/s")
                    sums, since, window_start, window_samples = {}, 0, time.perf_counter(), 0
            if step >= total:
                break
    return LoopResult(step, samples, time.perf_counter() - start, last)
