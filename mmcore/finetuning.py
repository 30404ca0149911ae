"""One downstream fine-tuning: train the head with the backbone, select the best epoch on the validation split,
and evaluate the selected weights on the evaluation split.

After each epoch (the Trainer's ``on_epoch_end``) the fine-tuning is evaluated on its ``select.split`` (default
``val``); the metrics go to ``metrics.jsonl`` (``split: val``, keys prefixed ``val_``) and, when the head's
``primary_metric`` improves, the weights to ``finetune/<name>/best.pt``. The best value and epoch travel in every
partial checkpoint, so a resumed fine-tuning selects the epoch the uninterrupted one would. Without a selection
split the last epoch is reported.

A fine-tuning (or zero-shot evaluation) starts from the final pre-trained weights, or with ``init: <stage>`` from
the weights that stage ended with (:func:`mmcore.builders.start_state`).
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
from rich.markup import escape

from mmcore.api import Backbone, Head, Task
from mmcore.blame import blame, blame_hook, call, position
from mmcore.builders import build_head, pretrained_backbone, start_state, started_from
from mmcore.callbacks import RunLog, TrainerCallback
from mmcore.checkpointing import CheckpointFiles, PartialCheckpoints, cpu_state, resume_state
from mmcore.context import RunContext
from mmcore.data.collate import Collator
from mmcore.errors import MMCoreError
from mmcore.evaluation import evaluate, query_intervals, scratch
from mmcore.rundir import fingerprint
from mmcore.selectcheck import WARNING
from mmcore.trainer import Data, LoopResult, Model, Runtime, Schedule, Trainer
from mmcore.training import EpochSampler, PrepareCollate

BEST = "best.pt"

# A fine-tuning scoring less than this above a floor its head declares (Metric.floor) gets a warning.
FLOOR_MARGIN = 0.02


@dataclass
class Selection:
    """The best epoch so far on the selection split (``split`` None: none, the last epoch is reported)."""

    metric: str
    split: str | None
    best: float | None = None
    best_epoch: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)  # every validation metric of the best epoch
    note: str = ""  # why there is no selection, when there is none

    def offer(self, epoch: int, metrics: dict[str, float]) -> bool:
        """Record an epoch's validation metrics; True when it is the best so far (ties keep the earlier)."""
        if self.metric not in metrics:
            raise MMCoreError(f"the head's primary metric {self.metric!r} is not among its metrics "
                              f"({', '.join(metrics)}); it cannot select a checkpoint")
        value = float(metrics[self.metric])
        if self.best is not None and not value > self.best:
            return False
        self.best, self.best_epoch, self.metrics = value, epoch, dict(metrics)
        return True

    def state(self) -> dict[str, Any]:
        """Plain values for a checkpoint."""
        return asdict(self)

    def load(self, state: dict[str, Any] | None) -> None:
        """Continue the selection of a checkpoint (from before selection existed: nothing to continue)."""
        for key, value in (state or {}).items():
            setattr(self, key, value)

    def result(self) -> dict[str, Any]:
        """What results.json records about the selection."""
        if self.split is None or self.best_epoch is None:
            return {"selection": {"split": None, "note": self.note or "no validation evaluation: the last epoch"}}
        return {"best_epoch": self.best_epoch,
                "selection": {"split": self.split, "metric": self.metric, "value": self.best, "metrics": self.metrics}}


class SelectEveryEpoch(TrainerCallback):
    """Calls ``select(step, epoch)`` at every epoch's end, and at the final step when ``max_steps`` cuts the last
    epoch short: fine-tuning evaluates on its selection split there and keeps the best weights."""

    def __init__(self, select: Callable[[int, int], None]) -> None:
        self.select = select

    def on_epoch_end(self, epoch: int, state: dict[str, Any]) -> None:
        self.select(int(state["step"]), epoch)


