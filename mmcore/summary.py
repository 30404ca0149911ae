"""Results as tables: ``summary.md`` in the run directory and the rich table the CLI prints."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from mmcore.layout import Layout, evaluation_of, value_of
from mmcore.rundir import RunDir, atomic_write_text
from mmcore.stats import Summary

SINGLE_SEED_NOTE = ("one seed (n = 1): no ± or interval over seeds; (a–b): a 95% bootstrap interval over the test "
                    "queries")
INTERVAL_LEGEND = ("mean ± sample std [95% Student-t interval of the mean] over n seeds; n = 1: a single seed, so no "
                   "± (a metric whose head gives per-query values then shows (a–b): its 95% bootstrap interval "
                   "over the test queries)")


def summary_cell(summary: Summary, n_row: int | None = None, scale: float = 100.0) -> str:
    """A metric over seeds (times ``scale``: 100 for %): ``48.78 ± 0.52 [47.49, 50.07]``; a single value alone;
    ``(n=2)`` appended when the metric has fewer values than its row has seeds."""
    if summary.std is None or summary.low is None or summary.high is None:
        text = f"{scale * summary.mean:.2f}"
    else:
        text = (f"{scale * summary.mean:.2f} ± {scale * summary.std:.2f} "
                f"[{scale * summary.low:.2f}, {scale * summary.high:.2f}]")
    return text + (f" (n={summary.n})" if n_row is not None and summary.n != n_row else "")


def value_cell(value: float, interval: Any = None, scale: float = 100.0) -> str:
    """One run's metric (times ``scale``: 100 for %), with its bootstrap interval over test queries when the head
    gave one."""
    if isinstance(interval, dict) and isinstance(interval.get("low"), (int, float)) and isinstance(interval.get("high"), (int, float)):
        return f"{scale * value:.2f} ({scale * interval['low']:.2f}–{scale * interval['high']:.2f})"
    return f"{scale * value:.2f}"


def evaluation_rows(results: dict[str, Any], layout: Layout) -> tuple[list[str], list[list[str]]]:
    """Header and rows (one per evaluation, metrics in %, in the heads' declared order) of a results dict."""
    evaluations = {k: v for k, v in results.items() if not k.startswith("_")}
    keys = layout.ordered_metrics(key for result in evaluations.values() for key in result.get("metrics", {}))
    header = ["evaluation", "kind", "split", *[layout.metric_label(k) for k in keys]]
    rows = []
    for name, result in evaluations.items():
        metrics = result.get("metrics", {})
        intervals = result.get("intervals", {})
        cells = [value_cell(metrics[k], intervals.get(k), layout.metric_scale(k)) if k in metrics else "–"
                 for k in keys]
        kind = result.get("kind", "")
        if "skipped" in result:
            kind += " (skipped)"
        rows.append([name, kind, str(result.get("split", "")), *cells])
    return header, rows


def results_rows(label: str, results: dict[str, Any], layout: Layout) -> tuple[list[str], list[list[str]]]:
    """Header and the one row of a run in the heads' results columns (:meth:`Layout.results_columns`) that the run
    has (metrics in %); for the built-in heads, the paper's Tables 2-3. A metric absent from an evaluation: blank."""
    # A column where the run has that evaluation; a metric it lacks there stays blank.
    shown = [(c, value_of(results, c)) for c in layout.results_columns() if evaluation_of(results, c) is not None]
    return ["run", *(c.label for c, _ in shown)], [[label, *("" if v is None else f"{c.scale * v:.2f}" for c, v in shown)]]


def stage_rows(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the pre-training stages (steps, samples, time, final loss)."""
    header = ["stage", "steps", "samples", "seconds", "final loss"]
    rows = [[name, str(m.get("steps", "")), str(m.get("samples", "")), str(m.get("seconds", "")),
             f"{m['final_loss']:.4f}" if "final_loss" in m else "–"]
            for name, m in results.get("_stages", {}).items()]
    return header, rows


def rich_table(title: str, header: list[str], rows: list[list[str]]) -> Table:
    """A rich table of the given rows."""
    table = Table(title=title)
    for index, column in enumerate(header):
        table.add_column(column, justify="left" if index < 3 else "right")
    for row in rows:
        table.add_row(*row)
    return table


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub-flavoured markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def write_summary(run: RunDir, recipe: dict[str, Any], results: dict[str, Any], layout: Layout) -> None:
    """Write ``summary.md``: the recipe's stages and tasks, the stage table and the evaluation table."""
    lines = [f"# {recipe['name']}", "", f"Run directory: `{run.path}`", "", "## Curriculum", ""]
    for stage in recipe["stages"]:
        views = ", ".join(f"{d['dataset']}/{d['view']}" for d in stage["data"])
        lines.append(f"- **{stage['name']}** ({views}): {' '.join(stage['tasks'])}; "
                     f"{stage['epochs']} epochs, batch {stage['batch_size']}, lr {stage['optim']['lr']}")
    if not recipe["stages"]:
        lines.append("- no pre-training")
    lines += ["", "## Pre-training", "", markdown_table(*stage_rows(results)), "",
              "## Results (%)", "", markdown_table(*results_rows(str(recipe["name"]), results, layout)), "",
              "## Evaluations (%)", "", f"{SINGLE_SEED_NOTE}.", "", markdown_table(*evaluation_rows(results, layout)), ""]
    atomic_write_text(run.path / "summary.md", "\n".join(lines))
