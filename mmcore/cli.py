"""The ``mmcore`` command line: run, validate, show, list-*, plugins."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.markup import escape
from rich.table import Table

from mmcore import __version__
from mmcore.cli_lazy import LazyGroup
from mmcore.cli_seeds import run_seed_group, seeds_option
from mmcore.console import err_console, print_error, stdout_console
from mmcore.errors import MMCoreError
from mmcore.plugins import load_plugins  # pluggy and the registry only: plugins load when it is called
from mmcore.recipeload import prepare_recipe, set_option
from mmcore.shipped import complete_recipe

# Whatever imports torch or loads plugins is imported inside the command that needs it, so that
# `mmcore --help`, `--version` and shell completion answer at once (see mmcore.cli_lazy).

# How idle OpenMP threads wait; OpenMP reads this once, when torch loads, which in this process is later. Spinning
# for long (OpenMP's default) slowed a stage more than tenfold beside other busy processes; sleeping at once
# (PASSIVE) made the pre-training stages 1.8x slower on an idle machine. libgomp spins GOMP_SPINCOUNT times, then
# sleeps (docs/benchmarks.md measures the trade); LLVM's libomp ignores the count and sleeps at once. A wait
# setting already in the environment wins.
SPIN_COUNT = 3000
if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ.update(OMP_WAIT_POLICY="PASSIVE", GOMP_SPINCOUNT=str(SPIN_COUNT))
if TYPE_CHECKING:
    from mmcore.plugins import Plugins


console = stdout_console()


class MMCoreGroup(LazyGroup):
    """The ``mmcore`` group: a user error becomes a clear message and its exit code (2, 3 or 4), no traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MMCoreError as exc:
            print_error(exc)
            ctx.exit(exc.exit_code)


@click.group(cls=MMCoreGroup, epilog="Commands that plugins add run as mmcore NAME but are not listed here "
                                     "(listing them would load every plugin).")
@click.version_option(__version__, prog_name="mmcore")
def main() -> None:
    """mmcore: vision-and-language pre-training where everything is a plugin and a curriculum is a YAML file."""


@main.command()
@click.argument("recipes", nargs=-1, type=click.Path(dir_okay=False), shell_complete=complete_recipe)
@set_option
@seeds_option
@click.option("--resume", "resume", type=click.Path(file_okay=False, path_type=Path),
              help="Continue an existing run directory, skipping finished stages and evaluations.")
@click.option("--run-name", help="Name of the run directory (default: a timestamp).")
@click.option("--output-dir", type=click.Path(file_okay=False, path_type=Path), help="Parent of run directories.")
@click.option("--overwrite", is_flag=True, help="Replace an existing run directory of the same name.")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), help="Data cache (default $MMCORE_CACHE).")
@click.option("--quiet", is_flag=True, help="No progress output; only the results table.")
@click.option("--logger", "loggers", multiple=True, metavar="NAME",
              help="Also log metrics with this logger, default options (as in the recipe's loggers:; repeatable).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Intra-op CPU threads (default: OMP_NUM_THREADS, the recipe's threads, else the CPUs this process "
                   "may use: affinity and cgroup quota).")
@click.option("--debug", is_flag=True, help="When plugin code fails, also print its full traceback "
                                             "(always written to the run directory's errors.log).")
