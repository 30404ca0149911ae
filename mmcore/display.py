"""How a plugin asks to be shown in tables: the :class:`Metric` declarations of a head (see ``Head.metrics``).

Tasks, heads and datasets declare their table layout as class attributes (documented on :class:`mmcore.api.Task`,
:class:`mmcore.api.Head` and :class:`mmcore.api.Dataset`); :mod:`mmcore.layout` builds every table from them, so
the core knows no plugin's names.
"""

from __future__ import annotations

from dataclasses import dataclass


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
