"""mmcore: vision-and-language pre-training where everything is a plugin and a curriculum is a YAML file.

What a plugin may import is :data:`PUBLIC_MODULES` (this package's ``__all__``, :mod:`mmcore.api`, the data toolkit
:mod:`mmcore.data` declares, :mod:`mmcore.runplots` and :mod:`mmcore.testing`); every other module is the core's
own and may change. The built-in plugins keep to it too (``tests/test_public_api.py``); see docs/plugins.md.
"""

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
        RunInfo,
        Task,
    )
    from mmcore.display import Metric
    from mmcore.registry import Registry

__version__ = "0.1.0"

# The modules a plugin may import; a module that declares ``__all__`` offers only those names, and
# ``mmcore.data.__all__`` names the public modules of the data toolkit.
PUBLIC_MODULES = ("mmcore", "mmcore.api", "mmcore.data", "mmcore.runplots", "mmcore.testing")

hookimpl = pluggy.HookimplMarker("mmcore")
"""Decorator for plugin hook implementations (``@mmcore.hookimpl``)."""

# The plugin API needs torch; it is imported on first use, so `mmcore --help` and `--version` stay fast.
_LAZY = {"Registry": "mmcore.registry", "Metric": "mmcore.display", **{name: "mmcore.api" for name in (
    "PAIR_FIELDS", "Backbone", "BackboneOutput", "Batch", "DataInfo", "Dataset", "EvalContext", "Example",
    "ExampleSource", "Head", "RunInfo", "Task")}}


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
    "PUBLIC_MODULES",
    "RecipeError",
    "Registry",
    "RunInfo",
    "Task",
    "__version__",
    "hookimpl",
]
