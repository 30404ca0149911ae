"""``mmcore evaluate TARGET --head H --data DATASET:VIEW[:SPLIT]``: evaluate a run's checkpoint again, on any view.

TARGET is a run directory (its fine-tuning of the head: the selected ``best.pt`` when there is one, else
``checkpoint.pt``; or with ``--zero-shot`` its final pre-training stage) or a checkpoint file (``finetune/<name>/checkpoint.pt`` or ``stages/<name>/checkpoint.pt``; one outside a run
directory needs ``--recipe``). The backbone, pre-trained tasks and head are built through the registry by the
run's builders, the weights loaded, the view evaluated; the metrics are printed and written as JSON next to
the checkpoint.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import torch
import yaml

from mmcore.context import RunContext
from mmcore.errors import MMCoreError, did_you_mean
from mmcore.layout import Layout
from mmcore.progress import Reporter
from mmcore.recipe import parse_yaml
from mmcore.rundir import RunDir, atomic_write_text
from mmcore.schema.keys import MAX_TEXT_LEN
from mmcore.summary import evaluation_rows, rich_table
from mmcore.validate import DEVICE

RESOLVED = "recipe.resolved.yaml"


@dataclass
class Target:
    """What to evaluate: the checkpoint, its kind, the recipe file and the recipe entry it belongs to."""

    checkpoint: Path
    kind: str  # "finetune" | "zero_shot"
    recipe: Path
    run: Path | None  # the run directory, when the checkpoint lives in one
    name: str | None  # the fine-tuning's name (from the checkpoint or the recipe)


@click.command(name="evaluate")
@click.argument("target", type=click.Path(path_type=Path))
@click.option("--head", "head_name", required=True, help="The downstream head to evaluate (mmcore list-heads).")
@click.option("--data", "data_spec", required=True, metavar="DATASET:VIEW[:SPLIT]",
              help="The view to evaluate on; SPLIT defaults to test.")
@click.option("--recipe", "recipe_path", type=click.Path(dir_okay=False, path_type=Path),
              help="The recipe of a checkpoint that is not inside a run directory.")
@click.option("--name", help="Which fine-tuning of the run, when several use the head.")
@click.option("--zero-shot", is_flag=True, help="Evaluate the run's pre-trained model (its final stage).")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="Set a head option, e.g. --set eval_batch_pairs=2048 (value parsed as YAML; repeatable).")
@click.option("--images", type=click.IntRange(min=1), help="Only the first N images and their captions.")
@click.option("--shortlist", type=click.IntRange(min=1),
              help="Cross-encode only each caption's top-K images and each image's top-K captions.")
@click.option("--device", help="Override the recipe's device (cpu, cuda, cuda:N, auto).")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), help="Data cache (default $MMCORE_CACHE).")
@click.option("--quiet", is_flag=True, help="No progress output; only the metrics table.")
def evaluate(target: Path, head_name: str, data_spec: str, recipe_path: Path | None, name: str | None,
             zero_shot: bool, settings: tuple[str, ...], images: int | None, shortlist: int | None,
             device: str | None, cache_dir: Path | None, quiet: bool) -> None:
    """Evaluate a run directory's or a checkpoint's model with a head on a view; print and write the metrics.

    Heads with a score_cache option (retrieval) keep their partial scores next to the checkpoint, so an
    interrupted evaluation resumes where it stopped when the same command is run again.
    """
    from mmcore.console import err_console, stdout_console
    from mmcore.recipeload import prepare_recipe

    dataset, view, split = parse_data(data_spec)
    _, plugins, resolved = prepare_recipe(recipe_of(target, recipe_path))
    if device:
        if not DEVICE.match(device):
            raise MMCoreError(f"--device must be auto, cpu, cuda, cuda:N or mps, got {device!r}")
        resolved["device"] = device
    entry = plugins.registry.get("head", head_name)
    found = locate(target, head_name, recipe_path, name, zero_shot)
    check_data(plugins.registry, entry, dataset, view)
    item = recipe_item(resolved, found, head_name)
    options = head_options(entry, item, settings, images, shortlist)
    out = result_path(found, head_name, dataset, view, split, images, shortlist)
    if "score_cache" in entry.defaults and not options.get("score_cache"):
        options["score_cache"] = str(out.with_suffix(".scores.npz"))
    reporter = Reporter(err_console, quiet=quiet)
    reporter.message(f"[bold]mmcore[/bold] evaluate {head_name} on {dataset}/{view}/{split} ← {found.checkpoint}")
    start = time.perf_counter()
    # A recipe without data: the evaluated dataset sizes the model.
    ctx = RunContext.open(resolved, plugins, RunDir(found.run or found.checkpoint.parent), reporter, cache_dir,
                          sizing=dataset)
    metrics = run_evaluation(ctx, found, head_name, options, (dataset, view, split),
                             item.get("max_text_len", MAX_TEXT_LEN))
    label = f"{found.name or head_name}" + (" (zero-shot)" if found.kind == "zero_shot" else "")
    result = {"checkpoint": str(found.checkpoint), "kind": found.kind, "head": head_name,
              "data": {"dataset": dataset, "view": view, "split": split}, "options": options,
              "seconds": round(time.perf_counter() - start, 1), "metrics": metrics}
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    stdout_console().print(rich_table(f"{label} — {dataset}/{view}/{split} (%)",
                                       *evaluation_rows({label: {"kind": found.kind, "split": split,
                                                                 "metrics": metrics}},
                                                       Layout.of(plugins.registry))))
    err_console.print(f"wrote {out}", highlight=False, soft_wrap=True)


def parse_data(spec: str) -> tuple[str, str, str]:
    """``DATASET:VIEW[:SPLIT]`` -> (dataset, view, split); split defaults to ``test``."""
    parts = spec.split(":")
    if len(parts) not in (2, 3) or not all(parts):
        raise MMCoreError(f"--data {spec!r}: expected DATASET:VIEW or DATASET:VIEW:SPLIT, e.g. mydata:captions:test")
    return parts[0], parts[1], parts[2] if len(parts) == 3 else "test"


def recipe_of(target: Path, recipe: Path | None) -> Path:
    """The recipe that built TARGET: ``--recipe``, else the resolved recipe of the run directory holding it."""
    if recipe is not None:
        return recipe
    if target.is_dir():
        if not (target / RESOLVED).is_file():
            raise MMCoreError(f"{target} is neither a run directory (no {RESOLVED}) nor a checkpoint file")
        return target / RESOLVED
    if not target.is_file():
        raise MMCoreError(f"{target}: no such run directory or checkpoint file")
    run = _run_of(target)
    if run is None:
        raise MMCoreError(f"{target} is not inside a run directory; give the recipe that built it with --recipe")
    return run / RESOLVED


def _run_of(checkpoint: Path) -> Path | None:
    """The run directory of ``<run>/{stages,finetune}/<name>/checkpoint.pt``, if the file lies in one."""
    parents = checkpoint.resolve().parents
    return parents[2] if len(parents) > 2 and (parents[2] / RESOLVED).is_file() else None


def locate(target: Path, head: str, recipe: Path | None, name: str | None, zero_shot: bool) -> Target:
    """The checkpoint TARGET names (a run directory or a checkpoint file) and the recipe that built it."""
    recipe = recipe_of(target, recipe)
    if target.is_dir():
        if not (target / RESOLVED).is_file():
            raise MMCoreError(f"{target} is not a run directory (no {RESOLVED})")
        resolved = parse_yaml((target / RESOLVED).read_text(encoding="utf-8")) or {}
        if zero_shot:
            stages = [s["name"] for s in resolved.get("stages") or []]
            if not stages:
                raise MMCoreError(f"{target}: the run has no pre-training stage to evaluate zero-shot")
            path = target / "stages" / stages[-1] / "checkpoint.pt"
            if not path.is_file():
                raise MMCoreError(f"{target}: no checkpoint of the final stage {stages[-1]!r} ({path}); is the run "
                                  "finished? (mmcore run --resume)")
            return Target(path, "zero_shot", recipe, target, None)
        tunings = [f for f in resolved.get("finetune") or [] if f.get("head") == head]
        names = [f["name"] for f in tunings]
        if name is not None:
            if name not in names:
                raise MMCoreError(f"{target}: no fine-tuning named {name!r} with head {head!r}; "
                                  f"with that head: {', '.join(names) or '(none)'}")
            names = [name]
        if not names:
            others = ", ".join(f"{f['name']} ({f['head']})" for f in resolved.get("finetune") or []) or "none"
            raise MMCoreError(f"{target}: the run has no fine-tuning with head {head!r} (fine-tunings: {others}); "
                              "add --zero-shot to evaluate the pre-trained model")
        if len(names) > 1:
            raise MMCoreError(f"{target}: several fine-tunings use head {head!r} ({', '.join(names)}); pick one with --name")
        path = target / "finetune" / names[0] / "best.pt"  # the weights the run selected and reported
        path = path if path.is_file() else path.with_name("checkpoint.pt")
        if not path.is_file():
            raise MMCoreError(f"{target}: fine-tuning {names[0]!r} has no checkpoint ({path}); is the run finished?")
        return Target(path, "finetune", recipe, target, names[0])
    from mmcore.checkpointing import read_checkpoint

    ckpt = read_checkpoint(target)
    if "head" in ckpt:
        kind = "finetune"
    elif "tasks" in ckpt:
        kind = "zero_shot"
    else:
        raise MMCoreError(f"{target} is not an mmcore stage or fine-tuning checkpoint (it has no 'tasks' or 'head')")
    if zero_shot and kind == "finetune":
        raise MMCoreError(f"--zero-shot evaluates a pre-trained model, but {target} is a fine-tuning checkpoint")
    run = _run_of(target)
    name = str(ckpt["name"]) if kind == "finetune" and ckpt.get("name") else None
    return Target(target, kind, recipe, run, name)


def check_data(registry: Any, head: Any, dataset: str, view: str) -> None:
    """The dataset is registered, has the view, and the view provides every field the head requires."""
    entry = registry.get("dataset", dataset)
    if view not in entry.provides:
        raise MMCoreError(f"--data: dataset {dataset!r} has no view {view!r}{did_you_mean(view, entry.provides)}; "
                          f"views: {', '.join(sorted(entry.provides))}")
    missing = head.requires - entry.provides[view]
    if missing:
        raise MMCoreError(f"--data: head {head.name!r} requires field(s) {', '.join(sorted(missing))} that "
                          f"{dataset}/{view} does not provide")


def recipe_item(resolved: dict[str, Any], found: Target, head: str) -> dict[str, Any]:
    """The recipe's fine-tuning (or zero-shot) entry the checkpoint belongs to, for its options; {} if none."""
    if found.kind == "finetune":
        for item in resolved["finetune"]:
            if item["name"] == found.name:
                if item["head"] != head:
                    raise MMCoreError(f"{found.checkpoint} is a fine-tuning of head {item['head']!r}, not {head!r}")
                return item
        return {}
    return next((item for item in resolved["zero_shot"] if item["head"] == head), {})


