"""``mmcore run RECIPE --seeds 0,1,2`` (or a recipe's ``seeds:``): one run per training seed under one seed group,
then the aggregate table (mean, std, 95% CI, n) of every metric."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from mmcore.plugins import Plugins
from mmcore.progress import Reporter


def parse_seeds(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[str, ...]:
    """``--seeds 0,1,2`` as the override ``seeds=[0, 1, 2]`` (empty without the option)."""
    if value is None:
        return ()
    parts = [p.strip() for p in value.split(",") if p.strip()]
    if not parts or not all(p.isdigit() for p in parts):
        raise click.BadParameter(f"expected distinct non-negative integers separated by commas, e.g. 0,1,2; "
                                 f"got {value!r}")
    seeds = [int(p) for p in parts]
    if len(set(seeds)) != len(seeds):
        raise click.BadParameter(f"each seed runs into its own directory, so seeds must be distinct; got {value!r}")
    return (f"seeds=[{', '.join(map(str, seeds))}]",)


seeds_option = click.option("--seeds", "seed_overrides", callback=parse_seeds, metavar="0,1,2",
                            help="Run the whole curriculum once per training seed (as the recipe's seeds:), each "
                                 "into <run>/seed_<n>/, then the mean, std and 95% CI over seeds.")


def run_seed_group(plugins: Plugins, resolved: dict[str, Any], *, resume: Path | None, output_dir: Path | None,
                   run_name: str | None, overwrite: bool, cache_dir: Path | None, quiet: bool,
                   threads: int | None = None) -> None:
    """Run (or, with ``resume``, finish) a seed group and print its seeds and the aggregate tables."""
    # Imported here: cli.py imports this module for --seeds, and `mmcore --help` must not load torch or numpy.
    from mmcore.aggregate import aggregate_rows, results_summary_rows, stage_loss_rows
    from mmcore.console import err_console, stdout_console
    from mmcore.layout import Layout
    from mmcore.rundir import RunDir
    from mmcore.seeds import run_group
    from mmcore.summary import INTERVAL_LEGEND, rich_table

    if resume is not None:
        group = RunDir(resume)
    else:
        group = RunDir.create(output_dir or Path(resolved["output_dir"]), resolved["name"], run_name, overwrite)
    reporter = Reporter(err_console, quiet=quiet)
    seeds = ", ".join(map(str, resolved["seeds"]))
    reporter.message(f"[bold]mmcore[/bold] run [cyan]{resolved['name']}[/cyan] over seeds {seeds} → {group.path}")
    outcomes, aggregate = run_group(plugins, resolved, group, overwrite=overwrite, cache_dir=cache_dir,
                                    reporter=reporter, threads=threads)
    if not group.main:  # under torchrun, rank 0 prints the tables
        return
    out = stdout_console()
    layout = Layout.of(plugins.registry)
    out.print(rich_table(f"{len(outcomes)} seeds", ["seed", "status", "run directory"],
                         [[str(o.seed), o.status, str(o.path)] for o in outcomes]))
    out.print(rich_table("pre-training over seeds", *stage_loss_rows(aggregate)))
    out.print(rich_table(f"results (%) over seeds — {group.path}", *aggregate_rows(aggregate, layout)))
    out.print(rich_table("main results (%), over seeds", *results_summary_rows(resolved["name"], aggregate, layout)))
    out.print(f"{INTERVAL_LEGEND}.", highlight=False)