def run(recipes: tuple[str, ...], overrides: tuple[str, ...], seed_overrides: tuple[str, ...], resume: Path | None,
        run_name: str | None, output_dir: Path | None, overwrite: bool, cache_dir: Path | None, quiet: bool,
        loggers: tuple[str, ...], threads: int | None, debug: bool = False) -> None:
    """Run a recipe: pre-training stages, zero-shot evaluations, fine-tunings, then a results table.

    Several RECIPES run one after another, each into OUTPUT_DIR/<name>/...: a recipe whose run there is
    complete is skipped, a partial one is resumed, so the same command continues an interrupted batch.
    """
    from mmcore.blame import enable_debug
    from mmcore.engine import run_recipe
    from mmcore.progress import Reporter
    from mmcore.recipe import dump_recipe
    from mmcore.rundir import RunDir
    from mmcore.seeds import GROUP_RECIPE, is_group, refresh_group
    from mmcore.layout import Layout
    from mmcore.summary import SINGLE_SEED_NOTE, evaluation_rows, results_rows, rich_table, stage_rows
    from mmcore.validate import strip_private

    overrides = (*overrides, *seed_overrides)
    if debug:
        enable_debug()
    if len(recipes) > 1:
        _run_many(recipes, overrides, resume, run_name, output_dir, overwrite, cache_dir, quiet, loggers, threads)
        return
    recipe = recipes[0] if recipes else None
    group = resume if resume is not None and is_group(resume) else None
    if group is not None or (recipe is not None and resume is None):
        _, plugins, resolved = prepare_recipe(recipe if group is None else group / GROUP_RECIPE, overrides, loggers)
        if resolved.get("seeds"):
            run_seed_group(plugins, resolved, resume=group, output_dir=output_dir, run_name=run_name,
                           overwrite=overwrite, cache_dir=cache_dir, quiet=quiet, threads=threads)
            return
    if resume is not None:
        run_dir = RunDir.open(resume)
        _, plugins, resolved = prepare_recipe(run_dir.path / "recipe.resolved.yaml", overrides, loggers)
        if resolved.get("seeds"):
            raise MMCoreError(f"{resume} is one run, not a seed group: --seeds continues a group (--resume GROUP_DIR)")
    elif recipe is None:
        raise MMCoreError("give a RECIPE to run, or --resume RUN_DIR")
    else:
        parent = output_dir or Path(resolved["output_dir"])
        run_dir = RunDir.start(parent, resolved["name"], run_name, overwrite, dump_recipe(strip_private(resolved)))
    reporter = Reporter(err_console, quiet=quiet)
    reporter.message(f"[bold]mmcore[/bold] run [cyan]{resolved['name']}[/cyan] → {run_dir.path}")
    try:
        results = run_recipe(resolved, plugins, run_dir, reporter, cache_dir, threads)
    except MMCoreError:
        if resume is None and run_dir.main:
            _remove_unstarted(run_dir.path)
        raise
    if is_group(run_dir.path.parent):  # one seed of a group resumed on its own: keep the group's aggregate current
        refresh_group(run_dir.path.parent, Layout.of(plugins.registry))
    if not run_dir.main:  # under torchrun, rank 0 prints the tables
        return
    console = stdout_console()
    layout = Layout.of(plugins.registry)
    header, rows = stage_rows(results)
    if rows:  # a recipe without stages (fine-tuning only) has no pre-training to show
        console.print(rich_table("pre-training", header, rows))
    console.print(rich_table(f"results (%) — {run_dir.path}", *evaluation_rows(results, layout)))
    console.print(f"{SINGLE_SEED_NOTE}; for intervals over training seeds, run with --seeds 0,1,2", highlight=False)
    console.print(rich_table("main results (%)", *results_rows(str(resolved["name"]), results, layout)))


def _run_many(recipes: tuple[str, ...], overrides: tuple[str, ...], resume: Path | None, run_name: str | None,
              output_dir: Path | None, overwrite: bool, cache_dir: Path | None, quiet: bool,
              loggers: tuple[str, ...] = (), threads: int | None = None) -> None:
    from mmcore import distributed
    from mmcore.progress import Reporter
    from mmcore.runmany import run_many
    from mmcore.summary import rich_table

    if resume is not None:
        raise MMCoreError("--resume continues one run directory; with several RECIPES, rerun the same command "
                          "instead (complete runs are skipped, partial ones resumed)")
    # Every recipe is checked before the first one trains.
    prepared = [prepare_recipe(path, overrides, loggers)[1:] for path in recipes]
    outcomes = run_many(prepared, output_dir=output_dir, run_name=run_name, overwrite=overwrite,
                        cache_dir=cache_dir, reporter=Reporter(err_console, quiet=quiet), threads=threads)
    if not distributed.current().is_main:  # under torchrun, rank 0 prints the table
        return
    rows = [[o.name, o.status, str(o.path)] for o in outcomes]
    out = stdout_console()
    out.print(rich_table(f"{len(outcomes)} recipes", ["recipe", "status", "run directory"], rows))
    parents = sorted({str(o.path.parent.parent) for o in outcomes})
    out.print("compare them: mmcore report " + " ".join(f"{p}/*" for p in parents), highlight=False)