def head_options(entry: Any, item: dict[str, Any], settings: tuple[str, ...], images: int | None,
                 shortlist: int | None) -> dict[str, Any]:
    """The head's options: the recipe entry's (or the defaults), then ``--set``, ``--images``, ``--shortlist``."""
    options = {**entry.defaults, **item.get("options", {})}
    given: list[tuple[str, Any]] = []
    for setting in settings:
        key, sep, value = setting.partition("=")
        if not sep or not key.strip():
            raise MMCoreError(f"--set {setting!r}: expected KEY=VALUE, e.g. --set eval_batch_pairs=2048")
        try:
            given.append((key.strip(), parse_yaml(value)))
        except yaml.YAMLError as exc:
            raise MMCoreError(f"--set {setting!r}: the value is not valid YAML ({str(exc).splitlines()[0]})") from None
    given += [(k, v) for k, v in (("images", images), ("shortlist", shortlist)) if v is not None]
    for key, value in given:
        if key not in entry.defaults:
            flag = f"--{key}" if key in ("images", "shortlist") else f"--set {key}"
            raise MMCoreError(f"{flag}: head {entry.name!r} has no option {key!r}{did_you_mean(key, entry.defaults)}; "
                              f"options: {', '.join(entry.defaults)}")
        options[key] = value
    return options


