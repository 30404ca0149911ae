"""Check a recipe against the schema and the registry before any training, and fill in every default.

``resolve(recipe, registry)`` returns the resolved recipe (a plain dict the engine runs) or raises
:class:`RecipeInvalid` listing every problem, each with its file, line and key path.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mmcore.checker import Checker, RecipeInvalid
from mmcore.data.store import CACHE_MODES
from mmcore.errors import MMCoreError, did_you_mean
from mmcore.loggers import resolve_loggers
from mmcore.recipe import KeyPath, Recipe, format_key
from mmcore.registry import Registry
from mmcore.schema.keys import (
    DATA, FINETUNE, FINETUNE_OPTIM, NONFINITE, OPTIM, PRECISIONS, SCHEDULE, SELECT, STAGE, TASK, TOP, ZERO_SHOT,
    Section, batch_size_rule,
)
from mmcore.selectcheck import check_selection

__all__ = ["DEVICE", "Checker", "RecipeInvalid", "resolve", "strip_private"]

DEFAULT_OPTIM = OPTIM.defaults()  # a pre-training stage's optimiser defaults
DEVICE = re.compile(str(TOP["device"].pattern))


def resolve(recipe: Recipe, registry: Registry) -> dict[str, Any]:
    """The recipe with every default filled in, or :class:`RecipeInvalid` naming every problem."""
    c = Checker(recipe, registry)
    data = recipe.data
    c.keys(data, TOP.keys, (), "the recipe")
    # Names under the top-level `datasets`, known or not: an unknown one is reported once, not per data entry.
    c.declared = [str(n) for n in data["datasets"]] if isinstance(data.get("datasets"), dict) else []
    scalars = {name: default for name, default in TOP.defaults().items() if TOP[name].section is None}
    out: dict[str, Any] = {"name": str(data.get("name") or recipe.path.stem),
                           **{name: data.get(name, default) for name, default in scalars.items()}}
    out["plugins"] = [str(p) for p in (out["plugins"] or [])]
    for name in ("description", "threads"):  # only when given, so that the resolved text of others is unchanged
        if name in data:
            out[name] = data[name]
    if "seeds" in data:  # likewise
        out["seeds"] = _seeds(c, data["seeds"])
    for name, declared in TOP.keys.items():
        if declared.minimum is not None and name in out:
            c.value(declared, out[name], (name,))
    every = out["checkpoint_every"]
    c.checkpoint_every = every if isinstance(every, int) and not isinstance(every, bool) and every >= 0 else 0
    workers = out["num_workers"]
    c.num_workers = workers if isinstance(workers, int) and not isinstance(workers, bool) and workers >= 0 else 0
    if out["precision"] not in PRECISIONS:
        c.fail(("precision",), f"precision must be one of {', '.join(PRECISIONS)}, got {out['precision']!r}")
    if not isinstance(out["compile"], bool):
        c.fail(("compile",), f"compile must be true or false, got {out['compile']!r}")
    if not isinstance(out["device"], str) or not DEVICE.match(out["device"]):
        c.fail(("device",), f"device must be auto, cpu, cuda, cuda:N or mps, got {out['device']!r}")
    out["backbone"] = _backbone(c, data.get("backbone"))
    out["datasets"] = _datasets(c, data.get("datasets") or {})
    loggers = resolve_loggers(c, data.get("loggers"))
    if loggers:  # only when given, so that the resolved text of recipes without it is unchanged
        out["loggers"] = loggers
    stages = data.get("stages") or []
    if not isinstance(stages, list):
        c.fail(("stages",), "stages must be a list")
        stages = []
    out["stages"] = [_stage(c, s, i, out["datasets"]) for i, s in enumerate(stages)]
    _unique_names(c, out["stages"], "stage")
    out["zero_shot"] = _downstream(c, data.get("zero_shot") or [], ZERO_SHOT, out["datasets"])
    out["finetune"] = _downstream(c, data.get("finetune") or [], FINETUNE, out["datasets"])
    _unique_names(c, out["zero_shot"] + out["finetune"], "downstream")
    _downstream_init(c, out["zero_shot"] + out["finetune"], [s["name"] for s in out["stages"]])
    if c.errors:
        raise RecipeInvalid(c.errors)
    return out


def _seeds(c: Checker, seeds: Any) -> list[Any]:
    """``seeds``: a non-empty list of distinct non-negative integers (each becomes one run's ``seed``)."""
    if not isinstance(seeds, list) or not seeds:
        c.fail(("seeds",), f"seeds must be a non-empty list of integers, e.g. [0, 1, 2], got {seeds!r}")
        return seeds if isinstance(seeds, list) else []
    for index, seed in enumerate(seeds):
        c.number(seed, ("seeds", str(index)), integer=True, minimum=0)
    ints = [s for s in seeds if isinstance(s, int) and not isinstance(s, bool)]
    repeated = sorted({s for s in ints if ints.count(s) > 1})
    if repeated:
        c.fail(("seeds",), f"seeds must be distinct (each runs into its own seed_<n> directory); repeated: "
                           f"{', '.join(map(str, repeated))}")
    return list(seeds)


def _backbone(c: Checker, spec: Any) -> dict[str, Any]:
    if not isinstance(spec, dict) or "name" not in spec:
        c.fail(("backbone",), "backbone must be a mapping with a 'name' (e.g. {name: NAME}; mmcore list-backbones lists them)")
        return {"name": None}
    entry = c.entry("backbone", spec["name"], ("backbone", "name"))
    if entry is None:
        return dict(spec)
    options = c.options({k: v for k, v in spec.items() if k != "name"}, entry.defaults, ("backbone",),
                        f"backbone {entry.name!r} options", types=entry.types)
    c.plugin_options(entry, options, ("backbone",))
    return {"name": entry.name, **options}


def _datasets(c: Checker, spec: Any) -> dict[str, dict[str, Any]]:
    if not isinstance(spec, dict):
        c.fail(("datasets",), "datasets must map dataset names to their options")
        return {}
    out = {}
    for name, options in spec.items():
        entry = c.entry("dataset", name, ("datasets", str(name)))
        if entry is not None:
            out[name] = c.options(options, entry.defaults, ("datasets", str(name)), f"dataset {name!r} options",
                                  types=entry.types)
            c.plugin_options(entry, out[name], ("datasets", str(name)))
            cache = out[name].get("features_cache")
            if "features_cache" in entry.defaults and cache not in CACHE_MODES:
                c.fail(("datasets", str(name), "features_cache"),
                       f"features_cache must be one of {', '.join(CACHE_MODES)}, got {cache!r}")
    return out


def _data(c: Checker, spec: Any, key: KeyPath, datasets: dict[str, dict], split: str) -> list[dict[str, Any]]:
    items = spec if isinstance(spec, list) else [spec]
    out = []
    for index, item in enumerate(items):
        ikey = (*key, str(index)) if isinstance(spec, list) else key
        if item is None or not c.keys(item, DATA.keys, ikey, "data"):
            if item is None:
                c.fail(ikey, "data is required: {dataset: NAME, view: VIEW}")
            continue
        name = item.get("dataset") or (c.declared[0] if len(c.declared) == 1 else None)
        if name is None:
            c.fail(ikey, "data needs 'dataset' (or exactly one entry under the top-level 'datasets')")
            continue
        if "dataset" not in item and name not in datasets:
            continue  # the implied dataset is unknown: already reported under `datasets`
        entry = c.entry("dataset", name, (*ikey, "dataset"))
        view = item.get("view")
        if entry is not None and view not in entry.provides:
            c.fail((*ikey, "view"), f"dataset {name!r} has no view {view!r}{did_you_mean(str(view), entry.provides)}; "
                                    f"views: {', '.join(sorted(entry.provides))}")
        weight, limit = item.get("weight", DATA["weight"].default), item.get("limit", DATA["limit"].default)
        c.value(DATA["weight"], weight, (*ikey, "weight"))
        c.value(DATA["limit"], limit, (*ikey, "limit"))
        out.append({"dataset": name, "view": view, "split": item.get("split", split), "weight": weight,
                    "limit": limit, "_key": ikey})
    return out


def _provided(c: Checker, data: list[dict[str, Any]]) -> frozenset[str] | None:
    fields = None
    for item in data:
        try:
            provides = c.registry.get("dataset", item["dataset"]).provides.get(item["view"])
        except MMCoreError:
            return None
        if provides is None:
            return None
        fields = provides if fields is None else fields & provides
    return fields


def _optim(c: Checker, spec: Any, key: KeyPath, section: Section) -> dict[str, Any]:
    optim = c.options(spec, section.defaults(), key, "optim", typed=False)
    for name in ("lr", "weight_decay", "warmup", "eps", "clip"):
        c.value(section[name], optim[name], (*key, name))
    betas = optim["betas"]
    if not isinstance(betas, list) or len(betas) != 2:
        c.fail((*key, "betas"), f"betas must be a list of two numbers, e.g. [0.9, 0.999], got {betas!r}")
    else:
        for i, beta in enumerate(betas):
            c.number(beta, (*key, "betas", str(i)), minimum=0, maximum=0.999999)
    if optim["nonfinite"] not in NONFINITE:
        c.fail((*key, "nonfinite"), f"nonfinite must be 'stop' or 'skip' (what a step with a NaN/inf loss does), "
                                    f"got {optim['nonfinite']!r}")
    return optim


def _schedule(c: Checker, spec: dict[str, Any], key: KeyPath, out: dict[str, Any]) -> None:
    recipe_wide = {"checkpoint_every": c.checkpoint_every, "num_workers": c.num_workers}
    for declared in SCHEDULE:
        out[declared.name] = spec.get(declared.name, recipe_wide.get(declared.name, declared.default))
        c.value(declared, out[declared.name], (*key, declared.name))
    sizes = (out["batch_size"], c.world_size, out["grad_accum"])
    if all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in sizes) and sizes[0] % (sizes[1] * sizes[2]):
        c.fail((*key, "batch_size"), batch_size_rule(*sizes))