def _remove_unstarted(path: Path) -> None:
    """Remove a fresh run directory that holds only its recipe (the run failed before producing anything),
    so that fixing the problem and running again does not need --overwrite."""
    files = [p for p in path.rglob("*") if not p.is_dir()]
    if [p.name for p in files] != ["recipe.resolved.yaml"]:
        return
    files[0].unlink()
    for directory in sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        directory.rmdir()
    path.rmdir()
    if not any(path.parent.iterdir()):
        path.parent.rmdir()


@main.command()
@click.argument("recipes", nargs=-1, required=True, type=click.Path(dir_okay=False),
                shell_complete=complete_recipe)
@set_option
@click.option("--build", is_flag=True, help="Also prepare the data (cached, as a run would) and build the backbone, "
                                            "every task and every head on the meta device, as mmcore run does first.")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), help="Data cache (default $MMCORE_CACHE).")
def validate(recipes: tuple[str, ...], overrides: tuple[str, ...], build: bool = False,
             cache_dir: Path | None = None) -> None:
    """Check recipes (keys, plugin names, required fields, numbers, files, options plugins reject) without training.

    Every RECIPE is checked (e.g. mmcore validate recipes/ablations/*.yaml); the exit code is 2 if any fails.
    """
    failed = 0
    for recipe in recipes:
        try:
            _, plugins, resolved = prepare_recipe(recipe, overrides)
            if build:
                _build(plugins, resolved, cache_dir)
        except MMCoreError as exc:
            if len(recipes) == 1:
                raise
            failed += 1
            print_error(exc)
            continue
        stages = " → ".join(s["name"] for s in resolved["stages"]) or "no pre-training"
        console.print(f"[green]ok[/green] {escape(recipe)}: {escape(stages)}; {len(resolved['zero_shot'])} "
                      f"zero-shot, {len(resolved['finetune'])} fine-tuning"
                      + (f"; seeds {', '.join(map(str, resolved['seeds']))}" if resolved.get("seeds") else ""))
        if resolved["finetune"]:
            tuned = ", ".join(f"{i['name']}{'' if i['name'] == i['head'] else ' [' + str(i['head']) + ']'} "
                              f"({i['epochs']} epochs, lr {i['optim']['lr']:g})" for i in resolved["finetune"])
            console.print(f"  [dim]fine-tuning: {escape(tuned)}[/dim]")
    if failed:
        raise MMCoreError(f"{failed} of {len(recipes)} recipes are invalid (each problem is listed above)")


def _build(plugins: Plugins, resolved: dict[str, Any], cache_dir: Path | None) -> None:
    from mmcore.buildcheck import build_with_data
    from mmcore.context import default_cache_dir

    build_with_data(resolved, plugins.registry, cache_dir or default_cache_dir(),
                    lambda message: err_console.print(message, highlight=False))


@main.command(name="recipes")
def recipes_command() -> None:
    """List the shipped recipes, one line each (run one by name: mmcore run msp_tps)."""
    from mmcore.shipped import shipped_recipes

    found = shipped_recipes()
    width = max((len(r.name) for r in found), default=0)
    for shipped in found:
        click.echo(f"{shipped.name:<{width}}  {shipped.description}")


