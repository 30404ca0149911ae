"""mmcore: vision-and-language pre-training where everything is a plugin and a curriculum is a YAML file."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

from mmcore.errors import MMCoreError, RecipeError

if TYPE_CHECKING:
    from mmcore.api import (
        PAIR_FIELDS,
        Backbone,
        BackboneOutput,
        Batch,
        DataInfo,
        Dataset,
        EvalContext,
        Example,
        ExampleSource,
        Head,
        Task,
    )
    from mmcore.display import Metric
    from mmcore.registry import Registry

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("mmcore")
"""Decorator for plugin hook implementations (``@mmcore.hookimpl``)."""

# The plugin API needs torch; it is imported on first use, so `mmcore --help` and `--version` stay fast.
_LAZY = {"Registry": "mmcore.registry", "Metric": "mmcore.display", **{name: "mmcore.api" for name in (
    "PAIR_FIELDS", "Backbone", "BackboneOutput", "Batch", "DataInfo", "Dataset", "EvalContext", "Example",
    "ExampleSource", "Head", "Task")}}


def __getattr__(name: str) -> Any:
    """The plugin API's names (``mmcore.Task``, ...), imported when first used."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mmcore' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value

__all__ = [
    "PAIR_FIELDS",
    "Backbone",
    "BackboneOutput",
    "Batch",
    "DataInfo",
    "Dataset",
    "EvalContext",
    "Example",
    "ExampleSource",
    "Head",
    "MMCoreError",
    "Metric",
    "RecipeError",
    "Registry",
    "Task",
    "__version__",
    "hookimpl",
]
