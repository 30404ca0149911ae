"""One row of a comparison: a recipe over its seeds (a seed group) or a single run, with the statistics of each
metric column (mean, std, 95% t interval, n; a single run's bootstrap interval over queries) and paired
differences to a baseline row (paired by seed)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmcore.errors import MMCoreError
from mmcore.layout import Column, evaluation_of, value_of
from mmcore.stats import Summary, paired_difference, summarize
from mmcore.summary import summary_cell, value_cell

DIFFERENCE_LEGEND = ("paired by seed: the mean difference to the baseline in percentage points, with its 95% "
                     "Student-t interval over the n seeds both have; * marks an interval that excludes zero")


@dataclass
class RunInfo:
    """One run directory as a comparison sees it."""

    path: Path
    recipe: dict[str, Any]
    results: dict[str, Any]
    label: str = ""
    missing: list[str] = field(default_factory=list)

    def evaluation(self, column: Column) -> dict[str, Any] | None:
        """The results entry a column reads, if the run has it."""
        return evaluation_of(self.results, column)

    def value(self, column: Column) -> float | None:
        """The column's metric as a fraction, or None (not evaluated, skipped, or absent)."""
        return value_of(self.results, column)


@dataclass
class Row:
    """A recipe's runs by training seed; ``seeds`` are those its group asks for (one, for a single run)."""

    label: str
    recipe: dict[str, Any]
    runs: dict[int, RunInfo]
    path: Path
    seeds: list[int] = field(default_factory=list)

    @property
    def missing(self) -> list[str]:
        """What is not finished yet (per seed, for a group)."""
        if len(self.seeds) <= 1 and len(self.runs) == 1:
            return next(iter(self.runs.values())).missing
        out = [f"seed {s}: {', '.join(r.missing)}" for s, r in sorted(self.runs.items()) if r.missing]
        return out + [f"seed {s}: not started" for s in self.seeds if s not in self.runs]

    def values(self, column: Column) -> dict[int, float]:
        """The column's value in each seed's run that has it."""
        return {seed: v for seed, run in sorted(self.runs.items()) if (v := run.value(column)) is not None}

    def summary(self, column: Column) -> Summary | None:
        """Mean, std and t interval of the column over seeds (None when no seed has it)."""
        values = self.values(column)
        return summarize(list(values.values())) if values else None

    def bootstrap(self, column: Column) -> tuple[float, float] | None:
        """A single run's bootstrap interval over test queries for the column, when its head gave one."""
        values = self.values(column)
        if len(values) != 1:
            return None
        (seed,) = values
        interval = (self.runs[seed].evaluation(column) or {}).get("intervals", {}).get(column.metric)
        if isinstance(interval, dict) and isinstance(interval.get("low"), (int, float)):
            return float(interval["low"]), float(interval["high"])
        return None

    def cell(self, column: Column) -> str:
        """The column in % for a table: ``mean ± std [95% CI]`` over seeds, one value (with its bootstrap interval
        when there is one), or ``–``."""
        summary = self.summary(column)
        if summary is None:
            return "–"
        if summary.n == 1:
            interval = self.bootstrap(column)
            return value_cell(summary.mean, None if interval is None else {"low": interval[0], "high": interval[1]},
                              column.scale)
        return summary_cell(summary, n_row=len(self.runs), scale=column.scale)

    def seeds_cell(self) -> str:
        """The row's n with its seeds; n = 1 says that there is no ± over seeds."""
        seeds = sorted(self.runs)
        if len(seeds) == 1:
            return f"1 (seed {seeds[0]}; no ±)"
        return f"{len(seeds)} ({', '.join(map(str, seeds))})"


def find_baseline(rows: Sequence[Row], name: str) -> Row:
    """The row of the baseline recipe ``name`` (its label, or the name of its recipe)."""
    for row in rows:
        if name in (row.label, str(row.recipe.get("name"))):
            return row
    raise MMCoreError(f"--baseline {name!r} is none of the reported recipes: {', '.join(r.label for r in rows)}")


def difference_cell(row: Row, baseline: Row, column: Column) -> tuple[str, Summary | None]:
    """The paired difference of ``row`` to ``baseline`` in the column (percentage points) and its summary."""
    diff = paired_difference(row.values(column), baseline.values(column))
    if diff is None:
        return "–", None
    scale = column.scale
    text = f"{scale * diff.mean:+.2f}"
    if diff.low is None or diff.high is None:
        return f"{text} (n=1)", diff
    text += f" [{scale * diff.low:+.2f}, {scale * diff.high:+.2f}]"
    return (f"{text} *" if diff.excludes_zero else text), diff


def difference_table(rows: Sequence[Row], baseline: Row, cols: Sequence[Column]) -> tuple[list[str], list[list[str]]]:
    """Header and rows: per recipe other than the baseline, the paired difference in every column."""
    header = ["recipe", "n pairs", *(c.label for c in cols)]
    out = []
    for row in rows:
        if row is baseline:
            continue
        pairs = len(set(row.runs) & set(baseline.runs))
        out.append([row.label, str(pairs), *(difference_cell(row, baseline, c)[0] for c in cols)])
    return header, out
