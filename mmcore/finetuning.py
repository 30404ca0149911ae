"""One downstream fine-tuning: train the head with the backbone, select the best epoch on the validation split,
and evaluate the selected weights on the evaluation split.

After each epoch the fine-tuning is evaluated on its ``select.split`` (default ``val``); the metrics go to
``metrics.jsonl`` (``split: val``, keys prefixed ``val_``) and, when the head's ``primary_metric`` improves, the
weights to ``finetune/<name>/best.pt``. The best value and epoch travel in every partial checkpoint, so a resumed
fine-tuning selects the epoch the uninterrupted one would. Without a selection split the last epoch is reported.

A fine-tuning (or zero-shot evaluation) starts from the final pre-trained weights, or with ``init: <stage>`` from
the weights that stage ended with (:func:`start_state`).
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
from rich.markup import escape

from mmcore.api import Backbone, Dataset, ExampleSource, Head, RunInfo, Task
from mmcore.blame import blame, blame_hook, call, position
from mmcore.checkpointing import CheckpointFiles, cpu_state, read_checkpoint
from mmcore.data.collate import Collator
from mmcore.distributed import micro_batch_size
from mmcore.errors import MMCoreError
from mmcore.rundir import fingerprint
from mmcore.schema.keys import setting
from mmcore.selectcheck import WARNING
from mmcore.training import EpochSampler, LoopResult, PrepareCollate, train_loop

if TYPE_CHECKING:
    from mmcore.distributed import Dist
    from mmcore.plugins import Plugins
    from mmcore.progress import Reporter
    from mmcore.registry import Registry
    from mmcore.rundir import RunDir
    from mmcore.training import MixedExamples

BEST = "best.pt"


class Run(Protocol):
    """What a fine-tuning uses of the run it belongs to (:class:`mmcore.engine.Engine` is one)."""

    recipe: dict[str, Any]
    plugins: Plugins
    registry: Registry
    run: RunDir
    reporter: Reporter
    dist: Dist
    device: torch.device
    seed: int
    run_info: RunInfo
    tokenizer: Any

    def dataset(self, name: str) -> Dataset: ...

    def views(self, data: list[dict[str, Any]], split: str | None = None) -> tuple[list[ExampleSource],
                                                                                 MixedExamples]: ...

    def pretrained_tasks(self, state: dict[str, Any], through: str | None = None) -> dict[str, Task]: ...

    def pretrained_backbone(self, state: dict[str, Any]) -> Backbone: ...

    def build_head(self, item: dict[str, Any], pretrained: dict[str, Task], hidden: int) -> Head: ...

    def evaluate(self, head: Head, backbone: Backbone, item: dict[str, Any], split: str,
                 scratch: Path | None = None) -> dict[str, float]: ...

    def query_intervals(self, head: Head) -> dict[str, Any]: ...

    def scratch(self, name: str) -> Path: ...

    def checkpointing(self, item: dict[str, Any], files: CheckpointFiles, partial: dict[str, Any] | None,
                      saved: Callable[[], dict[str, Any]]) -> dict[str, Any]: ...

    def log(self, scope: str, step: int, epoch: int, metrics: dict[str, float]) -> None: ...

    def log_record(self, record: dict[str, Any]) -> None: ...

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


def stage_state(engine: Run, stage: str) -> dict[str, Any]:
    """The pre-trained state as the engine has it after ``stage``: that stage's backbone, and the task weights of
    every stage up to it (later stages overlaying earlier ones), read from the run's stage checkpoints."""
    names = [s["name"] for s in engine.recipe["stages"]]
    if stage not in names:
        raise MMCoreError(f"no pre-training stage {stage!r} in the recipe; stages: {', '.join(names) or '(none)'}")
    tasks: dict[str, Any] = {}
    backbone: dict[str, Any] = {}
    for name in names[: names.index(stage) + 1]:
        path = engine.run.stage_checkpoint(name)
        if not path.is_file():
            raise MMCoreError(f"stage {name!r} has no checkpoint ({path}); is the run finished? (mmcore run --resume)")
        ckpt = read_checkpoint(path)
        tasks.update(ckpt.get("tasks", {}))
        backbone = ckpt["backbone"]
    return {"backbone": backbone, "tasks": tasks, "stage": stage}


