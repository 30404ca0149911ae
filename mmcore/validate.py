"""Check a recipe against the schema and the registry before any training, and fill in every default.

``resolve(recipe, registry)`` returns the resolved recipe (a plain dict the engine runs) or raises
:class:`RecipeInvalid` listing every problem, each with its file, line and key path.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from mmcore.errors import MMCoreError, RecipeError, UnknownNameError, did_you_mean
from mmcore.recipe import KeyPath, Recipe
from mmcore.registry import Registry

TOP_KEYS = {
    "name": "run name (default: the recipe file's stem)",
    "description": "free text",
    "seed": "random seed (int)",
    "plugins": "local .py plugin files, relative to the recipe",
    "device": "auto | cpu | cuda | cuda:N",
    "output_dir": "parent directory of runs (default runs)",
    "log_every": "log training metrics every N steps",
    "eval_batch_size": "batch size for evaluation",
    "backbone": "{name: ..., options}",
    "datasets": "{dataset name: options}",
    "stages": "the pre-training curriculum, in order",
    "zero_shot": "evaluations of the pre-trained model without fine-tuning",
    "finetune": "downstream fine-tunings, each from the final pre-trained weights",
}
STAGE_KEYS = {"name", "init", "data", "tasks", "epochs", "batch_size", "max_steps", "optim", "max_text_len"}
DATA_KEYS = {"dataset", "view", "split", "weight", "limit"}
OPTIM_KEYS = {"lr", "weight_decay", "warmup", "clip", "betas", "eps"}
FINETUNE_KEYS = {"name", "head", "options", "data", "eval_split", "epochs", "batch_size", "max_steps", "optim",
                 "max_text_len"}
ZERO_SHOT_KEYS = {"name", "head", "options", "data", "max_text_len"}

DEFAULT_OPTIM = {"lr": 1.0e-4, "weight_decay": 0.01, "warmup": 0.05, "clip": 1.0, "betas": [0.9, 0.999], "eps": 1.0e-6}


class RecipeInvalid(MMCoreError):
    """One or more recipe problems; ``errors`` holds each located :class:`RecipeError`."""

    def __init__(self, errors: list[RecipeError]):
        self.errors = errors
        head = f"recipe is invalid ({len(errors)} problem{'s' if len(errors) != 1 else ''}):"
        super().__init__("\n".join([head, *(f"  - {e}" for e in errors)]))


class _Checker:
    def __init__(self, recipe: Recipe, registry: Registry):
        self.recipe, self.registry = recipe, registry
        self.errors: list[RecipeError] = []

    def fail(self, key: KeyPath, message: str) -> None:
        self.errors.append(self.recipe.error(key, message))

    def keys(self, mapping: Any, allowed: Any, key: KeyPath, what: str) -> bool:
        if not isinstance(mapping, dict):
            self.fail(key, f"{what} must be a mapping, got {type(mapping).__name__}")
            return False
        for name in mapping:
            if name not in allowed:
                self.fail((*key, str(name)), f"unknown key {name!r} in {what}{did_you_mean(str(name), allowed)}; "
                                             f"allowed: {', '.join(sorted(allowed))}")
        return True

    def number(self, value: Any, key: KeyPath, *, integer: bool = False, minimum: float | None = None,
               exclusive: bool = False, maximum: float | None = None) -> None:
        kinds = (int,) if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds):
            self.fail(key, f"must be {'an integer' if integer else 'a number'}, got {value!r}")
            return
        if minimum is not None and (value <= minimum if exclusive else value < minimum):
            self.fail(key, f"must be {'>' if exclusive else '>='} {minimum}, got {value!r}")
        if maximum is not None and value > maximum:
            self.fail(key, f"must be <= {maximum}, got {value!r}")

    def entry(self, kind: str, name: Any, key: KeyPath) -> Any:
        if not isinstance(name, str):
            self.fail(key, f"{kind} name must be a string, got {name!r}")
            return None
        try:
            return self.registry.get(kind, name)
        except UnknownNameError as exc:
            self.fail(key, str(exc))
            return None

    def options(self, given: Any, defaults: dict[str, Any], key: KeyPath, what: str, extra: set[str] = frozenset()) -> dict:
        given = {} if given is None else given
        if not self.keys(given, set(defaults) | set(extra), key, what):
            return dict(defaults)
        return {**copy.deepcopy(defaults), **given}


def resolve(recipe: Recipe, registry: Registry) -> dict[str, Any]:
    """The recipe with every default filled in, or :class:`RecipeInvalid` naming every problem."""
    c = _Checker(recipe, registry)
    data = recipe.data
    c.keys(data, TOP_KEYS, (), "the recipe")
    out: dict[str, Any] = {
        "name": str(data.get("name") or recipe.path.stem),
        "seed": data.get("seed", 0),
        "device": data.get("device", "auto"),
        "output_dir": data.get("output_dir", "runs"),
        "log_every": data.get("log_every", 20),
        "eval_batch_size": data.get("eval_batch_size", 256),
        "plugins": [str(p) for p in (data.get("plugins") or [])],
    }
    if "description" in data:
        out["description"] = data["description"]
    c.number(out["seed"], ("seed",), integer=True, minimum=0)
    c.number(out["log_every"], ("log_every",), integer=True, minimum=1)
    c.number(out["eval_batch_size"], ("eval_batch_size",), integer=True, minimum=1)
    out["backbone"] = _backbone(c, data.get("backbone"))
    out["datasets"] = _datasets(c, data.get("datasets") or {})
    stages = data.get("stages") or []
    if not isinstance(stages, list):
        c.fail(("stages",), "stages must be a list")
        stages = []
    out["stages"] = [_stage(c, s, i, out["datasets"]) for i, s in enumerate(stages)]
    _unique_names(c, out["stages"], "stages")
    out["zero_shot"] = _downstream(c, data.get("zero_shot") or [], "zero_shot", ZERO_SHOT_KEYS, out["datasets"])
    out["finetune"] = _downstream(c, data.get("finetune") or [], "finetune", FINETUNE_KEYS, out["datasets"])
    _unique_names(c, out["zero_shot"] + out["finetune"], "downstream")
    if c.errors:
        raise RecipeInvalid(c.errors)
    return out


def _backbone(c: _Checker, spec: Any) -> dict[str, Any]:
    if not isinstance(spec, dict) or "name" not in spec:
        c.fail(("backbone",), "backbone must be a mapping with a 'name' (e.g. {name: lxmert_s})")
        return {"name": None}
    entry = c.entry("backbone", spec["name"], ("backbone", "name"))
    if entry is None:
        return dict(spec)
    options = c.options({k: v for k, v in spec.items() if k != "name"}, entry.defaults, ("backbone",),
                        f"backbone {entry.name!r} options")
    return {"name": entry.name, **options}


def _datasets(c: _Checker, spec: Any) -> dict[str, dict[str, Any]]:
    if not isinstance(spec, dict):
        c.fail(("datasets",), "datasets must map dataset names to their options")
        return {}
    out = {}
    for name, options in spec.items():
        entry = c.entry("dataset", name, ("datasets", str(name)))
        if entry is not None:
            out[name] = c.options(options, entry.defaults, ("datasets", str(name)), f"dataset {name!r} options")
    return out


def _data(c: _Checker, spec: Any, key: KeyPath, datasets: dict[str, dict], split: str) -> list[dict[str, Any]]:
    items = spec if isinstance(spec, list) else [spec]
    out = []
    for index, item in enumerate(items):
        ikey = (*key, str(index)) if isinstance(spec, list) else key
        if item is None or not c.keys(item, DATA_KEYS, ikey, "data"):
            if item is None:
                c.fail(ikey, "data is required: {dataset: NAME, view: VIEW}")
            continue
        name = item.get("dataset") or (next(iter(datasets)) if len(datasets) == 1 else None)
        if name is None:
            c.fail(ikey, "data needs 'dataset' (or exactly one entry under the top-level 'datasets')")
            continue
        entry = c.entry("dataset", name, (*ikey, "dataset"))
        view = item.get("view")
        if entry is not None and view not in entry.provides:
            c.fail((*ikey, "view"), f"dataset {name!r} has no view {view!r}{did_you_mean(str(view), entry.provides)}; "
                                    f"views: {', '.join(sorted(entry.provides))}")
        weight = item.get("weight", 1.0)
        c.number(weight, (*ikey, "weight"), minimum=0, exclusive=True)
        limit = item.get("limit")
        if limit is not None:
            c.number(limit, (*ikey, "limit"), integer=True, minimum=1)
        out.append({"dataset": name, "view": view, "split": item.get("split", split), "weight": weight,
                    "limit": limit, "_key": ikey})
    return out


def _provided(c: _Checker, data: list[dict[str, Any]]) -> frozenset[str] | None:
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


def _optim(c: _Checker, spec: Any, key: KeyPath, defaults: dict[str, Any]) -> dict[str, Any]:
    optim = c.options(spec, defaults, key, "optim")
    c.number(optim["lr"], (*key, "lr"), minimum=0, exclusive=True)
    c.number(optim["weight_decay"], (*key, "weight_decay"), minimum=0)
    c.number(optim["warmup"], (*key, "warmup"), minimum=0, maximum=1)
    if optim["clip"] is not None:
        c.number(optim["clip"], (*key, "clip"), minimum=0, exclusive=True)
    return optim


def _schedule(c: _Checker, spec: dict[str, Any], key: KeyPath, out: dict[str, Any]) -> None:
    out["epochs"] = spec.get("epochs", 1)
    out["batch_size"] = spec.get("batch_size", 32)
    out["max_steps"] = spec.get("max_steps")
    out["max_text_len"] = spec.get("max_text_len", 20)
    c.number(out["epochs"], (*key, "epochs"), integer=True, minimum=0)
    c.number(out["batch_size"], (*key, "batch_size"), integer=True, minimum=1)
    c.number(out["max_text_len"], (*key, "max_text_len"), integer=True, minimum=3)
    if out["max_steps"] is not None:
        c.number(out["max_steps"], (*key, "max_steps"), integer=True, minimum=1)


def _stage(c: _Checker, spec: Any, index: int, datasets: dict[str, dict]) -> dict[str, Any]:
    key: KeyPath = ("stages", str(index))
    if not c.keys(spec, STAGE_KEYS, key, "a stage"):
        return {"name": f"stage{index}", "tasks": {}, "data": []}
    out: dict[str, Any] = {"name": str(spec.get("name") or f"stage{index}"), "init": spec.get("init", "previous")}
    _init(c, out["init"], (*key, "init"))
    out["data"] = _data(c, spec.get("data"), (*key, "data"), datasets, "train")
    _schedule(c, spec, key, out)
    out["optim"] = _optim(c, spec.get("optim"), (*key, "optim"), DEFAULT_OPTIM)
    tasks = spec.get("tasks")
    out["tasks"] = {}
    if not isinstance(tasks, dict) or not tasks:
        c.fail((*key, "tasks"), "a stage needs at least one task, e.g. tasks: {mlm: {}}")
        return out
    provided = _provided(c, out["data"])
    for name, options in tasks.items():
        tkey = (*key, "tasks", str(name))
        entry = c.entry("task", name, tkey)
        if entry is None:
            continue
        resolved = c.options(options, {"weight": 1.0, **entry.defaults}, tkey, f"task {name!r} options")
        c.number(resolved["weight"], (*tkey, "weight"), minimum=0)
        out["tasks"][name] = resolved
        if provided is not None:
            missing = sorted(entry.requires - provided)
            if missing:
                views = ", ".join(f"{d['dataset']}/{d['view']}" for d in out["data"])
                c.fail(tkey, f"stage {out['name']!r}: task {name!r} requires batch field(s) {', '.join(missing)} "
                             f"that its data ({views}) does not provide")
    return out


def _init(c: _Checker, init: Any, key: KeyPath) -> None:
    if init in ("previous", "none", None):
        return
    if not isinstance(init, str):
        c.fail(key, f"init must be 'previous', 'none' or a checkpoint path, got {init!r}")
        return
    base = Path(c.recipe.where(key)[0]).parent if not c.recipe.where(key)[0].startswith("--set") else Path.cwd()
    path = Path(init) if Path(init).is_absolute() else (base / init)
    if not path.exists() and not Path(init).exists():
        c.fail(key, f"checkpoint not found: {init}")


def _downstream(c: _Checker, items: Any, section: str, allowed: set[str], datasets: dict) -> list[dict[str, Any]]:
    if not isinstance(items, list):
        c.fail((section,), f"{section} must be a list")
        return []
    out = []
    for index, spec in enumerate(items):
        key: KeyPath = (section, str(index))
        if not c.keys(spec, allowed, key, f"a {section} entry"):
            continue
        entry = c.entry("head", spec.get("head"), (*key, "head"))
        item: dict[str, Any] = {"name": str(spec.get("name") or f"{section}_{spec.get('head')}"), "head": spec.get("head")}
        split = "test" if section == "zero_shot" else "train"
        item["data"] = _data(c, spec.get("data"), (*key, "data"), datasets, split)
        if len(item["data"]) > 1:
            c.fail((*key, "data"), f"a {section} entry takes a single data view")
        if entry is not None:
            item["options"] = c.options(spec.get("options"), entry.defaults, (*key, "options"), f"head {entry.name!r} options")
            provided = _provided(c, item["data"])
            if provided is not None and entry.requires - provided:
                c.fail((*key, "data"), f"head {entry.name!r} requires batch field(s) "
                                       f"{', '.join(sorted(entry.requires - provided))} that its data does not provide")
        if section == "finetune":
            _schedule(c, spec, key, item)
            item["eval_split"] = spec.get("eval_split", "test")
            item["optim"] = _optim(c, spec.get("optim"), (*key, "optim"), {**DEFAULT_OPTIM, "lr": 5.0e-5, "warmup": 0.1, "clip": 5.0})
        else:
            item["max_text_len"] = spec.get("max_text_len", 20)
        out.append(item)
    return out


def _unique_names(c: _Checker, items: list[dict[str, Any]], what: str) -> None:
    seen: set[str] = set()
    for item in items:
        if item["name"] in seen:
            c.fail((what,), f"two {what} entries are named {item['name']!r}; give each a distinct 'name'")
        seen.add(item["name"])


def strip_private(resolved: dict[str, Any]) -> dict[str, Any]:
    """A copy without internal bookkeeping keys (``_key``), for writing ``recipe.resolved.yaml``."""
    if isinstance(resolved, dict):
        return {k: strip_private(v) for k, v in resolved.items() if not str(k).startswith("_")}
    if isinstance(resolved, list):
        return [strip_private(v) for v in resolved]
    return resolved
