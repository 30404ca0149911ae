"""The run context: everything one run (or one command over a run's model) works with, built once by
:meth:`RunContext.open` and passed to whoever needs it.

It holds the resolved recipe, the plugins, this process's place among the training processes and its device, the
run directory, the reporter, the data cache and the chosen thread count, and it resolves the primary dataset's
:class:`~mmcore.api.DataInfo` and tokenizer, so nothing sizes a model by hand. Datasets are prepared once per
context (:class:`Datasets`); the run's loggers receive records through :meth:`RunContext.log_record`.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch

from mmcore import distributed
from mmcore.api import DataInfo, Dataset, ExampleSource, RunInfo
from mmcore.blame import blame, blame_hook, call, failures_logged
from mmcore.distributed import Dist
from mmcore.errors import MMCoreError
from mmcore.loggers import run_loggers
from mmcore.plugins import Plugins
from mmcore.precision import PrecisionChoice, choose_precision
from mmcore.progress import Reporter
from mmcore.registry import Registry
from mmcore.rundir import RunDir
from mmcore.schema.keys import setting
from mmcore.threads import ThreadChoice, apply_threads, choose_threads
from mmcore.training import MixedExamples

DATA_SECTIONS = ("stages", "finetune", "zero_shot")  # where a recipe's first dataset is looked for, in order


def default_cache_dir() -> Path:
    """Where generated/converted data is cached: ``$MMCORE_CACHE`` or ``~/.cache/mmcore``."""
    return Path(os.environ.get("MMCORE_CACHE", Path.home() / ".cache" / "mmcore"))


def pick_device(spec: str) -> torch.device:
    """``auto`` means CUDA when available, else CPU."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MMCoreError(f"device {spec!r} requested but CUDA is not available")
    return device


def primary_dataset_name(recipe: dict[str, Any]) -> str | None:
    """The first dataset the recipe uses (stages, then fine-tunings, then zero-shot): it sizes the backbone and gives
    the tokenizer. None when the recipe uses no data."""
    for section in DATA_SECTIONS:
        for item in recipe[section]:
            if item["data"]:
                return str(item["data"][0]["dataset"])
    return None


class Datasets:
    """The recipe's datasets, each built with its options and prepared once (rank 0 first: it generates or
    converts, the others then read the cache)."""

    def __init__(self, registry: Registry, options: dict[str, Any], cache_dir: Path, dist: Dist,
                 reporter: Reporter) -> None:
        self.registry, self.options, self.cache_dir = registry, options, cache_dir
        self.dist, self.reporter = dist, reporter
        self._prepared: dict[str, Dataset] = {}

    def get(self, name: str) -> Dataset:
        """The prepared dataset ``name``."""
        if name not in self._prepared:
            entry = self.registry.get("dataset", name)
            dataset = call(self.registry, entry, "__init__", entry.factory,
                           self.options.get(name, dict(entry.defaults)), self.cache_dir)
            self.reporter.message(f"[dim]preparing dataset {name}…[/dim]")
            with self.dist.main_first(), blame(self.registry, entry, "prepare"):
                dataset.prepare(self.reporter.message)
            self._prepared[name] = dataset
        return self._prepared[name]


