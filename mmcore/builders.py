"""A run's models, built through the registry from a :class:`~mmcore.context.RunContext`: a fresh backbone, a
stage's tasks, a zero-shot or fine-tuning head, and the same rebuilt with the weights the run's stages trained
(where a downstream entry starts: :func:`start_state`)."""

from __future__ import annotations

from typing import Any

import torch

from mmcore.api import Backbone, Head, Task
from mmcore.blame import call
from mmcore.checkpointing import read_checkpoint
from mmcore.context import RunContext
from mmcore.errors import MMCoreError


def new_backbone(ctx: RunContext) -> Backbone:
    """The recipe's backbone as its plugin builds it, sized for the primary dataset, on torch's current device
    (``with torch.device("meta")``: shapes only)."""
    spec = dict(ctx.recipe["backbone"])
    entry = ctx.registry.get("backbone", spec.pop("name"))
    return call(ctx.registry, entry, "__init__", entry.factory, spec, ctx.info)


def build_backbone(ctx: RunContext) -> Backbone:
    """A freshly initialised backbone (from torch's current seed) on the run's device, compiled if the recipe asks."""
    backbone = new_backbone(ctx).to(ctx.device)
    if ctx.recipe.get("compile"):
        backbone.compile()  # in place: parameter names, checkpoints and hooks stay those of the plain module
    return backbone


def build_tasks(ctx: RunContext, stage: dict[str, Any], backbone: Backbone) -> dict[str, Task]:
    """The stage's tasks, in corruption order."""
    tasks = {}
    for name, options in stage["tasks"].items():
        opts = {k: v for k, v in options.items() if k != "weight"}
        entry = ctx.registry.get("task", name)
        task = call(ctx.registry, entry, "__init__", entry.factory, ctx.info, backbone, **opts)
        tasks[name] = task.to(ctx.device)
    return dict(sorted(tasks.items(), key=lambda kv: kv[1].order))


def build_head(ctx: RunContext, item: dict[str, Any], pretrained: dict[str, Task], hidden: int) -> Head:
    """The head of a zero-shot or fine-tuning entry, with its options, on the run's device."""
    entry = ctx.registry.get("head", item["head"])
    return call(ctx.registry, entry, "__init__", entry.factory, ctx.info, hidden, pretrained,
                **item.get("options", {})).to(ctx.device)


def pretrained_tasks(ctx: RunContext, state: dict[str, Any], through: str | None = None) -> dict[str, Task]:
    """Task modules rebuilt with the trained weights of each task name in ``state`` (for zero-shot heads),
    with the options of the stages up to ``through`` (default: all)."""
    if state["backbone"] is None:
        return {}
    backbone = build_backbone(ctx)
    stages = ctx.recipe["stages"]
    if through is not None:
        stages = stages[: [s["name"] for s in stages].index(through) + 1]
    # The last stage that trains a task decides its options; each task is built once.
    last = {name: options for stage in stages for name, options in stage["tasks"].items()}
    tasks = build_tasks(ctx, {"tasks": {n: o for n, o in last.items() if n in state["tasks"]}}, backbone)
    for name, task in tasks.items():
        task.load_state_dict(state["tasks"][name])
    return tasks


def pretrained_backbone(ctx: RunContext, state: dict[str, Any]) -> Backbone:
    """A backbone with the pre-trained weights of ``state`` (freshly initialised, seeded, when there are none)."""
    torch.manual_seed(ctx.seed)
    backbone = build_backbone(ctx)
    if state["backbone"] is not None:
        backbone.load_state_dict(state["backbone"])
    return backbone


def stage_state(ctx: RunContext, stage: str) -> dict[str, Any]:
    """The pre-trained state as the run has it after ``stage``: that stage's backbone, and the task weights of
    every stage up to it (later stages overlaying earlier ones), read from the run's stage checkpoints."""
    names = [s["name"] for s in ctx.recipe["stages"]]
    if stage not in names:
        raise MMCoreError(f"no pre-training stage {stage!r} in the recipe; stages: {', '.join(names) or '(none)'}")
    tasks: dict[str, Any] = {}
    backbone: dict[str, Any] = {}
    for name in names[: names.index(stage) + 1]:
        path = ctx.run.stage_checkpoint(name)
        if not path.is_file():
            raise MMCoreError(f"stage {name!r} has no checkpoint ({path}); is the run finished? (mmcore run --resume)")
        ckpt = read_checkpoint(path)
        tasks.update(ckpt.get("tasks", {}))
        backbone = ckpt["backbone"]
    return {"backbone": backbone, "tasks": tasks, "stage": stage}


def start_state(ctx: RunContext, item: dict[str, Any], state: dict[str, Any],
                pretrained: dict[str, Task]) -> tuple[dict[str, Any], dict[str, Task]]:
    """(state, pre-trained tasks) a zero-shot or fine-tuning entry starts from: the final ones given, or with
    ``init: <stage>`` those after that stage."""
    stage = item.get("init")
    if stage is None or stage == state.get("stage"):
        return state, pretrained
    start = stage_state(ctx, str(stage))
    return start, pretrained_tasks(ctx, start, through=str(stage))


def started_from(item: dict[str, Any]) -> dict[str, Any]:
    """What ``results.json`` records about an entry's start: ``{"init": stage}`` when it names one, else nothing."""
    return {"init": item["init"]} if "init" in item else {}
