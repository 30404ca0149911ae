"""Metrics loggers: the core's JSONL logger (always on) and the recipe's ``loggers``, as pluggy plugins of one run.

Every metrics record goes through the ``mmcore_log`` hook. The core's :class:`JsonlLogger` appends it to the run
directory's ``metrics.jsonl``. Each logger named under the recipe's ``loggers:`` (or by ``mmcore run --logger``)
is built by its registered factory when the run starts, registered with the run's plugin manager, and
unregistered and closed when the run ends, also when it fails. Only the main process logs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING, Any

import pluggy

from mmcore import hookimpl
from mmcore.errors import MMCoreError, PluginError

if TYPE_CHECKING:
    from mmcore.api import RunInfo
    from mmcore.checker import Checker
    from mmcore.recipe import Recipe
    from mmcore.registry import Registry
    from mmcore.rundir import RunDir

JSONL = "jsonl"  # the core's logger: not a registry entry, because it cannot be turned off


class JsonlLogger:
    """The core's logger: appends every record, as one JSON line, to the run directory's ``metrics.jsonl``."""

    def __init__(self, run_dir: RunDir) -> None:
        self.run_dir = run_dir

    @hookimpl(tryfirst=True)  # the run's own file has the record before any other logger can fail on it
    def mmcore_log(self, run: RunInfo, step: int, metrics: dict[str, Any]) -> None:
        """Append ``metrics`` (the whole record) to ``metrics.jsonl``."""
        self.run_dir.log_metrics(metrics)


def enable_loggers(recipe: Recipe, names: tuple[str, ...] | list[str]) -> None:
    """``mmcore run --logger NAME``: as if the recipe's ``loggers`` named NAME; options it already gives are kept."""
    if not names:
        return
    loggers = recipe.data.get("loggers")
    if loggers is None:
        loggers = recipe.data["loggers"] = {}
    if not isinstance(loggers, dict):
        return  # validation reports the malformed key where the recipe wrote it
    for name in names:
        if name not in loggers:
            loggers[name] = {}
            recipe.origins[("loggers", name)] = (f"--logger {name}", None)


def resolve_loggers(checker: Checker, spec: Any) -> dict[str, dict[str, Any]]:
    """The recipe's ``loggers:`` (name → options) with each logger's defaults filled in and its option types
    checked; problems are reported through ``checker``, located at their key."""
    if spec is None:
        return {}
    if not isinstance(spec, dict):
        checker.fail(("loggers",), "loggers must map logger names to their options, e.g. loggers: {tensorboard: "
                                   f"{{log_dir: tb}}}}, got {spec!r}")
        return {}
    out = {}
    for name, options in spec.items():
        key = ("loggers", str(name))
        if name == JSONL:
            checker.fail(key, "metrics.jsonl is always written (it is the core's own logger); remove 'jsonl' here")
            continue
        entry = checker.entry("logger", name, key)
        if entry is not None:
            out[entry.name] = checker.options(options, entry.defaults, key, f"logger {entry.name!r} options",
                                              types=entry.types)
            checker.plugin_options(entry, out[entry.name], key)
    return out


@contextmanager
def run_loggers(manager: pluggy.PluginManager, registry: Registry, run_dir: RunDir,
                loggers: dict[str, dict[str, Any]]) -> Iterator[list[Any]]:
    """Register the JSONL logger and ``loggers`` (name → resolved options) with ``manager`` for the block;
    unregister and close them when it ends, however it ends. On processes other than the main one: nothing."""
    with ExitStack() as stack:
        active: list[Any] = []
        if run_dir.main:
            jsonl = JsonlLogger(run_dir)
            _register(manager, stack, JSONL, jsonl, "mmcore")
            active.append(jsonl)
            for name, options in loggers.items():
                entry = registry.get("logger", name)
                try:
                    logger = entry.factory(run_dir.path, **options)
                except MMCoreError:
                    raise
                except Exception as exc:
                    raise PluginError(f"logger {name!r} ({registry.label(entry.origin)}) failed to start: {exc!r}") from exc
                if callable(getattr(logger, "close", None)):
                    stack.callback(logger.close)  # after unregistering (callbacks run last in, first out)
                _register(manager, stack, name, logger, entry.origin)
                active.append(logger)
        yield active


def _plugin_name(name: str) -> str:
    # Apart from module plugins' names: a logger may share its name with the plugin that registers it.
    return f"mmcore-logger:{name}"


def _register(manager: pluggy.PluginManager, stack: ExitStack, name: str, logger: Any, origin: str) -> None:
    try:
        manager.register(logger, name=_plugin_name(name))
    except Exception as exc:  # pluggy's validation: a hook implementation whose arguments the hook does not have
        raise PluginError(f"logger {name!r} (plugin {origin!r}) cannot receive records: {exc}") from exc
    stack.callback(manager.unregister, logger)
    if not any(impl.plugin is logger for impl in manager.hook.mmcore_log.get_hookimpls()):
        raise PluginError(f"logger {name!r} (plugin {origin!r}): the object its factory returned has no "
                          "@mmcore.hookimpl method mmcore_log(run, step, metrics)")
