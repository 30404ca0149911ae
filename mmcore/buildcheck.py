"""Build every piece of a recipe once before anything trains, so that an option a plugin rejects fails first.

``mmcore validate`` calls each plugin's declared ``check_options(options)``
(:meth:`mmcore.checker.Checker.plugin_options`); the start of ``mmcore run``, once the data's
:class:`~mmcore.api.DataInfo` is known, builds the backbone, every stage's tasks and every head on the meta device
(shapes only: no memory, no initialisation cost, no random numbers drawn) (:func:`build_all`). Either way a
rejection is an :class:`~mmcore.errors.MMCoreError` with the plugin's own message, located at the recipe's file,
line and key.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from pathlib import Path
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from mmcore.api import DataInfo
from mmcore.blame import blame, call
from mmcore.context import primary_dataset_name
from mmcore.errors import MMCoreError, OptionError, RecipeError
from mmcore.registry import Entry, Registry


@contextmanager
def _untouched_rng() -> Iterator[None]:
    """Leave torch's, Python's and numpy's random state as they were: building is not part of the run."""
    python, numpy = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            random.setstate(python)
            np.random.set_state(numpy)


def _build(entry: Entry, where: str, label: str, *args: Any, **options: Any) -> Any:
    try:
        return entry.factory(*args, **options)
    except RecipeError:
        raise
    except OptionError as exc:
        raise MMCoreError(f"{where}.{exc.option}: {entry.kind} {entry.name!r} ({label}): {exc}") from None
    except Exception as exc:  # the plugin's own message; its traceback would say nothing to the recipe's author
        raise MMCoreError(f"{where}: {entry.kind} {entry.name!r} ({label}) could not be built with these options: "
                          f"{type(exc).__name__}: {exc}") from None


def build_all(recipe: dict[str, Any], registry: Registry, info: DataInfo) -> None:
    """Build the backbone, every stage's tasks and every zero-shot and fine-tuning head on the meta device;
    the first rejection raises, located at its recipe key."""
    spec = dict(recipe["backbone"])
    backbone_entry = registry.get("backbone", spec.pop("name"))
    with _untouched_rng(), torch.device("meta"):
        backbone = _build(backbone_entry, recipe.get("_where", {}).get("backbone", "backbone"),
                          registry.label(backbone_entry.origin), spec, info)
        tasks: dict[str, Any] = {}
        for index, stage in enumerate(recipe["stages"]):
            for name, options in stage["tasks"].items():
                entry = registry.get("task", name)
                where = stage.get("_where", {}).get(name, f"stages[{index}].tasks.{name}")
                opts = {k: v for k, v in options.items() if k != "weight"}
                tasks[name] = _build(entry, where, registry.label(entry.origin), info, backbone, **opts)
        for section in ("zero_shot", "finetune"):
            for index, item in enumerate(recipe[section]):
                entry = registry.get("head", item["head"])
                where = item.get("_where", f"{section}[{index}].options")
                _build(entry, where, registry.label(entry.origin), info, backbone.hidden_size, tasks,
                       **item.get("options", {}))


def build_with_data(recipe: dict[str, Any], registry: Registry, cache_dir: Path,
                    progress: Callable[[str], None] | None = None) -> None:
    """``mmcore validate --build``: prepare the recipe's first dataset (cached, as a run would) for its
    :class:`~mmcore.api.DataInfo`, then :func:`build_all`."""
    name = primary_dataset_name(recipe)
    if name is None:
        raise MMCoreError("the recipe uses no data, so nothing sizes its backbone, tasks and heads")
    entry = registry.get("dataset", name)
    options = recipe["datasets"].get(name, dict(entry.defaults))
    with blame(registry, entry, "prepare", "mmcore validate --build"):
        dataset = entry.factory(options, cache_dir)
        dataset.prepare(progress)
        info = dataset.info()
    build_all(recipe, registry, info)
