"""Every hook a plugin may implement (pluggy project ``mmcore``, entry-point group ``mmcore``)."""

from __future__ import annotations

from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("mmcore")


@hookspec
def mmcore_register_backbones(registry: Any) -> None:
    """Add backbones with ``registry.add_backbone(name, factory)``."""


@hookspec
def mmcore_register_tasks(registry: Any) -> None:
    """Add pre-training tasks with ``registry.add_task(TaskClass)``."""


@hookspec
def mmcore_register_datasets(registry: Any) -> None:
    """Add datasets with ``registry.add_dataset(DatasetClass)``."""


@hookspec
def mmcore_register_heads(registry: Any) -> None:
    """Add downstream heads with ``registry.add_head(HeadClass)``."""


@hookspec
def mmcore_register_extractors(registry: Any) -> None:
    """Add feature extractors with ``registry.add_extractor(name, factory)``."""


@hookspec
def mmcore_register_loggers(registry: Any) -> None:
    """Add metrics loggers with ``registry.add_logger(name, factory)``: ``factory(run_dir, **options)`` returns an
    object with an ``@mmcore.hookimpl`` method ``mmcore_log(run, step, metrics)`` and optionally ``close()``."""


@hookspec
def mmcore_register_commands(cli: Any) -> None:
    """Add click commands to the ``mmcore`` group. Called when ``mmcore NAME`` names no built-in command (so
    ``mmcore --help`` and shell completion, which load no plugin, do not list plugin commands)."""


@hookspec(firstresult=True)
def mmcore_export_backbone(name: str, backbone: Any, directory: Any) -> dict[str, Any] | None:
    """``mmcore export``: if ``backbone`` (registered as ``name``) is yours, write it into ``directory`` (a
    ``pathlib.Path``) as a Hugging Face model directory (``config.json`` and ``model.safetensors`` that
    ``transformers`` loads, plus any side file mmcore needs to rebuild it exactly) and return
    ``{"files": [...], "options": {...}, "differences": [...]}``: the files written, the backbone options that
    rebuild it (with ``weights: <directory>``), and what transformers will not reproduce. Else return None."""


@hookspec
def mmcore_stage_start(run: Any, stage: Any) -> None:
    """Called before a pre-training stage or fine-tuning starts."""


@hookspec
def mmcore_stage_end(run: Any, stage: Any, metrics: dict[str, float]) -> None:
    """Called after a stage or fine-tuning ends, with its final metrics."""


@hookspec
def mmcore_log(run: Any, step: int, metrics: dict[str, float]) -> None:
    """Called on the main process with every logged metrics record (``metrics.jsonl`` is written by the core's
    logger through this hook; the recipe's ``loggers`` are registered as plugins for the run)."""
