"""The plugin manager: entry points (group ``mmcore``), ``MMCORE_PLUGINS``, ``MMCORE_DISABLE_PLUGINS``, recipe files.

``MMCORE_PLUGINS`` is a comma-separated list of importable module names or ``.py`` file paths loaded in
addition to the installed entry points. ``MMCORE_DISABLE_PLUGINS`` is a comma-separated list of plugins not to
load: entry-point names, distribution names, module names or file stems; a name that matches none is warned about.

An installed entry point that fails to import is contained: it is reported (entry point, module, distribution,
the error) by ``mmcore plugins`` and in a one-line warning, everything else still loads, and asking for a name
it may have registered fails naming it.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import importlib.metadata
import os
import sys
import traceback
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pluggy

from mmcore import hookspecs
from mmcore.errors import PluginError, did_you_mean
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
    status: str = "loaded"  # "loaded", "broken" or "disabled"
    error: str = ""  # why it is broken

    def label(self) -> str:
        """``plugin 'name' (distribution 1.0)``: how messages name this plugin."""
        if not self.distribution:
            return f"plugin {self.name!r}"
        return f"plugin {self.name!r} ({' '.join(p for p in (self.distribution, self.version) if p)})"


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

    def broken(self) -> list[PluginInfo]:
        """The plugins that failed to import."""
        return [info for info in self.infos.values() if info.status == "broken"]

    def label(self, origin: str) -> str:
        """How messages name the plugin ``origin`` (a registry entry's), with its distribution and version."""
        info = self.infos.get(origin)
        return info.label() if info is not None else f"plugin {origin!r}"


_warned: set[str] = set()


def warn(message: str) -> None:
    """One ``warning:`` line on stderr, once per process (plugins are loaded by several commands' paths)."""
    if message not in _warned:
        _warned.add(message)
        sys.stderr.write(f"warning: {message}\n")


def _disabled() -> set[str]:
    return {n.strip() for n in os.environ.get("MMCORE_DISABLE_PLUGINS", "").split(",") if n.strip()}


def load_plugins(extra: Iterable[str | Path] = (), extra_source: str = "recipe") -> Plugins:
    """Load every plugin (entry points, ``MMCORE_PLUGINS``, then ``extra`` files/modules) and fill a registry."""
    manager = pluggy.PluginManager(GROUP)
    manager.add_hookspecs(hookspecs)
    disabled = _disabled()
    infos: dict[str, PluginInfo] = {}
    known = _load_entry_points(manager, infos, disabled)
    env_items = [i.strip() for i in os.environ.get("MMCORE_PLUGINS", "").split(",") if i.strip()]
    for item in env_items:
        known |= _register_extra(manager, infos, item, "MMCORE_PLUGINS", disabled)
    for item in extra:
        known |= _register_extra(manager, infos, str(item), extra_source, disabled)
    for name in sorted(disabled - known):
        warn(f"MMCORE_DISABLE_PLUGINS names {name!r}, which is no plugin entry point, distribution, module or file "
             f"here{did_you_mean(name, known)}; known: {', '.join(sorted(known))}")
    registry = Registry()
    registry.labels.update({name: info.label() for name, info in infos.items()})
    for info in infos.values():
        if info.status == "broken":
            registry.broken.append(f"{info.label()}, entry point {info.name} = {info.module}, failed to import "
                                   f"({info.error}) and may have registered it")
            warn(f"{info.label()} is broken and was not loaded: entry point {info.name} = {info.module}: {info.error} "
                 "(mmcore plugins lists it)")
    for kind, hook_name in REGISTER_HOOKS.items():
        for impl in getattr(manager.hook, hook_name).get_hookimpls():
            _call_register(registry, infos, kind, hook_name, impl)
    return Plugins(manager, registry, infos)


def _load_entry_points(manager: pluggy.PluginManager, infos: dict[str, PluginInfo], disabled: set[str]) -> set[str]:
    """Import and register every ``mmcore`` entry point not disabled; keep a broken one as a ``broken`` info.
    Returns every name ``MMCORE_DISABLE_PLUGINS`` could use for them (entry points, distributions, modules)."""
    known: set[str] = set()
    for dist in importlib.metadata.distributions():
        dist_name = dist.metadata["name"] or "?"
        for ep in dist.entry_points:
            if ep.group != GROUP or ep.name in infos:  # the first on sys.path wins, as Python imports it
                continue
            known |= {ep.name, dist_name, ep.module}
            info = PluginInfo(ep.name, "entry point", ep.value, dist_name, dist.version or "")
            infos[ep.name] = info
            if {ep.name, dist_name, ep.module} & disabled:
                info.status = "disabled"
                continue
            try:
                manager.register(ep.load(), name=ep.name)
            except Exception as exc:  # contained: one broken installed package must not stop every command
                info.status, info.error = "broken", _describe(exc)
    return known


def _describe(exc: BaseException) -> str:
    """``ImportError: No module named 'x' (at module.py:3)``: the error and the deepest frame that raised it."""
    frames = traceback.extract_tb(exc.__traceback__)
    at = f" (at {Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {exc}{at}"


def _call_register(registry: Registry, infos: dict[str, PluginInfo], kind: str, hook_name: str, impl: Any) -> None:
    """Run one plugin's registration hook; record what it added."""
    scoped = registry.scoped(impl.plugin_name)
    before = {e.name for e in registry.entries(kind)}
    info = infos.setdefault(impl.plugin_name, PluginInfo(impl.plugin_name, "other", impl.plugin_name))
    try:
        impl.function(*[scoped for _ in impl.argnames])
    except PluginError:
        raise
    except Exception as exc:
        raise PluginError(f"{info.label()} failed in {hook_name}: {_describe(exc)}") from exc
    added = sorted({e.name for e in registry.entries(kind)} - before)
    info.registered.extend(f"{kind} {n}" for n in added)


def _register_extra(manager: pluggy.PluginManager, infos: dict[str, PluginInfo], item: str, source: str,
                    disabled: set[str]) -> set[str]:
    """Import and register a module or file plugin unless disabled; the names that could disable it."""
    name = Path(item).stem if item.endswith(".py") else item
    if name in disabled:
        return {name}
    module = _import_plugin(item, source)
    if module.__name__ in disabled:
        return {name, module.__name__}
    if manager.is_registered(module) or manager.get_plugin(name) is not None:
        return {name, module.__name__}
    manager.register(module, name=name)
    infos[name] = PluginInfo(name, source, module.__name__, "", str(getattr(module, "__version__", "")))
    return {name, module.__name__}


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
