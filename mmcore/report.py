"""Compare finished runs the way the MSP paper's Table 4 does: curriculum, tasks, downstream metrics; plus plots.

``collect(paths)`` reads run directories (or directories of runs), ``table(runs)`` builds the comparison,
``write_report(runs, out)`` writes ``report.md`` and, when matplotlib is installed, PNG plots. Every file is
written under a temporary name and renamed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mmcore.comparison import DIFFERENCE_LEGEND, Row, RunInfo, difference_table, find_baseline
from mmcore.data.fileio import atomic_path
from mmcore.errors import MMCoreError, PluginError
from mmcore.layout import Column, Layout, headline_key
from mmcore.plugins import load_plugins
from mmcore.rundir import RunDir
from mmcore.runfinder import RESOLVED, is_complete, missing_parts, read_run, run_dirs_in
from mmcore.seeds import GROUP_RECIPE, group_complete, group_recipe, group_runs, group_seeds, is_group
from mmcore.summary import INTERVAL_LEGEND, markdown_table

COUNT_WORDS = ["None", "Single", "Two", "Three"]
PLOTS_HINT = 'matplotlib is not installed; pip install "mmcore-vlp[plots]" to draw them'
BASE_HEADER = ["recipe", "stage count", "stages used", "tasks", "n (seeds)"]


def load_run(path: Path) -> RunInfo:
    """Read one run directory."""
    recipe, results = read_run(path)
    missing = missing_parts(recipe, results) or ([] if (path / "results.json").exists() else ["results.json"])
    return RunInfo(path=path, recipe=recipe, results=results, label=str(recipe.get("name") or path.name),
                   missing=missing)


def load_row(path: Path) -> Row:
    """A seed group (one run per seed) or a single run directory as one row of the comparison."""
    if is_group(path):
        recipe = group_recipe(path)
        runs = {seed: load_run(run) for seed, run in group_runs(path).items()}
        return Row(str(recipe.get("name") or path.parent.name), recipe, runs, path, group_seeds(path))
    run = load_run(path)
    seed = int(run.recipe.get("seed") or 0)
    return Row(run.label, run.recipe, {seed: run}, path, [seed])


def collect(paths: Sequence[Path], note: Callable[[str], None] = lambda _: None) -> list[Row]:
    """Rows for each path: a seed group or run directory, a recipe's directory of those (its newest complete one,
    else its newest), or a directory of such directories. ``note`` hears which stood for several."""
    rows: list[Row] = []
    for path in paths:
        if is_group(path) or (path / RESOLVED).is_file():
            rows.append(load_row(path))
            continue
        picked = _pick(path, note)
        if picked is not None:
            rows.append(load_row(picked))
            continue
        children = [p for p in sorted(path.iterdir()) if p.is_dir()] if path.is_dir() else []
        found = [run for run in (_pick(child, note) for child in children) if run is not None]
        if not found:
            raise MMCoreError(f"{path} is not a run directory (no {RESOLVED}) and holds no run directories")
        rows.extend(load_row(run) for run in found)
    _unique_labels(rows)
    return rows


def _pick(directory: Path, note: Callable[[str], None]) -> Path | None:
    """The newest complete seed group or run directly under ``directory``, else the newest."""
    groups = [p for p in directory.iterdir() if is_group(p)] if directory.is_dir() else []
    runs = sorted([*run_dirs_in(directory), *groups], key=_written)
    if len(runs) <= 1:
        return runs[0] if runs else None
    complete = [run for run in runs if (group_complete(run) if is_group(run) else is_complete(run))]
    chosen = (complete or runs)[-1]
    note(f"{directory}: {len(runs)} runs, reporting {chosen.name} (the newest{' complete' if complete else ''} one)")
    return chosen


def _written(path: Path) -> float:
    for name in ("results.json", RESOLVED, GROUP_RECIPE):
        if (path / name).exists():
            return (path / name).stat().st_mtime
    return 0.0


def _unique_labels(rows: list[Row]) -> None:
    labels = [row.label for row in rows]
    for row in rows:
        if labels.count(row.label) > 1:
            row.label = f"{row.label} ({row.path.name})"


def layout_for(rows: Sequence[Row], note: Callable[[str], None] = lambda _: None) -> Layout:
    """The table layout of the installed plugins and of the plugin files the rows' recipes name (those that still
    exist), so a head or task of either is shown as its plugin declares; ``note`` hears of files that fail to load,
    whose names are then shown as they are."""
    files = dict.fromkeys(str(p) for row in rows for p in row.recipe.get("plugins") or [] if Path(str(p)).is_file())
    try:
        return Layout.of(load_plugins(list(files)).registry)
    except PluginError as exc:
        note(f"the runs' plugin files do not load ({exc}); their heads and tasks are shown by name")
        return Layout.of(load_plugins().registry)


def curriculum(recipe: dict[str, Any], layout: Layout) -> tuple[str, str, str]:
    """(stage count, stages used, tasks) of a resolved recipe: views by their labels, tasks by their display names
    in their declared order (for the built-in plugins, Table 4's words)."""
    stages = recipe.get("stages") or []
    count = COUNT_WORDS[len(stages)] if len(stages) < len(COUNT_WORDS) else str(len(stages))
    used = " → ".join(layout.stage_label(s) for s in stages) or "vanilla"
    names = layout.ordered_tasks(n for stage in stages for n in stage.get("tasks") or {})
    return count, used, " ".join(layout.task_label(n) for n in names) or "–"


def columns(runs: Sequence[RunInfo], layout: Layout) -> list[Column]:
    """The heads' headline columns any run has a value for, then every metric of other evaluations (by name)."""
    headline = layout.headline_columns()
    out = [c for c in headline if any(run.value(c) is not None for run in runs)]
    headline_kinds = {(c.kind, c.head) for c in headline}
    for run in runs:
        for name, result in run.results.items():
            if name.startswith("_") or not isinstance(result, dict):
                continue
            if headline_key(result) in headline_kinds:
                continue
            for metric in result.get("metrics", {}):
                column = Column(f"{name} {metric}", str(result.get("kind")), str(result.get("head")), metric, name,
                                layout.metric_scale(metric))
                if column not in out:
                    out.append(column)
    return out


def in_table_order(rows: Sequence[Row]) -> list[Row]:
    """Rows grouped by stage count as Table 4 is, in the given order within a group."""
    return sorted(rows, key=lambda row: len(row.recipe.get("stages") or []))


def row_columns(rows: Sequence[Row], layout: Layout) -> list[Column]:
    """:func:`columns` over every seed's run of every row."""
    return columns([run for row in rows for run in row.runs.values()], layout)


def table(rows: Sequence[Row], layout: Layout,
          bold: Callable[[str], str] = lambda s: s) -> tuple[list[str], list[list[str]]]:
    """Header and rows (metrics in %: mean ± std [95% CI] over seeds, or one run's value) in
    :func:`in_table_order`; a column's best mean, where several rows have one, passes through ``bold``."""
    cols = row_columns(rows, layout)
    best = {}
    for column in cols:
        means = [s.mean for s in (row.summary(column) for row in rows) if s is not None]
        best[column] = max(means) if len(means) > 1 else None
    out = []
    for row in in_table_order(rows):
        name = row.label + (" (incomplete)" if row.missing else "")
        cells = []
        for column in cols:
            summary, text = row.summary(column), row.cell(column)
            cells.append(bold(text) if summary is not None and summary.mean == best[column] else text)
        out.append([name, *curriculum(row.recipe, layout), row.seeds_cell(), *cells])
    return [*BASE_HEADER, *(c.label for c in cols)], out


def loss_curves(run: RunInfo) -> dict[str, dict[str, tuple[list[int], list[float]]]]:
    """Per stage, per task: (steps, losses) from ``metrics.jsonl``; a stage retrained after an interruption keeps
    only its last attempt (its steps restart)."""
    stages = {s["name"]: list(s.get("tasks") or {}) for s in run.recipe.get("stages") or []}
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in stages}
    for record in RunDir(run.path).read_metrics():
        scope = record.get("scope")
        if scope not in rows or not isinstance(record.get("step"), int):
            continue
        if rows[scope] and record["step"] <= rows[scope][-1]["step"]:
            rows[scope] = []
        rows[scope].append(record)
    out = {}
    for stage, records in rows.items():
        curves = {}
        for task in stages[stage]:
            points = [(r["step"], float(r[task])) for r in records if isinstance(r.get(task), (int, float))]
            if points:
                curves[task] = ([p[0] for p in points], [p[1] for p in points])
        if curves:
            out[stage] = curves
    return out