def _stage(c: Checker, spec: Any, index: int, datasets: dict[str, dict]) -> dict[str, Any]:
    key: KeyPath = ("stages", str(index))
    if not c.keys(spec, STAGE.keys, key, "a stage"):
        return {"name": f"stage{index}", "tasks": {}, "data": []}
    out: dict[str, Any] = {"name": str(spec.get("name") or f"stage{index}"), "_key": key}
    out["init"] = _init(c, spec.get("init", STAGE["init"].default), (*key, "init"))
    if out["init"] not in ("previous", "none", None):
        file, line = c.recipe.where((*key, "init"))
        out["_init_where"] = f"{file}{f':{line}' if line else ''}: {format_key((*key, 'init'))}"
    out["data"] = _data(c, spec.get("data"), (*key, "data"), datasets, "train")
    _schedule(c, spec, key, out)
    out["optim"] = _optim(c, spec.get("optim"), (*key, "optim"), OPTIM)
    tasks = spec.get("tasks")
    out["tasks"] = {}
    if tasks is not None and not isinstance(tasks, dict):
        c.fail((*key, "tasks"), f"tasks must map task names to their options, e.g. tasks: {{TASK: {{}}, OTHER: "
                                f"{{weight: 0.5}}}} (mmcore list-tasks lists them), got a {type(tasks).__name__}")
        return out
    if not tasks:
        c.fail((*key, "tasks"), "a stage needs at least one task, e.g. tasks: {TASK: {}} (mmcore list-tasks lists them)")
        return out
    provided = _provided(c, out["data"])
    for name, options in tasks.items():
        tkey = (*key, "tasks", str(name))
        entry = c.entry("task", name, tkey)
        if entry is None:
            continue
        resolved = {**TASK.defaults(), **c.options(options, entry.defaults, tkey, f"task {name!r} options",
                                                   set(TASK), types=entry.types)}
        c.value(TASK["weight"], resolved["weight"], (*tkey, "weight"))
        c.plugin_options(entry, {k: v for k, v in resolved.items() if k != "weight"}, tkey)
        out.setdefault("_where", {})[name] = c.located(tkey)  # where the build at the run's start reports
        out["tasks"][name] = resolved
        if provided is not None:
            missing = sorted(entry.requires - provided)
            if missing:
                views = ", ".join(f"{d['dataset']}/{d['view']}" for d in out["data"])
                c.fail(tkey, f"stage {out['name']!r}: task {name!r} requires batch field(s) {', '.join(missing)} "
                             f"that its data ({views}) does not provide")
    return out


