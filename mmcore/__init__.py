"""mmcore: vision-and-language pre-training where everything is a plugin and a curriculum is a YAML file."""

from __future__ import annotations

import pluggy

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
from mmcore.errors import MMCoreError, RecipeError
from mmcore.registry import Registry

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("mmcore")
"""Decorator for plugin hook implementations (``@mmcore.hookimpl``)."""

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
    "RecipeError",
    "Registry",
    "Task",
    "__version__",
    "hookimpl",
]