def result_path(found: Target, head: str, dataset: str, view: str, split: str, images: int | None,
                shortlist: int | None) -> Path:
    """``eval_<head>_<dataset>_<view>_<split>[_images<N>][_shortlist<K>].json`` beside the checkpoint."""
    parts = [f"eval_{head}_{dataset}_{view}_{split}"]
    parts += [f"images{images}"] if images else []
    parts += [f"shortlist{shortlist}"] if shortlist else []
    return found.checkpoint.parent / ("_".join(parts) + ".json")


def run_evaluation(ctx: RunContext, found: Target, head_name: str, options: dict[str, Any],
                   data: tuple[str, str, str], max_text_len: int) -> dict[str, float]:
    """Build backbone, pre-trained tasks and head with the run's builders, load the checkpoint, evaluate the view."""
    from mmcore.builders import build_backbone, build_head, pretrained_tasks
    from mmcore.checkpointing import check_fits, read_checkpoint
    from mmcore.evaluation import evaluate

    ckpt = read_checkpoint(found.checkpoint)
    torch.manual_seed(ctx.seed)
    backbone = build_backbone(ctx)
    check_fits(ckpt["backbone"], backbone, "mmcore evaluate", str(found.checkpoint))
    backbone.load_state_dict(ckpt["backbone"])
    state = {"backbone": ckpt["backbone"], "tasks": stage_task_states(found, ckpt), "stage": None}
    pretrained = pretrained_tasks(ctx, state) if found.kind == "zero_shot" else {}
    head = build_head(ctx, {"head": head_name, "options": options}, pretrained, backbone.hidden_size)
    if found.kind == "finetune":
        try:
            head.load_state_dict(ckpt["head"])
        except RuntimeError as exc:
            raise MMCoreError(f"{found.checkpoint}: its head weights do not fit head {head_name!r}: "
                              f"{str(exc).splitlines()[0]}") from None
    elif not head.zero_shot_ready:
        raise MMCoreError(f"head {head_name!r} needs a fine-tuned checkpoint (finetune/<name>/checkpoint.pt): "
                          f"no zero-shot head in {found.checkpoint}, whose stage trained no task it can start from "
                          f"(it trained {', '.join(ckpt.get('tasks', {})) or 'none'})")
    item = {"data": [{"dataset": data[0], "view": data[1], "split": data[2]}], "max_text_len": max_text_len}
    return evaluate(ctx, head, backbone, item, data[2])


def stage_task_states(found: Target, ckpt: dict[str, Any]) -> dict[str, Any]:
    """The task weights a zero-shot evaluation may start from: those the checkpoint's own stage trained, as in a
    run (a head of an earlier stage was trained for weights that have changed since); none for a fine-tuning."""
    return dict(ckpt.get("tasks", {})) if found.kind == "zero_shot" else {}
