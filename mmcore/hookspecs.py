"""Every hook a plugin may implement (pluggy project ``mmcore``, entry-point group ``mmcore``).

Implement a hook as a module-level function (or a logger's method) decorated with ``@mmcore.hookimpl``, with the
hook's argument names (pluggy passes them by name; a subset is fine). Every hook is optional.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:  # annotations only: importing the hooks must stay cheap (no torch, no click)
    from collections.abc import Mapping
    from pathlib import Path

    import click

    from mmcore.api import Backbone, RunInfo
    from mmcore.registry import Registry

hookspec = pluggy.HookspecMarker("mmcore")


@hookspec
def mmcore_register_backbones(registry: Registry) -> None:
    """Add backbones. Called each time plugins are loaded (every command), before any recipe is read.

    ``registry``: where to add them, ``registry.add_backbone(name, factory, defaults=...)``; ``factory(config,
    info)`` returns a :class:`mmcore.api.Backbone`. Example::

        @mmcore.hookimpl
        def mmcore_register_backbones(registry):
            registry.add_backbone("bag_of_regions", build_bag_of_regions, defaults={"hidden_size": 64})
    """


@hookspec
def mmcore_register_tasks(registry: Registry) -> None:
    """Add pre-training tasks. Called each time plugins are loaded.

    ``registry``: ``registry.add_task(TaskClass)`` with a :class:`mmcore.api.Task` subclass (its class attributes
    declare its name and options). Example::

        @mmcore.hookimpl
        def mmcore_register_tasks(registry):
            registry.add_task(ITC)
    """


@hookspec
def mmcore_register_datasets(registry: Registry) -> None:
    """Add datasets. Called each time plugins are loaded.

    ``registry``: ``registry.add_dataset(DatasetClass)`` with a :class:`mmcore.api.Dataset` subclass. Example::

        @mmcore.hookimpl
        def mmcore_register_datasets(registry):
            registry.add_dataset(CaptionFolder)
    """


@hookspec
def mmcore_register_heads(registry: Registry) -> None:
    """Add downstream heads. Called each time plugins are loaded.

    ``registry``: ``registry.add_head(HeadClass)`` with a :class:`mmcore.api.Head` subclass. Example::

        @mmcore.hookimpl
        def mmcore_register_heads(registry):
            registry.add_head(RegionCount)
    """


@hookspec
def mmcore_register_extractors(registry: Registry) -> None:
    """Add feature extractors for ``mmcore data extract`` and ``mmcore data prepare``. Called each time plugins are
    loaded.

    ``registry``: ``registry.add_extractor(name, ExtractorClass, defaults=...)``; the class (a
    :class:`mmcore.data.extract.Extractor`) is built with the user's options. Example::

        @mmcore.hookimpl
        def mmcore_register_extractors(registry):
            registry.add_extractor("grey_grid", GreyGrid, defaults=GreyGrid.defaults)
    """


@hookspec
def mmcore_register_loggers(registry: Registry) -> None:
    """Add metrics loggers. Called each time plugins are loaded.

    ``registry``: ``registry.add_logger(name, factory, defaults=...)``; ``factory(run_dir, **options)`` returns an
    object with an ``@mmcore.hookimpl`` method ``mmcore_log(run, step, metrics)`` and optionally ``close()``.
    Example::

        @mmcore.hookimpl
        def mmcore_register_loggers(registry):
            registry.add_logger("csv", CsvLogger, defaults=CsvLogger.defaults)
    """


@hookspec
def mmcore_register_commands(cli: click.Group) -> None:
    """Add click commands to the ``mmcore`` group. Called when ``mmcore NAME`` names no built-in command (so
    ``mmcore --help`` and shell completion, which load no plugin, do not list plugin commands).

    ``cli``: the ``mmcore`` :class:`click.Group`. Example::

        @mmcore.hookimpl
        def mmcore_register_commands(cli):
            cli.add_command(itc_stats)
    """


@hookspec(firstresult=True)
def mmcore_export_backbone(name: str, backbone: Backbone, directory: Path) -> dict[str, Any] | None:
    """Write a trained backbone as a Hugging Face model directory. Called by ``mmcore export``, plugin by plugin
    until one returns a result.

    ``name``: the registered backbone name; ``backbone``: the trained :class:`mmcore.api.Backbone`; ``directory``:
    an empty folder. If the backbone is yours, write ``config.json`` and ``model.safetensors`` that ``transformers``
    loads (plus any side file mmcore needs to rebuild it exactly) and return ``{"files": [...], "options": {...},
    "differences": [...]}``: the files written, the backbone options that rebuild it (with ``weights:
    <directory>``), and what transformers will not reproduce. Else return None. Example::

        @mmcore.hookimpl
        def mmcore_export_backbone(name, backbone, directory):
            return None if name != "bag_of_regions" else save_bag(backbone, directory)
    """


@hookspec
def mmcore_stage_start(run: RunInfo, stage: Mapping[str, Any]) -> None:
    """Called on every process before a pre-training stage or a fine-tuning trains (also when it resumes).

    ``run``: the run's :class:`mmcore.api.RunInfo` (directory, recipe, seed, rank); ``stage``: the resolved recipe
    entry, read-only (``stage["name"]``, ``stage["epochs"]``, ...). Example::

        @mmcore.hookimpl
        def mmcore_stage_start(run, stage):
            print(f"starting {stage['name']} in {run.run_dir}")
    """


@hookspec
def mmcore_stage_end(run: RunInfo, stage: Mapping[str, Any], metrics: dict[str, float]) -> None:
    """Called on every process after a stage or a fine-tuning ends.

    ``run`` and ``stage`` as for :func:`mmcore_stage_start`; ``metrics``: its final metrics (a stage's last losses,
    a fine-tuning's evaluation). Example::

        @mmcore.hookimpl
        def mmcore_stage_end(run, stage, metrics):
            print(f"{stage['name']} done: {metrics}")
    """


@hookspec
def mmcore_log(run: RunInfo, step: int, metrics: dict[str, Any]) -> None:
    """Called on the main process with every metrics record: training steps and validations. The core's own logger
    writes ``metrics.jsonl`` through this hook (first); the recipe's ``loggers`` are registered for the run.

    ``run``: the run's :class:`mmcore.api.RunInfo`; ``step``: the record's step; ``metrics``: the whole record
    (``scope``, ``step``, ``epoch``, losses, ``lr``, ...), not to be changed. Example::

        @mmcore.hookimpl
        def mmcore_log(run, step, metrics):
            if "itc" in metrics: print(metrics["scope"], step, metrics["itc"])
    """