@dataclass(frozen=True, eq=False)
class RunContext:
    """One run's (or one command's) recipe, plugins, processes, device, run directory, reporter, data and threads.
    Build it with :meth:`open`; ``run_dir`` None is a command that writes no run (``mmcore params``)."""

    recipe: dict[str, Any]
    plugins: Plugins
    run_dir: RunDir | None
    reporter: Reporter
    cache_dir: Path
    threads: ThreadChoice
    processes: Dist
    device: torch.device
    precision: PrecisionChoice
    datasets: Datasets
    info: DataInfo
    tokenizer: Any
    run_info: RunInfo | None = field(default=None, repr=False)

    @classmethod
    def open(cls, recipe: dict[str, Any], plugins: Plugins, run_dir: RunDir | None, reporter: Reporter,
             cache_dir: Path | None = None, threads: int | None = None, sizing: str | None = None) -> RunContext:
        """Set up the processes, choose and apply the thread count (``threads``: ``--threads``), pick the device and
        prepare the primary dataset for its info and tokenizer (``sizing``: the dataset that sizes the model when the
        recipe uses none). A plugin failure here is written to the run's ``errors.log``."""
        dist = distributed.setup()
        # Progress and messages from rank 0 only; the others would repeat them.
        reporter = reporter if dist.is_main else Reporter(reporter.console, quiet=True)
        device = dist.device(pick_device(recipe["device"]))
        choice = _use_threads(threads, recipe, reporter)
        cache = cache_dir or default_cache_dir()
        datasets = Datasets(plugins.registry, recipe["datasets"], cache, dist, reporter)
        with failures_logged(run_dir.path if run_dir is not None and run_dir.main else None):
            info, tokenizer = _sizing(plugins.registry, datasets, primary_dataset_name(recipe) or sizing)
        run_info = None if run_dir is None else _run_info(recipe, run_dir, dist)
        precision = choose_precision(setting(recipe, "precision"), device)
        return cls(recipe, plugins, run_dir, reporter, cache, choice, dist, device, precision, datasets, info, tokenizer,
                   run_info)

    # ----- what the context holds ---------------------------------------------------------------------------------
    @property
    def registry(self) -> Registry:
        """The plugins' registry."""
        return self.plugins.registry

    @property
    def seed(self) -> int:
        """The recipe's training seed."""
        return int(self.recipe["seed"])

    @property
    def run(self) -> RunDir:
        """The run directory (an error for a context opened without one)."""
        if self.run_dir is None:
            raise MMCoreError("this command has no run directory to read or write")
        return self.run_dir

    @property
    def hook_run(self) -> RunInfo:
        """What the run hooks receive as ``run``: read-only facts about the run, not the context."""
        if self.run_info is None:
            raise MMCoreError("this command has no run directory, so no run for the hooks")
        return self.run_info

    # ----- data ---------------------------------------------------------------------------------------------------
    def dataset(self, name: str) -> Dataset:
        """The prepared dataset ``name`` with the recipe's options (built once per context)."""
        return self.datasets.get(name)

    def views(self, data: list[dict[str, Any]], split: str | None = None) -> tuple[list[ExampleSource], MixedExamples]:
        """The views of a recipe entry's ``data`` (in ``split``, else each one's own) and their mixture."""
        views = [call(self.registry, self.registry.get("dataset", d["dataset"]), "view",
                      self.dataset(d["dataset"]).view, d["view"], split or d["split"]) for d in data]
        return views, MixedExamples(views, [d.get("limit") for d in data])

    # ----- the run's loggers --------------------------------------------------------------------------------------
    @contextmanager
    def logging(self) -> Iterator[None]:
        """The run's loggers (``metrics.jsonl``'s and the recipe's ``loggers``) registered for the block; a plugin
        failure leaving it has its traceback written to ``errors.log``."""
        with failures_logged(self.run.path if self.run.main else None), \
                run_loggers(self.plugins.manager, self.registry, self.run, self.recipe.get("loggers") or {}):
            yield

    def log(self, scope: str, step: int, epoch: int, metrics: dict[str, float]) -> None:
        """Log a training step's metrics (rounded) to ``metrics.jsonl`` and the ``mmcore_log`` hook."""
        self.log_record({"scope": scope, "step": step, "epoch": epoch, **{k: round(v, 6) for k, v in metrics.items()}})

    def log_record(self, record: dict[str, Any]) -> None:
        """Pass ``record`` to the ``mmcore_log`` hook: the core's logger appends it to ``metrics.jsonl``, and every
        enabled logger receives it (see :mod:`mmcore.loggers`)."""
        if self.processes.is_main:  # the record is already reduced over processes
            with blame_hook(self.registry, self.plugins.manager, "mmcore_log"):
                self.plugins.hook.mmcore_log(run=self.hook_run, step=int(record["step"]), metrics=record)


def _use_threads(cli: int | None, recipe: dict[str, Any], reporter: Reporter) -> ThreadChoice:
    """Choose and set the intra-op thread count (``--threads``, ``OMP_NUM_THREADS``, the recipe's ``threads``, else
    the CPUs this process may use); the run records it in ``results.json`` under ``_run``."""
    choice = choose_threads(cli=cli, recipe=recipe.get("threads"))
    apply_threads(choice)
    reporter.message(f"[dim]{choice.threads} intra-op thread(s) ({choice.source})[/dim]")
    return choice


def _sizing(registry: Registry, datasets: Datasets, name: str | None) -> tuple[DataInfo, Any]:
    """(info, tokenizer) of the dataset ``name``, prepared: what sizes the models and tokenises the text."""
    if name is None:
        raise MMCoreError("the recipe uses no data: add a stage, zero_shot or finetune entry")
    dataset = datasets.get(name)
    entry = registry.get("dataset", name)
    return call(registry, entry, "info", dataset.info), call(registry, entry, "tokenizer", dataset.tokenizer)


def _run_info(recipe: dict[str, Any], run_dir: RunDir, dist: Dist) -> RunInfo:
    """What the run hooks receive as ``run``: read-only facts (a copy of the recipe), not the context."""
    return RunInfo(run_dir=run_dir.path, recipe_name=str(recipe.get("name", "")),
                   recipe=MappingProxyType(copy.deepcopy(recipe)), seed=int(recipe["seed"]), rank=dist.rank,
                   world_size=dist.world_size)