def finetune(ctx: RunContext, item: dict[str, Any], state: dict[str, Any], pretrained: dict[str, Task]) -> dict[str, Any]:
    """Fine-tune ``item`` from the pre-trained ``state``, or from the stage its ``init`` names (continuing a partial
    run), then evaluate it."""
    name = item["name"]
    position.enter(f"fine-tuning {name!r}")
    with blame_hook(ctx.registry, ctx.plugins.manager, "mmcore_stage_start"):
        ctx.plugins.hook.mmcore_stage_start(run=ctx.hook_run, stage=MappingProxyType(item))
    if WARNING in item:
        ctx.reporter.message(f"[yellow]warning:[/yellow] {escape(item[WARNING])}")
    state, pretrained = start_state(ctx, item, state, pretrained)
    backbone = pretrained_backbone(ctx, state)
    init = {"from": state.get("stage"), "fingerprint": fingerprint(backbone.state_dict())}
    torch.manual_seed(ctx.seed + 1000)
    head = build_head(ctx, item, pretrained, backbone.hidden_size)
    files = CheckpointFiles(ctx.run, ctx.run.finetune_checkpoint(name), name, f"fine-tuning {name!r}")
    split, note = _selection_split(ctx, item)
    selection = Selection(head.primary_metric(), split, note=note)
    if files.final.exists():  # trained, but stopped before its evaluation was recorded
        done = files.read(files.final)
        backbone.load_state_dict(done["backbone"])
        head.load_state_dict(done["head"])
        selection.load(done.get("selection"))
        files.discard_partial()
        result = LoopResult(int(done["step"]), 0, float(done.get("seconds", 0.0)), {})
    else:
        result = _train(ctx, item, backbone, head, files, selection, init)
    if selection.best_epoch is not None:
        ctx.processes.barrier()  # rank 0 alone writes best.pt: every process reads it only once it is there
        best = files.read(files.final.parent / BEST)
        if best.get("epoch") != selection.best_epoch:
            raise MMCoreError(f"{files.final.parent / BEST} holds epoch {best.get('epoch')}, but the fine-tuning "
                              f"selected epoch {selection.best_epoch}; delete {files.final.parent} to train it again")
        backbone.load_state_dict(best["backbone"])
        head.load_state_dict(best["head"])

    def evaluation() -> tuple[dict[str, float], Path | None, dict[str, Any]]:  # rank 0 only; the others receive it
        metrics = evaluate(ctx, head, backbone, item, item["eval_split"], scratch(ctx, name))
        return metrics, head.write_predictions(files.final.parent), query_intervals(head)

    metrics, predictions, intervals = ctx.processes.on_main(evaluation)
    _say_if_at_floor(ctx, name, head, metrics)
    ctx.plugins.hook.mmcore_stage_end(run=ctx.hook_run, stage=MappingProxyType(item), metrics=metrics)
    relative = {"predictions": Path(os.path.relpath(predictions, ctx.run.path)).as_posix()} if predictions else {}
    warning = {"warning": item[WARNING]} if WARNING in item else {}  # selected on the data it reports, as allowed
    return {"kind": "finetune", "head": item["head"], **started_from(item), "split": item["eval_split"],
            "steps": result.steps, "seconds": round(result.seconds, 1), "metrics": metrics, **intervals,
            **selection.result(), **relative, **warning}


def _say_if_at_floor(ctx: RunContext, name: str, head: Head, metrics: dict[str, float]) -> None:
    """Warn when a fine-tuning ends at a baseline its head declares as a floor (e.g. answering from the question
    alone): it learned no more than that baseline."""
    score = metrics.get(head.primary_metric())
    for floor in (m for m in head.metrics if m.floor and m.key in metrics):
        baseline = metrics[floor.key]
        if score is not None and score < baseline + FLOOR_MARGIN:
            ctx.reporter.message(f"[yellow]warning:[/yellow] fine-tuning {name!r} scored {100 * score:.2f}, within "
                                    f"{100 * FLOOR_MARGIN:.0f} points of its {floor.shown_label} baseline "
                                    f"{100 * baseline:.2f}: {floor.floor}")