def start_state(engine: Run, item: dict[str, Any], state: dict[str, Any],
                pretrained: dict[str, Task]) -> tuple[dict[str, Any], dict[str, Task]]:
    """(state, pre-trained tasks) a zero-shot or fine-tuning entry starts from: the final ones given, or with
    ``init: <stage>`` those after that stage."""
    stage = item.get("init")
    if stage is None or stage == state.get("stage"):
        return state, pretrained
    start = stage_state(engine, str(stage))
    return start, engine.pretrained_tasks(start, through=str(stage))


def started_from(item: dict[str, Any]) -> dict[str, Any]:
    """What ``results.json`` records about an entry's start: ``{"init": stage}`` when it names one, else nothing."""
    return {"init": item["init"]} if "init" in item else {}


def finetune(engine: Run, item: dict[str, Any], state: dict[str, Any], pretrained: dict[str, Task]) -> dict[str, Any]:
    """Fine-tune ``item`` from the pre-trained ``state``, or from the stage its ``init`` names (continuing a partial
    run), then evaluate it."""
    name = item["name"]
    position.enter(f"fine-tuning {name!r}")
    with blame_hook(engine.registry, engine.plugins.manager, "mmcore_stage_start"):
        engine.plugins.hook.mmcore_stage_start(run=engine.run_info, stage=MappingProxyType(item))
    if WARNING in item:
        engine.reporter.message(f"[yellow]warning:[/yellow] {escape(item[WARNING])}")
    state, pretrained = start_state(engine, item, state, pretrained)
    backbone = engine.pretrained_backbone(state)
    init = {"from": state.get("stage"), "fingerprint": fingerprint(backbone.state_dict())}
    torch.manual_seed(engine.seed + 1000)
    head = engine.build_head(item, pretrained, backbone.hidden_size)
    files = CheckpointFiles(engine.run, engine.run.finetune_checkpoint(name), name, f"fine-tuning {name!r}")
    split, note = _selection_split(engine, item)
    selection = Selection(head.primary_metric(), split, note=note)
    if files.final.exists():  # trained, but stopped before its evaluation was recorded
        done = files.read(files.final)
        backbone.load_state_dict(done["backbone"])
        head.load_state_dict(done["head"])
        selection.load(done.get("selection"))
        files.discard_partial()
        result = LoopResult(int(done["step"]), 0, float(done.get("seconds", 0.0)), {})
    else:
        result = _train(engine, item, backbone, head, files, selection, init)
    if selection.best_epoch is not None:
        engine.dist.barrier()  # rank 0 alone writes best.pt: every process reads it only once it is there
        best = files.read(files.final.parent / BEST)
        if best.get("epoch") != selection.best_epoch:
            raise MMCoreError(f"{files.final.parent / BEST} holds epoch {best.get('epoch')}, but the fine-tuning "
                              f"selected epoch {selection.best_epoch}; delete {files.final.parent} to train it again")
        backbone.load_state_dict(best["backbone"])
        head.load_state_dict(best["head"])

    def evaluate() -> tuple[dict[str, float], Path | None, dict[str, Any]]:  # rank 0 only; the others receive it
        metrics = engine.evaluate(head, backbone, item, item["eval_split"], engine.scratch(name))
        return metrics, head.write_predictions(files.final.parent), engine.query_intervals(head)

    metrics, predictions, intervals = engine.dist.on_main(evaluate)
    _say_if_at_floor(engine, name, head, metrics)
    engine.plugins.hook.mmcore_stage_end(run=engine.run_info, stage=MappingProxyType(item),
                                         metrics=metrics)
    relative = {"predictions": Path(os.path.relpath(predictions, engine.run.path)).as_posix()} if predictions else {}
    warning = {"warning": item[WARNING]} if WARNING in item else {}  # selected on the data it reports, as allowed
    return {"kind": "finetune", "head": item["head"], **started_from(item), "split": item["eval_split"],
            "steps": result.steps, "seconds": round(result.seconds, 1), "metrics": metrics, **intervals,
            **selection.result(), **relative, **warning}


def _say_if_at_floor(engine: Run, name: str, head: Head, metrics: dict[str, float]) -> None:
    """Warn when a fine-tuning ends at a baseline its head declares as a floor (e.g. answering from the question
    alone): it learned no more than that baseline."""
    score = metrics.get(head.primary_metric())
    for floor in (m for m in head.metrics if m.floor and m.key in metrics):
        baseline = metrics[floor.key]
        if score is not None and score < baseline + FLOOR_MARGIN:
            engine.reporter.message(f"[yellow]warning:[/yellow] fine-tuning {name!r} scored {100 * score:.2f}, within "
                                    f"{100 * FLOOR_MARGIN:.0f} points of its {floor.shown_label} baseline "
                                    f"{100 * baseline:.2f}: {floor.floor}")