@main.command()
@click.argument("recipe", type=click.Path(dir_okay=False), shell_complete=complete_recipe)
@set_option
def show(recipe: str, overrides: tuple[str, ...]) -> None:
    """Print the resolved recipe (includes merged, overrides applied, plugin defaults filled).

    RECIPE is a file or a shipped recipe's name (mmcore recipes lists them)."""
    from mmcore.recipe import dump_recipe
    from mmcore.validate import strip_private

    _, _, resolved = prepare_recipe(recipe, overrides)
    click.echo(dump_recipe(strip_private(resolved)), nl=False)


@main.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@set_option
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Data cache (default $MMCORE_CACHE).")
def params(recipe: str, overrides: tuple[str, ...], cache_dir: Path | None) -> None:
    """Count the recipe's backbone parameters (sized by its first dataset), by the parts the backbone reports."""
    import torch

    from mmcore.builders import new_backbone
    from mmcore.context import RunContext, primary_dataset_name
    from mmcore.progress import Reporter

    _, plugins, resolved = prepare_recipe(recipe, overrides)
    if primary_dataset_name(resolved) is None:
        raise MMCoreError(f"{recipe}: the recipe uses no data, so nothing sizes the backbone's vocabulary and features")
    ctx = RunContext.open(resolved, plugins, None, Reporter(err_console), cache_dir)
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        backbone = new_backbone(ctx)
    table = Table(title=f"parameters of {resolved['backbone']['name']} ({recipe})")
    table.add_column("part")
    table.add_column("parameters", justify="right")
    table.add_column("millions", justify="right")
    for part, count in backbone.parameter_counts().items():
        table.add_row(part, f"{count:,}", f"{count / 1e6:.2f}M")
    console.print(table)


def _list(kind: str, verbose: bool) -> None:
    from mmcore.describe import entries_table, long_form

    plugins = load_plugins()
    entries = list(plugins.registry.entries(kind))
    if not verbose:
        console.print(entries_table(kind, entries))
    for entry in entries if verbose else ():
        console.print(long_form(entry, plugins.label(entry.origin)))


for _kind in ("task", "backbone", "dataset", "head", "logger"):
    def _make(kind: str):
        @main.command(name=f"list-{kind}s", help=f"List every registered {kind} with its options (type, default).")
        @click.option("--verbose", "-v", is_flag=True, help="The long form: each one's docstring and option table.")
        def _command(verbose: bool) -> None:
            _list(kind, verbose)
        return _command
    _make(_kind)


@main.command()
@click.argument("name")
@click.option("--kind", type=click.Choice(["backbone", "task", "dataset", "head", "extractor", "logger"]),
              help="Only entries of this kind (when several kinds share the name).")
def describe(name: str, kind: str | None) -> None:
    """Describe a registered backbone, task, dataset, head, extractor or logger: its docstring, every option with
    its type and default, the batch fields it needs or provides, and the plugin (distribution, version)."""
    from mmcore.describe import find, long_form
    from mmcore.errors import UnknownNameError

    plugins = load_plugins()
    entries = find(plugins.registry, name, kind)
    if not entries:
        known = {e.name for e in plugins.registry.entries(kind)}
        raise UnknownNameError(kind or "plugin entry", name, known, plugins.registry.broken)
    for entry in entries:
        console.print(long_form(entry, plugins.label(entry.origin)))


@main.command(name="plugins")
def plugins_command() -> None:
    """List every plugin: where it came from, its distribution and version, what it registered, or why it is
    broken (failed to import) or disabled (MMCORE_DISABLE_PLUGINS)."""
    plugins = load_plugins()
    table = Table(title="plugins")
    for column in ("plugin", "source", "module", "distribution", "version", "status", "registered"):
        table.add_column(column)
    for info in plugins.infos.values():
        status = f"[red]broken: {escape(info.error)}[/red]" if info.status == "broken" else info.status
        table.add_row(info.name, info.source, info.module, info.distribution, info.version, status,
                      ", ".join(info.registered))
    console.print(table)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
