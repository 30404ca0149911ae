"""Table layouts built from what plugins declare (``Head.metrics``, ``Task.display_name``/``display_order``,
``Dataset.view_labels``): metric labels and order, the one-row results table's and ``mmcore report``'s columns,
task names and order, view labels. Every table of results is laid out here, so the core names no plugin and a
third party's head is shown as a peer of the built-in ones."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from mmcore.display import Metric

FINETUNE, ZERO_SHOT = "finetune", "zero_shot"
KINDS = (FINETUNE, ZERO_SHOT)  # evaluation kinds, in the order tables show them
ZERO_SHOT_PREFIX = "ZS-"


@dataclass(frozen=True)
class Column:
    """A metric column: ``metric`` of the first evaluation of ``kind`` and ``head`` (or the one named ``name``)."""

    label: str
    kind: str
    head: str
    metric: str
    name: str | None = None
    scale: float = 100.0  # what the table multiplies the value by (Metric.scale)


def headline_key(result: dict[str, Any]) -> tuple[str, str] | None:
    """(kind, head) of an evaluation from the final pre-trained weights; one from an earlier stage (``init``) gets
    its own columns instead, so a headline number always means "after the whole curriculum"."""
    return None if "init" in result else (str(result.get("kind")), str(result.get("head")))


def evaluation_of(results: Mapping[str, Any], column: Column) -> dict[str, Any] | None:
    """The entry of ``results`` that ``column`` reads, if there is one."""
    for name, result in results.items():
        if name.startswith("_") or not isinstance(result, dict):
            continue
        if column.name is not None and name == column.name:
            return result
        if column.name is None and headline_key(result) == (column.kind, column.head):
            return result
    return None


def value_of(results: Mapping[str, Any], column: Column) -> float | None:
    """The column's metric as a fraction, or None (not evaluated, skipped, or absent)."""
    value = (evaluation_of(results, column) or {}).get("metrics", {}).get(column.metric)
    return float(value) if isinstance(value, (int, float)) else None


class Layout:
    """How tables show results, from the registered heads', tasks' and datasets' declarations.

    A name no plugin declares (a run of a plugin that is not installed now) is shown as it is: a metric by its key
    after the declared ones, a task in capitals after the known ones, a view by its name.
    """

    def __init__(self, heads: Mapping[str, Any] | None = None, tasks: Mapping[str, Any] | None = None,
                 datasets: Mapping[str, Any] | None = None) -> None:
        def by_order(classes: Mapping[str, Any]) -> dict[str, Any]:
            return dict(sorted(classes.items(), key=lambda kv: (getattr(kv[1], "display_order", 100), kv[0])))

        self.heads = by_order(heads or {})
        self.tasks = dict(tasks or {})
        self.datasets = dict(datasets or {})
        self._metric_rank: dict[str, int] = {}
        self._metric_label: dict[str, str] = {}
        self._metric_scale: dict[str, float] = {}
        for cls in self.heads.values():
            for metric in self.metrics(cls):
                self._metric_rank.setdefault(metric.key, len(self._metric_rank))
                self._metric_label.setdefault(metric.key, metric.shown_label)
                self._metric_scale.setdefault(metric.key, metric.scale)

    @classmethod
    def of(cls, registry: Any) -> Layout:
        """The layout of everything ``registry`` (a :class:`mmcore.registry.Registry`) holds."""
        def classes(kind: str) -> dict[str, Any]:
            return {entry.name: entry.factory for entry in registry.entries(kind)}

        return cls(classes("head"), classes("task"), classes("dataset"))

    @staticmethod
    def metrics(head: Any) -> tuple[Metric, ...]:
        """The metrics a head class declares."""
        return tuple(m for m in getattr(head, "metrics", ()) if isinstance(m, Metric))

    # ---- one run's evaluations ----------------------------------------------------------------------------------

    def metric_sort_key(self, key: str) -> tuple[int, str]:
        """Declared metrics in their heads' order, then any other by key."""
        return self._metric_rank.get(key, len(self._metric_rank)), key

    def metric_label(self, key: str) -> str:
        """A metric's label in a run's evaluation table (its key when no head declares it)."""
        return self._metric_label.get(key, key)

    def metric_scale(self, key: str) -> float:
        """What tables multiply a metric by: 100 (a fraction shown in %) unless its head declares otherwise."""
        return self._metric_scale.get(key, 100.0)

    def ordered_metrics(self, keys: Iterable[str]) -> list[str]:
        """``keys`` without repeats, in :meth:`metric_sort_key` order."""
        return sorted(dict.fromkeys(keys), key=self.metric_sort_key)

    # ---- columns where runs are compared ------------------------------------------------------------------------

    def _column(self, kind: str, head: str, metric: Metric) -> Column:
        prefix = ZERO_SHOT_PREFIX if kind == ZERO_SHOT else ""
        return Column(prefix + metric.shown_column, kind, head, metric.key, scale=metric.scale)

    def results_columns(self) -> list[Column]:
        """The one-row results table's columns: per kind, per head, the metrics marked ``results``."""
        return [self._column(kind, head, metric) for kind in KINDS for head, cls in self.heads.items()
                for metric in self.metrics(cls) if metric.results]

    def headline_columns(self) -> list[Column]:
        """``mmcore report``'s columns: per head, its ``headline`` metrics by rank, each fine-tuned then zero-shot."""
        out = []
        for head, cls in self.heads.items():
            ranked = sorted((m for m in self.metrics(cls) if m.headline), key=lambda m: m.headline)
            out += [self._column(kind, head, metric) for metric in ranked for kind in KINDS]
        return out

    def descriptions(self, columns: Iterable[Column]) -> list[str]:
        """``label: description`` of each declared metric among ``columns`` that has a description, once each."""
        notes: dict[str, str] = {}
        for column in columns:
            for metric in self.metrics(self.heads.get(column.head)):
                if metric.key == column.metric and metric.description:
                    notes.setdefault(metric.shown_column, f"{metric.shown_column}: {metric.description}")
        return list(notes.values())

    # ---- curricula ------------------------------------------------------------------------------------------

    def task_label(self, name: str) -> str:
        """A task's name in tables: its ``display_name``, else its name in capitals."""
        return getattr(self.tasks.get(name), "display_name", "") or name.upper()

    def ordered_tasks(self, names: Iterable[str]) -> list[str]:
        """Task names by ``display_order`` (unknown tasks last); ties keep the given order."""
        return sorted(dict.fromkeys(names), key=lambda n: getattr(self.tasks.get(n), "display_order", 1 << 30))

    def view_label(self, dataset: str, view: str) -> str:
        """A view's short label as its dataset declares it (``view_labels``), else the view's name."""
        labels = getattr(self.datasets.get(dataset), "view_labels", {}) or {}
        return str(labels.get(view, view))

    def stage_label(self, stage: Mapping[str, Any]) -> str:
        """A stage's data in short: ``S`` for one view, ``T + P + S`` for a mixture."""
        return " + ".join(self.view_label(str(d.get("dataset")), str(d.get("view"))) for d in stage.get("data") or [])