def _init(c: Checker, init: Any, key: KeyPath) -> Any:
    """``previous``/``none``, or the checkpoint path made absolute (relative to the file that names it)."""
    if init in ("previous", "none", None):
        return init
    if not isinstance(init, str):
        c.fail(key, f"init must be 'previous', 'none' or a checkpoint path, got {init!r}")
        return init
    origin = c.recipe.where(key)[0]
    base = Path(origin).parent if not origin.startswith("--set") else Path.cwd()
    given = Path(init).expanduser()
    path = given if given.is_absolute() else base / given
    if not path.exists() and given.exists():
        path = given  # relative to the working directory, as before paths were resolved against the recipe
    if not path.is_file():
        c.fail(key, f"checkpoint not found: {init} (looked for {path.resolve()})")
        return init
    # Imported here so that torch is loaded only when a recipe names a checkpoint.
    from mmcore.checkpointing import read_backbone_weights

    try:
        read_backbone_weights(path.resolve())
    except MMCoreError as exc:
        c.fail(key, str(exc))
    return str(path.resolve())


def _downstream(c: Checker, items: Any, declared: Section, datasets: dict) -> list[dict[str, Any]]:
    section = declared.name
    if not isinstance(items, list):
        c.fail((section,), f"{section} must be a list")
        return []
    out = []
    for index, spec in enumerate(items):
        key: KeyPath = (section, str(index))
        if not c.keys(spec, declared.keys, key, f"a {section} entry"):
            continue
        entry = c.entry("head", spec.get("head"), (*key, "head"))
        item: dict[str, Any] = {"name": str(spec.get("name") or f"{section}_{spec.get('head')}"), "head": spec.get("head"),
                                "_key": key}
        if "init" in spec:  # only when given, so that the resolved text of recipes without it is unchanged
            item["init"] = spec["init"]
        split = "test" if section == "zero_shot" else "train"
        item["data"] = _data(c, spec.get("data"), (*key, "data"), datasets, split)
        if len(item["data"]) > 1:
            c.fail((*key, "data"), f"a {section} entry takes a single data view")
        if entry is not None:
            item["options"] = c.options(spec.get("options"), entry.defaults, (*key, "options"),
                                        f"head {entry.name!r} options", types=entry.types)
            c.plugin_options(entry, item["options"], (*key, "options"))
            item["_where"] = c.located((*key, "options"))
            provided = _provided(c, item["data"])
            if provided is not None and entry.requires - provided:
                c.fail((*key, "data"), f"head {entry.name!r} requires batch field(s) "
                                       f"{', '.join(sorted(entry.requires - provided))} that its data does not provide")
        if section == "finetune":
            _schedule(c, spec, key, item)
            if "epochs" not in spec and entry is not None:  # the head's own default (the paper's, for built-ins)
                item["epochs"] = int(getattr(entry.factory, "epochs", 1))
            item["eval_split"] = spec.get("eval_split", FINETUNE["eval_split"].default)
            item["select"] = c.options(spec.get("select"), SELECT.defaults(), (*key, "select"), "select", set(SELECT),
                                       types={name: k.type for name, k in SELECT.keys.items()})
            check_selection(c, item, datasets)
            item["optim"] = _optim(c, spec.get("optim"), (*key, "optim"), FINETUNE_OPTIM)
        else:
            item["max_text_len"] = spec.get("max_text_len", ZERO_SHOT["max_text_len"].default)
            c.value(ZERO_SHOT["max_text_len"], item["max_text_len"], (*key, "max_text_len"))
        out.append(item)
    return out


