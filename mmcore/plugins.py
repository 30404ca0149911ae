"""The plugin manager: entry points (group ``mmcore``), ``MMCORE_PLUGINS``, ``MMCORE_DISABLE_PLUGINS``, recipe files.

``MMCORE_PLUGINS`` is a comma-separated list of importable module names or ``.py`` file paths loaded in
addition to the installed entry points. ``MMCORE_DISABLE_PLUGINS`` is a comma-separated list of plugin names
(entry-point names, module names or file stems) that are not loaded.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pluggy

from mmcore import hookspecs
from mmcore.errors import PluginError
from mmcore.registry import Registry

GROUP = "mmcore"
REGISTER_HOOKS = {
    "backbone": "mmcore_register_backbones",
    "task": "mmcore_register_tasks",
    "dataset": "mmcore_register_datasets",
    "head": "mmcore_register_heads",
    "extractor": "mmcore_register_extractors",
    "logger": "mmcore_register_loggers",
}


@dataclass
class PluginInfo:
    """What ``mmcore plugins`` shows about one plugin."""

    name: str
    source: str  # "entry point", "MMCORE_PLUGINS" or "recipe"
    module: str
    distribution: str = ""
    version: str = ""
    registered: list[str] = field(default_factory=list)


@dataclass
class Plugins:
    """A loaded plugin manager with the registry it filled and a description of each plugin."""

    manager: pluggy.PluginManager
    registry: Registry
    infos: dict[str, PluginInfo]

    @property
    def hook(self) -> Any:
        """The pluggy hook relay (``plugins.hook.mmcore_log(...)``)."""
        return self.manager.hook


def _disabled() -> set[str]:
    return {n.strip() for n in os.environ.get("MMCORE_DISABLE_PLUGINS", "").split(",") if n.strip()}


def load_plugins(extra: Iterable[str | Path] = (), extra_source: str = "recipe") -> Plugins:
    """Load every plugin (entry points, ``MMCORE_PLUGINS``, then ``extra`` files/modules) and fill a registry."""
    manager = pluggy.PluginManager(GROUP)
    manager.add_hookspecs(hookspecs)
    disabled = _disabled()
    for name in disabled:
        manager.set_blocked(name)
    infos: dict[str, PluginInfo] = {}
    try:
        manager.load_setuptools_entrypoints(GROUP)
    except Exception as exc:  # a broken third-party plugin must not look like an mmcore crash
        raise PluginError(f"failed to load an entry-point plugin of group {GROUP!r}: {exc!r}") from exc
    for plugin, dist in manager.list_plugin_distinfo():
        name = manager.get_name(plugin) or getattr(plugin, "__name__", "?")
        infos[name] = PluginInfo(name, "entry point", getattr(plugin, "__name__", "?"), dist.metadata["name"],
                                 dist.version)
    env_items = [i.strip() for i in os.environ.get("MMCORE_PLUGINS", "").split(",") if i.strip()]
    for item in env_items:
        _register_extra(manager, infos, item, "MMCORE_PLUGINS", disabled)
    for item in extra:
        _register_extra(manager, infos, str(item), extra_source, disabled)
    registry = Registry()
    for kind, hook_name in REGISTER_HOOKS.items():
        for impl in getattr(manager.hook, hook_name).get_hookimpls():
            scoped = registry.scoped(impl.plugin_name)
            before = {e.name for e in registry.entries(kind)}
            try:
                impl.function(*[scoped for _ in impl.argnames])
            except PluginError:
                raise
            except Exception as exc:
                raise PluginError(f"plugin {impl.plugin_name!r} failed in {hook_name}: {exc!r}") from exc
            added = sorted({e.name for e in registry.entries(kind)} - before)
            info = infos.setdefault(impl.plugin_name, PluginInfo(impl.plugin_name, "other", impl.plugin_name))
            info.registered.extend(f"{kind} {n}" for n in added)
    return Plugins(manager, registry, infos)


def _register_extra(manager: pluggy.PluginManager, infos: dict[str, PluginInfo], item: str, source: str,
                    disabled: set[str]) -> None:
    module = _import_plugin(item, source)
    name = Path(item).stem if item.endswith(".py") else item
    if name in disabled or module.__name__ in disabled:
        return
    if manager.is_registered(module) or manager.get_plugin(name) is not None:
        return
    manager.register(module, name=name)
    infos[name] = PluginInfo(name, source, module.__name__, "", str(getattr(module, "__version__", "")))


def _import_plugin(item: str, source: str) -> ModuleType:
    if item.endswith(".py") or os.sep in item:
        path = Path(item).expanduser().resolve()
        if not path.is_file():
            raise PluginError(f"plugin file not found: {item} (from {source})")
        # A stable unique module name so the same file imported twice is the same module.
        mod_name = f"mmcore_local_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
        if mod_name in sys.modules:
            return sys.modules[mod_name]
        spec = importlib.util.spec_from_file_location(mod_name, path)
        if spec is None or spec.loader is None:
            raise PluginError(f"cannot import plugin file {item} (from {source})")
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            del sys.modules[mod_name]
            raise PluginError(f"plugin file {item} (from {source}) failed to import: {exc!r}") from exc
        return module
    try:
        return importlib.import_module(item)
    except ImportError as exc:
        raise PluginError(f"plugin module {item!r} (from {source}) cannot be imported: {exc}") from exc
