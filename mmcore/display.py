"""How a plugin asks to be shown in tables: the :class:`Metric` declarations of a head (see ``Head.metrics``).

Tasks, heads and datasets declare their table layout as class attributes (documented on :class:`mmcore.api.Task`,
:class:`mmcore.api.Head` and :class:`mmcore.api.Dataset`); :mod:`mmcore.layout` builds every table from them, so
the core knows no plugin's names.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Metric:
    """One metric a head's ``evaluate`` reports, and how tables show it.

    ``key``: its key in ``evaluate``'s dict. ``label``: its column in a run's table of evaluations (``Acc``,
    ``IR R@1``; default: ``key``). ``column``: its column where runs are compared, in the one-row results table of
    ``summary.md`` and the end-of-run output and in ``mmcore report`` (``VQA acc``; default: ``label``); a zero-shot
    evaluation's column is prefixed ``ZS-``. ``results``: shown in that one-row results table. ``headline``: 0, or
    this metric's place (1, 2, ...) among the head's columns of ``mmcore report``, which lists any other metric
    under its evaluation's name. ``primary``:
    the metric that picks a fine-tuning's best epoch (higher is better; at most one per head). ``description``:
    a short note ``mmcore report`` prints under its table when the metric is one of its columns. ``floor``: set on
    a baseline the primary metric should clear (e.g. answering from the question alone), it says what ending within
    2 points of it means; a fine-tuning that does gets that warning. ``percent``: the value is a fraction that
    tables show in % (the default); ``False`` shows it as it is (a score already on its own scale, a count).
    """

    key: str
    label: str = ""
    column: str = ""
    results: bool = False
    headline: int = 0
    primary: bool = False
    description: str = ""
    floor: str = ""
    percent: bool = True

    @property
    def scale(self) -> float:
        """The factor a table multiplies the value by: 100 for a fraction shown in %, else 1."""
        return 100.0 if self.percent else 1.0

    @property
    def shown_label(self) -> str:
        """The label of a run's evaluation table."""
        return self.label or self.key

    @property
    def shown_column(self) -> str:
        """The column name where runs are compared."""
        return self.column or self.shown_label


def metric_problems(metrics: Any) -> list[str]:
    """What is wrong with a head's ``metrics`` declaration (empty when nothing is): each a :class:`Metric`, each key
    once, at most one primary, distinct headline places, and no floor that is also the primary."""
    if not isinstance(metrics, (tuple, list)) or not all(isinstance(m, Metric) for m in metrics):
        return ["'metrics' must be a tuple of mmcore.api.Metric"]
    problems = []
    keys = [m.key for m in metrics]
    problems += [f"declares metric {k!r} twice" for k in sorted({k for k in keys if keys.count(k) > 1})]
    primary = [m.key for m in metrics if m.primary]
    if len(primary) > 1:
        problems.append(f"marks {len(primary)} metrics primary ({', '.join(primary)}); at most one picks the best epoch")
    ranks = [m.headline for m in metrics if m.headline]
    if any(not isinstance(r, int) or r < 0 for r in ranks) or len(set(ranks)) != len(ranks):
        problems.append(f"headline places must be distinct positive integers, got {ranks}")
    problems += [f"metric {m.key!r} is both the primary metric and a floor for it" for m in metrics
                 if m.primary and m.floor]
    return problems


def view_label_problems(labels: Any, views: Mapping[str, Any]) -> list[str]:
    """What is wrong with a dataset's ``view_labels``: a mapping of its own views to strings."""
    if not isinstance(labels, Mapping) or not all(isinstance(v, str) for v in labels.values()):
        return ["'view_labels' must map view names to short strings"]
    return [f"'view_labels' names view {v!r}, which is not among its views ({', '.join(views) or 'none'})"
            for v in labels if v not in views]
