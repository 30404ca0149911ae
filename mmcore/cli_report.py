"""``mmcore report RUN_DIRS...``: a Table-4-shaped comparison of runs, ``report.md`` and PNG plots."""

from __future__ import annotations

from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from mmcore.comparison import DIFFERENCE_LEGEND, difference_table, find_baseline
from mmcore.report import (
    BASE_HEADER,
    PLOTS_HINT,
    collect,
    in_table_order,
    layout_for,
    plots_available,
    row_columns,
    table,
    write_report,
)
from mmcore.summary import INTERVAL_LEGEND, rich_table


@click.command(name="report")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("report"), show_default=True,
              help="Directory for report.md and the plots.")
@click.option("--no-plots", is_flag=True, help="Write report.md only.")
@click.option("--baseline", metavar="RECIPE",
              help="Also show each recipe's difference to this reported recipe, paired by seed, with its 95% interval.")
def report(run_dirs: tuple[Path, ...], out: Path, no_plots: bool, baseline: str | None) -> None:
    """Compare runs: stages, tasks, downstream metrics (the columns their heads declare); write report.md and plots.

    Each RUN_DIR is a run directory or seed group, a recipe's directory of those (its newest complete one is
    used) or a parent of those, e.g. mmcore report runs/ablations/*. A seed group's metrics show the mean ±
    std [95% t interval] over its seeds.
    """
    from mmcore.console import err_console as err
    from mmcore.console import stdout_console

    # A shell glob over a batch's parent also matches its files (a log kept beside the runs): say so, go on.
    files = [p for p in run_dirs if not p.is_dir()]
    for path in files:
        err.print(f"[dim]{escape(str(path))}: not a directory, skipped[/dim]")
    run_dirs = tuple(p for p in run_dirs if p.is_dir())
    if not run_dirs:
        raise click.UsageError("no run directories given (only files)")
    runs = collect(run_dirs, note=lambda text: err.print(f"[dim]{escape(text)}[/dim]"))
    base = find_baseline(runs, baseline) if baseline is not None else None
    layout = layout_for(runs, note=lambda text: err.print(f"[yellow]note:[/yellow] {escape(text)}"))
    header, rows = table(runs, layout, bold=lambda s: f"[bold]{s}[/bold]")
    # Recipe names and curricula are data, not markup; the metric cells carry the bold markup.
    rows = [[escape(c) if index < len(BASE_HEADER) else c for index, c in enumerate(row)] for row in rows]
    grid = Table(title=f"{len(runs)} run{'s' if len(runs) != 1 else ''} (metrics in %)")
    for index, column in enumerate(header):
        grid.add_column(escape(column), justify="left" if index < len(BASE_HEADER) else "right")
    for row in rows:
        grid.add_row(*row)
    console = stdout_console()
    console.print(grid)
    console.print(f"{INTERVAL_LEGEND}.", highlight=False)
    if base is not None:
        console.print(rich_table(f"paired differences to {escape(base.label)} (percentage points)",
                                 *difference_table(in_table_order(runs), base, row_columns(runs, layout))))
        console.print(f"{DIFFERENCE_LEGEND}.", highlight=False)
    written = write_report(runs, out, layout, plots=not no_plots, baseline=baseline)
    err.print(escape(f"wrote {', '.join(str(p) for p in written)}"), highlight=False)
    if not no_plots and not plots_available():
        err.print(f"[yellow]no plots: {escape(PLOTS_HINT)}[/yellow]")