def _selection_split(engine: Run, item: dict[str, Any]) -> tuple[str | None, str]:
    """(the split to select on, or None and why not)."""
    select = item.get("select") or {"split": "val", "every_epoch": True}
    if not select["every_epoch"]:
        return None, "select.every_epoch is off: the last epoch"
    data = item["data"][0]
    try:
        engine.dataset(data["dataset"]).view(data["view"], select["split"])
    except (MMCoreError, KeyError, ValueError) as exc:
        return None, f"no {select['split']!r} split of {data['dataset']}/{data['view']} ({exc}): the last epoch"
    return str(select["split"]), ""


def _steps_per_epoch(engine: Run, item: dict[str, Any], sampler: EpochSampler) -> int:
    """Optimiser steps in one epoch, as train_loop counts them."""
    micro = micro_batch_size(item["batch_size"], engine.dist.world_size, item["grad_accum"])
    sampler.shard(engine.dist.rank, engine.dist.world_size)
    return math.ceil(math.ceil(sampler.shard_size() / micro) / item["grad_accum"])


def _train(engine: Run, item: dict[str, Any], backbone: Backbone, head: Head, files: CheckpointFiles,
           selection: Selection, init: dict[str, Any]) -> LoopResult:
    """Fine-tune ``backbone`` and ``head`` (from the partial checkpoint, if any), selecting on the way; write the
    final checkpoint. ``init`` (the stage it started from and its weights' fingerprint) goes into every checkpoint."""
    name = item["name"]
    partial = files.begin()
    if partial is not None:
        backbone.load_state_dict(partial["backbone"])
        head.load_state_dict(partial["head"])
        selection.load(partial.get("selection"))
    _, data = engine.views(item["data"])
    entry = engine.registry.get("head", item["head"])

    def prepare(*args: Any) -> list[Any]:
        with blame(engine.registry, entry, "prepare"):
            return head.prepare(*args)

    collate = PrepareCollate([prepare], Collator(engine.tokenizer, item["max_text_len"]),
                             engine.dist.seed(engine.seed + 1000))
    sampler = EpochSampler(data, [1.0], engine.seed + 1000)
    per_epoch = _steps_per_epoch(engine, item, sampler)
    every = int(item["checkpoint_every"])

    def saved() -> dict[str, Any]:
        return {"name": name, "init": init, "backbone": cpu_state(backbone), "head": cpu_state(head),
                "selection": selection.state(), "mmcore_format": 2}

    def select(step: int, epoch: int) -> None:
        """Evaluate on the selection split; keep the weights when they are the best so far."""
        metrics = _quietly(lambda: engine.dist.on_main(
            lambda: engine.evaluate(head, backbone, item, str(selection.split), engine.scratch(name) / "val")))
        backbone.train()
        head.train()
        engine.log_record({"scope": name, "step": step, "epoch": epoch, "split": selection.split,
                           **{f"val_{k}": round(v, 6) for k, v in metrics.items()}})
        if selection.offer(epoch, metrics):
            engine.run.save_checkpoint(files.final.parent / BEST, {**saved(), "epoch": epoch, "step": step})

    arguments = engine.checkpointing(item, files, partial, saved)
    if selection.split is not None:
        # train_loop calls back every checkpoint_every steps only: call it at every epoch's end as well, and
        # save a partial checkpoint only where the recipe asks for one.
        save = arguments["checkpoint"]

        def checkpoint(training: dict[str, Any]) -> None:
            if training["in_epoch"] == per_epoch:
                select(training["step"], training["epoch"])
            if every and training["step"] % every == 0:
                save(training)

        arguments.update(checkpoint=checkpoint, checkpoint_every=math.gcd(every, per_epoch) if every else per_epoch)
    result = train_loop(
        description=f"fine-tune {name}", step_fn=lambda b: (call(engine.registry, entry, "loss", head.loss, backbone, b), {}),
        modules=[backbone, head], data=data, sampler=sampler, collate=collate, batch_size=item["batch_size"],
        epochs=item["epochs"], max_steps=item["max_steps"], optim=item["optim"], device=engine.device,
        reporter=engine.reporter, log_every=engine.recipe["log_every"],
        log=lambda s, e, m: engine.log(name, s, e, m), precision=setting(engine.recipe, "precision"), **arguments,
    )
    if selection.split is not None and result.steps and result.state is not None:
        select(result.steps, int(result.state["epoch"]))  # the last epoch (or the step max_steps stopped at)
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