def _downstream_init(c: Checker, items: list[dict[str, Any]], stages: list[str]) -> None:
    """A zero-shot or fine-tuning ``init`` names a pre-training stage of the recipe (it starts from its weights)."""
    for item in items:
        if "init" in item and item["init"] not in stages:
            known = f"stages: {', '.join(stages)}" if stages else "the recipe has no pre-training stages"
            hint = did_you_mean(str(item["init"]), stages)
            c.fail((*item["_key"], "init"), f"init must name a pre-training stage of this recipe, whose final weights "
                                            f"the entry starts from; got {item['init']!r}{hint}; {known}")


def _unique_names(c: Checker, items: list[dict[str, Any]], what: str) -> None:
    seen: dict[str, KeyPath] = {}
    for item in items:
        key = item.get("_key", (what,))
        if item["name"] in seen:
            c.fail((*key, "name"), f"{what} name {item['name']!r} is used twice (first by {format_key(seen[item['name']])});"
                                   " give each a distinct 'name'")
        seen.setdefault(item["name"], key)


def strip_private(resolved: dict[str, Any]) -> dict[str, Any]:
    """A copy without internal bookkeeping keys (``_key``), for writing ``recipe.resolved.yaml``."""
    if isinstance(resolved, dict):
        return {k: strip_private(v) for k, v in resolved.items() if not str(k).startswith("_")}
    if isinstance(resolved, list):
        return [strip_private(v) for v in resolved]
    return resolved