def _file_name(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_") or "run"


def write_report(rows: Sequence[Row], out: Path, layout: Layout, plots: bool = True,
                 baseline: str | None = None) -> list[Path]:
    """Write ``report.md`` (and the PNG plots when ``plots`` and matplotlib allow) into ``out``; return the files.
    With ``baseline`` (a reported recipe's name) it adds every other recipe's paired difference to it."""
    header, table_rows = table(rows, layout, bold=lambda s: f"**{s}**")
    figure = _figure_class() if plots else None
    written: list[Path] = []
    images: list[tuple[str, str]] = []
    if figure is not None:
        bars = _plot_downstream(figure, rows, out / "downstream.png", layout)
        if bars is not None:
            written.append(bars)
            images.append(("Downstream metrics (%), error bars: 95% intervals", bars.name))
        for row in (row for row in in_table_order(rows) if row.runs):
            seed = min(row.runs)  # one seed's curves: every seed's would overlap into one band
            path = _plot_losses(figure, row.runs[seed], out / f"losses_{_file_name(row.label)}.png", layout)
            if path is not None:
                written.append(path)
                images.append((f"Pre-training losses: {row.label}" + (f" (seed {seed})" if len(row.runs) > 1 else ""),
                               path.name))
    notes = "".join(f"{note}; " for note in layout.descriptions(row_columns(rows, layout)))
    lines = ["# Pre-training ablations", "",
             (f"Metrics in % on each evaluation's split. {notes}ZS: zero-shot, evaluated without fine-tuning; "
              f"–: not evaluated or skipped; the best mean of each column is bold. Cells: {INTERVAL_LEGEND}."), "",
             markdown_table(header, table_rows), ""]
    if baseline is not None:
        base = find_baseline(rows, baseline)
        lines += [f"## Paired differences to {base.label}", "", f"{DIFFERENCE_LEGEND}.", "",
                  markdown_table(*difference_table(in_table_order(rows), base, row_columns(rows, layout))), ""]
    lines += ["## Runs", ""]
    for row in in_table_order(rows):
        state = "complete" if not row.missing else f"incomplete, missing: {', '.join(row.missing)}"
        lines.append(f"- `{row.label}`: `{row.path}` ({state})")
    lines += ["", "## Plots", ""]
    if figure is None:
        lines.append("No plots: " + (PLOTS_HINT if plots else "not requested") + ".")
    for title, name in images:
        lines += [f"### {title}", "", f"![{title}]({name})", ""]
    path = out / "report.md"
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    return [path, *written]


def _figure_class() -> Any | None:
    """matplotlib's ``Figure`` (no pyplot, so no global backend state), or None when it is not installed."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    return Figure


def plots_available() -> bool:
    """Whether matplotlib (the ``plots`` extra) is installed."""
    return _figure_class() is not None


def _save(fig: Any, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return path


def _error_bar(row: Row, column: Column) -> tuple[float, float, float] | None:
    """(mean, below, above) in %: the t interval over seeds, a single run's bootstrap interval, or none (0, 0)."""
    summary = row.summary(column)
    if summary is None:
        return None
    interval = (summary.low, summary.high) if summary.low is not None else row.bootstrap(column)
    low, high = interval if interval is not None and interval[0] is not None else (summary.mean, summary.mean)
    scale = column.scale
    return scale * summary.mean, scale * (summary.mean - low), scale * (high - summary.mean)


def _plot_downstream(figure: Any, rows: Sequence[Row], path: Path, layout: Layout) -> Path | None:
    headline = layout.headline_columns()
    cols = [c for c in row_columns(rows, layout) if c in headline] or row_columns(rows, layout)
    if not cols:
        return None
    rows = in_table_order(rows)
    width = 0.8 / len(rows)
    fig = figure(figsize=(min(40.0, 2.0 + len(cols) * (0.3 * len(rows) + 0.5)), 4.5), layout="constrained")
    ax = fig.add_subplot()
    for index, row in enumerate(rows):
        points = [(i, bar) for i, c in enumerate(cols) if (bar := _error_bar(row, c)) is not None]
        if points:
            ax.bar([i - 0.4 + width * (index + 0.5) for i, _ in points], [b[0] for _, b in points], width,
                   yerr=[[b[1] for _, b in points], [b[2] for _, b in points]], capsize=2, label=row.label)
    ax.set_xticks(range(len(cols)), [c.label for c in cols])
    ax.set_ylabel("%")
    ax.set_title("downstream metrics (error bars: 95% interval over seeds, or over test queries for one run)")
    ax.legend(fontsize="small", ncols=max(1, math.ceil(len(rows) / 8)), loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _save(fig, path)


def _plot_losses(figure: Any, run: RunInfo, path: Path, layout: Layout) -> Path | None:
    curves = loss_curves(run)
    if not curves:
        return None
    views = {s["name"]: layout.stage_label(s) for s in run.recipe.get("stages") or []}
    fig = figure(figsize=(4.5 * len(curves), 3.6), layout="constrained")
    axes = fig.subplots(1, len(curves), squeeze=False)[0]
    for ax, (stage, tasks) in zip(axes, curves.items()):
        for task, (steps, losses) in tasks.items():
            ax.plot(steps, losses, label=layout.task_label(task))
        # IFRS sits ~25x above the other losses at CPU width; a log axis keeps every curve readable.
        if all(v > 0 for _, losses in tasks.values() for v in losses):
            ax.set_yscale("log")
        ax.set_title(f"{stage} ({views.get(stage, '')})")
        ax.set_xlabel("step")
        ax.legend(fontsize="small")
    axes[0].set_ylabel("training loss")
    fig.suptitle(run.label)
    return _save(fig, path)