def _selection_split(ctx: RunContext, item: dict[str, Any]) -> tuple[str | None, str]:
    """(the split to select on, or None and why not)."""
    select = item.get("select") or {"split": "val", "every_epoch": True}
    if not select["every_epoch"]:
        return None, "select.every_epoch is off: the last epoch"
    data = item["data"][0]
    try:
        ctx.dataset(data["dataset"]).view(data["view"], select["split"])
    except (MMCoreError, KeyError, ValueError) as exc:
        return None, f"no {select['split']!r} split of {data['dataset']}/{data['view']} ({exc}): the last epoch"
    return str(select["split"]), ""


def _train(ctx: RunContext, item: dict[str, Any], backbone: Backbone, head: Head, files: CheckpointFiles,
           selection: Selection, init: dict[str, Any]) -> LoopResult:
    """Fine-tune ``backbone`` and ``head`` (from the partial checkpoint, if any), selecting on the way; write the
    final checkpoint. ``init`` (the stage it started from and its weights' fingerprint) goes into every checkpoint."""
    name = item["name"]
    partial = files.begin()
    if partial is not None:
        backbone.load_state_dict(partial["backbone"])
        head.load_state_dict(partial["head"])
        selection.load(partial.get("selection"))
    _, data = ctx.views(item["data"])
    entry = ctx.registry.get("head", item["head"])

    def prepare(*args: Any) -> list[Any]:
        with blame(ctx.registry, entry, "prepare"):
            return head.prepare(*args)

    collate = PrepareCollate([prepare], Collator(ctx.tokenizer, item["max_text_len"]),
                             ctx.processes.seed(ctx.seed + 1000))
    sampler = EpochSampler(data, [1.0], ctx.seed + 1000)

    def saved() -> dict[str, Any]:
        return {"name": name, "init": init, "backbone": cpu_state(backbone), "head": cpu_state(head),
                "selection": selection.state(), "mmcore_format": 2}

    def select(step: int, epoch: int) -> None:
        """Evaluate on the selection split; keep the weights when they are the best so far."""
        metrics = _quietly(lambda: ctx.processes.on_main(
            lambda: evaluate(ctx, head, backbone, item, str(selection.split), scratch(ctx, name) / "val")))
        backbone.train()
        head.train()
        ctx.log_record({"scope": name, "step": step, "epoch": epoch, "split": selection.split,
                        **{f"val_{k}": round(v, 6) for k, v in metrics.items()}})
        if selection.offer(epoch, metrics):
            ctx.run.save_checkpoint(files.final.parent / BEST, {**saved(), "epoch": epoch, "step": step})

    callbacks: list[TrainerCallback] = [RunLog(ctx, name), PartialCheckpoints(files, saved)]
    if selection.split is not None:
        callbacks.append(SelectEveryEpoch(select))
    trainer = Trainer(
        f"fine-tune {name}",
        Model(lambda b: (call(ctx.registry, entry, "loss", head.loss, backbone, b), {}), [backbone, head]),
        Data(data, sampler, collate, item["batch_size"], item["num_workers"]),
        Schedule.of(item, log_every=ctx.recipe["log_every"], precision=ctx.precision.precision),
        Runtime(ctx.device, ctx.reporter, ctx.processes), callbacks)
    result = trainer.fit(resume_state(files, partial))
    files.save_final({**saved(), "step": result.steps, "seconds": round(result.seconds, 1), "training": result.state})
    return result


def _quietly(fn: Callable[[], dict[str, float]]) -> dict[str, float]:
    """Run an evaluation inside training without moving any random state the training draws from."""
    python, numpy = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        try:
            return fn()
        finally:
            random.setstate(python)
            np.random.set_state(numpy)
