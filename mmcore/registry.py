"""One Registry per run: named backbones, tasks, datasets, heads, extractors and loggers, each with its origin."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from mmcore.display import metric_problems, view_label_problems
from mmcore.errors import PluginError, UnknownNameError
from mmcore.schema.types import conforms, describe

KINDS = ("backbone", "task", "dataset", "head", "extractor", "logger")


@dataclass(frozen=True)
class Entry:
    """One registered thing: its kind, name, factory (class or callable), origin plugin and declarations."""

    kind: str
    name: str
    factory: Callable[..., Any]
    origin: str
    description: str = ""
    requires: frozenset[str] = frozenset()
    provides: dict[str, frozenset[str]] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)
    types: dict[str, Any] = field(default_factory=dict)  # declared option types (annotations); others: the default's


class Registry:
    """Named factories by kind; registering a name twice is an error that names both plugins.

    ``labels`` maps a plugin name to how messages name it (with its distribution and version); ``broken``
    describes plugins that failed to import, which an unknown name's error mentions (they may have registered it).
    """

    def __init__(self) -> None:
        self._entries: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}
        self._origin = "<direct>"
        self.labels: dict[str, str] = {}
        self.broken: list[str] = []

    def scoped(self, origin: str) -> Registry:
        """A view of this registry that records ``origin`` as the registering plugin."""
        view = object.__new__(Registry)
        view._entries, view._origin, view.labels, view.broken = self._entries, origin, self.labels, self.broken
        return view

    def label(self, origin: str) -> str:
        """How messages name plugin ``origin``: ``plugin 'x' (distribution 1.0)`` when its distribution is known."""
        return self.labels.get(origin, f"plugin {origin!r}")

    def _add(self, entry: Entry) -> None:
        _check_types(entry)
        existing = self._entries[entry.kind].get(entry.name)
        if existing is not None:
            raise PluginError(f"{entry.kind} {entry.name!r} is registered twice: by {self.label(existing.origin)} and "
                              f"by {self.label(entry.origin)}; uninstall one or disable it with MMCORE_DISABLE_PLUGINS")
        self._entries[entry.kind][entry.name] = entry

    def _check_display(self, kind: str, cls: type, problems: list[str]) -> None:
        """A table-layout declaration (``Head.metrics``, ``Dataset.view_labels``) that cannot be shown: an error."""
        if problems:
            raise PluginError(f"{kind} {_name_of(cls)!r} of {self.label(self._origin)}: {'; '.join(problems)}")

    def add_backbone(self, name: str, factory: Callable[..., Any], defaults: dict[str, Any] | None = None,
                     description: str = "", types: dict[str, Any] | None = None) -> None:
        """Register ``factory(config, info) -> Backbone`` under ``name``; ``defaults`` lists its options, ``types``
        the type of those whose default does not say it (``{"weights": str | None}``)."""
        self._add(Entry("backbone", name, factory, self._origin, description or _doc(factory),
                        defaults=dict(defaults or {}), types=dict(types or {})))

    def add_task(self, cls: type) -> None:
        """Register a :class:`mmcore.Task` subclass under its ``name``."""
        self._add(Entry("task", _name_of(cls), cls, self._origin, _doc(cls), requires=frozenset(cls.requires),
                        defaults=dict(cls.defaults), types=_types(cls)))

    def add_head(self, cls: type) -> None:
        """Register a :class:`mmcore.Head` subclass under its ``name``."""
        self._check_display("head", cls, metric_problems(getattr(cls, "metrics", ())))
        self._add(Entry("head", _name_of(cls), cls, self._origin, _doc(cls), requires=frozenset(cls.requires),
                        defaults=dict(cls.defaults), types=_types(cls)))

    def add_dataset(self, cls: type) -> None:
        """Register a :class:`mmcore.Dataset` subclass under its ``name``; its ``views`` declare provided fields."""
        provides = {view: frozenset(fields) for view, fields in cls.views.items()}
        self._check_display("dataset", cls, view_label_problems(getattr(cls, "view_labels", {}), provides))
        self._add(Entry("dataset", _name_of(cls), cls, self._origin, _doc(cls), provides=provides,
                        defaults=dict(cls.defaults), types=_types(cls)))

    def add_extractor(self, name: str, factory: Callable[..., Any], description: str = "",
                      defaults: dict[str, Any] | None = None, types: dict[str, Any] | None = None) -> None:
        """Register a feature extractor ``factory(options) -> extractor`` under ``name``; ``defaults`` lists its
        options (see :mod:`mmcore.data.extract`), ``types`` the type of those whose default does not say it."""
        self._add(Entry("extractor", name, factory, self._origin, description or _doc(factory),
                        defaults=dict(defaults or {}), types=dict(types or _types(factory))))

    def add_logger(self, name: str, factory: Callable[..., Any], description: str = "",
                   defaults: dict[str, Any] | None = None, types: dict[str, Any] | None = None) -> None:
        """Register a metrics logger ``factory(run_dir, **options)`` under ``name``; the object it returns has an
        ``@mmcore.hookimpl`` ``mmcore_log(run, step, metrics)`` (optionally ``close()``). ``defaults`` lists its
        options (recipes may set only these, with the same types), ``types`` the type of those whose default does
        not say it (``{"entity": str | None}``)."""
        self._add(Entry("logger", name, factory, self._origin, description or _doc(factory),
                        defaults=dict(defaults or {}), types=dict(types or _types(factory))))

    def get(self, kind: str, name: str) -> Entry:
        """The entry, or an error listing every registered name of that kind."""
        try:
            return self._entries[kind][name]
        except KeyError:
            raise UnknownNameError(kind, name, self._entries[kind], self.broken) from None

    def names(self, kind: str) -> list[str]:
        """Sorted names of one kind."""
        return sorted(self._entries[kind])

    def entries(self, kind: str | None = None) -> Iterator[Entry]:
        """Every entry (of one kind), sorted by kind then name."""
        for k in KINDS if kind is None else (kind,):
            yield from (self._entries[k][n] for n in sorted(self._entries[k]))


def _name_of(cls: type) -> str:
    name = getattr(cls, "name", "")
    if not name:
        raise PluginError(f"{cls.__module__}.{cls.__qualname__} has no 'name' attribute")
    return name


def _doc(obj: Any) -> str:
    doc = (getattr(obj, "__doc__", None) or "").strip()
    return doc.splitlines()[0] if doc else ""


def _types(obj: Any) -> dict[str, Any]:
    """A plugin class's declared option types (its ``option_types``), if any."""
    return dict(getattr(obj, "option_types", None) or {})


def _check_types(entry: Entry) -> None:
    """Declared option types name declared options, are types the checker knows, and fit their defaults."""
    for option, annotation in entry.types.items():
        if option not in entry.defaults:
            raise PluginError(f"{entry.kind} {entry.name!r} declares the type of option {option!r}, which is not "
                              f"among its defaults ({', '.join(entry.defaults) or 'none'})")
        try:
            fits = conforms(entry.defaults[option], annotation)
        except TypeError as exc:
            raise PluginError(f"{entry.kind} {entry.name!r} option {option!r}: {exc}") from None
        if not fits:
            raise PluginError(f"{entry.kind} {entry.name!r} option {option!r}: its default "
                              f"{entry.defaults[option]!r} is not {describe(annotation)}, its declared type")
